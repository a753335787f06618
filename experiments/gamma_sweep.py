"""Tunes GM-VQ's gamma with beta = 1, then beta at that gamma, on validation data.

The GM-VQ paper (Sec. 5.1) tunes gamma "by fixing beta = 1 and selecting the
best gamma"; "GM-VQ + Entropy" then raises beta. This script does both on
the embedded photographs (configs/gmvq_demo.py's data and network), several
seeds each, and chooses on the VALIDATION split only (crops from a region of
the training photographs that training never sees); test figures are
recorded beside them, never used for a choice.

Stage 1: gamma over `--gammas` with beta = 1; the gamma of lowest mean
validation MSE wins. Stage 2: beta over `--betas` at that gamma; the beta of
lowest mean validation MSE among those whose mean validation code usage is
at least `--min_usage` wins (the highest usage if none reaches it).

  python -m experiments.gamma_sweep --output_dir=experiments/results/gamma_sweep

Every finished run is kept as runs/<stage>_<value>_seed<s>.json in
--output_dir, so a rerun resumes, and several processes started with the same
flags share the runs (each claims a run before training it). Writes
gamma_sweep.png and gamma_sweep.json.
"""

from __future__ import annotations

import functools

from absl import app
from absl import flags
from configs import gmvq_demo
from experiments import common

NAME = "gamma_sweep"
# Validation figures drawn against gamma and beta, with their axis labels.
PLOTTED = dict(mse="validation MSE", hard_perplexity="validation hard-code perplexity",
               code_usage="validation fraction of codes used")

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where the runs, gamma_sweep.png and gamma_sweep.json go.")
_GAMMAS = flags.DEFINE_list("gammas", ["0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03", "0.1"],
                            "Stage 1: gamma values (beta = 1).")
# The KL term weighs gamma * beta per nat and latent position, so at a small
# gamma only a large beta changes the code usage: a wide log grid.
_BETAS = flags.DEFINE_list("betas", ["10", "100", "1000", "10000"],
                           "Stage 2: beta values (GM-VQ + Entropy) at the chosen gamma.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every setting.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 500, "Training steps of every run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Training batch of every run.")
_MIN_USAGE = flags.DEFINE_float("min_usage", 0.5,
                                "Stage 2 prefers betas whose validation code usage reaches this.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Seconds: gmvq_demo:smoke, two values per stage, one seed.")


def run_config(gamma: float, beta: float, seed: int, *, num_steps: int, batch_size: int,
               smoke: bool):
  """The demo config on the sweep's budget with this (gamma, beta, seed)."""
  config = common.budget_config(gmvq_demo, num_steps=num_steps, batch_size=batch_size,
                                smoke=smoke)
  config.quantizer.gamma = gamma
  config.quantizer.beta = beta
  config.quantizer.recenter_after = 0  # The paper's method: k-means at init, no remedy.
  config.seed = seed
  return config


def run_stage(stage: str, values: list[float], seeds: list[int], *, fixed: dict,
              output_dir: str, budget: dict) -> tuple[list[dict], dict]:
  """Every (value, seed) of a stage (resumable, shareable: `common.run_claimed`).

  Returns:
    (records, {value: {split: {metric: {mean, std}}}}).
  """
  runs = []
  for value in values:
    settings = dict(fixed, **{stage: value})
    for seed in seeds:
      runs.append((f"{stage}_{value:g}", seed, functools.partial(
          run_config, settings["gamma"], settings["beta"], seed, **budget)))
  records = common.run_claimed(output_dir, runs)
  summary = {}
  for split in ("val", "test"):
    by_label = common.summarize_splits(records, split)
    for value in values:
      summary.setdefault(value, {})[split] = by_label[f"{stage}_{value:g}"]
  return records, summary


def choose_gamma(summary: dict) -> float:
  """The gamma of lowest mean validation MSE."""
  return min(summary, key=lambda g: summary[g]["val"]["mse"]["mean"])


def choose_beta(summary: dict, min_usage: float) -> float:
  """Lowest mean validation MSE among betas using >= min_usage of the codes; else most usage."""
  usage = {b: summary[b]["val"]["code_usage"]["mean"] for b in summary}
  enough = [b for b in summary if usage[b] >= min_usage]
  if enough:
    return min(enough, key=lambda b: summary[b]["val"]["mse"]["mean"])
  return max(summary, key=usage.get)


def plot(gamma_summary: dict, beta_summary: dict, gamma: float, beta: float):
  """Validation MSE, hard perplexity and code usage (mean +- std over seeds) vs gamma and beta."""
  figure, axes = common.new_figure(len(PLOTTED), figsize=(4.0 * len(PLOTTED), 6.4))
  figure.clear()
  axes = figure.subplots(2, len(PLOTTED))
  for row, (summary, name, chosen) in enumerate(
      ((gamma_summary, "gamma (beta = 1)", gamma), (beta_summary, f"beta (gamma = {gamma:g})",
                                                     beta))):
    xs = sorted(summary)
    for axis, (metric, label) in zip(axes[row], PLOTTED.items()):
      means = [summary[x]["val"][metric]["mean"] for x in xs]
      stds = [summary[x]["val"][metric]["std"] for x in xs]
      axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3)
      axis.axvline(chosen, color="gray", ls=":", lw=1)
      axis.set_xscale("log")
      axis.set_xlabel(name)
      axis.set_title(label, fontsize=10)
  figure.suptitle("GM-VQ on the embedded photographs: mean and std over seeds, validation split",
                  fontsize=11)
  figure.tight_layout()
  return figure


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  clock = common.Stopwatch()
  gammas = [float(g) for g in _GAMMAS.value]
  betas = [float(b) for b in _BETAS.value]
  seeds = [int(s) for s in _SEEDS.value]
  if _SMOKE.value:
    gammas, betas, seeds = gammas[:2], betas[:2], seeds[:1]
  budget = dict(num_steps=_NUM_STEPS.value, batch_size=_BATCH_SIZE.value, smoke=_SMOKE.value)
  output_dir = _OUTPUT_DIR.value
  gamma_records, gamma_summary = run_stage("gamma", gammas, seeds, fixed=dict(beta=1.0),
                                           output_dir=output_dir, budget=budget)
  gamma = choose_gamma(gamma_summary)
  beta_records, beta_summary = run_stage("beta", betas, seeds, fixed=dict(gamma=gamma),
                                         output_dir=output_dir, budget=budget)
  beta = choose_beta(beta_summary, _MIN_USAGE.value)
  png = common.save_figure(plot(gamma_summary, beta_summary, gamma, beta), output_dir, NAME)
  config = run_config(gamma, beta, seeds[0], **budget)
  payload = dict(
      experiment="GM-VQ gamma (beta = 1) then beta, chosen on the validation split",
      command=common.command_line(),
      smoke=_SMOKE.value,
      chosen=dict(gamma=gamma, beta=beta),
      rule=dict(gamma="lowest mean validation MSE",
                beta=f"lowest mean validation MSE with mean validation code usage >="
                     f" {_MIN_USAGE.value:g} (else the highest usage)"),
      settings=dict(gammas=gammas, betas=betas, seeds=seeds, config=common.as_jsonable(config)),
      summary=dict(gamma={f"{g:g}": v for g, v in gamma_summary.items()},
                   beta={f"{b:g}": v for b, v in beta_summary.items()}),
      runs=[{k: v for k, v in r.items() if k != "history"} for r in gamma_records + beta_records],
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(output_dir, NAME, payload)
  print(f"Chosen: gamma {gamma:g}, beta {beta:g}. Wrote {png} and {path}"
        f" in {clock.seconds():.0f}s.")


if __name__ == "__main__":
  app.run(main)
