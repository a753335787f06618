"""The base class of every error a user fixes by changing an input, and its common kinds.

Launchers catch `UserError` alone and print its message as one line; any
other exception is a bug and keeps its traceback.
"""


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
