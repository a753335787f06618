"""TrainState, the compiled train and eval steps, and the training loop.

`train_step` and `eval_step` are pure functions; every cross-example
statistic is reduced over one named batch axis, so `parallel.Parallelism`
compiles the same function with jit, pmap or jit(shard_map).
"""

from __future__ import annotations

import concurrent.futures
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
from gmvq_jax import config_checks
from gmvq_jax import data
from gmvq_jax import metric_writers
from gmvq_jax import methods
from gmvq_jax import metrics as metrics_lib
from gmvq_jax import parallel
from gmvq_jax.models import autoencoder
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import kmeans

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
    tx: the optax transformation (static).
  """

  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any
  quantizer_state: Any = None
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False, default=None)


# ------------------------------------------------------------------ building


def build_model(config: ml_collections.ConfigDict, axis_name: Any = None) -> nn.Module:
  """The autoencoder a config describes; `axis_name` for cross-device BatchNorm."""
  q = config.quantizer
  networks = dict(channels=tuple(config.model.channels),
                  num_res_blocks=config.model.num_res_blocks, axis_name=axis_name,
                  dtype=jnp.dtype(config.model.dtype))
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


def initial_quantizer_state(config: ml_collections.ConfigDict) -> Any:
  """Non-gradient quantizer state: TDC multipliers (GQ), dead-code counters (+replace), or None."""
  kind = methods.family(config)
  if kind == "gq":
    return gq.init_tdc_state()
  return methods.initial_state(config) if kind in methods.BASELINE_FAMILIES else None


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


def encoder_latents(model: nn.Module, variables: Any, images: Array) -> Array:
  """Proxy latents zh (N, L) with batch-statistics BatchNorm, state discarded."""
  (zh, _), _ = model.apply(variables, images, True, method=model.encode, mutable=["batch_stats"])
  return zh.reshape(-1, zh.shape[-1])


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
  q = config.quantizer
  if methods.family(config) == "gmvq" and q.kmeans_init:
    images = np.concatenate(
        [dataset.train_batch(i, config.batch_size) for i in range(q.kmeans_batches)])
    latents = jax.jit(functools.partial(encoder_latents, model))(variables, images)
    logging.info("k-means (%s seeding, %d iterations) of %d encoder vectors into %d codes.",
                 q.kmeans_seeding, q.kmeans_iters, latents.shape[0], q.num_codes)
    codebook = kmeans.kmeans(kmeans_rng, latents, num_clusters=q.num_codes,
                             num_iters=q.kmeans_iters, seeding=q.kmeans_seeding)
    params = dict(params, codebook=codebook)
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), quantizer_state=initial_quantizer_state(config),
                    tx=tx)


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
    The new state and float32 scalar metrics, identical on every device.
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
    return loss, (terms, new_vars["batch_stats"], aux["codes"])

  grads, (terms, batch_stats, extra) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads = common.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = common.pmean(terms, axis_name)
  metrics.update(learning_rate=learning_rate_schedule(config)(state.step),
                 grad_norm=optax.tree.norm(grads))
  quantizer_state = state.quantizer_state
  if kind == "gq":
    # Multipliers move after every step from GLOBAL statistics of R (§2).
    tdc = dict(log2_codebook_size=q.log2_codebook_size, tolerance=q.tolerance)
    metrics.update(gq.tdc_metrics(extra, state.quantizer_state, axis_name=axis_name, **tdc))
    quantizer_state = gq.tdc_update(state.quantizer_state, extra, factor=q.factor,
                                    axis_name=axis_name, **tdc)
  elif kind == "gmvq":
    code_counts = common.psum(jnp.sum(jax.lax.stop_gradient(extra), axis=0), axis_name)
    metrics.update(temperature=tau, batch_code_usage=metrics_lib.code_usage(code_counts),
                   batch_perplexity=metrics_lib.hard_perplexity(code_counts))
  else:
    z, indices = extra
    code_counts = methods.code_histogram(indices, methods.codebook_size(config),
                                         axis_name=axis_name)
    metrics.update(temperature=tau, batch_code_usage=metrics_lib.code_usage(code_counts),
                   batch_perplexity=metrics_lib.hard_perplexity(code_counts))
    # One key for every device (not per example): replacements must agree.
    update_rng = jax.random.fold_in(jax.random.fold_in(rng, UPDATE_STREAM), state.step)
    params, quantizer_state, update_metrics = methods.after_step(
        config, params, quantizer_state, z, indices, update_rng, axis_name=axis_name)
    metrics.update(update_metrics)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, quantizer_state=quantizer_state)
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
  if "probs" in aux:  # The paper's perplexity: of the soft posterior's batch mean.
    qbar = jnp.sum(aux["probs"] * vector_mask[:, None], axis=0)
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
    num_images: int = 0,
    step_fn: Any = None,
) -> tuple[dict[str, float], np.ndarray | None]:
  """Evaluates the whole test split on one device, deterministically.

  Args:
    config: the run's config.
    state: one (unreplicated) train state.
    dataset: from `data.make_dataset`.
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
  for images in dataset.eval_batches(batch_size):
    real = images.shape[0]
    mask = np.zeros((batch_size,), np.float32)
    mask[:real] = 1.0
    if real < batch_size:  # Pad so every batch has one shape: one compile.
      pad = np.zeros((batch_size - real,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) a run in `workdir`, then evaluates the test split.

  Checkpoints go to WORKDIR/checkpoints every `checkpoint_every_steps` and at
  the end; a rerun with the same workdir resumes from the latest one.
  Metrics go to WORKDIR/metrics.jsonl, TensorBoard files and the console.

  Returns:
    The final evaluation figures.
  """
  strategy = parallel.make(config.parallelism)
  config_checks.validate(config, strategy.num_devices)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file; pass a directory.")
  logging.info("Devices: %s; parallelism: %s over %d device(s).",
               jax.devices(), strategy.mode, strategy.num_devices)
  dataset = data.make_dataset(config.dataset, image_size=config.image_size, seed=config.seed,
                              data_dir=config.get("data_dir"),
                              num_eval_examples=config.get("num_eval_examples"))
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)

  manager = checkpointing.make_manager(workdir, max_to_keep=config.keep_checkpoints)
  state = create_train_state(config, init_rng, dataset) if manager.latest_step() is None else None
  if state is None:
    target = jax.eval_shape(lambda: create_train_state_shapes(config, dataset))
    state = checkpointing.restore_state(manager, target)
    state = state.replace(tx=make_optimizer(config))
    logging.info("Resumed from step %d in %s.", int(state.step), workdir)
  start_step = int(state.step)

  writer = metric_writers.MetricWriter(workdir)
  progress = metric_writers.Progress(config.num_steps, start_step)
  step_fn = strategy.compile_step(functools.partial(train_step, config=config))
  eval_fn = make_eval_fn(config)
  placed = strategy.put_state(state)
  # train_batch is a pure function of the step, so the next batch is read on
  # a host thread while the device runs the current step.
  reader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  read = functools.partial(dataset.train_batch, batch_size=config.batch_size)
  next_batch = reader.submit(read, start_step)
  for step in range(start_step, config.num_steps):
    batch = strategy.put_batch(next_batch.result())
    if step + 1 < config.num_steps:
      next_batch = reader.submit(read, step + 1)
    placed, step_metrics = step_fn(placed, batch, train_rng)
    done = step + 1
    if step == start_step:
      jax.block_until_ready(step_metrics)
      progress.start(done)
    if done % config.log_every_steps == 0 or done == config.num_steps:
      host_metrics = strategy.get_metrics(step_metrics)
      writer.write(done, "train", host_metrics)
      shown = PROGRESS_METRICS[methods.family(config)]
      progress.report(done, {k: host_metrics[k] for k in shown})
    if done % config.checkpoint_every_steps == 0 or done == config.num_steps:
      checkpointing.save(manager, done, strategy.get_state(placed), config)
    if config.eval_every_steps and done % config.eval_every_steps == 0 and done < config.num_steps:
      figures, _ = evaluate(config, strategy.get_state(placed), dataset, step_fn=eval_fn)
      writer.write(done, "test", figures)

  reader.shutdown()
  final_state = strategy.get_state(placed)
  started = time.perf_counter()
  figures, _ = evaluate(config, final_state, dataset, step_fn=eval_fn)
  logging.info("Evaluation took %.1fs.", time.perf_counter() - started)
  writer.write(int(final_state.step), "test", figures)
  writer.close()
  manager.close()
  return figures


def create_train_state_shapes(config: ml_collections.ConfigDict, dataset: Any) -> TrainState:
  """The state's structure without k-means (for `jax.eval_shape` restore targets)."""
  model = build_model(config)
  sample = jnp.zeros((1,) + tuple(dataset.image_shape), jnp.float32)
  variables = model.init(jax.random.key(0), sample, train=False)
  tx = make_optimizer(config)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                    batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                    quantizer_state=initial_quantizer_state(config), tx=tx)
