"""How a step function is compiled across devices: jit, pmap or jit(shard_map).

The step functions in train_lib are written once, with collectives over one
named batch axis (`AXIS`). `Parallelism` compiles them for one device (plain
jit, no axis), `jax.pmap`, or `jax.jit(jax.shard_map(...))` over a 1-D mesh,
and moves states and batches to where each mode wants them.

Multi-process runs (after `jax.distributed.initialize`) use shard_map over
the mesh of every process's devices: each process passes only its own rows
of the global batch (`put_batch`), and reads back its local copy of the
replicated state and metrics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
MODES = ("jit", "pmap", "shard_map")


@dataclasses.dataclass(frozen=True)
class Parallelism:
  """One way of running a step on `devices`.

  Attributes:
    mode: 'jit' (one device), 'pmap' or 'shard_map'.
    devices: the devices the batch is split over.
  """

  mode: str
  devices: tuple[Any, ...]

  @property
  def num_devices(self) -> int:
    """Devices the global batch is split over (of every process)."""
    return len(self.devices)

  @property
  def num_local_devices(self) -> int:
    """Devices of this process (all of them in a single-process run)."""
    return sum(d.process_index == jax.process_index() for d in self.devices)

  @property
  def axis_name(self) -> str | None:
    """The named batch axis for collectives, None under plain jit."""
    return None if self.mode == "jit" else AXIS

  @functools.cached_property
  def mesh(self) -> Mesh:
    """The 1-D device mesh with the batch axis AXIS."""
    return Mesh(np.asarray(self.devices), (AXIS,))

  def compile_step(self, step_fn: Callable, *, donate_state: bool = True) -> Callable:
    """Compiles `step_fn(state, batch, rng, *, axis_name) -> (state, metrics)`.

    The returned callable takes (state, batch, rng) as placed by
    `put_state` / `put_batch` and returns a state placed the same way and
    metrics that are identical on every device.
    """
    fn = functools.partial(step_fn, axis_name=self.axis_name)
    donate = (0,) if donate_state else ()
    if self.mode == "jit":
      return jax.jit(fn, donate_argnums=donate)
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, None), devices=self.devices,
                      donate_argnums=donate)
    # check_vma=False keeps pmap's semantics for collectives under autodiff:
    # each device differentiates its own loss and gradients are pmean-ed
    # explicitly, so the same step function serves both modes.
    sharded = jax.shard_map(
        fn, mesh=self.mesh, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()),
        check_vma=False)
    return jax.jit(sharded, donate_argnums=donate)

  def compile_eval(self, eval_fn: Callable) -> Callable:
    """Compiles `eval_fn(state, images, mask, *, axis_name) -> (sums, rows)`.

    The returned callable takes a state placed by `put_state` and images and
    mask placed by `put_batch`; `sums` come back identical on every device
    (read them with `get_metrics`), `rows` split like the batch (read this
    process's with `local_rows`).
    """
    fn = functools.partial(eval_fn, axis_name=self.axis_name)
    if self.mode == "jit":
      return jax.jit(fn)
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, in_axes=(0, 0, 0), devices=self.devices)
    return jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS), P(AXIS)),
                                 out_specs=(P(), P(AXIS)), check_vma=False))

  def put_state(self, state: Any) -> Any:
    """Places one copy of `state` for the step: replicated on every device."""
    # From a host copy: the compiled step donates its state buffers, and the
    # caller's state must stay valid (device_put may alias a device buffer
    # into one shard of the result). Called once per run, not per step.
    state = jax.device_get(state)
    if self.mode == "jit":
      return jax.device_put(state, self.devices[0])
    if self.mode == "pmap":  # A leading device axis, one slice per device.
      stacked = jax.tree.map(lambda x: np.stack([np.asarray(x)] * self.num_devices), state)
      return jax.device_put(stacked, NamedSharding(self.mesh, P(AXIS)))
    replicated = NamedSharding(self.mesh, P())
    # From a callback, so that each process fills only its own devices (every
    # process holds the same host copy).
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), replicated,
                                               lambda index, x=x: np.asarray(x)[index]),
        state)

  def get_state(self, state: Any) -> Any:
    """One copy of a placed state (pmap: the first device's), e.g. to checkpoint.

    Under shard_map the replicated global arrays themselves: in a
    multi-process run every process passes them to Orbax together.
    """
    if self.mode == "pmap":  # The first device's slice, without a cross-device gather.
      return jax.tree.map(lambda x: x.addressable_data(0).reshape(x.shape[1:]), state)
    return state

  def local_state(self, state: Any) -> Any:
    """This process's host copy of a placed (replicated) state, e.g. to evaluate."""
    return jax.tree.map(self._first_copy, state)

  def put_batch(self, batch: np.ndarray) -> jax.Array:
    """Places this process's rows (B_local, ...) of the global batch, split over devices.

    In a single-process run the rows are the whole global batch; in a
    multi-process run process p passes rows [p B_local, (p+1) B_local).
    """
    if batch.shape[0] % self.num_local_devices:
      raise ValueError(f"This process's batch of {batch.shape[0]} does not divide by its"
                       f" {self.num_local_devices} devices.")
    if self.mode == "jit":
      return jax.device_put(batch, self.devices[0])
    if self.mode == "pmap":
      local = batch.reshape((self.num_devices, -1) + batch.shape[1:])
      return jax.device_put(local, NamedSharding(self.mesh, P(AXIS)))
    global_shape = (batch.shape[0] * jax.process_count(),) + batch.shape[1:]
    return jax.make_array_from_process_local_data(
        NamedSharding(self.mesh, P(AXIS)), batch, global_shape)

  def local_rows(self, rows: jax.Array) -> np.ndarray:
    """Host copy of this process's rows of a batch-split output, in batch order."""
    if self.mode == "pmap":
      return np.asarray(rows).reshape((-1,) + rows.shape[2:])
    shards = sorted(rows.addressable_shards, key=lambda shard: shard.index[0].start or 0)
    return np.concatenate([np.asarray(shard.data) for shard in shards])

  def get_metrics(self, metrics: Any) -> Any:
    """Host numpy copy of metrics (identical on every device after pmean)."""
    return jax.tree.map(self._first_copy, metrics)

  def _first_copy(self, x: jax.Array) -> np.ndarray:
    """The first local device's copy of a replicated array, on the host."""
    copy = np.asarray(x.addressable_data(0))
    return copy.reshape(x.shape[1:]) if self.mode == "pmap" else copy


def make(mode: str, devices: Sequence[Any] | None = None) -> Parallelism:
  """A `Parallelism` over `devices` (default: every device of every process).

  With a single device every mode compiles with plain jit: the collectives
  over one device are identities, so nothing changes but the overhead.
  A multi-process run needs 'shard_map' (pmap and jit see one process).
  """
  if mode not in MODES:
    raise ValueError(f"parallelism={mode!r}; allowed: {MODES}.")
  if jax.process_count() > 1 and mode != "shard_map":
    raise ValueError(
        f"parallelism={mode!r} runs within one process, but this run has"
        f" {jax.process_count()} processes; use --config.parallelism=shard_map.")
  devices = tuple(jax.devices() if devices is None else devices)
  if mode == "jit" or len(devices) == 1:
    return Parallelism("jit", devices[:1])
  return Parallelism(mode, devices)
