"""The matrix-product convolutions (gmvq_jax/models/conv.py) against XLA's."""

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from configs import base
from gmvq_jax import config_checks
from gmvq_jax import config_version
from gmvq_jax import methods
from gmvq_jax.models import conv

_NHWC = ("NHWC", "HWIO", "NHWC")


def _value_and_grads(fn, x, w, strides, padding):
  def loss(x, w):
    y = fn(x, w, strides, padding, dimension_numbers=_NHWC)
    return jnp.sum(jnp.sin(y)), y  # A nonlinear loss: every tap's gradient differs.
  (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(x, w)
  return y, grads


class ConvTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("1x1", (3, 5, 6, 7), 1, 1, "SAME"),
      ("3x3_same", (3, 5, 6, 7), 3, 1, "SAME"),
      ("4x4_stride2_same", (2, 8, 8, 3), 4, 2, "SAME"),
      ("4x4_stride2_odd_input", (2, 9, 7, 4), 4, 2, "SAME"),
      ("3x3_stride2_explicit", (2, 9, 7, 5), 3, 2, ((1, 0), (2, 1))),
      ("4x4_stride3_valid", (2, 11, 10, 5), 4, 3, "VALID"),
      ("2x3_stride2_valid", (2, 7, 9, 4), (2, 3), (2, 1), "VALID"),
  )
  def test_matches_xla_values_and_gradients(self, shape, kernel, strides, padding):
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    strides = (strides, strides) if isinstance(strides, int) else strides
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel + (shape[-1], 6)) * 0.3, jnp.float32)
    want_y, (want_dx, want_dw) = _value_and_grads(lax.conv_general_dilated, x, w, strides, padding)
    got_y, (got_dx, got_dw) = _value_and_grads(conv.conv_general_dilated, x, w, strides, padding)
    chex.assert_trees_all_close(got_y, want_y, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(got_dx, want_dx, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(got_dw, want_dw, rtol=1e-5, atol=1e-5)

  @parameterized.named_parameters(
      ("rhs_dilation", dict(rhs_dilation=(2, 2))),
      ("feature_groups", dict(feature_group_count=2)),
      ("nchw", dict(dimension_numbers=("NCHW", "OIHW", "NCHW"))),
  )
  def test_other_cases_are_xla_convolutions(self, kwargs):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 2 if "feature_group_count" in kwargs else 4, 4)),
                    jnp.float32)
    if "dimension_numbers" in kwargs:  # The same arrays read as NCHW / OIHW.
      x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    kwargs.setdefault("dimension_numbers", _NHWC)
    got = conv.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs)
    np.testing.assert_array_equal(got, want)

  def test_select(self):
    self.assertIs(conv.select("xla"), lax.conv_general_dilated)
    self.assertIs(conv.select("matmul"), conv.conv_general_dilated)
    self.assertEqual(jax.default_backend(), "cpu")  # The test machines: 'auto' means matmul.
    self.assertIs(conv.select("auto"), conv.conv_general_dilated)
    self.assertIs(conv.select("auto", jnp.bfloat16), lax.conv_general_dilated)
    with self.assertRaisesRegex(ValueError, "conv_impl='fft'.*allowed"):
      conv.select("fft")

  def test_model_same_with_either_impl(self):
    """The autoencoder's output and gradients do not depend on conv_impl beyond rounding."""
    config = base.get_config()
    config.method = "fsq"
    config.quantizer = methods.quantizer_config("fsq", num_codes=64, latent_dim=4)
    config.model.channels = (8, 16)
    config.model.num_res_blocks = 1
    images = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 16, 16, 3)), jnp.float32)

    def run(impl):
      config.conv_impl = impl
      model = methods.build_model(config)
      variables = model.init(jax.random.key(0), images, train=False)

      def loss(params):
        out, _ = model.apply(dict(variables, params=params), images, train=True,
                             example_keys=jax.random.split(jax.random.key(1), 4),
                             mutable=["batch_stats"])
        return jnp.mean(jnp.square(out[0] - images))
      return jax.jit(jax.value_and_grad(loss))(variables["params"])

    chex.assert_trees_all_close(run("matmul"), run("xla"), rtol=2e-5, atol=1e-6)

  def test_config_check_names_a_bad_conv_impl(self):
    config = base.get_config()
    config.conv_impl = "cudnn"
    with self.assertRaisesRegex(config_checks.ConfigError, "conv_impl"):
      config_checks.validate(config, num_devices=1)

  def test_configs_saved_before_the_field_read_as_xla(self):
    config = base.get_config()
    del config["conv_impl"]
    self.assertEqual(config_version.upgrade(config, "a saved run").conv_impl, "xla")


if __name__ == "__main__":
  absltest.main()
