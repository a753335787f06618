"""The method registry: each method's quantizer module and the overrides of its defaults.

`config.method` names one of `NAMES`. A quantizer module (gmvq_jax/quantizers/)
exports `Config` (a frozen dataclass on one of `interface`'s config bases: its
fields and the only home of their defaults, `Config.sized(num_codes,
latent_dim)` those of one size, `Config.renamed` its fields' older names),
`check(q, num_steps)` (problems of its fields) and `make(config, *, num_steps,
axis_name)` (its `interface.Quantizer`). Nothing outside this file and those
modules asks which method a config runs; `build_model` wraps the quantizer
in the autoencoder the config describes.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from types import ModuleType
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gmvq_jax.models import autoencoder
from gmvq_jax.models import conv as conv_lib
from gmvq_jax.quantizers import interface


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the comparison.

  Attributes:
    name: the `config.method` value.
    module: its quantizer module, gmvq_jax/quantizers/<module>.py.
    description: what the method is, in a line.
    source: where its defaults come from (paper and section).
    overrides: `config.quantizer` fields that differ from the module's defaults.
  """

  name: str
  module: str
  description: str
  source: str
  overrides: tuple[tuple[str, Any], ...] = ()

  def quantizer_module(self) -> ModuleType:
    """gmvq_jax.quantizers.<module>: its defaults, check and make."""
    return importlib.import_module(f"gmvq_jax.quantizers.{self.module}")


_HUH = "Huh et al. 2023, 'Straightening Out the Straight-Through Estimator' (GM-VQ paper (arXiv 2410.10180), Table 1)"
_METHODS = (
    Method("vqvae", "vq", "VQ-VAE: nearest codeword, straight-through, commitment 0.25",
           "van den Oord et al. 2017; docs/algorithms.md"),
    Method("vqvae_l2", "vq", "VQ-VAE with l2-normalised encoder vectors and codewords",
           "Yu et al. 2022 (ViT-VQGAN, Sec. 3.2); GM-VQ paper (arXiv 2410.10180), Table 1", (("l2", True),)),
    Method("vqvae_replace", "vq", "VQ-VAE re-initialising codes unused for replace_after steps",
           "Dhariwal et al. 2020 (Jukebox, Sec. 3); GM-VQ paper (arXiv 2410.10180), Table 1", (("replace", True),)),
    Method("vqvae_l2_replace", "vq", "VQ-VAE with l2 normalisation and dead-code replacement",
           "GM-VQ paper (arXiv 2410.10180), Table 1", (("l2", True), ("replace", True))),
    Method("vqvae_affine", "vq", "VQ-VAE with a shared affine reparameterisation of the codebook",
           _HUH, (("affine", True),)),
    Method("vqvae_opt", "vq", "VQ-VAE with the alternating (cluster-mean) codebook update",
           _HUH, (("opt", True),)),
    Method("vqvae_affine_opt", "vq", "VQ-VAE with affine reparameterisation and alternating update",
           _HUH, (("affine", True), ("opt", True))),
    Method("sqvae", "sqvae", "Gaussian SQ-VAE: stochastic quantization, learned variance",
           "Takida et al. 2022 (Sec. 3, official code's gaussian_1 defaults)"),
    Method("gumbel_vqvae", "gumbel_vq",
           "Encoder logits over C codes, Gumbel-softmax, KL to uniform",
           "Jang et al. 2017; GM-VQ paper (arXiv 2410.10180) Sec. 5.1 (annealing 2.0 -> 0.1); KL weight of DALL-E/taming"),
    Method("gmvq", "gmvq", "GM-VQ with the ALBO objective, beta = 1",
           "GM-VQ paper (arXiv 2410.10180), Sec. 3.3 and 5.1; docs/algorithms.md"),
    # beta = 100: experiments/gamma_sweep.py's beta stage (gamma = 0.001, 3 seeds,
    # validation data) -- the lowest validation MSE among the betas that use at
    # least half of the codes (docs/results.md).
    Method("gmvq_entropy", "gmvq", "GM-VQ + Entropy: the same model with beta = 100",
           "GM-VQ paper (arXiv 2410.10180), Sec. 5.1 (beta > 1); beta from experiments/gamma_sweep.py",
           (("beta", 100.0),)),
    Method("gq", "gq", "Gaussian VAE under TDC, converted offline to a VQ-VAE",
           "GQ paper (arXiv 2512.06609); docs/algorithms.md"),
    Method("fsq", "fsq", "Finite scalar quantization, levels (8, 5, 5, 5): 1000 codes",
           "Mentzer et al. 2023 (Sec. 4.1, the ~2^10 level set)"),
    Method("lfq", "lfq", "Lookup-free quantization: sign bits, entropy penalty",
           "Yu et al. 2023 (MAGVIT-v2, Sec. 3.1)"),
    Method("bsq", "bsq", "Binary spherical quantization: sign bits on the unit sphere",
           "Zhao et al. 2024 (BSQ, Sec. 3)"),
    Method("rvq", "rvq", "Residual VQ: S stages of VQ on the residuals", "Zeghidour et al. 2021"),
)
METHODS = {method.name: method for method in _METHODS}
NAMES = tuple(METHODS)


def get(name: str) -> Method:
  """The registered method `name`; a ValueError listing the known names otherwise."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known methods: {', '.join(NAMES)}.")
  return METHODS[name]


def quantizer_config(name: str, *, num_codes: int = 1024,
                     latent_dim: int = 64) -> ml_collections.ConfigDict:
  """The `config.quantizer` of method `name` with its documented defaults.

  Args:
    name: one of NAMES.
    num_codes: C for codebook methods; sets the bits per token of the others
      (LFQ/BSQ bits, GQ's log2 K, FSQ's levels) so that every method spends
      ~log2 C bits per latent position.
    latent_dim: L, the codeword width of codebook methods.
  """
  method = get(name)
  fields = dataclasses.asdict(method.quantizer_module().Config.sized(num_codes, latent_dim))
  fields.update(method.overrides)
  return ml_collections.ConfigDict(fields)


def make_quantizer(config: ml_collections.ConfigDict,
                   axis_name: Any = None) -> interface.Quantizer:
  """The `Quantizer` of a training config (method, quantizer fields, num_steps)."""
  module = get(config.method).quantizer_module()
  return module.make(module.Config(**config.quantizer), num_steps=config.num_steps,
                     axis_name=axis_name)


def build_model(config: ml_collections.ConfigDict, axis_name: Any = None,
                quantizer: interface.Quantizer | None = None) -> nn.Module:
  """The autoencoder a config describes; `axis_name` for cross-device BatchNorm."""
  dtype = compute_dtype(config)
  return autoencoder.Autoencoder(
      quantizer=quantizer or make_quantizer(config, axis_name),
      channels=tuple(config.model.channels), num_res_blocks=config.model.num_res_blocks,
      axis_name=axis_name, dtype=dtype, conv=conv_lib.select(config.get("conv_impl", "xla"), dtype))


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The networks' compute dtype: config.dtype (configs saved before it: model.dtype)."""
  name = config.get("dtype") or config.model.get("dtype") or "float32"
  return jnp.dtype(name)


def check(config: ml_collections.ConfigDict) -> list[interface.Problem]:
  """Problems of config.quantizer as (field, value, what is allowed; None if missing)."""
  module = get(config.method).quantizer_module()
  known = [field.name for field in dataclasses.fields(module.Config)]
  unknown = [name for name in config.quantizer if name not in known]
  if unknown:
    field = unknown[0]
    if field in module.Config.renamed:
      allowed = f"the field is now quantizer.{module.Config.renamed[field]}"
    else:
      allowed = f"not a field of {config.method!r} (its fields: {', '.join(known)})"
    return [(f"quantizer.{field}", config.quantizer[field], allowed)]
  return module.check(config.quantizer, config.num_steps)


def codebook_size(config: ml_collections.ConfigDict) -> int:
  """Distinct values one token can take."""
  return make_quantizer(config).codebook_size


def bits_per_image(config: ml_collections.ConfigDict) -> float:
  """Bits of one image's tokens: positions x tokens per position x log2(codebook size)."""
  quantizer = make_quantizer(config)
  side = config.image_size // 2 ** len(config.model.channels)
  return side * side * quantizer.tokens_per_position * math.log2(quantizer.codebook_size)


def describe() -> str:
  """A Markdown table of the registry: name, quantizer module, what it is, source."""
  rows = ["| method | module | what | defaults from |", "| --- | --- | --- | --- |"]
  for method in _METHODS:
    rows.append(f"| `{method.name}` | {method.module} | {method.description} | {method.source} |")
  return "\n".join(rows)
