"""Tests of the train step: gradients, parallel equivalence, learning, config checks."""

import functools
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmvq_jax import config_checks
from gmvq_jax import data
from gmvq_jax import parallel
from gmvq_jax import train_lib
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import kmeans
from configs import gmvq_celeba
from configs import gmvq_cifar10
from configs import gmvq_demo
import tiny_configs


def _run_steps(mode, config, state, dataset, num_steps, rng):
  strategy = parallel.make(mode, jax.devices()[: 1 if mode == "jit" else 4])
  step_fn = strategy.compile_step(functools.partial(train_lib.train_step, config=config))
  placed = strategy.put_state(state)
  history = []
  for step in range(num_steps):
    placed, metrics = step_fn(placed, strategy.put_batch(dataset.train_batch(step, config.batch_size)), rng)
    history.append(strategy.get_metrics(metrics))
  return jax.device_get(strategy.get_state(placed)), history


class TrainStepTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = tiny_configs.tiny_config()
    cls.dataset = tiny_configs.RandomImages()
    cls.state = train_lib.create_train_state(cls.config, jax.random.key(0), cls.dataset)

  def test_gradients_reach_encoder_decoder_and_codebook(self):
    config, state = self.config, self.state
    images = self.dataset.train_batch(0, config.batch_size)
    model = train_lib.build_model(config)
    keys = train_lib.example_keys(jax.random.key(1), state.step, config.batch_size, None)

    def loss_fn(params):
      (recon, z, aux), _ = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          example_keys=keys, mutable=["batch_stats"])
      return gmvq.albo_loss(images, recon, aux["z"], aux, params["codebook"], beta=1.0,
                            gamma=0.48, objective=config.quantizer.objective,
                            latent_reg=config.quantizer.latent_reg)[0]

    grads = jax.jit(jax.grad(loss_fn))(state.params)
    chex.assert_tree_all_finite(grads)
    for part in ("encoder", "decoder", "codebook"):
      norm = float(optax.tree.norm(grads[part]))
      self.assertGreater(norm, 0.0, msg=part)
    # Every encoder layer, the first convolution included, gets a gradient.
    first_conv = grads["encoder"]["Conv_0"]["kernel"]
    self.assertGreater(float(jnp.max(jnp.abs(first_conv))), 0.0)

  def test_step_compiles_once_and_updates(self):
    config = self.config

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step_fn(state, images, rng):
      return train_lib.train_step(state, images, rng, config=config)

    state = self.state
    for step in range(3):
      state, metrics = step_fn(state, self.dataset.train_batch(step, 8), jax.random.key(1))
    self.assertEqual(int(state.step), 3)
    chex.assert_tree_all_finite(metrics)
    for name in ("loss", "recon", "latent_reg", "kl", "qbar_perplexity", "temperature",
                 "learning_rate", "batch_code_usage"):
      self.assertIn(name, metrics)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), self.state.params, state.params)
    self.assertTrue(all(jax.tree.leaves(changed)))

  def test_bfloat16_networks_train(self):
    config = tiny_configs.tiny_config(dtype="bfloat16")
    state = train_lib.create_train_state(config, jax.random.key(0), self.dataset)
    step_fn = jax.jit(lambda s, x, r: train_lib.train_step(s, x, r, config=config))
    for step in range(2):
      state, metrics = step_fn(state, self.dataset.train_batch(step, 8), jax.random.key(1))
    chex.assert_tree_all_finite(metrics)
    self.assertEqual(state.params["codebook"].dtype, jnp.float32)  # Params stay float32.
    self.assertEqual(int(state.step), 2)

  def test_jit_pmap_and_shard_map_agree_after_three_steps(self):
    """Same global batch of 8: 1 device, or 4 devices with 2 examples each."""
    self.assertGreaterEqual(jax.device_count(), 4)
    rng = jax.random.key(7)
    # Adam's first steps move every weight by ~lr * sign(g), so with eps=1e-8 a
    # gradient that is truly ~0 turns float32 summation-order noise (which
    # differs between 1 and 4 devices) into lr-sized steps. eps=1e-3 keeps
    # the comparison about the gradients the three modes compute.
    config = tiny_configs.tiny_config(**{"optimizer.eps": 1e-3})
    state = train_lib.create_train_state(config, jax.random.key(0), self.dataset)
    results = {mode: _run_steps(mode, config, state, self.dataset, 3, rng)
               for mode in parallel.MODES}
    reference, ref_history = results["jit"]
    for mode in ("pmap", "shard_map"):
      state, history = results[mode]
      self.assertEqual(int(state.step), 3)
      chex.assert_trees_all_close(state.params, reference.params, atol=1e-5, rtol=1e-5)
      chex.assert_trees_all_close(state.batch_stats, reference.batch_stats, atol=1e-5, rtol=1e-5)
      # Adam's moments carry that noise unscaled: a conv kernel's first moment
      # differed by up to 1.7e-5 beyond rtol on JAX 0.10.2 and 0.12.0.1 alike.
      chex.assert_trees_all_close(state.opt_state, reference.opt_state, atol=4e-5, rtol=1e-4)
      for got, want in zip(history, ref_history):
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["kl"], want["kl"], rtol=1e-5, atol=1e-6)

  def test_smoke_run_loss_decreases(self):
    """30 steps on one fixed batch of real photo crops: the loss must fall."""
    config = tiny_configs.tiny_config(**{"num_steps": 30, "optimizer.warmup_steps": 3,
                                         "optimizer.peak_lr": 1e-2})
    photos = data.make_dataset("embedded", image_size=16, seed=0)

    class OneBatch:
      image_shape = photos.image_shape

      def train_batch(self, step, batch_size):
        del step
        return photos.train_batch(0, batch_size)

    dataset = OneBatch()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    _, history = _run_steps("jit", config, state, dataset, 30, jax.random.key(1))
    losses = np.array([h["loss"] for h in history])
    recons = np.array([h["recon"] for h in history])
    self.assertTrue(np.all(np.isfinite(losses)))
    self.assertLess(losses[-5:].mean(), 0.85 * losses[:3].mean())
    self.assertLess(recons[-5:].mean(), 0.85 * recons[:3].mean())


class KMeansTest(parameterized.TestCase):

  @parameterized.parameters("kmeans++", "random")
  def test_reduces_distortion_against_random_init(self, seeding):
    rng = jax.random.key(0)
    centers_true = jax.random.normal(rng, (16, 4)) * 5.0
    points = (centers_true[jax.random.randint(jax.random.key(1), (2000,), 0, 16)]
              + 0.3 * jax.random.normal(jax.random.key(2), (2000, 4)))
    random_init = kmeans.kmeans(jax.random.key(3), points, num_clusters=16, num_iters=0,
                                seeding="random")
    fitted = kmeans.kmeans(jax.random.key(3), points, num_clusters=16, num_iters=20,
                           seeding=seeding)
    chex.assert_shape(fitted, (16, 4))
    self.assertLess(float(kmeans.distortion(points, fitted)),
                    0.7 * float(kmeans.distortion(points, random_init)))

  def test_lloyd_step_never_increases_distortion(self):
    points = jax.random.normal(jax.random.key(0), (500, 3))
    centers = points[:10]
    previous = float(kmeans.distortion(points, centers))
    for _ in range(5):
      centers = kmeans.lloyd_step(points, centers)
      current = float(kmeans.distortion(points, centers))
      self.assertLessEqual(current, previous + 1e-6)
      previous = current


class ConfigChecksTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("codebook_too_small", "quantizer.num_codes", 1, "quantizer.num_codes"),
      ("negative_beta", "quantizer.beta", -1.0, "quantizer.beta"),
      ("negative_gamma", "quantizer.gamma", -0.1, "quantizer.gamma"),
      ("negative_sigma", "quantizer.sigma_z2", -0.5, "quantizer.sigma_z2"),
      ("zero_sigma", "quantizer.sigma_z2", 0.0, "quantizer.sigma_z2"),
      ("image_size", "image_size", 30, "divide by 4"),
      ("dataset", "dataset", "imagenet", "'embedded'"),
      ("method", "method", "vqgan", "'gmvq'"),
      ("objective", "quantizer.objective", "vae", "'albo'"),
      ("parallelism", "parallelism", "dp", "'shard_map'"),
      ("seeding", "quantizer.kmeans_seeding", "forgy", "'kmeans\\+\\+'"),
      ("prng_impl", "prng_impl", "threefry", "'philox4x32'"),
  )
  def test_invalid_field_is_named(self, field, value, message):
    config = tiny_configs.tiny_config(**{field: value})
    with self.assertRaisesRegex(config_checks.ConfigError, message) as ctx:
      config_checks.validate(config, num_devices=1)
    self.assertIn(field.split(".")[-1], str(ctx.exception))

  def test_philox_needs_jit_and_trains_there(self):
    """philox4x32 does not lower under pmap/shard_map (JAX's mulhi): refused before compiling."""
    for mode in ("pmap", "shard_map"):
      config = tiny_configs.tiny_config(prng_impl="philox4x32", parallelism=mode)
      with self.assertRaisesRegex(config_checks.ConfigError,
                                  "prng_impl=.philox4x32. is invalid: philox4x32 needs --config.parallelism=.jit."):
        config_checks.validate(config, num_devices=1)
    config = tiny_configs.tiny_config(prng_impl="philox4x32", parallelism="jit")
    config_checks.validate(config, num_devices=1)
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    figures = train_lib.train_and_evaluate(config, workdir)
    self.assertTrue(np.isfinite(figures["mse"]))

  def test_batch_must_divide_by_devices(self):
    config = tiny_configs.tiny_config(batch_size=6)
    config_checks.validate(config, num_devices=1)
    with self.assertRaisesRegex(config_checks.ConfigError, "batch_size=6.*4 devices"):
      config_checks.validate(config, num_devices=4)

  def test_valid_configs_pass(self):
    for module in (gmvq_demo, gmvq_cifar10, gmvq_celeba):
      for variant in (None, "smoke"):
        config = module.get_config(variant)
        config_checks.validate(config, num_devices=4 if variant else 1)
        if variant:
          self.assertEqual(config.batch_size % 4, 0)

  def test_bad_config_fails_before_data_or_compilation(self):
    config = tiny_configs.tiny_config(**{"quantizer.num_codes": 1})
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    unreachable = mock.Mock(side_effect=AssertionError("reached past validation"))
    with mock.patch.object(train_lib.data, "make_dataset", unreachable), \
         mock.patch.object(train_lib, "create_train_state", unreachable), \
         mock.patch.object(parallel.Parallelism, "compile_step", unreachable):
      with self.assertRaisesRegex(config_checks.ConfigError, "quantizer.num_codes=1"):
        train_lib.train_and_evaluate(config, workdir)
    unreachable.assert_not_called()
    self.assertFalse(os.path.exists(workdir))  # Nothing written either.


if __name__ == "__main__":
  absltest.main()
