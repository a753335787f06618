"""Fault injection for launchers: writes under a folder fail as on a full or read-only disk.

Put this folder on PYTHONPATH and set GMVQ_FAULT_ROOT (the folder),
GMVQ_FAULT_ERRNO ('ENOSPC' or 'EROFS'), optionally GMVQ_FAULT_MATCH (only
paths containing it) and GMVQ_FAULT_AFTER (that many writes succeed first).
Python-level writes are covered (open for writing, os.open with write flags,
mkdir; for EROFS also rename/replace, remove, rmdir, rmtree); tensorstore's C++ writes are
not, so a checkpoint save fails when Orbax creates its folders or files.
GMVQ_FAULT_BUG=module:function makes a function raise instead.
"""

import builtins
import errno
import io
import os
import shutil

_ROOT = os.environ.get("GMVQ_FAULT_ROOT")
_ERRNO = getattr(errno, os.environ.get("GMVQ_FAULT_ERRNO", "ENOSPC"))
_MATCH = os.environ.get("GMVQ_FAULT_MATCH", "")
_budget = [int(os.environ.get("GMVQ_FAULT_AFTER", "0"))]


def _hit(path) -> bool:
  if isinstance(path, int) or path is None:
    return False
  path = os.path.abspath(os.fsdecode(path))
  if not (path == _ROOT or path.startswith(_ROOT + os.sep)) or _MATCH not in path:
    return False
  if _budget[0] > 0:
    _budget[0] -= 1
    return False
  return True


def _fail(path):
  raise OSError(_ERRNO, os.strerror(_ERRNO), os.fsdecode(path))


def _guard(original, *path_args, write_check=None):
  def wrapper(*args, **kwargs):
    if write_check is None or write_check(*args, **kwargs):
      for index in path_args:
        if index < len(args) and _hit(args[index]):
          _fail(args[index])
    return original(*args, **kwargs)
  return wrapper


def _writes_file(file, mode="r", *args, **kwargs):
  return any(c in mode for c in "wax+")


def _writes_fd(path, flags, *args, **kwargs):
  return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


if _ROOT:
  _ROOT = os.path.abspath(_ROOT)
  builtins.open = io.open = _guard(io.open, 0, write_check=_writes_file)
  os.open = _guard(os.open, 0, write_check=_writes_fd)
  os.mkdir = _guard(os.mkdir, 0)
  if _ERRNO == errno.EROFS:  # A full disk still renames and deletes.
    for _name in ("remove", "unlink", "rmdir"):
      setattr(os, _name, _guard(getattr(os, _name), 0))
    os.rename = _guard(os.rename, 0, 1)
    os.replace = _guard(os.replace, 0, 1)
    shutil.rmtree = _guard(shutil.rmtree, 0)

# GMVQ_FAULT_BUG=module:function makes that function raise RuntimeError, as a
# bug in the library (or in JAX under it) would.
if os.environ.get("GMVQ_FAULT_BUG"):
  import importlib

  _module, _function = os.environ["GMVQ_FAULT_BUG"].split(":")

  def _bug(*args, **kwargs):
    raise RuntimeError("injected bug")

  setattr(importlib.import_module(_module), _function, _bug)
