"""FSQ: finite scalar quantization (Mentzer et al. 2023, "VQ-VAE made simple").

Each of the L channels is bounded with tanh and rounded to one of `levels[i]`
values; the implicit codebook is the product grid. No loss, no parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax.quantizers import interface

Array = jax.Array

# The paper's recommended levels per codebook size (FSQ, Table 1).
RECOMMENDED_LEVELS = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def _check_levels(levels: Sequence[int]) -> np.ndarray:
  levels_np = np.asarray(tuple(levels), np.int64)
  if levels_np.ndim != 1 or levels_np.size == 0 or np.any(levels_np < 2):
    raise ValueError(f"levels={tuple(levels)}: need a non-empty tuple of integers >= 2.")
  if int(np.prod(levels_np)) > 2**31 - 1:
    raise ValueError(f"levels={tuple(levels)}: the codebook size {int(np.prod(levels_np))} does"
                     " not fit an int32 index.")
  return levels_np


def codebook_size(levels: Sequence[int]) -> int:
  """The size of the implicit codebook, prod(levels)."""
  return int(math.prod(_check_levels(levels).tolist()))


def _basis(levels_np: np.ndarray) -> np.ndarray:
  """Mixed-radix place values [1, l_0, l_0 l_1, ...]: channel 0 is the least significant digit."""
  return np.concatenate([[1], np.cumprod(levels_np[:-1])]).astype(np.int64)


def bound(z: Array, levels: Sequence[int], eps: float = 1e-3) -> Array:
  """Bounds channel i to (-(l_i - 1)/2 - o_i, (l_i - 1)/2 - o_i) before rounding.

  f(z) = tanh(z + s) * h - o with h = (l - 1)(1 - eps)/2, o = 0.5 for even
  l (0 for odd) and s = tan(o / h), as in the paper's reference code
  (Mentzer et al. 2023, App. A.1). Rounding f(z) gives exactly l integer
  values: {-(l-1)/2, ..., (l-1)/2} for odd l and {-l/2, ..., l/2 - 1} for even
  l (the half-level offset o). The shift s puts f(0) near 0 (exactly 0 for odd
  l; within 1e-3 for even l >= 4); `atanh(o / h)` would make it exact but is
  undefined for l = 2, where o > h.

  Args:
    z: (N, L) float latents, L == len(levels).
    levels: number of levels per channel.
    eps: the (1 - eps) margin keeping the tanh range strictly inside the grid.

  Returns:
    (N, L) float32 bounded latents (not yet rounded).
  """
  levels_np = _check_levels(levels)
  half_l = (levels_np - 1) * (1.0 - eps) / 2.0
  offset = np.where(levels_np % 2 == 0, 0.5, 0.0)
  shift = np.tan(offset / half_l)
  z = z.astype(jnp.float32)
  return (jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32)
          - offset.astype(np.float32))


def round_straight_through(x: Array) -> Array:
  """round(x) in the forward pass, the identity's gradient in the backward pass."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


def codes_to_indices(codes: Array, levels: Sequence[int]) -> Array:
  """Normalised codes -> mixed-radix integer indices.

  Args:
    codes: (..., L) values on the normalised grid `k / (l // 2)`.
    levels: number of levels per channel.

  Returns:
    (...,) int32 indices in [0, prod(levels)); channel 0 is the least
    significant digit.
  """
  levels_np = _check_levels(levels)
  half_width = (levels_np // 2).astype(np.float32)
  digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
  return jnp.sum(digits * _basis(levels_np).astype(np.int32), axis=-1).astype(jnp.int32)


def indices_to_codes(indices: Array, levels: Sequence[int]) -> Array:
  """Integer indices -> normalised codes; the inverse of `codes_to_indices`.

  Args:
    indices: (...,) integer indices in [0, prod(levels)).
    levels: number of levels per channel.

  Returns:
    (..., L) float32 codes in [-1, 1].
  """
  levels_np = _check_levels(levels)
  indices = jnp.asarray(indices, jnp.int32)[..., None]
  digits = (indices // _basis(levels_np).astype(np.int32)) % levels_np.astype(np.int32)
  half_width = (levels_np // 2).astype(np.float32)
  return (digits.astype(jnp.float32) - half_width) / half_width


def implicit_codebook(levels: Sequence[int]) -> Array:
  """(prod(levels), L) float32: row k is the code of index k."""
  return indices_to_codes(jnp.arange(codebook_size(levels)), levels)


def quantize(
    params: Any,
    z: Array,
    *,
    levels: Sequence[int],
    eps: float = 1e-3,
    rng: Array | None = None,
    train: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """FSQ forward pass: bound, round with a straight-through gradient, normalise.

  z_q = round_ste(bound(z)) / (l // 2): each channel lies on its grid in
  [-1, 1] (even l: {-1, ..., 1 - 2/l}). Training and evaluation are identical.

  Args:
    params: unused (FSQ has no parameters; pass None). Present so that every
      quantizer is called as `quantize(params, z, ...)`.
    z: (N, L) encoder output, L == len(levels); any float dtype.
    levels: number of levels per channel, e.g. (8, 5, 5, 5) for 1000 codes.
    eps: tanh margin of `bound`.
    rng: unused (FSQ is deterministic).
    train: unused (the same map in training and evaluation).

  Returns:
    `(z_q, aux)`: `z_q` (N, L) float32; `aux` holds `indices` (N,) int32 in
    [0, prod(levels)) and `loss` 0.0 (FSQ has no auxiliary loss).
  """
  del params, rng, train
  if z.shape[-1] != len(tuple(levels)):
    raise ValueError(
        f"z has {z.shape[-1]} channels for {len(tuple(levels))} levels {tuple(levels)}.")
  levels_np = _check_levels(levels)
  half_width = (levels_np // 2).astype(np.float32)
  z_q = round_straight_through(bound(z, levels, eps)) / half_width
  aux = dict(
      indices=codes_to_indices(jax.lax.stop_gradient(z_q), levels),
      loss=jnp.zeros((), jnp.float32),
  )
  return z_q, aux


# ------------------------------------------------------------ the Quantizer


def default_levels(num_codes: int) -> tuple[int, ...]:
  """The recommended levels of the table size nearest `num_codes` in log2 (ties: the smaller)."""
  size = min(RECOMMENDED_LEVELS, key=lambda s: (abs(math.log2(s) - math.log2(num_codes)), s))
  return RECOMMENDED_LEVELS[size]


@dataclasses.dataclass(frozen=True)
class Config(interface.ConfigFields):
  """FSQ's one field: the levels per channel (their number is the latent width)."""

  levels: tuple[int, ...]

  @classmethod
  def sized(cls, num_codes: int, latent_dim: int) -> "Config":
    del latent_dim
    return cls(levels=default_levels(num_codes))


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  levels = q.get("levels")
  if (isinstance(levels, (tuple, list)) and levels
      and all(isinstance(l, int) and l >= 2 for l in levels)):
    return []
  return [("quantizer.levels", levels, "must be a tuple of integers >= 2, e.g. (8, 5, 5, 5)")]


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """FSQ as a `Quantizer`: no parameters, no loss, no state."""
  del num_steps
  levels = tuple(q.levels)
  return interface.code_quantizer(
      quantize=lambda params, z, *, rng, temperature, train: quantize(None, z, levels=levels,
                                                                      train=train),
      encoder_width=len(levels), codebook_size=codebook_size(levels),
      detokenize_flat=lambda params, indices: indices_to_codes(indices, levels),
      axis_name=axis_name)
