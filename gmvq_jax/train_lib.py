"""TrainState, the compiled train step, and the training loop (evaluation: eval_lib).

`train_step` is a pure function; every cross-example statistic is reduced
over one named batch axis, so `parallel.Parallelism` compiles the same
function with jit, pmap or jit(shard_map).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gmvq_jax import checkpointing
from gmvq_jax import codebook_init
from gmvq_jax import config_checks
from gmvq_jax import data
from gmvq_jax import errors
from gmvq_jax import eval_lib
from gmvq_jax import faults
from gmvq_jax import io as io_lib
from gmvq_jax import metric_writers
from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax import run_records
from gmvq_jax import workdir_lock
from gmvq_jax.data import pipeline
from gmvq_jax.quantizers import common

Array = jax.Array
# Folded into the run's key for draws that must be the same on every device
# (dead-code replacement), apart from the per-example keys of the noise.
UPDATE_STREAM = 0x7FFFFFFF


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, steps taken.
    params: network and codebook parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
    quantizer_state: the quantizer's non-gradient state (`Quantizer.init_state`).
    skipped_steps: int32 scalar, steps whose update was skipped because a
      loss term or gradient was not finite (see config.nonfinite).
    tx: the optax transformation (static).
  """

  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  quantizer_state: Any = None
  skipped_steps: Array = None
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)


# ------------------------------------------------------------------ building


build_model = methods.build_model  # Where tests, experiments and benchmarks find them.
compute_dtype = methods.compute_dtype


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0.2 x peak, then cosine decay to the last step."""
  opt = config.optimizer
  return optax.warmup_cosine_decay_schedule(
      init_value=opt.init_lr_fraction * opt.peak_lr,
      peak_value=opt.peak_lr,
      warmup_steps=opt.warmup_steps,
      decay_steps=config.num_steps,
      end_value=opt.end_lr_fraction * opt.peak_lr,
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW; weight decay applies to every parameter, the codebook included."""
  opt = config.optimizer
  parts = []
  if opt.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(config), b1=opt.b1, b2=opt.b2,
                           eps=opt.eps, weight_decay=opt.weight_decay))
  return optax.chain(*parts)


def _train_state(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                 batch_stats: Any) -> TrainState:
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), quantizer_state=model.quantizer.init_state(),
                    skipped_steps=jnp.zeros((), jnp.int32), tx=tx)


def create_train_state(
    config: ml_collections.ConfigDict,
    rng: Array,
    dataset: Any,
) -> TrainState:
  """Initialises parameters (k-means codebook when asked) and the optimizer.

  Runs on the default device; the result is the same whatever parallelism
  the run uses, so 1 and k devices start from identical states.
  """
  model = build_model(config)
  init_rng, kmeans_rng = jax.random.split(rng)
  sample = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(init_rng, sample)
  params, batch_stats = variables["params"], variables["batch_stats"]
  if config.quantizer.get("kmeans_init"):
    params = codebook_init.init_params(config, model, variables, dataset, kmeans_rng)
  return _train_state(config, model, params, batch_stats)


def create_train_state_shapes(config: ml_collections.ConfigDict, dataset: Any) -> TrainState:
  """The state's structure without k-means (for `jax.eval_shape` restore targets)."""
  model = build_model(config)
  sample = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.float32)
  variables = model.init(jax.random.key(0), sample, train=False)
  return _train_state(config, model, variables["params"], variables["batch_stats"])


# --------------------------------------------------------------------- steps


def example_keys(rng: Array, step: Array, local_batch: int, axis_name: Any) -> Array:
  """One key per example from its GLOBAL index, so noise ignores device splits."""
  step_rng = jax.random.fold_in(rng, step)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  indices = offset + jnp.arange(local_batch)
  return jax.vmap(lambda i: jax.random.fold_in(step_rng, i))(indices)


def train_step(
    state: TrainState,
    images: Array,
    rng: Array,
    *,
    config: ml_collections.ConfigDict,
    axis_name: Any = None,
) -> tuple[TrainState, dict[str, Array]]:
  """One training step of any registered method on this device's share of the batch.

  The method's `Quantizer` gives the loss, and after the optimizer step its
  `update` moves its non-gradient state and codebook (TDC multipliers,
  +OPT, +replace, k-means remedies) from global statistics.

  Args:
    state: the train state (replicated).
    images: (B_local, H, W, 3) float32 in [0, 1].
    rng: the run's base typed key; folded with the step and example index.
    config: the run's config (static).
    axis_name: named batch axis, or None on one device.

  Returns:
    The new state and float32 scalar metrics, identical on every device,
    plus `metrics["nonfinite"]`: {term: bool} for the loss terms and the
    gradients. A step with any of them set leaves the parameters, optimizer,
    BatchNorm and quantizer state as they were (the step count still
    advances, so the next batch is the next one) and counts itself in
    `skipped_steps`.
  """
  quantizer = methods.make_quantizer(config, axis_name)
  model = build_model(config, axis_name, quantizer)
  keys = example_keys(rng, state.step, images.shape[0], axis_name)
  name = quantizer.params_name

  def loss_fn(params):
    (reconstructions, z_q, aux), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        example_keys=keys, step=state.step, quantizer_state=state.quantizer_state,
        mutable=["batch_stats"])
    loss, terms, carry = quantizer.loss(params.get(name), state.quantizer_state, images,
                                        reconstructions, z_q, aux)
    return loss, (terms, new_vars["batch_stats"], carry)

  grads, (terms, batch_stats, carry) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = common.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = common.pmean(terms, axis_name)
  nonfinite = faults.nonfinite_flags(metrics, grads)
  metrics.update(learning_rate=learning_rate_schedule(config)(state.step),
                 grad_norm=optax.tree.norm(grads))
  # One key for every device (not per example): codebook updates must agree.
  update_rng = jax.random.fold_in(jax.random.fold_in(rng, UPDATE_STREAM), state.step)
  quantizer_params, quantizer_state, update_metrics = quantizer.update(
      params.get(name), state.quantizer_state, carry, state.step, update_rng)
  if quantizer.init_params is not None:
    params = dict(params, **{name: quantizer_params})
  metrics.update(update_metrics)
  new_state = faults.apply_if_finite(nonfinite, state, params=params, batch_stats=batch_stats,
                                     opt_state=opt_state, quantizer_state=quantizer_state)
  metrics.update(skipped_steps=new_state.skipped_steps.astype(jnp.float32), nonfinite=nonfinite)
  return new_state, metrics


# The evaluation lives in eval_lib; these names stay for existing callers.
eval_step = eval_lib.eval_step
make_eval_fn = eval_lib.make_eval_fn
evaluate = eval_lib.evaluate


# ---------------------------------------------------------------------- loop

TrainingStopped = faults.TrainingStopped  # Where launchers and notebooks catch it.


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    dataset: Any = None,
    stop_after_steps: int | None = None,
) -> dict[str, float]:
  """Trains (or resumes) a run in `workdir`, then evaluates the val and test splits.

  Checkpoints go to WORKDIR/checkpoints every `checkpoint_every_steps` and at
  the end, each with the config and the input pipeline's position; a rerun
  with the same workdir resumes from the latest one and continues with
  exactly the next batch (config fields that change what the state means may
  not differ: see `checkpointing.check_resumable`). Metrics go to
  WORKDIR/metrics.jsonl, TensorBoard files and the console, from process 0.

  In a multi-process run (after `jax.distributed.initialize`) every process
  calls this with the same arguments; each reads its own rows of every
  global batch.

  Args:
    config: the run's config.
    workdir: the run's directory (created if absent).
    dataset: an `ImageDataset` to use instead of the one the config names
      (e.g. arrays in a notebook); the config's dataset fields are then only
      recorded.
    stop_after_steps: take at most this many steps in this call, checkpoint
      and raise `TrainingStopped` (e.g. to fit a job's time limit).

  Returns:
    The final evaluation figures of the test split (the val split's are in
    metrics.jsonl, split 'val').

  Raises:
    TrainingStopped: SIGTERM / SIGINT arrived, or `stop_after_steps` steps
      were taken, before num_steps; the checkpoint of that step is saved.
    faults.NonFiniteError: a step's loss term or gradient was NaN or
      infinite and config.nonfinite is 'stop'; nothing after the last good
      checkpoint is saved.
    config_checks.ConfigError, checkpointing.CheckpointError,
      errors.UserNotADirectoryError, data errors: bad input, before any compilation.
    workdir_lock.WorkdirBusyError, checkpointing.CheckpointSaveError: the workdir
      is in use (nothing is written); a save ran out of space (the last one is kept).
  """
  config_checks.validate(config, jax.device_count())
  if io_lib.is_file(workdir):
    raise errors.UserNotADirectoryError(
        f"--workdir={workdir} is a file; pass a directory (it is created"
        " if absent). The file was left untouched.")
  strategy = parallel.make(config.parallelism)
  primary = jax.process_index() == 0
  with contextlib.ExitStack() as cleanup:
    # Signals during set-up (data, compilation) stop the run before its first step.
    stops = faults.StopRequests().__enter__()
    cleanup.callback(stops.__exit__)
    cleanup.enter_context(workdir_lock.WorkdirLock(workdir, "training", enabled=primary))
    return _train_and_evaluate(config, workdir, dataset, stop_after_steps, strategy, primary,
                               stops, cleanup)


def _train_and_evaluate(config, workdir, dataset, stop_after_steps, strategy, primary, stops,
                        cleanup):
  """`train_and_evaluate` once the workdir is locked; `cleanup` closes what it opens."""
  logging.info("Devices: %s; parallelism: %s over %d device(s) in %d process(es).",
               jax.local_devices(), strategy.mode, strategy.num_devices, jax.process_count())
  if dataset is None:
    logging.info("Loading the %r dataset.", config.dataset)
    with errors.activity("reading the dataset"):
      dataset = data.from_config(config)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed, impl=config.prng_impl))

  manager = run_records.open_manager(workdir, config, cleanup)
  latest = manager.latest_step()
  if latest is None:
    logging.info("Initialising the model.")
    with errors.activity("initialising the model"):
      state = create_train_state(config, init_rng, dataset)
  else:  # Everything a resume needs is checked before it is restored.
    checkpointing.check_resumable(checkpointing.restore_config(workdir, latest), config, workdir)
    pipeline.check_position(checkpointing.restore_data_position(manager, latest), dataset,
                            latest, config.batch_size)
    target = jax.eval_shape(lambda: create_train_state_shapes(config, dataset))
    state = checkpointing.restore_state(manager, target, latest)
    state = state.replace(tx=make_optimizer(config))
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  start_step = int(state.step)
  if start_step >= config.num_steps:
    return run_records.finished_run(
        config, workdir, start_step, primary,
        lambda split: eval_lib.evaluate(config, state, dataset, split=split)[0])
  if stops.requested_before_start():
    raise TrainingStopped(latest, stops.signal_name, workdir, saved=False)
  end_step = (config.num_steps if stop_after_steps is None
              else min(config.num_steps, start_step + stop_after_steps))

  writer = metric_writers.MetricWriter(workdir, resume_step=start_step) if primary else None
  progress = metric_writers.Progress(config.num_steps, start_step)
  step_fn = strategy.compile_step(functools.partial(train_step, config=config))
  eval_fn = eval_lib.make_eval_fn(config, strategy)
  placed = strategy.put_state(state)
  del state  # The compiled step donates the placed copy; keep no stale host copy.
  batches = pipeline.TrainIterator(
      dataset, config.batch_size, start_step=start_step, end_step=end_step,
      shard=jax.process_index(), num_shards=jax.process_count(), put=strategy.put_batch,
      num_workers=config.get("input_workers", 1))
  stop_on_nonfinite = config.get("nonfinite", "stop") == "stop"
  progress_metrics = methods.make_quantizer(config).progress
  last_saved = latest
  unchecked = None  # (step, flags) of a step whose non-finite flags are not yet read.

  def check_finite():
    nonlocal unchecked
    if unchecked is not None and stop_on_nonfinite:
      bad_step, flags = unchecked
      bad = faults.offending(jax.tree.map(bool, strategy.get_metrics(flags)))
      if bad:
        kept = (f"The last good checkpoint, step {last_saved}, is kept in"
                f" {checkpointing.checkpoint_dir(workdir)}" if last_saved is not None
                else "No checkpoint had been saved yet")
        raise faults.NonFiniteError(
            f"Training step {bad_step} produced non-finite values in: {', '.join(bad)}."
            f" Training stopped without applying it. {kept}; nothing later was saved."
            " Fixes: lower optimizer.peak_lr, set optimizer.grad_clip, check the input data;"
            " or pass --config.nonfinite=skip to skip such steps (counted in the metrics as"
            " skipped_steps).")
    unchecked = None

  def save(done):
    nonlocal last_saved
    check_finite()  # Never checkpoint a step that is not known to be finite.
    checkpointing.save(manager, done, strategy.get_state(placed), config,
                       pipeline.position(dataset, done, config.batch_size))
    last_saved = done

  stopped, failed = None, False
  logging.info("Compiling the train step; step %d includes the compilation.", start_step + 1)
  try:
    with errors.activity(f"training from step {start_step}"):
      for step in range(start_step, end_step):
        placed, step_metrics = step_fn(placed, next(batches), train_rng)
        done = step + 1
        # The previous step's flags are read while this one runs: no stall.
        check_finite()
        unchecked = (done, step_metrics["nonfinite"])
        if step == start_step:
          jax.block_until_ready(step_metrics)
          progress.start(done)
        if done % config.log_every_steps == 0 or done == config.num_steps:
          host_metrics = strategy.get_metrics(
              {k: v for k, v in step_metrics.items() if k != "nonfinite"})
          if primary:
            writer.write(done, "train", host_metrics)
            shown = progress_metrics + (
                ("skipped_steps",) if host_metrics["skipped_steps"] else ())
            progress.report(done, {k: host_metrics[k] for k in shown})
        if done % config.checkpoint_every_steps == 0 or done == config.num_steps:
          save(done)
        if stops.requested(done) or (done == end_step < config.num_steps):
          stopped = stops.signal_name or "stop_after_steps"
          if last_saved != done:
            save(done)
          break
        if (config.eval_every_steps and done % config.eval_every_steps == 0
            and done < config.num_steps):
          figures, _ = eval_lib.evaluate(config, placed, dataset, split="val",
                                         step_fn=eval_fn, placed=True)
          if primary:
            writer.write(done, "val", figures)
      check_finite()
  except BaseException:
    failed = True
    if writer is not None:
      writer.close()
    raise
  finally:
    batches.close()
    checkpointing.close(manager, quiet=failed)  # Never hide the error that ends the run.
    stops.__exit__()  # The evaluation below is short: signals have their usual effect.
  if stopped is not None:
    if writer is not None:
      writer.close()
    raise TrainingStopped(last_saved, stopped, workdir)

  final_step = int(strategy.get_metrics(placed.step))
  started = time.perf_counter()
  with errors.activity(f"evaluating step {final_step}"):
    val_figures, _ = eval_lib.evaluate(config, placed, dataset, split="val", step_fn=eval_fn,
                                       placed=True)
    figures, _ = eval_lib.evaluate(config, placed, dataset, split="test", step_fn=eval_fn,
                                   placed=True)
  logging.info("Evaluation of the val and test splits took %.1fs.", time.perf_counter() - started)
  if primary:
    writer.write(final_step, "val", val_figures)
    writer.write(final_step, "test", figures)
    writer.close()
  return figures

