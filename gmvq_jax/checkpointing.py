"""All Orbax calls: save, restore and locate training checkpoints.

A checkpoint step holds three items under WORKDIR/checkpoints/<step>/:
`state` (the TrainState pytree), `config` (the run's ConfigDict as JSON) and
`data` (the input pipeline's position, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a process killed in the
middle of a save leaves the previous steps restorable.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp

from gmvq_jax import config_version
from gmvq_jax import errors

CHECKPOINT_SUBDIR = "checkpoints"
# Fields a resumed run may change: they steer the loop, not what the state
# means. Any other difference from the saved config is refused.
RUN_CONTROL_FIELDS = frozenset({
    "num_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "eval_batch_size", "num_eval_examples", "data_dir", "parallelism",
    "nonfinite", "input_workers",
})


class CheckpointError(errors.UserError, ValueError):
  """A checkpoint cannot be used: unreadable, or saved by an incompatible config."""


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints as an absolute path (Orbax wants absolute paths)."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def make_manager(workdir: str, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over WORKDIR/checkpoints (created unless read_only)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      read_only=read_only,
      # Incomplete saves from a killed run are removed, never restored.
      cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: ml_collections.ConfigDict,
         data_position: dict | None = None) -> None:
  """Saves `state`, `config` and the data position at `step`; returns once on disk.

  Every process of a multi-process run must call this (Orbax coordinates
  them; the primary process writes replicated arrays and the JSON items).

  Args:
    manager: from `make_manager`.
    step: the training step the state is at.
    state: a pytree of arrays on host or device (one copy, not pmap-stacked).
    config: the run's config, stored as JSON beside the state.
    data_position: JSON-able description of where the input pipeline
      continues (see `data.TrainIterator.position`).
  """
  items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict()))
  if data_position is not None:
    items["data"] = ocp.args.JsonSave(data_position)
  manager.save(step, args=ocp.args.Composite(**items), force=True)
  # Saves are asynchronous; a run that ends (or is killed) right after must
  # not leave a half-written step behind.
  manager.wait_until_finished()


def latest_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest complete checkpoint's step, or None when there is none."""
  return manager.latest_step()


def restore_state(manager: ocp.CheckpointManager, target: Any, step: int | None = None) -> Any:
  """Restores the state at `step` (default: latest) into the structure of `target`.

  Args:
    manager: from `make_manager`.
    target: a pytree of arrays or `jax.ShapeDtypeStruct`s (e.g. from
      `jax.eval_shape`) giving the structure, dtypes and shardings.
    step: checkpoint step; the latest when None.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise errors.UserFileNotFoundError(f"No checkpoint under {manager.directory}.")
  abstract = jax.tree.map(_abstract_leaf, target)
  with _readable(manager, step):
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored["state"]


def restore_data_position(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The data position saved at `step`, or None for checkpoints saved without one."""
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), "data")):
    return None
  with _readable(manager, step):
    restored = manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
  return dict(restored["data"])


def config_differences(saved: dict, given: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(field, saved value, given value) for every leaf that differs; tuples equal lists."""
  differences = []
  for key in sorted(set(saved) | set(given)):
    field = f"{prefix}{key}"
    old, new = saved.get(key, "<absent>"), given.get(key, "<absent>")
    if isinstance(old, dict) and isinstance(new, dict):
      differences.extend(config_differences(old, new, f"{field}."))
    elif _normalise(old) != _normalise(new):
      differences.append((field, old, new))
  return differences


def check_resumable(saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict,
                    workdir: str) -> None:
  """Raises CheckpointError naming every field that differs outside RUN_CONTROL_FIELDS.

  Fields absent from older checkpoints' configs count as equal to their
  current default only when they are run-control fields.
  """
  mismatched = [(field, old, new)
                for field, old, new in config_differences(saved.to_dict(), given.to_dict())
                if field not in RUN_CONTROL_FIELDS]
  if mismatched:
    lines = "\n".join(f"  config.{field}: checkpoint has {old!r}, this run has {new!r}"
                       for field, old, new in mismatched)
    raise CheckpointError(
        f"The checkpoint in {checkpoint_dir(workdir)} was saved by a run with a different"
        f" config, so this run cannot resume from it:\n{lines}\n"
        "Rerun with the checkpoint's values for these fields, or train in a new --workdir."
        f" Only {', '.join(sorted(RUN_CONTROL_FIELDS))} may change on resume. Nothing was"
        " changed on disk.")


def restore_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """Reads the config saved beside the latest (or given) checkpoint of a workdir."""
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise errors.UserFileNotFoundError(
        f"No checkpoint under {checkpoint_dir(workdir)}: train first with"
        f" `python -m launch.train --config=... --workdir={workdir}`.")
  with _readable(manager, step):
    restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  # A run of an older config version with a renamed field is refused here.
  return config_version.upgrade(ml_collections.ConfigDict(restored["config"]), workdir)


@contextlib.contextmanager
def _readable(manager: ocp.CheckpointManager, step: int) -> Iterator[None]:
  """Turns Orbax's errors on a damaged checkpoint into one CheckpointError."""
  try:
    yield
  except CheckpointError:
    raise
  except Exception as error:  # Orbax and tensorstore raise many types here.
    where = os.path.join(str(manager.directory), str(step))
    raise CheckpointError(
        f"Checkpoint {where} cannot be read ({type(error).__name__}: {_first_line(error)})."
        " It is damaged or was written by an incompatible version. Nothing was changed on"
        f" disk. To resume from the previous checkpoint, move this step aside (e.g. `mv {where}"
        f" {where}.bad`); or train in a new --workdir.") from error


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else ""


def _normalise(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return [_normalise(v) for v in value]
  return value


def _abstract_leaf(leaf):
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:  # Orbax needs to know where to put each array.
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
