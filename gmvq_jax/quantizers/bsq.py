"""BSQ: binary spherical quantization (Zhao et al. 2024, Sec. 3).

Latents are projected to the unit sphere and quantized to sign(u)/sqrt(L),
the nearest of the 2^L corners of the cube inscribed in the sphere; the
entropy penalty is factorised over bits, so any L is affordable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import interface
from gmvq_jax.quantizers import lfq
from gmvq_jax.quantizers import vq

Array = jax.Array

# Bits, indices and normalisation are LFQ's and VQ's: channel 0 is the least
# significant bit (the BSQ reference code orders the bits the other way; the
# index is only a label).
codebook_size = lfq.codebook_size
codes_to_indices = lfq.codes_to_indices
l2_normalize = vq.l2_normalize


def indices_to_codes(indices: Array, num_bits: int) -> Array:
  """Integer indices -> (..., L) float32 codes in {-1/sqrt(L), +1/sqrt(L)}."""
  return lfq.indices_to_codes(indices, num_bits) / math.sqrt(num_bits)


def entropy_terms(
    u: Array, *, inv_temperature: float, axis_name: Any = None
) -> tuple[Array, Array, Array]:
  """BSQ's per-sample and codebook entropies, factorised over bits (Sec. 3).

  The soft assignment q(c|u) = softmax_c(-tau ||u - c||^2) over the 2^L codes
  equals softmax_c(2 tau u . c), a product of per-bit Bernoullis with
  p_i(u) = q(c_i = +1/sqrt(L) | u_i) = sigmoid(4 tau u_i / sqrt(L)).

  per_sample = E_u[H(q(c|u))] = E_u[sum_i H_b(p_i(u))], exact.
  codebook   ~= sum_i H_b(E_u[p_i(u)]): the entropy of the product of the
  batch-mean bit marginals, an APPROXIMATION (an upper bound) of the exact
  H(E_u[q(c|u)]), which does not factorise. It is BSQ's grouped
  approximation with group size 1.

  Args:
    u: (N, L) unit-norm latents.
    inv_temperature: tau of the soft assignment.
    axis_name: the named batch axis, or None on one device. Both terms are
      over the GLOBAL batch (equal shards per device assumed).

  Returns:
    `(per_sample_entropy, codebook_entropy, avg_bit_probs)`: scalars in nats
    and the (L,) batch-mean probability of bit 1 per channel.
  """
  num_bits = u.shape[-1]
  logit = 4.0 * inv_temperature * u.astype(jnp.float32) / math.sqrt(num_bits)
  p = jax.nn.sigmoid(logit)
  # H_b(p) from log-sigmoids: finite for saturated bits.
  per_bit = -(p * jax.nn.log_sigmoid(logit) + (1.0 - p) * jax.nn.log_sigmoid(-logit))
  per_sample = common.pmean(jnp.mean(jnp.sum(per_bit, axis=-1)), axis_name)
  avg = common.pmean(jnp.mean(p, axis=0), axis_name)  # (L,)
  codebook_entropy = -jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-30))
                              + (1.0 - avg) * jnp.log(jnp.maximum(1.0 - avg, 1e-30)))
  return per_sample, codebook_entropy, avg


def quantize(
    params: Any,
    z: Array,
    *,
    rng: Array | None = None,
    entropy_weight: float,
    per_sample_weight: float,
    codebook_weight: float,
    commitment: float,
    inv_temperature: float,
    axis_name: Any = None,
    train: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """BSQ forward pass: project to the sphere, then sign/sqrt(L) straight-through.

  u = z / ||z||, u_hat = sign(u) / sqrt(L) with sign(0) = -1, and
  z_q = u + sg(u_hat - u): the forward value is u_hat (norm 1), the gradient
  passes through the quantizer as the identity (and through the
  normalisation as its Jacobian).

  loss = entropy_weight * (per_sample_weight * per_sample_entropy
                           - codebook_weight * codebook_entropy) / inv_temperature
         + commitment * mean_n ||u_n - sg(u_hat_n)||^2

  as in the BSQ reference code.

  Args:
    params: unused (BSQ has no parameters; pass None).
    z: (N, L) encoder output; any float dtype.
    rng: unused (BSQ is deterministic).
    entropy_weight: weight of the entropy penalty (the reference's zeta times
      its codebook-loss weight).
    per_sample_weight: gamma0, weight of the per-sample entropy.
    codebook_weight: gamma, weight of the codebook entropy.
    commitment: beta, weight of the commitment loss.
    inv_temperature: tau of the soft assignment.
    axis_name: the named batch axis for the global-batch entropy terms.
    train: unused (the same map in training and evaluation).

  Returns:
    `(z_q, aux)`: `z_q` (N, L) float32 with entries +-1/sqrt(L); `aux`
    holds `indices` (N,) int32 in [0, 2^L), `per_sample_entropy`,
    `codebook_entropy`, `entropy_loss`, `commitment_loss`, `loss` (float32
    scalars) and `bit_usage` (L,), the batch-mean probability of bit 1.
  """
  del params, rng, train
  num_bits = z.shape[-1]
  u = l2_normalize(z)
  hard = jnp.where(u > 0, 1.0, -1.0).astype(jnp.float32) / math.sqrt(num_bits)
  z_q = u + jax.lax.stop_gradient(hard - u)
  commitment_loss = jnp.mean(jnp.sum(jnp.square(u - jax.lax.stop_gradient(hard)), axis=-1))
  per_sample, codebook_entropy, avg = entropy_terms(
      u, inv_temperature=inv_temperature, axis_name=axis_name)
  entropy_loss = per_sample_weight * per_sample - codebook_weight * codebook_entropy
  loss = entropy_weight * entropy_loss / inv_temperature + commitment * commitment_loss
  aux = dict(
      indices=codes_to_indices(hard),
      per_sample_entropy=per_sample,
      codebook_entropy=codebook_entropy,
      entropy_loss=entropy_loss,
      commitment_loss=commitment_loss,
      loss=loss,
      bit_usage=avg,
  )
  return z_q, aux


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.BitsConfig):
  """BSQ's fields and defaults; log2_codebook_size bits are the latent width.

  As the BSQ reference code: gamma0 = gamma = 1, commitment beta = 0, and
  entropy_weight 0.1, the reference ImageNet configs' codebook-loss weight
  (which multiplies the whole quantizer loss there).
  """

  renamed: ClassVar[Mapping[str, str]] = lfq.Config.renamed
  entropy_weight: float = 0.1
  inv_temperature: float = 1.0
  commitment: float = 0.0
  per_sample_weight: float = 1.0
  codebook_weight: float = 1.0


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  problems = lfq.check_bits(q)
  problems += interface.need_number(q, "per_sample_weight", 0.0)
  problems += interface.need_number(q, "codebook_weight", 0.0)
  bits = q.get("log2_codebook_size")
  if isinstance(bits, int) and bits > 31:
    problems.append(("quantizer.log2_codebook_size", bits, "must be <= 31 (int32 indices)"))
  return problems


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """BSQ as a `Quantizer`: no parameters, no state."""
  del num_steps

  def apply(params, z, *, rng, temperature, train):
    del rng, temperature
    return quantize(None, z, entropy_weight=q.entropy_weight,
                    per_sample_weight=q.per_sample_weight, codebook_weight=q.codebook_weight,
                    commitment=q.commitment, inv_temperature=q.inv_temperature,
                    axis_name=axis_name, train=train)

  bits = q.log2_codebook_size
  return interface.code_quantizer(
      quantize=apply, encoder_width=bits, codebook_size=2**bits,
      detokenize_flat=lambda params, indices: indices_to_codes(indices, bits),
      axis_name=axis_name)
