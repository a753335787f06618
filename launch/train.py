"""Trains a model: `python -m launch.train --config=configs/NAME.py[:smoke] --workdir=DIR`.

Override single fields with `--config.FIELD=VALUE` (e.g. `--config.num_steps=100`).
Rerunning with the same --workdir resumes from its latest checkpoint.
"""

import json

from absl import app
from absl import flags
from ml_collections import config_flags

from gmvq_jax import train_lib
from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.setup_logging()
  with common.user_errors():
    figures = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print("Test figures:", json.dumps(figures, indent=2))


if __name__ == "__main__":
  app.run(main)
