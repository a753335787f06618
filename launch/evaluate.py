"""Evaluates a trained run: `python -m launch.evaluate --workdir=DIR`.

Restores the latest checkpoint and the config saved with it, evaluates the
test split deterministically (no sampling noise), and writes DIR/eval.json
(mse, psnr, perplexity, hard_perplexity, code_usage) and
DIR/reconstructions.png (originals above reconstructions).
"""

import json
import os

from absl import app
from absl import flags

from gmvq_jax import evaluation
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a training run.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "Images shown in reconstructions.png.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  common.setup_logging()
  with common.user_errors():
    figures = evaluation.evaluate_workdir(_WORKDIR.value, num_images=_NUM_IMAGES.value)
  print(json.dumps(figures, indent=2))
  print("Wrote", os.path.join(_WORKDIR.value, "eval.json"), "and",
        os.path.join(_WORKDIR.value, "reconstructions.png"))


if __name__ == "__main__":
  app.run(main)
