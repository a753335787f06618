"""VQ-VAE and its heuristic variants: +l2, +replace, +affine, +OPT (docs/algorithms.md, "Baselines").

Pure, jit-able functions on flattened `(N, L)` latents and a `(C, L)`
codebook; the baselines of the GM-VQ paper's Table 1. No training-loop code lives here.

Loss normalisation: both loss terms are the MEAN OVER ALL N * L ELEMENTS of the
squared difference (i.e. the per-vector squared norm averaged over vectors and
divided by L), as in the reference VQ-VAE implementations (Sonnet / Haiku
`VectorQuantizer`, taming-transformers). The per-vector-sum convention would
only rescale `commitment` and the learning rate by L.

Huh et al. 2023 ("Straightening Out the Straight-Through Estimator") is not
among the project's papers; the affine reparameterisation and the alternating
(OPT) update follow the description in docs/algorithms.md, "Baselines":
  * +affine: effective codebook `M = raw * scale + shift`, with `scale`, `shift`
    (L,) shared by all codes and learnt by gradient with the codebook loss.
  * +OPT: after the gradient step, each used code moves to the mean of the
    encoder vectors assigned to it over the global batch (`codebook_update`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gmvq_jax import metrics
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import interface

Array = jax.Array

NORM_EPS = 1e-12  # Floor on ||x||^2 in l2 normalisation (an all-zero vector stays finite).
_HIGHEST = jax.lax.Precision.HIGHEST  # One-hot products pick rows exactly in float32.


def l2_normalize(x: Array) -> Array:
  """x / ||x|| along the last axis, in float32; all-zero rows stay zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), NORM_EPS))


def init_affine(dim: int) -> dict[str, Array]:
  """Identity affine reparameterisation: {'scale': ones (L,), 'shift': zeros (L,)} float32."""
  return dict(scale=jnp.ones((dim,), jnp.float32), shift=jnp.zeros((dim,), jnp.float32))


def effective_codebook(codebook: Array, affine: dict[str, Array] | None = None) -> Array:
  """The codebook the encoder vectors are matched to: `raw * scale + shift`.

  Args:
    codebook: (C, L) raw codebook.
    affine: None (plain VQ) or the dict of `init_affine`: `scale`, `shift` (L,),
      shared by every code.

  Returns:
    (C, L) float32 effective codebook.
  """
  codebook = codebook.astype(jnp.float32)
  if affine is None:
    return codebook
  return codebook * affine["scale"].astype(jnp.float32) + affine["shift"].astype(jnp.float32)


def _raw_from_effective(target: Array, affine: dict[str, Array] | None) -> Array:
  """The raw codeword whose effective codeword is `target`: (target - shift) / scale."""
  if affine is None:
    return target
  scale = affine["scale"].astype(jnp.float32)
  shift = affine["shift"].astype(jnp.float32)
  return (target - shift) / scale


def quantize(
    codebook: Array,
    z: Array,
    *,
    l2: bool,
    affine: dict[str, Array] | None = None,
    commitment: float,
    train: bool = True,
    rng: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """VQ-VAE forward pass: nearest codeword with a straight-through gradient.

  `c = argmin_c ||z - M_c||^2` and the output `z + sg(z_q - z)`, computed as
  `sg(z_q) + (z - sg(z))` so that its forward value is exactly the codeword
  and the decoder's gradient reaches z (identity) but not the codebook.
  Losses (element means, see the module docstring):
    codebook_loss   = mean (sg(z) - z_q)^2   (gradient to the codebook / affine)
    commitment_loss = mean (z - sg(z_q))^2   (gradient to the encoder)
    loss = codebook_loss + commitment * commitment_loss

  Args:
    codebook: (C, L) raw codebook (the effective one when `affine` is None).
    z: (N, L) encoder outputs, any float dtype; the math is float32.
    l2: l2-normalise z and the codewords before matching (+l2); the
      normalised vectors are then the output and enter the losses.
    affine: None, or `{'scale', 'shift'}` (L,) for +affine: codes are matched
      against `effective_codebook(codebook, affine)` (normalised after the
      affine map when `l2`).
    commitment: weight of the commitment loss.
    train: with False the output is the codeword itself, without the
      straight-through path to z; the forward value is the same.
    rng: unused (VQ is deterministic); accepted for the shared quantizer
      interface.

  Returns:
    `(z_q, aux)`: `z_q` (N, L) float32; `aux` holds `indices` (N,) int32,
    `codes` (N, C) float32 one-hot, `code_vectors` (N, L) the chosen
    (effective, normalised when `l2`) codewords, differentiable w.r.t. the
    codebook, and the float32 scalars `codebook_loss`, `commitment_loss`,
    `loss`.
  """
  del rng
  z = z.astype(jnp.float32)
  codewords = effective_codebook(codebook, affine)
  if l2:
    z = l2_normalize(z)
    codewords = l2_normalize(codewords)
  num_codes = codewords.shape[0]
  distances = common.squared_distances(jax.lax.stop_gradient(z), jax.lax.stop_gradient(codewords))
  indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)
  codes = jax.nn.one_hot(indices, num_codes, dtype=jnp.float32)
  code_vectors = jnp.dot(codes, codewords, precision=_HIGHEST)  # (N, L), the chosen M_c
  codebook_loss = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - code_vectors))
  commitment_loss = jnp.mean(jnp.square(z - jax.lax.stop_gradient(code_vectors)))
  hard = jax.lax.stop_gradient(code_vectors)
  # z + sg(z_q - z), parenthesised so that z - sg(z) is exactly 0 forward.
  z_q = hard + (z - jax.lax.stop_gradient(z)) if train else hard
  aux = dict(
      indices=indices,
      codes=codes,
      code_vectors=code_vectors,
      codebook_loss=codebook_loss,
      commitment_loss=commitment_loss,
      loss=codebook_loss + commitment * commitment_loss,
  )
  return z_q, aux


def _global_sums(z: Array, indices: Array, num_codes: int, axis_name: Any) -> tuple[Array, Array]:
  """Per-code sums (C, L) and counts (C,) of z over the global batch."""
  codes = jax.nn.one_hot(indices, num_codes, dtype=jnp.float32)  # (N, C)
  sums = jnp.dot(codes.T, z, precision=_HIGHEST)  # (C, L)
  counts = jnp.sum(codes, axis=0)
  return common.psum(sums, axis_name), common.psum(counts, axis_name)


def codebook_update(
    codebook: Array,
    z: Array,
    indices: Array,
    *,
    l2: bool,
    affine: dict[str, Array] | None = None,
    axis_name: Any = None,
) -> Array:
  """Alternating (OPT) codebook step: each used code moves to its cluster mean.

  With the encoder fixed, the codebook loss is minimised by putting each
  code at the mean of the (stop-gradient) encoder vectors assigned to it; the
  means are over the GLOBAL batch (sums and counts psum-ed over
  `axis_name`), so every device computes the same codebook. Unused codes
  stay where they are.

  With `affine`, the RAW codebook is updated so that the EFFECTIVE codebook
  hits the means: raw = (mean - shift) / scale (scale must be nonzero; the
  affine parameters themselves are left to the gradient step). With `l2`, the
  means are of the l2-normalised vectors (the space codes are matched in;
  only their direction matters, since codewords are normalised when used).

  Args:
    codebook: (C, L) raw codebook.
    z: (N, L) this device's encoder outputs.
    indices: (N,) int codes assigned to z (`aux['indices']` of `quantize`).
    l2: average l2-normalised encoder vectors (for the +l2 variant).
    affine: None, or the `{'scale', 'shift'}` of `quantize`.
    axis_name: the named batch axis, or None on one device.

  Returns:
    (C, L) float32 raw codebook, identical on every device.
  """
  codebook = codebook.astype(jnp.float32)
  z = jax.lax.stop_gradient(z.astype(jnp.float32))
  if l2:
    z = l2_normalize(z)
  sums, counts = _global_sums(z, indices, codebook.shape[0], axis_name)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  return jnp.where(counts[:, None] > 0, _raw_from_effective(means, affine), codebook)


class ReplaceState(NamedTuple):
  """Dead-code counters for +replace.

  Attributes:
    steps_unused: (C,) int32, consecutive steps (global batches) in which each
      code was chosen by no vector.
  """

  steps_unused: Array


def init_replace_state(num_codes: int) -> ReplaceState:
  """All counters at zero."""
  return ReplaceState(steps_unused=jnp.zeros((num_codes,), jnp.int32))


def replace_dead_codes(
    codebook: Array,
    state: ReplaceState,
    z: Array,
    indices: Array,
    rng: Array,
    *,
    replace_after: int,
    affine: dict[str, Array] | None = None,
    axis_name: Any = None,
) -> tuple[Array, ReplaceState, Array]:
  """+replace: re-initialises codes unused for `replace_after` steps from the batch.

  Code usage is counted over the GLOBAL batch. A code whose counter (after
  this step) reaches `replace_after` becomes a random encoder vector of the
  current global batch: z is all-gathered over `axis_name` (in global row
  order), and the rows are drawn with `rng`, which must be the same key on
  every device, so every device writes the same codebook and the result does
  not depend on how the batch is split. Distinct rows are drawn when the
  global batch has at least C vectors. Counters of used and of replaced codes
  restart at 0.

  Args:
    codebook: (C, L) raw codebook.
    state: the `ReplaceState` of the previous step.
    z: (N, L) this device's encoder outputs (stop-gradient is applied).
    indices: (N,) int codes assigned to z by `quantize`.
    rng: typed key, identical on every device.
    replace_after: steps of disuse before a code is replaced (>= 1).
    affine: None, or the `{'scale', 'shift'}` of `quantize`: the raw code is
      set to (z - shift) / scale so that the effective code is the vector z.
    axis_name: the named batch axis, or None on one device.

  Returns:
    `(codebook, state, num_replaced)`: (C, L) float32 raw codebook, the new
    `ReplaceState`, and the int32 scalar number of codes replaced.
  """
  if replace_after < 1:
    raise ValueError(f"replace_after={replace_after}; must be >= 1.")
  codebook = codebook.astype(jnp.float32)
  num_codes = codebook.shape[0]
  z = jax.lax.stop_gradient(z.astype(jnp.float32))
  counts = common.psum(jnp.sum(jax.nn.one_hot(indices, num_codes, dtype=jnp.float32), 0),
                       axis_name)
  steps_unused = jnp.where(counts > 0, 0, state.steps_unused + 1).astype(jnp.int32)
  dead = steps_unused >= replace_after
  if axis_name is not None:
    z = jax.lax.all_gather(z, axis_name, tiled=True)  # (N_global, L), global row order
  num_rows = z.shape[0]
  rows = jax.random.choice(rng, num_rows, (num_codes,), replace=num_rows < num_codes)
  # A one-hot product rather than z[rows]: safe on a batch-sharded z (STYLE.md).
  candidates = jnp.dot(jax.nn.one_hot(rows, num_rows, dtype=jnp.float32), z, precision=_HIGHEST)
  new_codebook = jnp.where(dead[:, None], _raw_from_effective(candidates, affine), codebook)
  new_state = ReplaceState(steps_unused=jnp.where(dead, 0, steps_unused).astype(jnp.int32))
  return new_codebook, new_state, jnp.sum(dead).astype(jnp.int32)


def usage(indices: Array, num_codes: int, axis_name: Any = None) -> dict[str, Array]:
  """Code statistics of the global batch.

  Args:
    indices: (N,) int codes of this device's vectors.
    num_codes: C.
    axis_name: the named batch axis, or None on one device.

  Returns:
    float32: `perplexity` exp(H) of the global-batch code histogram (in
    [1, C]), `code_usage` the fraction of the C codes used at least once, and
    `code_counts` (C,) the histogram itself.
  """
  counts = jnp.sum(jax.nn.one_hot(indices, num_codes, dtype=jnp.float32), axis=0)
  counts = common.psum(counts, axis_name)
  return dict(
      perplexity=metrics.hard_perplexity(counts),
      code_usage=metrics.code_usage(counts),
      code_counts=counts,
  )


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.KMeansConfig):
  """VQ-VAE's fields and defaults (the registry's variants override the flags)."""

  commitment: float = 0.25
  l2: bool = False
  affine: bool = False
  opt: bool = False
  replace: bool = False
  replace_after: int = 100  # Steps of disuse before a code is re-initialised.


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  del num_steps
  problems = interface.codebook_fields(q)
  problems += interface.need_number(q, "commitment", 0.0)
  problems += interface.need_int(q, "replace_after", 1)
  for flag in ("l2", "affine", "opt", "replace"):
    problems += interface.need_bool(q, flag)
  return problems


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """VQ-VAE (+l2, +affine, +OPT, +replace, as `q` asks) as a `Quantizer`."""
  del num_steps

  def init_params(rng):
    # uniform(-1/C, 1/C): the VQ-VAE codebook init of Sonnet and taming-transformers.
    bound = 1.0 / q.num_codes
    params = dict(codebook=jax.random.uniform(rng, (q.num_codes, q.latent_dim), jnp.float32,
                                              -bound, bound))
    if q.affine:
      params["affine"] = init_affine(q.latent_dim)
    return params

  def apply(params, z, *, rng, temperature, train):
    del rng, temperature
    return quantize(params["codebook"], z, l2=q.l2, affine=params.get("affine"),
                    commitment=q.commitment, train=train)

  def after_step(params, state, z, indices, rng):
    extra = {}
    if not (q.opt or q.replace):
      return params, state, extra
    params = dict(params)
    affine = params.get("affine")
    if q.opt:
      params["codebook"] = codebook_update(params["codebook"], z, indices, l2=q.l2,
                                           affine=affine, axis_name=axis_name)
    if q.replace:
      params["codebook"], state, replaced = replace_dead_codes(
          params["codebook"], state, z, indices, rng, replace_after=q.replace_after,
          affine=affine, axis_name=axis_name)
      extra["codes_replaced"] = replaced.astype(jnp.float32)
    return params, state, extra

  def codewords(params):  # What `quantize` matches to: normalised under +l2.
    effective = effective_codebook(params["codebook"], params.get("affine"))
    return l2_normalize(effective) if q.l2 else effective

  return interface.code_quantizer(
      quantize=apply, encoder_width=q.latent_dim, codebook_size=q.num_codes,
      init_params=init_params,
      init_state=lambda: init_replace_state(q.num_codes) if q.replace else None,
      after_step=after_step,
      encoder_points=lambda z: l2_normalize(interface.flat(z)) if q.l2 else interface.flat(z),
      set_codebook=lambda params, centers: dict(
          params, codebook=_raw_from_effective(centers, params.get("affine"))),
      detokenize_flat=lambda params, indices: codewords(params)[indices],
      axis_name=axis_name)
