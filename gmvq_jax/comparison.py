"""The comparison table: every method trained in the same harness, side by side.

`compare` runs, for every method of a compare config, the same protocol with
the same tuning budget (same network, data and steps; `method_steps` may
give a method its own number of steps):

1. Tuning: seed `seeds[0]` is trained at every multiplier m of `lr_grid`
   (peak lr = m x train.optimizer.peak_lr), each under
   WORKDIR/runs/<method>/lr<m>_seed<seed>/ (`run_dir_name`). The final `val`
   record of each run's metrics.jsonl gives its validation MSE, and
   `choose_lr` picks the multiplier with the lowest one (ties: the first in
   the grid). The test split is never read for this choice. For GQ the val
   MSE is that of its Gaussian model (images decoded from the posterior
   means), measured during training, before the offline conversion to tokens.
   A tuning run that stops on non-finite values is recorded as diverged and
   never chosen.
2. The other seeds train at the chosen multiplier; the tuning run of
   `seeds[0]` at that multiplier is reused, not retrained.
3. The method's row: mean and population standard deviation (numpy's
   default) over the seeds of every test figure of a run's row (GQ after its
   conversion to tokens), with the chosen `lr_multiplier` and `peak_lr`,
   `num_seeds`, and each seed's row under `per_seed`.

It writes WORKDIR/table.md (`mean ± std` per figure and the chosen lr),
table.csv (`<figure>_mean` / `<figure>_std` columns), tuning.md and
tuning.csv (every method's val MSE at every multiplier, and the time its
runs took: the comparison's wall time is their sum), curves.png (the
training curves of `seeds[0]` at the chosen lr) and scatter.png (test MSE
against hard perplexity, error bars one std over seeds), and each method's
row in WORKDIR/runs/<method>/result.json. Every finished (lr, seed) run has
its own result.json: a rerun skips finished runs, resumes an interrupted
one from its checkpoint, trains runs that new seeds or multipliers add, and
refuses a finished run whose config has since changed. Used by
`launch.compare`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from typing import Any, Optional, Sequence

from etils import epath
import ml_collections
import numpy as np

from gmvq_jax import comparison_report
from gmvq_jax import config_checks
from gmvq_jax import config_version
from gmvq_jax import conversion
from gmvq_jax import errors
from gmvq_jax import evaluation
from gmvq_jax import faults
from gmvq_jax import io as io_lib
from gmvq_jax import metric_writers
from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax import train_lib
from gmvq_jax import workdir_lock

RUNS_SUBDIR = "runs"
RESULT_NAME = "result.json"
# Keys of a run's row fixed by its config or its place in the protocol, not
# measured: the same for every seed of a method, so not averaged.
CONSTANT_KEYS = ("method", "steps", "bits_per_image", "seed", "lr_multiplier", "peak_lr")


def method_config(compare_config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of one method: the shared `train` fields, its quantizer and steps."""
  config = copy.deepcopy(compare_config.train)
  config.method = name
  config.quantizer = copy.deepcopy(compare_config.quantizers[name])
  steps = _method_steps(compare_config).get(name)
  if steps is not None:
    config.num_steps = steps
  return config


def run_config(compare_config: ml_collections.ConfigDict, name: str, lr_multiplier: float,
               seed: int) -> ml_collections.ConfigDict:
  """The config of one run: the method's, at seed `seed` and peak lr x `lr_multiplier`."""
  config = method_config(compare_config, name)
  config.seed = int(seed)
  config.optimizer.peak_lr = float(lr_multiplier) * compare_config.train.optimizer.peak_lr
  return config


def run_dir_name(lr_multiplier: float, seed: int) -> str:
  """The directory of one run under WORKDIR/runs/<method>/, e.g. 'lr0.5_seed0'."""
  return f"lr{float(lr_multiplier)!r}_seed{int(seed)}"


def choose_lr(lr_grid: Sequence[float], val_mses: Sequence[Optional[float]]) -> float:
  """The multiplier of `lr_grid` whose validation MSE is lowest.

  Args:
    lr_grid: the multipliers, in the config's order.
    val_mses: the final val MSE of the run at each multiplier, in the same
      order; None or NaN for a run that diverged (never chosen).

  Returns:
    The multiplier with the lowest val MSE; of equal ones, the first in the grid.

  Raises:
    ValueError: the lengths differ, or no run has a finite val MSE.
  """
  if len(lr_grid) != len(val_mses):
    raise ValueError(f"{len(lr_grid)} multipliers but {len(val_mses)} val MSEs.")
  best = None
  for multiplier, mse in zip(lr_grid, val_mses):
    if mse is None or not math.isfinite(mse):
      continue
    if best is None or mse < best[1]:
      best = (multiplier, mse)
  if best is None:
    raise ValueError(f"no multiplier of lr_grid={tuple(lr_grid)} has a finite val MSE.")
  return best[0]


def _method_steps(compare_config: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(compare_config.method_steps.items())


def _get(compare_config: ml_collections.ConfigDict, field: str) -> Any:
  if field not in compare_config:
    raise config_checks.ConfigError(
        f"config.{field} is missing; build compare configs with"
        " configs.compare_demo.compare_config, which sets seeds, lr_grid and method_steps.")
  return compare_config[field]


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_protocol(compare_config: ml_collections.ConfigDict, names: Sequence[str]) -> None:
  """Checks seeds, lr_grid and method_steps; ConfigError naming the field otherwise."""
  seeds = _get(compare_config, "seeds")
  if (not isinstance(seeds, (tuple, list)) or not seeds
      or not all(_is_int(seed) and seed >= 0 for seed in seeds)):
    raise config_checks.ConfigError(
        f"config.seeds={seeds!r} is invalid: must be a non-empty tuple of integers >= 0.")
  if len(set(seeds)) != len(seeds):
    raise config_checks.ConfigError(f"config.seeds={tuple(seeds)} lists a seed twice.")
  grid = _get(compare_config, "lr_grid")
  if (not isinstance(grid, (tuple, list)) or not grid
      or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m)
                 and m > 0 for m in grid)):
    raise config_checks.ConfigError(
        f"config.lr_grid={grid!r} is invalid: must be a non-empty tuple of finite numbers > 0"
        " (multipliers of train.optimizer.peak_lr).")
  if len({float(m) for m in grid}) != len(grid):
    raise config_checks.ConfigError(f"config.lr_grid={tuple(grid)} lists a multiplier twice.")
  steps = _get(compare_config, "method_steps")
  if not isinstance(steps, (ml_collections.ConfigDict, dict)):
    raise config_checks.ConfigError(
        f"config.method_steps={steps!r} is invalid: must map method names to numbers of steps.")
  for name, value in dict(steps.items()).items():
    # Any registered method may be named, so that a run over a subset of the
    # methods (--config.methods=...) keeps the full config's method_steps.
    if name not in methods.METHODS:
      raise config_checks.ConfigError(
          f"config.method_steps names {name!r}, which is not a registered method; known"
          f" methods: {', '.join(methods.NAMES)}.")
    if not _is_int(value) or value < 1:
      raise config_checks.ConfigError(
          f"config.method_steps.{name}={value!r} is invalid: must be an integer >= 1.")


def check(compare_config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """Validates every method's config before anything trains; returns the method names.

  Raises:
    config_checks.ConfigError: a method that is not registered, has no
      quantizer fields, or whose config is invalid (at every multiplier of
      lr_grid); bad seeds, lr_grid or method_steps. The message names it.
  """
  names = list(compare_config.methods)
  if not names:
    raise config_checks.ConfigError("config.methods is empty; name at least one of"
                                    f" {', '.join(methods.NAMES)}.")
  if len(set(names)) != len(names):
    raise config_checks.ConfigError(f"config.methods lists a method twice: {names}.")
  for name in names:
    if name not in methods.METHODS:
      raise config_checks.ConfigError(
          f"config.methods names {name!r}, which is not a registered method; known methods:"
          f" {', '.join(methods.NAMES)}.")
    if name not in compare_config.quantizers:
      raise config_checks.ConfigError(
          f"config.quantizers has no fields for {name!r}; add"
          f" methods.quantizer_config({name!r}) to the compare config.")
  _check_protocol(compare_config, names)
  for name in names:
    for multiplier in compare_config.lr_grid:
      try:
        config_checks.validate(run_config(compare_config, name, multiplier,
                                          compare_config.seeds[0]), num_devices)
      except config_checks.ConfigError as error:
        raise config_checks.ConfigError(f"method {name!r}: {error}") from error
  return names


def _result_row(name: str, config: ml_collections.ConfigDict, figures: dict[str, Any],
                train_seconds: float, run_dir: epath.PathLike) -> dict[str, Any]:
  """One run's row from its test figures (GQ: converted to tokens first)."""
  row = dict(method=name, steps=int(config.num_steps), bits_per_image=methods.bits_per_image(config),
             train_seconds=train_seconds)
  if conversion.converts(config):
    # The comparison owns its run directories: a resumed run converts again.
    report = conversion.convert(str(run_dir), num_images=8, overwrite=True)
    mse = report["mse_vq"]
    row.update(psnr=report["psnr_vq"], ssim=report["ssim_vq"],
               perplexity=report["token_perplexity"],
               hard_perplexity=report["token_perplexity"], code_usage=report["code_usage"],
               psnr_before_conversion=report["psnr_gaussian"])
  else:
    mse = figures["mse"]
    row.update(psnr=figures["psnr"], perplexity=figures["perplexity"],
               hard_perplexity=figures["hard_perplexity"], code_usage=figures["code_usage"])
    if "ssim" in figures:  # Not in the figures of runs evaluated before SSIM was.
      row["ssim"] = figures["ssim"]
  row.update(mse=mse, mse_x1e3=1e3 * mse)
  return row


def final_val_figures(run_dir: epath.PathLike, num_steps: int) -> dict[str, Any]:
  """The figures of the `val` record at step `num_steps` of RUN_DIR/metrics.jsonl.

  Only records with split 'val' are read: the test split never reaches the
  lr choice.
  """
  records = [r for r in metric_writers.read_metrics(run_dir)
             if r.get("split") == "val" and r.get("step") == num_steps]
  if not records:
    raise errors.UserFileNotFoundError(
        f"{run_dir}/metrics.jsonl has no 'val' record at the final step"
        f" {num_steps}; delete {run_dir} to retrain it.")
  return {k: v for k, v in records[-1].items() if k not in ("step", "split")}


# Config fields that never change a run's numbers (the input pipeline's
# reading threads give the same batches): a result saved with another value,
# or before the field existed, still counts.
# Fields that change how a run computes, not what: a result made with another
# value is the same run (conv_impl: the same convolution up to float rounding).
_RESULT_NEUTRAL_FIELDS = ("input_workers", "conv_impl")


def _without_neutral(config_json: dict[str, Any]) -> dict[str, Any]:
  return {key: value for key, value in config_json.items() if key not in _RESULT_NEUTRAL_FIELDS}


def run_one(compare_config: ml_collections.ConfigDict, name: str, lr_multiplier: float, seed: int,
            workdir: epath.PathLike, *, tuning: bool = False) -> dict[str, Any]:
  """Trains and evaluates one (lr, seed) run of a method, or reads back its result.

  The run lives in WORKDIR/runs/<name>/<run_dir_name>. One with a
  result.json is not run again (a changed config is refused); one with
  checkpoints but no result resumes from its latest one.

  Args:
    tuning: a tuning run: one that stops on non-finite values is recorded
      as diverged (result `diverged`: the message; no row, no val) instead
      of stopping the comparison.

  Returns:
    {lr_multiplier, seed, config, val (final val figures), row (test, `_result_row`
    plus seed, lr_multiplier, peak_lr)}, as in its result.json.
  """
  config = run_config(compare_config, name, lr_multiplier, seed)
  run_dir = io_lib.as_path(workdir) / RUNS_SUBDIR / name / run_dir_name(lr_multiplier, seed)
  result_path = run_dir / RESULT_NAME
  config_json = json.loads(config.to_json())
  if result_path.exists():
    result = json.loads(result_path.read_text(encoding="utf-8"))
    saved = config_version.upgrade(ml_collections.ConfigDict(result["config"]), result_path)
    if _without_neutral(json.loads(saved.to_json())) != _without_neutral(config_json):
      raise config_checks.ConfigError(
          f"{result_path} was made with another config for {name!r}; use a new --workdir, or"
          f" delete {run_dir} to retrain it.")
    logging.info("%s lr x%g seed %d: finished before, skipped (%s).", name, lr_multiplier, seed,
                  result_path)
    return result
  logging.info("%s lr x%g seed %d: training %d steps at peak lr %g in %s.", name, lr_multiplier,
               seed, config.num_steps, config.optimizer.peak_lr, run_dir)
  result = dict(lr_multiplier=float(lr_multiplier), seed=int(seed), config=config_json)
  started = time.perf_counter()
  try:
    figures = train_lib.train_and_evaluate(config, run_dir)
  except faults.NonFiniteError as error:
    if not tuning:
      raise
    logging.warning("%s lr x%g seed %d diverged; never chosen: %s", name, lr_multiplier, seed,
                    error)
    result.update(diverged=str(error), val=None, row=None,
                  seconds=time.perf_counter() - started)
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluation.write_json(result_path, result)
    return result
  train_seconds = time.perf_counter() - started
  val = final_val_figures(run_dir, int(config.num_steps))
  row = _result_row(name, config, figures, train_seconds, run_dir)
  row.update(seed=int(seed), lr_multiplier=float(lr_multiplier),
             peak_lr=float(config.optimizer.peak_lr))
  result.update(val=val, row=row, seconds=time.perf_counter() - started)
  evaluation.write_json(result_path, result)
  return result


def summarize(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """A method's row from its runs' rows (one per seed, same lr).

  Every numeric key outside CONSTANT_KEYS becomes `<key>_mean` and
  `<key>_std` (population std, numpy's default); method, steps and
  bits_per_image are copied from the first row. A figure some seeds' rows
  lack (e.g. ssim in rows saved before it was measured) is left out.
  """
  first = per_seed[0]
  row = {key: first[key] for key in ("method", "steps", "bits_per_image") if key in first}
  for key, value in first.items():
    if key in CONSTANT_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
      continue
    if any(key not in seed_row for seed_row in per_seed):
      continue
    values = np.asarray([float(seed_row[key]) for seed_row in per_seed])
    row[f"{key}_mean"] = float(np.mean(values))
    row[f"{key}_std"] = float(np.std(values))
  return row


def run_seconds(result: dict[str, Any]) -> Optional[float]:
  """Seconds a run took: training, compilation, evaluation and GQ's conversion.

  A run resumed after an interruption counts only its last part. Results
  saved before `seconds` was recorded give their `train_seconds` (no
  conversion), or None if they diverged.
  """
  if "seconds" in result:
    return result["seconds"]
  return result["row"]["train_seconds"] if result.get("row") else None


def run_method(compare_config: ml_collections.ConfigDict, name: str, workdir: epath.PathLike) -> dict:
  """The protocol of the module docstring for one method; returns its row.

  The row also holds `per_seed` (each seed's run row), `tuning` (each
  multiplier's peak lr, val MSE or None if it diverged, whether it was
  chosen, and its run's seconds) and the method's time: `num_runs`,
  `run_seconds` (the sum of `run_seconds(result)`) and `untimed_runs` (runs with no
  recorded time). It is written to WORKDIR/runs/<name>/result.json.
  """
  seeds = [int(seed) for seed in compare_config.seeds]
  grid = [float(m) for m in compare_config.lr_grid]
  tuned = [run_one(compare_config, name, m, seeds[0], workdir, tuning=True) for m in grid]
  val_mses = [None if result.get("diverged") else result["val"]["mse"] for result in tuned]
  try:
    chosen = choose_lr(grid, val_mses)
  except ValueError as error:
    raise config_checks.ConfigError(
        f"method {name!r}: every tuning run diverged ({error}); add smaller multipliers to"
        " config.lr_grid.") from error
  index = grid.index(chosen)
  results = [tuned[index]] + [run_one(compare_config, name, chosen, seed, workdir)
                              for seed in seeds[1:]]
  per_seed = [result["row"] for result in results]
  base_lr = float(compare_config.train.optimizer.peak_lr)
  row = summarize(per_seed)
  tuned_seconds = [run_seconds(result) for result in tuned]
  seconds = tuned_seconds + [run_seconds(result) for result in results[1:]]
  row.update(lr_multiplier=chosen, peak_lr=per_seed[0]["peak_lr"], num_seeds=len(seeds),
             seeds=seeds, per_seed=per_seed,
             tuning=[dict(lr_multiplier=m, peak_lr=m * base_lr, seed=seeds[0], val_mse=mse,
                          chosen=i == index, seconds=elapsed)
                     for i, (m, mse, elapsed) in enumerate(zip(grid, val_mses, tuned_seconds))],
             num_runs=len(seconds),
             run_seconds=sum(s for s in seconds if s is not None),
             untimed_runs=sum(s is None for s in seconds))
  evaluation.write_json(io_lib.as_path(workdir) / RUNS_SUBDIR / name / RESULT_NAME, dict(row=row))
  return row


def _check_layout(workdir: epath.PathLike, names: Sequence[str]) -> None:
  """Refuses a workdir whose method directories are runs of the single-seed comparison."""
  for name in names:
    method_dir = io_lib.as_path(workdir) / RUNS_SUBDIR / name
    if any((method_dir / entry).exists()
           for entry in ("checkpoints", "metrics.jsonl")):
      raise config_checks.ConfigError(
          f"{method_dir} holds a run of the earlier single-seed comparison (one run per method);"
          " runs now live in <method>/lr<multiplier>_seed<seed>/. Use a new --workdir.")


def compare(compare_config: ml_collections.ConfigDict, workdir: epath.PathLike) -> list[dict]:
  """Runs (or resumes) the protocol of the module docstring for every method; writes the outputs.

  Returns:
    The methods' rows (see `run_method`), in the config's method order.
  """
  strategy = parallel.make(compare_config.train.parallelism)
  names = check(compare_config, strategy.num_devices)
  if io_lib.is_file(workdir):
    raise errors.UserNotADirectoryError(f"--workdir={workdir} is a file; pass a directory.")
  with workdir_lock.WorkdirLock(workdir, "the comparison"):
    return _compare_locked(compare_config, workdir, names)


def _compare_locked(compare_config: ml_collections.ConfigDict, workdir: epath.PathLike,
                    names: list[str]) -> list[dict]:
  _check_layout(workdir, names)
  rows, histories = [], {}
  first_seed = int(compare_config.seeds[0])
  for name in names:
    row = run_method(compare_config, name, workdir)
    rows.append(row)
    histories[name] = metric_writers.read_metrics(
        io_lib.as_path(workdir) / RUNS_SUBDIR / name / run_dir_name(row["lr_multiplier"], first_seed))
  for stem, (markdown, csv_text) in (("table", comparison_report.format_table(rows)),
                                     ("tuning", comparison_report.format_tuning(rows))):
    comparison_report.write_text(io_lib.as_path(workdir) / f"{stem}.md", markdown)
    comparison_report.write_text(io_lib.as_path(workdir) / f"{stem}.csv", csv_text)
  comparison_report.plot_curves(histories, io_lib.as_path(workdir) / "curves.png",
                                title=f"seed {first_seed} at each method's chosen lr")
  comparison_report.plot_scatter(rows, io_lib.as_path(workdir) / "scatter.png")
  return rows
