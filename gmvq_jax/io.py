"""Files of workdirs and data_dirs on any filesystem `etils.epath` reaches (local, gs://, ...).

Writes go to a temporary file and a rename, so a reader never sees a
half-written file. Every function takes a plain `str` or an `epath.Path`.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Iterator

from etils import epath
import numpy as np


def as_path(path: epath.PathLike) -> epath.Path:
  """`path` as an `epath.Path`: a local path, or a URI such as gs://bucket/run."""
  return epath.Path(path)


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on the local filesystem (no scheme://)."""
  return "://" not in os.fspath(path)


def is_file(path: epath.PathLike) -> bool:
  """Whether `path` exists and is not a directory (e.g. a --workdir that names a file)."""
  path = as_path(path)
  return path.exists() and not path.is_dir()


@contextlib.contextmanager
def atomic_write(path: epath.PathLike, suffix: str = "") -> Iterator[epath.Path]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

  Args:
    path: the destination, local or remote.
    suffix: ending of the temporary name, for writers that add or read one
      (`np.savez` appends '.npz' to any other name).

  Write through `tmp.open(...)` (builtin `open` reaches local paths only).
  The temporary file is removed if the block raises; `path` is then untouched.
  On object stores (gs://) the rename is a copy and a delete: readers still
  never see a partial object, since each object appears whole when written.
  """
  path = as_path(path)
  tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}{suffix}")
  try:
    yield tmp
    tmp.replace(path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      if tmp.exists():
        tmp.unlink()


def save_npz(path: epath.PathLike, **arrays) -> None:
  """`np.savez(path, **arrays)` on any filesystem, through a temporary name.

  The archive is built in memory and written in one piece: `np.savez` itself
  reaches local paths only.
  """
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with atomic_write(path) as tmp:
    tmp.write_bytes(buffer.getvalue())
