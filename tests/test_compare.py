"""The comparison: every method through the harness, the table, the plots, resuming."""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from PIL import Image

from configs import compare_celeba
from configs import compare_cifar10
from configs import compare_demo
from gmvq_jax import comparison
from gmvq_jax import config_checks
from gmvq_jax import methods
from gmvq_jax import train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_config():
  config = compare_demo.get_config("smoke")
  config.train.parallelism = "jit"
  return config


class CompareTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.rows = comparison.compare(_smoke_config(), cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_every_method_has_a_real_row(self):
    self.assertEqual([row["method"] for row in self.rows], list(methods.NAMES))
    for row in self.rows:
      name = row["method"]
      self.assertEqual(row["steps"], 2, name)
      self.assertGreater(row["psnr"], 5.0, name)
      self.assertAlmostEqual(row["mse_x1e3"], 1e3 * row["mse"], places=9)
      self.assertBetween(row["code_usage"], 0.0, 1.0, name)
      self.assertGreaterEqual(row["hard_perplexity"], 1.0 - 1e-6, name)
      self.assertGreater(row["train_seconds"], 0.0, name)
      # A real run: its own metrics and checkpoint exist.
      run_dir = os.path.join(self.workdir, comparison.RUNS_SUBDIR, name)
      self.assertTrue(os.path.isdir(os.path.join(run_dir, "checkpoints", "2")), name)
      self.assertTrue(os.path.exists(os.path.join(run_dir, "metrics.jsonl")), name)
    gq_row = self.rows[methods.NAMES.index("gq")]
    self.assertIn("psnr_before_conversion", gq_row)
    self.assertTrue(os.path.exists(os.path.join(self.workdir, "runs", "gq", "gq_report.json")))

  def test_table_files(self):
    with open(os.path.join(self.workdir, "table.csv"), newline="") as f:
      records = list(csv.reader(f))
    self.assertEqual(records[0][0], "method")
    self.assertEqual([r[0] for r in records[1:]], list(methods.NAMES))
    self.assertAlmostEqual(float(records[1][1]), self.rows[0]["mse_x1e3"], places=6)
    with open(os.path.join(self.workdir, "table.md")) as f:
      markdown = f.read().splitlines()
    self.assertEqual(len(markdown), 2 + len(methods.NAMES))
    self.assertTrue(markdown[0].startswith("| method | MSE x1e-3 | PSNR dB |"))
    for name in ("curves.png", "scatter.png"):
      with Image.open(os.path.join(self.workdir, name)) as picture:
        self.assertGreater(picture.size[0], 300, name)

  def test_rerun_skips_finished_methods(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    with mock.patch.object(train_lib, "train_and_evaluate",
                           side_effect=AssertionError("a finished method was retrained")):
      rows = comparison.compare(_smoke_config(), workdir)
    self.assertEqual(json.dumps(rows), json.dumps(self.rows))
    with open(os.path.join(workdir, "table.csv")) as f, \
         open(os.path.join(self.workdir, "table.csv")) as g:
      self.assertEqual(f.read(), g.read())

  def test_changed_config_of_a_finished_method_is_refused(self):
    config = _smoke_config()
    config.methods = ("fsq",)
    config.quantizers.fsq.levels = (4, 3)
    with self.assertRaisesRegex(config_checks.ConfigError, "another config for 'fsq'"):
      comparison.compare(config, self.workdir)

  def test_bad_method_fails_before_anything_runs(self):
    workdir = os.path.join(tempfile.mkdtemp(), "new")
    for methods_field, message in ((("vqvae", "vqgan"), "'vqgan'.*known methods: vqvae"),
                                   (("fsq", "fsq"), "twice"), ((), "empty")):
      config = _smoke_config()
      config.methods = methods_field
      with mock.patch.object(train_lib, "train_and_evaluate",
                             side_effect=AssertionError("trained")):
        with self.assertRaisesRegex(config_checks.ConfigError, message):
          comparison.compare(config, workdir)
    config = _smoke_config()
    config.quantizers.lfq.num_bits = 0
    with self.assertRaisesRegex(config_checks.ConfigError, "method 'lfq'.*num_bits=0"):
      comparison.compare(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_paper_compare_configs_are_valid(self):
    for module in (compare_cifar10, compare_celeba):
      for variant in (None, "smoke"):
        config = module.get_config(variant)
        self.assertEqual(comparison.check(config, 4 if variant else 1), list(methods.NAMES))
        self.assertEqual(config.train.batch_size % 4, 0)

  def test_launcher(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "launch.compare", "--config=configs/compare_demo.py:smoke",
         f"--workdir={workdir}", "--config.methods=('fsq', 'vqvae')"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("| fsq |", result.stdout)
    self.assertIn("| vqvae |", result.stdout)
    bad = subprocess.run(
        [sys.executable, "-m", "launch.compare", "--config=configs/compare_demo.py:smoke",
         f"--workdir={workdir}", "--config.methods=('vqgan',)"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    self.assertEqual(bad.returncode, 1)
    self.assertIn("known methods", bad.stderr)


if __name__ == "__main__":
  absltest.main()
