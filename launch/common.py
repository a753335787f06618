"""Shared launcher set-up: quiet dependency logs, multi-process flags, one-line user errors."""

import contextlib
import logging as std_logging
import sys

from absl import flags
from absl import logging

from gmvq_jax import distributed
from gmvq_jax import errors
from gmvq_jax import train_lib

_DISTRIBUTED_FLAGS = {}


def define_distributed_flags() -> None:
  """Defines the multi-process flags (for the launchers that train)."""
  _DISTRIBUTED_FLAGS.update(
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None,
          "Multi-process runs: HOST:PORT of process 0, the same for every process."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "Multi-process runs: how many processes."),
      process_id=flags.DEFINE_integer(
          "process_id", None, "Multi-process runs: this process, 0..num_processes-1."),
      auto_detect=flags.DEFINE_bool(
          "distributed", False,
          "Join a multi-process run described by the cluster's environment (Cloud TPU pod"
          " slice, SLURM, Open MPI) without the three flags above."),
  )


class _QuietDependencies(std_logging.Filter):
  """Drops INFO records from Orbax and tensorstore; warnings still pass."""

  def filter(self, record):
    noisy = "orbax" in record.pathname or "tensorstore" in record.pathname
    return record.levelno >= std_logging.WARNING or not noisy


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietDependencies())


def initialize_distributed() -> None:
  """Calls jax.distributed.initialize when the multi-process flags ask for it."""
  with user_errors():
    distributed.initialize(**{name: flag.value for name, flag in _DISTRIBUTED_FLAGS.items()})


@contextlib.contextmanager
def user_errors():
  """Turns errors a user fixes by changing an input into one clear line and exit status 1.

  A run stopped on request (SIGTERM, SIGINT, --stop_after_steps) exits 0
  after saying where its checkpoint is.
  """
  try:
    yield
  except train_lib.TrainingStopped as stopped:
    print(str(stopped), flush=True)
    sys.exit(0)
  except errors.UserError as error:
    sys.exit(f"error: {error}")
