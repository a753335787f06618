"""Evaluation of a saved run: restore its latest checkpoint, score its val or test split.

Used by `launch.evaluate`; writes WORKDIR/eval.json and
WORKDIR/reconstructions.png for the test split, WORKDIR/eval_val.json and
WORKDIR/reconstructions_val.png for the val split.
"""

from __future__ import annotations

import json

from etils import epath
import jax

from gmvq_jax import checkpointing
from gmvq_jax import data
from gmvq_jax import errors
from gmvq_jax import io as io_lib
from gmvq_jax import train_lib
from gmvq_jax import visualization
from gmvq_jax import workdir_lock
from gmvq_jax.data import registry

EVAL_KEYS = ("mse", "psnr", "ssim", "perplexity", "hard_perplexity", "code_usage")
EVAL_SPLITS = registry.EVAL_SPLITS  # ("val", "test").


def output_paths(workdir: epath.PathLike, split: str = "test") -> tuple[epath.Path, epath.Path]:
  """(figures JSON, reconstructions PNG) that evaluate_workdir writes for `split`.

  The test split keeps the original names, eval.json and reconstructions.png;
  the val split's are eval_val.json and reconstructions_val.png.
  """
  suffix = "" if registry.check_eval_split(split) == "test" else f"_{split}"
  workdir = io_lib.as_path(workdir)
  return workdir / f"eval{suffix}.json", workdir / f"reconstructions{suffix}.png"


def restore_run(workdir: epath.PathLike):
  """Returns (config, state, dataset) of the latest checkpoint in `workdir`."""
  if not io_lib.as_path(workdir).is_dir():
    raise errors.UserFileNotFoundError(f"--workdir={workdir} is not a directory of a training run.")
  config = checkpointing.restore_config(workdir)
  dataset = data.from_config(config)
  manager = checkpointing.make_manager(workdir, read_only=True)
  try:
    target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(config, dataset))
    state = checkpointing.restore_state(manager, target)
  finally:
    checkpointing.close(manager, quiet=True)
  return config, state.replace(tx=train_lib.make_optimizer(config)), dataset


def write_json(path: epath.PathLike, payload: dict) -> None:
  """Writes JSON through a temporary file and a rename: never half-written."""
  with io_lib.atomic_write(path) as tmp, tmp.open("w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")


def evaluate_workdir(workdir: epath.PathLike, *, split: str = "test", num_images: int = 16) -> dict:
  """Evaluates the latest checkpoint of `workdir` on its val or test split.

  Args:
    workdir: directory of a training run (local, or e.g. gs://bucket/run).
    split: "test" (the figures to report) or "val" (to choose
      hyperparameters on; never tune on "test").
    num_images: originals and reconstructions shown in the PNG.

  When that file already holds the figures of the latest checkpoint (and
  the PNG exists), they are returned as they are and nothing is written.

  Returns:
    The figures written to output_paths(workdir, split)[0] (eval.json for
    test, eval_val.json for val): mse, psnr, ssim, perplexity,
    hard_perplexity, code_usage, plus step and num_examples (the evaluated split's size).

  Raises:
    ValueError: `split` is not in EVAL_SPLITS (before anything is read).
  """
  json_path, png_path = output_paths(workdir, split)
  recorded = _up_to_date(workdir, json_path, png_path if num_images else None)
  if recorded is not None:  # Nothing to write: no lock needed either.
    return recorded
  with workdir_lock.WorkdirLock(workdir, "evaluation", create=False):
    config, state, dataset = restore_run(workdir)
    with errors.activity(f"evaluating the {split} split of {workdir}"):
      figures, pairs = train_lib.evaluate(config, state, dataset, split=split,
                                          num_images=num_images)
    num_examples = dataset.num_eval_examples if split == "test" else dataset.num_val_examples
    figures = dict(figures, step=int(state.step), num_examples=int(num_examples))
    write_json(json_path, figures)
    if pairs is not None:
      visualization.save_reconstructions(png_path, pairs)
  return figures


def _up_to_date(workdir: epath.PathLike, json_path: epath.Path,
                png_path: epath.Path | None) -> dict | None:
  """The figures of `json_path` if they are of the latest checkpoint (and the PNG exists)."""
  if not json_path.is_file() or (png_path and not png_path.is_file()):
    return None
  try:
    figures = json.loads(json_path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  if not checkpointing.checkpoint_dir(workdir).is_dir():
    return None
  manager = checkpointing.make_manager(workdir, read_only=True)
  latest = manager.latest_step()
  manager.close()
  return figures if isinstance(figures, dict) and figures.get("step") == latest else None
