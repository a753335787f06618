"""Shared launcher set-up: quiet dependency logs, one-line messages for user errors."""

import contextlib
import logging as std_logging
import sys

from absl import logging

from gmvq_jax import config_checks
from gmvq_jax import conversion
from gmvq_jax import data


class _QuietDependencies(std_logging.Filter):
  """Drops INFO records from Orbax and tensorstore; warnings still pass."""

  def filter(self, record):
    noisy = "orbax" in record.pathname or "tensorstore" in record.pathname
    return record.levelno >= std_logging.WARNING or not noisy


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietDependencies())


@contextlib.contextmanager
def user_errors():
  """Turns errors a user fixes by changing an input into one clear line and exit status 1."""
  try:
    yield
  except (config_checks.ConfigError, conversion.ConversionError, data.DatasetNotPreparedError,
          FileNotFoundError, NotADirectoryError) as error:
    sys.exit(f"error: {error}")
