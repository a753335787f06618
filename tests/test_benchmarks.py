"""Smoke tests of the benchmark scripts: they run end to end at tiny sizes and print sound tables.

Speeds are not asserted (they are measured on an idle machine, not in tests);
what is checked is that every requested row is there and its columns agree.
"""

import os
import subprocess
import sys

from absl.testing import absltest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_LABELS = {"embedded": "embedded", "npz": "npz", "folder": "folder (png)",
                 "folder_cached": "folder cached", "tfds": "tfds (mock)"}


def run_benchmark(module, *args):
  """Runs `python -m module args` in the repository root; returns stdout (stderr on failure)."""
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
  if result.returncode:
    raise AssertionError(f"{module} exited with {result.returncode}:\n{result.stderr[-4000:]}")
  return result.stdout


def table_rows(stdout):
  """The rows under the input-pipeline table's header, as lists of fields."""
  lines = stdout.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("source ")) + 2
  rows = []
  for line in lines[start:]:
    if not line.strip() or line.startswith(" "):
      break
    rows.append([line[:14].strip()] + line[14:].split())
  return rows


def rate_matches(images_per_s, ms, batch_size):
  """images/s == batch_size / ms, up to the printed rounding (whole images/s, 0.01 ms)."""
  low, high = batch_size / ((ms + 0.005) / 1e3), batch_size / (max(ms - 0.005, 1e-9) / 1e3)
  return low - 0.5 <= images_per_s <= high + 0.5


class TrainStepBenchmarkTest(absltest.TestCase):

  def test_the_unguarded_step_computes_the_guarded_update(self):
    """The guard-cost variant differs only by the guard: on finite steps the states agree exactly."""
    import functools  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from benchmarks import step_timing  # pylint: disable=g-import-not-at-top
    from configs import gmvq_demo  # pylint: disable=g-import-not-at-top
    from gmvq_jax import train_lib  # pylint: disable=g-import-not-at-top

    config = gmvq_demo.get_config("smoke")
    state = train_lib.create_train_state(config, jax.random.key(0), step_timing.RandomImages())
    images = step_timing.RandomImages().train_batch(0, config.batch_size)
    # A fresh partial for each: jit caches traces by function, and the guard is chosen at trace time.
    step = lambda: jax.jit(functools.partial(train_lib.train_step, config=config))
    guarded, metrics = step()(state, images, jax.random.key(1))
    with step_timing.without_nonfinite_guard():
      unguarded, plain_metrics = step()(state, images, jax.random.key(1))
    self.assertTrue(metrics["nonfinite"])  # The library's step checks...
    self.assertEqual(plain_metrics["nonfinite"], {})  # ...the variant does not.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(guarded), jax.device_get(unguarded))

  def test_quick_jax_only_run_reports_the_guard_cost(self):
    stdout = run_benchmark("benchmarks.train_step", "--quick", "--skip_torch", "--device=cpu")
    # Table rows: variant, batch, setup s, ms/step, range, images/s[, speed-up].
    rows = [line.split() for line in stdout.splitlines()
            if line.startswith("jax") and line.split()[1].isdigit()]
    self.assertEqual([row[0] for row in rows], ["jax", "jax/no-guard"])
    self.assertIn("B=32: the non-finite guard costs", stdout)


class InputPipelineBenchmarkTest(absltest.TestCase):

  def test_quick_run_prints_a_row_per_source_and_worker_count(self):
    stdout = run_benchmark(
        "benchmarks.input_pipeline", "--quick", "--device=cpu", "--batch_size=8", "--steps=2",
        "--num_images=40", "--num_workers=1,3", "--step_repeats=2", "--fed_steps=1")
    rows = table_rows(stdout)
    expected = [(label, workers) for label in SOURCE_LABELS.values() for workers in (1, 3)]
    self.assertEqual([(row[0], int(row[1])) for row in rows], expected)
    step_ms = {row[4] for row in rows}
    self.assertLen(step_ms, 1)  # One step, timed once for the whole table.
    gpu_rate = 256 / 0.020
    for source, _, images_per_s, ms_per_batch, step, step_images, keeps_up, gpu, fed in rows:
      images_per_s, ms_per_batch, step = float(images_per_s), float(ms_per_batch), float(step)
      self.assertGreaterEqual(ms_per_batch, 0, source)  # A fast source rounds to 0.00 ms.
      self.assertTrue(rate_matches(images_per_s, ms_per_batch, 8), (source, images_per_s, ms_per_batch))
      self.assertTrue(rate_matches(float(step_images), step, 8), (step_images, step))
      self.assertEqual(keeps_up, "yes" if ms_per_batch <= step else "NO", source)
      self.assertEqual(gpu, "yes" if images_per_s >= gpu_rate else "NO", source)
      self.assertGreater(float(fed), 0, source)
    for label in SOURCE_LABELS.values():
      self.assertIn(f"  {label}: ", stdout)  # Its verdict line.

  def test_an_unknown_source_is_refused(self):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.input_pipeline", "--sources=embedded,parquet"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("Unknown source 'parquet'", result.stderr)


class ConvImplBenchmarkTest(absltest.TestCase):

  def test_quick_run_prints_every_layer_and_both_networks(self):
    from benchmarks import conv_impl  # pylint: disable=g-import-not-at-top
    stdout = run_benchmark("benchmarks.conv_impl", "--quick")
    names = [name for name, *_ in conv_impl.LAYERS] + ["encoder", "decoder"]
    rows = {line[:22].strip(): line[22:].split() for line in stdout.splitlines()
            if line[:22].strip() in names}
    self.assertEqual(sorted(rows), sorted(names))
    for name, (xla_ms, matmul_ms, ratio) in rows.items():
      expected = float(xla_ms) / float(matmul_ms)
      self.assertAlmostEqual(float(ratio.rstrip("x")), expected, delta=0.01 + 0.02 * expected,
                             msg=name)


class EvalShardedBenchmarkTest(absltest.TestCase):

  def test_smoke_run_prints_one_row_per_device_count(self):
    stdout = run_benchmark("benchmarks.eval_sharded", "--smoke", "--repeats=1")
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("devices  mode"))
    rows = [line.split() for line in lines[start + 1:start + 3]]
    self.assertEqual([(row[0], row[1]) for row in rows], [("1", "jit"), ("4", "shard_map")])
    one, four = float(rows[0][2]), float(rows[1][2])
    ratio_line = next(line for line in lines if line.startswith("ratio"))
    ratio = float(ratio_line.split(":")[1].split(";")[0])
    self.assertAlmostEqual(ratio, four / one, delta=0.02 + 0.001 / one)  # Medians print rounded.
    if abs(ratio - 1) > 0.005:  # The verdict is of the unrounded ratio.
      self.assertTrue(ratio_line.endswith("yes" if ratio < 1 else "NO"), ratio_line)
    difference = next(line for line in lines if line.startswith("largest relative difference"))
    self.assertLess(float(difference.split(":")[1]), 1e-5)


if __name__ == "__main__":
  absltest.main()
