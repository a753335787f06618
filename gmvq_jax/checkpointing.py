"""All Orbax calls: save, restore and locate training checkpoints.

A checkpoint step holds three items under WORKDIR/checkpoints/<step>/:
`state` (the TrainState pytree), `config` (the run's ConfigDict as JSON) and
`data` (the input pipeline's position, JSON). Orbax writes each step into a
temporary directory and renames it when complete, so a process killed in the
middle of a save leaves the previous steps restorable. The workdir may be
any `etils.epath` path (local, gs://...): Orbax reads and writes through it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import Any, Iterator

from etils import epath
import jax
import ml_collections
import orbax.checkpoint as ocp

from gmvq_jax import config_version
from gmvq_jax import errors
from gmvq_jax import io as io_lib

CHECKPOINT_SUBDIR = "checkpoints"
# Fields a resumed run may change: they steer the loop, not what the state
# means. Any other difference from the saved config is refused.
RUN_CONTROL_FIELDS = frozenset({
    "num_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
    "keep_checkpoints", "eval_batch_size", "num_eval_examples", "data_dir", "parallelism",
    "nonfinite", "input_workers", "conv_impl",
})


# Files a readable checkpoint never holds empty.
_INDEX_FILES = frozenset({"manifest.ocdbt", "_METADATA"})


class CheckpointError(errors.UserError, ValueError):
  """A checkpoint cannot be used: unreadable, or saved by an incompatible config."""


class CheckpointSaveError(errors.UserError, OSError):
  """A save failed for lack of disk space; the previous checkpoint is intact."""


def checkpoint_dir(workdir: epath.PathLike) -> epath.Path:
  """WORKDIR/checkpoints, absolute when local (Orbax wants absolute paths)."""
  if io_lib.is_local(workdir):
    workdir = os.path.abspath(workdir)
  return io_lib.as_path(workdir) / CHECKPOINT_SUBDIR


def make_manager(workdir: epath.PathLike, *, max_to_keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
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
  previous = manager.latest_step()
  try:
    with errors.activity(f"saving checkpoint step {step} in {manager.directory}"):
      manager.save(step, args=ocp.args.Composite(**items), force=True)
      # Saves are asynchronous; a run that ends (or is killed) right after must
      # not leave a half-written step behind.
      manager.wait_until_finished()
  except Exception as error:
    with contextlib.suppress(OSError):  # The failed save's temporary folder.
      for path in epath.Path(manager.directory).iterdir():
        if path.name.startswith(f"{step}.orbax-checkpoint-tmp"):
          with contextlib.suppress(OSError):
            path.rmtree()
    if not _is_out_of_space(error):
      raise
    kept = ("no earlier checkpoint exists" if previous is None
            else f"the checkpoint of step {previous} is intact")
    raise CheckpointSaveError(
        f"No space left on the device of {manager.directory} while saving step {step}: a"
        f" checkpoint needs about {_megabytes(state)} MB. Nothing of step {step} was kept and"
        f" {kept}; free space (or move the workdir to a larger disk), then rerun the same"
        " command to resume.") from error


def close(manager: ocp.CheckpointManager, *, quiet: bool = False) -> None:
  """Closes `manager`; `quiet`: log instead of raise (e.g. the error of a save that failed)."""
  try:
    manager.close()
  except Exception as error:  # pylint: disable=broad-except
    if not quiet:
      raise
    logging.warning("Closing the checkpoint manager of %s: %s", manager.directory,
                    _first_line(error))


def remove_if_empty(workdir: epath.PathLike) -> None:
  """Removes WORKDIR/checkpoints if it holds nothing (e.g. a run stopped before saving).

  Object stores have no empty folders: there is nothing to remove.
  """
  if io_lib.is_local(workdir):
    with contextlib.suppress(OSError):
      os.rmdir(checkpoint_dir(workdir))


def _is_out_of_space(error: BaseException | None) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "ENOSPC" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _megabytes(state: Any) -> str:
  size = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state))
  return f"{size / 2**20:.1f}"


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
  if not (epath.Path(manager.directory) / str(step) / "data").is_dir():
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
                    workdir: epath.PathLike) -> None:
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


def restore_config(workdir: epath.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
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
  """Turns Orbax's errors on a damaged checkpoint into one CheckpointError.

  Empty index files (a disk that filled up, a copy cut short) are refused
  before Orbax opens them: tensorstore's reads of them fail in background
  threads that keep printing tracebacks after the error is raised.
  """
  where = epath.Path(manager.directory) / str(step)
  # Orbax's index files lie at most three folders down; gs:// has no recursive glob.
  for pattern in (f"{'*/' * depth}{name}" for depth in range(4) for name in _INDEX_FILES):
    for path in where.glob(pattern):
      if path.stat().length == 0:
        raise CheckpointError(_unreadable(where, f"{path} is empty"))
  try:
    yield
  except CheckpointError:
    raise
  except Exception as error:  # Orbax and tensorstore raise many types here.
    raise CheckpointError(
        _unreadable(where, f"{type(error).__name__}: {_first_line(error)}")) from error


def _unreadable(where: epath.Path, cause: str) -> str:
  return (f"Checkpoint {where} cannot be read ({cause}). It is damaged or was written by an"
          " incompatible version. Nothing was changed on disk. To resume from the previous"
          f" checkpoint, move this step aside (e.g. `mv {where} {where}.bad`); or train in a"
          " new --workdir.")


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
