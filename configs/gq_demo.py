"""GQ (a Gaussian VAE under the Target Divergence Constraint) on the embedded photographs.

`python -m launch.train --config=configs/gq_demo.py --workdir=DIR`, then
`python -m launch.quantize --workdir=DIR` for the offline conversion to a
VQ-VAE (sample the N(0, I) codebook, quantize the posterior means).
32x32 crops -> 8x8 grid of c = 16 channels in 2 tokens of m = 8, K = 2^12:
128 tokens x 12 bits per image, 1.5 bits per pixel.
"""

import ml_collections

from configs import base
from gmvq_jax import methods


def gq_quantizer() -> ml_collections.ConfigDict:
  """GQ fields (docs/algorithms.md, "GQ"): c latent channels in tokens of m, K = 2^log2_codebook_size."""
  q = methods.quantizer_config("gq")
  q.latent_dim = 16  # c
  q.group_size = 8  # m: c / m tokens per latent position.
  q.log2_codebook_size = 12  # TDC target T = log2 K bits per token.
  return q


def get_config(variant: str | None = None):
  config = base.get_config()
  config.method = "gq"
  config.quantizer = gq_quantizer()
  base.cpu_demo(config)
  if variant == "smoke":
    base.shrink_for_smoke(config)
    config.quantizer.latent_dim = 8
    config.quantizer.group_size = 4
    config.quantizer.log2_codebook_size = 6
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gq_demo; known: 'smoke'.")
  return config
