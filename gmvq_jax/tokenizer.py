"""Images to integer tokens and back, for every method: `Tokenizer`, and token files of a split.

`Tokenizer.from_workdir(path)` restores a run's latest checkpoint; `encode`
maps images to its quantizer's tokens (noise-free: the argmax code of
GM-VQ, the nearest codeword of the VQ family, FSQ/LFQ/BSQ integer codes,
RVQ's per-stage indices, GQ's codebook indices of the offline conversion),
`decode` maps tokens to the decoder's images. `tokenize_split` and
`decode_file` serve `launch.tokenize` and `launch.decode`.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmvq_jax import errors
from gmvq_jax import evaluation
from gmvq_jax import io as io_lib
from gmvq_jax import methods
from gmvq_jax import token_files
from gmvq_jax import train_lib
from gmvq_jax import visualization
from gmvq_jax import workdir_lock
from gmvq_jax.data import pipeline
from gmvq_jax.data import registry
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook

TOKENS_SUBDIR = "tokens"


class TokenizerError(errors.UserError, ValueError):
  """Images, tokens or options that a run's tokenizer cannot take; the message says why."""


def _check_codebook_options(codebook_seed, prior_weight, sampler) -> None:
  if codebook_seed is not None and (isinstance(codebook_seed, bool) or not isinstance(
      codebook_seed, (int, np.integer)) or codebook_seed < 0):
    raise TokenizerError(f"--codebook_seed={codebook_seed!r}: need an integer >= 0.")
  if prior_weight is not None and not (
      isinstance(prior_weight, (int, float)) and not isinstance(prior_weight, bool)
      and math.isfinite(prior_weight) and prior_weight >= 0):
    raise TokenizerError(f"--prior_weight={prior_weight!r}: need a finite number >= 0.")
  if sampler is not None and sampler not in gq_codebook.SAMPLERS:
    raise TokenizerError(f"--sampler={sampler!r}; allowed: {', '.join(gq_codebook.SAMPLERS)}.")


class Tokenizer:
  """A trained run's encoder + quantizer + decoder as `encode(images)` / `decode(tokens)`.

  Both are compiled once per batch shape. Attributes: `config` (the run's),
  `method`, `step`, `image_shape` (H, W, 3), `token_shape` (h, w, t),
  `codebook_size` (values a token takes), `codebook_arrays` ({name: array}
  that give tokens their meaning), `checkpoint_fingerprint` and
  `codebook_fingerprint` (sha256 hex; see gmvq_jax.token_files).

  Args:
    config: the run's config.
    state: its train state (params and batch_stats are used).
    codebook_seed, prior_weight, sampler: GQ runs only: the offline
      conversion's N(0, I) codebook seed and sampler ('sobol' or 'normal')
      and the prior weight of its quantization rule; each defaults to the
      run's `quantizer.codebook_seed`, `quantizer.prior_weight` and
      `quantizer.codebook_sampler`.
  """

  def __init__(self, config: ml_collections.ConfigDict, state: Any, *,
               codebook_seed: int | None = None, prior_weight: float | None = None,
               sampler: str | None = None):
    _check_codebook_options(codebook_seed, prior_weight, sampler)
    self.config = config
    self.method = config.method
    token_config = copy.deepcopy(config)
    self.quantizer = methods.make_quantizer(token_config)
    options = dict(codebook_seed=codebook_seed, prior_weight=prior_weight,
                   codebook_sampler=sampler)
    if self.quantizer.posterior is not None:  # Tokens of the offline conversion.
      with token_config.unlocked():
        for field, value in options.items():
          if value is not None:
            token_config.quantizer[field] = value
      self.quantizer = methods.make_quantizer(token_config)
    elif any(value is not None for value in options.values()):
      raise TokenizerError(
          f"codebook_seed, prior_weight and sampler choose GQ's offline codebook; this is a"
          f" {self.method!r} run, whose tokens come from its trained quantizer: leave them out.")
    self.quantizer_fields = token_config.quantizer.to_dict()
    self.step = int(state.step)
    self.image_shape = (config.image_size, config.image_size, 3)
    self._variables = {"params": state.params, "batch_stats": state.batch_stats}
    quantizer = self.quantizer
    model = train_lib.build_model(token_config, quantizer=quantizer)
    has_params = quantizer.init_params is not None

    def quantizer_params(variables):
      return variables["params"][quantizer.params_name] if has_params else None

    def encode(variables, images):
      z = model.apply(variables, images, False, method=model.encode)
      return quantizer.tokenize(quantizer_params(variables), z).astype(jnp.int32)

    def decode(variables, tokens):
      z_q = quantizer.detokenize(quantizer_params(variables), tokens)
      return model.apply(variables, z_q, False, method=model.decode)

    self._encode, self._decode = jax.jit(encode), jax.jit(decode)
    sample = jax.ShapeDtypeStruct((1,) + self.image_shape, jnp.float32)
    self.token_shape = tuple(jax.eval_shape(encode, self._variables, sample).shape[1:])
    self.codebook_size = int(self.quantizer.codebook_size)
    self.codebook_arrays = ({} if not has_params else token_files.named_leaves(
        quantizer_params(self._variables), "quantizer"))
    if quantizer.posterior is not None:
      self.codebook_arrays["codebook"] = np.asarray(gq.config_codebook(token_config.quantizer))
    self.checkpoint_fingerprint = token_files.checkpoint_fingerprint(
        config.to_json(sort_keys=True), state.params, state.batch_stats)
    self.codebook_fingerprint = token_files.codebook_fingerprint(
        self.method, self.quantizer_fields, self.codebook_arrays)

  @classmethod
  def from_workdir(cls, workdir: epath.PathLike, *, codebook_seed: int | None = None,
                   prior_weight: float | None = None, sampler: str | None = None) -> "Tokenizer":
    """The tokenizer of the latest checkpoint in `workdir` (GQ options as in the class)."""
    config, state, _ = evaluation.restore_run(str(workdir))
    return cls(config, state, codebook_seed=codebook_seed, prior_weight=prior_weight,
               sampler=sampler)

  # -------------------------------------------------------------- the maps

  def encode(self, images: Any) -> jax.Array:
    """(B, H, W, 3) images, uint8 in 0..255 or float in [0, 1] -> (B, h, w, t) int32 tokens."""
    images = jnp.asarray(images)
    if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
      raise TokenizerError(f"images of shape {tuple(images.shape)}; this run encodes"
                           f" (B, {', '.join(map(str, self.image_shape))}) batches.")
    if images.dtype == jnp.uint8:
      images = images.astype(jnp.float32) / jnp.float32(255)
    elif jnp.issubdtype(images.dtype, jnp.floating):
      images = images.astype(jnp.float32)
    else:
      raise TokenizerError(f"images of dtype {images.dtype}; need uint8 (0..255) or float"
                           " ([0, 1]).")
    return self._encode(self._variables, images)

  def decode(self, tokens: Any, *, metadata: dict | None = None) -> jax.Array:
    """(B, h, w, t) integer tokens -> (B, H, W, 3) float32 images, as the decoder gives them.

    Args:
      tokens: from `encode`, or the path of a token file (checked with
        `check_file` before anything runs).
      metadata: a token file's metadata; when given, tokens of another
        checkpoint or codebook are refused (`check_metadata`).
    """
    if isinstance(tokens, (str, os.PathLike)):
      path = str(tokens)
      tokens, arrays, metadata = token_files.load(path)
      self.check_file(tokens, arrays, metadata, path)
    else:
      if metadata is not None:
        self.check_metadata(metadata)
      self.check_tokens(tokens)
    return self._decode(self._variables, jnp.asarray(tokens, jnp.int32))

  # ------------------------------------------------------------- checks

  def check_tokens(self, tokens: Any, path: str = "tokens") -> None:
    """TokenFileError unless `tokens` are (N, h, w, t) integers in [0, codebook_size)."""
    tokens = np.asarray(tokens)
    grid = ", ".join(map(str, self.token_shape))
    if tokens.ndim != 4 or tuple(tokens.shape[1:]) != self.token_shape:
      raise token_files.TokenFileError(
          f"{path}: tokens of shape {tokens.shape}; this checkpoint needs (N, h, w, t) ="
          f" (N, {grid}).")
    if not np.issubdtype(tokens.dtype, np.integer):
      raise token_files.TokenFileError(
          f"{path}: tokens are {tokens.dtype}; need integer codebook indices.")
    if tokens.size:
      low, high, size = int(tokens.min()), int(tokens.max()), self.codebook_size
      if low < 0 or high >= size:
        bad = int(np.sum((tokens < 0) | (tokens >= size)))
        raise token_files.TokenFileError(
            f"{path}: {bad} token(s) outside [0, {size}) (min {low}, max {high}); the"
            f" codebook has {size} entries.")

  def check_codebook_arrays(self, arrays: dict[str, np.ndarray], path: str) -> None:
    """TokenFileError unless a file's codebook arrays have this model's names and shapes."""
    missing = sorted(set(self.codebook_arrays) - set(arrays))
    if missing:
      raise token_files.TokenFileError(
          f"{path} lacks {missing}: its tokens were not made by a {self.method!r} model like"
          " this checkpoint's; decode with the workdir whose model made them.")
    for name, expected in self.codebook_arrays.items():
      if arrays[name].shape != expected.shape:
        raise token_files.TokenFileError(
            f"{path}: {name} of shape {arrays[name].shape}, but this checkpoint's is"
            f" {expected.shape}; decode with the workdir whose model made these tokens.")
      if not np.all(np.isfinite(arrays[name])):
        raise token_files.TokenFileError(f"{path}: {name} holds non-finite values.")

  def check_file(self, tokens: np.ndarray, arrays: dict[str, np.ndarray], metadata: dict,
                 path: str) -> None:
    """TokenFileError unless a loaded token file fits this tokenizer, checked in that order:

    its codebook arrays' names and shapes, that they are the ones its codebook
    fingerprint names (not changed since), the tokens' grid and range, and
    that its fingerprints are this checkpoint's and codebook's.
    """
    self.check_codebook_arrays(arrays, path)
    stored = token_files.codebook_fingerprint(metadata.get("method"),
                                              metadata.get("quantizer", {}), arrays)
    if "checkpoint_fingerprint" in metadata and stored != metadata.get("codebook_fingerprint"):
      raise token_files.ForeignTokensError(
          f"{path}: its codebook arrays were changed after the tokens were written (they no"
          " longer match its codebook fingerprint); tokenize again with"
          f" `{token_files.TOKENIZE_COMMAND}`.")
    self.check_tokens(tokens, path)
    self.check_metadata(metadata, path)

  def check_metadata(self, metadata: dict, path: str = "the tokens") -> None:
    """ForeignTokensError unless `metadata` names this checkpoint and codebook."""
    fix = (f"decode with the workdir (and checkpoint) that made them, or tokenize again with"
           f" `{token_files.TOKENIZE_COMMAND}`")
    if "checkpoint_fingerprint" not in metadata:
      raise token_files.ForeignTokensError(
          f"{path} records no checkpoint fingerprint (token file version"
          f" {metadata.get('version')}), so its model cannot be checked; tokenize again with"
          f" `{token_files.TOKENIZE_COMMAND}`.")
    if metadata.get("method") != self.method:
      raise token_files.ForeignTokensError(
          f"{path} holds tokens of a {metadata.get('method')!r} run, not of this {self.method!r}"
          f" run; {fix}.")
    if metadata["checkpoint_fingerprint"] != self.checkpoint_fingerprint:
      also = (" and another codebook" if metadata.get("codebook_fingerprint")
              != self.codebook_fingerprint else "")
      raise token_files.ForeignTokensError(
          f"{path} was made by another checkpoint{also} (fingerprint"
          f" {metadata['checkpoint_fingerprint'][:12]}, this one's"
          f" {self.checkpoint_fingerprint[:12]}); {fix}.")
    if metadata.get("codebook_fingerprint") != self.codebook_fingerprint:
      hint = ""
      if self.quantizer.posterior is not None:
        hint = (f" (it records codebook_seed={metadata.get('codebook_seed')},"
                f" sampler={metadata.get('sampler')!r}: pass those)")
      raise token_files.ForeignTokensError(
          f"{path} indexes another codebook than this tokenizer's (fingerprint"
          f" {str(metadata.get('codebook_fingerprint'))[:12]}, this one's"
          f" {self.codebook_fingerprint[:12]}){hint}; {fix}.")

  def metadata(self, num_images: int) -> dict[str, Any]:
    """What a token file of `num_images` images of this tokenizer records about it."""
    bits = self.token_shape[0] * self.token_shape[1] * self.token_shape[2] * math.log2(
        self.codebook_size)
    facts = dict(
        version=token_files.VERSION, method=self.method,
        tokens_shape=[int(num_images), *self.token_shape], codebook_size=self.codebook_size,
        image_shape=list(self.image_shape), step=self.step,
        bpp=bits / (self.image_shape[0] * self.image_shape[1]),
        checkpoint_fingerprint=self.checkpoint_fingerprint,
        codebook_fingerprint=self.codebook_fingerprint, quantizer=self.quantizer_fields)
    if self.quantizer.posterior is not None:
      q = self.quantizer_fields
      facts.update(codebook_seed=int(q["codebook_seed"]), sampler=q["codebook_sampler"],
                   prior_weight=float(q["prior_weight"]), group_size=int(q["group_size"]),
                   latent_dim=int(q["latent_dim"]))
    return facts


# ----------------------------------------------------------- whole splits


def _batches_of(array: np.ndarray, batch_size: int):
  return (array[start:start + batch_size] for start in range(0, array.shape[0], batch_size))


def _check_batch_size(batch_size: int) -> None:
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise TokenizerError(f"--batch_size={batch_size!r}: need an integer >= 1.")


@workdir_lock.locked("tokenizing")
def tokenize_split(workdir: str, *, split: str = "test", output: epath.PathLike | None = None,
                   overwrite: bool = False, batch_size: int | None = None,
                   codebook_seed: int | None = None, prior_weight: float | None = None,
                   sampler: str | None = None) -> tuple[epath.Path, dict[str, Any]]:
  """Tokenizes a run's val or test split with its latest checkpoint; writes a token file.

  Writes `output` (default WORKDIR/tokens/<split>.npz: tokens, codebook
  arrays, metadata) and the metadata again as JSON beside it, each through a
  temporary name, after the whole split is done. An existing output is kept
  unless `overwrite`.

  Args:
    workdir: a training run of any method.
    split: 'val' or 'test'.
    output: the .npz to write.
    overwrite: replace an existing output.
    batch_size: images per device call; default the run's eval_batch_size.
    codebook_seed, prior_weight, sampler: GQ runs only (see `Tokenizer`).

  Returns:
    (output path, the metadata written).
  """
  if split not in registry.EVAL_SPLITS:
    raise TokenizerError(f"--split={split!r}; allowed: {', '.join(registry.EVAL_SPLITS)}.")
  output = epath.Path(output or epath.Path(workdir) / TOKENS_SUBDIR / f"{split}.npz")
  output = token_files.check_output(output, overwrite)
  beside = output.with_suffix(".json")
  token_files.refuse_existing([beside], overwrite)
  config, state, dataset = evaluation.restore_run(str(workdir))
  tokenizer = Tokenizer(config, state, codebook_seed=codebook_seed, prior_weight=prior_weight,
                        sampler=sampler)
  batch_size = config.eval_batch_size if batch_size is None else batch_size
  _check_batch_size(batch_size)
  chunks = []
  with errors.activity(f"tokenizing the {split} split of {workdir}"):
    for images, _, real in pipeline.padded_batches(dataset.eval_batches(batch_size, split=split),
                                                   batch_size):
      chunks.append(np.asarray(jax.device_get(tokenizer.encode(images)))[:real])
  tokens = (np.concatenate(chunks) if chunks
            else np.zeros((0,) + tokenizer.token_shape, np.int32))
  metadata = dict(tokenizer.metadata(tokens.shape[0]), split=split)
  output.parent.mkdir(parents=True, exist_ok=True)
  token_files.save(output, tokens, tokenizer.codebook_arrays, metadata)
  token_files.write_json(beside, metadata)
  return output, metadata


def _legacy_tokenizer(config, state, arrays, metadata, path) -> Tokenizer:
  """The GQ tokenizer of a version-2 file, after checking its codebook is the one its seed gives."""
  if methods.make_quantizer(config).posterior is None or "codebook" not in arrays:
    raise token_files.ForeignTokensError(
        f"{path} is a version {metadata.get('version')} GQ token file, and this workdir holds a"
        f" {config.method!r} run; decode with the GQ workdir that made it.")
  tokenizer = Tokenizer(config, state, codebook_seed=metadata.get("codebook_seed"),
                        sampler=metadata.get("sampler"))
  tokenizer.check_codebook_arrays(arrays, path)
  if not np.array_equal(arrays["codebook"], tokenizer.codebook_arrays["codebook"]):
    raise token_files.ForeignTokensError(
        f"{path}: its codebook is not the one codebook_seed={metadata.get('codebook_seed')} and"
        f" sampler={metadata.get('sampler')!r} give; tokenize again with"
        f" `{token_files.TOKENIZE_COMMAND}`.")
  logging.warning("%s is a version %s token file without fingerprints: its codebook matches,"
                  " but not whether this checkpoint made its tokens.", path, metadata.get("version"))
  return tokenizer


@workdir_lock.locked("decoding")
def decode_file(workdir: str, tokens_path: epath.PathLike, *,
                output: epath.PathLike | None = None, overwrite: bool = False,
                batch_size: int | None = None,
                num_images: int = 16) -> tuple[epath.Path, np.ndarray]:
  """Decodes a token file of any method with the latest checkpoint of `workdir`.

  Everything is checked before anything is computed or written: the tokens'
  grid and range, the codebook arrays' shapes, that the stored codebook is
  the one its fingerprint names, that the fingerprints are this checkpoint's
  and codebook's, and that the output is neither the token file nor (unless
  `overwrite`) an existing file.

  Args:
    workdir: the run whose model made the tokens.
    tokens_path: a .npz of `launch.tokenize` or `launch.quantize`.
    output: .npz to write uint8 (N, H, W, 3) images to, under 'images';
      default `<tokens without .npz>_decoded.npz`. A PNG grid of the first
      `num_images` goes beside it.
    overwrite: replace existing output files.
    batch_size: tokens per device call; default the run's eval_batch_size.
    num_images: images in the PNG grid.

  Returns:
    (output path, the decoded images as float32 in [0, 1]).
  """
  tokens_path = epath.Path(tokens_path)
  path = str(tokens_path)
  tokens, arrays, metadata = token_files.load(tokens_path)
  config, state, _ = evaluation.restore_run(str(workdir))
  if "checkpoint_fingerprint" in metadata:
    if metadata.get("method") != config.method:
      raise token_files.ForeignTokensError(
          f"{path} holds tokens of a {metadata.get('method')!r} run, but --workdir={workdir} is a"
          f" {config.method!r} run; decode with the workdir whose model made them.")
    options = {}
    if methods.make_quantizer(config).posterior is not None:  # The file's offline codebook.
      options = dict(codebook_seed=metadata.get("codebook_seed"), sampler=metadata.get("sampler"))
    tokenizer = Tokenizer(config, state, **options)
    tokenizer.check_file(tokens, arrays, metadata, path)
  else:
    tokenizer = _legacy_tokenizer(config, state, arrays, metadata, path)
    tokenizer.check_tokens(tokens, path)
  stem = path[:-4] if path.endswith(".npz") else path
  output = epath.Path(output or f"{stem}_decoded.npz")
  if output.suffix == ".npz" and output.resolve() == tokens_path.resolve():
    raise token_files.TokenFileError(
        f"--output={output} is the token file itself; choose another path.")
  output = token_files.check_output(output, overwrite)
  picture = output.with_suffix(".png")
  if num_images and tokens.shape[0]:
    token_files.refuse_existing([picture], overwrite)
  batch_size = config.eval_batch_size if batch_size is None else batch_size
  _check_batch_size(batch_size)
  decoded = []
  with errors.activity(f"decoding {path}"):
    for chunk, _, real in pipeline.padded_batches(_batches_of(tokens.astype(np.int32), batch_size),
                                                  batch_size):
      decoded.append(np.asarray(jax.device_get(tokenizer.decode(chunk)))[:real])
  images = (np.clip(np.concatenate(decoded), 0.0, 1.0) if decoded
            else np.zeros((0,) + tokenizer.image_shape, np.float32))
  io_lib.save_npz(output, images=np.round(images * 255.0).astype(np.uint8))
  if num_images and images.shape[0]:
    visualization.save_png(str(picture), visualization.image_grid(images[None, :num_images]),
                           scale=4)
  return output, images
