"""Tests of metrics.py and metric_writers.py."""

import glob
import io
import json
import math
import os
import tempfile

from absl.testing import absltest
import numpy as np

from gmvq_jax import metric_writers
from gmvq_jax import metrics


class MetricsTest(absltest.TestCase):

  def test_mse_and_psnr(self):
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = np.full_like(a, 0.1)
    self.assertAlmostEqual(float(metrics.mse(a, b)), 0.01, places=6)
    self.assertAlmostEqual(float(metrics.psnr(0.01)), 20.0, places=4)
    self.assertAlmostEqual(float(metrics.psnr(1e-3)), 30.0, places=4)

  def test_ssim(self):
    rng = np.random.default_rng(0)
    images = rng.random((3, 16, 16, 3), dtype=np.float32)
    noisy = np.clip(images + 0.1 * rng.standard_normal(images.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(metrics.ssim(images, images), np.ones(3), rtol=1e-5)
    scores = np.asarray(metrics.ssim(images, noisy))
    self.assertEqual(scores.shape, (3,))
    self.assertTrue(np.all((scores > 0.5) & (scores < 0.99)), scores)
    # Worse with more noise.
    noisier = np.clip(images + 0.3 * rng.standard_normal(images.shape), 0, 1)
    self.assertTrue(np.all(np.asarray(metrics.ssim(images, noisier)) < scores))

  def test_image_figures_average_ssim_over_images(self):
    sums = dict(squared_error=2.0, num_values=200.0, ssim_sum=1.5, num_images=2.0)
    figures = metrics.image_figures(sums)
    self.assertAlmostEqual(figures["ssim"], 0.75)
    self.assertNotIn("ssim", metrics.image_figures(dict(squared_error=2.0, num_values=200.0)))

  def test_perplexities(self):
    self.assertAlmostEqual(float(metrics.perplexity(np.full(64, 1 / 64))), 64.0, places=3)
    self.assertAlmostEqual(float(metrics.perplexity(np.eye(8)[2])), 1.0, places=6)
    counts = np.array([5, 5, 0, 0, 10, 0, 0, 0])
    expected = math.exp(-(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5)))
    self.assertAlmostEqual(float(metrics.hard_perplexity(counts)), expected, places=4)
    self.assertAlmostEqual(float(metrics.code_usage(counts)), 3 / 8)

  def test_summarize_eval(self):
    sums = dict(squared_error=np.float64(2.0), num_values=np.float64(200.0),
                batch_perplexity_sum=np.float64(30.0), num_batches=np.float64(3.0),
                code_counts=np.array([1.0, 1.0, 0.0, 0.0]))
    figures = metrics.summarize_eval(sums)
    self.assertAlmostEqual(figures["mse"], 0.01)
    self.assertAlmostEqual(figures["psnr"], 20.0, places=4)
    self.assertAlmostEqual(figures["perplexity"], 10.0)
    self.assertAlmostEqual(figures["hard_perplexity"], 2.0, places=5)
    self.assertAlmostEqual(figures["code_usage"], 0.5)


class WriterTest(absltest.TestCase):

  def test_jsonl_and_tensorboard(self):
    workdir = tempfile.mkdtemp()
    writer = metric_writers.MetricWriter(workdir)
    writer.write(10, "train", {"loss": np.float32(0.5), "kl": 1.0})
    writer.write(20, "test", {"mse": 0.01})
    writer.close()
    records = metric_writers.read_metrics(workdir)
    self.assertEqual(records, [{"step": 10, "split": "train", "loss": 0.5, "kl": 1.0},
                               {"step": 20, "split": "test", "mse": 0.01}])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      self.assertEqual([json.loads(line)["step"] for line in f], [10, 20])
    events = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    self.assertLen(events, 1)
    self.assertGreater(os.path.getsize(events[0]), 0)

  def test_progress_line(self):
    stream = io.StringIO()
    progress = metric_writers.Progress(100, stream=stream)
    progress.start(1)
    line = progress.report(50, {"loss": 0.25})
    self.assertIn("step 50/100", line)
    self.assertIn("loss=0.25", line)
    self.assertRegex(line, r"steps/s \| ETA \d+:\d\d:\d\d")
    self.assertEqual(stream.getvalue().strip(), line)

  def test_the_first_line_after_a_resume_has_a_rate(self):
    # Resumed at step 99, logging every 100 steps: the first line is the first step's.
    progress = metric_writers.Progress(200, first_step=99, stream=io.StringIO())
    progress.start(100)  # After the first step, as the loop does.
    line = progress.report(100, {"loss": 0.25})
    self.assertNotIn("nan", line)
    self.assertRegex(line, r"\| \d+\.\d\d steps/s \| ETA \d+:\d\d:\d\d")


if __name__ == "__main__":
  absltest.main()
