"""GM-VQ on CIFAR10, the paper's setup (paper 001, Sec. 5.1), for GPU/TPU.

Batch 256, 100 epochs, AdamW peak lr 1e-2 with 10 warm-up epochs from 0.2x
peak then cosine decay; C = 1024, L = 64; 32x32 -> 8x8 latents.
Needs the TFDS cifar10 dataset prepared as ArrayRecord under config.data_dir.
"""

from configs import base

TRAIN_EXAMPLES = 50_000


def get_config(variant: str | None = None):
  config = base.get_config()
  config.dataset = "cifar10"
  config.image_size = 32
  config.batch_size = 256
  config.eval_batch_size = 500
  steps_per_epoch = TRAIN_EXAMPLES // config.batch_size
  config.num_steps = 100 * steps_per_epoch
  config.optimizer.warmup_steps = 10 * steps_per_epoch
  config.optimizer.peak_lr = 1e-2
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2 * steps_per_epoch
  config.eval_every_steps = 10 * steps_per_epoch
  config.model.num_res_blocks = 2
  if variant == "smoke":
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_eval_examples = 16
    config.num_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    config.optimizer.warmup_steps = 1
    config.model.channels = (8, 16)
    config.quantizer.num_codes = 32
    config.quantizer.latent_dim = 8
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_cifar10; known: 'smoke'.")
  return config
