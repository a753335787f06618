"""Stranded GM-VQ codes: k-means at init against three remedies, on validation data.

k-means of the untrained encoder's outputs places codewords where the
encoder's outputs no longer are once it trains; such codes get q(c|x) ~ 0
for every vector and the ALBO's KL gradient cannot bring them back. This
ablation trains GM-VQ (configs/gmvq_demo.py's data and network, the given
gamma and beta) with:

  init        k-means of the first batch's encoder outputs (the paper's init)
  batches     k-means of `--kmeans_batches` batches at init
  warmup      k-means again on the global batch at step `--warmup_step`
  recenter    codes that no vector chose for `--recenter_after` steps move
              onto random encoder vectors of the batch

several seeds each, and reports validation MSE, hard-code perplexity, code
usage and the share of reachable codes (q(c|x) > 1e-6 for some vector),
with the reachable share over training. The variant of lowest mean
validation MSE wins.

  python -m experiments.dead_codes --gamma=G --output_dir=experiments/results/dead_codes

Runs are kept as runs/<variant>_seed<s>.json (resumable; several processes
with the same flags share them). Writes dead_codes.png and dead_codes.json.
"""

from __future__ import annotations

import functools

from absl import app
from absl import flags
import numpy as np

from configs import gmvq_demo
from experiments import common

NAME = "dead_codes"
PLOTTED = dict(mse="validation MSE", hard_perplexity="validation hard-code perplexity",
               code_usage="validation fraction of codes used",
               reachable_codes="validation share of reachable codes")

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where the runs, dead_codes.png and dead_codes.json go.")
_GAMMA = flags.DEFINE_float("gamma", None, "GM-VQ's gamma (e.g. gamma_sweep's choice).")
_BETA = flags.DEFINE_float("beta", 1.0, "GM-VQ's beta.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every variant.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 500, "Training steps of every run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Training batch of every run.")
_KMEANS_BATCHES = flags.DEFINE_integer("kmeans_batches", 4, "Batches clustered by 'batches'.")
_WARMUP_STEP = flags.DEFINE_integer("warmup_step", 0,
                                    "The step of 'warmup's k-means; 0: a tenth of num_steps.")
_RECENTER_AFTER = flags.DEFINE_integer("recenter_after", 20, "Steps of disuse for 'recenter'.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds: gmvq_demo:smoke, one seed.")
flags.mark_flag_as_required("gamma")


def variants(*, kmeans_batches: int, warmup_step: int, recenter_after: int) -> dict[str, dict]:
  """variant name -> the quantizer fields it sets."""
  return dict(init={}, batches=dict(kmeans_batches=kmeans_batches),
              warmup=dict(kmeans_init_step=warmup_step),
              recenter=dict(recenter_after=recenter_after))


def run_config(fields: dict, seed: int, *, gamma: float, beta: float, num_steps: int,
               batch_size: int, smoke: bool):
  """The demo config on the ablation's budget with a variant's fields."""
  config = common.budget_config(gmvq_demo, num_steps=num_steps, batch_size=batch_size,
                                smoke=smoke)
  config.quantizer.gamma = gamma
  config.quantizer.beta = beta
  config.quantizer.recenter_after = 0  # Every remedy off unless the variant sets it.
  config.quantizer.update(fields)
  config.seed = seed
  return config


def reachable_curve(records: list[dict], label: str) -> tuple[list[int], np.ndarray, np.ndarray]:
  """(steps, mean, std) over seeds of the training batches' reachable share."""
  runs = [r["history"] for r in records if r["label"] == label]
  steps = [h["step"] for h in runs[0]]
  values = np.array([[h["batch_reachable_codes"] for h in history] for history in runs])
  return steps, values.mean(0), values.std(0)


def _curve_json(records: list[dict], label: str) -> dict:
  steps, mean, std = reachable_curve(records, label)
  return dict(steps=list(steps), mean=mean.tolist(), std=std.tolist())


def plot(records: list[dict], summary: dict):
  labels = list(summary)
  figure, _ = common.new_figure()
  figure.clear()
  figure.set_size_inches(4.0 * (len(PLOTTED) + 1) / 1.4, 3.6)
  axes = figure.subplots(1, len(PLOTTED) + 1)
  for axis, (metric, name) in zip(axes, PLOTTED.items()):
    means = [summary[label][metric]["mean"] for label in labels]
    stds = [summary[label][metric]["std"] for label in labels]
    axis.errorbar(range(len(labels)), means, yerr=stds, fmt="o", capsize=3)
    axis.set_xticks(range(len(labels)), labels, fontsize=8)
    axis.set_title(name, fontsize=9)
  for label in labels:
    steps, mean, std = reachable_curve(records, label)
    axes[-1].plot(steps, mean, label=label)
    axes[-1].fill_between(steps, mean - std, mean + std, alpha=0.2)
  axes[-1].set_xlabel("step")
  axes[-1].set_title("reachable share, training batches", fontsize=9)
  axes[-1].legend(fontsize=7)
  figure.suptitle("GM-VQ stranded codes: mean and std over seeds", fontsize=10)
  figure.tight_layout()
  return figure


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clock = common.Stopwatch()
  seeds = [int(s) for s in _SEEDS.value][:1 if _SMOKE.value else None]
  budget = dict(gamma=_GAMMA.value, beta=_BETA.value, num_steps=_NUM_STEPS.value,
                batch_size=_BATCH_SIZE.value, smoke=_SMOKE.value)
  num_steps = common.budget_config(gmvq_demo, num_steps=_NUM_STEPS.value,
                                   batch_size=_BATCH_SIZE.value, smoke=_SMOKE.value).num_steps
  warmup_step = _WARMUP_STEP.value or max(1, num_steps // 10)
  fields = variants(kmeans_batches=_KMEANS_BATCHES.value, warmup_step=warmup_step,
                    recenter_after=_RECENTER_AFTER.value)
  runs = [(label, seed, functools.partial(run_config, fields[label], seed, **budget))
          for label in fields for seed in seeds]
  records = common.run_claimed(_OUTPUT_DIR.value, runs)
  summary = common.summarize_splits(records, "val")
  winner = min(summary, key=lambda label: summary[label]["mse"]["mean"])
  png = common.save_figure(plot(records, summary), _OUTPUT_DIR.value, NAME)
  payload = dict(
      experiment="GM-VQ dead-code remedies, chosen on the validation split",
      command=common.command_line(),
      smoke=_SMOKE.value,
      chosen=dict(variant=winner, fields=fields[winner]),
      rule="lowest mean validation MSE",
      settings=dict(variants=fields, seeds=seeds, **budget),
      summary=dict(val=summary, test=common.summarize_splits(records, "test")),
      runs=[{k: v for k, v in r.items() if k != "history"} for r in records],
      reachable_over_training={label: _curve_json(records, label) for label in fields},
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(_OUTPUT_DIR.value, NAME, payload)
  print(f"Chosen: {winner} {fields[winner]}. Wrote {png} and {path} in {clock.seconds():.0f}s.")


if __name__ == "__main__":
  app.run(main)
