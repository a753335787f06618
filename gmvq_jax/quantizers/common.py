"""Array helpers shared by the quantizers: distances, per-row noise, collectives.

Every function is pure and jit-able; none knows about training loops.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from gmvq_jax import threefry_cpu

Array = jax.Array

# Every quantizer's noise goes through `draw`: threefry unrolled on the CPU
# (identical bits, ~5x faster; see threefry_cpu).
threefry_cpu.install()


def squared_distances(x: Array, codebook: Array) -> Array:
  """||x_n - M_c||^2 in matrix-product form.

  Args:
    x: (N, L) vectors.
    codebook: (C, L) codewords.

  Returns:
    (N, C) float32 squared Euclidean distances, clipped at 0 (the expanded
    form can round slightly below zero).
  """
  x = x.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  cross = jnp.dot(x, codebook.T, precision=jax.lax.Precision.HIGHEST)
  d = jnp.sum(x * x, axis=-1, keepdims=True) - 2.0 * cross + jnp.sum(codebook * codebook, axis=-1)
  return jnp.maximum(d, 0.0)


def is_key_batch(rng: Array) -> bool:
  """True when `rng` is an array of typed keys with one leading axis."""
  return jnp.ndim(rng) == 1


def split_keys(rng: Array) -> tuple[Array, Array]:
  """Splits a key, or each key of an (N,) batch of keys, into two."""
  if is_key_batch(rng):
    pairs = jax.vmap(jax.random.split)(rng)  # (N, 2)
    return pairs[:, 0], pairs[:, 1]
  first, second = jax.random.split(rng)
  return first, second


def draw(sampler: Callable[..., Array], rng: Array, shape: tuple[int, ...]) -> Array:
  """Draws `sampler(key, shape)` noise, per row when `rng` is an (N,) key batch.

  Per-row keys derived from a global row index make the noise independent of
  how the rows are split across devices (docs/algorithms.md).

  Args:
    sampler: e.g. `jax.random.normal` or `jax.random.gumbel`.
    rng: a typed key, or (N,) typed keys with `N == shape[0]`.
    shape: (N, ...) float32 output shape.
  """
  if is_key_batch(rng):
    if rng.shape[0] != shape[0]:
      raise ValueError(f"{rng.shape[0]} keys for {shape[0]} rows; pass one key per row.")
    return jax.vmap(lambda k: sampler(k, shape[1:], jnp.float32))(rng)
  return sampler(rng, shape, jnp.float32)


def pmean(x: Any, axis_name: Any) -> Any:
  """`lax.pmean` over `axis_name`, the identity when it is None (one device)."""
  if axis_name is None:
    return x
  return jax.lax.pmean(x, axis_name)


def pmax(x: Any, axis_name: Any) -> Any:
  """`lax.pmax` over `axis_name`, the identity when it is None (one device)."""
  if axis_name is None:
    return x
  return jax.lax.pmax(x, axis_name)


def pmin(x: Any, axis_name: Any) -> Any:
  """`lax.pmin` over `axis_name`, the identity when it is None (one device)."""
  if axis_name is None:
    return x
  return jax.lax.pmin(x, axis_name)


def psum(x: Any, axis_name: Any) -> Any:
  """`lax.psum` over `axis_name`, the identity when it is None (one device)."""
  if axis_name is None:
    return x
  return jax.lax.psum(x, axis_name)
