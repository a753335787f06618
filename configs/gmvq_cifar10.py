"""GM-VQ on CIFAR10, the paper's setup (GM-VQ paper, Sec. 5.1), for GPU/TPU.

Batch 256, 100 epochs, AdamW peak lr 1e-2 with 10 warm-up epochs from 0.2x
peak then cosine decay; C = 1024, L = 64; 32x32 -> 8x8 latents.
Needs the TFDS cifar10 dataset prepared as ArrayRecord under config.data_dir.
"""

from configs import base


def get_config(variant: str | None = None):
  config = base.get_config()
  config.dataset = "cifar10"
  config.image_size = 32
  config.batch_size = 256
  config.eval_batch_size = 500
  config.optimizer.peak_lr = 1e-2
  config.model.num_res_blocks = 2
  base.paper_schedule(config, train_examples=50_000)
  if variant == "smoke":
    base.shrink_for_smoke(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_cifar10; known: 'smoke'.")
  return config
