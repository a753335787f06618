"""Every method of the comparison on the embedded photographs, one after another, on a CPU.

`python -m launch.compare --config=configs/compare_demo.py --workdir=DIR`
trains the 15 methods of `gmvq_jax.methods` with the same network, data,
steps and seed (the GM-VQ demo's setup, `STEPS` steps each) and writes
DIR/table.md, table.csv, curves.png and scatter.png. Every method spends
~10 bits per latent position (C = 1024 codes, 2^10 for LFQ/BSQ/GQ, 1000
for FSQ). `:smoke` runs each method for a few steps, for tests.
"""

import ml_collections

from configs import base
from configs import gmvq_demo
from gmvq_jax import methods

STEPS = 500  # Per method; 15 methods fit in under an hour on 2 CPU cores.


def compare_config(train: ml_collections.ConfigDict, *, num_codes: int = 1024,
                   latent_dim: int = 64) -> ml_collections.ConfigDict:
  """A compare config over all registered methods, sharing `train`'s non-quantizer fields."""
  config = ml_collections.ConfigDict()
  config.methods = methods.NAMES
  config.train = train
  config.quantizers = ml_collections.ConfigDict(
      {name: methods.quantizer_config(name, num_codes=num_codes, latent_dim=latent_dim)
       for name in methods.NAMES})
  return config


def get_config(variant: str | None = None):
  train = gmvq_demo.get_config()  # The demo's data, network and optimizer.
  train.num_steps = STEPS
  train.optimizer.warmup_steps = 50
  train.checkpoint_every_steps = STEPS
  train.log_every_steps = 25
  config = compare_config(train)
  # GM-VQ's demo weights (configs/gmvq_demo.py): gamma = 0.48 for both rows,
  # beta = 1 for GM-VQ and beta = 10 for GM-VQ + Entropy (the registry's).
  config.quantizers.gmvq.gamma = 0.48
  config.quantizers.gmvq_entropy.gamma = 0.48
  # GQ's TDC multiplier starts at 1 and moves 1% a step; with kl_weight 0.1 it
  # needs ~1000 steps to fall to where lam * kl_weight balances the
  # per-image reconstruction sum (~2.5e-6 in the GQ demo), twice this budget.
  # kl_weight 1e-5 starts it near that balance.
  config.quantizers.gq.kl_weight = 1e-5
  if variant == "smoke":
    shrink_for_smoke(config)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r} of compare_demo; known: 'smoke'.")
  return config


def shrink_for_smoke(config: ml_collections.ConfigDict) -> None:
  """Tiny networks, 16x16 images, 2 steps and 16 small codes per method."""
  train = config.train
  base.shrink_for_smoke(train)
  train.image_size = 16
  train.num_steps = 2
  train.log_every_steps = 1
  train.checkpoint_every_steps = 2
  train.optimizer.warmup_steps = 1
  train.num_eval_examples = 8
  train.eval_batch_size = 8
  small = compare_config(train, num_codes=16, latent_dim=4)
  small.quantizers.fsq.levels = (4, 4)
  small.quantizers.gq.latent_channels = 4
  small.quantizers.gq.group_size = 4
  config.quantizers = small.quantizers
