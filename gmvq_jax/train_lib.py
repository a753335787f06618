"""TrainState, the compiled train and eval steps, and the training loop.

`train_step` and `eval_step` are pure functions; every cross-example
statistic is reduced over one named batch axis, so `parallel.Parallelism`
compiles the same function with jit, pmap or jit(shard_map).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gmvq_jax import checkpointing
from gmvq_jax import codebook_init
from gmvq_jax import config_checks
from gmvq_jax import data
from gmvq_jax import errors
from gmvq_jax import faults
from gmvq_jax import metric_writers
from gmvq_jax import methods
from gmvq_jax import metrics as metrics_lib
from gmvq_jax import parallel
from gmvq_jax.data import pipeline
from gmvq_jax.models import autoencoder
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import gq

Array = jax.Array
# Folded into the run's key for draws that must be the same on every device
# (dead-code replacement), apart from the per-example keys of the noise.
UPDATE_STREAM = 0x7FFFFFFF
# The figures of the console's progress line, by family.
PROGRESS_METRICS = dict(
    gmvq=("loss", "recon", "kl", "qbar_perplexity"),
    gq=("loss", "recon", "kl_bits_mean", "lam"),
    **{kind: ("loss", "recon", "quantizer_loss", "batch_perplexity")
       for kind in methods.BASELINE_FAMILIES})


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, steps taken.
    params: network and codebook parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
    quantizer_state: non-gradient quantizer state (None for GM-VQ).
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


def build_model(config: ml_collections.ConfigDict, axis_name: Any = None) -> nn.Module:
  """The autoencoder a config describes; `axis_name` for cross-device BatchNorm."""
  q = config.quantizer
  networks = dict(channels=tuple(config.model.channels),
                  num_res_blocks=config.model.num_res_blocks, axis_name=axis_name,
                  dtype=compute_dtype(config))
  kind = methods.family(config)
  if kind == "gq":
    return autoencoder.GaussianAutoencoder(latent_channels=q.latent_channels, **networks)
  if kind in methods.BASELINE_FAMILIES:
    return autoencoder.BaselineAutoencoder(
        encoder_width=methods.encoder_width(config), latent_width=methods.latent_width(config),
        quantize=methods.make_quantize(config, axis_name),
        init_quantizer_params=methods.init_quantizer_params(config), **networks)
  return autoencoder.GMVQAutoencoder(
      num_codes=q.num_codes, latent_dim=q.latent_dim, sigma_z2=q.sigma_z2, **networks)


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The networks' compute dtype: config.dtype (configs saved before it: model.dtype)."""
  name = config.get("dtype") or config.model.get("dtype") or "float32"
  return jnp.dtype(name)


def initial_quantizer_state(config: ml_collections.ConfigDict) -> Any:
  """Non-gradient quantizer state: TDC multipliers (GQ), dead-code counters (+replace), or None."""
  kind = methods.family(config)
  if kind == "gq":
    return gq.init_tdc_state()
  if kind == "gmvq":
    return codebook_init.init_gmvq_state(config)
  return methods.initial_state(config)


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
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), quantizer_state=initial_quantizer_state(config),
                    skipped_steps=jnp.zeros((), jnp.int32), tx=tx)


def gq_codebook(config: ml_collections.ConfigDict) -> np.ndarray:
  """The GQ codebook a config names: (K, m) float32, regenerated from its seed."""
  q = config.quantizer
  return gq.sample_codebook(q.codebook_seed, 2**q.log2_codebook_size, q.group_size,
                            q.codebook_sampler)


def gq_sample_fn(config: ml_collections.ConfigDict):
  """None (plain Gaussian sample), or the straight-through sample when `quantizer.ste`."""
  q = config.quantizer
  if not q.ste:
    return None
  # Sampled on the host while tracing: a constant of the compiled step.
  codebook = jnp.asarray(gq_codebook(config))
  return functools.partial(gq.quantize_ste, codebook=codebook, group_size=q.group_size,
                           beta=q.beta)


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

  GM-VQ minimises the ALBO objective, GQ the TDC-weighted Gaussian VAE loss
  (and updates its multipliers in `state.quantizer_state` from global
  statistics of the per-token KL bits), a baseline its recon + quantizer
  loss (then +OPT / +replace move its codebook in place).

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
  model = build_model(config, axis_name)
  q = config.quantizer
  keys = example_keys(rng, state.step, images.shape[0], axis_name)
  kind = methods.family(config)
  if kind == "gq":
    model_kwargs = dict(sample_fn=gq_sample_fn(config))
  else:
    tau = methods.temperature(config, state.step)
    model_kwargs = dict(temperature=tau)

  def loss_fn(params):
    (reconstructions, z, aux), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        example_keys=keys, mutable=["batch_stats"], **model_kwargs)
    if kind in methods.BASELINE_FAMILIES:
      loss, terms = methods.baseline_loss(config, images, reconstructions, aux)
      return loss, (terms, new_vars["batch_stats"], (aux["z"], aux["indices"]))
    if kind == "gq":
      bits = gq.kl_bits(aux["mu"], aux["logvar"], q.group_size)  # (B, h, w, c/m)
      # Both terms are per-image totals averaged over images (squared error
      # summed over pixels, KL bits summed over tokens), so kl_weight weighs
      # like against like whatever the image and latent sizes.
      recon_loss = jnp.mean(jnp.sum(jnp.square(reconstructions - images), axis=(1, 2, 3)))
      kl_loss = gq.tdc_loss(bits, state.quantizer_state, log2_codebook_size=q.log2_codebook_size,
                            tolerance=q.tolerance)
      loss = recon_loss + q.kl_weight * kl_loss
      terms = dict(loss=loss, recon=metrics_lib.mse(images, reconstructions),
                   recon_loss=recon_loss, kl_loss=kl_loss)
      return loss, (terms, new_vars["batch_stats"], bits)
    loss, terms = gmvq.albo_loss(
        images, reconstructions, z, aux, params["codebook"], beta=q.beta, gamma=q.gamma,
        objective=q.objective, latent_reg=q.latent_reg, axis_name=axis_name)
    max_probs = jnp.max(jax.lax.stop_gradient(aux["probs"]), axis=0)  # (C,)
    return loss, (terms, new_vars["batch_stats"],
                  (aux["codes"], max_probs, aux["zh"], aux["indices"]))

  grads, (terms, batch_stats, extra) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = common.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = common.pmean(terms, axis_name)
  nonfinite = faults.nonfinite_flags(metrics, grads)
  metrics.update(learning_rate=learning_rate_schedule(config)(state.step),
                 grad_norm=optax.tree.norm(grads))
  quantizer_state = state.quantizer_state
  # One key for every device (not per example): codebook updates must agree.
  update_rng = jax.random.fold_in(jax.random.fold_in(rng, UPDATE_STREAM), state.step)
  if kind == "gq":
    # Multipliers move after every step from GLOBAL statistics of R (§2).
    tdc = dict(log2_codebook_size=q.log2_codebook_size, tolerance=q.tolerance)
    metrics.update(gq.tdc_metrics(extra, state.quantizer_state, axis_name=axis_name, **tdc))
    quantizer_state = gq.tdc_update(state.quantizer_state, extra, factor=q.factor,
                                    axis_name=axis_name, **tdc)
  elif kind == "gmvq":
    codes, max_probs, zh, indices = extra
    code_counts = common.psum(jnp.sum(jax.lax.stop_gradient(codes), axis=0), axis_name)
    metrics.update(temperature=tau, batch_code_usage=metrics_lib.code_usage(code_counts),
                   batch_perplexity=metrics_lib.hard_perplexity(code_counts),
                   batch_reachable_codes=metrics_lib.reachable_codes(
                       common.pmax(max_probs, axis_name)))
    params, quantizer_state, update_metrics = codebook_init.gmvq_after_step(
        config, params, quantizer_state, zh, indices, state.step, update_rng,
        axis_name=axis_name)
    metrics.update(update_metrics)
  else:
    z, indices = extra
    code_counts = methods.code_histogram(indices, methods.codebook_size(config),
                                         axis_name=axis_name)
    metrics.update(temperature=tau, batch_code_usage=metrics_lib.code_usage(code_counts),
                   batch_perplexity=metrics_lib.hard_perplexity(code_counts))
    params, quantizer_state, update_metrics = methods.after_step(
        config, params, quantizer_state, z, indices, update_rng, axis_name=axis_name)
    metrics.update(update_metrics)
  # A non-finite step changes nothing but the step count (exact select, so
  # finite steps are bit-identical to an unguarded update).
  finite = ~jnp.any(jnp.stack(list(nonfinite.values())))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  skipped_steps = state.skipped_steps + (~finite).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
      quantizer_state=keep(quantizer_state, state.quantizer_state),
      skipped_steps=skipped_steps)
  metrics.update(skipped_steps=skipped_steps.astype(jnp.float32), nonfinite=nonfinite)
  return new_state, metrics


def eval_step(
    state: TrainState,
    images: Array,
    mask: Array,
    *,
    config: ml_collections.ConfigDict,
) -> tuple[dict[str, Array], Array]:
  """Deterministic, noise-free evaluation of one (padded) batch, for any method.

  Args:
    state: the train state.
    images: (B, H, W, 3); rows with `mask == 0` are padding.
    mask: (B,) float32, 1 for real examples.
    config: the run's config (static).

  Returns:
    `(sums, reconstructions)`: sums over real examples of squared error,
    pixel count, the code histogram (C,), and this batch's paper perplexity
    `exp(H(qbar))` with its weight (1 unless the batch is all padding). For
    GQ, instead of the code statistics: the per-token KL bits' sum, count,
    min, max and how many tokens are within tolerance of log2 K.
  """
  model = build_model(config)
  reconstructions, _, aux = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
  squared = jnp.sum(jnp.square(images - reconstructions), axis=(1, 2, 3))
  if methods.family(config) == "gq":
    q = config.quantizer
    bits = gq.kl_bits(aux["mu"], aux["logvar"], q.group_size)
    token_mask = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (bits.ndim - 1)), bits.shape)
    within = jnp.abs(bits - q.log2_codebook_size) <= q.tolerance
    sums = dict(
        squared_error=jnp.sum(squared * mask),
        num_values=jnp.sum(mask) * np.prod(images.shape[1:]),
        kl_bits_sum=jnp.sum(bits * token_mask),
        num_tokens=jnp.sum(token_mask),
        within_tolerance=jnp.sum(within * token_mask),
        kl_bits_min=jnp.min(jnp.where(token_mask > 0, bits, jnp.inf)),
        kl_bits_max=jnp.max(jnp.where(token_mask > 0, bits, -jnp.inf)),
    )
    return sums, reconstructions
  vectors_per_example = aux["indices"].shape[0] // images.shape[0]
  vector_mask = jnp.repeat(mask, vectors_per_example)
  # Code histogram by scatter-add (FSQ/LFQ/BSQ codebooks can be 2^16 wide).
  code_counts = methods.code_histogram(aux["indices"], methods.codebook_size(config), vector_mask)
  extra_sums = {}
  if "probs" in aux:  # The paper's perplexity: of the soft posterior's batch mean.
    qbar = jnp.sum(aux["probs"] * vector_mask[:, None], axis=0)
    extra_sums["code_max_prob_max"] = jnp.max(aux["probs"] * vector_mask[:, None], axis=0)
  else:  # Deterministic quantizers: the posterior is the one-hot code.
    qbar = code_counts
  qbar = qbar / jnp.maximum(jnp.sum(vector_mask), 1.0)
  has_data = (jnp.sum(mask) > 0).astype(jnp.float32)
  sums = dict(
      squared_error=jnp.sum(squared * mask),
      num_values=jnp.sum(mask) * np.prod(images.shape[1:]),
      code_counts=code_counts,
      batch_perplexity_sum=metrics_lib.perplexity(qbar) * has_data,
      num_batches=has_data,
      **extra_sums,
  )
  return sums, reconstructions


def make_eval_fn(config: ml_collections.ConfigDict):
  """`eval_step` compiled for one device; build once, call per batch."""
  return jax.jit(functools.partial(eval_step, config=config))


def evaluate(
    config: ml_collections.ConfigDict,
    state: TrainState,
    dataset: Any,
    *,
    split: str = "test",
    num_images: int = 0,
    step_fn: Any = None,
) -> tuple[dict[str, float], np.ndarray | None]:
  """Evaluates a whole split on one device, deterministically.

  Args:
    config: the run's config.
    state: one (unreplicated) train state.
    dataset: from `data.make_dataset`.
    split: 'val' (for choosing hyperparameters) or 'test' (for reporting).
    num_images: also return the first `num_images` originals and their
      reconstructions, stacked as (2, n, H, W, 3).
    step_fn: a compiled `eval_step` from `make_eval_fn`, reused across calls.

  Returns:
    The figures of `metrics.summarize_eval` and the image pairs (or None).
  """
  step_fn = step_fn or make_eval_fn(config)
  batch_size = config.eval_batch_size
  totals: dict[str, np.ndarray] = {}
  pairs = []
  for images, mask, real in pipeline.padded_batches(
      dataset.eval_batches(batch_size, split=split), batch_size):
    sums, reconstructions = step_fn(state, images, mask)
    sums = jax.device_get(sums)
    for name, value in sums.items():
      value = np.asarray(value, np.float64)
      if name not in totals:
        totals[name] = value
      elif name.endswith("_min"):
        totals[name] = np.minimum(totals[name], value)
      elif name.endswith("_max"):
        totals[name] = np.maximum(totals[name], value)
      else:
        totals[name] = totals[name] + value
    have = sum(p[0].shape[0] for p in pairs)
    if have < num_images:
      take = min(num_images - have, real)
      pairs.append((images[:take], np.asarray(reconstructions[:take])))
  if methods.family(config) == "gq":
    figures = metrics_lib.summarize_gaussian_eval(totals)
  else:
    figures = metrics_lib.summarize_eval(totals)
  if not pairs:
    return figures, None
  originals = np.concatenate([p[0] for p in pairs])
  recons = np.concatenate([p[1] for p in pairs])
  return figures, np.stack([originals, recons])


# ---------------------------------------------------------------------- loop


class TrainingStopped(Exception):
  """Training stopped early on request (a signal, or `stop_after_steps`), checkpoint saved.

  Attributes:
    step: the step of the saved checkpoint.
    reason: e.g. 'SIGTERM', 'SIGINT' or 'stop_after_steps'.
    workdir: the run's directory; rerunning with it resumes at `step`.
  """

  def __init__(self, step: int, reason: str, workdir: str):
    super().__init__(
        f"Stopped at step {step} ({reason}); the checkpoint is saved in"
        f" {checkpointing.checkpoint_dir(workdir)}. Rerun the same command to resume.")
    self.step, self.reason, self.workdir = step, reason, workdir


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
  """
  config_checks.validate(config, jax.device_count())
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.UserNotADirectoryError(f"--workdir={workdir} is a file; pass a directory (it is created"
                             " if absent). The file was left untouched.")
  strategy = parallel.make(config.parallelism)
  primary = jax.process_index() == 0
  logging.info("Devices: %s; parallelism: %s over %d device(s) in %d process(es).",
               jax.local_devices(), strategy.mode, strategy.num_devices, jax.process_count())
  if dataset is None:
    dataset = data.from_config(config)
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)

  manager = checkpointing.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  latest = manager.latest_step()
  if latest is None:
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
  end_step = config.num_steps
  if stop_after_steps is not None:
    end_step = min(end_step, start_step + stop_after_steps)

  writer = metric_writers.MetricWriter(workdir, resume_step=start_step) if primary else None
  progress = metric_writers.Progress(config.num_steps, start_step)
  step_fn = strategy.compile_step(functools.partial(train_step, config=config))
  eval_fn = make_eval_fn(config)
  placed = strategy.put_state(state)
  del state  # The compiled step donates the placed copy; keep no stale host copy.
  batches = pipeline.TrainIterator(
      dataset, config.batch_size, start_step=start_step, end_step=end_step,
      shard=jax.process_index(), num_shards=jax.process_count(), put=strategy.put_batch)
  stop_on_nonfinite = config.get("nonfinite", "stop") == "stop"
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

  stopped = None
  try:
    with faults.StopRequests() as stops:
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
            shown = PROGRESS_METRICS[methods.family(config)] + (
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
          figures, _ = evaluate(config, strategy.local_state(placed), dataset, split="val",
                                step_fn=eval_fn)
          if primary:
            writer.write(done, "val", figures)
      check_finite()
  except BaseException:
    if writer is not None:
      writer.close()
    raise
  finally:
    batches.close()
    manager.close()
  if stopped is not None:
    if writer is not None:
      writer.close()
    raise TrainingStopped(last_saved, stopped, workdir)

  final_state = strategy.local_state(placed)
  started = time.perf_counter()
  val_figures, _ = evaluate(config, final_state, dataset, split="val", step_fn=eval_fn)
  figures, _ = evaluate(config, final_state, dataset, split="test", step_fn=eval_fn)
  logging.info("Evaluation of the val and test splits took %.1fs.", time.perf_counter() - started)
  if primary:
    writer.write(int(final_state.step), "val", val_figures)
    writer.write(int(final_state.step), "test", figures)
    writer.close()
  return figures


def create_train_state_shapes(config: ml_collections.ConfigDict, dataset: Any) -> TrainState:
  """The state's structure without k-means (for `jax.eval_shape` restore targets)."""
  model = build_model(config)
  sample = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.float32)
  variables = model.init(jax.random.key(0), sample, train=False)
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                    quantizer_state=initial_quantizer_state(config),
                    skipped_steps=jnp.zeros((), jnp.int32), tx=tx)
