"""k-means initialisation of every learned codebook, and GM-VQ's dead-code remedies."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from gmvq_jax import codebook_init
from gmvq_jax import config_checks
from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax import train_lib
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import kmeans
from gmvq_jax.quantizers import vq
import tiny_configs


def _codebook(config, params):
  node = params[methods.make_quantizer(config).params_name]
  return node["codebook"] if isinstance(node, dict) else node


class KMeansInitTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("gmvq", "gmvq", {}), ("vqvae", "vqvae", {}), ("vqvae_l2", "vqvae_l2", {}),
      ("vqvae_affine", "vqvae_affine", {}), ("sqvae", "sqvae", {}))
  def test_kmeans_init_sets_codebook_from_encoder_outputs(self, method, overrides):
    config = tiny_configs.method_config(method, **{"quantizer.kmeans_init": True, **overrides})
    dataset = tiny_configs.RandomImages()
    with_kmeans = train_lib.create_train_state(config, jax.random.key(0), dataset)
    config.quantizer.kmeans_init = False
    without = train_lib.create_train_state(config, jax.random.key(0), dataset)
    model = train_lib.build_model(config)
    points = codebook_init._encoder_points(  # pylint: disable=protected-access
        model, {"params": without.params, "batch_stats": without.batch_stats},
        dataset.train_batch(0, config.batch_size))
    fitted, random = _codebook(config, with_kmeans.params), _codebook(config, without.params)
    if config.quantizer.get("affine"):
      affine = with_kmeans.params["quantizer"]["affine"]
      fitted = vq.effective_codebook(fitted, affine)
      random = vq.effective_codebook(random, affine)
    self.assertLess(float(kmeans.distortion(points, fitted)),
                    0.5 * float(kmeans.distortion(points, random)))
    # Everything but the codebook is the random initialisation.
    chex.assert_trees_all_equal(jax.tree.map(jnp.shape, with_kmeans.params),
                                jax.tree.map(jnp.shape, without.params))
    chex.assert_trees_all_equal(with_kmeans.params["encoder"], without.params["encoder"])

  def test_gumbel_vqvae_refuses_kmeans_init(self):
    config = tiny_configs.method_config("gumbel_vqvae")
    config.quantizer.kmeans_init = True
    with self.assertRaisesRegex(config_checks.ConfigError,
                                "quantizer.kmeans_init.*not a field of 'gumbel_vqvae'"):
      config_checks.validate(config, 1)

  @parameterized.parameters(("kmeans_batches", 0), ("kmeans_init_step", 4),
                            ("recenter_after", -1), ("kmeans_iters", -2))
  def test_bad_fields_are_named(self, field, value):
    config = tiny_configs.tiny_config(**{f"quantizer.{field}": value})
    with self.assertRaisesRegex(config_checks.ConfigError, f"quantizer.{field}"):
      config_checks.validate(config, 1)

  def test_global_kmeans_is_identical_on_one_and_four_devices(self):
    devices = jax.devices()[:4]
    self.assertLen(devices, 4)
    points = jax.random.normal(jax.random.key(0), (64, 5))
    run = functools.partial(gmvq.global_kmeans, num_clusters=8, num_iters=5,
                            seeding="kmeans++")
    rng = jax.random.key(3)
    one = jax.jit(lambda p: run(rng, p))(points)
    mesh = Mesh(np.array(devices), ("batch",))
    four = jax.jit(jax.shard_map(lambda p: run(rng, p, axis_name="batch"), mesh=mesh,
                                 in_specs=P("batch"), out_specs=P(), check_vma=False))(points)
    np.testing.assert_array_equal(np.asarray(four), np.asarray(one))
    self.assertLess(float(kmeans.distortion(points, one)),
                    float(kmeans.distortion(points, points[:8])))


class RemediesTest(parameterized.TestCase):

  def _inputs(self, num_codes=8, dim=3, n=32):
    codebook = jnp.full((num_codes, dim), 50.0)  # Far from every vector.
    zh = jax.random.normal(jax.random.key(1), (n, dim))
    indices = jnp.zeros((n,), jnp.int32)  # Only code 0 is ever chosen.
    return codebook, zh, indices

  def test_kmeans_init_step_reclusters_at_that_step_only(self):
    config = tiny_configs.tiny_config(**{"quantizer.num_codes": 8, "quantizer.kmeans_init_step": 3,
                                         "quantizer.recenter_after": 0})
    codebook, zh, indices = self._inputs()
    rng = jax.random.key(0)
    step_fn = jax.jit(functools.partial(gmvq.remedies, config.quantizer))
    for step, changes in ((0, False), (1, False), (2, True), (3, False)):
      new, state, _ = step_fn(codebook, None, zh, indices, jnp.int32(step), rng)
      self.assertIsNone(state)
      moved = not np.array_equal(np.asarray(new), np.asarray(codebook))
      self.assertEqual(moved, changes, step)
    new, _, _ = step_fn(codebook, None, zh, indices, jnp.int32(2), rng)
    self.assertLess(float(kmeans.distortion(zh, new)), float(kmeans.distortion(zh, codebook)))

  def test_recenter_moves_codes_unchosen_for_recenter_after_steps(self):
    config = tiny_configs.tiny_config(**{"quantizer.num_codes": 8, "quantizer.recenter_after": 2})
    codebook, zh, indices = self._inputs()
    state = methods.make_quantizer(config).init_state()
    step_fn = jax.jit(functools.partial(gmvq.remedies, config.quantizer))
    rng = jax.random.key(0)
    first, state, metrics = step_fn(codebook, state, zh, indices, jnp.int32(0), rng)
    np.testing.assert_array_equal(first, codebook)  # 1 step unused: kept.
    self.assertEqual(float(metrics["codes_recentred"]), 0.0)
    second, state, metrics = step_fn(first, state, zh, indices, jnp.int32(1), rng)
    self.assertEqual(float(metrics["codes_recentred"]), 7.0)  # All but code 0.
    np.testing.assert_array_equal(second[0], codebook[0])
    rows = np.asarray(zh)
    for code in range(1, 8):  # Each moved code is one of the batch's vectors.
      self.assertTrue(np.any(np.all(np.isclose(rows, second[code]), axis=-1)), code)
    np.testing.assert_array_equal(state.steps_unused, np.zeros(8))

  def test_train_step_with_both_remedies_keeps_counters_in_state(self):
    config = tiny_configs.tiny_config(**{"quantizer.kmeans_init_step": 2,
                                         "quantizer.recenter_after": 1})
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    self.assertIsInstance(state.quantizer_state, vq.ReplaceState)
    step_fn = jax.jit(functools.partial(train_lib.train_step, config=config))
    for step in range(3):
      state, metrics = step_fn(state, dataset.train_batch(step, config.batch_size),
                               jax.random.key(1))
      chex.assert_tree_all_finite(state.params)
      self.assertIn("codes_recentred", metrics)
      self.assertGreaterEqual(float(metrics["batch_reachable_codes"]),
                              float(metrics["batch_code_usage"]))
    self.assertEqual(int(state.step), 3)

  @parameterized.named_parameters(
      ("gmvq_remedies", "gmvq", {"quantizer.kmeans_init_step": 2, "quantizer.recenter_after": 1}),
      ("vqvae_kmeans", "vqvae", {"quantizer.kmeans_init": True}),
      ("sqvae_kmeans", "sqvae", {"quantizer.kmeans_init": True}))
  def test_one_and_four_devices_agree(self, method, overrides):
    """k-means at init and the in-step remedies give the same state on 1 and 4 devices."""
    config = tiny_configs.method_config(method, **{"optimizer.eps": 1e-3, **overrides})
    dataset = tiny_configs.RandomImages()
    state = train_lib.create_train_state(config, jax.random.key(0), dataset)
    results = {}
    for mode, devices in (("jit", jax.devices()[:1]), ("shard_map", jax.devices()[:4])):
      strategy = parallel.make(mode, devices)
      step_fn = strategy.compile_step(functools.partial(train_lib.train_step, config=config))
      placed = strategy.put_state(state)
      for step in range(3):
        placed, _ = step_fn(placed, strategy.put_batch(dataset.train_batch(step, 8)),
                            jax.random.key(2))
      results[mode] = jax.device_get(strategy.get_state(placed))
    codebook = lambda s: _codebook(config, s.params)
    self.assertFalse(np.array_equal(codebook(results["jit"]), codebook(state)))
    # Float32 summation order differs between 1 and 4 devices (BatchNorm
    # statistics, gradient means); Adam turns it into ~1e-5 after 3 steps.
    chex.assert_trees_all_close(codebook(results["shard_map"]), codebook(results["jit"]),
                                atol=2e-4, rtol=1e-4)
    chex.assert_trees_all_equal(results["shard_map"].quantizer_state,
                                results["jit"].quantizer_state)


if __name__ == "__main__":
  absltest.main()
