"""GM-VQ on crops of the photographs scikit-image ships: the CPU demo.

`python -m launch.train --config=configs/gmvq_demo.py --workdir=DIR`; the
`:smoke` variant (`--config=configs/gmvq_demo.py:smoke`) runs in seconds.
"""

from configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  base.cpu_demo(config)
  # The entropy weight of "GM-VQ + Entropy" (beta > 1, paper 001 Sec. 5.1).
  # Measured here (README): beta = 1 ends with 100 codes in use, hard
  # perplexity 51.5, test MSE 10.0e-3; beta = 10 with 409 codes, hard
  # perplexity 241, MSE 11.0e-3. gamma is on the paper's per-image scale
  # (0.48 here is the 0.01 of the earlier per-pixel-mean loss, x 3072 / 64).
  config.quantizer.beta = 10.0
  config.quantizer.gamma = 0.48
  if variant == "smoke":
    base.shrink_for_smoke(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_demo; known: 'smoke'.")
  return config
