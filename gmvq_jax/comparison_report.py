"""The comparison's outputs: table.md/.csv, tuning.md/.csv, curves.png and scatter.png.

Pure formatting of the method rows `gmvq_jax.comparison` builds, and the
plots; every file goes through a temporary name and a rename.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Sequence

from etils import epath

from gmvq_jax import io as io_lib

# (key in a run's row, column header, format, measured) of table.md /
# table.csv after the method, in order. A measured figure is shown as
# mean ± std over seeds (CSV: <key>_mean and <key>_std); the others are fixed
# by the config.
COLUMNS = (
    ("mse_x1e3", "MSE x1e-3", "{:.2f}", True),
    ("psnr", "PSNR dB", "{:.2f}", True),
    ("ssim", "SSIM", "{:.3f}", True),
    ("perplexity", "perplexity (paper)", "{:.1f}", True),
    ("hard_perplexity", "hard perplexity", "{:.1f}", True),
    ("code_usage", "code usage", "{:.3f}", True),
    ("bits_per_image", "bits/image", "{:.0f}", False),
    ("train_seconds", "train s", "{:.0f}", True),
)

MISSING = "—"  # A figure a row lacks, e.g. SSIM of runs saved before it was measured.


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(rows: Sequence[dict]) -> tuple[str, str]:
  """(Markdown, CSV) of the method rows; CSV keeps full precision.

  Markdown: method, the COLUMNS (measured ones as `mean ± std`, MISSING
  where a row lacks one) and the chosen peak lr with its multiplier. CSV: method, `<figure>_mean` and
  `<figure>_std` of each measured figure, bits_per_image, then
  lr_multiplier, peak_lr, num_seeds, steps.
  """
  header = ["method"] + [title for _, title, _, _ in COLUMNS] + ["chosen peak lr"]
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  for row in rows:
    cells = [row["method"]]
    for key, _, fmt, measured in COLUMNS:
      values = [row.get(f"{key}_mean"), row.get(f"{key}_std")] if measured else [row.get(key)]
      cells.append(" ± ".join(fmt.format(value) for value in values)
                   if all(_number(value) for value in values) else MISSING)
    cells.append(f"{row['peak_lr']:.3g} (x{row['lr_multiplier']:g})")
    lines.append("| " + " | ".join(cells) + " |")
  keys = ["method"]
  for key, _, _, measured in COLUMNS:
    keys += [f"{key}_mean", f"{key}_std"] if measured else [key]
  keys += ["lr_multiplier", "peak_lr", "num_seeds", "steps"]
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(keys)
  for row in rows:
    writer.writerow([row.get(key, "") for key in keys])
  return "\n".join(lines) + "\n", buffer.getvalue()


def format_duration(seconds: float) -> str:
  """'1 h 05 min', '12 min', '40 s'."""
  minutes = int(round(seconds / 60))
  if seconds < 60:
    return f"{seconds:.0f} s"
  return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def format_tuning(rows: Sequence[dict]) -> tuple[str, str]:
  """(Markdown, CSV) of every method's final val MSE at every lr multiplier, and run times.

  Markdown: one row per method, one column per multiplier (val MSE x1e-3,
  the chosen one in bold, 'diverged' for a run that stopped on non-finite
  values), then the method's run time (all its runs, tuning included); a
  last line gives the total over methods, which is the comparison's wall
  time when nothing else ran. CSV, one line per (method, multiplier):
  method, lr_multiplier, peak_lr, seed, val_mse (empty if diverged),
  chosen, seconds (that run's).
  """
  grid = [entry["lr_multiplier"] for entry in rows[0]["tuning"]] if rows else []
  header = ["method"] + [f"x{m:g} (peak lr {entry['peak_lr']:.3g})"
                         for m, entry in zip(grid, rows[0]["tuning"] if rows else [])]
  header.append("run time (runs)")
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  keys = ("method", "lr_multiplier", "peak_lr", "seed", "val_mse", "chosen", "seconds")
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(keys)
  for row in rows:
    cells = [row["method"]]
    for entry in row["tuning"]:
      mse = entry["val_mse"]
      cell = "diverged" if mse is None else f"{1e3 * mse:.2f}"
      cells.append(f"**{cell}**" if entry["chosen"] else cell)
      writer.writerow([row["method"]] + [("" if entry[key] is None else entry[key])
                                         for key in keys[1:]])
    cells.append(_run_time(row))
    lines.append("| " + " | ".join(cells) + " |")
  caption = ("Final val MSE x1e-3 of the tuning runs (one seed) at each multiplier of"
             " train.optimizer.peak_lr; bold: chosen (lowest). Run time: each run from its"
             " start to its final evaluation (and GQ's conversion), compilation included (a"
             " run resumed after an interruption counts its last part only).\n\n")
  total = {key: sum(row[key] for row in rows)
           for key in ("run_seconds", "num_runs", "untimed_runs")}
  footer = f"\nAll methods: {_run_time(total)}.\n" if rows else ""
  return caption + "\n".join(lines) + "\n" + footer, buffer.getvalue()


def _run_time(row: dict) -> str:
  """'1 h 05 min (12 runs)', with how many runs have no recorded time."""
  note = f", {row['untimed_runs']} untimed" if row["untimed_runs"] else ""
  return f"{format_duration(row['run_seconds'])} ({row['num_runs']} runs{note})"


def write_text(path: epath.PathLike, text: str) -> None:
  with io_lib.atomic_write(path) as tmp, tmp.open("w", encoding="utf-8") as f:
    f.write(text)


def _save_figure(figure, path: epath.PathLike) -> None:
  with io_lib.atomic_write(path) as tmp, tmp.open("wb") as f:
    figure.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_curves(histories: dict[str, list[dict]], path: epath.PathLike, title: str = "") -> None:
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
  for axis, (_, panel_title, scale) in zip(axes, panels):
    axis.set_title(panel_title)
    axis.set_xlabel("step")
    axis.set_yscale(scale)
    axis.grid(alpha=0.3)
  if title:
    figure.suptitle(title)
  axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  _save_figure(figure, path)
  plt.close(figure)


def plot_scatter(rows: Sequence[dict], path: epath.PathLike) -> None:
  """Test MSE against hard perplexity, one labelled point per method, error bars one std."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  figure, axis = plt.subplots(figsize=(7.5, 5.5))
  for row in rows:
    x, y = row["hard_perplexity_mean"], row["mse_x1e3_mean"]
    axis.errorbar(x, y, xerr=row["hard_perplexity_std"], yerr=row["mse_x1e3_std"], fmt="o",
                  markersize=4, capsize=2, elinewidth=0.8)
    axis.annotate(row["method"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
  axis.set_xscale("log")
  # Plain numbers at 1, 2 and 5 of each decade: matplotlib's labelled minor
  # ticks (2x10^1, 3x10^1, ...) overlap on an axis spanning a decade or two.
  axis.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  axis.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
  axis.xaxis.set_minor_formatter(ticker.NullFormatter())
  axis.set_xlabel("hard perplexity of the test codes (log scale)")
  axis.set_ylabel("test MSE x1e-3")
  num_seeds = sorted({row["num_seeds"] for row in rows})
  axis.set_title("distortion against code use (mean ± std over"
                 f" {'/'.join(map(str, num_seeds))} seeds)")
  axis.grid(alpha=0.3)
  _save_figure(figure, path)
  plt.close(figure)
