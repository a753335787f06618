"""Residual VQ (gmvq_jax/quantizers/rvq.py): the stage math, dropout, and RVQ in the harness."""

import tempfile

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from configs import compare_demo
from gmvq_jax import comparison
from gmvq_jax import methods
from gmvq_jax import train_lib
from gmvq_jax.quantizers import rvq
import tiny_configs


class QuantizeTest(absltest.TestCase):

  def test_each_stage_quantizes_the_residual_of_the_stages_before(self):
    codebooks = jax.random.normal(jax.random.key(0), (3, 8, 4))
    z = jax.random.normal(jax.random.key(1), (10, 4))
    z_q, aux = rvq.quantize(codebooks, z, commitment=0.25, train=False)
    chex.assert_shape(aux["stage_indices"], (10, 3))
    residual, total = np.asarray(z), np.zeros((10, 4), np.float32)
    for stage in range(3):
      distances = np.sum((residual[:, None, :] - np.asarray(codebooks[stage])[None]) ** 2, -1)
      np.testing.assert_array_equal(aux["stage_indices"][:, stage], np.argmin(distances, -1))
      chosen = np.asarray(codebooks[stage])[np.argmin(distances, -1)]
      total, residual = total + chosen, residual - chosen
    np.testing.assert_allclose(z_q, total, rtol=1e-6, atol=1e-6)

  def test_more_stages_never_hurt_on_average(self):
    codebooks = jax.random.normal(jax.random.key(2), (2, 16, 4))
    z = jax.random.normal(jax.random.key(3), (256, 4))
    one, _ = rvq.quantize(codebooks[:1], z, commitment=0.25, train=False)
    two, _ = rvq.quantize(codebooks, z, commitment=0.25, train=False)
    self.assertLess(float(jnp.mean((two - z) ** 2)), float(jnp.mean((one - z) ** 2)))

  def test_straight_through_gradient_reaches_the_encoder_once(self):
    codebooks = jax.random.normal(jax.random.key(4), (2, 8, 4))
    z = jax.random.normal(jax.random.key(5), (6, 4))
    grad = jax.grad(lambda x: jnp.sum(rvq.quantize(codebooks, x, commitment=0.0)[0]))(z)
    np.testing.assert_array_equal(grad, np.ones_like(z))

  def test_dropout_keeps_a_prefix_of_stages_per_example(self):
    keys = jax.random.split(jax.random.key(6), 5 * 4)
    active = np.asarray(rvq.dropout_mask(keys, 4, 3))
    self.assertEqual(active.shape, (20, 3))
    per_example = active.reshape(5, 4, 3)
    self.assertTrue(np.all(per_example == per_example[:, :1]))  # Same for every position.
    self.assertTrue(np.all(active[:, 0] == 1.0))  # At least one stage.
    self.assertTrue(np.all(np.diff(active, axis=-1) <= 0))  # A prefix.


class HarnessTest(absltest.TestCase):

  def test_defaults_spend_the_bits_of_one_vq(self):
    q = methods.quantizer_config("rvq", num_codes=1024, latent_dim=64)
    self.assertEqual((q.num_stages, q.num_codes), (2, 32))
    config = tiny_configs.method_config("rvq")
    vq_config = tiny_configs.method_config("vqvae")
    self.assertEqual(methods.bits_per_image(config), methods.bits_per_image(vq_config))

  def test_rvq_is_in_the_comparison_at_the_bits_of_the_others(self):
    compare = compare_demo.get_config()
    self.assertIn("rvq", compare.methods)
    config = comparison.method_config(compare, "rvq")
    self.assertEqual(methods.bits_per_image(config),
                     methods.bits_per_image(comparison.method_config(compare, "vqvae")))

  def test_trains_and_evaluates(self):
    config = tiny_configs.method_config("rvq", **{"quantizer.dropout": True})
    with tempfile.TemporaryDirectory() as workdir:
      figures = train_lib.train_and_evaluate(config, workdir)
    self.assertTrue(np.isfinite(figures["mse"]))
    self.assertBetween(figures["hard_perplexity"], 1.0, 2 * config.quantizer.num_codes)

  def test_tokens_round_trip(self):
    config = tiny_configs.method_config("rvq")
    quantizer = methods.make_quantizer(config)
    params = quantizer.init_params(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (2, 3, 3, config.quantizer.latent_dim))
    tokens = quantizer.tokenize(params, z)
    chex.assert_shape(tokens, (2, 3, 3, 2))
    z_q, _ = quantizer.apply(params, None, z, None, 0, False)
    np.testing.assert_allclose(quantizer.detokenize(params, tokens), z_q, rtol=1e-6, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
