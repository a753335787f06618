"""Data-dependent codebooks: k-means initialisation and GM-VQ's dead-code remedies.

`kmeans_init` (a quantizer field of every method whose encoder emits vectors
in its codebook's space: GM-VQ, the VQ-VAE family, SQ-VAE) replaces the
random codebook by k-means of encoder outputs before the first step, as the
GM-VQ paper does for every model it compares (Sec. 5.1). GM-VQ also has two
in-training remedies for codes that drift out of reach of every vector:
`kmeans_init_step` re-runs k-means on the global batch after a warm-up of
the encoder, and `recenter_after` moves codes that no vector has chosen for
that many steps onto encoder vectors of the global batch.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmvq_jax import methods
from gmvq_jax.quantizers import kmeans
from gmvq_jax.quantizers import vq

Array = jax.Array
# Families whose codebook lives in the encoder's output space, and where.
CODEBOOK_PATHS = dict(gmvq=("codebook",), vq=("quantizer", "codebook"),
                      sqvae=("quantizer", "codebook"))


def supports_kmeans(config: ml_collections.ConfigDict) -> bool:
  """Whether the method's codebook can start from k-means of encoder outputs."""
  return methods.family(config) in CODEBOOK_PATHS


def _encoder_points(model: Any, variables: Any, images: Array, *, l2: bool) -> Array:
  """Encoder vectors (N, L) with batch-statistics BatchNorm (state discarded)."""
  out, _ = model.apply(variables, images, True, method=model.encode, mutable=["batch_stats"])
  if isinstance(out, tuple):  # GM-VQ: (zh, r); the codebook lives where zh does.
    out = out[0]
  points = out.reshape(-1, out.shape[-1])
  return vq.l2_normalize(points) if l2 else points


def init_params(config: ml_collections.ConfigDict, model: Any, variables: Any, dataset: Any,
                rng: Array) -> Any:
  """`variables['params']` with the codebook set to k-means of encoder outputs.

  The points are the encoder outputs of the first `kmeans_batches` training
  batches at initialisation (l2-normalised for VQ+l2, whose matching is on
  the sphere; through the inverse of the identity-initialised affine map for
  VQ+affine). Runs on the default device, so every parallelism starts from
  the same codebook.
  """
  q = config.quantizer
  params = variables["params"]
  images = np.concatenate(
      [dataset.train_batch(i, config.batch_size) for i in range(q.kmeans_batches)])
  points = jax.jit(functools.partial(_encoder_points, model, l2=bool(q.get("l2", False))))(
      variables, images)
  logging.info("k-means (%s seeding, %d iterations) of %d encoder vectors into %d codes.",
               q.kmeans_seeding, q.kmeans_iters, points.shape[0], q.num_codes)
  centers = kmeans.kmeans(rng, points, num_clusters=q.num_codes, num_iters=q.kmeans_iters,
                          seeding=q.kmeans_seeding)
  *parents, leaf = CODEBOOK_PATHS[methods.family(config)]
  node = params
  for name in parents:
    node = node[name]
  if "affine" in node:  # The raw code whose affine image is the center.
    centers = vq._raw_from_effective(centers, node["affine"])  # pylint: disable=protected-access
  return _replace_leaf(params, parents + [leaf], centers)


def _replace_leaf(tree: Any, path: list[str], value: Array) -> Any:
  if not path:
    return value
  return dict(tree, **{path[0]: _replace_leaf(tree[path[0]], path[1:], value)})


def global_kmeans(rng: Array, points: Array, *, num_clusters: int, num_iters: int,
                  seeding: str, axis_name: Any = None) -> Array:
  """k-means of the GLOBAL batch's points: the same centers on every device.

  Args:
    rng: a key identical on every device.
    points: (N_local, L) this device's points.
    axis_name: the named batch axis (None on one device); points are
      all-gathered in global row order, so any split gives the same result.

  Returns:
    (num_clusters, L) float32 centers.
  """
  if axis_name is not None:
    points = jax.lax.all_gather(points, axis_name, tiled=True)
  return kmeans.kmeans(rng, jax.lax.stop_gradient(points), num_clusters=num_clusters,
                       num_iters=num_iters, seeding=seeding)


def init_gmvq_state(config: ml_collections.ConfigDict) -> vq.ReplaceState | None:
  """GM-VQ's non-gradient state: the disuse counters when `recenter_after` > 0, else None."""
  q = config.quantizer
  return vq.init_replace_state(q.num_codes) if q.get("recenter_after", 0) else None


def gmvq_after_step(config: ml_collections.ConfigDict, params: Any, state: Any, zh: Array,
                    indices: Array, step: Array, rng: Array, *,
                    axis_name: Any = None) -> tuple[Any, Any, dict[str, Array]]:
  """GM-VQ's codebook remedies after the optimizer step of step `step` (0-based).

  Args:
    params: the parameters after the optimizer update.
    state: `init_gmvq_state` or its successor.
    zh: (N, L) this device's proxy latents of the step.
    indices: (N,) the sampled codes.
    step: the int32 step that was just taken.
    rng: a key identical on every device.
    axis_name: the named batch axis.

  Returns:
    `(params, state, metrics)`, identical on every device.
  """
  q = config.quantizer
  codebook, extra = params["codebook"], {}
  zh = jax.lax.stop_gradient(zh.astype(jnp.float32))
  if q.get("kmeans_init_step", 0):
    kmeans_rng, rng = jax.random.split(rng)
    rerun = functools.partial(global_kmeans, kmeans_rng, zh, num_clusters=q.num_codes,
                              num_iters=q.kmeans_iters, seeding=q.kmeans_seeding,
                              axis_name=axis_name)
    codebook = jax.lax.cond(step + 1 == q.kmeans_init_step, lambda c: rerun(), lambda c: c,
                            codebook)
  if q.get("recenter_after", 0):
    codebook, state, moved = vq.replace_dead_codes(
        codebook, state, zh, indices, rng, replace_after=q.recenter_after, axis_name=axis_name)
    extra["codes_recentred"] = moved.astype(jnp.float32)
  return dict(params, codebook=codebook), state, extra


def check(config: ml_collections.ConfigDict) -> list[tuple[str, Any, str]]:
  """Problems with the k-means and remedy fields as (field, value, what is allowed)."""
  q, problems = config.quantizer, []
  if "kmeans_init" not in q:
    return problems
  if not isinstance(q.kmeans_init, bool):
    problems.append(("quantizer.kmeans_init", q.kmeans_init, "must be True or False"))
  elif q.kmeans_init and not supports_kmeans(config):
    problems.append(("quantizer.kmeans_init", q.kmeans_init,
                     f"must be False for {config.method!r}: its encoder does not emit vectors in"
                     " the codebook's space, so there is nothing to cluster"))
  if q.get("kmeans_seeding") not in kmeans.SEEDINGS:
    problems.append(("quantizer.kmeans_seeding", q.get("kmeans_seeding"),
                     f"must be one of {', '.join(map(repr, kmeans.SEEDINGS))}"))
  for field, minimum in (("kmeans_iters", 0), ("kmeans_batches", 1), ("kmeans_init_step", 0),
                         ("recenter_after", 0)):
    if field not in q and field in ("kmeans_init_step", "recenter_after"):
      continue  # GM-VQ only.
    value = q.get(field)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
      problems.append((f"quantizer.{field}", value, f"must be an integer >= {minimum}"))
  step = q.get("kmeans_init_step", 0)
  if isinstance(step, int) and step >= config.num_steps:
    problems.append(("quantizer.kmeans_init_step", step,
                     f"must be smaller than num_steps={config.num_steps} (0: only at init)"))
  return problems

