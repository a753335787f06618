"""Tests of the Gumbel-VQVAE quantizer (gmvq_jax/quantizers/gumbel_vq.py)."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax.quantizers import gumbel_vq

# The module's Config is the one home of the hyperparameters' defaults.
CONFIG = gumbel_vq.Config(num_codes=16, latent_dim=4)
_quantize = functools.partial(gumbel_vq.quantize, hard=CONFIG.hard, kl_weight=CONFIG.kl_weight)
_temperature_schedule = functools.partial(gumbel_vq.temperature_schedule, tau_0=CONFIG.tau_0,
                                          tau_min=CONFIG.tau_min,
                                          anneal_fraction=CONFIG.anneal_fraction)


N, C, L = 48, 16, 6


def _inputs(seed=0, n=N, c=C, l=L):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (c, l)), 2.0 * jax.random.normal(k2, (n, c))


class GumbelVQTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_shapes_finiteness_and_gradients_under_jit(self, hard):
    codebook, logits = _inputs()
    quantize = jax.jit(functools.partial(_quantize, temperature=0.7, hard=hard))
    z_q, aux = quantize(codebook, logits, rng=jax.random.key(1))
    chex.assert_shape(z_q, (N, L))
    chex.assert_shape([aux["probs"], aux["log_probs"], aux["codes"]], (N, C))
    chex.assert_shape(aux["indices"], (N,))
    self.assertEqual(aux["indices"].dtype, jnp.int32)

    def objective(codebook, logits):
      z_q, aux = quantize(codebook, logits, rng=jax.random.key(1))
      return jnp.sum(z_q**2) + aux["loss"]

    grads = jax.grad(objective, argnums=(0, 1))(codebook, logits)
    chex.assert_tree_all_finite((z_q, aux, grads))
    self.assertGreater(float(jnp.max(jnp.abs(grads[1]))), 0.0)
    self.assertGreater(float(jnp.max(jnp.abs(grads[0]))), 0.0)

  def test_hard_forward_is_exactly_a_codeword_with_soft_gradients(self):
    codebook, logits = _inputs(2)
    z_q, aux = _quantize(codebook, logits, rng=jax.random.key(3), temperature=0.5)
    np.testing.assert_array_equal(jnp.sum(aux["codes"], -1), 1.0)
    np.testing.assert_array_equal(z_q, codebook[aux["indices"]])
    weights = jax.random.normal(jax.random.key(4), (N, L))

    def readout(logits, hard):
      z_q, _ = _quantize(codebook, logits, rng=jax.random.key(3), temperature=0.5,
                                  hard=hard)
      return jnp.sum(z_q * weights)

    # Straight-through: the one-hot's gradient is the relaxed sample's.
    np.testing.assert_allclose(jax.grad(readout)(logits, True), jax.grad(readout)(logits, False),
                               rtol=1e-5, atol=1e-7)

  def test_soft_sample_mixes_codewords(self):
    codebook, logits = _inputs(5)
    z_q, aux = _quantize(codebook, logits, rng=jax.random.key(6), temperature=2.0,
                                  hard=False)
    np.testing.assert_allclose(jnp.sum(aux["codes"], -1), 1.0, rtol=1e-5)
    self.assertLess(float(jnp.max(aux["codes"])), 1.0)
    np.testing.assert_allclose(z_q, aux["codes"] @ codebook, rtol=1e-5, atol=1e-6)

  def test_evaluation_is_the_top_logit(self):
    codebook, logits = _inputs(7)
    evaluate = jax.jit(functools.partial(_quantize, train=False))
    z_q, aux = evaluate(codebook, logits)
    z_q_again, _ = evaluate(codebook, logits, rng=jax.random.key(8))
    expected = np.argmax(np.asarray(logits), -1)
    np.testing.assert_array_equal(aux["indices"], expected)
    np.testing.assert_array_equal(z_q, np.asarray(codebook)[expected])
    np.testing.assert_array_equal(z_q_again, z_q)

  def test_kl_to_uniform_loss(self):
    codebook, logits = _inputs(9)
    _, aux = _quantize(codebook, logits, rng=jax.random.key(0), kl_weight=0.3)
    logits_np = np.asarray(logits, np.float64)
    probs = np.exp(logits_np - logits_np.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.mean(np.sum(probs * np.log(probs * C), -1))
    np.testing.assert_allclose(aux["kl"], expected, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], 0.3 * expected, rtol=1e-5)
    qbar = probs.mean(0)
    np.testing.assert_allclose(aux["perplexity"], np.exp(-np.sum(qbar * np.log(qbar))), rtol=1e-5)
    # Uniform logits: zero KL, perplexity C.
    _, flat = _quantize(codebook, jnp.zeros((4, C)), train=False)
    self.assertAlmostEqual(float(flat["loss"]), 0.0, places=6)
    self.assertAlmostEqual(float(flat["perplexity"]), C, places=3)

  def test_samples_follow_the_posterior(self):
    codebook = jnp.eye(3)
    logits = jnp.tile(jnp.log(jnp.array([0.7, 0.2, 0.1])), (20000, 1))
    _, aux = _quantize(codebook, logits, rng=jax.random.key(5))
    usage = np.bincount(np.asarray(aux["indices"]), minlength=3) / 20000
    np.testing.assert_allclose(usage, [0.7, 0.2, 0.1], atol=0.015)

  def test_temperature_schedule_is_the_gmvq_one(self):
    schedule = functools.partial(_temperature_schedule, total_steps=100)
    self.assertAlmostEqual(float(schedule(0)), 2.0, places=5)
    self.assertAlmostEqual(float(schedule(100)), 0.1, places=5)

  def test_errors(self):
    codebook, logits = _inputs()
    with self.assertRaisesRegex(ValueError, "rng"):
      _quantize(codebook, logits)
    with self.assertRaisesRegex(ValueError, "logits"):
      _quantize(codebook, logits[:, :3], train=False)


if __name__ == "__main__":
  absltest.main()
