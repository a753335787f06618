"""What a training run leaves in its workdir when there is nothing to train.

A rerun of a finished run (or one asked for fewer steps than its
checkpoint's) trains nothing: its figures are read back from metrics.jsonl
when they are recorded there, so reruns never duplicate a record; only a
missing val or test record is evaluated and written.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

from etils import epath
import ml_collections
import orbax.checkpoint as ocp

from gmvq_jax import checkpointing
from gmvq_jax import errors
from gmvq_jax import metric_writers

FINAL_SPLITS = ("val", "test")


def open_manager(workdir: epath.PathLike, config: ml_collections.ConfigDict,
                 cleanup: contextlib.ExitStack) -> ocp.CheckpointManager:
  """The run's CheckpointManager, closed by `cleanup` (which removes a checkpoints/ left empty)."""
  existed = checkpointing.checkpoint_dir(workdir).is_dir()
  with errors.activity(f"opening {checkpointing.checkpoint_dir(workdir)}"):
    manager = checkpointing.make_manager(workdir, max_to_keep=config.keep_checkpoints)

  def close():
    checkpointing.close(manager, quiet=True)
    if not existed:
      checkpointing.remove_if_empty(workdir)

  cleanup.callback(close)
  return manager


def finished_run(config: ml_collections.ConfigDict, workdir: epath.PathLike, step: int, primary: bool,
                 evaluate_split: Callable[[str], dict]) -> dict:
  """The test figures of a run whose checkpoint is at or past num_steps; trains nothing.

  Args:
    config: the run's config.
    workdir: the run's directory.
    step: the latest checkpoint's step (>= config.num_steps).
    primary: whether this process writes metrics.
    evaluate_split: evaluates the checkpoint's state on 'val' or 'test'.
  """
  if step > config.num_steps:
    logging.warning(
        "num_steps=%d is below the step of the latest checkpoint in %s (%d): nothing is"
        " trained, and the figures of step %d are reported; raise --config.num_steps above %d"
        " to train further.", config.num_steps, checkpointing.checkpoint_dir(workdir), step,
        step, step)
  recorded = {split: metric_writers.recorded_figures(workdir, step, split)
              for split in FINAL_SPLITS}
  missing = [split for split in FINAL_SPLITS if recorded[split] is None]
  if not missing:
    logging.warning("The run in %s already finished at step %d; its figures are read from"
                    " metrics.jsonl and nothing was written.", workdir, step)
    return recorded["test"]
  with errors.activity(f"evaluating step {step}"):
    for split in missing:
      recorded[split] = evaluate_split(split)
  if primary:
    writer = metric_writers.MetricWriter(workdir, resume_step=step)
    for split in missing:
      writer.write(step, split, recorded[split])
    writer.close()
  return recorded["test"]
