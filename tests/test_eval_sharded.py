"""Evaluation split over 4 (fake CPU) devices gives the figures of one device."""

import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax import data
from gmvq_jax import eval_lib
from gmvq_jax import metrics
from gmvq_jax import parallel
from gmvq_jax import train_lib
from tests import tiny_configs

# 13 test images in batches of 6 (6, 6, 1): the last batch is padded, and 6
# rows do not split over 4 devices, so every batch is padded to 8 as well.
NUM_EVAL = 13
EVAL_BATCH = 6
RTOL = 1e-6
# The network's float32 forward pass rounds differently for 2 rows than for
# 6; a figure near 0 that comes from a cancellation (GQ's kl_bits_min, bits of
# a token whose posterior is nearly the prior) keeps that absolute error.
ATOL = 1e-7


@functools.lru_cache(maxsize=None)
def _setup(method):
  config = tiny_configs.method_config(method, num_eval_examples=NUM_EVAL,
                                      eval_batch_size=EVAL_BATCH)
  dataset = data.from_config(config)
  state = train_lib.create_train_state(config, jax.random.key(0), dataset)
  # A few training steps move the codebook and the posterior off their init.
  step_fn = jax.jit(functools.partial(train_lib.train_step, config=config))
  for step in range(2):
    state, _ = step_fn(state, dataset.train_batch(step, config.batch_size), jax.random.key(1))
  return config, dataset, state


def _evaluate(method, mode, num_devices, **kwargs):
  config, dataset, state = _setup(method)
  strategy = parallel.make(mode, jax.devices()[:num_devices])
  return eval_lib.evaluate(config, state, dataset,
                           step_fn=eval_lib.make_eval_fn(config, strategy), **kwargs)


class ShardedEvaluationTest(parameterized.TestCase):

  def test_uses_four_devices(self):
    self.assertGreaterEqual(jax.device_count(), 4)

  @parameterized.parameters(("gmvq", "shard_map"), ("gmvq", "pmap"), ("gq", "shard_map"),
                            ("vqvae", "shard_map"))
  def test_four_devices_give_the_figures_of_one(self, method, mode):
    one, one_pairs = _evaluate(method, "jit", 1, num_images=5)
    four, four_pairs = _evaluate(method, mode, 4, num_images=5)
    self.assertEqual(sorted(one), sorted(four))
    self.assertIn("ssim", one)
    for name, value in one.items():
      np.testing.assert_allclose(four[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(four_pairs, one_pairs, rtol=RTOL, atol=ATOL)
    self.assertEqual(one_pairs.shape, (2, 5, 16, 16, 3))

  def test_min_and_max_combine_over_devices_and_batches(self):
    figures, _ = _evaluate("gq", "shard_map", 4)
    self.assertLess(figures["kl_bits_min"], figures["kl_bits_mean"])
    self.assertGreater(figures["kl_bits_max"], figures["kl_bits_mean"])
    self.assertTrue(np.isfinite([figures["kl_bits_min"], figures["kl_bits_max"]]).all())

  def test_padding_does_not_count(self):
    config, dataset, state = _setup("gmvq")
    figures, _ = _evaluate("gmvq", "shard_map", 4)
    # The same figures from every image at once, padded nowhere.
    images = np.concatenate(list(dataset.eval_batches(NUM_EVAL, split="test")))
    self.assertLen(images, NUM_EVAL)
    sums, reconstructions = eval_lib.eval_step(state, jnp.asarray(images),
                                               jnp.ones((NUM_EVAL,), jnp.float32), config=config)
    np.testing.assert_allclose(
        figures["mse"], np.mean(np.square(images - np.asarray(reconstructions))), rtol=1e-5)
    self.assertAlmostEqual(figures["ssim"], float(sums["ssim_sum"]) / NUM_EVAL, places=5)

  def test_a_registered_image_metric_is_reported(self):
    mae = lambda images, recons: jnp.mean(jnp.abs(images - recons), axis=(1, 2, 3))
    with mock.patch.dict(metrics.IMAGE_METRICS, mae=mae):
      figures, _ = _evaluate("vqvae", "shard_map", 4)
    self.assertBetween(figures["mae"], 1e-4, 1.0)
    self.assertLessEqual(figures["mae"] ** 2, figures["mse"] * (1 + 1e-5))  # Jensen.


if __name__ == "__main__":
  absltest.main()
