"""Tests of the ResNet autoencoder networks (gmvq_jax/models/networks.py)."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax import methods
from gmvq_jax.models import autoencoder
from gmvq_jax.models import networks


class Upsample2xTest(parameterized.TestCase):

  @parameterized.parameters((2, 4, 5, 3), (1, 8, 16, 32), (3, 5, 2, 7))
  def test_equals_flax_conv_transpose(self, batch, size, cin, cout):
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    reference = nn.ConvTranspose(cout, (4, 4), strides=(2, 2))
    variables = reference.init(jax.random.key(1), x)
    ours = networks.Upsample2x(cout)
    want = reference.apply(variables, x)
    got = ours.apply(variables, x)  # Same parameter names and shapes.
    chex.assert_shape(got, (batch, 2 * size, 2 * size, cout))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
    g_want = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
    g_got = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
    chex.assert_trees_all_close(g_got, g_want, rtol=1e-4, atol=1e-4)


def _gmvq():
  """GM-VQ's quantizer with 16 codes of width 4."""
  q = methods.quantizer_config("gmvq", num_codes=16, latent_dim=4)
  return methods.get("gmvq").quantizer_module().make(q, num_steps=10)


class AutoencoderTest(parameterized.TestCase):

  @parameterized.parameters((32, 2), (16, 1))
  def test_shapes(self, size, blocks):
    model = autoencoder.Autoencoder(_gmvq(), channels=(4, 8), num_res_blocks=blocks)
    x = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    recon, z, aux = model.apply(variables, x, train=False)
    chex.assert_shape(recon, x.shape)
    chex.assert_shape(z, (2, size // 4, size // 4, 4))
    chex.assert_shape(aux["probs"], (2 * (size // 4) ** 2, 16))
    chex.assert_tree_all_finite((recon, z, aux))
    self.assertTrue(bool(jnp.all((recon >= 0) & (recon <= 1))))
    keys = jax.random.split(jax.random.key(2), 2)
    (recon_t, z_t, _), _ = model.apply(variables, x, train=True, example_keys=keys,
                                       mutable=["batch_stats"])
    chex.assert_equal_shape([recon_t, recon])
    chex.assert_equal_shape([z_t, z])

  def test_bfloat16_networks_keep_float32_quantizer(self):
    model = autoencoder.Autoencoder(_gmvq(), channels=(4, 8), num_res_blocks=1,
                                    dtype=jnp.bfloat16)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    _, z, aux = model.apply(variables, x, train=False)
    self.assertEqual(z.dtype, jnp.float32)
    self.assertEqual(aux["probs"].dtype, jnp.float32)
    self.assertEqual(variables["params"]["codebook"].dtype, jnp.float32)


if __name__ == "__main__":
  absltest.main()
