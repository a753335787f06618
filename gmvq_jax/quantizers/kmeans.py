"""k-means codebook initialisation: jit-compiled Lloyd iterations.

GM-VQ initialises its codebook by k-means on encoder outputs of the first
training batch(es) (GM-VQ paper, Sec. 5.1); seeding is k-means++ or a random
sample of the data.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gmvq_jax.quantizers import common

SEEDINGS = ("kmeans++", "random")

Array = jax.Array


def distortion(points: Array, centers: Array) -> Array:
  """Mean over points of the squared distance to the nearest center.

  Args:
    points: (N, L).
    centers: (C, L).

  Returns:
    float32 scalar.
  """
  return jnp.mean(jnp.min(common.squared_distances(points, centers), axis=-1))


def _seed_random(rng: Array, points: Array, num_clusters: int) -> Array:
  replace = points.shape[0] < num_clusters
  idx = jax.random.choice(rng, points.shape[0], (num_clusters,), replace=replace)
  return points[idx]


def _seed_kmeans_plus_plus(rng: Array, points: Array, num_clusters: int) -> Array:
  """D^2 sampling (Arthur & Vassilvitskii, 2007): O(C N L), one pass per center."""
  num_points, dim = points.shape
  first = jax.random.randint(jax.random.fold_in(rng, 0), (), 0, num_points)
  centers = jnp.zeros((num_clusters, dim), jnp.float32).at[0].set(points[first])
  min_d2 = jnp.sum(jnp.square(points - points[first]), axis=-1)

  def body(i, carry):
    centers, min_d2 = carry
    # All-zero distances (duplicate points) degrade to uniform sampling.
    logit = jnp.log(jnp.maximum(min_d2, 1e-30))
    idx = jax.random.categorical(jax.random.fold_in(rng, i), logit)
    new_center = points[idx]
    centers = centers.at[i].set(new_center)
    min_d2 = jnp.minimum(min_d2, jnp.sum(jnp.square(points - new_center), axis=-1))
    return centers, min_d2

  centers, _ = jax.lax.fori_loop(1, num_clusters, body, (centers, min_d2))
  return centers


def lloyd_step(points: Array, centers: Array) -> Array:
  """One Lloyd iteration; a center that loses all its points stays where it was."""
  assign = jnp.argmin(common.squared_distances(points, centers), axis=-1)
  one_hot = jax.nn.one_hot(assign, centers.shape[0], dtype=jnp.float32)  # (N, C)
  sums = jnp.dot(one_hot.T, points, precision=jax.lax.Precision.HIGHEST)  # (C, L)
  counts = jnp.sum(one_hot, axis=0)[:, None]
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), centers)


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters", "seeding"))
def kmeans(
    rng: Array,
    points: Array,
    *,
    num_clusters: int,
    num_iters: int,
    seeding: str,
) -> Array:
  """k-means by Lloyd's algorithm.

  Args:
    rng: typed key for the seeding.
    points: (N, L) data, e.g. encoder outputs of the first training batches.
    num_clusters: C, the codebook size.
    num_iters: Lloyd iterations after seeding.
    seeding: 'kmeans++' or 'random' (C rows sampled without replacement when
      N >= C).

  Returns:
    (C, L) float32 centers.
  """
  if seeding not in SEEDINGS:
    raise ValueError(f"seeding={seeding!r}; allowed: {SEEDINGS}.")
  points = points.astype(jnp.float32)
  if seeding == "kmeans++":
    centers = _seed_kmeans_plus_plus(rng, points, num_clusters)
  else:
    centers = _seed_random(rng, points, num_clusters)
  return jax.lax.fori_loop(0, num_iters, lambda _, c: lloyd_step(points, c), centers)
