"""Every method of the comparison on the embedded photographs, one after another, on a CPU.

`python -m launch.compare --config=configs/compare_demo.py --workdir=DIR`
trains every method of `gmvq_jax.methods` with the same network, data and
steps (the GM-VQ demo's setup, `STEPS` steps a run) and the same tuning
budget, and writes DIR/table.md, table.csv, tuning.md, tuning.csv,
curves.png and scatter.png (see `gmvq_jax.comparison`). Every method spends
~10 bits per latent position (C = 1024 codes, 2^10 for LFQ/BSQ/GQ, 1000
for FSQ). `:smoke` runs each method for a few steps, for tests.

The fields of a compare config (`compare_config`):
  methods: the method names, in table order.
  train: the training config every method shares (its `seed` is replaced by
    each of `seeds`, its `optimizer.peak_lr` scaled by each of `lr_grid`).
  quantizers: {method: quantizer fields}.
  seeds: the seeds every method is trained with, default (0, 1, 2); the
    table reports test mean ± std over them; seeds[0] also tunes the lr.
  lr_grid: multipliers of train.optimizer.peak_lr, default (0.5, 1.0, 2.0),
    the same for every method: seeds[0] is trained at each and the one with
    the lowest final val MSE is used for every seed.
  method_steps: {method: num_steps} overriding train.num_steps for the
    methods named (which must be in `methods`), default empty; from the
    command line --config.method_steps="{'gq': 1200}".
A method costs len(lr_grid) + len(seeds) - 1 training runs: 5 by default.
`:smoke` uses seeds (0, 1) and lr_grid (0.5, 1.0).
"""

import ml_collections

from configs import base
from configs import gmvq_demo
from gmvq_jax import methods

STEPS = 500  # Per run; one run of each of the 15 methods took 44 min on 2 CPU cores.
# The methods of the headline comparison train twice as long (method_steps).
HEADLINE = ("vqvae", "vqvae_l2", "vqvae_l2_replace", "fsq", "gq", "gmvq", "gmvq_entropy")


def compare_config(train: ml_collections.ConfigDict, *, num_codes: int,
                   latent_dim: int) -> ml_collections.ConfigDict:
  """A compare config over all registered methods, sharing `train`'s non-quantizer fields.

  Every method is sized by `methods.quantizer_config(name, num_codes=...,
  latent_dim=...)`: C codes of width L, or ~log2 C bits per position.

  Also sets the protocol's defaults: seeds (0, 1, 2), lr_grid (0.5, 1.0, 2.0)
  and an empty method_steps (see the module docstring).
  """
  config = ml_collections.ConfigDict()
  config.methods = methods.NAMES
  config.train = train
  config.quantizers = ml_collections.ConfigDict(
      {name: methods.quantizer_config(name, num_codes=num_codes, latent_dim=latent_dim)
       for name in methods.NAMES})
  # Every codebook that lives in the encoder's space starts from k-means of
  # encoder outputs, as in the GM-VQ paper's comparison (Sec. 5.1).
  # Gumbel-VQVAE has none: its encoder emits logits over the codes.
  for fields in config.quantizers.values():
    if "kmeans_init" in fields:
      fields.kmeans_init = True
  config.seeds = (0, 1, 2)
  config.lr_grid = (0.5, 1.0, 2.0)
  config.method_steps = ml_collections.ConfigDict()
  return config


def get_config(variant: str | None = None):
  train = gmvq_demo.get_config()  # The demo's data, network and optimizer.
  train.num_steps = STEPS
  train.optimizer.warmup_steps = 50
  train.checkpoint_every_steps = STEPS
  train.log_every_steps = 25
  config = compare_config(train, num_codes=1024, latent_dim=64)
  config.method_steps = ml_collections.ConfigDict({name: 2 * STEPS for name in HEADLINE})
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
  """Tiny networks, 16x16 images, 2 steps, 16 small codes per method, 2 seeds, 2 lrs."""
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
  small.quantizers.gq.latent_dim = 4
  small.quantizers.gq.group_size = 4
  config.quantizers = small.quantizers
  config.seeds = (0, 1)
  config.lr_grid = (0.5, 1.0)
  config.method_steps = ml_collections.ConfigDict()
