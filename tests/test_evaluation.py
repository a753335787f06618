"""evaluation.evaluate_workdir and launch.evaluate on the val and the test split of a saved run.

The run trains on an .npz file whose last tenth of 'train' is the val split,
so the val and test splits differ in size and content.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from etils import epath
import numpy as np

from gmvq_jax import evaluation
from gmvq_jax import metric_writers
from gmvq_jax import train_lib
import launch_utils
import tiny_configs

NUM_TRAIN_FILE_IMAGES = 40  # The last 40 // 10 = 4 are the val split.
NUM_VAL = 4
NUM_TEST = 12  # tiny_config's num_eval_examples.


class EvaluateWorkdirTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    rng = np.random.default_rng(0)
    path = os.path.join(cls.root, "images.npz")
    np.savez(path, train=rng.integers(0, 256, (NUM_TRAIN_FILE_IMAGES, 16, 16, 3), np.uint8),
             test=rng.integers(0, 256, (NUM_TEST, 16, 16, 3), np.uint8))
    cls.workdir = os.path.join(cls.root, "run")
    train_lib.train_and_evaluate(
        tiny_configs.tiny_config(dataset="npz", data_dir=path, parallelism="jit", num_steps=3),
        cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _copy(self) -> str:
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    for name in ("eval.json", "eval_val.json", "reconstructions.png", "reconstructions_val.png"):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
    return workdir

  def _read_json(self, path):
    with open(path) as f:
      return json.load(f)

  def test_val_and_test_write_their_own_files(self):
    workdir = self._copy()
    self.assertEqual(evaluation.output_paths(workdir),  # epath.Path, so gs:// works too.
                     (epath.Path(workdir, "eval.json"), epath.Path(workdir, "reconstructions.png")))
    self.assertEqual(evaluation.output_paths(workdir, "val"),
                     (epath.Path(workdir, "eval_val.json"),
                      epath.Path(workdir, "reconstructions_val.png")))
    test = evaluation.evaluate_workdir(workdir, num_images=4)  # split="test" by default.
    self.assertEqual(self._read_json(os.path.join(workdir, "eval.json")),
                     json.loads(json.dumps(test)))
    self.assertEqual(test["num_examples"], NUM_TEST)
    self.assertFalse(os.path.exists(os.path.join(workdir, "eval_val.json")))
    with open(os.path.join(workdir, "eval.json"), "rb") as f:
      test_bytes = f.read()

    val = evaluation.evaluate_workdir(workdir, split="val", num_images=4)
    self.assertEqual(self._read_json(os.path.join(workdir, "eval_val.json")),
                     json.loads(json.dumps(val)))
    self.assertEqual(val["num_examples"], NUM_VAL)
    self.assertEqual(val["step"], test["step"])
    for key in evaluation.EVAL_KEYS:
      self.assertIn(key, val)
    self.assertNotEqual(val["mse"], test["mse"])  # Other images.
    self.assertTrue(os.path.exists(os.path.join(workdir, "reconstructions_val.png")))
    self.assertTrue(os.path.exists(os.path.join(workdir, "reconstructions.png")))
    with open(os.path.join(workdir, "eval.json"), "rb") as f:
      self.assertEqual(f.read(), test_bytes)  # Untouched by the val evaluation.
    # Deterministic, and the same as the training run's own final figures.
    self.assertEqual(evaluation.evaluate_workdir(workdir, split="val", num_images=4), val)
    records = metric_writers.read_metrics(workdir)
    for split, figures in (("val", val), ("test", test)):
      final = [r for r in records if r["split"] == split]
      if final:  # The training loop records its final val evaluation too.
        self.assertAlmostEqual(figures["mse"], final[-1]["mse"], places=6)

  def test_bad_split_fails_before_anything_is_read_or_written(self):
    workdir = self._copy()
    before = tiny_configs.snapshot(workdir)
    for split in ("train", "validation", "TEST"):
      with self.assertRaisesRegex(ValueError, r"Unknown evaluation split .*'val', 'test'"):
        evaluation.evaluate_workdir(workdir, split=split)
    self.assertEqual(tiny_configs.snapshot(workdir), before)
    with self.assertRaisesRegex(ValueError, "Unknown evaluation split"):  # Not FileNotFoundError.
      evaluation.evaluate_workdir(os.path.join(workdir, "missing"), split="train")

  def test_launcher_split_flag(self):
    workdir = self._copy()
    bad = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}", "--split=train"],
        cwd=launch_utils.REPO, env=launch_utils.child_env(), capture_output=True, text=True,
        timeout=300)
    self.assertNotEqual(bad.returncode, 0)
    self.assertIn("--split", bad.stderr)
    self.assertIn("val|test", bad.stderr)
    self.assertEqual(sorted(os.listdir(workdir)), sorted(os.listdir(self.workdir)))

    good = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", f"--workdir={workdir}", "--split=val"],
        cwd=launch_utils.REPO, env=launch_utils.child_env(), capture_output=True, text=True,
        timeout=600)
    self.assertEqual(good.returncode, 0, good.stderr[-3000:])
    self.assertIn(os.path.join(workdir, "eval_val.json"), good.stdout)
    self.assertEqual(self._read_json(os.path.join(workdir, "eval_val.json"))["num_examples"],
                     NUM_VAL)
    self.assertFalse(os.path.exists(os.path.join(workdir, "eval.json")))


if __name__ == "__main__":
  absltest.main()
