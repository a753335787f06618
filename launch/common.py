"""Shared launcher set-up: quiet dependency logs, multi-process flags, one-line errors.

Every launcher ends in one `error: ...` line and a non-zero status when it
fails: status 1 for an input or environment fault (no traceback), 130 for
Ctrl-C, and 1 after the traceback of a failure that is not the user's.
"""

import contextlib
import errno
import logging as std_logging
import os
import signal
import sys
import traceback
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from gmvq_jax import distributed
from gmvq_jax import errors
from gmvq_jax import train_lib
import launch
from launch import config_flag_checks

# What to do about an OSError of the environment, by errno.
_ENVIRONMENT_FIXES = {
    errno.ENOSPC: "the disk is full: free space or use a --workdir on another disk, then rerun",
    errno.EDQUOT: "the disk quota is used up: free space or use a --workdir on another disk",
    errno.EROFS: "the file system is read-only: use a --workdir on a writable disk",
    errno.EACCES: "permission denied: make it writable (and readable) for you, or use another path",
    errno.EPERM: "operation not permitted: check its owner and permissions, or use another path",
    errno.EIO: "an input/output error: check the disk",
}

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


def define_print_config_flag() -> flags.FlagHolder:
  return flags.DEFINE_bool(
      "print_config", False,
      "Print every field of --config (after the overrides) with its value, then exit;"
      " --workdir is then not needed.")


def print_config_or_require_workdir(print_config: flags.FlagHolder, config: Any,
                                    workdir: flags.FlagHolder) -> bool:
  """True after printing the config (the launcher then stops); else checks --workdir is given."""
  if print_config.value:
    print(config)
    return True
  if not workdir.value:
    raise app.UsageError("--workdir is required (or --print_config to only print the config).")
  return False


def define_gq_codebook_flags(runs: str = "") -> tuple[Any, Any, Any]:
  """--codebook_seed, --prior_weight, --sampler: GQ's offline codebook, each defaulting to the run's.

  Args:
    runs: prefix of each help text, e.g. "GQ runs: " where other methods ignore them.

  Returns:
    The three flag holders, in that order.
  """
  # Listed by the calling launcher's --helpshort, as if it had defined them (absl
  # names a module run with -m by its file, sys.argv[0]).
  caller = sys._getframe(1).f_globals.get("__name__")  # pylint: disable=protected-access
  module = dict(module_name=sys.argv[0] if caller == "__main__" else caller)
  return (
      flags.DEFINE_integer("codebook_seed", None,
                           f"{runs}codebook seed; default the run's quantizer.codebook_seed.",
                           **module),
      flags.DEFINE_float(
          "prior_weight", None, f"{runs}prior weight of the quantization rule (the paper's omega);"
          " default the run's quantizer.prior_weight. 2.0 keeps more codes in use at low rates.",
          **module),
      flags.DEFINE_enum("sampler", None, ["sobol", "normal"],
                        f"{runs}codebook sampler; default the run's quantizer.codebook_sampler.",
                        **module),
  )


# Orbax's warnings when a CheckpointManager is opened with read_only=True.
_READ_ONLY_NOTICES = ("Given directory is read only", "read_only=True, setting")


class _QuietDependencies(std_logging.Filter):
  """Drops INFO records from Orbax and tensorstore, and their tracebacks; warnings still pass.

  Also drops JAX's INFO line about a backend it probed and did not find
  (e.g. 'Unable to initialize backend 'tpu'' on a machine without a TPU),
  and Orbax's warnings that a manager opened read-only is read-only: the
  library opens checkpoints read-only on purpose (evaluation, resume
  checks), so they tell the user nothing.
  """

  def filter(self, record):
    if (record.levelno < std_logging.WARNING and record.pathname.endswith("xla_bridge.py")
        and "Unable to initialize backend" in record.getMessage()):
      return False
    noisy = "orbax" in record.pathname or "tensorstore" in record.pathname
    if noisy and any(notice in record.getMessage() for notice in _READ_ONLY_NOTICES):
      return False
    if noisy:  # Their errors reach the launcher, which reports them once.
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return record.levelno >= std_logging.WARNING or not noisy


def setup_logging() -> None:
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietDependencies())


def initialize_distributed() -> None:
  """Calls jax.distributed.initialize when the multi-process flags ask for it."""
  with user_errors():
    distributed.initialize(**{name: flag.value for name, flag in _DISTRIBUTED_FLAGS.items()})


_RESUME = "Rerun the same command to resume from the last checkpoint."


@contextlib.contextmanager
def launched(argv: Sequence[str], rerun: str = _RESUME):
  """The body of a launcher's main: refuses stray arguments, quiets logging, reports user errors.

  `with common.launched(argv): ...` is `user_errors(rerun)` after the
  argument check and `setup_logging()` that every launcher makes first.
  """
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  setup_logging()
  with user_errors(rerun):
    yield


@contextlib.contextmanager
def user_errors(rerun: str = _RESUME):
  """Turns errors a user fixes by changing an input into one clear line and exit status 1.

  `rerun` ends the message after a Ctrl-C: what rerunning the command does.

  A run stopped on request (SIGTERM, SIGINT, --stop_after_steps) exits 0
  after saying where its checkpoint is.

  An OSError of the environment (disk full, read-only, permissions) also
  gets one line naming the path; a second Ctrl-C exits 130. Any other
  exception keeps its traceback, followed by one line saying what the run
  was doing.
  """
  try:
    yield
  except train_lib.TrainingStopped as stopped:
    print(str(stopped), flush=True)
    sys.exit(0)
  except errors.UserError as error:
    _exit(str(error))
  except KeyboardInterrupt as error:
    _exit(str(error) if isinstance(error, errors.StopSignal) else (
        f"Interrupted (Ctrl-C) while {errors.describe_activity(error)}; nothing more was"
        f" saved. {rerun}"), 130)
  except OSError as error:
    if error.errno not in _ENVIRONMENT_FIXES and not error.filename:
      _report_failure(error)
    path = f" {error.filename}" if error.filename else ""
    fix = _ENVIRONMENT_FIXES.get(error.errno, "check that path")
    _exit(f"cannot use{path} while {errors.describe_activity(error)}"
          f" ({error.strerror or error}); {fix}.")
  except Exception as error:  # pylint: disable=broad-except
    _report_failure(error)


def _report_failure(error: BaseException) -> None:
  traceback.print_exc()
  lines = str(error).strip().splitlines()
  cause = f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__
  _exit(f"{errors.describe_activity(error)} failed ({cause}). This is not a fault of your"
        " input: please report it with the traceback above.")


def _exit(message: str, status: int = 1) -> None:
  """Prints `error: message` last and exits at once.

  After a failed checkpoint save, Orbax's background threads wait minutes
  for signals that never come and its event loops complain at shutdown, so
  the process ends here (files written so far are closed by the OS).
  """
  sys.stdout.flush()
  logging.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(status)  # pylint: disable=protected-access


def run(main: Callable[[list], None], config_flags: Sequence[str] = ()) -> None:
  """`app.run(main)`, after checking the config flags named (`--config=...`, `--config.F=V`).

  A missing config file or unknown field fails with one `error:` line, and
  `--config.FIELD=None` sets FIELD to None once the config is loaded.
  """
  # Until main runs nothing is written: SIGTERM just says so (the training
  # loop installs its own handlers before it creates anything).
  signal.signal(signal.SIGTERM, launch.stopped_while_starting)
  try:
    argv, nones = config_flag_checks.preflight(sys.argv, config_flags)
  except errors.UserError as error:
    _exit(str(error))

  def main_with_nones(args):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for flag, field in nones:
      config_flag_checks.set_none(flags.FLAGS[flag].value, field)
    return main(args)

  app.run(main_with_nones, argv=argv)
