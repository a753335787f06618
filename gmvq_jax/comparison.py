"""The comparison table: every method trained in the same harness, side by side.

`compare` trains the methods of a compare config one after another (same
network, data, steps and seed), evaluates each (GQ after its offline
conversion), and writes WORKDIR/table.md, table.csv, curves.png and
scatter.png. Used by `launch.compare`; rerunning skips finished methods.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import time
from typing import Any, Sequence

import ml_collections

from gmvq_jax import config_checks
from gmvq_jax import conversion
from gmvq_jax import evaluation
from gmvq_jax import metric_writers
from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax import train_lib

RUNS_SUBDIR = "runs"
RESULT_NAME = "result.json"
# (key in a result, column header, format) of table.md / table.csv, in order.
COLUMNS = (
    ("method", "method", "{}"),
    ("mse_x1e3", "MSE x1e-3", "{:.2f}"),
    ("psnr", "PSNR dB", "{:.2f}"),
    ("perplexity", "perplexity (paper)", "{:.1f}"),
    ("hard_perplexity", "hard perplexity", "{:.1f}"),
    ("code_usage", "code usage", "{:.3f}"),
    ("bits_per_image", "bits/image", "{:.0f}"),
    ("train_seconds", "train s", "{:.0f}"),
)


def method_config(compare_config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The training config of one method: the shared `train` fields plus its quantizer."""
  config = copy.deepcopy(compare_config.train)
  config.method = name
  config.quantizer = copy.deepcopy(compare_config.quantizers[name])
  return config


def check(compare_config: ml_collections.ConfigDict, num_devices: int) -> list[str]:
  """Validates every method's config before anything trains; returns the method names.

  Raises:
    config_checks.ConfigError: a method that is not registered, has no
      quantizer fields, or whose config is invalid; the message names it.
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
    try:
      config_checks.validate(method_config(compare_config, name), num_devices)
    except config_checks.ConfigError as error:
      raise config_checks.ConfigError(f"method {name!r}: {error}") from error
  return names


def _result_row(name: str, config: ml_collections.ConfigDict, figures: dict[str, Any],
                train_seconds: float, run_dir: str) -> dict[str, Any]:
  """One table row from a finished run (GQ: converted to tokens first)."""
  row = dict(method=name, steps=int(config.num_steps), bits_per_image=methods.bits_per_image(config),
             train_seconds=train_seconds)
  if methods.family(config) == "gq":
    report = conversion.convert(run_dir, num_images=8)
    mse = report["mse_vq"]
    row.update(psnr=report["psnr_vq"], perplexity=report["token_perplexity"],
               hard_perplexity=report["token_perplexity"], code_usage=report["code_usage"],
               psnr_before_conversion=report["psnr_gaussian"])
  else:
    mse = figures["mse"]
    row.update(psnr=figures["psnr"], perplexity=figures["perplexity"],
               hard_perplexity=figures["hard_perplexity"], code_usage=figures["code_usage"])
  row.update(mse=mse, mse_x1e3=1e3 * mse)
  return row


def run_method(compare_config: ml_collections.ConfigDict, name: str, workdir: str) -> dict:
  """Trains and evaluates one method under WORKDIR/runs/<name>; returns its row.

  A method with a result.json is not run again (its row is read back); a
  method with checkpoints but no result resumes from its latest one.
  """
  config = method_config(compare_config, name)
  run_dir = os.path.join(workdir, RUNS_SUBDIR, name)
  result_path = os.path.join(run_dir, RESULT_NAME)
  if os.path.exists(result_path):
    with open(result_path, encoding="utf-8") as f:
      result = json.load(f)
    if result["config"] != json.loads(config.to_json()):
      raise config_checks.ConfigError(
          f"{result_path} was made with another config for {name!r}; use a new --workdir, or"
          f" delete {run_dir} to retrain it.")
    logging.info("%s: finished before, skipped (%s).", name, result_path)
    return result["row"]
  logging.info("%s: training %d steps in %s.", name, config.num_steps, run_dir)
  started = time.perf_counter()
  figures = train_lib.train_and_evaluate(config, run_dir)
  train_seconds = time.perf_counter() - started
  row = _result_row(name, config, figures, train_seconds, run_dir)
  evaluation.write_json(result_path, dict(row=row, config=json.loads(config.to_json())))
  return row


def format_table(rows: Sequence[dict]) -> tuple[str, str]:
  """(Markdown, CSV) of the rows, columns as COLUMNS; CSV keeps full precision."""
  header = [title for _, title, _ in COLUMNS]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for row in rows:
    cells = [fmt.format(row[key]) if isinstance(row.get(key), (int, float)) or key == "method"
             else "n/a" for key, _, fmt in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow([key for key, _, _ in COLUMNS])
  for row in rows:
    writer.writerow([row.get(key, "") for key, _, _ in COLUMNS])
  return "\n".join(lines) + "\n", buffer.getvalue()


def _write_text(path: str, text: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def _save_figure(figure, path: str) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
  os.replace(tmp, path)


def plot_curves(histories: dict[str, list[dict]], path: str) -> None:
  """Training loss, reconstruction MSE and batch perplexity against step, one line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  panels = (("loss", "training loss", "symlog"), ("recon", "reconstruction MSE", "log"),
            ("batch_perplexity", "batch code perplexity (hard)", "log"))
  figure, axes = plt.subplots(1, len(panels), figsize=(16, 4.6))
  colours = plt.get_cmap("tab20")
  for index, (name, records) in enumerate(histories.items()):
    train = [r for r in records if r.get("split") == "train"]
    for axis, (key, _, _) in zip(axes, panels):
      points = [(r["step"], r[key]) for r in train if key in r and math.isfinite(r[key])]
      if points:
        steps, values = zip(*points)
        axis.plot(steps, values, label=name, color=colours(index % 20), linewidth=1.2)
  for axis, (_, title, scale) in zip(axes, panels):
    axis.set_title(title)
    axis.set_xlabel("step")
    axis.set_yscale(scale)
    axis.grid(alpha=0.3)
  axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  _save_figure(figure, path)
  plt.close(figure)


def plot_scatter(rows: Sequence[dict], path: str) -> None:
  """Test MSE against hard perplexity, one labelled point per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  figure, axis = plt.subplots(figsize=(7.5, 5.5))
  for row in rows:
    axis.scatter(row["hard_perplexity"], row["mse_x1e3"], s=28)
    axis.annotate(row["method"], (row["hard_perplexity"], row["mse_x1e3"]), fontsize=7,
                  xytext=(4, 3), textcoords="offset points")
  axis.set_xscale("log")
  axis.set_xlabel("hard perplexity of the test codes (log scale)")
  axis.set_ylabel("test MSE x1e-3")
  axis.set_title("distortion against code use")
  axis.grid(alpha=0.3)
  _save_figure(figure, path)
  plt.close(figure)


def compare(compare_config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) every method of the config and writes the four outputs.

  Returns:
    The table's rows, in the config's method order.
  """
  strategy = parallel.make(compare_config.train.parallelism)
  names = check(compare_config, strategy.num_devices)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file; pass a directory.")
  rows, histories = [], {}
  for name in names:
    rows.append(run_method(compare_config, name, workdir))
    histories[name] = metric_writers.read_metrics(os.path.join(workdir, RUNS_SUBDIR, name))
  markdown, csv_text = format_table(rows)
  _write_text(os.path.join(workdir, "table.md"), markdown)
  _write_text(os.path.join(workdir, "table.csv"), csv_text)
  plot_curves(histories, os.path.join(workdir, "curves.png"))
  plot_scatter(rows, os.path.join(workdir, "scatter.png"))
  return rows
