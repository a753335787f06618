"""Tests of lookup-free quantization (gmvq_jax/quantizers/lfq.py)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from gmvq_jax.quantizers import lfq

# The module's Config is the one home of the hyperparameters' defaults.
CONFIG = lfq.Config(log2_codebook_size=4)
_quantize = functools.partial(lfq.quantize, entropy_weight=CONFIG.entropy_weight,
                              diversity_weight=CONFIG.diversity_weight,
                              commitment=CONFIG.commitment, inv_temperature=CONFIG.inv_temperature)
_entropy_terms = functools.partial(lfq.entropy_terms, inv_temperature=CONFIG.inv_temperature)


N, L = 32, 6


def _z(seed=0, n=N, l=L):
  return jax.random.normal(jax.random.key(seed), (n, l))


def _numpy_entropies(z, inv_temperature):
  """Brute force over the 2^L codes of {-1, 1}^L, from the distance form."""
  z = np.asarray(z, np.float64)
  num_bits = z.shape[-1]
  codes = np.array([[1.0 if (k >> i) & 1 else -1.0 for i in range(num_bits)]
                    for k in range(2**num_bits)])
  dist = np.sum((z[:, None, :] - codes[None]) ** 2, -1)
  logits = -inv_temperature * dist
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  plogp = np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1.0)), 0.0)
  per_sample = -np.mean(np.sum(plogp, -1))
  avg = probs.mean(0)
  return per_sample, -np.sum(avg * np.log(avg))


class LFQTest(parameterized.TestCase):

  def test_shapes_finiteness_and_gradients_under_jit(self):
    quantize = jax.jit(_quantize)
    z_q, aux = quantize(None, _z())
    chex.assert_shape(z_q, (N, L))
    chex.assert_shape(aux["indices"], (N,))
    self.assertEqual(aux["indices"].dtype, jnp.int32)
    def objective(z):
      z_q, aux = quantize(None, z)
      return aux["loss"] + jnp.sum(z_q**3)

    grad = jax.grad(objective)(_z())
    chex.assert_tree_all_finite((z_q, aux, grad))
    self.assertGreater(float(jnp.max(jnp.abs(grad))), 0.0)

  def test_signs_and_indices_match_numpy(self):
    z = _z(1)
    z = z.at[0, 0].set(0.0)  # sign(0) is bit 0, value -1.
    z_q, aux = jax.jit(_quantize)(None, z)
    z_np = np.asarray(z)
    np.testing.assert_array_equal(z_q, np.where(z_np > 0, 1.0, -1.0))
    self.assertEqual(float(z_q[0, 0]), -1.0)
    expected = np.sum((z_np > 0).astype(np.int64) * 2 ** np.arange(L), -1)
    np.testing.assert_array_equal(aux["indices"], expected)
    self.assertTrue(bool(jnp.all((aux["indices"] >= 0) & (aux["indices"] < lfq.codebook_size(L)))))
    np.testing.assert_array_equal(lfq.indices_to_codes(aux["indices"], L), z_q)

  def test_index_round_trip_over_all_codes(self):
    codes = lfq.implicit_codebook(5)
    chex.assert_shape(codes, (32, 5))
    np.testing.assert_array_equal(lfq.codes_to_indices(codes), np.arange(32))
    np.testing.assert_array_equal(codes[1], [1.0, -1.0, -1.0, -1.0, -1.0])  # bit 0 first

  def test_straight_through_gradient_is_identity(self):
    z = _z(2)
    weights = jax.random.normal(jax.random.key(3), (N, L))
    grad = jax.grad(lambda z: jnp.sum(_quantize(None, z)[0] * weights))(z)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)

  @parameterized.parameters(1.0, 100.0)
  def test_entropy_terms_match_brute_force(self, inv_temperature):
    z = 0.2 * _z(4, l=4)
    per_sample, codebook_entropy, avg = jax.jit(functools.partial(
        _entropy_terms, inv_temperature=inv_temperature))(z)
    expected_ps, expected_cb = _numpy_entropies(z, inv_temperature)
    np.testing.assert_allclose(per_sample, expected_ps, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(codebook_entropy, expected_cb, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(jnp.sum(avg), 1.0, rtol=1e-5)
    self.assertLessEqual(float(codebook_entropy), 4 * math.log(2) + 1e-5)

  def test_loss_composition(self):
    z = _z(5)
    _, aux = _quantize(None, z, entropy_weight=0.3, diversity_weight=2.0, commitment=0.5)
    per_sample, codebook_entropy, _ = _entropy_terms(z)
    commitment = jnp.mean((z - jnp.where(z > 0, 1.0, -1.0)) ** 2)
    np.testing.assert_allclose(aux["commitment_loss"], commitment, rtol=1e-6)
    np.testing.assert_allclose(
        aux["loss"], 0.3 * (per_sample - 2.0 * codebook_entropy) + 0.5 * commitment, rtol=1e-5)

  def test_more_than_16_bits_needs_zero_entropy_weight(self):
    z = _z(6, n=4, l=17)
    with self.assertRaisesRegex(ValueError, "2\\^L"):
      _quantize(None, z)
    z_q, aux = _quantize(None, z, entropy_weight=0.0)
    chex.assert_shape(z_q, (4, 17))
    self.assertEqual(float(aux["codebook_entropy"]), 0.0)

  def test_batch_entropy_is_global_across_devices(self):
    devices = jax.devices()[:4]
    self.assertLen(devices, 4)
    z = _z(7, n=32, l=5)

    def terms(z, axis_name):
      _, aux = _quantize(None, z, inv_temperature=3.0, axis_name=axis_name)
      return aux["per_sample_entropy"], aux["codebook_entropy"]

    one = jax.jit(functools.partial(terms, axis_name=None))(z)
    mesh = Mesh(np.array(devices), ("batch",))
    four = jax.jit(jax.shard_map(functools.partial(terms, axis_name="batch"), mesh=mesh,
                                 in_specs=P("batch"), out_specs=(P(), P()), check_vma=False))(z)
    np.testing.assert_allclose(four, one, rtol=1e-5)
    # The local-batch codebook entropy differs: the global reduction matters.
    local = jax.jit(functools.partial(terms, axis_name=None))(z[:8])
    self.assertGreater(abs(float(local[1]) - float(one[1])), 1e-3)


if __name__ == "__main__":
  absltest.main()
