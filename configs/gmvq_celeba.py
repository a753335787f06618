"""GM-VQ on CelebA 128x128, the paper's setup (paper 001, Sec. 5.1), for GPU/TPU.

Batch 256, 100 epochs, AdamW peak lr 1e-4 with 10 warm-up epochs; 6 residual
blocks, 128x128 -> 32x32 latents; C = 1024, L = 64.
Needs the TFDS celeb_a dataset prepared as ArrayRecord under config.data_dir.
"""

from configs import base

TRAIN_EXAMPLES = 162_770


def get_config(variant: str | None = None):
  config = base.get_config()
  config.dataset = "celeb_a"
  config.image_size = 128
  config.batch_size = 256
  config.eval_batch_size = 256
  steps_per_epoch = TRAIN_EXAMPLES // config.batch_size
  config.num_steps = 100 * steps_per_epoch
  config.optimizer.warmup_steps = 10 * steps_per_epoch
  config.optimizer.peak_lr = 1e-4
  config.log_every_steps = 100
  config.checkpoint_every_steps = steps_per_epoch
  config.eval_every_steps = 10 * steps_per_epoch
  config.model.num_res_blocks = 6
  if variant == "smoke":
    config.image_size = 32
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_eval_examples = 16
    config.num_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    config.optimizer.warmup_steps = 1
    config.model.channels = (8, 16)
    config.model.num_res_blocks = 1
    config.quantizer.num_codes = 32
    config.quantizer.latent_dim = 8
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gmvq_celeba; known: 'smoke'.")
  return config
