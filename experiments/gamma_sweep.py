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

import json
import os
import time

from absl import app
from absl import flags
import numpy as np

from configs import gmvq_demo
from experiments import common
from gmvq_jax import train_lib

NAME = "gamma_sweep"
# Validation figures drawn against gamma and beta, with their axis labels.
PLOTTED = dict(mse="validation MSE", hard_perplexity="validation hard-code perplexity",
               code_usage="validation fraction of codes used")

_OUTPUT_DIR = flags.DEFINE_string("output_dir", f"experiments/results/{NAME}",
                                  "Where the runs, gamma_sweep.png and gamma_sweep.json go.")
_GAMMAS = flags.DEFINE_list("gammas", ["0.001", "0.003", "0.01", "0.03", "0.1", "0.3"],
                            "Stage 1: gamma values (beta = 1).")
_BETAS = flags.DEFINE_list("betas", ["2", "5", "10", "20"],
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
  config.seed = seed
  return config


def train_and_score(config) -> dict:
  """Trains in memory; the validation and test figures of the final state."""
  clock = common.Stopwatch()
  state, history, dataset = common.train_in_memory(config, log_every=max(1, config.num_steps // 10))
  eval_fn = train_lib.make_eval_fn(config)
  val, _ = train_lib.evaluate(config, state, dataset, split="val", step_fn=eval_fn)
  test, _ = train_lib.evaluate(config, state, dataset, split="test", step_fn=eval_fn)
  return dict(val=val, test=test, history=history, wall_seconds=clock.seconds())


def _run_path(output_dir: str, stage: str, value: float, seed: int) -> str:
  return os.path.join(output_dir, "runs", f"{stage}_{value:g}_seed{seed}.json")


def run_stage(stage: str, values: list[float], seeds: list[int], *, fixed: dict,
              output_dir: str, budget: dict) -> list[dict]:
  """Trains every (value, seed) of a stage not yet on disk; returns all of the stage's records.

  A run is claimed by creating its `.claim` file first, so processes sharing
  the output directory never train the same run; a process with nothing left
  to claim waits for the others' results.
  """
  os.makedirs(os.path.join(output_dir, "runs"), exist_ok=True)
  for value in values:
    for seed in seeds:
      path = _run_path(output_dir, stage, value, seed)
      try:
        os.close(os.open(f"{path}.claim", os.O_CREAT | os.O_EXCL))
      except FileExistsError:
        continue  # Done, or another process is on it.
      settings = dict(fixed, **{stage: value})
      config = run_config(settings["gamma"], settings["beta"], seed, **budget)
      record = dict(stage=stage, value=value, seed=seed, **settings, **train_and_score(config))
      common.write_json(os.path.dirname(path), os.path.basename(path)[:-5], record)
      print(f"{stage}={value:g} seed {seed}: val mse {record['val']['mse']:.4g}, hard perplexity"
            f" {record['val']['hard_perplexity']:.4g}, usage {record['val']['code_usage']:.3f}"
            f" ({record['wall_seconds']:.0f}s)", flush=True)
  records = []
  for value in values:
    for seed in seeds:
      path = _run_path(output_dir, stage, value, seed)
      while not os.path.exists(path):  # Another process is training it.
        time.sleep(10)
      with open(path, encoding="utf-8") as f:
        records.append(json.load(f))
  return records


def summarize(records: list[dict], split: str) -> dict[float, dict[str, dict[str, float]]]:
  """value -> metric -> {mean, std} over seeds, for one split's figures."""
  summary = {}
  for value in dict.fromkeys(r["value"] for r in records):
    runs = [r[split] for r in records if r["value"] == value]
    summary[value] = {metric: dict(mean=float(np.mean([r[metric] for r in runs])),
                                   std=float(np.std([r[metric] for r in runs])))
                      for metric in runs[0]}
  return summary


def choose_gamma(val_summary: dict) -> float:
  """The gamma of lowest mean validation MSE."""
  return min(val_summary, key=lambda g: val_summary[g]["mse"]["mean"])


def choose_beta(val_summary: dict, min_usage: float) -> float:
  """Lowest mean validation MSE among betas using >= min_usage of the codes; else most usage."""
  enough = [b for b in val_summary if val_summary[b]["code_usage"]["mean"] >= min_usage]
  if enough:
    return min(enough, key=lambda b: val_summary[b]["mse"]["mean"])
  return max(val_summary, key=lambda b: val_summary[b]["code_usage"]["mean"])


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
      means = [summary[x][metric]["mean"] for x in xs]
      stds = [summary[x][metric]["std"] for x in xs]
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
  gamma_records = run_stage("gamma", gammas, seeds, fixed=dict(beta=1.0), output_dir=output_dir,
                            budget=budget)
  gamma_val = summarize(gamma_records, "val")
  gamma = choose_gamma(gamma_val)
  beta_records = run_stage("beta", betas, seeds, fixed=dict(gamma=gamma), output_dir=output_dir,
                           budget=budget)
  beta_val = summarize(beta_records, "val")
  beta = choose_beta(beta_val, _MIN_USAGE.value)
  png = common.save_figure(plot(gamma_val, beta_val, gamma, beta), output_dir, NAME)
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
      summary=dict(gamma=dict(val=gamma_val, test=summarize(gamma_records, "test")),
                   beta=dict(val=beta_val, test=summarize(beta_records, "test"))),
      runs=[{k: v for k, v in r.items() if k != "history"} for r in gamma_records + beta_records],
      wall_seconds=clock.seconds(),
  )
  path = common.write_json(output_dir, NAME, json.loads(json.dumps(payload, default=str)))
  print(f"Chosen: gamma {gamma:g}, beta {beta:g}. Wrote {png} and {path}"
        f" in {clock.seconds():.0f}s.")


if __name__ == "__main__":
  app.run(main)
