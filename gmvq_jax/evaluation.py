"""Evaluation of a saved run: restore its latest checkpoint, score the test split.

Used by `launch.evaluate`; writes WORKDIR/eval.json and
WORKDIR/reconstructions.png.
"""

from __future__ import annotations

import json
import os

import jax

from gmvq_jax import checkpointing
from gmvq_jax import data
from gmvq_jax import train_lib
from gmvq_jax import visualization

EVAL_KEYS = ("mse", "psnr", "perplexity", "hard_perplexity", "code_usage")


def restore_run(workdir: str):
  """Returns (config, state, dataset) of the latest checkpoint in `workdir`."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir={workdir} is not a directory of a training run.")
  config = checkpointing.restore_config(workdir)
  dataset = data.make_dataset(config.dataset, image_size=config.image_size, seed=config.seed,
                              data_dir=config.get("data_dir"),
                              num_eval_examples=config.get("num_eval_examples"))
  manager = checkpointing.make_manager(workdir, read_only=True)
  target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(config, dataset))
  state = checkpointing.restore_state(manager, target)
  manager.close()
  return config, state.replace(tx=train_lib.make_optimizer(config)), dataset


def write_json(path: str, payload: dict) -> None:
  """Writes JSON through a temporary file and a rename: never half-written."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)


def evaluate_workdir(workdir: str, *, num_images: int = 16) -> dict:
  """Evaluates the latest checkpoint of `workdir` on its test split.

  Returns:
    The figures written to eval.json: mse, psnr, perplexity,
    hard_perplexity, code_usage, plus step and num_examples.
  """
  config, state, dataset = restore_run(workdir)
  figures, pairs = train_lib.evaluate(config, state, dataset, num_images=num_images)
  figures = dict(figures, step=int(state.step), num_examples=int(dataset.num_eval_examples))
  write_json(os.path.join(workdir, "eval.json"), figures)
  if pairs is not None:
    visualization.save_reconstructions(os.path.join(workdir, "reconstructions.png"), pairs)
  return figures
