"""Gumbel-VQVAE: the encoder emits logits over C codes (DALL-E / Karpathy 2021 style).

A Gumbel-softmax sample of the categorical picks the codeword, `z_q = codes @
codebook`; the loss is the KL of q(c|x) to the uniform prior (GM-VQ paper, Sec. 5.1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gmvq_jax import metrics
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import interface

Array = jax.Array

# tau(t) = max(tau_min, tau_0 exp(-r t)), 2.0 -> 0.1: the annealing that the GM-VQ paper
# (Sec. 5.1) uses for every Gumbel-softmax model, its baselines included.
temperature_schedule = gmvq.temperature_schedule


def quantize(
    codebook: Array,
    z: Array,
    *,
    rng: Array | None = None,
    temperature: Array | float = 1.0,
    hard: bool,
    kl_weight: float,
    axis_name: Any = None,
    train: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """Gumbel-VQVAE forward pass.

  Training: y = softmax((log q + g) / tau), g ~ Gumbel(0, 1). With `hard`
  (default) the code is the straight-through one-hot `one_hot(argmax y) + y -
  sg(y)`, so the decoder sees a codeword exactly; with `hard=False` it is the
  relaxed sample y itself (DALL-E's and Karpathy's training default), so the
  decoder sees a convex mix of codewords. `z_q = codes @ codebook`.
  Evaluation: the noise-free argmax of the logits, `z_q = codebook[argmax]`.

  loss = kl_weight * mean_n KL(q(c|x_n) || Uniform(C)), in both modes.

  Args:
    codebook: (C, L) codewords.
    z: (N, C) encoder logits over the C codes; any float dtype.
    rng: typed key or (N,) per-row keys; required when `train`.
    temperature: Gumbel-softmax temperature tau (see `temperature_schedule`).
    hard: straight-through one-hot (True) or relaxed soft sample (False).
    kl_weight: weight of the KL-to-uniform term.
    axis_name: the named batch axis for `perplexity` (global batch).
    train: sample (True) or take the argmax (False).

  Returns:
    `(z_q, aux)`: `z_q` (N, L) float32; `aux` holds `indices` (N,) int32,
    `probs` and `log_probs` (N, C) q(c|x), `codes` (N, C) (one-hot forward
    when hard or evaluating), `kl` (the mean KL, nats), `loss`, and
    `perplexity` exp(H(mean_n q(c|x_n))) over the global batch.
  """
  codebook = codebook.astype(jnp.float32)
  num_codes = codebook.shape[0]
  if z.shape[-1] != num_codes:
    raise ValueError(f"z has {z.shape[-1]} logits for a codebook of {num_codes} codes.")
  log_probs = jax.nn.log_softmax(z.astype(jnp.float32), axis=-1)
  probs = jnp.exp(log_probs)
  if train:
    if rng is None:
      raise ValueError("gumbel_vq.quantize(train=True) needs `rng` for the Gumbel noise.")
    straight_through, soft = gmvq.gumbel_softmax_straight_through(rng, log_probs, temperature)
    codes = straight_through if hard else soft
  else:
    codes = jax.nn.one_hot(jnp.argmax(log_probs, axis=-1), num_codes, dtype=jnp.float32)
  z_q = jnp.dot(codes, codebook, precision=jax.lax.Precision.HIGHEST)
  kl = jnp.mean(gmvq.kl_to_uniform(probs, log_probs))
  qbar = jax.lax.stop_gradient(common.pmean(jnp.mean(probs, axis=0), axis_name))
  aux = dict(
      indices=jnp.argmax(codes, axis=-1).astype(jnp.int32),
      probs=probs,
      log_probs=log_probs,
      codes=codes,
      kl=kl,
      loss=kl_weight * kl,
      perplexity=metrics.perplexity(qbar),
  )
  return z_q, aux


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.CodebookConfig):
  """Gumbel-VQVAE's fields and defaults (temperature annealed 2.0 -> 0.1)."""

  kl_weight: float = 5e-4  # Karpathy (2021) and taming-transformers' GumbelQuantize.
  hard: bool = True
  tau_0: float = 2.0
  tau_min: float = 0.1
  anneal_fraction: float = 0.8


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  return (interface.codebook_fields(q) + interface.need_number(q, "kl_weight", 0.0)
          + interface.need_number(q, "tau_min", 0.0, strict=True)
          + interface.need_number(q, "tau_0", 0.0, strict=True))


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """Gumbel-VQVAE as a `Quantizer`: the encoder emits logits over the C codes."""

  def apply(params, z, *, rng, temperature, train):
    return quantize(params["codebook"], z, rng=rng, temperature=temperature, hard=q.hard,
                    kl_weight=q.kl_weight, axis_name=axis_name, train=train)

  return interface.code_quantizer(
      quantize=apply, encoder_width=q.num_codes, codebook_size=q.num_codes,
      init_params=lambda rng: dict(codebook=jax.random.normal(rng, (q.num_codes, q.latent_dim),
                                                              jnp.float32)),
      temperature=lambda step: gmvq.temperature_schedule(
          step, total_steps=num_steps, tau_0=q.tau_0, tau_min=q.tau_min,
          anneal_fraction=q.anneal_fraction),
      detokenize_flat=lambda params, indices: params["codebook"].astype(jnp.float32)[indices],
      axis_name=axis_name)
