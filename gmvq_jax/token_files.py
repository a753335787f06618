"""Token files of any method: tokens, the arrays that give them meaning, and fingerprints.

A token file is one .npz: `tokens` (N, h, w, t) int32, the codebook arrays
(GQ's sampled `codebook`, or the quantizer's parameters under
`quantizer/<path>`), and `metadata` (JSON) naming the method, the token grid
and two fingerprints: of the checkpoint (parameters, batch statistics and
config) and of the codebook (what one token value means). A reader refuses
tokens whose fingerprints are not those of the model it decodes with.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from typing import Any, Mapping, Sequence

from etils import epath
import jax
import numpy as np

from gmvq_jax import errors
from gmvq_jax import io as io_lib

VERSION = 3  # 3: any method; fingerprints of checkpoint and codebook. 2: GQ only, none.
TOKENIZE_COMMAND = "python -m launch.tokenize --workdir=..."
# Quantizer fields that change how images are tokenized but not what a token
# means (GQ's prior weight picks among the same codewords).
ENCODING_ONLY_FIELDS = ("prior_weight",)


class TokenFileError(errors.UserError, ValueError):
  """A token file that is unreadable or does not fit the model it is decoded with."""


class ForeignTokensError(TokenFileError):
  """Tokens made by another checkpoint, or with another codebook, than the decoding model's."""


class OutputExistsError(errors.UserError, FileExistsError):
  """An output file exists and --overwrite was not given."""


# ------------------------------------------------------------ fingerprints


def _leaf_name(path: tuple) -> str:
  """'/'-joined keys of a pytree path, e.g. ('codebooks', 0) -> 'codebooks/0'."""
  parts = []
  for key in path:
    for attribute in ("key", "idx", "name"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def named_leaves(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """{'prefix/path': host array} of a pytree's leaves, in a fixed (sorted) order."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  named = {"/".join(p for p in (prefix, _leaf_name(path)) if p): np.asarray(leaf)
           for path, leaf in leaves}
  return dict(sorted(named.items()))


def _hash_arrays(digest: Any, arrays: Mapping[str, np.ndarray]) -> None:
  for name in sorted(arrays):
    array = np.ascontiguousarray(arrays[name])
    digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())


def canonical_json(value: Any) -> str:
  """JSON with sorted keys and no spaces: the same text for the same values."""
  return json.dumps(value, sort_keys=True, separators=(",", ":"))


def checkpoint_fingerprint(config_json: str, params: Any, batch_stats: Any) -> str:
  """sha256 of the canonical config JSON and every parameter and batch statistic."""
  digest = hashlib.sha256(canonical_json(json.loads(config_json)).encode())
  _hash_arrays(digest, named_leaves(params, "params"))
  _hash_arrays(digest, named_leaves(batch_stats, "batch_stats"))
  return digest.hexdigest()


def codebook_fingerprint(method: str, quantizer_fields: Mapping[str, Any],
                         arrays: Mapping[str, np.ndarray]) -> str:
  """sha256 of what a token value means: method, quantizer fields and codebook arrays.

  Fields in ENCODING_ONLY_FIELDS are left out: they change which token an
  image gets, not what a token decodes to.
  """
  fields = {k: v for k, v in quantizer_fields.items() if k not in ENCODING_ONLY_FIELDS}
  digest = hashlib.sha256(canonical_json(dict(method=method, quantizer=fields)).encode())
  _hash_arrays(digest, arrays)
  return digest.hexdigest()


# --------------------------------------------------------------- the files


def check_output(path: epath.PathLike, overwrite: bool, flag: str = "--output") -> epath.Path:
  """`path` as an epath.Path ending in .npz; OutputExistsError if it exists and not `overwrite`."""
  path = epath.Path(path)
  if path.suffix != ".npz":
    raise TokenFileError(f"{flag}={path}: must end in .npz.")
  if path.exists() and not overwrite:
    raise OutputExistsError(f"{flag}={path} exists; pass --overwrite to replace it, or choose"
                            " another path.")
  return path


def refuse_existing(paths: Sequence[epath.PathLike], overwrite: bool, *, what: str = "",
                    fix: str = ", or choose another --output") -> None:
  """OutputExistsError naming the first of `paths` that exists, unless `overwrite`.

  Args:
    paths: files a command would write.
    overwrite: the user asked to replace them.
    what: said after "<path> exists", e.g. " (tokens of an earlier conversion)".
    fix: said after "pass --overwrite to replace it".
  """
  if overwrite:
    return
  for path in paths:
    if epath.Path(path).exists():
      raise OutputExistsError(f"{path} exists{what}; pass --overwrite to replace it{fix}.")


def save(path: epath.PathLike, tokens: np.ndarray, arrays: Mapping[str, np.ndarray],
         metadata: dict) -> None:
  """Writes tokens, codebook arrays and metadata to one .npz, through a temporary name.

  Args:
    path: destination, ending in .npz.
    tokens: (N, h, w, t) integer tokens.
    arrays: {name: array} that give the tokens their meaning.
    metadata: JSON-serialisable facts (method, fingerprints, shapes, ...).
  """
  io_lib.save_npz(path, tokens=np.asarray(tokens, np.int32),
                  metadata=np.asarray(json.dumps(metadata, sort_keys=True)), **arrays)


def write_json(path: epath.PathLike, payload: dict) -> None:
  """The metadata beside the .npz, readable; through a temporary name."""
  with io_lib.atomic_write(str(path)) as tmp:
    epath.Path(tmp).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load(path: epath.PathLike) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
  """(tokens, {name: codebook array}, metadata) of a token file.

  Raises:
    errors.UserFileNotFoundError: no such file.
    TokenFileError: not a token file (missing arrays, unreadable).
  """
  path = epath.Path(path)
  if not path.is_file():
    raise errors.UserFileNotFoundError(
        f"--tokens={path} is not a file; `launch.tokenize` (any method) and `launch.quantize`"
        " (GQ) write them under WORKDIR/tokens/.")
  try:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as contents:
      missing = {"tokens", "metadata"} - set(contents.files)
      if missing:
        raise TokenFileError(f"{path} lacks {sorted(missing)}: not a token file written by"
                             " `launch.tokenize` or `launch.quantize`.")
      arrays = {name: contents[name] for name in contents.files
                if name not in ("tokens", "metadata")}
      return contents["tokens"], arrays, json.loads(str(contents["metadata"]))
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
    if isinstance(error, TokenFileError):
      raise
    raise TokenFileError(
        f"{path} is not a readable token file ({error}): damaged or cut short (a full disk, an"
        f" interrupted copy?). Write it again with `{TOKENIZE_COMMAND}` (GQ: `launch.quantize`)."
    ) from error
