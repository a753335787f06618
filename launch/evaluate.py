"""Evaluates a trained run: `python -m launch.evaluate --workdir=DIR [--split=val|test]`.

Restores the latest checkpoint and the config saved with it, evaluates the
test split (default) or the val split deterministically (no sampling noise),
and writes DIR/eval.json (mse, psnr, ssim, perplexity, hard_perplexity,
code_usage, step, num_examples) and DIR/reconstructions.png (originals above
reconstructions); for --split=val, DIR/eval_val.json and
DIR/reconstructions_val.png. Choose hyperparameters on val; report test.
"""

import json

from absl import flags

from gmvq_jax import evaluation
from launch import common

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a training run.")
_SPLIT = flags.DEFINE_enum(
    "split", "test", evaluation.EVAL_SPLITS,
    "Split to evaluate: 'test' (the figures to report; writes eval.json) or 'val' (to choose"
    " hyperparameters on; writes eval_val.json).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 16, "Images shown in reconstructions.png.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  with common.launched(argv):
    figures = evaluation.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value,
                                          num_images=_NUM_IMAGES.value)
  print(json.dumps(figures, indent=2))
  json_path, png_path = evaluation.output_paths(_WORKDIR.value, _SPLIT.value)
  print("Wrote", json_path, "and", png_path)


if __name__ == "__main__":
  common.run(main)
