"""Mixed precision: config.dtype='bfloat16' runs the networks in bf16, the quantizers in float32."""

import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax import config_checks
from gmvq_jax import metric_writers
from gmvq_jax import train_lib
import tiny_configs


def _config(method, dtype):
  return tiny_configs.method_config(method, dtype=dtype)


def _apply(config, images):
  model = train_lib.build_model(config)
  state = train_lib.create_train_state(config, jax.random.key(0), tiny_configs.RandomImages())
  (reconstructions, z, aux), _ = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images, train=True,
      example_keys=jax.random.split(jax.random.key(1), images.shape[0]),
      mutable=["batch_stats"])
  return state, reconstructions, z, aux


def _equations(jaxpr):
  """Every equation of a jaxpr, inside nested calls (pjit, custom_vjp, ...) too."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)
      if hasattr(inner, "eqns"):
        yield from _equations(inner)


class PrecisionTest(parameterized.TestCase):

  @parameterized.parameters("gmvq", "gq", "vqvae", "sqvae", "fsq", "bsq")
  def test_networks_in_bf16_quantizer_in_float32(self, method):
    images = tiny_configs.RandomImages().train_batch(0, 8)
    config = _config(method, "bfloat16")
    state, reconstructions, z, aux = _apply(config, images)
    # Every convolution of the encoder and decoder computes in bf16.
    jaxpr = jax.make_jaxpr(lambda x: _apply(config, x)[1])(images)
    conv_dtypes = {str(v.aval.dtype) for eqn in _equations(jaxpr.jaxpr)
                   if eqn.primitive.name == "conv_general_dilated" for v in eqn.invars}
    self.assertEqual(conv_dtypes, {"bfloat16"})
    self.assertEqual(reconstructions.dtype, jnp.float32)  # The final sigmoid is float32.
    self.assertEqual(z.dtype, jnp.float32)  # What the quantizer handed on.
    for name, value in aux.items():
      if jnp.issubdtype(value.dtype, jnp.floating):
        self.assertEqual(value.dtype, jnp.float32, f"{method}: aux[{name!r}]")
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        self.assertEqual(leaf.dtype, jnp.float32)  # Parameters and moments stay float32.
    _, reference, _, _ = _apply(_config(method, "float32"), images)
    # Same parameters, so bf16 differs from float32 by rounding (which can
    # flip a few discrete code choices): small on average, not zero.
    difference = np.abs(np.asarray(reconstructions) - np.asarray(reference))
    self.assertGreater(difference.max(), 0.0)
    self.assertLess(difference.mean(), 0.02)

  @parameterized.parameters("gmvq", "gq")
  def test_bf16_smoke_run_trains_like_float32(self, method):
    """8 steps in bf16 and in float32 from the same start: the same loss curve, to rounding.

    (Each step sees new crops, whose difficulty moves the loss more than 8
    steps of training do, so the float32 run is the reference, not a trend.)
    """
    losses = {}
    for dtype in ("bfloat16", "float32"):
      config = _config(method, dtype)
      config.num_steps = 8
      config.log_every_steps = 1
      config.checkpoint_every_steps = 8
      config.optimizer.warmup_steps = 1
      workdir = tempfile.mkdtemp()
      self.addCleanup(shutil.rmtree, workdir)
      figures = train_lib.train_and_evaluate(config, workdir)
      chex.assert_tree_all_finite(figures)
      losses[dtype] = np.array(
          [r["loss"] for r in metric_writers.read_metrics(workdir) if r["split"] == "train"])
    self.assertLen(losses["bfloat16"], 8)
    self.assertTrue(np.all(np.isfinite(losses["bfloat16"])))
    self.assertGreater(np.ptp(losses["bfloat16"]), 0.0)
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)

  def test_dtype_is_validated(self):
    config = _config("gmvq", "float16")
    with self.assertRaisesRegex(config_checks.ConfigError, "config.dtype='float16'"):
      config_checks.validate(config, num_devices=1)
    config = _config("gmvq", "float32")
    config.model.dtype = "bfloat16"
    with self.assertRaisesRegex(config_checks.ConfigError, "use --config.dtype"):
      config_checks.validate(config, num_devices=1)


if __name__ == "__main__":
  absltest.main()
