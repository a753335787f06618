"""The eval step and the evaluation of a whole split, on every device of a `Parallelism`.

Each padded eval batch is split over the devices like a training batch; the
quantizer's eval sums are reduced over the batch axis inside the step, so
the figures are those of one device, whatever the device count.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax.data import pipeline

Array = jax.Array
_COMBINE = dict(min=np.minimum, max=np.maximum)


def eval_step(
    state: Any,
    images: Array,
    mask: Array,
    *,
    config: ml_collections.ConfigDict,
    axis_name: Any = None,
) -> tuple[dict[str, Array], Array]:
  """Deterministic, noise-free evaluation of one (padded) batch, for any method.

  Args:
    state: the `train_lib.TrainState`.
    images: (B_local, H, W, 3) in [0, 1], this device's rows; rows with
      `mask == 0` are padding.
    mask: (B_local,) float32, 1 for real examples.
    config: the run's config (static).
    axis_name: named batch axis, or None on one device.

  Returns:
    `(sums, reconstructions)`: the quantizer's `eval_stats` over the real
    examples of the global batch (squared error, pixel count, SSIM and its
    own statistics), identical on every device; this device's
    (B_local, H, W, 3) reconstructions.
  """
  # The forward pass is per example and runs without collectives; only the
  # sums are reduced over the batch axis.
  model = methods.build_model(config, quantizer=methods.make_quantizer(config))
  reconstructions, _, aux = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images, train=False,
      quantizer_state=state.quantizer_state)
  quantizer = methods.make_quantizer(config, axis_name)
  return quantizer.eval_stats(images, reconstructions, aux, mask), reconstructions


@dataclasses.dataclass(frozen=True)
class EvalFn:
  """`eval_step` compiled for a `Parallelism`; build once, call per batch.

  Attributes:
    strategy: where it runs; its state comes from `strategy.put_state`.
    step: `(placed state, images, mask) -> (sums, reconstructions)`.
  """

  strategy: parallel.Parallelism
  step: Callable

  def __call__(self, placed_state: Any, images: Array, mask: Array):
    return self.step(placed_state, images, mask)


def make_eval_fn(config: ml_collections.ConfigDict,
                 strategy: parallel.Parallelism | None = None) -> EvalFn:
  """`eval_step` compiled for `strategy` (default: config.parallelism over every device)."""
  strategy = strategy or parallel.make(config.parallelism)
  return EvalFn(strategy, strategy.compile_eval(functools.partial(eval_step, config=config)))


def evaluate(
    config: ml_collections.ConfigDict,
    state: Any,
    dataset: Any,
    *,
    split: str = "test",
    num_images: int = 0,
    step_fn: EvalFn | None = None,
    placed: bool = False,
) -> tuple[dict[str, float], np.ndarray | None]:
  """Evaluates a whole split on the devices of `step_fn.strategy`, deterministically.

  Every eval batch of `config.eval_batch_size` images (the last one padded)
  is split over the devices, padded further to a multiple of their number;
  padding never counts. The figures equal those of one device up to float
  rounding. In a multi-process run every process calls this alike.

  Args:
    config: the run's config.
    state: one (unreplicated) train state; with `placed`, a state placed by
      `step_fn.strategy.put_state` (e.g. the training loop's).
    dataset: from `data.make_dataset`.
    split: 'val' (for choosing hyperparameters) or 'test' (for reporting).
    num_images: also return the first `num_images` originals and their
      reconstructions, stacked as (2, n, H, W, 3) (this process's rows).
    step_fn: from `make_eval_fn`, reused across calls; default: one for
      config.parallelism over every device.
    placed: whether `state` is already placed for `step_fn`.

  Returns:
    The figures of the quantizer's `summarize` and the image pairs (or None).
  """
  step_fn = step_fn or make_eval_fn(config)
  strategy = step_fn.strategy
  placed_state = state if placed else strategy.put_state(state)
  quantizer = methods.make_quantizer(config)
  batch_size = config.eval_batch_size
  padded_size = math.ceil(batch_size / strategy.num_devices) * strategy.num_devices
  rows = padded_size // jax.process_count()  # This process's rows of every batch.
  first = jax.process_index() * rows
  totals: dict[str, np.ndarray] = {}

  def accumulate(sums):
    for name, value in strategy.get_metrics(sums).items():
      value = np.asarray(value, np.float64)
      totals[name] = (value if name not in totals
                      else _COMBINE.get(quantizer.combine.get(name), np.add)(totals[name], value))

  pairs, have, pending = [], 0, None
  for images, mask, real in pipeline.padded_batches(
      dataset.eval_batches(batch_size, split=split), padded_size):
    images, mask = images[first:first + rows], mask[first:first + rows]
    sums, reconstructions = step_fn(placed_state, strategy.put_batch(images),
                                    strategy.put_batch(mask))
    if pending is not None:  # Read while this batch runs: no stall between batches.
      accumulate(pending)
    pending = sums
    take = min(num_images - have, max(min(real - first, rows), 0))
    if take > 0:
      pairs.append((images[:take], strategy.local_rows(reconstructions)[:take]))
      have += take
  if pending is not None:
    accumulate(pending)
  figures = quantizer.summarize(totals)
  if not pairs:
    return figures, None
  originals = np.concatenate([p[0] for p in pairs])
  recons = np.concatenate([p[1] for p in pairs])
  return figures, np.stack([originals, recons])
