"""The comparison on CIFAR10 with the GM-VQ paper's setup (its Table 1), for GPU/TPU.

Every method of `gmvq_jax.methods` with the GM-VQ CIFAR10 network and
schedule (configs/gmvq_cifar10.py: batch 256, 100 epochs, AdamW peak lr
1e-2), C = 1024, L = 64. GM-VQ uses beta = 1 with the registry's gamma,
tuned on the demo data; the paper tunes gamma on its own data
(experiments/gamma_sweep.py; set --config.quantizers.gmvq.gamma to its best).
Needs TFDS cifar10 prepared as ArrayRecord under train.data_dir.
Protocol fields as in configs/compare_demo.py: seeds (0, 1, 2), lr_grid
(0.5, 1.0, 2.0) x peak lr 1e-2, method_steps empty; a method costs
len(lr_grid) + len(seeds) - 1 = 5 runs of 100 epochs.
"""

from configs import compare_demo
from configs import gmvq_cifar10


def get_config(variant: str | None = None):
  config = compare_demo.compare_config(gmvq_cifar10.get_config(), num_codes=1024,
                                       latent_dim=64)
  if variant == "smoke":
    compare_demo.shrink_for_smoke(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of compare_cifar10; known: 'smoke'.")
  return config
