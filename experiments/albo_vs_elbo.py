"""The ALBO objective against the ELBO on the same budget (GM-VQ paper, Sec. 3.3).

GM-VQ on the embedded photographs (configs/gmvq_demo.py), trained with
`quantizer.objective='albo'` (KL of the aggregated posterior qbar to uniform)
and `'elbo'` (mean KL of each q(c|x) to uniform), at each beta and seed, then
scored on the held-out test crops: MSE, the paper's perplexity, the
hard-code perplexity, code usage and the mean entropy of q(c|x). The paper's
argument: the ELBO's KL term raises the entropy of every q(c|x), which biases
the Gumbel-softmax gradients (experiments/gumbel_bias.py); ALBO raises only
the entropy of qbar.

  python -m experiments.albo_vs_elbo --output_dir=experiments/results/albo_vs_elbo

Writes albo_vs_elbo.png and albo_vs_elbo.json into --output_dir.
"""

from __future__ import annotations

from absl import app
from absl import flags

from configs import gmvq_demo
from experiments import common
from gmvq_jax.quantizers import gmvq

NAME = "albo_vs_elbo"
METRICS = common.GMVQ_METRICS

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where albo_vs_elbo.png and albo_vs_elbo.json go.")
_OBJECTIVES = flags.DEFINE_list("objectives", list(gmvq.OBJECTIVES), "Objectives compared.")
_BETAS = flags.DEFINE_list("betas", ["1", "100"],
                           "KL weights: 1 is the paper's GM-VQ, 100 the registry's GM-VQ + Entropy.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds per (objective, beta).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 250, "Training steps of every run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Training batch of every run.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds: gmvq_demo:smoke, one beta, one seed.")


def variants(objectives: list[str], betas: list[float], *, num_steps: int, batch_size: int,
             smoke: bool) -> dict:
  """'<objective> b=<beta>' -> the demo config with that objective and beta."""
  configs = {}
  for beta in betas:
    for objective in objectives:
      config = common.budget_config(gmvq_demo, num_steps=num_steps, batch_size=batch_size,
                                    smoke=smoke)
      config.quantizer.objective = objective
      config.quantizer.beta = beta
      configs[f"{objective.upper()}\nb={beta:g}"] = config
  return configs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clock = common.Stopwatch()
  betas = [float(b) for b in _BETAS.value]
  seeds = [int(s) for s in _SEEDS.value]
  if _SMOKE.value:
    betas, seeds = betas[:1], seeds[:1]
  configs = variants(_OBJECTIVES.value, betas, num_steps=_NUM_STEPS.value,
                     batch_size=_BATCH_SIZE.value, smoke=_SMOKE.value)
  records = common.sweep(configs, seeds, log_every=max(1, _NUM_STEPS.value // 10),
                         log=lambda line: print(line.replace("\n", " "), flush=True))
  figure = common.plot_sweep(records, METRICS, xlabel="objective, beta",
                             title="GM-VQ trained with the ALBO objective against the ELBO,"
                                   " same budget")
  png = common.save_figure(figure, _OUTPUT_DIR.value, NAME)
  for record in records:
    config = configs[record["label"]]
    record.update(label=record["label"].replace("\n", " "), objective=config.quantizer.objective,
                  beta=config.quantizer.beta)
  payload = dict(
      experiment="ALBO vs ELBO objective on the same budget (GM-VQ paper, Sec. 3.3), embedded"
                 " photographs",
      command=common.command_line(),
      smoke=_SMOKE.value,
      settings=dict(objectives=_OBJECTIVES.value, betas=betas, seeds=seeds,
                    config=common.as_jsonable(next(iter(configs.values())))),
      summary=common.summarize_sweep(records, METRICS),
      runs=records,
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(_OUTPUT_DIR.value, NAME, payload)
  print(f"Wrote {png} and {path} in {clock.seconds():.0f}s.")


if __name__ == "__main__":
  app.run(main)
