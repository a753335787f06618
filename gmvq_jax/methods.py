"""The method registry: every quantizer of the comparison, its defaults and where they come from.

`config.method` names one of `NAMES`; `quantizer_config(name)` gives the
`config.quantizer` fields with that method's documented defaults. GM-VQ and
GQ have their own code paths in train_lib; the baselines (VQ-VAE and its
variants, SQ-VAE, Gumbel-VQVAE, FSQ, LFQ, BSQ) share the `BaselineAutoencoder`
and the loss, temperature and post-step updates defined here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from gmvq_jax import metrics as metrics_lib
from gmvq_jax.quantizers import bsq
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import fsq
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import gumbel_vq
from gmvq_jax.quantizers import lfq
from gmvq_jax.quantizers import sqvae
from gmvq_jax.quantizers import vq

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the comparison.

  Attributes:
    name: the `config.method` value.
    family: the code path: 'gmvq', 'gq', or a baseline quantizer module
      ('vq', 'sqvae', 'gumbel_vqvae', 'fsq', 'lfq', 'bsq').
    description: what the method is, in a line.
    source: where its defaults come from (paper and section).
    overrides: `config.quantizer` fields that differ from the family's defaults.
  """

  name: str
  family: str
  description: str
  source: str
  overrides: tuple[tuple[str, Any], ...] = ()


_HUH = "Huh et al. 2023, 'Straightening Out the Straight-Through Estimator' (paper 001, Table 1)"
_METHODS = (
    Method("vqvae", "vq", "VQ-VAE: nearest codeword, straight-through, commitment 0.25",
           "van den Oord et al. 2017; ALGORITHMS.md §3"),
    Method("vqvae_l2", "vq", "VQ-VAE with l2-normalised encoder vectors and codewords",
           "Yu et al. 2022 (ViT-VQGAN, Sec. 3.2); paper 001, Table 1", (("l2", True),)),
    Method("vqvae_replace", "vq", "VQ-VAE re-initialising codes unused for replace_after steps",
           "Dhariwal et al. 2020 (Jukebox, Sec. 3); paper 001, Table 1", (("replace", True),)),
    Method("vqvae_l2_replace", "vq", "VQ-VAE with l2 normalisation and dead-code replacement",
           "paper 001, Table 1", (("l2", True), ("replace", True))),
    Method("vqvae_affine", "vq", "VQ-VAE with a shared affine reparameterisation of the codebook",
           _HUH, (("affine", True),)),
    Method("vqvae_opt", "vq", "VQ-VAE with the alternating (cluster-mean) codebook update",
           _HUH, (("opt", True),)),
    Method("vqvae_affine_opt", "vq", "VQ-VAE with affine reparameterisation and alternating update",
           _HUH, (("affine", True), ("opt", True))),
    Method("sqvae", "sqvae", "Gaussian SQ-VAE: stochastic quantization, learned variance",
           "Takida et al. 2022 (Sec. 3, official code's gaussian_1 defaults)"),
    Method("gumbel_vqvae", "gumbel_vqvae", "Encoder logits over C codes, Gumbel-softmax, KL to uniform",
           "Jang et al. 2017; paper 001 Sec. 5.1 (annealing 2.0 -> 0.1); KL weight of DALL-E/taming"),
    Method("gmvq", "gmvq", "GM-VQ with the ALBO objective, beta = 1",
           "paper 001, Sec. 3.3 and 5.1; ALGORITHMS.md §1"),
    Method("gmvq_entropy", "gmvq", "GM-VQ + Entropy: the same model with beta = 10",
           "paper 001, Sec. 5.1 (beta > 1); beta = 10 measured on the demo (README)",
           (("beta", 10.0),)),
    Method("gq", "gq", "Gaussian VAE under TDC, converted offline to a VQ-VAE",
           "paper 003; ALGORITHMS.md §2"),
    Method("fsq", "fsq", "Finite scalar quantization, levels (8, 5, 5, 5): 1000 codes",
           "Mentzer et al. 2023 (Sec. 4.1, the ~2^10 level set)"),
    Method("lfq", "lfq", "Lookup-free quantization: sign bits, entropy penalty",
           "Yu et al. 2023 (MAGVIT-v2, Sec. 3.1)"),
    Method("bsq", "bsq", "Binary spherical quantization: sign bits on the unit sphere",
           "Zhao et al. 2024 (BSQ, Sec. 3)"),
)
METHODS = {method.name: method for method in _METHODS}
NAMES = tuple(METHODS)
BASELINE_FAMILIES = ("vq", "sqvae", "gumbel_vqvae", "fsq", "lfq", "bsq")


def get(name: str) -> Method:
  """The registered method `name`; a ValueError listing the known names otherwise."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known methods: {', '.join(NAMES)}.")
  return METHODS[name]


def family(config: ml_collections.ConfigDict) -> str:
  """The family of config.method: 'gmvq', 'gq', or a baseline family (BASELINE_FAMILIES)."""
  return get(config.method).family


# ------------------------------------------------------------------ defaults


def _kmeans_fields(init: bool) -> dict[str, Any]:
  """k-means initialisation of a codebook from encoder outputs (gmvq_jax.codebook_init)."""
  return dict(kmeans_init=init, kmeans_seeding="kmeans++", kmeans_iters=20, kmeans_batches=1)


def _family_defaults(name: str, num_codes: int, latent_dim: int) -> dict[str, Any]:
  """The `config.quantizer` fields of one family, before the method's overrides."""
  if name == "gmvq":
    return dict(num_codes=num_codes, latent_dim=latent_dim, beta=1.0, gamma=0.048,
                sigma_z2=0.5,  # beta = 2 sigma_z^2 in the paper's derivation (App. A.3).
                objective="albo", latent_reg="sampled", tau_0=2.0, tau_min=0.1,
                anneal_fraction=0.8, **_kmeans_fields(True),
                kmeans_init_step=0,  # > 0: k-means again on the global batch of that step.
                recenter_after=0)  # > 0: codes unchosen this many steps move onto the data.
  if name == "gq":
    # c = m = 8 with K = 2^log2(C): one token of log2 C bits per latent
    # position, the rate of a C-code VQ on the same grid.
    return dict(latent_channels=8, group_size=8,
                log2_codebook_size=max(1, int(round(math.log2(num_codes)))), tolerance=0.5,
                factor=1.01, kl_weight=0.1, codebook_seed=0, codebook_sampler="sobol", beta=1.0,
                ste=False)
  if name == "vq":
    return dict(num_codes=num_codes, latent_dim=latent_dim, commitment=0.25, l2=False,
                affine=False, opt=False, replace=False,
                replace_after=100,  # Steps of disuse before a code is re-initialised.
                **_kmeans_fields(False))
  if name == "sqvae":
    return dict(num_codes=num_codes, latent_dim=latent_dim,
                log_variance_init=sqvae.LOG_VARIANCE_INIT, temperature_decay=1e-5,
                **_kmeans_fields(False))
  if name == "gumbel_vqvae":
    return dict(num_codes=num_codes, latent_dim=latent_dim, kl_weight=5e-4, hard=True,
                tau_0=2.0, tau_min=0.1, anneal_fraction=0.8)
  if name == "fsq":
    return dict(levels=(8, 5, 5, 5))
  if name == "lfq":
    return dict(num_bits=max(1, int(round(math.log2(num_codes)))), entropy_weight=0.1,
                diversity_weight=1.0, commitment_weight=0.25, inv_temperature=100.0)
  if name == "bsq":
    return dict(num_bits=max(1, int(round(math.log2(num_codes)))), entropy_weight=0.1,
                inv_temperature=1.0, commitment_weight=0.0)
  raise ValueError(f"Unknown family {name!r}.")


def quantizer_config(name: str, *, num_codes: int = 1024,
                     latent_dim: int = 64) -> ml_collections.ConfigDict:
  """The `config.quantizer` of method `name` with its documented defaults.

  Args:
    name: one of NAMES.
    num_codes: C for codebook methods; sets the bits per token of the others
      (LFQ/BSQ bits, GQ's log2 K) so that every method spends ~log2 C bits
      per latent position.
    latent_dim: L, the codeword width of codebook methods.
  """
  method = get(name)
  fields = _family_defaults(method.family, num_codes, latent_dim)
  fields.update(method.overrides)
  return ml_collections.ConfigDict(fields)


def codebook_size(config: ml_collections.ConfigDict) -> int:
  """Distinct tokens one latent position can take (K for GQ: per token)."""
  q, kind = config.quantizer, family(config)
  if kind == "fsq":
    return fsq.codebook_size(q.levels)
  if kind in ("lfq", "bsq"):
    return 2**q.num_bits
  if kind == "gq":
    return 2**q.log2_codebook_size
  return q.num_codes


def tokens_per_position(config: ml_collections.ConfigDict) -> int:
  """Tokens per latent position: c / m for GQ (groups of m channels), else 1."""
  q = config.quantizer
  return q.latent_channels // q.group_size if family(config) == "gq" else 1


def bits_per_image(config: ml_collections.ConfigDict) -> float:
  """Bits of one image's tokens: positions x tokens per position x log2(codebook size)."""
  side = config.image_size // 2 ** len(config.model.channels)
  return side * side * tokens_per_position(config) * math.log2(codebook_size(config))


# --------------------------------------------------------- baseline quantizers


def encoder_width(config: ml_collections.ConfigDict) -> int:
  """Channels the encoder emits per position for a baseline."""
  q, kind = config.quantizer, family(config)
  if kind == "gumbel_vqvae":
    return q.num_codes  # Logits over the codes.
  return latent_width(config)


def latent_width(config: ml_collections.ConfigDict) -> int:
  """Channels the decoder reads per position for a baseline."""
  q, kind = config.quantizer, family(config)
  if kind == "fsq":
    return len(q.levels)
  if kind in ("lfq", "bsq"):
    return q.num_bits
  return q.latent_dim


def init_quantizer_params(config: ml_collections.ConfigDict) -> Callable[[Array], Any] | None:
  """`rng -> params` of a baseline's quantizer, or None when it has none (FSQ, LFQ, BSQ)."""
  q, kind = config.quantizer, family(config)
  if kind == "vq":
    def init_vq(rng):
      # uniform(-1/C, 1/C): the VQ-VAE codebook init of Sonnet and taming-transformers.
      bound = 1.0 / q.num_codes
      params = dict(codebook=jax.random.uniform(rng, (q.num_codes, q.latent_dim), jnp.float32,
                                                -bound, bound))
      if q.affine:
        params["affine"] = vq.init_affine(q.latent_dim)
      return params
    return init_vq
  if kind == "sqvae":
    return lambda rng: sqvae.init_params(rng, q.num_codes, q.latent_dim,
                                         log_variance_init=q.log_variance_init)
  if kind == "gumbel_vqvae":
    return lambda rng: dict(codebook=jax.random.normal(rng, (q.num_codes, q.latent_dim),
                                                       jnp.float32))
  return None


def make_quantize(config: ml_collections.ConfigDict, axis_name: Any = None) -> Callable:
  """`(params, z, *, rng, temperature, train) -> (z_q, aux)` for a baseline.

  `z` is (N, encoder_width) float32; `z_q` is (N, latent_width); `aux` holds
  at least `indices` (N,) int32 and the weighted quantizer `loss`.
  """
  q, kind = config.quantizer, family(config)

  def quantize(params, z, *, rng, temperature, train):
    if kind == "vq":
      return vq.quantize(params["codebook"], z, l2=q.l2, affine=params.get("affine"),
                         commitment=q.commitment, train=train)
    if kind == "sqvae":
      return sqvae.quantize(params, z, rng=rng, temperature=temperature, axis_name=axis_name,
                            train=train)
    if kind == "gumbel_vqvae":
      return gumbel_vq.quantize(params["codebook"], z, rng=rng, temperature=temperature,
                                hard=q.hard, kl_weight=q.kl_weight, axis_name=axis_name,
                                train=train)
    if kind == "fsq":
      return fsq.quantize(None, z, levels=tuple(q.levels), train=train)
    if kind == "lfq":
      return lfq.quantize(None, z, entropy_weight=q.entropy_weight,
                          diversity_weight=q.diversity_weight,
                          commitment_weight=q.commitment_weight,
                          inv_temperature=q.inv_temperature, axis_name=axis_name, train=train)
    if kind == "bsq":
      return bsq.quantize(None, z, entropy_weight=q.entropy_weight,
                          commitment_weight=q.commitment_weight,
                          inv_temperature=q.inv_temperature, axis_name=axis_name, train=train)
    raise ValueError(f"{config.method!r} is not a baseline.")

  return quantize


def temperature(config: ml_collections.ConfigDict, step: Array | int) -> Array:
  """The Gumbel-softmax temperature of a stochastic method at `step` (1.0 for the others)."""
  q, kind = config.quantizer, family(config)
  if kind in ("gmvq", "gumbel_vqvae"):
    return gmvq.temperature_schedule(step, total_steps=config.num_steps, tau_0=q.tau_0,
                                     tau_min=q.tau_min, anneal_fraction=q.anneal_fraction)
  if kind == "sqvae":
    return sqvae.temperature_schedule(step, decay=q.temperature_decay)
  return jnp.float32(1.0)


def baseline_loss(config: ml_collections.ConfigDict, images: Array, reconstructions: Array,
                  aux: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
  """recon + the quantizer's own loss; SQ-VAE's Gaussian objective instead.

  SQ-VAE (Takida et al. 2022) learns the decoder variance too; with it set to
  its optimum, the MSE the per-image negative log-likelihood is
  (D/2) log MSE + const. Its objective per image is that plus the latent
  terms summed over the h*w positions; we divide it by D (pixel-channels per
  image) so that its scale is comparable with the other methods' losses.

  Returns:
    `(loss, terms)`: float32 scalars `loss`, `recon` (MSE) and
    `quantizer_loss`.
  """
  recon = metrics_lib.mse(images, reconstructions)
  quantizer_loss = aux["loss"]
  if family(config) == "sqvae":
    values_per_image = math.prod(images.shape[1:])
    positions = aux["indices"].shape[0] // images.shape[0]
    loss = 0.5 * jnp.log(recon) + positions * quantizer_loss / values_per_image
  else:
    loss = recon + quantizer_loss
  return loss, dict(loss=loss, recon=recon, quantizer_loss=quantizer_loss)


def initial_state(config: ml_collections.ConfigDict) -> Any:
  """Non-gradient state of a baseline: the dead-code counters of +replace, else None."""
  q = config.quantizer
  if family(config) == "vq" and q.replace:
    return vq.init_replace_state(q.num_codes)
  return None


def after_step(config: ml_collections.ConfigDict, params: Any, state: Any, z: Array,
               indices: Array, rng: Array, *, axis_name: Any = None):
  """In-place codebook updates after the optimizer step (+OPT, +replace).

  Args:
    params: the model parameters after the optimizer update.
    state: `initial_state` or its successor.
    z: (N, L) this device's encoder vectors of the step.
    indices: (N,) their codes.
    rng: a key identical on every device (replacement rows).
    axis_name: the named batch axis.

  Returns:
    `(params, state, metrics)`, identical on every device.
  """
  q = config.quantizer
  extra = {}
  if family(config) != "vq" or not (q.opt or q.replace):
    return params, state, extra
  quantizer = dict(params["quantizer"])
  affine = quantizer.get("affine")
  if q.opt:
    quantizer["codebook"] = vq.codebook_update(quantizer["codebook"], z, indices, l2=q.l2,
                                               affine=affine, axis_name=axis_name)
  if q.replace:
    quantizer["codebook"], state, replaced = vq.replace_dead_codes(
        quantizer["codebook"], state, z, indices, rng, replace_after=q.replace_after,
        affine=affine, axis_name=axis_name)
    extra["codes_replaced"] = replaced.astype(jnp.float32)
  return dict(params, quantizer=quantizer), state, extra


def code_histogram(indices: Array, num_codes: int, weights: Array | None = None,
                   axis_name: Any = None) -> Array:
  """(C,) float32 counts of `indices` over the global batch, by scatter-add.

  No (N, C) one-hot: FSQ/LFQ/BSQ codebooks can have 2^16 entries.
  """
  weights = jnp.ones(indices.shape, jnp.float32) if weights is None else weights
  counts = jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(weights.reshape(-1))
  return common.psum(counts, axis_name)


def check_baseline(config: ml_collections.ConfigDict) -> list[tuple[str, Any, str]]:
  """Problems with a baseline's quantizer fields as (field, value, what is allowed)."""
  q, kind, problems = config.quantizer, family(config), []

  def need_int(field, minimum, why=""):
    value = q.get(field)
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
      problems.append((f"quantizer.{field}", value, f"must be an integer >= {minimum}{why}"))

  def need_number(field, minimum, strict=False):
    value = q.get(field)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value > minimum if strict else value >= minimum):
      problems.append((f"quantizer.{field}", value,
                       f"must be a number {'>' if strict else '>='} {minimum}"))

  if kind in ("vq", "sqvae", "gumbel_vqvae"):
    need_int("num_codes", 2, " (a codebook needs at least two codes)")
    need_int("latent_dim", 1)
  if kind == "vq":
    need_number("commitment", 0.0)
    need_int("replace_after", 1)
    for flag in ("l2", "affine", "opt", "replace"):
      if not isinstance(q.get(flag), bool):
        problems.append((f"quantizer.{flag}", q.get(flag), "must be True or False"))
  if kind == "gumbel_vqvae":
    need_number("kl_weight", 0.0)
    need_number("tau_min", 0.0, strict=True)
    need_number("tau_0", 0.0, strict=True)
  if kind == "sqvae":
    need_number("temperature_decay", 0.0)
  if kind == "fsq":
    levels = q.get("levels")
    if not (isinstance(levels, (tuple, list)) and levels
            and all(isinstance(l, int) and l >= 2 for l in levels)):
      problems.append(("quantizer.levels", levels, "must be a tuple of integers >= 2, e.g."
                       " (8, 5, 5, 5)"))
  if kind in ("lfq", "bsq"):
    need_int("num_bits", 1)
    need_number("entropy_weight", 0.0)
    need_number("commitment_weight", 0.0)
    need_number("inv_temperature", 0.0, strict=True)
    if kind == "lfq" and q.get("entropy_weight") and isinstance(q.get("num_bits"), int) \
        and q.num_bits > lfq.MAX_ENTROPY_BITS:
      problems.append(("quantizer.num_bits", q.num_bits,
                       f"must be <= {lfq.MAX_ENTROPY_BITS} with an entropy penalty (LFQ forms"
                       " the full 2^L distribution); set entropy_weight=0 or use bsq"))
  if kind == "bsq" and isinstance(q.get("num_bits"), int) and q.num_bits > 31:
    problems.append(("quantizer.num_bits", q.num_bits, "must be <= 31 (int32 indices)"))
  return problems


def describe() -> str:
  """A Markdown table of the registry: name, family, what it is, source."""
  rows = ["| method | family | what | defaults from |", "| --- | --- | --- | --- |"]
  for method in _METHODS:
    rows.append(f"| `{method.name}` | {method.family} | {method.description} | {method.source} |")
  return "\n".join(rows)
