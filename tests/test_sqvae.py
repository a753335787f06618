"""Tests of the Gaussian SQ-VAE quantizer (gmvq_jax/quantizers/sqvae.py)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax.quantizers import sqvae

# The module's Config is the one home of the hyperparameters' defaults.
CONFIG = sqvae.Config(num_codes=16, latent_dim=4)
_temperature_schedule = functools.partial(sqvae.temperature_schedule,
                                          decay=CONFIG.temperature_decay)

N, C, L = 48, 16, 6


def _inputs(seed=0, n=N, c=C, l=L, log_variance=math.log(0.5)):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = sqvae.init_params(k1, c, l, log_variance_init=log_variance)
  return params, jax.random.normal(k2, (n, l))


class SQVAETest(parameterized.TestCase):

  def test_init_params(self):
    params = sqvae.init_params(jax.random.key(0), C, L,
                               log_variance_init=CONFIG.log_variance_init)
    chex.assert_shape(params["codebook"], (C, L))
    self.assertAlmostEqual(float(sqvae.variance(params)), 20.0, places=4)
    self.assertAlmostEqual(float(sqvae.variance(params, variance_offset=1.0)), 21.0, places=4)

  @parameterized.parameters(True, False)
  def test_shapes_finiteness_and_gradients_under_jit(self, hard):
    params, z = _inputs()
    quantize = jax.jit(functools.partial(sqvae.quantize, temperature=0.5, hard=hard))
    z_q, aux = quantize(params, z, rng=jax.random.key(1))
    chex.assert_shape(z_q, (N, L))
    chex.assert_shape([aux["probs"], aux["log_probs"], aux["codes"]], (N, C))
    chex.assert_shape(aux["indices"], (N,))
    self.assertEqual(aux["indices"].dtype, jnp.int32)

    def objective(params, z):
      z_q, aux = quantize(params, z, rng=jax.random.key(1))
      return jnp.mean(z_q**2) + aux["loss"]

    grads = jax.grad(objective, argnums=(0, 1))(params, z)
    chex.assert_tree_all_finite((z_q, aux, grads))
    # The variance is learned: its gradient is there.
    self.assertGreater(abs(float(grads[0]["log_variance"])), 0.0)
    self.assertGreater(float(jnp.max(jnp.abs(grads[1]))), 0.0)

  def test_logits_are_scaled_negative_squared_distances(self):
    params, z = _inputs(2)
    got = sqvae.logits(z, params["codebook"], 0.5)
    z_np, cb = np.asarray(z, np.float64), np.asarray(params["codebook"], np.float64)
    expected = -np.sum((z_np[:, None] - cb[None]) ** 2, -1) / (2 * 0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

  def test_evaluation_is_the_nearest_codeword(self):
    params, z = _inputs(3)
    z_q, aux = jax.jit(functools.partial(sqvae.quantize, train=False))(params, z)
    cb = np.asarray(params["codebook"], np.float64)
    nearest = np.argmin(np.sum((np.asarray(z, np.float64)[:, None] - cb[None]) ** 2, -1), -1)
    np.testing.assert_array_equal(aux["indices"], nearest)
    np.testing.assert_array_equal(z_q, np.asarray(params["codebook"])[nearest])

  def test_loss_terms_match_numpy(self):
    params, z = _inputs(4)
    z_q, aux = sqvae.quantize(params, z, rng=jax.random.key(5), temperature=0.7)
    s2 = 0.5
    cb = np.asarray(params["codebook"], np.float64)
    logits = -np.sum((np.asarray(z, np.float64)[:, None] - cb[None]) ** 2, -1) / (2 * s2)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    kl_discrete = np.mean(np.sum(probs * np.log(np.maximum(probs, 1e-300) * C), -1))
    kl_continuous = np.mean(np.sum((np.asarray(z) - np.asarray(z_q)) ** 2, -1)) / (2 * s2)
    np.testing.assert_allclose(aux["variance"], s2, rtol=1e-6)
    np.testing.assert_allclose(aux["kl_discrete"], kl_discrete, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(aux["kl_continuous"], kl_continuous, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], kl_discrete + kl_continuous, rtol=1e-4)

  def test_soft_training_sample_by_default_straight_through_when_hard(self):
    params, z = _inputs(6, log_variance=math.log(4.0))
    z_soft, soft = sqvae.quantize(params, z, rng=jax.random.key(7), temperature=1.0)
    np.testing.assert_allclose(jnp.sum(soft["codes"], -1), 1.0, rtol=1e-5)
    self.assertLess(float(jnp.min(jnp.max(soft["codes"], -1))), 1.0)  # relaxed, not one-hot
    np.testing.assert_allclose(z_soft, soft["codes"] @ params["codebook"], rtol=1e-5, atol=1e-6)
    z_hard, hard = sqvae.quantize(params, z, rng=jax.random.key(7), temperature=1.0, hard=True)
    np.testing.assert_array_equal(z_hard, params["codebook"][hard["indices"]])
    # Same Gumbel noise: the hard code is the argmax of the relaxed one.
    np.testing.assert_array_equal(hard["indices"], soft["indices"])

  def test_encoder_noise_perturbs_the_assignment_only(self):
    params, z = _inputs(8, log_variance=math.log(2.0))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(9), i))(jnp.arange(N))
    _, plain = sqvae.quantize(params, z, rng=keys)
    _, noisy = sqvae.quantize(params, z, rng=keys, encoder_noise=True)
    self.assertGreater(float(jnp.max(jnp.abs(noisy["probs"] - plain["probs"]))), 1e-2)
    # Per-row keys: the noise does not depend on how the rows are split.
    halves = [sqvae.quantize(params, z[s], rng=keys[s], encoder_noise=True)[0]
              for s in (slice(0, N // 2), slice(N // 2, N))]
    whole, _ = sqvae.quantize(params, z, rng=keys, encoder_noise=True)
    np.testing.assert_allclose(whole, jnp.concatenate(halves), rtol=1e-6, atol=1e-6)

  def test_small_variance_makes_quantization_nearly_deterministic(self):
    params, z = _inputs(10, log_variance=math.log(1e-3))
    _, aux = sqvae.quantize(params, z, rng=jax.random.key(11), temperature=1.0)
    _, evaluated = sqvae.quantize(params, z, train=False)
    np.testing.assert_array_equal(aux["indices"], evaluated["indices"])
    self.assertLess(float(aux["kl_discrete"]), math.log(C))
    self.assertGreater(float(aux["kl_discrete"]), math.log(C) - 0.05)  # near one-hot posteriors

  def test_temperature_schedule(self):
    self.assertAlmostEqual(float(_temperature_schedule(0)), 1.0, places=6)
    self.assertAlmostEqual(float(_temperature_schedule(100_000)), math.exp(-1.0), places=5)
    self.assertAlmostEqual(float(_temperature_schedule(10**6, tau_min=0.2)), 0.2, places=6)

  def test_train_requires_rng(self):
    params, z = _inputs()
    with self.assertRaisesRegex(ValueError, "rng"):
      sqvae.quantize(params, z)


if __name__ == "__main__":
  absltest.main()
