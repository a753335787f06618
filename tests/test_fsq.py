"""Tests of finite scalar quantization (gmvq_jax/quantizers/fsq.py)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax.quantizers import fsq

N = 64


def _grid(level):
  """The normalised values channel with `level` levels may take."""
  half = level // 2
  low = -half
  return (np.arange(low, low + level) / half).astype(np.float32)


class FSQTest(parameterized.TestCase):

  def test_shapes_finiteness_and_gradients_under_jit(self):
    levels = (8, 5, 5, 5)
    z = 3.0 * jax.random.normal(jax.random.key(0), (N, 4))
    quantize = jax.jit(functools.partial(fsq.quantize, levels=levels))
    z_q, aux = quantize(None, z)
    chex.assert_shape(z_q, (N, 4))
    chex.assert_shape(aux["indices"], (N,))
    self.assertEqual(z_q.dtype, jnp.float32)
    self.assertEqual(aux["indices"].dtype, jnp.int32)
    self.assertEqual(float(aux["loss"]), 0.0)
    grad = jax.grad(lambda z: jnp.sum(quantize(None, z)[0] ** 2))(z)
    chex.assert_tree_all_finite((z_q, aux, grad))
    self.assertGreater(float(jnp.max(jnp.abs(grad))), 0.0)

  @parameterized.parameters((8, 5, 5, 5), (2, 3, 4), (7, 6), (8, 6, 5))
  def test_values_on_the_grid_and_every_level_reached(self, *levels):
    z = jnp.stack([jnp.linspace(-6.0, 6.0, 4001)] * len(levels), axis=-1)
    z = z + 0.3 * jax.random.normal(jax.random.key(1), z.shape)
    z_q, aux = jax.jit(functools.partial(fsq.quantize, levels=levels))(None, z)
    for i, level in enumerate(levels):
      values = np.unique(np.asarray(z_q[:, i]))
      np.testing.assert_array_equal(values, _grid(level))  # exactly the l grid values
    self.assertTrue(bool(jnp.all(jnp.abs(z_q) <= 1.0)))
    self.assertTrue(bool(jnp.all((aux["indices"] >= 0) & (aux["indices"] < math.prod(levels)))))

  def test_known_values_odd_and_even(self):
    z = jnp.array([[0.0, 0.0], [20.0, 20.0], [-20.0, -20.0], [0.6, 0.6]])
    z_q, _ = fsq.quantize(None, z, levels=(5, 4))
    # Odd 5 levels: {-1, -.5, 0, .5, 1}; even 4 levels: {-1, -.5, 0, .5}.
    np.testing.assert_array_equal(z_q[:3], [[0.0, 0.0], [1.0, 0.5], [-1.0, -1.0]])
    # l=5: tanh(0.6) * 1.998 = 1.07 -> 1 -> 0.5.
    # l=4: tanh(0.6 + tan(0.5 / 1.4985)) * 1.4985 - 0.5 = 0.56 -> 1 -> 0.5.
    np.testing.assert_array_equal(z_q[3], [0.5, 0.5])

  @parameterized.parameters((8, 5, 5, 5), (2, 3, 4), (7, 6), (2, 2, 2))
  def test_index_round_trip_over_all_codes(self, *levels):
    size = fsq.codebook_size(levels)
    self.assertEqual(size, math.prod(levels))
    codes = fsq.implicit_codebook(levels)
    chex.assert_shape(codes, (size, len(levels)))
    self.assertLen(np.unique(np.asarray(codes), axis=0), size)  # all codes distinct
    for i, level in enumerate(levels):
      self.assertTrue(np.all(np.isin(np.asarray(codes[:, i]), _grid(level))))
    indices = jax.jit(functools.partial(fsq.codes_to_indices, levels=levels))(codes)
    np.testing.assert_array_equal(indices, np.arange(size))

  def test_mixed_radix_channel_zero_least_significant(self):
    levels = (8, 5)
    # Digits (3, 2): codes (3 - 4)/4 and (2 - 2)/2; index 3 + 2 * 8.
    self.assertEqual(int(fsq.codes_to_indices(jnp.array([-0.25, 0.0]), levels)), 19)
    np.testing.assert_array_equal(fsq.indices_to_codes(jnp.array(19), levels), [-0.25, 0.0])

  def test_quantize_indices_decode_to_its_output(self):
    levels = (8, 5, 5, 5)
    z = 2.0 * jax.random.normal(jax.random.key(2), (N, 4))
    z_q, aux = fsq.quantize(None, z, levels=levels)
    np.testing.assert_array_equal(fsq.indices_to_codes(aux["indices"], levels), z_q)

  def test_straight_through_gradient_is_that_of_the_bound(self):
    levels = (8, 5, 3)
    z = jax.random.normal(jax.random.key(3), (N, 3))
    weights = jax.random.normal(jax.random.key(4), (N, 3))
    half_width = jnp.array([4.0, 2.0, 1.0])
    got = jax.grad(lambda z: jnp.sum(fsq.quantize(None, z, levels=levels)[0] * weights))(z)
    # Rounding passes the gradient as the identity: d z_q / dz = bound'(z) / (l // 2).
    expected = jax.grad(lambda z: jnp.sum(fsq.bound(z, levels) / half_width * weights))(z)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    self.assertGreater(float(jnp.min(jnp.abs(got))), 0.0)

  def test_float32_whatever_the_input_dtype(self):
    z = jax.random.normal(jax.random.key(5), (N, 3)).astype(jnp.bfloat16)
    z_q, _ = fsq.quantize(None, z, levels=(8, 5, 5))
    self.assertEqual(z_q.dtype, jnp.float32)

  def test_rejects_bad_levels_and_shapes(self):
    with self.assertRaisesRegex(ValueError, "channels"):
      fsq.quantize(None, jnp.zeros((2, 3)), levels=(8, 5))
    with self.assertRaisesRegex(ValueError, ">= 2"):
      fsq.codebook_size((8, 1))


if __name__ == "__main__":
  absltest.main()
