"""Writing files so that a reader never sees a half-written one: temporary file, then rename."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

  Args:
    path: the destination.
    suffix: ending of the temporary name, for writers that add or read one
      (`np.savez` appends '.npz' to any other name).

  The temporary file is removed if the block raises; `path` is then untouched.
  """
  tmp = f"{path}.tmp-{os.getpid()}{suffix}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
