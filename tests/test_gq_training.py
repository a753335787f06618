"""GQ in the training harness: TDC state in the train step, checkpoints, devices."""

import functools
import shutil
import tempfile

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from configs import gq_cifar10
from configs import gq_demo
from configs import gq_imagenet
from gmvq_jax import checkpointing
from gmvq_jax import config_checks
from gmvq_jax import parallel
from gmvq_jax import train_lib
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook
import tiny_configs


def _tiny_gq_config(**overrides):
  config = gq_demo.get_config("smoke")
  config.image_size = 16
  config.num_eval_examples = 12
  return tiny_configs.apply_overrides(config, overrides)


def _trajectory(mode, config, state, dataset, num_steps):
  strategy = parallel.make(mode, jax.devices()[: 1 if mode == "jit" else 4])
  step_fn = strategy.compile_step(functools.partial(train_lib.train_step, config=config))
  placed = strategy.put_state(state)
  lams = []
  for step in range(num_steps):
    placed, metrics = step_fn(placed, strategy.put_batch(dataset.train_batch(step, 8)),
                              jax.random.key(3))
    metrics = strategy.get_metrics(metrics)
    tdc = jax.device_get(strategy.get_state(placed).quantizer_state)
    lams.append([float(tdc.lam), float(tdc.lam_min), float(tdc.lam_max),
                 float(metrics["kl_bits_mean"]), float(metrics["kl_bits_max"]),
                 float(metrics["kl_bits_p5"]), float(metrics["kl_bits_p95"])])
  return np.array(lams), jax.device_get(strategy.get_state(placed))


class GQTrainingTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _tiny_gq_config()
    cls.dataset = tiny_configs.RandomImages()
    cls.state = train_lib.create_train_state(cls.config, jax.random.key(0), cls.dataset)

  def test_state_starts_with_unit_multipliers(self):
    self.assertIsInstance(self.state.quantizer_state, gq.TDCState)
    for value in self.state.quantizer_state:
      self.assertEqual(float(value), 1.0)

  def test_lam_trajectory_same_on_one_and_four_devices(self):
    single, state_single = _trajectory("jit", self.config, self.state, self.dataset, 4)
    # The multipliers moved, so the comparison is not of constants.
    self.assertFalse(np.allclose(single[-1, :3], 1.0))
    for mode in ("pmap", "shard_map"):
      multi, state_multi = _trajectory(mode, self.config, self.state, self.dataset, 4)
      np.testing.assert_allclose(multi, single, rtol=1e-5, err_msg=mode)
      chex.assert_trees_all_close(state_multi.params, state_single.params, atol=1e-5, rtol=1e-5)

  def test_tdc_state_survives_checkpoint(self):
    _, trained = _trajectory("jit", self.config, self.state, self.dataset, 3)
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    manager = checkpointing.make_manager(workdir)
    checkpointing.save(manager, 3, trained, self.config)
    target = jax.eval_shape(lambda: train_lib.create_train_state_shapes(self.config, self.dataset))
    restored = checkpointing.restore_state(manager, target)
    manager.close()
    self.assertIsInstance(restored.quantizer_state, gq.TDCState)
    chex.assert_trees_all_equal(jax.device_get(restored.quantizer_state),
                                jax.device_get(trained.quantizer_state))
    self.assertNotEqual(float(restored.quantizer_state.lam), 1.0)

  def test_train_and_evaluate_reports_kl_bits(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    config = _tiny_gq_config(num_steps=4, parallelism="jit", dataset="embedded")
    figures = train_lib.train_and_evaluate(config, workdir)
    for key in ("mse", "psnr", "kl_bits_mean", "kl_bits_min", "kl_bits_max",
                "fraction_within_tolerance"):
      self.assertIn(key, figures)
    self.assertLessEqual(figures["kl_bits_min"], figures["kl_bits_mean"])
    self.assertLessEqual(figures["kl_bits_mean"], figures["kl_bits_max"])
    self.assertBetween(figures["fraction_within_tolerance"], 0.0, 1.0)

  def test_straight_through_training_decodes_codewords(self):
    config = _tiny_gq_config(**{"quantizer.ste": True})
    model = train_lib.build_model(config)
    images = self.dataset.train_batch(0, 8)
    keys = train_lib.example_keys(jax.random.key(1), self.state.step, 8, None)
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    (_, z, aux), _ = model.apply(variables, images, train=True, example_keys=keys,
                                 mutable=["batch_stats"])
    # The forward value is the codeword of each token's posterior mean.
    m = config.quantizer.group_size
    codebook = gq.config_codebook(config.quantizer)
    indices = gq_codebook.quantize(aux["mu"].reshape(-1, m),
                                   jnp.exp(0.5 * aux["logvar"]).reshape(-1, m), codebook,
                                   prior_weight=config.quantizer.prior_weight)
    np.testing.assert_array_equal(np.asarray(z).reshape(-1, m), codebook[np.asarray(indices)])
    # And it trains: the encoder still gets gradients through the Gaussian sample.
    _, trained = _trajectory("jit", config, self.state, self.dataset, 2)
    encoder_moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), self.state.params["encoder"],
                                 trained.params["encoder"])
    self.assertTrue(all(jax.tree.leaves(encoder_moved)))

  def test_gq_configs_are_valid(self):
    for module, variants in ((gq_demo, (None, "smoke")), (gq_cifar10, (None, "smoke")),
                             (gq_imagenet, (None, "0.25", "0.5", "1.0", "smoke"))):
      for variant in variants:
        config = module.get_config(variant)
        config_checks.validate(config, num_devices=4 if variant == "smoke" else 1)
        if variant == "smoke":
          self.assertEqual(config.batch_size % 4, 0)

  def test_imagenet_layouts_have_the_papers_bitrates(self):
    for rate, group_size in (("0.25", 16), ("0.5", 8), ("1.0", 4)):
      config = gq_imagenet.get_config(rate)
      q = config.quantizer
      self.assertEqual((q.group_size, q.log2_codebook_size), (group_size, 16))
      side = config.image_size // 8  # f8
      self.assertEqual(config.image_size // (2 ** len(config.model.channels)), side)
      bpp = gq_codebook.bits_per_pixel(side, q.latent_dim, q.group_size, q.log2_codebook_size,
                              config.image_size)
      self.assertAlmostEqual(bpp, float(rate))
    with self.assertRaisesRegex(ValueError, "0.25, 0.5, 1.0"):
      gq_imagenet.get_config("2.0")

  def test_group_size_must_divide_channels(self):
    config = _tiny_gq_config(**{"quantizer.group_size": 3})
    with self.assertRaisesRegex(config_checks.ConfigError, "quantizer.group_size=3"):
      config_checks.validate(config, num_devices=1)


if __name__ == "__main__":
  absltest.main()
