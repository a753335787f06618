"""GQ: Gaussian Quant with the Target Divergence Constraint (TDC).

Pure functions of the GQ paper (arXiv 2512.06609; docs/algorithms.md, "GQ"):
per-token KL in bits, the TDC loss and multiplier updates, GQ's `Config` and
`Quantizer`. The fixed codebook and its quantizer are in gq_codebook.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax import metrics as metrics_lib
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gq_codebook
from gmvq_jax.quantizers import interface

Array = jax.Array

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # The posterior logvar clip.
LOG2_E = 1.0 / math.log(2.0)
LAM_CLIP = (1e-7, 1e7)
LAM_MAX_CLIP = (1.0, 1e3)
LAM_MIN_CLIP = (1e-3, 1.0)


# ----------------------------------------------------------------------------
# KL per token.


def kl_bits(mu: Array, logvar: Array, group_size: int) -> Array:
  """KL(N(mu, var) || N(0, I)) of each token, in bits.

  R_g = sum_{j in g} 0.5 * log2(e) * (mu_j^2 + var_j - 1 - logvar_j), with
  group g = channels g*m ... g*m+m-1 (consecutive channels).

  Args:
    mu: (..., c) posterior means.
    logvar: (..., c) posterior log-variances; clipped to [-30, 20] first.
    group_size: m, channels per token; must divide c.

  Returns:
    (..., c // m) float32 KL of each token in bits.
  """
  channels = mu.shape[-1]
  gq_codebook.check_group_size(channels, group_size)
  mu = mu.astype(jnp.float32)
  logvar = jnp.clip(logvar.astype(jnp.float32), LOGVAR_MIN, LOGVAR_MAX)
  per_channel = 0.5 * LOG2_E * (jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)
  grouped = per_channel.reshape(*per_channel.shape[:-1], channels // group_size, group_size)
  return jnp.sum(grouped, axis=-1)


# ----------------------------------------------------------------------------
# Target Divergence Constraint (train time).


class TDCState(NamedTuple):
  """TDC Lagrange multipliers: float32 scalars, identical on every device.

  Part of the training state (checkpointed, restored), never mutated:
  `tdc_update` returns a new one.
  """
  lam: Array
  lam_min: Array
  lam_max: Array


def init_tdc_state() -> TDCState:
  """All three multipliers start at 1.0 (docs/algorithms.md, "GQ").

  Three distinct arrays, so a step that donates its state can donate each.
  """
  return TDCState(*(jnp.ones((), jnp.float32) for _ in range(3)))


def _tolerance_side(kl: Array, log2_codebook_size: Any, tolerance: Any) -> tuple[Array, Array]:
  """(above, below) masks: R - T > alpha and R - T < -alpha.

  The weights, the update rules and the metrics all use this one comparison
  of R - T against alpha, so "some token has weight lam_max" and
  "max(R) exceeds T + alpha" agree even at float32 rounding edges (R - T is
  monotone in R).
  """
  excess = kl - jnp.asarray(log2_codebook_size, jnp.float32)
  tolerance = jnp.asarray(tolerance, jnp.float32)
  return excess > tolerance, excess < -tolerance


def tdc_weights(kl_bits: Array, state: TDCState, *, log2_codebook_size: Any,
                tolerance: Any) -> Array:
  """Per-token TDC weight: lam_max above T + alpha, lam_min below T - alpha, else 1.

  Args:
    kl_bits: (...) KL of each token in bits.
    state: the current multipliers.
    log2_codebook_size: the target rate T = log2 K, in bits.
    tolerance: alpha, in bits.

  Returns:
    (...) float32 weights, with no gradient (they are constants of the loss).
  """
  kl = jax.lax.stop_gradient(kl_bits.astype(jnp.float32))
  above, below = _tolerance_side(kl, log2_codebook_size, tolerance)
  lam_max = jax.lax.stop_gradient(jnp.asarray(state.lam_max, jnp.float32))
  lam_min = jax.lax.stop_gradient(jnp.asarray(state.lam_min, jnp.float32))
  return jnp.where(above, lam_max, jnp.where(below, lam_min, 1.0))


def tdc_loss(kl_bits: Array, state: TDCState, *, log2_codebook_size: Any,
             tolerance: Any) -> Array:
  """kl_loss = lam * mean over images of (sum over tokens of weight * R).

  Only R carries a gradient; lam and the weights are constants. The mean is
  over this device's images: with equal shards, the mean of the per-device
  losses is the global loss, so the caller pmeans the loss (or its gradient)
  as it does the reconstruction term.

  Args:
    kl_bits: (B, ...) KL of each token in bits; axis 0 indexes images, every
      other axis tokens of that image (e.g. (B, h, w, c // m)).
    state: the current multipliers.
    log2_codebook_size: T = log2 K.
    tolerance: alpha.

  Returns:
    float32 scalar.
  """
  kl = kl_bits.astype(jnp.float32)
  weights = tdc_weights(kl, state, log2_codebook_size=log2_codebook_size, tolerance=tolerance)
  per_image = jnp.sum((weights * kl).reshape(kl.shape[0], -1), axis=-1)
  lam = jax.lax.stop_gradient(jnp.asarray(state.lam, jnp.float32))
  return lam * jnp.mean(per_image)


def _global_stats(kl_bits: Array, axis_name: Any) -> tuple[Array, Array, Array]:
  """Mean, min and max of R over every token of the GLOBAL batch (§4)."""
  kl = jax.lax.stop_gradient(kl_bits.astype(jnp.float32))
  # pmean of per-device means is the global mean because all shards are equal.
  mean = common.pmean(jnp.mean(kl), axis_name)
  low, high = jnp.min(kl), jnp.max(kl)
  if axis_name is not None:
    low, high = jax.lax.pmin(low, axis_name), jax.lax.pmax(high, axis_name)
  return mean, low, high


def tdc_update(state: TDCState, kl_bits: Array, *, log2_codebook_size: Any,
               tolerance: Any, factor: Any, axis_name: Any = None) -> TDCState:
  """One multiplicative step of the three Lagrange multipliers (§2).

  lam     *= f if mean(R) > T          else /= f, clipped to [1e-7, 1e7]
  lam_max *= f if max(R)  > T + alpha  else /= f, clipped to [1, 1e3]
  lam_min /= f if min(R)  < T - alpha  else *= f, clipped to [1e-3, 1]

  Args:
    state: the current multipliers.
    kl_bits: (...) KL of each token in bits, this device's shard.
    log2_codebook_size: T = log2 K.
    tolerance: alpha.
    factor: f >= 1; f = 1 keeps every multiplier at its value (1 from
      `init_tdc_state`): a plain Gaussian VAE, the TDC's baseline.
    axis_name: the named batch axis; statistics are then global over
      devices, so every device computes the same new state. None on one device.

  Returns:
    The new TDCState (float32 scalars).
  """
  mean, low, high = _global_stats(kl_bits, axis_name)
  target = jnp.asarray(log2_codebook_size, jnp.float32)
  factor = jnp.asarray(factor, jnp.float32)
  above, _ = _tolerance_side(high, log2_codebook_size, tolerance)
  _, below = _tolerance_side(low, log2_codebook_size, tolerance)
  lam = jnp.asarray(state.lam, jnp.float32)
  lam_max = jnp.asarray(state.lam_max, jnp.float32)
  lam_min = jnp.asarray(state.lam_min, jnp.float32)
  lam = jnp.where(mean > target, lam * factor, lam / factor)
  lam_max = jnp.where(above, lam_max * factor, lam_max / factor)
  lam_min = jnp.where(below, lam_min / factor, lam_min * factor)
  return TDCState(
      lam=jnp.clip(lam, *LAM_CLIP).astype(jnp.float32),
      lam_min=jnp.clip(lam_min, *LAM_MIN_CLIP).astype(jnp.float32),
      lam_max=jnp.clip(lam_max, *LAM_MAX_CLIP).astype(jnp.float32),
  )


def tdc_metrics(kl_bits: Array, state: TDCState, *, log2_codebook_size: Any,
                tolerance: Any, axis_name: Any = None) -> dict[str, Array]:
  """Rate statistics over the global batch, for logging.

  Args:
    kl_bits: (...) KL of each token in bits, this device's (equal-size) shard.
    state: the multipliers to report.
    log2_codebook_size: T = log2 K.
    tolerance: alpha.
    axis_name: the named batch axis, or None on one device.

  Returns:
    float32 scalars: kl_bits_mean, kl_bits_min, kl_bits_max, the 5th and
    95th percentiles kl_bits_p5 and kl_bits_p95 (the spread of the bulk,
    which a few outlier tokens hide from min and max), lam, lam_min,
    lam_max, and the fractions of tokens within, above and below the
    tolerance band [T - alpha, T + alpha].
  """
  mean, low, high = _global_stats(kl_bits, axis_name)
  kl = jax.lax.stop_gradient(kl_bits.astype(jnp.float32))
  every_token = kl.reshape(-1)
  if axis_name is not None:  # Percentiles need every token of the global batch.
    every_token = jax.lax.all_gather(every_token, axis_name, tiled=True)
  p5, p95 = jnp.percentile(every_token, jnp.array([5.0, 95.0], jnp.float32))
  above, below = _tolerance_side(kl, log2_codebook_size, tolerance)
  frac_above = common.pmean(jnp.mean(above.astype(jnp.float32)), axis_name)
  frac_below = common.pmean(jnp.mean(below.astype(jnp.float32)), axis_name)
  within = common.pmean(jnp.mean((~above & ~below).astype(jnp.float32)), axis_name)
  return dict(
      kl_bits_mean=mean,
      kl_bits_min=low,
      kl_bits_max=high,
      kl_bits_p5=p5,
      kl_bits_p95=p95,
      lam=jnp.asarray(state.lam, jnp.float32),
      lam_min=jnp.asarray(state.lam_min, jnp.float32),
      lam_max=jnp.asarray(state.lam_max, jnp.float32),
      fraction_within_tolerance=within,
      fraction_above_tolerance=frac_above,
      fraction_below_tolerance=frac_below,
  )


# ----------------------------------------------------------------------------
# Straight-through training latent.


def straight_through(z_gaussian: Array, z_quantized: Array) -> Array:
  """z_g - sg(z_g) + sg(z_q): the value of z_q with the gradient of z_g."""
  # Parenthesised so that the forward value is exactly z_q (z_g - sg(z_g) == 0).
  return (z_gaussian - jax.lax.stop_gradient(z_gaussian)) + jax.lax.stop_gradient(z_quantized)


def quantize_ste(mu: Array, logvar: Array, eps: Array, codebook: Array, group_size: int, *,
                 prior_weight: Any, tile_size: int | None = None) -> Array:
  """The optional straight-through training latent (`ste=True`, §2).

  z_g = mu + sigma * eps is the plain Gaussian-VAE sample; z_q is the
  codeword of each token's posterior mean (`quantize` with sigma); the result
  has the value of z_q and the gradient of z_g with respect to mu and logvar.

  Args:
    mu: (..., c) posterior means.
    logvar: (..., c) posterior log-variances; clipped to [-30, 20].
    eps: (..., c) standard normal noise.
    codebook: (K, m) codewords.
    group_size: m; must divide c (tokens are m consecutive channels).
    prior_weight: of `gq_codebook.quantize`.
    tile_size: codeword tile of `gq_codebook.quantize`.

  Returns:
    (..., c) float32 latents, the shape of mu.
  """
  channels = mu.shape[-1]
  gq_codebook.check_group_size(channels, group_size)
  if codebook.shape[-1] != group_size:
    raise ValueError(f"codebook {codebook.shape} does not hold {group_size}-dimensional codewords.")
  mu = mu.astype(jnp.float32)
  logvar = jnp.clip(logvar.astype(jnp.float32), LOGVAR_MIN, LOGVAR_MAX)
  std = jnp.exp(0.5 * logvar)
  z_gaussian = mu + std * eps.astype(jnp.float32)
  tokens_mu = jax.lax.stop_gradient(mu).reshape(-1, group_size)
  tokens_std = jax.lax.stop_gradient(std).reshape(-1, group_size)
  indices = gq_codebook.quantize(tokens_mu, tokens_std, codebook, prior_weight=prior_weight,
                                 tile_size=tile_size)
  z_quantized = gq_codebook.dequantize(indices, codebook).reshape(mu.shape)
  return straight_through(z_gaussian, z_quantized)


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.BitsConfig):
  """GQ's fields and defaults.

  latent_dim c latent channels in tokens of group_size m consecutive
  channels, K = 2^log2_codebook_size codewords. `sized` keeps c = m = 8: one
  token of log2 C bits per latent position, the rate of a C-code VQ on the
  same grid. prior_weight is the paper's omega, the weight of the prior in
  the quantization rule (gq_codebook.quantize).
  """

  renamed: ClassVar[Mapping[str, str]] = {"beta": "prior_weight", "latent_channels": "latent_dim"}
  latent_dim: int = 8
  group_size: int = 8
  tolerance: float = 0.5
  factor: float = 1.01
  kl_weight: float = 0.1
  codebook_seed: int = 0
  codebook_sampler: str = "sobol"
  prior_weight: float = 1.0
  ste: bool = False


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  need_int, need_number = interface.need_int, interface.need_number
  problems = need_int(q, "latent_dim", 1)
  group = need_int(q, "group_size", 1)
  if not problems and not group and q.latent_dim % q.group_size:
    group = [("quantizer.group_size", q.group_size,
              f"must divide quantizer.latent_dim={q.latent_dim} (tokens are groups of"
              " consecutive channels)")]
  problems += group
  problems += need_int(q, "log2_codebook_size", 1, " (K = 2^log2_codebook_size >= 2)")
  problems += need_number(q, "tolerance", 0.0, strict=True)
  # factor == 1 freezes the multipliers at 1: a plain Gaussian VAE whose KL
  # weight is kl_weight (the GQ paper's baseline, experiments/tdc_spread.py).
  problems += need_number(q, "factor", 1.0) + need_number(q, "kl_weight", 0.0)
  problems += need_int(q, "codebook_seed", 0)
  problems += interface.need_choice(q, "codebook_sampler", gq_codebook.SAMPLERS)
  return problems + need_number(q, "prior_weight", 0.0) + interface.need_bool(q, "ste")


def config_codebook(q: Any) -> np.ndarray:
  """The codebook a GQ config names: (K, m) float32, regenerated from its seed."""
  return gq_codebook.sample_codebook(q.codebook_seed, 2**q.log2_codebook_size, q.group_size,
                                     q.codebook_sampler)


def posterior(z: Array, latent_dim: int) -> tuple[Array, Array]:
  """The encoder grid (..., 2c) -> (mu, logvar), each (..., c), logvar clipped to [-30, 20]."""
  mu, logvar = z[..., :latent_dim], z[..., latent_dim:]
  return mu, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


def eval_stats(images: Array, reconstructions: Array, aux: dict[str, Array], mask: Array, *,
               group_size: int, log2_codebook_size: int, tolerance: float,
               axis_name: Any = None) -> dict[str, Array]:
  """Eval sums of the Gaussian model: image sums and the per-token KL bits' statistics.

  With `axis_name` they are the global batch's, identical on every device.
  """
  bits = kl_bits(aux["mu"], aux["logvar"], group_size)
  token_mask = jnp.broadcast_to(mask.reshape((-1,) + (1,) * (bits.ndim - 1)), bits.shape)
  within = jnp.abs(bits - log2_codebook_size) <= tolerance
  sums = common.psum(dict(kl_bits_sum=jnp.sum(bits * token_mask), num_tokens=jnp.sum(token_mask),
                          within_tolerance=jnp.sum(within * token_mask)), axis_name)
  return dict(
      interface.image_eval_stats(images, reconstructions, mask, axis_name),
      **sums,
      kl_bits_min=common.pmin(jnp.min(jnp.where(token_mask > 0, bits, jnp.inf)), axis_name),
      kl_bits_max=common.pmax(jnp.max(jnp.where(token_mask > 0, bits, -jnp.inf)), axis_name),
  )


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """GQ's Gaussian posterior under TDC as a `Quantizer`: it samples z in training and
  decodes the posterior mean at evaluation; `tokenize` is the offline conversion."""
  del num_steps
  channels, group = q.latent_dim, q.group_size
  tdc = dict(log2_codebook_size=q.log2_codebook_size, tolerance=q.tolerance)

  def apply(params, state, z, rng, step, train):
    del params, state, step
    mu, logvar = posterior(z, channels)
    z = mu
    if train:
      batch, height, width, _ = mu.shape
      eps = common.draw(jax.random.normal, rng, (batch * height * width, channels))
      eps = eps.reshape(mu.shape)
      if q.ste:  # Sampled on the host while tracing: a constant of the compiled step.
        z = quantize_ste(mu, logvar, eps, jnp.asarray(config_codebook(q)), group,
                         prior_weight=q.prior_weight)
      else:
        z = mu + jnp.exp(0.5 * logvar) * eps
    return z, dict(mu=mu, logvar=logvar)

  def loss(params, state, images, reconstructions, z_q, aux):
    bits = kl_bits(aux["mu"], aux["logvar"], group)  # (B, h, w, c/m)
    # Both terms are per-image totals averaged over images (squared error
    # summed over pixels, KL bits summed over tokens), so kl_weight weighs
    # like against like whatever the image and latent sizes.
    recon_loss = jnp.mean(jnp.sum(jnp.square(reconstructions - images), axis=(1, 2, 3)))
    kl_loss = tdc_loss(bits, state, **tdc)
    value = recon_loss + q.kl_weight * kl_loss
    terms = dict(loss=value, recon=metrics_lib.mse(images, reconstructions),
                 recon_loss=recon_loss, kl_loss=kl_loss)
    return value, terms, bits

  def update(params, state, bits, step, rng):
    # Multipliers move after every step from GLOBAL statistics of R.
    metrics = tdc_metrics(bits, state, axis_name=axis_name, **tdc)
    return params, tdc_update(state, bits, factor=q.factor, axis_name=axis_name, **tdc), metrics

  def tokenize(params, z):
    mu, logvar = posterior(z, channels)
    tokens = mu.reshape(-1, group)
    std = jnp.exp(0.5 * logvar).reshape(-1, group)
    indices = gq_codebook.quantize(tokens, std, jnp.asarray(config_codebook(q)),
                                   prior_weight=q.prior_weight)
    return indices.reshape(mu.shape[:-1] + (channels // group,))

  def detokenize(params, indices):
    z = gq_codebook.dequantize(indices, jnp.asarray(config_codebook(q)))
    return z.reshape(indices.shape[:-1] + (channels,))

  return interface.Quantizer(
      encoder_width=2 * channels, codebook_size=2**q.log2_codebook_size,
      tokens_per_position=channels // group, params_name="quantizer", init_params=None,
      init_state=init_tdc_state, apply=apply, loss=loss, update=update,
      eval_stats=functools.partial(eval_stats, group_size=group, axis_name=axis_name, **tdc),
      combine={"kl_bits_min": "min", "kl_bits_max": "max"},
      summarize=metrics_lib.summarize_gaussian_eval,
      progress=("loss", "recon", "kl_bits_mean", "lam"), encoder_points=None, set_codebook=None,
      tokenize=tokenize, detokenize=detokenize,
      posterior=lambda z: posterior(z, channels))
