"""The compiled GM-VQ train step on one device, as the benchmarks time it.

Shared by `benchmarks.train_step` (JAX against PyTorch) and
`benchmarks.input_pipeline` (the input pipeline against the step).
"""

from __future__ import annotations

import contextlib
import functools
import time
from unittest import mock

import jax
import numpy as np

from gmvq_jax import faults
from gmvq_jax import train_lib


class RandomImages:
  """Stand-in dataset for `train_lib.create_train_state`: uniform noise images."""

  image_shape = (32, 32, 3)

  def train_batch(self, step: int, batch_size: int) -> np.ndarray:
    return np.random.default_rng(step).random((batch_size,) + self.image_shape, dtype=np.float32)


def _unguarded_update(nonfinite, state, **new):
  """`faults.apply_if_finite` without the guard: the plain update."""
  del nonfinite
  return state.replace(step=state.step + 1, **new)


@contextlib.contextmanager
def without_nonfinite_guard():
  """Traces train_lib.train_step without its non-finite guard, to measure what the guard costs.

  Inside, the step computes no finiteness flags and selects nothing: the
  update is applied as it is. For benchmarks only; the library has no such mode.
  """
  with mock.patch.object(faults, "nonfinite_flags", lambda terms, grads: {}), \
       mock.patch.object(faults, "apply_if_finite", _unguarded_update):
    yield


class JaxRunner:
  """The library's jitted `train_lib.train_step`, compiled ahead of time on one device.

  guard=False compiles the step without its non-finite guard
  (`without_nonfinite_guard`), to measure the guard's cost; `name` labels
  other variants of the config (e.g. conv_impl='xla').
  """

  framework = "jax"

  def __init__(self, config, device: jax.Device, batch_size: int, *, guard: bool = True,
               name: str | None = None):
    self.name = name or ("jax" if guard else "jax/no-guard")
    with jax.default_device(device):
      state = train_lib.create_train_state(config, jax.random.key(0), RandomImages())
    self.initial_params = jax.device_get(state.params)
    self.state = jax.device_put(state, device)
    self.images = jax.device_put(RandomImages().train_batch(10_000, batch_size), device)
    self.rng = jax.device_put(jax.random.key(1), device)
    self.metrics = None
    step = jax.jit(functools.partial(train_lib.train_step, config=config), donate_argnums=0)
    started = time.perf_counter()
    with contextlib.nullcontext() if guard else without_nonfinite_guard():
      lowered = step.lower(self.state, self.images, self.rng)
    lowered_at = time.perf_counter()
    self.compiled = lowered.compile()
    compiled_at = time.perf_counter()
    self.setup_s = compiled_at - started
    self.setup_note = f"trace+lower {lowered_at - started:.1f}s, compile {compiled_at - lowered_at:.1f}s"

  def step(self) -> None:
    self.state, self.metrics = self.compiled(self.state, self.images, self.rng)

  def sync(self) -> None:
    jax.block_until_ready((self.state, self.metrics))

  def loss(self) -> float:
    return float(self.metrics["loss"])


def time_repeat(runner, steps: int) -> float:
  """Seconds per step over `steps` back-to-back steps, synchronised at the end."""
  started = time.perf_counter()
  for _ in range(steps):
    runner.step()
  runner.sync()
  return (time.perf_counter() - started) / steps
