"""The method registry and the baselines in the training harness."""

import dataclasses
import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import numpy as np

from gmvq_jax import config_checks
from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax import train_lib
from gmvq_jax.quantizers import vq
import tiny_configs

BASELINES = [name for name in methods.NAMES
             if methods.get(name).module not in ("gmvq", "gq")]


def _baseline_config(name, **overrides):
  config = tiny_configs.tiny_config()
  config.method = name
  config.quantizer = methods.quantizer_config(name, num_codes=16, latent_dim=4)
  if name == "fsq":
    config.quantizer.levels = (4, 4)
  return tiny_configs.apply_overrides(config, overrides)


class RegistryTest(parameterized.TestCase):

  def test_names_are_those_of_the_comparison(self):
    self.assertEqual(methods.NAMES, (
        "vqvae", "vqvae_l2", "vqvae_replace", "vqvae_l2_replace", "vqvae_affine", "vqvae_opt",
        "vqvae_affine_opt", "sqvae", "gumbel_vqvae", "gmvq", "gmvq_entropy", "gq", "fsq", "lfq",
        "bsq", "rvq"))
    for name in methods.NAMES:
      method = methods.get(name)
      self.assertTrue(method.description and method.source, name)
      self.assertIn(f"`{name}`", methods.describe())

  def test_quantizer_configs_are_frozen_dataclasses_of_valid_defaults(self):
    for name in methods.NAMES:
      config = methods.get(name).quantizer_module().Config.sized(16, 4)
      field = dataclasses.fields(config)[0].name
      with self.assertRaises(dataclasses.FrozenInstanceError):
        setattr(config, field, 3)
      self.assertEqual(config.validate(num_steps=10), [], name)

  def test_a_field_of_another_method_is_refused(self):
    config = _baseline_config("vqvae", **{"quantizer.beta": 10.0})
    with self.assertRaisesRegex(config_checks.ConfigError,
                                "quantizer.beta=10.0 is invalid: not a field of 'vqvae'"):
      config_checks.validate(config, num_devices=1)

  def test_unknown_name_lists_the_known_ones(self):
    with self.assertRaisesRegex(ValueError, "'vqgan'.*vqvae, vqvae_l2, .*bsq"):
      methods.get("vqgan")
    config = tiny_configs.tiny_config(method="vqgan")
    with self.assertRaisesRegex(config_checks.ConfigError, "config.method='vqgan'.*'gq'"):
      config_checks.validate(config, num_devices=1)

  def test_variants_differ_only_in_their_flags(self):
    plain = methods.quantizer_config("vqvae").to_dict()
    for name, flags in (("vqvae_l2", dict(l2=True)), ("vqvae_replace", dict(replace=True)),
                        ("vqvae_l2_replace", dict(l2=True, replace=True)),
                        ("vqvae_affine", dict(affine=True)), ("vqvae_opt", dict(opt=True)),
                        ("vqvae_affine_opt", dict(affine=True, opt=True))):
      self.assertEqual(methods.quantizer_config(name).to_dict(), dict(plain, **flags), name)
    self.assertEqual(plain["commitment"], 0.25)
    self.assertEqual(methods.quantizer_config("gmvq_entropy").beta, 100.0)
    self.assertEqual(methods.quantizer_config("gmvq").beta, 1.0)

  def test_every_method_spends_about_log2_c_bits_per_position(self):
    for name in methods.NAMES:
      config = tiny_configs.tiny_config(method=name)
      config.quantizer = methods.quantizer_config(name, num_codes=1024, latent_dim=64)
      config.image_size = 32  # 8x8 positions.
      expected = 64 * np.log2(1000) if name == "fsq" else 640.0
      self.assertAlmostEqual(methods.bits_per_image(config), expected, places=6, msg=name)

  @parameterized.named_parameters(
      ("fsq_levels", "fsq", {"quantizer.levels": (1, 4)}, "quantizer.levels"),
      ("lfq_too_many_bits", "lfq", {"quantizer.num_bits": 20}, "quantizer.num_bits=20"),
      ("vq_commitment", "vqvae", {"quantizer.commitment": -1.0}, "quantizer.commitment=-1.0"),
      ("vq_replace_after", "vqvae_replace", {"quantizer.replace_after": 0},
       "quantizer.replace_after=0"),
      ("gumbel_tau", "gumbel_vqvae", {"quantizer.tau_min": 0.0}, "quantizer.tau_min=0.0"),
      ("codes", "sqvae", {"quantizer.num_codes": 1}, "quantizer.num_codes=1"),
  )
  def test_bad_baseline_fields_are_named(self, name, overrides, message):
    config = _baseline_config(name, **overrides)
    with self.assertRaisesRegex(config_checks.ConfigError, message):
      config_checks.validate(config, num_devices=1)


class BaselineTrainingTest(parameterized.TestCase):

  @parameterized.parameters(*BASELINES)
  def test_trains_and_evaluates_in_the_harness(self, name):
    config = _baseline_config(name)
    config_checks.validate(config, num_devices=1)
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    step_fn = jax.jit(functools.partial(train_lib.train_step, config=config))
    new_state, metrics = step_fn(state, dataset.train_batch(0, 8), jax.random.key(1))
    new_state, metrics = step_fn(new_state, dataset.train_batch(1, 8), jax.random.key(1))
    chex.assert_tree_all_finite(metrics)
    for key in ("loss", "recon", "quantizer_loss", "batch_perplexity", "batch_code_usage"):
      self.assertIn(key, metrics)
    quantizer = methods.make_quantizer(config)
    # RVQ counts each of its stages' codes apart: S tokens of C codes a position.
    codes = quantizer.codebook_size * quantizer.tokens_per_position
    self.assertBetween(float(metrics["batch_perplexity"]), 1.0, codes)
    encoder_moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), state.params["encoder"],
                                 new_state.params["encoder"])
    self.assertTrue(all(jax.tree.leaves(encoder_moved)), name)
    sums, reconstructions = jax.jit(functools.partial(train_lib.eval_step, config=config))(
        new_state, dataset.train_batch(5, 8), np.array([1.0] * 6 + [0.0] * 2, np.float32))
    chex.assert_shape(reconstructions, (8, 16, 16, 3))
    counts = np.asarray(sums["code_counts"])
    self.assertEqual(counts.shape, (codes,))
    self.assertEqual(counts.sum(), 6 * 4 * 4 * quantizer.tokens_per_position)  # Not masked rows.
    self.assertBetween(float(sums["batch_perplexity_sum"]), 1.0, counts.size)

  def test_replacement_is_the_same_on_one_and_four_devices(self):
    config = _baseline_config("vqvae_replace", **{"quantizer.replace_after": 1,
                                                  "optimizer.eps": 1e-3})
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    results = {}
    for mode in ("jit", "shard_map"):
      strategy = parallel.make(mode, jax.devices()[: 1 if mode == "jit" else 4])
      step_fn = strategy.compile_step(functools.partial(train_lib.train_step, config=config))
      placed, replaced = strategy.put_state(state), []
      for step in range(2):
        placed, metrics = step_fn(placed, strategy.put_batch(dataset.train_batch(step, 8)),
                                  jax.random.key(2))
        replaced.append(float(strategy.get_metrics(metrics)["codes_replaced"]))
      results[mode] = (jax.device_get(strategy.get_state(placed)), replaced)
    single, multi = results["jit"], results["shard_map"]
    self.assertEqual(single[1], multi[1])
    self.assertGreater(sum(single[1]), 0)  # Codes were replaced, so the check has teeth.
    chex.assert_trees_all_close(multi[0].params["quantizer"], single[0].params["quantizer"],
                                atol=1e-5, rtol=1e-5)
    self.assertIsInstance(single[0].quantizer_state, vq.ReplaceState)
    np.testing.assert_array_equal(multi[0].quantizer_state.steps_unused,
                                  single[0].quantizer_state.steps_unused)

  def test_opt_moves_used_codes_to_their_cluster_means(self):
    config = _baseline_config("vqvae_opt")
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    images = dataset.train_batch(0, 8)
    new_state, _ = jax.jit(functools.partial(train_lib.train_step, config=config))(
        state, images, jax.random.key(1))
    # The step's assignments come from the encoder and codebook before the update.
    model = train_lib.build_model(config)
    keys = train_lib.example_keys(jax.random.key(1), state.step, 8, None)
    (_, _, aux), _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                                 images, train=True, example_keys=keys, mutable=["batch_stats"])
    z, indices = np.asarray(aux["z"]), np.asarray(aux["indices"])  # (N, L), (N,)
    codebook = np.asarray(new_state.params["quantizer"]["codebook"])
    for code in np.unique(indices):
      np.testing.assert_allclose(codebook[code], z[indices == code].mean(0), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
  absltest.main()
