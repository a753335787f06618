"""Residual VQ: S stages of nearest-codeword VQ, each on what the stages before left over.

Zeghidour et al. 2021, "SoundStream: An End-to-End Neural Audio Codec"
(arXiv 2107.03312, Sec. 3.3, Algorithm 1): stage s quantizes the residual
r_s = z - (q_1 + ... + q_{s-1}) with its own codebook of C codes, and the
decoder reads q_1 + ... + q_S; a position costs S log2 C bits. Quantizer
dropout (optional) trains each example with only its first n_q ~ U{1..S}
stages, so that fewer stages still decode. Codebooks learn by the VQ-VAE
codebook loss (element means, as gmvq_jax.quantizers.vq), with a commitment
term per stage; the encoder gets the straight-through gradient of the sum.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from gmvq_jax import metrics as metrics_lib
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import interface

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def quantize(codebooks: Array, z: Array, *, commitment: float, active: Array | None = None,
             train: bool = True) -> tuple[Array, dict[str, Array]]:
  """RVQ forward pass.

  Args:
    codebooks: (S, C, L) one codebook per stage.
    z: (N, L) encoder vectors.
    commitment: weight of each stage's commitment loss.
    active: (N, S) float32, 1 where a stage is used (quantizer dropout); None: all.
    train: output `sum + (z - sg(z))` (straight-through), else the sum itself.

  Returns:
    `(z_q, aux)`: z_q (N, L) float32, the sum of the chosen codewords; aux
    holds `stage_indices` (N, S) int32 and the float32 scalar `loss`, the sum
    over stages of codebook_loss + commitment * commitment_loss.
  """
  z = z.astype(jnp.float32)
  num_stages, num_codes, dim = codebooks.shape
  residual, total, loss, indices = z, jnp.zeros_like(z), jnp.float32(0.0), []
  for stage in range(num_stages):
    codebook = codebooks[stage].astype(jnp.float32)
    distances = common.squared_distances(jax.lax.stop_gradient(residual),
                                         jax.lax.stop_gradient(codebook))
    index = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    chosen = jnp.dot(jax.nn.one_hot(index, num_codes, dtype=jnp.float32), codebook,
                     precision=_HIGHEST)
    weight = jnp.ones(z.shape[:1], jnp.float32) if active is None else active[:, stage]
    count = jnp.maximum(jnp.sum(weight) * dim, 1.0)
    masked_mean = lambda x, w=weight, n=count: jnp.sum(w[:, None] * jnp.square(x)) / n
    loss += (masked_mean(jax.lax.stop_gradient(residual) - chosen)
             + commitment * masked_mean(residual - jax.lax.stop_gradient(chosen)))
    hard = jax.lax.stop_gradient(chosen) * weight[:, None]
    total, residual = total + hard, residual - hard
    indices.append(index)
  z_q = total + (z - jax.lax.stop_gradient(z)) if train else total
  return z_q, dict(stage_indices=jnp.stack(indices, axis=-1), loss=loss)


def dropout_mask(rng: Array, vectors_per_example: int, num_stages: int) -> Array:
  """(N, S) float32: each example's first n_q ~ U{1..S} stages, n_q drawn from its first key."""
  example_keys = rng.reshape(-1, vectors_per_example)[:, 0]
  used = jax.vmap(lambda key: jax.random.randint(key, (), 1, num_stages + 1))(example_keys)
  active = (jnp.arange(num_stages)[None, :] < used[:, None]).astype(jnp.float32)
  return jnp.repeat(active, vectors_per_example, axis=0)


@dataclasses.dataclass(frozen=True)
class Config(interface.CodebookConfig):
  """RVQ's fields and defaults; num_codes is per stage."""

  num_stages: int = 2
  commitment: float = 0.25
  dropout: bool = False  # Quantizer dropout.

  @classmethod
  def sized(cls, num_codes: int, latent_dim: int) -> "Config":
    """2 stages of sqrt(num_codes) codes: the log2(num_codes) bits a position of one VQ."""
    return cls(num_codes=2**max(1, int(round(math.log2(num_codes) / 2))), latent_dim=latent_dim)


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  return (interface.codebook_fields(q) + interface.need_int(q, "num_stages", 1)
          + interface.need_number(q, "commitment", 0.0) + interface.need_bool(q, "dropout"))


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """Residual VQ as a `Quantizer`; its tokens are the S stage indices of each position."""
  del num_steps
  stages, codes = q.num_stages, q.num_codes

  def init_params(rng):
    bound = 1.0 / codes  # The VQ-VAE init of each stage's codebook.
    return dict(codebooks=jax.random.uniform(rng, (stages, codes, q.latent_dim), jnp.float32,
                                             -bound, bound))

  def apply(params, state, z, rng, step, train):
    del state, step
    batch, height, width, dim = z.shape
    active = None
    if train and q.dropout:
      active = dropout_mask(rng, height * width, stages)
    z_q, aux = quantize(params["codebooks"], z.reshape(-1, dim), commitment=q.commitment,
                        active=active, train=train)
    # Stage s's codes counted apart from the others': s * C + index, (N S,).
    aux["indices"] = (aux["stage_indices"] + codes * jnp.arange(stages)).reshape(-1)
    return z_q.reshape(batch, height, width, dim), aux

  def loss(params, state, images, reconstructions, z_q, aux):
    value, terms = interface.code_loss(images, reconstructions, aux)
    return value, terms, aux["indices"]

  def update(params, state, indices, step, rng):
    counts = interface.code_histogram(indices, stages * codes, axis_name=axis_name)
    return params, state, interface.code_metrics(counts, jnp.float32(1.0))

  def tokenize(params, z):
    _, aux = apply(params, None, z, None, 0, False)
    return aux["stage_indices"].reshape(z.shape[:-1] + (stages,))

  def detokenize(params, indices):
    codebooks = params["codebooks"].astype(jnp.float32)
    return sum(codebooks[s][indices[..., s]] for s in range(stages))

  return interface.Quantizer(
      encoder_width=q.latent_dim, codebook_size=codes, tokens_per_position=stages,
      params_name="quantizer", init_params=init_params, init_state=interface.no_state,
      apply=apply, loss=loss, update=update,
      eval_stats=lambda images, reconstructions, aux, mask: interface.code_eval_stats(
          images, reconstructions, aux, mask, stages * codes, axis_name),
      combine=interface.CODE_COMBINE, summarize=metrics_lib.summarize_eval,
      progress=interface.CODE_PROGRESS, encoder_points=None, set_codebook=None,
      tokenize=tokenize, detokenize=detokenize)
