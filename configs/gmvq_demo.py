"""GM-VQ on crops of the photographs scikit-image ships: the CPU demo.

`python -m launch.train --config=configs/gmvq_demo.py --workdir=DIR`; the
`:smoke` variant (`--config=configs/gmvq_demo.py:smoke`) runs in seconds.
"""

from configs import base
from gmvq_jax import methods


def get_config(variant: str | None = None):
  config = base.get_config()
  base.cpu_demo(config)
  # "GM-VQ + Entropy" (a larger KL weight beta, GM-VQ paper Sec. 5.1) with the
  # registry's gamma and the registry's gmvq_entropy beta, both chosen on
  # validation data by experiments/gamma_sweep.py.
  config.quantizer.beta = methods.quantizer_config("gmvq_entropy").beta
  if variant == "smoke":
    base.shrink_for_smoke(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_demo; known: 'smoke'.")
  return config
