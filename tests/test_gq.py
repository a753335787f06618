"""Tests of the GQ quantizer and the TDC constraint (gmvq_jax/quantizers/gq.py)."""

import functools
import math
import warnings

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook

T = 4.0  # log2 K for K = 16.
ALPHA = 0.5
F = np.float32(1.01)


def _posterior(seed, n, m, k):
  rng = np.random.default_rng(seed)
  mu = rng.normal(size=(n, m)).astype(np.float32)
  std = np.exp(rng.uniform(-1.0, 0.5, size=(n, m))).astype(np.float32)
  codebook = rng.normal(size=(k, m)).astype(np.float32)
  return mu, std, codebook


def _direct_scores(mu, std, codebook, prior_weight):
  """sum_j [log N(c_kj; mu_j, var_j) - w log N(c_kj; 0, 1)] as an (N, K, m) tensor, float64."""
  mu, var, c = (np.asarray(a, np.float64) for a in (mu, np.square(std), codebook))
  c = c[None]  # (1, K, m)
  log_post = -0.5 * np.log(2 * np.pi * var[:, None]) - (c - mu[:, None]) ** 2 / (2 * var[:, None])
  log_prior = -0.5 * np.log(2 * np.pi) - c ** 2 / 2
  return np.sum(log_post - prior_weight * log_prior, axis=-1)  # (N, K)


class QuantizeTest(parameterized.TestCase):

  @parameterized.parameters(
      # (n, m, k, prior_weight, tile_size)
      (1, 1, 16, 1.0, None),
      (3, 4, 16, 0.0, 64),  # Tile larger than K.
      (7, 4, 100, 1.0, 32),  # K not a multiple of the tile.
      (64, 16, 256, 2.0, 64),
      (64, 1, 100, 2.0, 3),  # Small tiles, many of them, padded.
      (7, 16, 256, 0.0, 1),
      (64, 4, 256, 1.0, None),
  )
  def test_matches_direct_formula(self, n, m, k, prior_weight, tile_size):
    mu, std, codebook = _posterior(n * 1000 + k, n, m, k)
    fn = jax.jit(functools.partial(gq_codebook.quantize, prior_weight=prior_weight,
                                   tile_size=tile_size))
    got = np.asarray(fn(mu, std, codebook))
    chex.assert_shape(got, (n,))
    self.assertEqual(got.dtype, np.int32)
    scores = _direct_scores(mu, std, codebook, prior_weight)
    want = np.argmax(scores, axis=-1)
    # Where the best two scores are closer than float32 can tell apart, either
    # answer is right; everywhere else the index must match exactly.
    top2 = np.sort(scores, axis=-1)[:, -2:]
    scale = 1.0 + np.max(np.abs(scores), axis=-1)
    clear = top2[:, 1] - top2[:, 0] > 1e-5 * scale
    self.assertGreaterEqual(clear.mean(), 0.9)
    np.testing.assert_array_equal(got[clear], want[clear])
    chosen = scores[np.arange(n), got]
    np.testing.assert_allclose(chosen, scores.max(-1), rtol=0, atol=1e-5 * scale.max())

  @parameterized.parameters(None, 4, 7)
  def test_duplicate_codewords_give_lowest_index(self, tile_size):
    """Duplicate rows inside one tile and across tiles (and padding) both resolve to the first."""
    mu, std, distinct = _posterior(5, 9, 3, 4)
    codebook = np.tile(distinct, (6, 1))  # K = 24; row r equals rows r + 4, r + 8, ...
    fn = jax.jit(functools.partial(gq_codebook.quantize, prior_weight=1.0, tile_size=tile_size))
    got = np.asarray(fn(mu, std, codebook))
    np.testing.assert_array_equal(got, np.argmax(_direct_scores(mu, std, distinct, 1.0), -1))
    # The winning codeword planted only at late positions is found there.
    codebook[:, :] = codebook[0] + 10.0
    codebook[[13, 21]] = mu[0]
    got = np.asarray(fn(mu[:1], np.full_like(std[:1], 0.1), codebook))
    np.testing.assert_array_equal(got, [13])

  def test_dequantize_returns_codebook_rows(self):
    mu, std, codebook = _posterior(2, 50, 4, 100)
    indices = jax.jit(functools.partial(gq_codebook.quantize, prior_weight=1.0, tile_size=32))(
        mu, std, codebook)
    rows = jax.jit(gq_codebook.dequantize)(indices, codebook)
    chex.assert_shape(rows, (50, 4))
    np.testing.assert_array_equal(rows, codebook[np.asarray(indices)])
    self.assertTrue(bool(jnp.all((indices >= 0) & (indices < 100))))

  def test_bad_shapes_raise(self):
    mu, std, codebook = _posterior(0, 4, 3, 8)
    with self.assertRaisesRegex(ValueError, "must both be"):
      gq_codebook.quantize(mu[:, :2], std[:, :2], codebook, prior_weight=1.0)
    with self.assertRaisesRegex(ValueError, "tile_size"):
      gq_codebook.quantize(mu, std, codebook, prior_weight=1.0, tile_size=0)


class KLBitsTest(absltest.TestCase):

  def test_matches_closed_form(self):
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(2, 3, 5, 8)).astype(np.float32)
    logvar = rng.uniform(-3, 2, size=(2, 3, 5, 8)).astype(np.float32)
    logvar[0, 0, 0, 0] = 50.0  # Clipped to 20.
    got = jax.jit(functools.partial(gq.kl_bits, group_size=4))(mu, logvar)
    chex.assert_shape(got, (2, 3, 5, 2))
    lv = np.clip(logvar.astype(np.float64), -30, 20)
    nats = 0.5 * (mu.astype(np.float64) ** 2 + np.exp(lv) - 1 - lv)
    want = nats.reshape(2, 3, 5, 2, 4).sum(-1) / math.log(2)
    np.testing.assert_allclose(got, want, rtol=1e-5)

  def test_bad_group_size_raises(self):
    with self.assertRaisesRegex(ValueError, "group_size=3"):
      gq.kl_bits(jnp.zeros((2, 8)), jnp.zeros((2, 8)), 3)


def _update(kl, state=None, **kw):
  state = gq.init_tdc_state() if state is None else state
  fn = jax.jit(functools.partial(gq.tdc_update, log2_codebook_size=T, tolerance=ALPHA, factor=F,
                                 **kw))
  return fn(state, jnp.asarray(kl, jnp.float32))


def _const(value):
  return np.full((2, 4), value, np.float32)


def _state(lam, lam_min, lam_max):
  return gq.TDCState(*(jnp.float32(v) for v in (lam, lam_min, lam_max)))


class TDCUpdateTest(parameterized.TestCase):

  @parameterized.parameters(
      (T, 1 / F),  # mean == T is not above T.
      (np.nextafter(np.float32(T), np.float32(9)), F),
      (np.nextafter(np.float32(T), np.float32(0)), 1 / F),
  )
  def test_lam_rule(self, value, change):
    new = _update(_const(value), _state(2.0, 0.5, 2.0))
    np.testing.assert_allclose(new.lam, np.float32(2.0) * change, rtol=1e-6)

  @parameterized.parameters(
      (T + ALPHA, 1 / F),  # max == T + alpha is inside the band.
      (np.nextafter(np.float32(T + ALPHA), np.float32(9)), F),
      (np.nextafter(np.float32(T + ALPHA), np.float32(0)), 1 / F),
  )
  def test_lam_max_rule(self, value, change):
    kl = _const(T)
    kl[1, 2] = value
    new = _update(kl, _state(2.0, 0.5, 2.0))
    np.testing.assert_allclose(new.lam_max, np.float32(2.0) * change, rtol=1e-6)

  @parameterized.parameters(
      (T - ALPHA, F),  # min == T - alpha is inside the band.
      (np.nextafter(np.float32(T - ALPHA), np.float32(0)), 1 / F),
      (np.nextafter(np.float32(T - ALPHA), np.float32(9)), F),
  )
  def test_lam_min_rule(self, value, change):
    kl = _const(T)
    kl[0, 3] = value
    new = _update(kl, _state(2.0, 0.5, 2.0))
    np.testing.assert_allclose(new.lam_min, np.float32(0.5) * change, rtol=1e-6)

  def test_clips_hold_at_bounds(self):
    high = _update(_const(T + 3), _state(1e7, 1e-3, 1e3))  # All pushed up, lam_min down.
    np.testing.assert_allclose(high.lam, 1e7, rtol=1e-7)
    np.testing.assert_allclose(high.lam_max, 1e3, rtol=1e-7)
    low = _update(_const(T - 3), _state(1e-7, 1e-3, 1.0))
    np.testing.assert_allclose(low.lam, np.float32(1e-7), rtol=1e-7)
    np.testing.assert_allclose(low.lam_min, np.float32(1e-3), rtol=1e-7)
    np.testing.assert_allclose(low.lam_max, 1.0, rtol=1e-7)
    # From the initial state, inside the band: lam_min may not rise above 1.
    inside = _update(_const(T))
    np.testing.assert_allclose(inside.lam_min, 1.0, rtol=1e-7)
    np.testing.assert_allclose(inside.lam_max, 1.0, rtol=1e-7)
    chex.assert_trees_all_equal_dtypes(inside, gq.init_tdc_state())


class TDCLossTest(absltest.TestCase):

  def test_weights_value_and_gradient(self):
    kl = np.array([[[T + 1.0, T], [T - 1.0, T + ALPHA]],
                   [[T - ALPHA, T + 2.0], [0.1, T + 0.2]]], np.float32)  # (B=2, 2, 2)
    state = _state(3.0, 0.25, 5.0)
    weights = np.array([[[5.0, 1.0], [0.25, 1.0]], [[1.0, 5.0], [0.25, 1.0]]], np.float32)
    got_w = gq.tdc_weights(kl, state, log2_codebook_size=T, tolerance=ALPHA)
    np.testing.assert_array_equal(got_w, weights)
    loss_fn = jax.jit(functools.partial(gq.tdc_loss, log2_codebook_size=T, tolerance=ALPHA))
    loss, grad = jax.value_and_grad(loss_fn)(jnp.asarray(kl), state)
    self.assertEqual(loss.shape, ())
    self.assertEqual(loss.dtype, jnp.float32)
    np.testing.assert_allclose(loss, 3.0 * np.mean(np.sum(weights * kl, axis=(1, 2))), rtol=1e-6)
    # The weights are constants: d loss / d R = lam * weight / B.
    np.testing.assert_allclose(grad, 3.0 * weights / 2, rtol=1e-6)

  def test_metrics(self):
    kl = np.array([[T, T + 1.0], [T - 1.0, T + 0.5]], np.float32)
    got = jax.jit(functools.partial(gq.tdc_metrics, log2_codebook_size=T, tolerance=ALPHA))(
        kl, _state(2.0, 0.5, 3.0))
    np.testing.assert_allclose(got["kl_bits_mean"], kl.mean(), rtol=1e-6)
    self.assertEqual(float(got["kl_bits_min"]), T - 1.0)
    self.assertEqual(float(got["kl_bits_max"]), T + 1.0)
    self.assertEqual(float(got["fraction_within_tolerance"]), 0.5)
    self.assertEqual(float(got["fraction_above_tolerance"]), 0.25)
    self.assertEqual(float(got["lam_max"]), 3.0)
    # Linear interpolation between order statistics, as numpy's default.
    np.testing.assert_allclose([got["kl_bits_p5"], got["kl_bits_p95"]],
                               [T - 1.0 + 0.15 * 1.0, T + 0.5 + 0.85 * 0.5], rtol=1e-6)


class TDCMultiDeviceTest(absltest.TestCase):

  def test_update_is_global_across_devices(self):
    """4 devices with a quarter of the batch follow the 1-device trajectory exactly."""
    devices = jax.devices()[:4]
    self.assertLen(devices, 4)
    mesh = Mesh(np.array(devices), ("batch",))
    kw = dict(log2_codebook_size=T, tolerance=ALPHA)

    def step(state, kl, axis_name):
      return (gq.tdc_update(state, kl, factor=F, axis_name=axis_name, **kw),
              gq.tdc_metrics(kl, state, axis_name=axis_name, **kw))

    sharded = {
        name: jax.jit(jax.shard_map(
            functools.partial(step, axis_name=name), mesh=mesh,
            in_specs=(P(), P("batch")), out_specs=P(), check_vma=False))
        for name in ("batch", None)}
    single = jax.jit(functools.partial(step, axis_name=None))

    rng = np.random.default_rng(0)
    # Devices see different rate regimes: per-device mean/min/max differ from
    # the global ones, and the global decisions change from step to step.
    offsets = np.array([[-1.0, 0.0, 0.3, 2.0], [0.0, 0.0, 0.0, 0.0], [-2.0, -0.3, 0.1, 0.2],
                        [0.4, 0.0, 0.2, 0.6], [-0.2, -0.2, -0.9, 0.1]], np.float32)
    state1 = state4 = local = gq.init_tdc_state()
    lam_changes = set()
    for offset in offsets:
      kl = (T + 0.3 * rng.standard_normal((8, 3, 2)) + np.repeat(offset, 2)[:, None, None])
      kl = kl.astype(np.float32)
      new1, metrics1 = single(state1, kl)
      new4, metrics4 = sharded["batch"](state4, kl)
      local, _ = sharded[None](local, kl)
      chex.assert_trees_all_close(new4, new1, rtol=1e-6)
      chex.assert_trees_all_close(metrics4, metrics1, rtol=1e-6)
      lam_changes.add(float(new1.lam) > float(state1.lam))
      state1, state4 = new1, new4
    self.assertEqual(lam_changes, {True, False})
    # Without the collectives, device 0's own statistics would steer it elsewhere.
    self.assertFalse(np.allclose(np.array(local), np.array(state1), rtol=1e-6))


class SampleCodebookTest(parameterized.TestCase):

  @parameterized.parameters("sobol", "normal")
  def test_reproducible_and_normal(self, sampler):
    codebook = gq_codebook.sample_codebook(7, 4096, 4, sampler=sampler)
    chex.assert_shape(codebook, (4096, 4))
    self.assertEqual(codebook.dtype, np.float32)
    self.assertTrue(np.all(np.isfinite(codebook)))
    sample = functools.partial(gq_codebook.sample_codebook, codebook_size=4096, group_size=4,
                               sampler=sampler)
    np.testing.assert_array_equal(codebook, sample(7))
    self.assertFalse(np.array_equal(codebook, sample(8)))
    np.testing.assert_allclose(codebook.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(codebook.std(0), 1.0, atol=0.05)
    self.assertLess(abs(np.corrcoef(codebook.T)[0, 1]), 0.05)

  def test_samplers_differ(self):
    self.assertFalse(np.array_equal(gq_codebook.sample_codebook(0, 64, 2, "sobol"),
                                    gq_codebook.sample_codebook(0, 64, 2, "normal")))

  def test_sobol_is_more_even_than_iid(self):
    """Quasi-random: the first moments of a Sobol codebook are far closer to N(0, 1)."""
    sobol = gq_codebook.sample_codebook(3, 1024, 2, "sobol")
    iid = gq_codebook.sample_codebook(3, 1024, 2, "normal")
    self.assertLess(np.abs(sobol.mean(0)).max(), 0.01)
    self.assertGreater(np.abs(iid.mean(0)).max(), np.abs(sobol.mean(0)).max())

  def test_validation(self):
    with self.assertRaisesRegex(ValueError, "K >= 2"):
      gq_codebook.sample_codebook(0, 1, 4, "sobol")
    with self.assertRaisesRegex(ValueError, "m >= 1"):
      gq_codebook.sample_codebook(0, 16, 0, "sobol")
    with self.assertRaisesRegex(ValueError, "sampler"):
      gq_codebook.sample_codebook(0, 16, 4, sampler="halton")
    with self.assertRaisesRegex(ValueError, "seed"):
      gq_codebook.sample_codebook(None, 16, 4, "sobol")
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      # Not a power of two: allowed, with scipy's warning.
      codebook = gq_codebook.sample_codebook(0, 100, 3, "sobol")
    chex.assert_shape(codebook, (100, 3))
    self.assertTrue(any("power of 2" in str(w.message) for w in caught))


class StraightThroughTest(absltest.TestCase):

  def test_forward_is_quantized_gradient_is_gaussian(self):
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
    logvar = rng.uniform(-2, 0, size=mu.shape).astype(np.float32)
    eps = rng.normal(size=mu.shape).astype(np.float32)
    codebook = gq_codebook.sample_codebook(0, 32, 4, "sobol")
    weights = rng.normal(size=mu.shape).astype(np.float32)
    ste = jax.jit(functools.partial(gq.quantize_ste, group_size=4, prior_weight=1.5, tile_size=8))

    z = ste(mu, logvar, eps, codebook)
    chex.assert_shape(z, mu.shape)
    std = np.exp(0.5 * logvar)
    indices = gq_codebook.quantize(mu.reshape(-1, 4), std.reshape(-1, 4), codebook,
                                   prior_weight=1.5)
    np.testing.assert_array_equal(z, codebook[np.asarray(indices)].reshape(mu.shape))

    def ste_objective(mu, logvar):
      return jnp.sum(weights * ste(mu, logvar, eps, codebook))

    def gaussian_objective(mu, logvar):
      return jnp.sum(weights * (mu + jnp.exp(0.5 * logvar) * eps))

    got = jax.grad(ste_objective, argnums=(0, 1))(mu, logvar)
    want = jax.grad(gaussian_objective, argnums=(0, 1))(mu, logvar)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[0], weights)

  def test_straight_through_value(self):
    z_g, z_q = jnp.array([0.3, -1.7]), jnp.array([1.0, 2.0])
    np.testing.assert_array_equal(jax.jit(gq.straight_through)(z_g, z_q), z_q)
    grad = jax.grad(lambda a: jnp.sum(gq.straight_through(a, z_q) * jnp.array([2.0, 3.0])))(z_g)
    np.testing.assert_array_equal(grad, [2.0, 3.0])


class BitsPerPixelTest(absltest.TestCase):

  def test_examples(self):
    # ImageNet-256, f8 (32 x 32 latents), c = 16 channels as one m = 16 token
    # of 16 bits per position: 1024 * 16 bits / 65536 pixels = 0.25 bpp.
    self.assertEqual(gq_codebook.bits_per_pixel((32, 32), 16, 16, 16, (256, 256)), 0.25)
    # Same grid, c = 32 split into two tokens of K = 2^12: 1024 * 2 * 12 / 65536.
    self.assertEqual(gq_codebook.bits_per_pixel(32, 32, 16, 12, 256), 0.375)
    # f16 (16 x 16), c = 64 as 16 tokens of m = 4, K = 2^8: 256 * 16 * 8 / 65536.
    self.assertEqual(gq_codebook.bits_per_pixel((16, 16), 64, 4, 8, (256, 256)), 0.5)
    with self.assertRaisesRegex(ValueError, "divisor"):
      gq_codebook.bits_per_pixel(32, 16, 5, 16, 256)


if __name__ == "__main__":
  absltest.main()
