"""Shared launcher set-up: logging that shows our progress, not Orbax's internals."""

import logging as std_logging

from absl import logging


class _QuietDependencies(std_logging.Filter):
  """Drops INFO records from Orbax and tensorstore; warnings still pass."""

  def filter(self, record):
    noisy = "orbax" in record.pathname or "tensorstore" in record.pathname
    return record.levelno >= std_logging.WARNING or not noisy


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietDependencies())
