"""GM-VQ on crops of the photographs scikit-image ships: the CPU demo.

`python -m launch.train --config=configs/gmvq_demo.py --workdir=DIR`; the
`:smoke` variant (`--config=configs/gmvq_demo.py:smoke`) runs in seconds.
"""

from configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  base.cpu_demo(config)
  # "GM-VQ + Entropy" (a larger KL weight beta, Yan et al. 2024, Sec. 5.1)
  # with the registry's gamma (tuned with beta = 1 on validation data).
  config.quantizer.beta = 10.0
  if variant == "smoke":
    base.shrink_for_smoke(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_demo; known: 'smoke'.")
  return config
