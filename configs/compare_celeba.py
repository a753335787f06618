"""The comparison on CelebA 128x128 with the GM-VQ paper's setup (Table 1), for GPU/TPU.

Every method of `gmvq_jax.methods` with the GM-VQ CelebA network and
schedule (configs/gmvq_celeba.py: 6 residual blocks, batch 256, 100 epochs,
AdamW peak lr 1e-4), C = 1024, L = 64. Needs TFDS celeb_a prepared as
ArrayRecord under train.data_dir. Protocol fields as in
configs/compare_demo.py: seeds (0, 1, 2), lr_grid (0.5, 1.0, 2.0) x peak lr
1e-4, method_steps empty; a method costs len(lr_grid) + len(seeds) - 1 = 5
runs of 100 epochs.
"""

from configs import compare_demo
from configs import gmvq_celeba


def get_config(variant: str | None = None):
  config = compare_demo.compare_config(gmvq_celeba.get_config(), num_codes=1024, latent_dim=64)
  if variant == "smoke":
    compare_demo.shrink_for_smoke(config)
    config.train.image_size = 32  # celeb_a is resized on read.
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of compare_celeba; known: 'smoke'.")
  return config
