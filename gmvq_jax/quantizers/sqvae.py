"""Gaussian SQ-VAE: stochastic quantization with a learned, self-annealing variance.

Takida et al. 2022 (arXiv 2205.07547), the Gaussian SQ-VAE with one shared
scalar variance (the official code's `gaussian_1`). Pure functions on (N, L).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from gmvq_jax import metrics
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import interface

Array = jax.Array

# log s^2 at initialisation: log 20, the official CIFAR10 config ("larger /
# smaller value recommended for larger / smaller code dimension").
LOG_VARIANCE_INIT = math.log(20.0)
VARIANCE_FLOOR = 1e-10  # As the official code clamps s^2 before inverting it.


def init_params(
    rng: Array, num_codes: int, dim: int, *, log_variance_init: float
) -> dict[str, Array]:
  """The SQ-VAE parameters: a N(0, 1) codebook (as in the official code) and log s^2.

  Args:
    rng: a typed key.
    num_codes: C.
    dim: L.
    log_variance_init: initial log s^2.

  Returns:
    `{'codebook': (C, L) float32, 'log_variance': () float32}`.
  """
  return dict(
      codebook=jax.random.normal(rng, (num_codes, dim), jnp.float32),
      log_variance=jnp.asarray(log_variance_init, jnp.float32),
  )


def variance(params: dict[str, Array], *, variance_offset: float = 0.0) -> Array:
  """s^2 = exp(log_variance) + variance_offset, a float32 scalar.

  `variance_offset=1.0` reproduces the official `gaussian_1` code, which
  parameterises s^2 = exp(0) + exp(theta) (so s^2 >= 1); the default 0.0 lets
  s^2 anneal freely, as the paper describes.
  """
  s2 = jnp.exp(params["log_variance"].astype(jnp.float32)) + variance_offset
  return jnp.maximum(s2, VARIANCE_FLOOR)


def logits(z: Array, codebook: Array, s2: Array | float) -> Array:
  """Stochastic-quantization logits: log P(z_q = b_k | z) + const = -||z - b_k||^2 / (2 s^2).

  Args:
    z: (N, L) encoder outputs.
    codebook: (C, L) codewords b_k.
    s2: scalar variance s^2.

  Returns:
    (N, C) float32 logits.
  """
  return -common.squared_distances(z, codebook) / (2.0 * s2)


def temperature_schedule(
    step: Array | int, *, decay: float, tau_0: float = 1.0, tau_min: float = 0.0
) -> Array:
  """tau(t) = max(tau_min, tau_0 exp(-decay t)): the official SQ-VAE schedule (its tau_0, tau_min)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.maximum(tau_min, tau_0 * jnp.exp(-decay * step))


def quantize(
    params: dict[str, Array],
    z: Array,
    *,
    rng: Array | None = None,
    temperature: Array | float = 1.0,
    hard: bool = False,
    encoder_noise: bool = False,
    variance_offset: float = 0.0,
    axis_name: Any = None,
    train: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """Gaussian SQ-VAE forward pass and its latent loss.

  Model (Takida et al. 2022, Sec. 3): prior P(z_q = b_k) = 1/C; stochastic
  dequantization p(z~ | z_q) = N(z_q, s^2 I); encoder q(z~ | x) = N(z, s^2 I)
  around the encoder output z; stochastic quantization
  P_s2(z_q = b_k | z) = softmax_k(-||z - b_k||^2 / (2 s^2)).

  Training: a Gumbel-softmax sample of P_s2 at temperature tau; by default the
  relaxed sample y (the official code's choice, no straight-through), so
  `z_q = y @ codebook`; `hard=True` gives the straight-through one-hot.
  With `encoder_noise=True` the logits are those of a sample
  z~ = z + s eps of q(z~|x) (the single-sample Monte Carlo reading of the
  ELBO); the default evaluates them at the posterior mean z, as the official
  code does. Evaluation: the argmax, i.e. the nearest codeword, no noise.

  Latent loss (per vector, averaged over the N vectors), the ELBO's latent
  terms without constants:
    kl_discrete   = KL(P_s2(.|z) || Uniform(C)) = sum_k P log P + log C:
                    the `- H(P_s2(Z|Z^))` term of the Gaussian SQ-VAE
                    objective (log C added so it is >= 0; same gradient).
    kl_continuous = ||z - z_q||^2 / (2 s^2): KL(N(z, s^2 I) || N(z_q, s^2 I)),
                    the `||Z^ - Z||^2 / (2 s^2)` term; the log s^2 terms of the
                    two Gaussians cancel.
    loss          = kl_discrete + kl_continuous.
  (The official code's `kld_discrete` and `kld_continuous`, sony/sqvae
  vision/quantizer.py; the paper is not in papers/, so no equation numbers.)
  The official code sums both over latent positions per image (and weighs
  reconstruction by D/2 log MSE); these are per-vector means, to be scaled by
  the caller where the per-image balance matters. s^2 is learned through
  this loss and the reconstruction: it shrinks during training
  ("self-annealing"), making quantization nearly deterministic.

  Args:
    params: `init_params` output: codebook (C, L) and log_variance ().
    z: (N, L) encoder outputs; any float dtype.
    rng: typed key or (N,) per-row keys; required when `train`.
    temperature: Gumbel-softmax temperature (see `temperature_schedule`).
    hard: straight-through one-hot (True) or relaxed sample (False).
    encoder_noise: sample z~ ~ N(z, s^2 I) for the logits (True) or use z.
    variance_offset: see `variance`.
    axis_name: the named batch axis for `perplexity` (global batch).
    train: sample (True) or take the nearest codeword (False).

  Returns:
    `(z_q, aux)`: `z_q` (N, L) float32; `aux` holds `indices` (N,) int32,
    `probs` and `log_probs` (N, C), `codes` (N, C), `variance` () s^2,
    `kl_discrete`, `kl_continuous`, `loss` and `perplexity`
    exp(H(mean_n P_s2(.|z_n))) over the global batch.
  """
  codebook = params["codebook"].astype(jnp.float32)
  num_codes = codebook.shape[0]
  z = z.astype(jnp.float32)
  s2 = variance(params, variance_offset=variance_offset)
  if train:
    if rng is None:
      raise ValueError("sqvae.quantize(train=True) needs `rng` for the Gumbel noise.")
    gumbel_rng, normal_rng = common.split_keys(rng)
    z_tilde = z
    if encoder_noise:
      z_tilde = z + jnp.sqrt(s2) * common.draw(jax.random.normal, normal_rng, z.shape)
    log_probs = jax.nn.log_softmax(logits(z_tilde, codebook, s2), axis=-1)
    straight_through, soft = gmvq.gumbel_softmax_straight_through(
        gumbel_rng, log_probs, temperature)
    codes = straight_through if hard else soft
  else:
    log_probs = jax.nn.log_softmax(logits(z, codebook, s2), axis=-1)
    codes = jax.nn.one_hot(jnp.argmax(log_probs, axis=-1), num_codes, dtype=jnp.float32)
  probs = jnp.exp(log_probs)
  z_q = jnp.dot(codes, codebook, precision=jax.lax.Precision.HIGHEST)
  kl_discrete = jnp.mean(gmvq.kl_to_uniform(probs, log_probs))
  kl_continuous = jnp.mean(jnp.sum(jnp.square(z - z_q), axis=-1)) / (2.0 * s2)
  qbar = jax.lax.stop_gradient(common.pmean(jnp.mean(probs, axis=0), axis_name))
  aux = dict(
      indices=jnp.argmax(codes, axis=-1).astype(jnp.int32),
      probs=probs,
      log_probs=log_probs,
      codes=codes,
      variance=s2,
      kl_discrete=kl_discrete,
      kl_continuous=kl_continuous,
      loss=kl_discrete + kl_continuous,
      perplexity=metrics.perplexity(qbar),
  )
  return z_q, aux


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.KMeansConfig):
  """SQ-VAE's fields and defaults."""

  log_variance_init: float = LOG_VARIANCE_INIT
  temperature_decay: float = 1e-5  # The official schedule's.


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  return interface.codebook_fields(q) + interface.need_number(q, "temperature_decay", 0.0)


def loss(images: Array, reconstructions: Array, aux: dict[str, Array]):
  """SQ-VAE's Gaussian objective per pixel-channel, with the decoder variance at its optimum.

  With the variance at its optimum, the MSE, the per-image negative
  log-likelihood is (D/2) log MSE + const; the latent terms are summed over
  the h*w positions; the whole is divided by D (pixel-channels per image) so
  that its scale is comparable with the other methods' losses.
  """
  recon = metrics.mse(images, reconstructions)
  values_per_image = math.prod(images.shape[1:])
  positions = aux["indices"].shape[0] // images.shape[0]
  value = 0.5 * jnp.log(recon) + positions * aux["loss"] / values_per_image
  return value, dict(loss=value, recon=recon, quantizer_loss=aux["loss"])


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """Gaussian SQ-VAE as a `Quantizer`."""
  del num_steps
  return interface.code_quantizer(
      quantize=functools.partial(quantize, axis_name=axis_name),
      encoder_width=q.latent_dim, codebook_size=q.num_codes,
      init_params=lambda rng: init_params(rng, q.num_codes, q.latent_dim,
                                          log_variance_init=q.log_variance_init),
      temperature=lambda step: temperature_schedule(step, decay=q.temperature_decay),
      loss=loss, encoder_points=interface.flat,
      set_codebook=lambda params, centers: dict(params, codebook=centers),
      detokenize_flat=lambda params, indices: params["codebook"].astype(jnp.float32)[indices],
      axis_name=axis_name)
