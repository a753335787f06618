"""End to end through the absl launchers, as a user runs them, on 4 fake devices."""

import json
import logging as std_logging
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from PIL import Image

from gmvq_jax import evaluation
from gmvq_jax import metric_writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ), timeout=600)


class LaunchTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def test_train_then_evaluate(self):
    train = _run("launch.train", "--config=configs/gmvq_demo.py:smoke",
                 f"--workdir={self.workdir}", "--config.parallelism=pmap")
    self.assertEqual(train.returncode, 0, train.stderr[-3000:])
    self.assertIn("steps/s", train.stdout)
    records = metric_writers.read_metrics(self.workdir)
    self.assertEqual([r["step"] for r in records if r["split"] == "train"], [2, 4, 6])
    self.assertEqual([r["split"] for r in records][-1], "test")
    self.assertTrue(os.listdir(os.path.join(self.workdir, "tensorboard")))

    evaluate = _run("launch.evaluate", f"--workdir={self.workdir}")
    self.assertEqual(evaluate.returncode, 0, evaluate.stderr[-3000:])
    # The first minute says what it is doing, in order.
    said = [train.stderr.find(line) for line in (
        "Loading the 'embedded' dataset", "Initialising the model", "k-means",
        "Compiling the train step")]
    self.assertNotIn(-1, said, train.stderr[-3000:])
    self.assertEqual(said, sorted(said))
    # Expected noise is silenced: the TPU probe and Orbax's read-only notices.
    for output in (train.stderr, evaluate.stderr):
      self.assertNotIn("read only", output)
      self.assertNotIn("Unable to initialize backend", output)
    with open(os.path.join(self.workdir, "eval.json")) as f:
      figures = json.load(f)
    for key in evaluation.EVAL_KEYS:
      self.assertIn(key, figures)
    self.assertEqual(figures["step"], 6)
    self.assertGreater(figures["psnr"], 5.0)
    self.assertBetween(figures["code_usage"], 1 / 64, 1.0)
    self.assertBetween(figures["hard_perplexity"], 1.0, 64.0)
    # The same numbers as the training run's final evaluation: deterministic.
    self.assertAlmostEqual(figures["mse"], records[-1]["mse"], places=6)
    with Image.open(os.path.join(self.workdir, "reconstructions.png")) as picture:
      width, height = picture.size
    self.assertGreater(width, height)  # Two rows of 16 images.

    again = _run("launch.evaluate", f"--workdir={self.workdir}")
    self.assertEqual(again.returncode, 0, again.stderr[-3000:])
    with open(os.path.join(self.workdir, "eval.json")) as f:
      self.assertEqual(json.load(f), figures)

  def test_bad_override_fails_fast_with_field_name(self):
    result = _run("launch.train", "--config=configs/gmvq_demo.py:smoke",
                  f"--workdir={self.workdir}", "--config.quantizer.num_codes=1")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("config.quantizer.num_codes=1", result.stderr)
    self.assertFalse(os.path.exists(os.path.join(self.workdir, "checkpoints")))

  def test_print_config_prints_every_field_and_writes_nothing(self):
    workdir = os.path.join(self.workdir, "never")
    for module, config in (("launch.train", "configs/gmvq_demo.py:smoke"),
                           ("launch.compare", "configs/compare_demo.py:smoke")):
      result = _run(module, f"--config={config}", "--print_config", f"--workdir={workdir}",
                    "--config.seed=7" if module == "launch.train" else "--config.seeds=(3,)")
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      self.assertIn("seed: 7" if module == "launch.train" else "- 3", result.stdout)
      self.assertIn("config_version: 2", result.stdout)
      self.assertFalse(os.path.exists(workdir))
    result = _run("launch.train", "--config=configs/gmvq_demo.py:smoke")  # No --workdir.
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("--workdir is required", result.stderr)

  def test_the_probe_for_absent_backends_is_not_logged(self):
    from launch import common  # pylint: disable=g-import-not-at-top
    quiet = common._QuietDependencies()  # pylint: disable=protected-access

    def record(level, path, message):
      return std_logging.LogRecord("jax", level, path, 1, message, None, None)

    probe = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
    self.assertFalse(quiet.filter(record(std_logging.INFO, "/x/jax/_src/xla_bridge.py", probe)))
    self.assertTrue(quiet.filter(record(std_logging.WARNING, "/x/jax/_src/xla_bridge.py", probe)))
    self.assertTrue(quiet.filter(record(std_logging.INFO, "/x/gmvq_jax/train_lib.py", probe)))
    read_only = "Given directory is read only=/w/checkpoints"
    self.assertFalse(quiet.filter(record(std_logging.WARNING, "/x/orbax/checkpoint_manager.py", read_only)))
    self.assertTrue(quiet.filter(record(std_logging.WARNING, "/x/orbax/checkpoint_manager.py", "other")))

  def test_ctrl_c_ends_in_one_line_that_says_what_a_rerun_does(self):
    script = ("from launch import common\n"
              "with common.user_errors({}):\n"
              "  raise KeyboardInterrupt\n")
    for rerun, expected in ((None, "resume from the last checkpoint."),
                            ("'Rerun: downloads are reused.'", "Rerun: downloads are reused.")):
      result = subprocess.run(
          [sys.executable, "-c", script.format(rerun or "")], cwd=REPO, capture_output=True,
          text=True, env=dict(os.environ), timeout=600)
      self.assertEqual(result.returncode, 130, result.stderr)
      self.assertNotIn("Traceback", result.stderr)
      line = result.stderr.strip().splitlines()[-1]
      self.assertTrue(line.startswith("error: Interrupted (Ctrl-C) while running;"), line)
      self.assertTrue(line.endswith(expected), line)

  def test_evaluate_without_checkpoint(self):
    result = _run("launch.evaluate", f"--workdir={self.workdir}")
    self.assertNotEqual(result.returncode, 0)
    self.assertIn("No checkpoint", result.stderr)


if __name__ == "__main__":
  absltest.main()
