"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard event files, the console.

TensorBoard files are written with tensorboardX, so TensorFlow is not needed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping, TextIO

import numpy as np

from gmvq_jax import io as io_lib


def _to_python(value):
  array = np.asarray(value)
  if array.ndim == 0:
    return array.item()
  return array.tolist()


class MetricWriter:
  """Appends one JSON object per (step, split) to metrics.jsonl and logs scalars.

  Args:
    workdir: directory of the run; created if absent.
    tensorboard: also write TensorBoard event files under workdir/tensorboard.
    resume_step: a run resumed from the checkpoint at this step: records of
      later steps (written after that checkpoint, before the run stopped) are
      dropped, so the file holds one record per (step, split), as if the
      run had never stopped. The file is rewritten through a rename.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None and os.path.exists(self.path):
      _drop_records_after(self.path, resume_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # Heavy import: only when asked for.

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, figures: Mapping[str, object]) -> None:
    """Appends one record {step, split, **figures} (arrays become lists) and flushes."""
    record = {"step": int(step), "split": split}
    record.update({k: _to_python(v) for k, v in figures.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for name, value in record.items():
        if name in ("step", "split") or not isinstance(value, (int, float)):
          continue
        self._tb.add_scalar(f"{split}/{name}", value, int(step))
      self._tb.flush()

  def close(self) -> None:
    """Closes metrics.jsonl and the TensorBoard writer."""
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] > step:
        continue
    except (ValueError, KeyError, TypeError):  # A torn last line of a killed run.
      continue
    kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) == len(lines):
    return
  with io_lib.atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)


def read_metrics(workdir: str) -> list[dict]:
  """Reads WORKDIR/metrics.jsonl back as a list of dicts."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A one-line console progress report: step, figures, steps/s and ETA."""

  def __init__(self, total_steps: int, first_step: int = 0, stream: TextIO | None = None):
    self.total_steps = total_steps
    self._stream = stream or sys.stdout
    self._start_step = first_step
    self._start_time = None

  def start(self, step: int) -> None:
    """Starts the clock (call after the first step, to leave compilation out)."""
    self._start_step = step
    self._start_time = time.perf_counter()

  def report(self, step: int, figures: Mapping[str, float]) -> str:
    """Prints and returns `step S/N name=value ... | R steps/s | ETA h:mm:ss`."""
    rate = float("nan")
    if self._start_time is not None and step > self._start_step:
      rate = (step - self._start_step) / (time.perf_counter() - self._start_time)
    eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
    shown = " ".join(f"{k}={float(v):.4g}" for k, v in figures.items())
    line = (f"step {step}/{self.total_steps} {shown} | {rate:.2f} steps/s"
            f" | ETA {_format_seconds(eta)}")
    print(line, file=self._stream, flush=True)
    return line


def _format_seconds(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours:d}:{minutes:02d}:{secs:02d}"
