"""GQ on CIFAR10 for GPU/TPU: the GM-VQ CIFAR10 network and schedule, at GM-VQ's rate.

32x32 -> 8x8 latent grid (f4) of c = 8 channels, one token of m = 8 per
position, K = 2^10: 64 tokens x 10 bits = 640 bits per image (0.625 bpp),
the same rate as GM-VQ's 8x8 codes from C = 1024 (configs/gmvq_cifar10.py),
so the two compare at equal bits. Batch 256, 100 epochs, AdamW peak lr 1e-3.
Needs the TFDS cifar10 dataset prepared as ArrayRecord under config.data_dir.
Convert afterwards with `python -m launch.quantize --workdir=DIR`.
"""

from configs import base
from configs import gq_demo


def get_config(variant: str | None = None):
  config = base.get_config()
  config.method = "gq"
  config.dataset = "cifar10"
  config.image_size = 32
  config.batch_size = 256
  config.eval_batch_size = 500
  config.optimizer.peak_lr = 1e-3
  config.model.num_res_blocks = 2
  config.quantizer = gq_demo.gq_quantizer()
  config.quantizer.latent_dim = 8
  config.quantizer.group_size = 8
  config.quantizer.log2_codebook_size = 10
  base.paper_schedule(config, train_examples=50_000)
  if variant == "smoke":
    base.shrink_for_smoke(config)
    config.quantizer.log2_codebook_size = 6
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of gq_cifar10; known: 'smoke'.")
  return config
