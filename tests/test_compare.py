"""The comparison: the protocol (lr tuned on val, seeds), the table, the plots, resuming."""

import copy
import csv
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
from PIL import Image

from configs import compare_celeba
from configs import compare_cifar10
from configs import compare_demo
from gmvq_jax import comparison
from gmvq_jax import comparison_report
from gmvq_jax import config_checks
from gmvq_jax import faults
from gmvq_jax import metric_writers
from gmvq_jax import methods
from gmvq_jax import train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The methods trained for real: GM-VQ, GQ (conversion) and a baseline with
# its own number of steps. `:smoke` gives 2 seeds and 2 lr multipliers.
REAL_METHODS = ("gmvq", "gq", "fsq")
_SMOKE_LR = compare_demo.get_config("smoke").train.optimizer.peak_lr


def _smoke_config(names=REAL_METHODS):
  config = compare_demo.get_config("smoke")
  config.train.parallelism = "jit"
  config.methods = names
  return config


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _run_dir(workdir, name, multiplier, seed):
  return os.path.join(workdir, comparison.RUNS_SUBDIR, name,
                      comparison.run_dir_name(multiplier, seed))


class CompareTest(absltest.TestCase):
  """Three methods trained for real with the `:smoke` protocol."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.config = _smoke_config()
    cls.config.method_steps.fsq = 3
    cls.rows = comparison.compare(cls.config, cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_every_method_has_real_runs_at_the_chosen_lr(self):
    self.assertEqual([row["method"] for row in self.rows], list(REAL_METHODS))
    for row in self.rows:
      name = row["method"]
      self.assertEqual(row["num_seeds"], 2, name)
      self.assertEqual([r["seed"] for r in row["per_seed"]], [0, 1], name)
      self.assertIn(row["lr_multiplier"], (0.5, 1.0), name)
      self.assertAlmostEqual(row["peak_lr"],
                             row["lr_multiplier"] * self.config.train.optimizer.peak_lr)
      self.assertGreater(row["psnr_mean"], 5.0, name)
      self.assertAlmostEqual(row["mse_x1e3_mean"], 1e3 * row["mse_mean"], places=9)
      self.assertBetween(row["code_usage_mean"], 0.0, 1.0, name)
      self.assertGreaterEqual(row["hard_perplexity_mean"], 1.0 - 1e-6, name)
      self.assertGreater(row["train_seconds_mean"], 0.0, name)
      # Tuning: seed 0 at both multipliers; seed 1 only at the chosen one.
      runs = sorted(entry for entry in os.listdir(os.path.join(self.workdir, "runs", name))
                    if entry != comparison.RESULT_NAME)
      other = 0.5 if row["lr_multiplier"] == 1.0 else 1.0
      self.assertEqual(runs, sorted([comparison.run_dir_name(0.5, 0),
                                     comparison.run_dir_name(1.0, 0),
                                     comparison.run_dir_name(row["lr_multiplier"], 1)]))
      self.assertFalse(os.path.exists(_run_dir(self.workdir, name, other, 1)))
      for seed_row in row["per_seed"]:  # Real runs: their own metrics, checkpoint, result.
        run_dir = _run_dir(self.workdir, name, row["lr_multiplier"], seed_row["seed"])
        self.assertTrue(os.path.isdir(os.path.join(run_dir, "checkpoints", str(row["steps"]))))
        with open(os.path.join(run_dir, comparison.RESULT_NAME)) as f:
          self.assertEqual(json.load(f)["row"], seed_row)
    gq_row = self.rows[REAL_METHODS.index("gq")]
    self.assertIn("psnr_before_conversion_mean", gq_row)
    for seed in (0, 1):
      self.assertTrue(os.path.exists(os.path.join(
          _run_dir(self.workdir, "gq", gq_row["lr_multiplier"], seed), "gq_report.json")))

  def test_method_steps_overrides_the_named_method_only(self):
    steps = {row["method"]: row["steps"] for row in self.rows}
    self.assertEqual(steps, dict(gmvq=2, gq=2, fsq=3))
    for name, row in zip(REAL_METHODS, self.rows):
      for entry in row["tuning"]:
        with open(os.path.join(_run_dir(self.workdir, name, entry["lr_multiplier"], 0),
                               comparison.RESULT_NAME)) as f:
          self.assertEqual(json.load(f)["config"]["num_steps"], steps[name], name)

  def test_mean_and_std_are_numpys_over_the_seeds(self):
    for row in self.rows:
      keys = [k for k, v in row["per_seed"][0].items()
              if k not in comparison.CONSTANT_KEYS and isinstance(v, float)]
      self.assertContainsSubset(["mse", "mse_x1e3", "psnr", "ssim", "perplexity",
                                 "hard_perplexity", "code_usage", "train_seconds"], keys)
      for key in keys:
        values = [seed_row[key] for seed_row in row["per_seed"]]
        self.assertEqual(row[f"{key}_mean"], float(np.mean(values)), key)
        self.assertEqual(row[f"{key}_std"], float(np.std(values)), key)
      with open(os.path.join(self.workdir, "runs", row["method"], comparison.RESULT_NAME)) as f:
        self.assertEqual(json.load(f)["row"], json.loads(json.dumps(row)))
    records = _read_csv(os.path.join(self.workdir, "table.csv"))
    for record, row in zip(records, self.rows):
      for key in ("mse_x1e3", "psnr", "hard_perplexity"):
        values = [seed_row[key] for seed_row in row["per_seed"]]
        self.assertAlmostEqual(float(record[f"{key}_mean"]), np.mean(values), places=9)
        self.assertAlmostEqual(float(record[f"{key}_std"]), np.std(values), places=9)

  def test_chosen_lr_has_the_lowest_final_val_mse(self):
    for row in self.rows:
      val_mses = []
      for multiplier in (0.5, 1.0):
        records = metric_writers.read_metrics(_run_dir(self.workdir, row["method"], multiplier, 0))
        final = [r for r in records if r["split"] == "val" and r["step"] == row["steps"]]
        val_mses.append(final[-1]["mse"])
      self.assertEqual([entry["val_mse"] for entry in row["tuning"]], val_mses)
      self.assertEqual(row["lr_multiplier"], (0.5, 1.0)[int(np.argmin(val_mses))])

  def test_table_files(self):
    records = _read_csv(os.path.join(self.workdir, "table.csv"))
    self.assertEqual(list(records[0])[:3], ["method", "mse_x1e3_mean", "mse_x1e3_std"])
    self.assertContainsSubset(["peak_lr", "num_seeds", "steps", "lr_multiplier"], records[0])
    self.assertEqual([r["method"] for r in records], list(REAL_METHODS))
    self.assertEqual([int(r["steps"]) for r in records], [2, 2, 3])
    self.assertEqual({r["num_seeds"] for r in records}, {"2"})
    with open(os.path.join(self.workdir, "table.md")) as f:
      markdown = f.read().splitlines()
    self.assertEqual(len(markdown), 2 + len(REAL_METHODS))
    self.assertTrue(markdown[0].startswith("| method | MSE x1e-3 | PSNR dB |"))
    self.assertIn("chosen peak lr", markdown[0])
    row = self.rows[0]
    self.assertIn(f"| {row['mse_x1e3_mean']:.2f} ± {row['mse_x1e3_std']:.2f} |", markdown[2])
    tuning = _read_csv(os.path.join(self.workdir, "tuning.csv"))
    self.assertEqual([(r["method"], float(r["lr_multiplier"])) for r in tuning],
                     [(name, m) for name in REAL_METHODS for m in (0.5, 1.0)])
    for record in tuning:
      row = self.rows[REAL_METHODS.index(record["method"])]
      self.assertEqual(record["chosen"] == "True",
                       float(record["lr_multiplier"]) == row["lr_multiplier"])
    with open(os.path.join(self.workdir, "tuning.md")) as f:
      tuning_md = f.read()
    self.assertEqual(tuning_md.count("**"), 2 * len(REAL_METHODS))
    # Run time: every method's 2 tuning runs and its second seed; the total is their sum.
    for row in self.rows:
      with open(os.path.join(_run_dir(self.workdir, row["method"], row["lr_multiplier"], 1),
                             comparison.RESULT_NAME)) as f:
        seed_1 = json.load(f)
      seeds = [entry["seconds"] for entry in row["tuning"]] + [seed_1["seconds"]]
      self.assertEqual((row["num_runs"], row["untimed_runs"]), (3, 0))
      self.assertAlmostEqual(row["run_seconds"], sum(seeds))
      # A run's time holds its training (and GQ's conversion to tokens).
      self.assertGreaterEqual(seed_1["seconds"], row["per_seed"][1]["train_seconds"])
      chosen = [e for e in row["tuning"] if e["chosen"]][0]
      self.assertGreaterEqual(chosen["seconds"], row["per_seed"][0]["train_seconds"])
      self.assertIn(f"| {comparison_report.format_duration(row['run_seconds'])} (3 runs) |",
                    tuning_md)
    total = sum(row["run_seconds"] for row in self.rows)
    self.assertTrue(tuning_md.endswith(
        f"\nAll methods: {comparison_report.format_duration(total)} (9 runs).\n"), tuning_md)
    self.assertEqual(sorted(float(r["seconds"]) for r in tuning),
                     sorted(e["seconds"] for row in self.rows for e in row["tuning"]))
    for name in ("curves.png", "scatter.png"):
      with Image.open(os.path.join(self.workdir, name)) as picture:
        self.assertGreater(picture.size[0], 300, name)

  def test_rerun_skips_finished_runs(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    with mock.patch.object(train_lib, "train_and_evaluate",
                           side_effect=AssertionError("a finished run was retrained")):
      rows = comparison.compare(self.config, workdir)
    self.assertEqual(json.dumps(rows), json.dumps(self.rows))
    for name in ("table.csv", "tuning.csv"):
      with open(os.path.join(workdir, name)) as f, open(os.path.join(self.workdir, name)) as g:
        self.assertEqual(f.read(), g.read())

  def test_results_saved_before_input_workers_existed_still_count(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    for path in glob.glob(os.path.join(workdir, "runs", "*", "*", comparison.RESULT_NAME)):
      with open(path, encoding="utf-8") as f:
        result = json.load(f)
      del result["config"]["input_workers"]  # As written before the field existed.
      with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    config = copy.deepcopy(self.config)
    config.train.input_workers = 3  # Same batches, so the same results.
    with mock.patch.object(train_lib, "train_and_evaluate",
                           side_effect=AssertionError("a finished run was retrained")):
      rows = comparison.compare(config, workdir)
    self.assertEqual(json.dumps(rows), json.dumps(self.rows))

  def test_changed_config_of_a_finished_run_is_refused(self):
    config = _smoke_config(("fsq",))
    config.method_steps.fsq = 3
    config.quantizers.fsq.levels = (4, 3)
    with self.assertRaisesRegex(config_checks.ConfigError, "another config for 'fsq'"):
      comparison.compare(config, self.workdir)

  def test_new_seeds_and_multipliers_train_only_the_new_runs(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    before = {name: row for name, row in zip(REAL_METHODS, self.rows)}
    chosen = before["fsq"]["lr_multiplier"]
    config = _smoke_config(("fsq",))
    config.method_steps.fsq = 3
    config.seeds = (0, 2)  # Seed 1 dropped (its run stays on disk), seed 2 added.
    config.lr_grid = (0.5, 1.0, 2.0)  # x2 added; it diverges here, so the choice stands.
    fake = _FakeTrainer(val={}, diverge=(2.0,))
    with mock.patch.object(train_lib, "train_and_evaluate", side_effect=fake):
      (row,) = comparison.compare(config, workdir)
    self.assertEqual(fake.trained, [(2.0, 0), (chosen, 2)])
    self.assertEqual(row["lr_multiplier"], chosen)
    self.assertEqual([r["seed"] for r in row["per_seed"]], [0, 2])
    self.assertEqual(row["per_seed"][0], before["fsq"]["per_seed"][0])
    self.assertTrue(os.path.isdir(_run_dir(workdir, "fsq", chosen, 1)))
    self.assertEqual([entry["val_mse"] for entry in row["tuning"]],
                     [entry["val_mse"] for entry in before["fsq"]["tuning"]] + [None])
    # A new multiplier that wins moves every seed to it; the earlier runs stay.
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    fake = _FakeTrainer(val={2.0: 1e-4})
    with mock.patch.object(train_lib, "train_and_evaluate", side_effect=fake):
      (row,) = comparison.compare(config, workdir)
    self.assertEqual(fake.trained, [(2.0, 0), (2.0, 2)])
    self.assertEqual((row["lr_multiplier"], row["num_seeds"]), (2.0, 2))
    self.assertTrue(os.path.isdir(_run_dir(workdir, "fsq", chosen, 1)))


class _FakeTrainer:
  """Stands in for train_lib.train_and_evaluate: metrics.jsonl records, no training.

  The val MSE of a run is `val[multiplier]` (default 0.1 + multiplier); its
  test MSE is 1 / (1 + multiplier) + seed / 100, so the lowest test MSE is
  always at the largest multiplier. Multipliers in `diverge` raise
  NonFiniteError; `fail_after` calls, the next one raises RuntimeError.
  Figures hold `ssim` only when it is given (as in runs evaluated before SSIM).
  """

  def __init__(self, *, val, base_lr=_SMOKE_LR, diverge=(), fail_after=None, ssim=None):
    self.val, self.base_lr, self.diverge, self.fail_after = val, base_lr, diverge, fail_after
    self.ssim = ssim
    self.trained = []

  def __call__(self, config, run_dir):
    if self.fail_after is not None and len(self.trained) == self.fail_after:
      raise RuntimeError("interrupted")
    multiplier = round(config.optimizer.peak_lr / self.base_lr, 6)
    self.trained.append((multiplier, config.seed))
    if multiplier in self.diverge:
      raise faults.NonFiniteError("Training step 2 produced non-finite values in: loss.")
    val_mse = self.val.get(multiplier, 0.1 + multiplier)
    test_mse = 1.0 / (1.0 + multiplier) + config.seed / 100
    writer = metric_writers.MetricWriter(run_dir, tensorboard=False)
    figures = lambda mse: dict(mse=mse, psnr=-10 * math.log10(mse), perplexity=3.0 + config.seed,
                               hard_perplexity=2.0 + config.seed, code_usage=0.5,
                               **({} if self.ssim is None else dict(ssim=self.ssim)))
    writer.write(config.num_steps, "train", dict(loss=1.0, recon=val_mse, batch_perplexity=2.0))
    writer.write(config.num_steps, "val", figures(val_mse))
    writer.write(config.num_steps, "test", figures(test_mse))
    writer.close()
    return figures(test_mse)


class ProtocolTest(absltest.TestCase):
  """The protocol with a fake trainer (no compilation): choice, resume, checks."""

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)

  def _compare(self, config, fake):
    with mock.patch.object(train_lib, "train_and_evaluate", side_effect=fake):
      return comparison.compare(config, self.workdir)

  def test_durations_read_as_a_person_would_say_them(self):
    self.assertEqual(comparison_report.format_duration(40.4), "40 s")
    self.assertEqual(comparison_report.format_duration(719), "12 min")
    self.assertEqual(comparison_report.format_duration(3900), "1 h 05 min")
    self.assertEqual(comparison_report.format_duration(36000), "10 h 00 min")

  def test_choose_lr_picks_the_lowest_val_mse(self):
    self.assertEqual(comparison.choose_lr((0.5, 1.0, 2.0), (0.3, 0.1, 0.2)), 1.0)
    self.assertEqual(comparison.choose_lr((0.5, 1.0, 2.0), (0.3, 0.2, 0.1)), 2.0)
    self.assertEqual(comparison.choose_lr((0.5, 1.0, 2.0), (0.2, 0.1, 0.1)), 1.0)  # Tie: first.
    self.assertEqual(comparison.choose_lr((2.0, 1.0), (0.1, 0.1)), 2.0)
    self.assertEqual(comparison.choose_lr((0.5, 1.0, 2.0), (None, float("nan"), 0.9)), 2.0)
    self.assertEqual(comparison.choose_lr((1.0,), (5.0,)), 1.0)
    with self.assertRaisesRegex(ValueError, "no multiplier"):
      comparison.choose_lr((0.5, 1.0), (None, float("inf")))
    with self.assertRaisesRegex(ValueError, "2 multipliers but 1"):
      comparison.choose_lr((0.5, 1.0), (0.1,))

  def test_runs_saved_before_ssim_still_make_a_table(self):
    config = _smoke_config(("vqvae",))
    config.lr_grid = (1.0,)
    config.seeds = (0,)
    (old,) = self._compare(config, _FakeTrainer(val={}))  # A result without SSIM.
    self.assertNotIn("ssim_mean", old)
    config.seeds = (0, 1)  # Seed 0 is read back; seed 1 is evaluated with SSIM.
    (row,) = self._compare(config, _FakeTrainer(val={}, ssim=0.8))
    self.assertEqual([("ssim" in seed_row) for seed_row in row["per_seed"]], [False, True])
    self.assertNotIn("ssim_mean", row)
    with open(os.path.join(self.workdir, "table.md"), encoding="utf-8") as f:
      header, _, line = f.read().splitlines()[:3]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    titles = [cell.strip() for cell in header.strip("|").split("|")]
    self.assertEqual(cells[titles.index("SSIM")], "—")
    self.assertNotIn("—", cells[titles.index("PSNR dB")])
    config.seeds = (1,)
    (fresh,) = self._compare(config, _FakeTrainer(val={}, ssim=0.8))
    self.assertEqual(fresh["ssim_mean"], 0.8)

  def test_the_lr_is_chosen_on_val_never_on_test(self):
    # Val is lowest at x0.5 for vqvae, at x1 for fsq; test is lowest at x2 for both.
    config = _smoke_config(("vqvae",))
    config.lr_grid = (0.5, 1.0, 2.0)
    (vqvae,) = self._compare(config, _FakeTrainer(val={0.5: 0.05, 1.0: 0.06, 2.0: 0.07}))
    self.assertEqual(vqvae["lr_multiplier"], 0.5)
    self.assertEqual([entry["val_mse"] for entry in vqvae["tuning"]], [0.05, 0.06, 0.07])
    config.methods = ("vqvae", "fsq")  # vqvae's runs are read back, fsq's trained.
    fake = _FakeTrainer(val={0.5: 0.06, 1.0: 0.05, 2.0: 0.07})
    rows = self._compare(config, fake)
    self.assertEqual([row["lr_multiplier"] for row in rows], [0.5, 1.0])
    self.assertEqual(fake.trained, [(0.5, 0), (1.0, 0), (2.0, 0), (1.0, 1)])
    fsq = rows[1]
    self.assertAlmostEqual(fsq["peak_lr"], 1.0 * config.train.optimizer.peak_lr)
    # The reported figures are test figures of the chosen lr: mean over seeds 0 and 1.
    self.assertAlmostEqual(fsq["mse_mean"], 0.5 + 0.005)
    self.assertAlmostEqual(fsq["mse_std"], 0.005)
    tuning = _read_csv(os.path.join(self.workdir, "tuning.csv"))
    self.assertEqual([float(r["val_mse"]) for r in tuning if r["method"] == "fsq"],
                     [0.06, 0.05, 0.07])

  def test_resume_after_interrupted_tuning_trains_only_the_missing_runs(self):
    config = _smoke_config(("vqvae", "fsq"))
    with self.assertRaisesRegex(RuntimeError, "interrupted"):
      self._compare(config, _FakeTrainer(val={}, fail_after=4))  # vqvae done, fsq x0.5 done.
    self.assertFalse(os.path.exists(os.path.join(self.workdir, "table.md")))
    fake = _FakeTrainer(val={})
    rows = self._compare(config, fake)
    self.assertEqual(fake.trained, [(1.0, 0), (0.5, 1)])  # fsq's x1 tuning run, then seed 1.
    self.assertEqual([row["lr_multiplier"] for row in rows], [0.5, 0.5])
    self.assertTrue(os.path.exists(os.path.join(self.workdir, "table.md")))

  def test_a_diverged_tuning_run_is_never_chosen_nor_retrained(self):
    config = _smoke_config(("fsq",))
    (row,) = self._compare(config, _FakeTrainer(val={0.5: 0.01, 1.0: 0.02}, diverge=(0.5,)))
    self.assertEqual(row["lr_multiplier"], 1.0)
    self.assertEqual([entry["val_mse"] for entry in row["tuning"]], [None, 0.02])
    with open(os.path.join(self.workdir, "tuning.md")) as f:
      self.assertIn("| fsq | diverged | **20.00** |", f.read())
    self.assertGreaterEqual(row["tuning"][0]["seconds"], 0.0)  # A diverged run is timed too.
    self.assertEqual((row["num_runs"], row["untimed_runs"]), (3, 0))
    fake = _FakeTrainer(val={})
    self.assertEqual(self._compare(config, fake), [json.loads(json.dumps(row))])
    self.assertEqual(fake.trained, [])
    # Runs saved before run times were recorded: a diverged one is untimed,
    # a finished one gives its train_seconds.
    for multiplier in (0.5, 1.0):
      path = os.path.join(_run_dir(self.workdir, "fsq", multiplier, 0), comparison.RESULT_NAME)
      with open(path) as f:
        saved = json.load(f)
      del saved["seconds"]
      with open(path, "w") as f:
        json.dump(saved, f)
    (old,) = self._compare(config, fake)
    self.assertEqual((old["untimed_runs"], old["tuning"][0]["seconds"]), (1, None))
    self.assertEqual(old["tuning"][1]["seconds"], saved["row"]["train_seconds"])
    with open(os.path.join(self.workdir, "tuning.md")) as f:
      self.assertIn("(3 runs, 1 untimed) |", f.read())
    # A diverged run at the chosen lr with another seed is an error, as in training.
    config.seeds = (0, 3)
    with self.assertRaises(faults.NonFiniteError):
      self._compare(config, _FakeTrainer(val={}, diverge=(1.0,)))
    config = _smoke_config(("vqvae",))
    with self.assertRaisesRegex(config_checks.ConfigError, "'vqvae': every tuning run diverged"):
      self._compare(config, _FakeTrainer(val={}, diverge=(0.5, 1.0)))

  def test_bad_protocol_fields_fail_before_anything_runs(self):
    workdir = os.path.join(self.workdir, "new")
    for field, value, message in (
        ("seeds", (), "config.seeds=.*non-empty tuple of integers >= 0"),
        ("seeds", (0, -1), "config.seeds=.*>= 0"),
        ("seeds", (0, 1.5), "config.seeds=.*integers"),
        ("seeds", (1, 1), "lists a seed twice"),
        ("lr_grid", (), "config.lr_grid=.*non-empty"),
        ("lr_grid", (1.0, 0.0), "config.lr_grid=.*> 0"),
        ("lr_grid", (1, 1.0), "lists a multiplier twice"),
        ("method_steps", {"vqgan": 3}, "'vqgan', which is not a registered method"),
        ("method_steps", {"fsq": 0}, r"method_steps.fsq=0 .*integer >= 1"),
        ("method_steps", {"fsq": 2.5}, r"method_steps.fsq=2.5 .*integer >= 1"),
        ("method_steps", {"fsq": True}, r"method_steps.fsq=True .*integer >= 1"),
        ("method_steps", {"fsq": 1}, "method 'fsq'.*warmup_steps"),
    ):
      config = _smoke_config(("fsq",))
      config[field] = value
      with mock.patch.object(train_lib, "train_and_evaluate",
                             side_effect=AssertionError("trained")):
        with self.assertRaisesRegex(config_checks.ConfigError, message):
          comparison.compare(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_a_workdir_of_the_single_seed_comparison_is_refused(self):
    os.makedirs(os.path.join(self.workdir, "runs", "fsq", "checkpoints"))
    with self.assertRaisesRegex(config_checks.ConfigError, "single-seed comparison"):
      self._compare(_smoke_config(("fsq",)), _FakeTrainer(val={}))


class ConfigTest(absltest.TestCase):

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
    config = _smoke_config(methods.NAMES)
    config.quantizers.lfq.log2_codebook_size = 0
    with self.assertRaisesRegex(config_checks.ConfigError, "method 'lfq'.*log2_codebook_size=0"):
      comparison.compare(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_compare_configs_are_valid(self):
    for module in (compare_demo, compare_cifar10, compare_celeba):
      for variant in (None, "smoke"):
        config = module.get_config(variant)
        self.assertEqual(comparison.check(config, 4 if variant else 1), list(methods.NAMES))
        self.assertEqual(config.train.batch_size % 4, 0)
        self.assertEqual(tuple(config.seeds), (0, 1) if variant else (0, 1, 2))
        self.assertEqual(tuple(config.lr_grid), (0.5, 1.0) if variant else (0.5, 1.0, 2.0))
        if module is compare_demo and not variant:  # Headline methods train longer.
          self.assertEqual(config.method_steps.to_dict(),
                           {name: 2 * compare_demo.STEPS for name in compare_demo.HEADLINE})
        else:
          self.assertEqual(config.method_steps.to_dict(), {})
        # The paper's protocol: every codebook in the encoder's space starts from k-means.
        for name in ("vqvae", "vqvae_l2_replace", "sqvae", "gmvq"):
          self.assertTrue(config.quantizers[name].kmeans_init, name)

  def test_launcher(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "launch.compare", "--config=configs/compare_demo.py:smoke",
         f"--workdir={workdir}", "--config.methods=('fsq', 'vqvae')", "--config.seeds=(0,)",
         "--config.lr_grid=(1.0,)", "--config.method_steps={'fsq': 3}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertIn("| fsq |", result.stdout)
    self.assertIn("| vqvae |", result.stdout)
    self.assertIn("tuning.md", result.stdout)
    records = _read_csv(os.path.join(workdir, "table.csv"))
    self.assertEqual([(r["method"], r["steps"], r["num_seeds"]) for r in records],
                     [("fsq", "3", "1"), ("vqvae", "2", "1")])
    self.assertTrue(os.path.isdir(_run_dir(workdir, "fsq", 1.0, 0)))
    bad = subprocess.run(
        [sys.executable, "-m", "launch.compare", "--config=configs/compare_demo.py:smoke",
         f"--workdir={workdir}", "--config.methods=('vqgan',)"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    self.assertEqual(bad.returncode, 1)
    self.assertIn("known methods", bad.stderr)


if __name__ == "__main__":
  absltest.main()
