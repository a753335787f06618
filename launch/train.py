"""Trains a model: `python -m launch.train --config=configs/NAME.py[:smoke] --workdir=DIR`.

Override single fields with `--config.FIELD=VALUE` (e.g. `--config.num_steps=100`).
Rerunning with the same --workdir resumes from its latest checkpoint, with
exactly the next batch. SIGTERM or SIGINT (Ctrl-C) checkpoints after the
current step and exits 0. Multi-process: run the same command in every
process with --coordinator_address/--num_processes/--process_id, or
--distributed on a cluster JAX detects (see README, "Multi-host training").
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from gmvq_jax import train_lib
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_steps", None,
    "Take at most this many steps in this invocation, checkpoint and exit 0 (e.g. to fit a"
    " job's time limit); rerun to continue.", lower_bound=1)
flags.mark_flags_as_required(["config"])
_PRINT_CONFIG = common.define_print_config_flag()
common.define_distributed_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if common.print_config_or_require_workdir(_PRINT_CONFIG, _CONFIG.value, _WORKDIR):
    return
  common.setup_logging()
  common.initialize_distributed()
  with common.user_errors():
    figures = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                           stop_after_steps=_STOP_AFTER.value)
  print("Test figures:", json.dumps(figures, indent=2))


if __name__ == "__main__":
  common.run(main, config_flags=("config",))
