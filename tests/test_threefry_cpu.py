"""The CPU threefry lowering: unrolled (no while loop), with the reference bits."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax import threefry_cpu
from gmvq_jax.quantizers import common  # Installs the lowering on import.


class ThreefryCpuTest(absltest.TestCase):

  def test_installed_by_the_quantizers(self):
    self.assertTrue(callable(common.draw))
    self.assertTrue(threefry_cpu._installed)  # pylint: disable=protected-access

  def test_unrolled_on_the_cpu(self):
    compiled = jax.jit(lambda key: jax.random.bits(key, (64, 32), jnp.uint32)).lower(
        jax.random.key(0)).compile().as_text()
    self.assertNotIn("while", compiled)

  def test_known_answers(self):
    """Random123's threefry2x32_20 known-answer vectors: the hash itself is unchanged."""
    from jax._src.random import threefry2x32  # pylint: disable=g-import-not-at-top
    threefry = jax.jit(threefry2x32.threefry_2x32)
    cases = [((0x0, 0x0), (0x0, 0x0), (0x6b200159, 0x99ba4efe)),
             ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
             ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0))]
    for key, count, expected in cases:
      got = threefry(np.array(key, np.uint32), np.array(count, np.uint32))
      np.testing.assert_array_equal(np.asarray(got), np.array(expected, np.uint32))

  def test_draws_are_unchanged(self):
    """Fixed draws of the default key: the same values JAX's rolled lowering gives."""
    got = np.asarray(jax.jit(lambda k: jax.random.bits(k, (4,), jnp.uint32))(jax.random.key(0)))
    # Recorded with JAX's own CPU lowering (jax 0.10.2 and 0.12.0.1 agree).
    np.testing.assert_array_equal(got, EXPECTED_BITS)


EXPECTED_BITS = np.array([0xf29a4fa7, 0xfa843692, 0x55110e28, 0x77faa835], np.uint32)


if __name__ == "__main__":
  absltest.main()
