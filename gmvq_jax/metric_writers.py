"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard event files, the console.

TensorBoard files are written with tensorboardX, so TensorFlow is not needed;
on a workdir that is not local (gs://...) they are written through epath.
"""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import sys
import time
import uuid
from typing import Mapping, TextIO

from etils import epath
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

  def __init__(self, workdir: epath.PathLike, *, tensorboard: bool = True,
               resume_step: int | None = None):
    self.workdir = io_lib.as_path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    if resume_step is not None:
      if self.path.exists():
        _drop_records_after(self.path, resume_step)
      drop_events_after(self.workdir / TENSORBOARD_SUBDIR, resume_step)
    self._tensorboard = tensorboard
    self._file = None
    self._tb = None

  def _open(self) -> None:
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._file = (self.path.open("a", encoding="utf-8") if io_lib.is_local(self.path)
                  else _RewrittenFile(self.path))
    if self._tensorboard:
      self._tb = _summary_writer(self.workdir / TENSORBOARD_SUBDIR)

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


class _RewrittenFile:
  """A text file opened for appending on an object store (no appends there): rewritten on flush."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._text = io.StringIO()
    if path.exists():
      self._text.write(path.read_text(encoding="utf-8"))

  def write(self, text: str) -> None:
    self._text.write(text)

  def flush(self) -> None:
    self._path.write_text(self._text.getvalue(), encoding="utf-8")

  def close(self) -> None:
    self.flush()


class _EpathRecordWriter:
  """A tensorboardX event file on a non-local path: buffered, rewritten whole on flush."""

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    self._path.write_bytes(self._buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _EpathRecordWriterFactory:
  """tensorboardX's hook for a URI scheme: event files through epath, not its GCS client."""

  def open(self, path: str) -> _EpathRecordWriter:
    return _EpathRecordWriter(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def _summary_writer(directory: epath.Path):
  """A tensorboardX SummaryWriter on `directory`, or None (logged) where it cannot write there."""
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  # Heavy import.

  try:
    if not io_lib.is_local(directory):
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top

      record_writer.register_writer_factory(str(directory).split("://")[0],
                                            _EpathRecordWriterFactory())
    # Event files are named by the second they start in: a resume within the
    # same second would otherwise overwrite the previous run's file.
    return SummaryWriter(str(directory), filename_suffix=f".{uuid.uuid4().hex[:8]}")
  except Exception as error:  # pylint: disable=broad-except  # TensorBoard is optional.
    logging.warning("TensorBoard event files are not written to %s (%s: %s); metrics.jsonl"
                    " still is.", directory, type(error).__name__, error)
    return None


def _drop_records_after(path: epath.Path, step: int) -> None:
  with path.open(encoding="utf-8") as f:
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
  with io_lib.atomic_write(path) as tmp, tmp.open("w", encoding="utf-8") as f:
    f.writelines(kept)


def drop_events_after(directory: epath.PathLike, step: int) -> None:
  """Drops the TensorBoard summaries of steps after `step` from every event file in `directory`.

  Event files are TFRecord files (length, CRC, Event proto, CRC); kept
  records are copied byte for byte. A file left with no summary is removed.
  """
  directory = io_lib.as_path(directory)
  if not directory.is_dir():
    return
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  for path in sorted(directory.iterdir()):
    if "tfevents" not in path.name or ".tmp-" in path.name:
      continue
    contents = path.read_bytes()
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
      path.unlink()
      continue
    with io_lib.atomic_write(path) as tmp, tmp.open("wb") as f:
      f.writelines(kept)


def recorded_figures(workdir: epath.PathLike, step: int, split: str) -> dict | None:
  """The figures of the (step, split) record in WORKDIR/metrics.jsonl, or None."""
  path = io_lib.as_path(workdir) / "metrics.jsonl"
  if not path.exists():
    return None
  found = None
  with path.open(encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get("step") == step and record.get("split") == split:
        found = {k: v for k, v in record.items() if k not in ("step", "split")}
  return found


def read_metrics(workdir: epath.PathLike) -> list[dict]:
  """Reads WORKDIR/metrics.jsonl back as a list of dicts."""
  with (io_lib.as_path(workdir) / "metrics.jsonl").open(encoding="utf-8") as f:
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
