"""k-means initialisation of a codebook from encoder outputs, for any quantizer that has one.

`kmeans_init` (a quantizer field of every method whose encoder emits vectors
in its codebook's space: GM-VQ, the VQ-VAE family, SQ-VAE) replaces the
random codebook by k-means of encoder outputs before the first step, as the
GM-VQ paper does for every model it compares (Sec. 5.1). The quantizer's
`encoder_points` and `set_codebook` say where those vectors and the codebook
are.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import ml_collections
import numpy as np

from gmvq_jax import methods
from gmvq_jax.quantizers import interface
from gmvq_jax.quantizers import kmeans

Array = jax.Array


def supports_kmeans(config: ml_collections.ConfigDict) -> bool:
  """Whether the method's codebook can start from k-means of encoder outputs."""
  return methods.make_quantizer(config).set_codebook is not None


def _encoder_points(model: Any, variables: Any, images: Array) -> Array:
  """Encoder vectors (N, L) in the codebook's space; BatchNorm on batch statistics, discarded."""
  out, _ = model.apply(variables, images, True, method=model.encode, mutable=["batch_stats"])
  return model.quantizer.encoder_points(out)


def init_params(config: ml_collections.ConfigDict, model: Any, variables: Any, dataset: Any,
                rng: Array) -> Any:
  """`variables['params']` with the codebook set to k-means of encoder outputs.

  The points are the encoder outputs of the first `kmeans_batches` training
  batches at initialisation, as the quantizer maps them into its codebook's
  space (l2-normalised for VQ+l2; the codebook through the inverse of the
  identity-initialised affine map for VQ+affine). Runs on the default
  device, so every parallelism starts from the same codebook.
  """
  q = config.quantizer
  params = variables["params"]
  images = np.concatenate(
      [dataset.train_batch(i, config.batch_size) for i in range(q.kmeans_batches)])
  points = jax.jit(functools.partial(_encoder_points, model))(variables, images)
  logging.info("k-means (%s seeding, %d iterations) of %d encoder vectors into %d codes.",
               q.kmeans_seeding, q.kmeans_iters, points.shape[0], q.num_codes)
  centers = kmeans.kmeans(rng, points, num_clusters=q.num_codes, num_iters=q.kmeans_iters,
                          seeding=q.kmeans_seeding)
  name = model.quantizer.params_name
  return dict(params, **{name: model.quantizer.set_codebook(params[name], centers)})


def check(config: ml_collections.ConfigDict) -> list[tuple[str, Any, str]]:
  """Problems with the k-means fields as (field, value, what is allowed)."""
  q = config.quantizer
  if "kmeans_init" not in q:
    return []
  problems = interface.need_bool(q, "kmeans_init")
  if not problems and q.kmeans_init and not supports_kmeans(config):
    problems.append(("quantizer.kmeans_init", q.kmeans_init,
                     f"must be False for {config.method!r}: its encoder does not emit vectors in"
                     " the codebook's space, so there is nothing to cluster"))
  return (problems + interface.need_choice(q, "kmeans_seeding", kmeans.SEEDINGS)
          + interface.need_int(q, "kmeans_iters", 0) + interface.need_int(q, "kmeans_batches", 1))

