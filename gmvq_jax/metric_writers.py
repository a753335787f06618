"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard event files, the console.

TensorBoard files are written with tensorboardX, so TensorFlow is not needed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
import uuid
from typing import Mapping, TextIO

import numpy as np

from gmvq_jax import io as io_lib

TENSORBOARD_SUBDIR = "tensorboard"


def _to_python(value):
  array = np.asarray(value)
  if array.ndim == 0:
    return array.item()
  return array.tolist()


class MetricWriter:
  """Appends one JSON object per (step, split) to metrics.jsonl and logs scalars.

  Files are created at the first `write`, so a run that records nothing
  (stopped before its first step, or rerun after it finished) leaves none.

  Args:
    workdir: directory of the run; created if absent.
    tensorboard: also write TensorBoard event files under workdir/tensorboard.
    resume_step: a run resumed from the checkpoint at this step: records of
      later steps (written after that checkpoint, before the run stopped) are
      dropped from metrics.jsonl and the TensorBoard event files, so they
      hold one record per (step, split), as if the run had never stopped.
      Files are rewritten through a rename.
  """

  def __init__(self, workdir: str, *, tensorboard: bool = True, resume_step: int | None = None):
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    if resume_step is not None:
      if os.path.exists(self.path):
        _drop_records_after(self.path, resume_step)
      drop_events_after(os.path.join(workdir, TENSORBOARD_SUBDIR), resume_step)
    self._tensorboard = tensorboard
    self._file = None
    self._tb = None

  def _open(self) -> None:
    os.makedirs(self.workdir, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if self._tensorboard:
      from tensorboardX import SummaryWriter  # Heavy import: only when asked for.

      # Event files are named by the second they start in: a resume within the
      # same second would otherwise overwrite the previous run's file.
      self._tb = SummaryWriter(os.path.join(self.workdir, TENSORBOARD_SUBDIR),
                               filename_suffix=f".{uuid.uuid4().hex[:8]}")

  def write(self, step: int, split: str, figures: Mapping[str, object]) -> None:
    """Appends one record {step, split, **figures} (arrays become lists) and flushes."""
    if self._file is None:
      self._open()
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
    """Closes metrics.jsonl and the TensorBoard writer (if opened)."""
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()
    self._file = self._tb = None


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


def drop_events_after(directory: str, step: int) -> None:
  """Drops the TensorBoard summaries of steps after `step` from every event file in `directory`.

  Event files are TFRecord files (length, CRC, Event proto, CRC); kept
  records are copied byte for byte. A file left with no summary is removed.
  """
  if not os.path.isdir(directory):
    return
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  for name in sorted(os.listdir(directory)):
    if "tfevents" not in name or ".tmp-" in name:
      continue
    path = os.path.join(directory, name)
    with open(path, "rb") as f:
      contents = f.read()
    kept, summaries, offset, changed = [], 0, 0, False
    while offset < len(contents):
      if offset + 12 > len(contents):
        changed = True  # A torn record of a killed run.
        break
      (length,) = struct.unpack("<Q", contents[offset:offset + 8])
      end = offset + 12 + length + 4
      if end > len(contents):
        changed = True
        break
      event = event_pb2.Event.FromString(contents[offset + 12:offset + 12 + length])
      if event.HasField("summary") and event.step > step:
        changed = True
      else:
        summaries += event.HasField("summary")
        kept.append(contents[offset:end])
      offset = end
    if not changed:
      continue
    if not summaries:
      os.remove(path)
      continue
    with io_lib.atomic_write(path) as tmp, open(tmp, "wb") as f:
      f.writelines(kept)


def recorded_figures(workdir: str, step: int, split: str) -> dict | None:
  """The figures of the (step, split) record in WORKDIR/metrics.jsonl, or None."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  found = None
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get("step") == step and record.get("split") == split:
        found = {k: v for k, v in record.items() if k not in ("step", "split")}
  return found


def read_metrics(workdir: str) -> list[dict]:
  """Reads WORKDIR/metrics.jsonl back as a list of dicts."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """A one-line console progress report: step, figures, steps/s and ETA."""

  def __init__(self, total_steps: int, first_step: int = 0, stream: TextIO | None = None):
    self.total_steps = total_steps
    self._stream = stream or sys.stdout
    self._first_step = first_step
    self._created = time.perf_counter()
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
    elif step > self._first_step:  # Only the first step(s) so far: their rate, compilation included.
      rate = (step - self._first_step) / (time.perf_counter() - self._created)
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
