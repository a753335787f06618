"""GM-VQ on CelebA 128x128, the paper's setup (GM-VQ paper, Sec. 5.1), for GPU/TPU.

Batch 256, 100 epochs, AdamW peak lr 1e-4 with 10 warm-up epochs; 6 residual
blocks, 128x128 -> 32x32 latents; C = 1024, L = 64.
Needs the TFDS celeb_a dataset prepared as ArrayRecord under config.data_dir.
"""

from configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  config.dataset = "celeb_a"
  config.image_size = 128
  config.batch_size = 256
  config.eval_batch_size = 256
  config.optimizer.peak_lr = 1e-4
  config.model.num_res_blocks = 6
  base.paper_schedule(config, train_examples=162_770)
  if variant == "smoke":
    base.shrink_for_smoke(config)
    config.image_size = 32  # celeb_a is resized on read; keeps the smoke run small.
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_celeba; known: 'smoke'.")
  return config
