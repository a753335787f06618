"""LFQ: lookup-free quantization (Yu et al. 2023, MAGVIT-v2, Sec. 3.1).

Each of the L channels is quantized to its sign in {-1, +1}; the implicit
codebook is {-1, 1}^L (2^L codes). Entropy penalty over the global batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp

from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import interface

Array = jax.Array

# The entropy terms use the full (N, 2^L) code distribution: 2^16 = 65536
# probabilities per vector is the most this does (4 GB of float32 for 16k vectors).
MAX_ENTROPY_BITS = 16


def codebook_size(num_bits: int) -> int:
  """2^L codes for L sign bits."""
  return 2**num_bits


def codes_to_indices(codes: Array) -> Array:
  """Sign codes -> integer indices, Index(z) = sum_i 2^i 1[z_i > 0] (MAGVIT-v2, Sec. 3.1).

  Args:
    codes: (..., L) values whose signs are the bits (> 0 is bit 1); L <= 31.

  Returns:
    (...,) int32 indices in [0, 2^L); channel 0 is the least significant bit.
  """
  num_bits = codes.shape[-1]
  if num_bits > 31:
    raise ValueError(f"{num_bits} bits do not fit an int32 index (at most 31).")
  bits = (codes > 0).astype(jnp.int32)
  return jnp.sum(bits * (2 ** jnp.arange(num_bits, dtype=jnp.int32)), axis=-1)


def indices_to_codes(indices: Array, num_bits: int) -> Array:
  """Integer indices -> (..., L) float32 codes in {-1, +1}; inverse of `codes_to_indices`."""
  indices = jnp.asarray(indices, jnp.int32)[..., None]
  bits = (indices >> jnp.arange(num_bits, dtype=jnp.int32)) & 1
  return 2.0 * bits.astype(jnp.float32) - 1.0


def implicit_codebook(num_bits: int) -> Array:
  """(2^L, L) float32: row k is the code of index k."""
  return indices_to_codes(jnp.arange(codebook_size(num_bits)), num_bits)


def entropy_terms(
    z: Array, *, inv_temperature: float, axis_name: Any = None
) -> tuple[Array, Array, Array]:
  """MAGVIT-v2's entropy statistics of the soft code assignment (Sec. 3.1).

  q(c|z) = softmax_c(-inv_temperature * ||z - c||^2) over the 2^L codes
  c in {-1, 1}^L, computed as softmax_c(2 inv_temperature z . c) (the
  dropped terms do not depend on c).

  Args:
    z: (N, L) pre-quantization latents, L <= MAX_ENTROPY_BITS.
    inv_temperature: 1/tau of the soft assignment.
    axis_name: the named batch axis, or None on one device. Both terms are
      over the GLOBAL batch (equal shards per device assumed).

  Returns:
    `(per_sample_entropy, codebook_entropy, avg_probs)`: E_z[H(q(c|z))] and
    H(E_z[q(c|z)]) in nats (scalars), and E_z[q(c|z)] (2^L,).
  """
  num_bits = z.shape[-1]
  if num_bits > MAX_ENTROPY_BITS:
    raise ValueError(
        f"LFQ's entropy terms form the full 2^L code distribution; L={num_bits} >"
        f" {MAX_ENTROPY_BITS} is too large. Use entropy_weight=0.0, or BSQ's factorised"
        " entropy (gmvq_jax.quantizers.bsq).")
  z = z.astype(jnp.float32)
  codebook = implicit_codebook(num_bits)  # (2^L, L)
  logits = 2.0 * inv_temperature * jnp.dot(z, codebook.T, precision=jax.lax.Precision.HIGHEST)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  per_sample = common.pmean(jnp.mean(-jnp.sum(probs * log_probs, axis=-1)), axis_name)
  avg_probs = common.pmean(jnp.mean(probs, axis=0), axis_name)
  codebook_entropy = -jnp.sum(avg_probs * jnp.log(jnp.maximum(avg_probs, 1e-30)))
  return per_sample, codebook_entropy, avg_probs


def quantize(
    params: Any,
    z: Array,
    *,
    rng: Array | None = None,
    entropy_weight: float,
    diversity_weight: float,
    commitment: float,
    inv_temperature: float,
    axis_name: Any = None,
    train: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """LFQ forward pass: sign quantization with a straight-through gradient.

  z_q = z + sg(sign(z) - z), sign(0) = -1 (bit 0). Training and evaluation
  quantize identically; the loss terms are computed in both.

  loss = entropy_weight * (per_sample_entropy - diversity_weight * codebook_entropy)
         + commitment * mean((z - sg(z_q))^2)

  The entropy penalty is MAGVIT-v2's (Sec. 3.1); minimising it makes each
  vector's assignment confident and the batch's code usage uniform. The
  commitment term is a mean over vectors and channels.

  Args:
    params: unused (LFQ has no parameters; pass None).
    z: (N, L) encoder output; any float dtype.
    rng: unused (LFQ is deterministic).
    entropy_weight: weight of the entropy penalty; 0.0 skips it (and lifts
      the L <= MAX_ENTROPY_BITS limit).
    diversity_weight: gamma, the weight of the codebook (batch) entropy.
    commitment: weight of the commitment loss.
    inv_temperature: of the soft assignment in `entropy_terms`.
    axis_name: the named batch axis for the global-batch entropy terms.
    train: unused (the same map in training and evaluation).

  Returns:
    `(z_q, aux)`: `z_q` (N, L) float32 in {-1, +1}; `aux` holds `indices`
    (N,) int32 in [0, 2^L), `per_sample_entropy`, `codebook_entropy`,
    `entropy_loss`, `commitment_loss`, `loss` (float32 scalars; the entropy terms
    are 0.0 when entropy_weight == 0).
  """
  del params, rng, train
  z = z.astype(jnp.float32)
  hard = jnp.where(z > 0, 1.0, -1.0).astype(jnp.float32)
  z_q = z + jax.lax.stop_gradient(hard - z)
  commitment_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(hard)))
  if entropy_weight:
    per_sample, codebook_entropy, _ = entropy_terms(
        z, inv_temperature=inv_temperature, axis_name=axis_name)
  else:
    per_sample = codebook_entropy = jnp.zeros((), jnp.float32)
  entropy_loss = per_sample - diversity_weight * codebook_entropy
  loss = entropy_weight * entropy_loss + commitment * commitment_loss
  aux = dict(
      indices=codes_to_indices(hard),
      per_sample_entropy=per_sample,
      codebook_entropy=codebook_entropy,
      entropy_loss=entropy_loss,
      commitment_loss=commitment_loss,
      loss=loss,
  )
  return z_q, aux


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.BitsConfig):
  """LFQ's fields and defaults; log2_codebook_size sign bits are the latent width.

  The entropy weight 0.1, commitment 0.25 and inverse temperature 100 are
  those of the open MAGVIT-v2 reimplementations (the paper states none).
  """

  renamed: ClassVar[Mapping[str, str]] = {"num_bits": "log2_codebook_size",
                                           "commitment_weight": "commitment"}
  entropy_weight: float = 0.1
  diversity_weight: float = 1.0
  commitment: float = 0.25
  inv_temperature: float = 100.0


def check_bits(q: Any) -> list[interface.Problem]:
  """Problems of the fields LFQ and BSQ share."""
  return (interface.need_int(q, "log2_codebook_size", 1)
          + interface.need_number(q, "entropy_weight", 0.0)
          + interface.need_number(q, "commitment", 0.0)
          + interface.need_number(q, "inv_temperature", 0.0, strict=True))


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  problems = check_bits(q)
  bits = q.get("log2_codebook_size")
  if q.get("entropy_weight") and isinstance(bits, int) and bits > MAX_ENTROPY_BITS:
    problems.append(("quantizer.log2_codebook_size", bits,
                     f"must be <= {MAX_ENTROPY_BITS} with an entropy penalty (LFQ forms"
                     " the full 2^L distribution); set entropy_weight=0 or use bsq"))
  return problems


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """LFQ as a `Quantizer`: no parameters, no state."""
  del num_steps

  def apply(params, z, *, rng, temperature, train):
    del rng, temperature
    return quantize(None, z, entropy_weight=q.entropy_weight,
                    diversity_weight=q.diversity_weight, commitment=q.commitment,
                    inv_temperature=q.inv_temperature, axis_name=axis_name, train=train)

  return interface.code_quantizer(
      quantize=apply, encoder_width=q.log2_codebook_size, codebook_size=2**q.log2_codebook_size,
      detokenize_flat=lambda params, indices: indices_to_codes(indices, q.log2_codebook_size),
      axis_name=axis_name)
