"""The base class of every error a user fixes by changing an input, and its common kinds.

Launchers catch `UserError` alone and print its message as one line; any
other exception is a bug and keeps its traceback.
"""

import contextlib
from typing import Iterator


class UserError(Exception):
  """An input (flag, config field, file, dataset) is wrong; the message says how to fix it."""


class UserFileNotFoundError(UserError, FileNotFoundError):
  """A file or directory the user named does not exist."""


class UserNotADirectoryError(UserError, NotADirectoryError):
  """A path the user named as a directory is a file."""


class DatasetNotPreparedError(UserFileNotFoundError):
  """A TFDS dataset has no ArrayRecord files in data_dir; the message says how to build them."""


class DataError(UserError, ValueError):
  """The user's own images (dataset 'folder' or 'npz') are missing or unreadable.

  The message names the file or array at fault and how to fix it, in a form a
  launcher can print as one line.
  """


class StopSignal(KeyboardInterrupt):
  """A second Ctrl-C (or a signal the run cannot stop cleanly at): stop now, without saving."""


@contextlib.contextmanager
def activity(what: str) -> Iterator[None]:
  """Labels an exception escaping the block with what was being done, e.g. 'saving step 3'.

  The innermost label wins; launchers print it as the last line under the
  traceback of an error that is not the user's (`describe_activity`).
  """
  try:
    yield
  except BaseException as error:
    if getattr(error, "gmvq_activity", None) is None:
      try:
        error.gmvq_activity = what
      except AttributeError:  # Some C extension exceptions take no attributes.
        pass
    raise


def describe_activity(error: BaseException, default: str = "running") -> str:
  return getattr(error, "gmvq_activity", None) or default
