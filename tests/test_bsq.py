"""Tests of binary spherical quantization (gmvq_jax/quantizers/bsq.py)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from gmvq_jax.quantizers import bsq

# The module's Config is the one home of the hyperparameters' defaults.
CONFIG = bsq.Config(log2_codebook_size=4)
_quantize = functools.partial(bsq.quantize, entropy_weight=CONFIG.entropy_weight,
                              per_sample_weight=CONFIG.per_sample_weight,
                              codebook_weight=CONFIG.codebook_weight, commitment=CONFIG.commitment,
                              inv_temperature=CONFIG.inv_temperature)
_entropy_terms = functools.partial(bsq.entropy_terms, inv_temperature=CONFIG.inv_temperature)


N, L = 32, 6


def _z(seed=0, n=N, l=L):
  return 3.0 * jax.random.normal(jax.random.key(seed), (n, l))


def _numpy_full_entropies(u, inv_temperature):
  """Exact per-sample and codebook entropies, by brute force over the 2^L codes."""
  u = np.asarray(u, np.float64)
  num_bits = u.shape[-1]
  codes = np.array([[1.0 if (k >> i) & 1 else -1.0 for i in range(num_bits)]
                    for k in range(2**num_bits)]) / math.sqrt(num_bits)
  logits = -inv_temperature * np.sum((u[:, None, :] - codes[None]) ** 2, -1)
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  per_sample = -np.mean(np.sum(probs * np.log(probs), -1))
  avg = probs.mean(0)
  return per_sample, -np.sum(avg * np.log(avg))


class BSQTest(parameterized.TestCase):

  def test_shapes_finiteness_and_gradients_under_jit(self):
    quantize = jax.jit(_quantize)
    z_q, aux = quantize(None, _z())
    chex.assert_shape(z_q, (N, L))
    chex.assert_shape(aux["indices"], (N,))
    chex.assert_shape(aux["bit_usage"], (L,))
    self.assertEqual(aux["indices"].dtype, jnp.int32)
    def objective(z):
      z_q, aux = quantize(None, z)
      return aux["loss"] + jnp.sum(z_q**3)

    grad = jax.grad(objective)(_z())
    chex.assert_tree_all_finite((z_q, aux, grad))
    self.assertGreater(float(jnp.max(jnp.abs(grad))), 0.0)

  def test_output_on_the_sphere_with_values_plus_minus_inv_sqrt_l(self):
    z = _z(1)
    z_q, aux = jax.jit(_quantize)(None, z)
    np.testing.assert_allclose(jnp.linalg.norm(z_q, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.abs(z_q), 1.0 / math.sqrt(L), rtol=1e-6)
    z_np = np.asarray(z)
    np.testing.assert_array_equal(jnp.sign(z_q), np.where(z_np > 0, 1.0, -1.0))
    expected = np.sum((z_np > 0).astype(np.int64) * 2 ** np.arange(L), -1)
    np.testing.assert_array_equal(aux["indices"], expected)
    self.assertTrue(bool(jnp.all((aux["indices"] >= 0) & (aux["indices"] < bsq.codebook_size(L)))))
    np.testing.assert_allclose(bsq.indices_to_codes(aux["indices"], L), z_q, rtol=1e-6)

  def test_index_round_trip_over_all_codes(self):
    codes = bsq.indices_to_codes(jnp.arange(16), 4)
    np.testing.assert_array_equal(bsq.codes_to_indices(codes), np.arange(16))
    np.testing.assert_allclose(jnp.linalg.norm(codes, axis=-1), 1.0, rtol=1e-6)

  def test_quantized_code_is_the_nearest_corner(self):
    z = _z(2, l=4)
    z_q, _ = _quantize(None, z)
    corners = bsq.indices_to_codes(jnp.arange(16), 4)
    u = np.asarray(bsq.l2_normalize(z))
    nearest = np.argmin(np.sum((u[:, None] - np.asarray(corners)[None]) ** 2, -1), -1)
    np.testing.assert_allclose(z_q, np.asarray(corners)[nearest], rtol=1e-6)

  def test_straight_through_gradient_is_identity_after_normalisation(self):
    z = _z(3)
    weights = jax.random.normal(jax.random.key(4), (N, L))
    got = jax.grad(lambda z: jnp.sum(_quantize(None, z)[0] * weights))(z)
    expected = jax.grad(lambda z: jnp.sum(bsq.l2_normalize(z) * weights))(z)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    self.assertGreater(float(jnp.max(jnp.abs(got))), 1e-3)

  @parameterized.parameters(1.0, 4.0)
  def test_factorised_entropies_against_the_full_distribution(self, inv_temperature):
    u = bsq.l2_normalize(_z(5, l=4))
    per_sample, codebook_entropy, avg = jax.jit(functools.partial(
        _entropy_terms, inv_temperature=inv_temperature))(u)
    exact_ps, exact_cb = _numpy_full_entropies(u, inv_temperature)
    # Per-sample entropy factorises exactly.
    np.testing.assert_allclose(per_sample, exact_ps, rtol=1e-5)
    # The codebook entropy is approximated by the sum of bit-marginal entropies,
    # an upper bound of the exact one, and at most L log 2.
    self.assertGreaterEqual(float(codebook_entropy), exact_cb - 1e-5)
    self.assertLessEqual(float(codebook_entropy), 4 * math.log(2) + 1e-5)
    p = 1.0 / (1.0 + np.exp(-4.0 * inv_temperature * np.asarray(u) / 2.0))
    np.testing.assert_allclose(avg, p.mean(0), rtol=1e-5)

  def test_loss_composition(self):
    z = _z(6)
    _, aux = _quantize(None, z, entropy_weight=0.3, per_sample_weight=0.5, codebook_weight=2.0,
                          commitment=0.7, inv_temperature=2.0)
    u = bsq.l2_normalize(z)
    per_sample, codebook_entropy, _ = _entropy_terms(u, inv_temperature=2.0)
    hard = jnp.where(u > 0, 1.0, -1.0) / math.sqrt(L)
    commitment = jnp.mean(jnp.sum((u - hard) ** 2, -1))
    np.testing.assert_allclose(aux["commitment_loss"], commitment, rtol=1e-5)
    expected = 0.3 * (0.5 * per_sample - 2.0 * codebook_entropy) / 2.0 + 0.7 * commitment
    np.testing.assert_allclose(aux["loss"], expected, rtol=1e-5)

  def test_zero_vector_stays_finite(self):
    z = jnp.zeros((2, L))
    z_q, aux = _quantize(None, z)
    def objective(z):
      z_q, aux = _quantize(None, z)
      return jnp.sum(z_q) + aux["loss"]

    grad = jax.grad(objective)(z)
    chex.assert_tree_all_finite((z_q, aux, grad))
    np.testing.assert_allclose(z_q, -1.0 / math.sqrt(L), rtol=1e-6)

  def test_batch_entropy_is_global_across_devices(self):
    devices = jax.devices()[:4]
    self.assertLen(devices, 4)
    z = _z(7, n=32, l=5)

    def terms(z, axis_name):
      _, aux = _quantize(None, z, inv_temperature=5.0, axis_name=axis_name)
      return aux["per_sample_entropy"], aux["codebook_entropy"]

    one = jax.jit(functools.partial(terms, axis_name=None))(z)
    mesh = Mesh(np.array(devices), ("batch",))
    four = jax.jit(jax.shard_map(functools.partial(terms, axis_name="batch"), mesh=mesh,
                                 in_specs=P("batch"), out_specs=(P(), P()), check_vma=False))(z)
    np.testing.assert_allclose(four, one, rtol=1e-5)
    local = jax.jit(functools.partial(terms, axis_name=None))(z[:8])
    self.assertGreater(abs(float(local[1]) - float(one[1])), 1e-3)


if __name__ == "__main__":
  absltest.main()
