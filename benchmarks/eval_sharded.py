"""Times evaluating the GM-VQ demo's test split on 4 (fake CPU) devices against 1.

`python -m benchmarks.eval_sharded [--repeats=5] [--smoke]`. The same
`eval_lib.evaluate` runs with `parallelism=jit` on one device and with
`shard_map` over every device, in alternation; it prints the median time of
each, their ratio, and the largest relative difference of their figures.
Without an XLA_FLAGS device count it asks XLA for 4 host devices, which
share the machine's cores: the comparison is meaningful on an idle machine.
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=4").strip()

import platform  # pylint: disable=g-import-not-at-top,wrong-import-position
import statistics
import time

from absl import app
from absl import flags
import jax

from configs import gmvq_demo
from gmvq_jax import data
from gmvq_jax import eval_lib
from gmvq_jax import parallel
from gmvq_jax import train_lib

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed evaluations of the split per device count.")
_SMOKE = flags.DEFINE_bool("smoke", False, "The demo's :smoke config (32 test images): a check"
                           " that the script runs, not a measurement.")


def host_line() -> str:
  cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
  line = (f"host: {platform.machine()}, usable cores {cores}, load average {load:.2f}"
          " (1 min, all processes)")
  if load > cores:
    line += "\nWARNING: other processes compete for the CPU; these times are not meaningful."
  return line


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = gmvq_demo.get_config("smoke" if _SMOKE.value else None)
  config.quantizer.kmeans_init = False  # The codebook's values do not change the time.
  dataset = data.from_config(config)
  state = train_lib.create_train_state(config, jax.random.key(0), dataset)
  devices = jax.devices()
  strategies = {1: parallel.make("jit", devices[:1]), len(devices): parallel.make("shard_map")}
  print(host_line())
  print(f"devices: {len(devices)} x {devices[0].platform}; jax {jax.__version__}")
  print(f"config: configs/gmvq_demo.py{':smoke' if _SMOKE.value else ''}, test split of"
        f" {dataset.num_eval_examples} images, eval_batch_size {config.eval_batch_size}")
  step_fns = {n: eval_lib.make_eval_fn(config, s) for n, s in strategies.items()}
  figures, times = {}, {n: [] for n in strategies}
  for n, step_fn in step_fns.items():  # Compiles; not timed.
    figures[n], _ = eval_lib.evaluate(config, state, dataset, step_fn=step_fn)
  for _ in range(_REPEATS.value):  # Alternating, so that load drifts hit both alike.
    for n, step_fn in step_fns.items():
      started = time.perf_counter()
      eval_lib.evaluate(config, state, dataset, step_fn=step_fn)
      times[n].append(time.perf_counter() - started)
  print(f"\n{'devices':>7}  {'mode':<9}  {'median s':>8}  {'images/s':>8}")
  medians = {}
  for n, strategy in strategies.items():
    medians[n] = statistics.median(times[n])
    print(f"{n:>7}  {strategy.mode:<9}  {medians[n]:8.3f}"
          f"  {dataset.num_eval_examples / medians[n]:8.0f}")
  one, many = medians[1], medians[len(devices)]
  print(f"\nratio ({len(devices)} devices / 1 device): {many / one:.2f};"
        f" {len(devices)} devices not slower: {'yes' if many <= one else 'NO'}")
  difference = max(abs(figures[len(devices)][k] - v) / max(abs(v), 1e-12)
                   for k, v in figures[1].items())
  print(f"largest relative difference of the figures: {difference:.1e}")


if __name__ == "__main__":
  app.run(main)
