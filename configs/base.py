"""Fields shared by every training config; each experiment file overrides some.

Not a config itself: `configs/<experiment>.py` files call `base.get_config()`.
"""

import ml_collections

from gmvq_jax import methods


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Which field names this config uses (gmvq_jax.config_version.CURRENT);
  # runs saved with an older version's renamed fields are refused.
  config.config_version = 2
  config.method = "gmvq"
  config.seed = 0

  # Data: 'embedded' (photographs shipped with scikit-image), 'cifar10', 'celeb_a', 'imagenet2012'.
  config.dataset = "embedded"
  config.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir.
  config.image_size = 32
  config.num_eval_examples = ml_collections.config_dict.placeholder(int)  # None: dataset default.

  # Threads reading the next training batches at once; the batches are the
  # same for any number (raise it when reading images is slower than a step).
  config.input_workers = 1
  config.batch_size = 256  # Global, over all devices.
  config.eval_batch_size = 256
  config.num_steps = 1000
  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: evaluate only at the end.
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.parallelism = "shard_map"  # 'jit' (one device), 'pmap' or 'shard_map' (multi-process too).
  # A step whose loss or gradients are NaN/inf is never applied; 'stop' then
  # ends the run naming the step and term, 'skip' goes on and counts it.
  config.nonfinite = "stop"
  # JAX PRNG implementation of every random draw (init, k-means, Gumbel and
  # Gaussian noise): 'threefry2x32', or 'philox4x32', which made the CIFAR10
  # GM-VQ step 7-10% faster on CPU (docs/results.md) but which JAX compiles
  # only with parallelism='jit' (one device).
  config.prng_impl = "threefry2x32"
  # How the networks evaluate their convolutions: 'xla' (lax.conv_general_dilated),
  # 'matmul' (1x1 and strided ones as matrix products, faster on XLA:CPU; see
  # gmvq_jax/models/conv.py), or 'auto': 'matmul' for float32 on CPU, 'xla'
  # otherwise. The same convolution either way, up to float rounding.
  config.conv_impl = "auto"
  # Precision of the networks' computation: 'float32' or 'bfloat16'. Parameters,
  # optimizer state, the quantizers' math and the losses stay float32.
  config.dtype = "float32"

  config.model = ml_collections.ConfigDict()
  config.model.channels = (32, 64)
  config.model.num_res_blocks = 2

  # GM-VQ's fields and defaults (gmvq_jax/methods.py documents every method's).
  config.quantizer = methods.quantizer_config("gmvq", num_codes=1024, latent_dim=64)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.peak_lr = 1e-3
  config.optimizer.init_lr_fraction = 0.2  # Warm-up starts at 0.2 x peak.
  config.optimizer.end_lr_fraction = 0.0
  config.optimizer.warmup_steps = 100
  config.optimizer.weight_decay = 1e-4
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip = 0.0  # 0 disables clipping.
  return config


def paper_schedule(config: ml_collections.ConfigDict, *, train_examples: int,
                   epochs: int = 100, warmup_epochs: int = 10) -> None:
  """The paper's schedule (GM-VQ paper, Sec. 5.1), counted in epochs of `train_examples`."""
  steps_per_epoch = train_examples // config.batch_size
  config.num_steps = epochs * steps_per_epoch
  config.optimizer.warmup_steps = warmup_epochs * steps_per_epoch
  config.log_every_steps = 100
  config.checkpoint_every_steps = steps_per_epoch
  config.eval_every_steps = warmup_epochs * steps_per_epoch


def cpu_demo(config: ml_collections.ConfigDict) -> None:
  """The demos' budget: 32x32 crops of the embedded photographs, 2000 steps of 64 on a CPU."""
  config.dataset = "embedded"
  config.image_size = 32
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_steps = 2000
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.optimizer.peak_lr = 2e-3
  config.optimizer.warmup_steps = 200


def shrink_for_smoke(config: ml_collections.ConfigDict) -> None:
  """A `:smoke` variant: tiny networks, a few steps, a global batch of 8.

  8 divides by 1, 2 and 4 devices, so the variant runs on any of them.
  """
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_eval_examples = 32
  config.num_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.eval_every_steps = 0
  config.optimizer.warmup_steps = 2
  config.model.channels = (8, 16)
  config.model.num_res_blocks = 1
  if "num_codes" in config.quantizer:  # A codebook of 64 codes of width 8.
    config.quantizer.num_codes = 64
    config.quantizer.latent_dim = 8
