"""GQ on ImageNet 256x256 in the f8 layout of the GQ paper, for GPU/TPU.

`--config=configs/gq_imagenet.py:BPP` with BPP one of 0.25 (default), 0.5,
1.0: a 32x32 grid (f8: three stride-2 stages) of c = 16 channels, K = 2^16
codewords, and m = 16 / 8 / 4 channels per token, i.e. 1 / 2 / 4 tokens of
16 bits per position (the GQ paper's rate settings). `:smoke` shrinks the
0.25 layout to seconds.

The networks are this library's ResNet encoder/decoder with f8 widths, not
the paper's Stable-Diffusion-style VAE with perceptual and adversarial
losses; expect lower PSNR than its table. Needs TFDS imagenet2012 prepared
as ArrayRecord under config.data_dir (the ILSVRC2012 tars are a manual
download); evaluation uses its 50,000-image validation split.
"""

from configs import base
from configs import gq_demo

# bpp -> m, with c = 16 and K = 2^16 on the 32x32 grid of a 256x256 image.
GROUP_SIZE_FOR_BPP = {"0.25": 16, "0.5": 8, "1.0": 4}
TRAIN_EXAMPLES = 1_281_167


def get_config(variant: str | None = None):
  config = base.get_config()
  config.method = "gq"
  config.dataset = "imagenet2012"
  config.image_size = 256
  config.batch_size = 256
  config.eval_batch_size = 250
  config.model.channels = (128, 256, 512)  # f8
  config.model.num_res_blocks = 4
  config.optimizer.peak_lr = 1e-4
  config.optimizer.warmup_steps = 5_000
  config.num_steps = 20 * (TRAIN_EXAMPLES // config.batch_size)  # 20 epochs.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5_000
  config.eval_every_steps = 25_000
  config.num_eval_examples = 10_000
  config.quantizer = gq_demo.gq_quantizer()
  config.quantizer.latent_dim = 16
  config.quantizer.log2_codebook_size = 16
  rate = "0.25" if variant in (None, "smoke") else variant
  if rate not in GROUP_SIZE_FOR_BPP:
    raise ValueError(f"Unknown variant {variant!r} of gq_imagenet; known: "
                     f"{', '.join(GROUP_SIZE_FOR_BPP)} (bits per pixel) and 'smoke'.")
  config.quantizer.group_size = GROUP_SIZE_FOR_BPP[rate]
  if variant == "smoke":
    base.shrink_for_smoke(config)
    config.image_size = 32  # Resized on read; keeps the smoke run small.
    config.model.channels = (8, 8, 16)  # Still f8: a 4x4 grid.
    config.quantizer.log2_codebook_size = 8
  return config
