"""Times the training input pipeline of each data source against the GM-VQ train step.

`python -m benchmarks.input_pipeline [--sources=embedded,npz,folder,tfds]
[--num_workers=1,4] [--device=gpu] [--quick]`. The real `TrainIterator` reads
each source at the CIFAR10 config's shapes and places its batches on the
device; the CIFAR10 config's compiled train step is timed in the same process,
in alternation with the pipelines, and both are compared with a GPU-sized step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from typing import Any, Iterator
from unittest import mock

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image

from configs import gmvq_cifar10
from gmvq_jax import data
from gmvq_jax.data import pipeline
from gmvq_jax.data import user_images

try:
  from benchmarks import step_timing
except ImportError:  # Run as `python benchmarks/input_pipeline.py`: benchmarks/ is on sys.path.
  import step_timing

SOURCES = ("embedded", "npz", "folder", "folder_cached", "tfds")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global batch size of pipeline and step.")
_SOURCES = flags.DEFINE_list(
    "sources", list(SOURCES), f"Data sources to read, of {SOURCES}; tfds is cifar10 under "
    "tfds.testing.mock_data unless --tfds_data_dir is given.")
_NUM_WORKERS = flags.DEFINE_list("num_workers", ["1", "4"], "TrainIterator num_workers values to time.")
_STEPS = flags.DEFINE_integer("steps", 30, "Batches timed per pipeline measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed batches (or steps) first.")
_STEP_REPEATS = flags.DEFINE_integer(
    "step_repeats", 5, "Timed repeats of the train step, spread between the pipeline measurements.")
_STEPS_PER_REPEAT = flags.DEFINE_integer(
    "steps_per_repeat", None, "Steps in one timed repeat of the step; default 1 on CPU, 20 on GPU.")
_FED_STEPS = flags.DEFINE_integer(
    "fed_steps", 10, "Steps timed with the pipeline feeding the step (0: skip that column).")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 4096, "Training images written for npz and folder, and mocked for tfds.")
_GPU_STEP_MS = flags.DEFINE_float(
    "gpu_step_ms", 20.0, "A GPU-sized step of batch --gpu_step_batch: the pipelines must also "
    "deliver that batch in that time.")
_GPU_STEP_BATCH = flags.DEFINE_integer("gpu_step_batch", 256, "The batch of the GPU-sized step.")
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", None, "A TFDS data_dir with cifar10 prepared as ArrayRecord: read it instead "
    "of the mock.")
_DEVICE = flags.DEFINE_enum("device", "auto", ["auto", "cpu", "gpu"],
                            "Where the step runs and batches are placed; auto: JAX's default.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Sanity run of ~30 s on a 2-core CPU: batch 32, 5 batches, 512 images, "
    "2 step repeats (flags given explicitly still win).")
QUICK = dict(batch_size=32, steps=5, warmup=1, step_repeats=2, fed_steps=3, num_images=512)
IMAGE_SIZE = 32  # The CIFAR10 config's.


@dataclasses.dataclass
class PipelineTiming:
  source: str
  num_workers: int
  batch_size: int
  batch_s: list[float] = dataclasses.field(default_factory=list)  # Per batch, one per measurement.
  fed_step_ms: float | None = None

  @property
  def ms_per_batch(self) -> float:
    return 1e3 * statistics.median(self.batch_s)

  @property
  def images_per_s(self) -> float:
    return self.batch_size / (self.ms_per_batch / 1e3)


def flag_value(flag, name: str):
  """A flag's value, or its --quick default when --quick is set and the flag was not given."""
  if _QUICK.value and name in QUICK and not flags.FLAGS[name].present:
    return QUICK[name]
  return flag.value


def pick_device(choice: str) -> jax.Device:
  if choice == "auto":
    return jax.devices()[0]
  try:
    return jax.devices(choice)[0]
  except RuntimeError as error:
    raise app.UsageError(f"--device={choice}, but JAX has no {choice} backend ({error}).") from error


def host_lines(device: jax.Device) -> list[str]:
  return [
      f"host: {platform.machine()}, os.cpu_count()={os.cpu_count()}, usable cores="
      f"{len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} (1 min, all processes)",
      f"jax {jax.__version__}, backend {jax.default_backend()}, timed on {device} "
      f"({device.device_kind}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
  ]


def warn_if_busy() -> None:
  cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
  if load > cores:
    print(f"WARNING: load average {load:.1f} > {cores} cores: other processes compete for the CPU; "
          "rates are lower bounds, rerun on an idle machine.", flush=True)


# --- The sources, at the CIFAR10 config's shapes ----------------------------


def _random_images(count: int, seed: int) -> np.ndarray:
  """(count, 32, 32, 3) uint8: smooth colour ramps plus noise, so PNGs compress like photos."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 1, IMAGE_SIZE, dtype=np.float32)
  base = rng.random((count, 1, 1, 3), dtype=np.float32) * ramp[None, :, None, None]
  noise = rng.normal(0, 0.08, (count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  return np.clip(255 * (base + 0.5 * ramp[None, None, :, None] + noise), 0, 255).astype(np.uint8)


def _write_pngs(directory: str, images: np.ndarray) -> None:
  os.makedirs(directory)
  for i, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(directory, f"{i:06d}.png"))


def _getitems_without_self(record_keys, generator, serialized=False):
  # tfds 4.9.10's mock_data sets `__getitems__` as a plain attribute of a
  # MagicMock, so it is called without `self`; tests/test_data.py does the same.
  del serialized
  return [generator[key] for key in record_keys]


@contextlib.contextmanager
def open_source(name: str, num_images: int, workdir: str) -> Iterator[tuple[str, Any]]:
  """Yields (row label, dataset) for one source; mocks and files live until the context ends."""
  common = dict(image_size=IMAGE_SIZE, seed=0, num_eval_examples=8)
  os.makedirs(workdir, exist_ok=True)
  if name == "embedded":
    yield "embedded", data.make_dataset("embedded", **common)
  elif name == "npz":
    path = os.path.join(workdir, "images.npz")
    np.savez(path, train=_random_images(num_images, 0), test=_random_images(8, 1))
    yield "npz", data.make_dataset("npz", data_dir=path, **common)
  elif name in ("folder", "folder_cached"):
    root = os.path.join(workdir, "folder")
    _write_pngs(os.path.join(root, "train"), _random_images(num_images, 0))
    _write_pngs(os.path.join(root, "test"), _random_images(8, 1))
    if name == "folder":  # Every read decodes its PNG files: a first epoch.
      with mock.patch.object(user_images, "DECODED_CACHE_BYTES", 0):
        yield "folder (png)", data.make_dataset("folder", data_dir=root, **common)
    else:  # After one epoch, reads come from the decoded-image cache.
      dataset = data.make_dataset("folder", data_dir=root, **common)
      for _ in dataset.train_split_batches(256):
        pass
      yield "folder cached", dataset
  elif name == "tfds" and _TFDS_DATA_DIR.value:
    yield "tfds cifar10", data.make_dataset("cifar10", data_dir=_TFDS_DATA_DIR.value, **common)
  elif name == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.testing import mocking  # pylint: disable=g-import-not-at-top
    with mock.patch.object(mocking, "_getitems", _getitems_without_self), \
        tfds.testing.mock_data(num_examples=num_images):
      yield "tfds (mock)", data.make_dataset("cifar10", data_dir=workdir, **common)
  else:
    raise app.UsageError(f"Unknown source {name!r}; known: {', '.join(SOURCES)}.")


# --- Timing -----------------------------------------------------------------


def time_pipeline(dataset, batch_size: int, device: jax.Device, *, num_workers: int, warmup: int,
                  steps: int) -> float:
  """Seconds per batch the TrainIterator delivers on `device` to a consumer that only waits for it."""
  put = lambda batch: jax.device_put(batch, device)
  batches = pipeline.TrainIterator(dataset, batch_size, start_step=0, end_step=warmup + steps,
                                   put=put, num_workers=num_workers)
  try:
    for _ in range(warmup):  # Starts the threads and fills the prefetch queue.
      jax.block_until_ready(next(batches))
    started = time.perf_counter()
    for _ in range(steps):
      jax.block_until_ready(next(batches))
    return (time.perf_counter() - started) / steps
  finally:
    batches.close()


def time_fed_step(runner: step_timing.JaxRunner, dataset, batch_size: int, device: jax.Device, *,
                  num_workers: int, warmup: int, steps: int) -> float:
  """Milliseconds per train step when the pipeline feeds it: the training loop's own rate."""
  put = lambda batch: jax.device_put(batch, device)
  batches = pipeline.TrainIterator(dataset, batch_size, start_step=0, end_step=warmup + steps,
                                   put=put, num_workers=num_workers)
  try:
    for _ in range(warmup):
      runner.state, runner.metrics = runner.compiled(runner.state, next(batches), runner.rng)
    runner.sync()
    started = time.perf_counter()
    for _ in range(steps):
      runner.state, runner.metrics = runner.compiled(runner.state, next(batches), runner.rng)
    runner.sync()
    return 1e3 * (time.perf_counter() - started) / steps
  finally:
    batches.close()


def format_table(rows: list[PipelineTiming], step_ms: float, gpu_rate: float,
                 batch_size: int) -> list[str]:
  step_images = batch_size / (step_ms / 1e3)
  header = (f"{'source':<14}{'workers':>8}{'images/s':>11}{'ms/batch':>10}{'step ms':>9}"
            f"{'step img/s':>11}{'keeps up':>10}{'GPU-sized':>11}{'fed ms/step':>13}")
  lines = [header, "-" * len(header)]
  for row in rows:
    fed = "" if row.fed_step_ms is None else f"{row.fed_step_ms:.1f}"
    lines.append(
        f"{row.source:<14}{row.num_workers:>8}{row.images_per_s:>11.0f}{row.ms_per_batch:>10.2f}"
        f"{step_ms:>9.2f}{step_images:>11.0f}{'yes' if row.ms_per_batch <= step_ms else 'NO':>10}"
        f"{'yes' if row.images_per_s >= gpu_rate else 'NO':>11}{fed:>13}")
  return lines


def verdicts(rows: list[PipelineTiming], gpu_rate: float, gpu_step: str) -> list[str]:
  """Per source: the fewest workers measured that keep up with the GPU-sized step."""
  lines = []
  for source in dict.fromkeys(row.source for row in rows):
    fast = [row.num_workers for row in rows if row.source == source and row.images_per_s >= gpu_rate]
    lines.append(f"  {source}: " + (f"keeps up with {gpu_step} from num_workers={min(fast)}"
                                    if fast else f"slower than {gpu_step} with every num_workers "
                                    "measured"))
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  batch_size = flag_value(_BATCH_SIZE, "batch_size")
  steps, warmup = flag_value(_STEPS, "steps"), flag_value(_WARMUP, "warmup")
  step_repeats = flag_value(_STEP_REPEATS, "step_repeats")
  fed_steps = flag_value(_FED_STEPS, "fed_steps")
  num_images = flag_value(_NUM_IMAGES, "num_images")
  worker_counts = [int(w) for w in _NUM_WORKERS.value]
  unknown = [s for s in _SOURCES.value if s not in SOURCES]
  if unknown or min(worker_counts, default=0) < 1:
    raise app.UsageError(f"Unknown source {unknown[0]!r}; known: {', '.join(SOURCES)}." if unknown
                         else f"--num_workers must be integers >= 1, got {_NUM_WORKERS.value}.")
  device = pick_device(_DEVICE.value)
  steps_per_repeat = _STEPS_PER_REPEAT.value or (1 if device.platform == "cpu" else 20)
  print("\n".join(host_lines(device)), flush=True)
  warn_if_busy()
  started = time.perf_counter()

  config = gmvq_cifar10.get_config()
  config.batch_size = batch_size
  config.quantizer.kmeans_init = False  # The step's cost does not depend on the initial codebook.
  runner = step_timing.JaxRunner(config, device, batch_size)
  print(f"train step B={batch_size}: setup {runner.setup_s:.1f}s ({runner.setup_note})", flush=True)
  for _ in range(warmup):
    runner.step()
  runner.sync()
  step_s = [step_timing.time_repeat(runner, steps_per_repeat)]

  measurements = [(s, w) for s in _SOURCES.value for w in worker_counts]
  # Step repeats are spread between the pipeline measurements, so load drift hits both.
  step_after = set(np.linspace(0, len(measurements) - 1, max(step_repeats - 1, 0)).round().astype(int))
  rows, index = [], 0
  with tempfile.TemporaryDirectory(prefix="gmvq-input-bench-") as workdir:
    for source in _SOURCES.value:
      with open_source(source, num_images, os.path.join(workdir, source)) as (label, dataset):
        for num_workers in worker_counts:
          row = PipelineTiming(label, num_workers, batch_size)
          row.batch_s.append(time_pipeline(dataset, batch_size, device, num_workers=num_workers,
                                           warmup=warmup, steps=steps))
          if fed_steps:
            row.fed_step_ms = time_fed_step(runner, dataset, batch_size, device, num_workers=num_workers,
                                            warmup=min(warmup, 1), steps=fed_steps)
          rows.append(row)
          print(f"  {label}, num_workers={num_workers}: {row.ms_per_batch:.1f} ms/batch, "
                f"{row.images_per_s:.0f} images/s" + (f"; fed step {row.fed_step_ms:.1f} ms"
                                                      if fed_steps else ""), flush=True)
          if index in step_after:
            step_s.append(step_timing.time_repeat(runner, steps_per_repeat))
          index += 1
  step_ms = 1e3 * statistics.median(step_s)
  gpu_rate = _GPU_STEP_BATCH.value / (_GPU_STEP_MS.value / 1e3)
  gpu_step = (f"a {_GPU_STEP_MS.value:g} ms step of batch {_GPU_STEP_BATCH.value} "
              f"({gpu_rate:.0f} images/s)")

  print()
  print(f"Input pipeline (TrainIterator, prefetch {pipeline.DEFAULT_PREFETCH}, batches placed on "
        f"{device.platform}) against the GM-VQ CIFAR10 train step, batch {batch_size}, "
        f"{IMAGE_SIZE}x{IMAGE_SIZE}x3 images.\nPipeline: {steps} batches after {warmup} warm-up; step: "
        f"median of {len(step_s)} repeats x {steps_per_repeat} step(s). keeps up: ms/batch <= the "
        f"step's; GPU-sized: images/s >= {gpu_step}."
        + (f" fed ms/step: the step fed by the pipeline ({fed_steps} steps; about the step's ms "
           "when the pipeline keeps up)." if fed_steps else ""))
  print("\n".join(format_table(rows, step_ms, gpu_rate, batch_size)))
  print("\n".join(verdicts(rows, gpu_rate, gpu_step)))
  if any(row.source == "tfds (mock)" for row in rows):
    print("tfds (mock): tfds.data_source through tfds.testing.mock_data, which draws random records; "
          "it times gmvq_jax's TFDS path, not ArrayRecord file reads or PNG decoding "
          "(--tfds_data_dir times a prepared cifar10).")
  print("\n".join(host_lines(device)))
  warn_if_busy()
  print(f"Total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
  app.run(main)
