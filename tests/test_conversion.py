"""GQ's offline step: train a tiny GQ run, convert it, decode its tokens, reject bad files."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from configs import gq_demo
from gmvq_jax import conversion
from gmvq_jax import evaluation
from gmvq_jax import metric_writers
from gmvq_jax import token_files
from gmvq_jax import train_lib
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook
import tiny_configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_gq_config(**overrides):
  config = gq_demo.get_config("smoke")
  config.image_size = 16
  config.num_eval_examples = 12  # Not a multiple of the eval batch: exercises padding.
  config.eval_batch_size = 8
  config.num_steps = 4
  config.parallelism = "jit"
  return tiny_configs.apply_overrides(config, overrides)


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ), timeout=600)


class ConversionTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = tempfile.mkdtemp()
    cls.config = _tiny_gq_config()
    train_lib.train_and_evaluate(cls.config, cls.workdir)
    cls.report = conversion.convert(cls.workdir, num_images=5)
    cls.tokens_path = os.path.join(cls.workdir, conversion.TOKENS_SUBDIR, "test.npz")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def _tmpdir(self):
    path = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  def test_report_has_sane_values(self):
    report = self.report
    with open(os.path.join(self.workdir, conversion.REPORT_NAME)) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(report)))
    for key in conversion.REPORT_KEYS:
      self.assertIn(key, report)
    q = self.config.quantizer
    num_codes = 2**q.log2_codebook_size
    self.assertEqual(report["codebook_size"], num_codes)
    # 16x16 images, f4 -> 4x4 grid, c/m = 2 tokens of 6 bits per position.
    self.assertAlmostEqual(report["bpp"], 4 * 4 * 2 * 6 / (16 * 16))
    self.assertEqual(report["num_images"], 12)
    self.assertEqual(report["num_tokens"], 12 * 4 * 4 * 2)
    self.assertBetween(report["code_usage"], 1 / num_codes, 1.0)
    self.assertBetween(report["token_perplexity"], 1.0, float(num_codes))
    self.assertLessEqual(report["kl_bits_min"], report["kl_bits_mean"])
    self.assertLessEqual(report["kl_bits_mean"], report["kl_bits_max"])
    self.assertGreater(report["psnr_gaussian"], 0.0)
    for key in ("ssim_gaussian", "ssim_vq"):
      self.assertBetween(report[key], -1.0, 1.0)
    self.assertAlmostEqual(report["psnr_drop_db"], report["psnr_gaussian"] - report["psnr_vq"],
                           places=5)
    histogram = report["kl_bits_histogram"]
    self.assertEqual(sum(histogram["counts"]) + report["kl_bits_above_histogram"],
                     report["num_tokens"])
    self.assertEqual(len(histogram["bin_edges"]), len(histogram["counts"]) + 1)
    self.assertLessEqual(histogram["bin_edges"][0], report["kl_bits_min"])
    percentiles = [report["kl_bits_percentiles"][f"p{level}"] for level in (1, 5, 50, 95, 99)]
    self.assertEqual(percentiles, sorted(percentiles))
    self.assertLessEqual(percentiles[-1], report["kl_bits_max"])
    self.assertGreater(percentiles[0], report["kl_bits_min"])  # Upper bin edges.

  def test_kl_percentiles_from_a_hand_made_histogram(self):
    # 100 tokens: 10 in [0, 0.25), 80 in [1.0, 1.25), 9 in [2.0, 2.25), 1 overflow.
    counts = np.zeros(12, np.int64)
    counts[0], counts[4], counts[8], counts[-1] = 10, 80, 9, 1
    got = conversion.kl_percentiles(counts, maximum=30.0, levels=(5, 10, 11, 50, 90, 99, 100))
    self.assertEqual(got, {"p5": 0.25, "p10": 0.25, "p11": 1.25, "p50": 1.25, "p90": 1.25,
                           "p99": 2.25, "p100": 30.0})

  def test_token_file_holds_tokens_codebook_and_metadata(self):
    tokens, codebook, metadata = conversion.load_tokens(self.tokens_path)
    q = self.config.quantizer
    self.assertEqual(tokens.shape, (12, 4, 4, 2))
    self.assertEqual(tokens.dtype, np.int32)
    self.assertTrue(np.all((tokens >= 0) & (tokens < 2**q.log2_codebook_size)))
    # The stored codebook is the one the recorded seed and sampler regenerate.
    np.testing.assert_array_equal(
        codebook, gq_codebook.sample_codebook(metadata["codebook_seed"], metadata["codebook_size"],
                                              metadata["group_size"], metadata["sampler"]))
    self.assertEqual(metadata["tokens_shape"], [12, 4, 4, 2])
    self.assertEqual((metadata["codebook_seed"], metadata["sampler"], metadata["prior_weight"]),
                     (q.codebook_seed, q.codebook_sampler, q.prior_weight))
    self.assertAlmostEqual(metadata["bpp"], self.report["bpp"])
    with Image.open(os.path.join(self.workdir, conversion.PICTURE_NAME)) as picture:
      width, height = picture.size
    self.assertGreater(width, height)  # Three rows of 5 images.

  def test_tokens_are_the_quantized_posterior_means(self):
    _, state, dataset = conversion.restore_gq_run(self.workdir)
    tokens, codebook, _ = conversion.load_tokens(self.tokens_path)
    model = train_lib.build_model(self.config)
    images = np.concatenate(list(dataset.eval_batches(8)))
    mu, logvar = gq.posterior(
        model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, False,
                    method=model.encode), self.config.quantizer.latent_dim)
    m = self.config.quantizer.group_size
    expected = gq_codebook.quantize(np.asarray(mu).reshape(-1, m),
                                    np.exp(0.5 * np.asarray(logvar)).reshape(-1, m), codebook,
                                    prior_weight=self.config.quantizer.prior_weight)
    np.testing.assert_array_equal(tokens.reshape(-1), np.asarray(expected))

  def test_convert_is_deterministic_and_seed_changes_codebook(self):
    workdir = self._tmpdir()
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    tokens = os.path.join(workdir, "tokens", "test.npz")
    with open(tokens, "rb") as f:
      before = f.read()
    with self.assertRaisesRegex(token_files.OutputExistsError, "test.npz exists.*--overwrite"):
      conversion.convert(workdir, num_images=5)
    with open(tokens, "rb") as f:
      self.assertEqual(f.read(), before)  # Refused before anything was written.
    again = conversion.convert(workdir, num_images=5, overwrite=True)
    self.assertEqual(json.dumps(again), json.dumps(self.report))
    other = conversion.convert(workdir, codebook_seed=7, prior_weight=2.0,
                               sampler="normal", num_images=0, overwrite=True)
    _, codebook, metadata = conversion.load_tokens(os.path.join(workdir, "tokens", "test.npz"))
    _, first_codebook, _ = conversion.load_tokens(self.tokens_path)
    self.assertFalse(np.array_equal(codebook, first_codebook))
    self.assertEqual((metadata["codebook_seed"], metadata["sampler"], metadata["prior_weight"]),
                     (7, "normal", 2.0))
    self.assertEqual((other["codebook_seed"], other["prior_weight"]), (7, 2.0))

  def test_decode_reproduces_the_vq_reconstructions(self):
    output = os.path.join(self._tmpdir(), "decoded.npz")
    path, images = conversion.decode(self.workdir, self.tokens_path, output=output)
    self.assertEqual(path, output)
    self.assertEqual(images.shape, (12, 16, 16, 3))
    _, _, dataset = conversion.restore_gq_run(self.workdir)
    originals = np.concatenate(list(dataset.eval_batches(8)))
    mse = float(np.mean(np.square(images - originals), dtype=np.float64))
    self.assertAlmostEqual(mse, self.report["mse_vq"], delta=1e-6 + 1e-4 * mse)
    with np.load(output) as stored:
      np.testing.assert_array_equal(stored["images"], np.round(images * 255).astype(np.uint8))
    self.assertTrue(os.path.exists(output[:-4] + ".png"))

  def _bad_token_file(self, directory, **changes):
    tokens, codebook, metadata = conversion.load_tokens(self.tokens_path)
    tokens, codebook = changes.get("tokens", tokens), changes.get("codebook", codebook)
    path = os.path.join(directory, "bad.npz")
    # Written directly, not through save_tokens (which casts to int32).
    np.savez(path, tokens=tokens, codebook=codebook, metadata=np.asarray(json.dumps(metadata)))
    return path

  def test_bad_token_files_are_rejected_and_nothing_is_overwritten(self):
    directory = self._tmpdir()
    tokens, codebook, _ = conversion.load_tokens(self.tokens_path)
    num_codes = codebook.shape[0]
    out_of_range = tokens.copy()
    out_of_range[3, 1, 2, 0] = num_codes
    negative = tokens.copy()
    negative[0, 0, 0, 1] = -1
    cases = {
        "outside \\[0, 64\\)": dict(tokens=out_of_range),
        "1 token\\(s\\) outside": dict(tokens=negative),
        "tokens of shape \\(12, 4, 4\\)": dict(tokens=tokens[..., 0]),
        "\\(N, 4, 4, 2\\)": dict(tokens=tokens[:, :2]),
        "need integer": dict(tokens=tokens.astype(np.float32)),
        "codebook of shape \\(32, 4\\)": dict(codebook=codebook[:32]),
        "codebook of shape \\(64, 8\\)": dict(codebook=np.tile(codebook, (1, 2))),
    }
    output = os.path.join(directory, "decoded.npz")
    with open(output, "wb") as f:
      f.write(b"an earlier result")
    for message, change in cases.items():
      path = self._bad_token_file(directory, **change)
      before = tiny_configs.snapshot(directory)
      with self.assertRaisesRegex(conversion.TokenFileError, message, msg=message):
        conversion.decode(self.workdir, path, output=output)
      self.assertEqual(tiny_configs.snapshot(directory), before, message)

  def test_decode_refuses_to_overwrite_its_input_and_non_token_files(self):
    directory = self._tmpdir()
    path = os.path.join(directory, "tokens.npz")
    shutil.copy(self.tokens_path, path)
    with self.assertRaisesRegex(conversion.ConversionError, "is the token file itself"):
      conversion.decode(self.workdir, path, output=path)
    np.savez(os.path.join(directory, "other.npz"), images=np.zeros(3))
    with self.assertRaisesRegex(conversion.TokenFileError, "not a token file"):
      conversion.decode(self.workdir, os.path.join(directory, "other.npz"))
    with open(os.path.join(directory, "garbage.npz"), "wb") as f:
      f.write(b"not a zip")
    with self.assertRaisesRegex(conversion.TokenFileError, "not a readable token file"):
      conversion.decode(self.workdir, os.path.join(directory, "garbage.npz"))
    with self.assertRaisesRegex(FileNotFoundError, "is not a file"):
      conversion.decode(self.workdir, os.path.join(directory, "missing.npz"))
    np.testing.assert_array_equal(conversion.load_tokens(path)[0],
                                  conversion.load_tokens(self.tokens_path)[0])

  def test_bad_flags_fail_before_anything_is_written(self):
    before = tiny_configs.snapshot(self.workdir)
    for kwargs, message in ((dict(prior_weight=-1.0), "--prior_weight=-1.0"),
                            (dict(codebook_seed=-2), "--codebook_seed=-2"),
                            (dict(sampler="halton"), "--sampler='halton'"),
                            (dict(split="validation"), "--split='validation'"),
                            (dict(split="train"), "use --split=test"),
                            (dict(batch_size=0), "--batch_size=0")):
      with self.assertRaisesRegex(conversion.ConversionError, message):
        conversion.convert(self.workdir, **kwargs)
    self.assertEqual(tiny_configs.snapshot(self.workdir), before)

  def test_evaluate_works_on_gq_workdirs_deterministically(self):
    workdir = self._tmpdir()
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    figures = evaluation.evaluate_workdir(workdir, num_images=4)
    with open(os.path.join(workdir, "eval.json")) as f:
      self.assertEqual(json.load(f), json.loads(json.dumps(figures)))
    for key in ("mse", "psnr", "ssim", "kl_bits_mean", "kl_bits_min", "kl_bits_max",
                "fraction_within_tolerance"):
      self.assertIn(key, figures)
    # The posterior-mean reconstructions the conversion scored, and the
    # training run's own final evaluation.
    self.assertAlmostEqual(figures["mse"], self.report["mse_gaussian"], delta=1e-4 * figures["mse"])
    self.assertAlmostEqual(figures["kl_bits_mean"], self.report["kl_bits_mean"], places=4)
    self.assertAlmostEqual(figures["ssim"], self.report["ssim_gaussian"], places=5)
    final = [r for r in metric_writers.read_metrics(workdir) if r["split"] == "test"][-1]
    self.assertAlmostEqual(figures["mse"], final["mse"], places=6)
    self.assertEqual(evaluation.evaluate_workdir(workdir, num_images=4), figures)

  def test_gmvq_workdir_is_refused(self):
    workdir = self._tmpdir()
    train_lib.train_and_evaluate(tiny_configs.tiny_config(parallelism="jit", num_steps=3),
                                 workdir)
    with self.assertRaisesRegex(conversion.ConversionError, "holds a 'gmvq' run"):
      conversion.convert(workdir)

  def test_launchers_quantize_and_decode(self):
    workdir = self._tmpdir()
    shutil.copytree(self.workdir, workdir, dirs_exist_ok=True)
    kept = _run("launch.quantize", f"--workdir={workdir}", "--codebook_seed=3")
    self.assertEqual(kept.returncode, 1)
    self.assertIn("test.npz exists (tokens of an earlier conversion); pass --overwrite",
                  kept.stderr)
    quantize = _run("launch.quantize", f"--workdir={workdir}", "--codebook_seed=3",
                    "--prior_weight=2", "--overwrite")
    self.assertEqual(quantize.returncode, 0, quantize.stderr[-3000:])
    with open(os.path.join(workdir, conversion.REPORT_NAME)) as f:
      report = json.load(f)
    self.assertEqual((report["codebook_seed"], report["prior_weight"]), (3, 2.0))
    tokens_path = os.path.join(workdir, "tokens", "test.npz")
    decode = _run("launch.decode", f"--workdir={workdir}", f"--tokens={tokens_path}")
    self.assertEqual(decode.returncode, 0, decode.stderr[-3000:])
    self.assertIn("Decoded 12 images", decode.stdout)
    bad = self._bad_token_file(workdir, codebook=np.zeros((8, 4), np.float32))
    refused = _run("launch.decode", f"--workdir={workdir}", f"--tokens={bad}")
    self.assertEqual(refused.returncode, 1)
    self.assertIn("error:", refused.stderr)
    self.assertIn("codebook of shape (8, 4)", refused.stderr)
    self.assertFalse(os.path.exists(bad[:-4] + "_decoded.npz"))


if __name__ == "__main__":
  absltest.main()
