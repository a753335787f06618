"""Runs each experiment script in its --smoke mode and checks the PNG and JSON it writes."""

import json
import math
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Script -> keys its JSON must hold (beyond 'command', 'settings', 'wall_seconds').
EXPECTED_KEYS = {
    "gumbel_bias": ("pearson", "points", "paper_pearson_r", "max_entropy"),
    "tdc_spread": ("runs", "target_bits", "paper_spread_bits"),
    "beta_effect": ("summary", "runs"),
    "albo_vs_elbo": ("summary", "runs"),
    "gq_rate": ("by_group_size", "log2_k_sweep"),
    "gamma_sweep": ("chosen", "rule", "summary", "runs"),
    "dead_codes": ("chosen", "rule", "summary", "runs", "reachable_over_training"),
}
SWEEP_METRICS = ("mse", "perplexity", "hard_perplexity", "code_usage", "posterior_entropy")


def _env():
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  # One device, as a user runs the scripts; level 0 compiles the tiny models faster.
  env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
  return env


class ExperimentSmokeTest(parameterized.TestCase):

  def run_script(self, name, *flags):
    output_dir = tempfile.mkdtemp(prefix=f"{name}_")
    result = subprocess.run(
        [sys.executable, "-m", f"experiments.{name}", "--smoke", f"--output_dir={output_dir}",
         *flags],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])
    png, json_path = (os.path.join(output_dir, f"{name}.{ext}") for ext in ("png", "json"))
    with open(png, "rb") as f:
      self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
    with open(json_path, encoding="utf-8") as f:
      payload = json.load(f)
    for key in ("command", "settings", "wall_seconds", "smoke") + EXPECTED_KEYS[name]:
      self.assertIn(key, payload)
    self.assertTrue(payload["smoke"])
    self.assertIn(f"experiments.{name}", payload["command"])
    self.assertIn("--smoke", payload["command"])
    payload["output_dir"] = output_dir
    return payload

  def test_gamma_sweep_chooses_on_validation_and_resumes(self):
    payload = self.run_script("gamma_sweep")
    summary = payload["summary"]
    self.assertEqual(list(summary["gamma"]), ["0.0001", "0.0003"])  # Smoke: two values, one seed.
    self.assertEqual(list(summary["beta"]), ["10", "100"])
    best = min(summary["gamma"], key=lambda g: summary["gamma"][g]["val"]["mse"]["mean"])
    self.assertEqual(payload["chosen"]["gamma"], float(best))
    for stage in ("gamma", "beta"):
      for figures in summary[stage].values():
        self.assertNotEqual(figures["val"]["mse"]["mean"], figures["test"]["mse"]["mean"])
        self.assertEqual(figures["val"]["mse"]["std"], 0.0)  # One seed.
    self.assertLen(payload["runs"], 4)
    # A rerun finds every run on disk and trains nothing.
    runs_dir = os.path.join(payload["output_dir"], "runs")
    before = {n: os.path.getmtime(os.path.join(runs_dir, n)) for n in os.listdir(runs_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "experiments.gamma_sweep", "--smoke",
         f"--output_dir={payload['output_dir']}"], cwd=REPO, env=_env(), capture_output=True,
        text=True, timeout=600, check=False)
    self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])
    self.assertNotIn("seed 0: val mse", result.stdout)
    self.assertEqual(before, {n: os.path.getmtime(os.path.join(runs_dir, n))
                              for n in os.listdir(runs_dir)})

  def test_dead_codes(self):
    payload = self.run_script("dead_codes", "--gamma=0.01")
    self.assertEqual(list(payload["summary"]["val"]), ["init", "batches", "warmup", "recenter"])
    self.assertEqual(payload["settings"]["variants"]["warmup"], dict(kmeans_init_step=1))
    for curve in payload["reachable_over_training"].values():
      self.assertTrue(all(0.0 <= v <= 1.0 for v in curve["mean"]))
    for run in payload["runs"]:
      self.assertBetween(run["val"]["reachable_codes"], run["val"]["code_usage"], 1.0)

  def test_gumbel_bias(self):
    payload = self.run_script("gumbel_bias")
    self.assertLen(payload["points"], 3 * 5)  # Smoke: 3 sets x 5 temperatures.
    for point in payload["points"]:
      self.assertBetween(point["entropy"], 0.0, payload["max_entropy"] + 1e-5)
      self.assertGreaterEqual(point["bias_straight_through"], 0.0)
    for estimator in ("straight_through", "relaxed"):
      self.assertBetween(payload["pearson"][estimator]["pooled"]["r"], -1.0, 1.0)
      self.assertLen(payload["pearson"][estimator]["per_set"], 3)

  def test_tdc_spread(self):
    payload = self.run_script("tdc_spread")
    self.assertSameElements(payload["runs"], ["tdc", "vae_kl0.1"])
    self.assertTrue(payload["runs"]["tdc"]["tdc"])
    vae = payload["runs"]["vae_kl0.1"]
    self.assertFalse(vae["tdc"])
    # factor = 1.0 freezes the multipliers: the plain VAE's stay exactly at 1.
    self.assertEqual(vae["final_multipliers"], dict(lam=1.0, lam_min=1.0, lam_max=1.0))
    for run in payload["runs"].values():
      bits = run["token_bits"]
      ordered = [bits[k] for k in ("min", "p1", "p5", "p50", "p95", "p99", "max")]
      self.assertEqual(ordered, sorted(ordered))
      self.assertGreaterEqual(bits["min"], 0.0)

  def check_sweep(self, payload, labels):
    self.assertEqual(list(payload["summary"]), labels)
    self.assertLen(payload["runs"], len(labels))  # Smoke: one seed per label.
    for run in payload["runs"]:
      for metric in SWEEP_METRICS:
        self.assertIn(metric, run)
      self.assertBetween(run["code_usage"], 0.0, 1.0)
      self.assertGreater(run["mse"], 0.0)
    for per_label in payload["summary"].values():
      self.assertEqual(per_label["mse"]["mean"], per_label["mse"]["values"][0])

  def test_beta_effect(self):
    payload = self.run_script("beta_effect")
    self.check_sweep(payload, ["1", "10"])
    self.assertEqual(payload["settings"]["betas"], [1.0, 10.0])

  def test_albo_vs_elbo(self):
    payload = self.run_script("albo_vs_elbo")
    self.check_sweep(payload, ["ALBO b=1", "ELBO b=1"])
    self.assertEqual([r["objective"] for r in payload["runs"]], ["albo", "elbo"])

  def test_gq_rate(self):
    payload = self.run_script("gq_rate")
    self.assertEqual(list(payload["by_group_size"]), ["1", "4"])  # Smoke: m in {1, 4}.
    for group, run in payload["by_group_size"].items():
      self.assertEqual(run["log2_k"], int(group))  # One bit per channel.
      self.assertBetween(run["code_usage"], 0.0, 1.0)
    sweep = payload["log2_k_sweep"]
    self.assertEqual([p["log2_k"] for p in sweep["points"]], [2, 4, 6])
    for point in sweep["points"]:
      self.assertTrue(math.isfinite(point["psnr_vq"]))


class RunClaimedTest(absltest.TestCase):

  def test_a_run_with_a_record_is_never_trained_again(self):
    from experiments import common  # pylint: disable=g-import-not-at-top
    output_dir = tempfile.mkdtemp(prefix="run_claimed_")
    runs_dir = os.path.join(output_dir, "runs")
    os.makedirs(runs_dir)
    record = dict(label="a", seed=0, val={}, test={}, history=[], wall_seconds=1.0)
    with open(os.path.join(runs_dir, "a_seed0.json"), "w", encoding="utf-8") as f:
      json.dump(record, f)

    def must_not_train():
      raise AssertionError("a finished run was trained again")

    # No .claim file (deleted by hand, or never made): the record alone says done.
    self.assertEqual(common.run_claimed(output_dir, [("a", 0, must_not_train)]), [record])
    self.assertFalse(os.path.exists(os.path.join(runs_dir, "a_seed0.json.claim")))


if __name__ == "__main__":
  absltest.main()
