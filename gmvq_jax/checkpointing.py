"""All Orbax calls: save, restore and locate training checkpoints.

A checkpoint step holds two items: `state` (the TrainState pytree) and
`config` (the run's ConfigDict as JSON), under WORKDIR/checkpoints/<step>/.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
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


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
  """Saves `state` and `config` at `step`; returns once the save is on disk.

  Args:
    manager: from `make_manager`.
    step: the training step the state is at.
    state: a pytree of arrays on host or device (one copy, not pmap-stacked).
    config: the run's config, stored as JSON beside the state.
  """
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          config=ocp.args.JsonSave(config.to_dict()),
      ),
      force=True,
  )
  # Saves are asynchronous; a run that ends (or is killed) right after must
  # not leave a half-written step behind.
  manager.wait_until_finished()


def latest_step(manager: ocp.CheckpointManager) -> int | None:
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
    raise FileNotFoundError(f"No checkpoint under {manager.directory}.")
  abstract = jax.tree.map(_abstract_leaf, target)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored["state"]


def restore_config(workdir: str, step: int | None = None) -> ml_collections.ConfigDict:
  """Reads the config saved beside the latest (or given) checkpoint of a workdir."""
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint under {checkpoint_dir(workdir)}: train first with"
        f" `python -m launch.train --config=... --workdir={workdir}`.")
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(restored["config"])


def _abstract_leaf(leaf):
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:  # Orbax needs to know where to put each array.
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
