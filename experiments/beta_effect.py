"""The effect of the entropy weight beta on MSE and perplexity (GM-VQ paper, Fig. 4).

GM-VQ on the embedded photographs (configs/gmvq_demo.py: C = 1024 codes of
dimension 64 on an 8x8 grid of 32x32 crops, the registry's gamma), one short run per
(beta, seed) on the same budget, scored on the held-out test crops: MSE, the
paper's perplexity exp(H(qbar)) per evaluation batch, the hard-code
perplexity over the whole test set, the fraction of codes in use, and the
mean entropy of q(c|x). The paper (CIFAR10, full schedule) finds both MSE
falling and perplexity rising as beta grows.

  python -m experiments.beta_effect --output_dir=experiments/results/beta_effect

Writes beta_effect.png and beta_effect.json into --output_dir.
"""

from __future__ import annotations

from absl import app
from absl import flags

from configs import gmvq_demo
from experiments import common

NAME = "beta_effect"
METRICS = common.GMVQ_METRICS

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where beta_effect.png and beta_effect.json go.")
_BETAS = flags.DEFINE_list("betas", ["1", "10", "100", "1000"],
                          "Entropy weights beta (the gamma sweep's beta stage chose 100).")
_SEEDS = flags.DEFINE_list(
    "seeds", ["0"], "Seeds per beta; several (e.g. 0,1,2) give the spread of Fig. 4's boxes.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 250, "Training steps of every run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Training batch of every run.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds: gmvq_demo:smoke, two betas, one seed.")


def variants(betas: list[float], *, num_steps: int, batch_size: int, smoke: bool) -> dict:
  """'beta=<b>' -> the demo config with that beta, on the given budget."""
  configs = {}
  for beta in betas:
    config = common.budget_config(gmvq_demo, num_steps=num_steps, batch_size=batch_size,
                                  smoke=smoke)
    config.quantizer.beta = beta
    configs[f"{beta:g}"] = config
  return configs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clock = common.Stopwatch()
  betas = [float(b) for b in _BETAS.value]
  seeds = [int(s) for s in _SEEDS.value]
  if _SMOKE.value:
    betas, seeds = betas[:2], seeds[:1]
  configs = variants(betas, num_steps=_NUM_STEPS.value, batch_size=_BATCH_SIZE.value,
                     smoke=_SMOKE.value)
  records = common.sweep(configs, seeds, log_every=max(1, _NUM_STEPS.value // 10))
  figure = common.plot_sweep(records, METRICS, xlabel="beta",
                             title="GM-VQ: entropy weight beta against MSE and codebook use"
                                   " (GM-VQ paper, Fig. 4)")
  png = common.save_figure(figure, _OUTPUT_DIR.value, NAME)
  first = next(iter(configs.values()))
  payload = dict(
      experiment="Effect of beta on MSE and perplexity (GM-VQ paper, Fig. 4), embedded photographs",
      command=common.command_line(),
      smoke=_SMOKE.value,
      settings=dict(betas=betas, seeds=seeds, config=common.as_jsonable(first)),
      summary=common.summarize_sweep(records, METRICS),
      runs=records,
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(_OUTPUT_DIR.value, NAME, payload)
  print(f"Wrote {png} and {path} in {clock.seconds():.0f}s.")


if __name__ == "__main__":
  app.run(main)
