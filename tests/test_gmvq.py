"""Tests of the GM-VQ quantizer and the ALBO loss (gmvq_jax/quantizers/gmvq.py)."""

import functools
import math
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gmvq

# The module's Config is the one home of the hyperparameters' defaults.
CONFIG = gmvq.Config(num_codes=16, latent_dim=4)
_quantize = functools.partial(gmvq.quantize, sigma_z2=CONFIG.sigma_z2)
_albo_loss = functools.partial(gmvq.albo_loss, objective=CONFIG.objective,
                               latent_reg=CONFIG.latent_reg)
_temperature_schedule = functools.partial(gmvq.temperature_schedule, tau_0=CONFIG.tau_0,
                                          tau_min=CONFIG.tau_min,
                                          anneal_fraction=CONFIG.anneal_fraction)


N, C, L = 48, 16, 6


def _inputs(seed=0, n=N, c=C, l=L):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  zh = jax.random.normal(k1, (n, l))
  raw = jax.random.normal(k2, (n, l))
  codebook = jax.random.normal(k3, (c, l))
  return zh, raw, codebook


class LogitsTest(parameterized.TestCase):

  @parameterized.parameters((1, 2, 1), (48, 16, 6), (100, 1024, 64))
  def test_matches_direct_formula(self, n, c, l):
    zh, raw, codebook = _inputs(1, n, c, l)
    w = jax.nn.softplus(raw)
    got = jax.jit(gmvq.logits)(zh, w, codebook)
    direct = -0.5 * jnp.sum(w[:, None, :] * (zh[:, None, :] - codebook[None]) ** 2, axis=-1)
    chex.assert_shape(got, (n, c))
    self.assertEqual(got.dtype, jnp.float32)
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-4)

  def test_float32_whatever_the_input_dtype(self):
    zh, raw, codebook = _inputs()
    got = gmvq.logits(zh.astype(jnp.bfloat16), jax.nn.softplus(raw).astype(jnp.bfloat16), codebook)
    self.assertEqual(got.dtype, jnp.float32)


class QuantizeTest(parameterized.TestCase):

  def test_shapes_and_finiteness(self):
    zh, raw, codebook = _inputs()
    z, aux = jax.jit(functools.partial(_quantize, temperature=0.7))(
        codebook, zh, raw, rng=jax.random.key(3))
    chex.assert_shape(z, (N, L))
    chex.assert_shape([aux["probs"], aux["codes"], aux["log_probs"]], (N, C))
    chex.assert_shape(aux["indices"], (N,))
    chex.assert_shape(aux["variance"], (N,))
    chex.assert_tree_all_finite((z, aux))
    np.testing.assert_allclose(jnp.sum(aux["probs"], -1), 1.0, rtol=1e-5)
    self.assertTrue(bool(jnp.all(aux["variance"] >= 0)))

  def test_training_latent_is_codeword_plus_adaptive_noise(self):
    zh, raw, codebook = _inputs()
    z, aux = _quantize(codebook, zh, raw, rng=jax.random.key(3), sigma_z2=0.25)
    chosen = codebook[aux["indices"]]
    np.testing.assert_allclose(aux["code_vectors"], chosen, rtol=1e-6, atol=1e-6)
    # Eq. 18: s2 = ||zh - M_c||^2 / (2 L sigma_z2).
    expected = jnp.sum((zh - chosen) ** 2, -1) / (L * 2 * 0.25)
    np.testing.assert_allclose(aux["variance"], expected, rtol=1e-5, atol=1e-6)
    # The noise is there and scaled by sqrt(s2): the normalised residual is ~N(0, 1).
    eps = (z - chosen) / jnp.sqrt(aux["variance"] + gmvq.VARIANCE_FLOOR)[:, None]
    self.assertGreater(float(jnp.std(eps)), 0.8)
    self.assertLess(float(jnp.std(eps)), 1.2)

  def test_gumbel_sample_is_one_hot_forward_with_soft_gradients(self):
    zh, raw, codebook = _inputs()
    log_q = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (N, C)))
    codes, y = gmvq.gumbel_softmax_straight_through(jax.random.key(1), log_q, 0.5)
    np.testing.assert_array_equal(jnp.sum(codes, -1), 1.0)
    np.testing.assert_array_equal(jnp.max(codes, -1), 1.0)
    np.testing.assert_array_equal(jnp.argmax(codes, -1), jnp.argmax(y, -1))
    # Gradient of a linear read-out of the hard sample equals that of the soft one.
    weights = jax.random.normal(jax.random.key(2), (N, C))
    hard_grad = jax.grad(lambda lq: jnp.sum(
        gmvq.gumbel_softmax_straight_through(jax.random.key(1), lq, 0.5)[0] * weights))(log_q)
    soft_grad = jax.grad(lambda lq: jnp.sum(
        gmvq.gumbel_softmax_straight_through(jax.random.key(1), lq, 0.5)[1] * weights))(log_q)
    np.testing.assert_allclose(hard_grad, soft_grad, rtol=1e-5, atol=1e-7)
    self.assertGreater(float(jnp.max(jnp.abs(hard_grad))), 0.0)

  def test_gumbel_samples_follow_q(self):
    probs = jnp.array([0.7, 0.2, 0.1])
    log_q = jnp.log(jnp.tile(probs, (20000, 1)))
    codes, _ = gmvq.gumbel_softmax_straight_through(jax.random.key(5), log_q, 1.0)
    np.testing.assert_allclose(jnp.mean(codes, 0), probs, atol=0.015)

  def test_per_row_keys_make_noise_independent_of_batch_split(self):
    zh, raw, codebook = _inputs()
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(9), i))(jnp.arange(N))
    whole, _ = _quantize(codebook, zh, raw, rng=keys)
    halves = [_quantize(codebook, zh[s], raw[s], rng=keys[s])[0]
              for s in (slice(0, N // 2), slice(N // 2, N))]
    np.testing.assert_allclose(whole, jnp.concatenate(halves), rtol=1e-6, atol=1e-6)

  def test_evaluation_is_deterministic_noise_free_argmax(self):
    zh, raw, codebook = _inputs()
    evaluate = jax.jit(functools.partial(_quantize, train=False))
    z1, aux1 = evaluate(codebook, zh, raw)
    z2, _ = evaluate(codebook, zh, raw, rng=jax.random.key(123))
    np.testing.assert_array_equal(z1, z2)
    expected = jnp.argmax(gmvq.logits(zh, jax.nn.softplus(raw), codebook), -1)
    np.testing.assert_array_equal(aux1["indices"], expected)
    np.testing.assert_array_equal(z1, codebook[expected])
    np.testing.assert_array_equal(aux1["variance"], 0.0)

  def test_concatenated_encoder_output_interface(self):
    zh, raw, codebook = _inputs()
    z_split, aux_split = _quantize(codebook, zh, raw, rng=jax.random.key(4))
    z_joint, aux_joint = _quantize(codebook, jnp.concatenate([zh, raw], -1),
                                       rng=jax.random.key(4))
    np.testing.assert_array_equal(z_joint, z_split)
    np.testing.assert_array_equal(aux_joint["indices"], aux_split["indices"])
    with self.assertRaisesRegex(ValueError, "2L"):
      _quantize(codebook, zh, rng=jax.random.key(4))

  @parameterized.parameters(0.7, 0.1)
  def test_gradients_are_those_of_the_straight_through_expression(self, temperature):
    """straight_through_pick's hand-written VJP against autodiff of its definition.

    The reference writes Eq. 18 literally: c_q = onehot + y - sg(y), z_c = c_q @ M,
    s2 = (c_q . d) / (2 L sigma^2), with the exact distance to the chosen code
    as its value and the matmul-form d (held constant) as its gradient.
    """
    zh, raw, codebook = _inputs(7)
    zh = zh.at[0].set(codebook[3])  # A vector on its codeword: distance 0, no gradient.
    rng = jax.random.key(11)
    probe = jax.random.normal(jax.random.key(12), (N, L))

    def reference(codebook, zh, raw):
      log_probs = jax.nn.log_softmax(gmvq.logits(zh, jax.nn.softplus(raw), codebook))
      gumbel_rng, normal_rng = jax.random.split(rng)
      codes, _ = gmvq.gumbel_softmax_straight_through(gumbel_rng, log_probs, temperature)
      hard = jax.lax.stop_gradient(codes)
      chosen = hard @ codebook
      direct = jnp.sum(jnp.square(zh - chosen), -1)
      scale = jnp.sum(jnp.square(zh), -1) + jnp.sum(jnp.square(chosen), -1)
      direct = jnp.where(direct <= 1e-12 * scale, 0.0, direct)
      d = common.squared_distances(zh, codebook)  # Matmul form, as autodiff would see it.
      distance = direct + jnp.sum((codes - hard) * jax.lax.stop_gradient(d), -1)
      variance = distance / (L * 2.0 * CONFIG.sigma_z2)
      eps = jax.random.normal(normal_rng, zh.shape)
      code_vectors = codes @ codebook
      z = code_vectors + jnp.sqrt(variance + gmvq.VARIANCE_FLOOR)[:, None] * eps
      return jnp.sum(z * probe) + jnp.sum(jnp.square(z - code_vectors)) + jnp.sum(variance)

    def library(codebook, zh, raw):
      z, aux = _quantize(codebook, zh, raw, rng=rng, temperature=temperature)
      return (jnp.sum(z * probe) + jnp.sum(jnp.square(z - aux["code_vectors"]))
              + jnp.sum(aux["variance"]))

    want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(codebook, zh, raw)
    got = jax.jit(jax.value_and_grad(library, argnums=(0, 1, 2)))(codebook, zh, raw)
    # Float32 cancellation in d (either form), amplified by the softmax's 1/tau.
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4 / temperature)
    self.assertGreater(float(jnp.max(jnp.abs(got[1][2]))), 1e-3)  # The logits' path is live.

  def test_codebook_gradient_is_the_same_on_the_gpu_branch(self):
    """The one-hot product used off the CPU equals the CPU's scatter-add."""
    zh, raw, codebook = _inputs(8)
    probe = jax.random.normal(jax.random.key(13), (N, L))

    def loss(codebook):
      z, aux = _quantize(codebook, zh, raw, rng=jax.random.key(14), temperature=0.5)
      return jnp.sum(z * probe) + jnp.sum(aux["variance"])
    cpu = jax.grad(loss)(codebook)  # Eager: traced anew under the patch below.
    with mock.patch.object(jax, "default_backend", lambda: "gpu"):
      gpu = jax.grad(loss)(codebook)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
    self.assertGreater(float(jnp.max(jnp.abs(cpu))), 1e-3)

  def test_train_requires_rng(self):
    zh, raw, codebook = _inputs()
    with self.assertRaisesRegex(ValueError, "rng"):
      _quantize(codebook, zh, raw, train=True)


class LossTest(parameterized.TestCase):

  def test_kl_to_uniform_endpoints(self):
    uniform = jnp.full((C,), 1.0 / C)
    one_hot = jax.nn.one_hot(3, C)
    self.assertAlmostEqual(float(gmvq.kl_to_uniform(uniform)), 0.0, places=5)
    self.assertAlmostEqual(float(gmvq.kl_to_uniform(one_hot)), math.log(C), places=5)
    self.assertAlmostEqual(float(gmvq.kl_agg(uniform)), 0.0, places=5)
    self.assertAlmostEqual(float(gmvq.kl_agg(one_hot)), math.log(C), places=5)
    # Finite gradient at a one-hot qbar (zero probabilities).
    chex.assert_tree_all_finite(jax.grad(gmvq.kl_to_uniform)(one_hot))

  def _loss_inputs(self, seed=0):
    zh, raw, codebook = _inputs(seed)
    z, aux = _quantize(codebook, zh, raw, rng=jax.random.key(seed))
    images = jax.random.uniform(jax.random.key(seed + 1), (3, 4, 4, 3))
    recon = jax.random.uniform(jax.random.key(seed + 2), (3, 4, 4, 3))
    return images, recon, z, aux, codebook

  def test_albo_terms(self):
    images, recon, z, aux, codebook = self._loss_inputs()
    loss, terms = _albo_loss(images, recon, z, aux, codebook, beta=2.0, gamma=0.5)
    qbar = jnp.mean(aux["probs"], 0)
    num_images = images.shape[0]
    positions = z.shape[0] // num_images
    expected_kl = jnp.sum(qbar * jnp.log(qbar)) + math.log(C)
    # Eq. 13 on the paper's scale: per-image sums, averaged over images.
    expected_reg = jnp.sum((z - codebook[aux["indices"]]) ** 2) / num_images
    expected_recon = jnp.sum((images - recon) ** 2) / num_images
    np.testing.assert_allclose(terms["kl"], expected_kl, rtol=1e-5)
    np.testing.assert_allclose(terms["latent_reg"], expected_reg, rtol=1e-4)
    np.testing.assert_allclose(terms["recon_loss"], expected_recon, rtol=1e-6)
    np.testing.assert_allclose(terms["recon"], jnp.mean((images - recon) ** 2), rtol=1e-6)
    np.testing.assert_allclose(
        loss, expected_recon + 0.5 * (expected_reg + 2.0 * positions * expected_kl), rtol=1e-5)

  def test_per_image_sums_times_batch_are_elementwise_sums(self):
    """recon_loss * B and latent_reg * B are the plain sums over all pixels / vectors."""
    images, recon, z, aux, codebook = self._loss_inputs()
    _, terms = _albo_loss(images, recon, z, aux, codebook, beta=1.0, gamma=1.0)
    num_images = images.shape[0]
    per_image_recon = jnp.sum((images - recon) ** 2, axis=(1, 2, 3))
    per_vector_reg = jnp.sum((z - aux["code_vectors"]) ** 2, axis=-1)
    np.testing.assert_allclose(terms["recon_loss"] * num_images,
                               jnp.sum((images - recon) ** 2), rtol=1e-6)
    np.testing.assert_allclose(terms["recon_loss"], jnp.mean(per_image_recon), rtol=1e-6)
    np.testing.assert_allclose(terms["latent_reg"] * num_images, jnp.sum(per_vector_reg),
                               rtol=1e-5)

  def test_gamma_means_the_same_at_32_and_128_pixels(self):
    """Tiling images and latents 4x4 (32x32 -> 128x128, 8x8 -> 32x32 grid) scales
    every term of the loss by the same 16, so gamma keeps its balance."""
    rng = np.random.default_rng(0)
    num_images, codes, dim = 2, 16, 4
    codebook = jnp.asarray(rng.normal(size=(codes, dim)), jnp.float32)

    def loss_terms(images, recon, zh, raw):
      z, aux = _quantize(codebook, zh.reshape(-1, dim), raw.reshape(-1, dim), train=False)
      z = z + 0.1  # A non-zero latent term.
      return _albo_loss(images, recon, z, aux, codebook, beta=3.0, gamma=0.7)

    images = jnp.asarray(rng.uniform(size=(num_images, 32, 32, 3)), jnp.float32)
    recon = jnp.asarray(rng.uniform(size=(num_images, 32, 32, 3)), jnp.float32)
    zh = jnp.asarray(rng.normal(size=(num_images, 8, 8, dim)), jnp.float32)
    raw = jnp.asarray(rng.normal(size=(num_images, 8, 8, dim)), jnp.float32)
    tile = lambda a: jnp.tile(a, (1, 4, 4, 1))
    small_loss, small = loss_terms(images, recon, zh, raw)
    large_loss, large = loss_terms(tile(images), tile(recon), tile(zh), tile(raw))
    for name in ("recon_loss", "latent_reg"):
      np.testing.assert_allclose(large[name], 16.0 * small[name], rtol=1e-5, err_msg=name)
    # qbar is unchanged by tiling; the KL enters per latent position (x P).
    np.testing.assert_allclose(large["kl"], small["kl"], rtol=1e-5)
    np.testing.assert_allclose(large_loss, 16.0 * small_loss, rtol=1e-5)
    np.testing.assert_allclose(large["recon"], small["recon"], rtol=1e-6)

  def test_elbo_and_aggregated_variants(self):
    images, recon, z, aux, codebook = self._loss_inputs()
    loss_fn = functools.partial(_albo_loss, images, recon, z, aux, codebook, beta=1.0,
                                gamma=1.0)
    _, elbo = loss_fn(objective="elbo")
    per_vector = jnp.sum(aux["probs"] * jnp.log(aux["probs"]), -1) + math.log(C)
    np.testing.assert_allclose(elbo["kl"], jnp.mean(per_vector), rtol=1e-5)
    _, albo = loss_fn()
    # Jensen: the mean conditional KL is at least the KL of the aggregate.
    self.assertGreaterEqual(float(elbo["kl"]), float(albo["kl"]))
    _, agg = loss_fn(latent_reg="aggregated")
    qbar = jnp.mean(aux["probs"], 0)
    dist = jnp.sum((z[:, None] - codebook[None]) ** 2, -1)
    np.testing.assert_allclose(agg["latent_reg"], jnp.sum(dist @ qbar) / images.shape[0],
                               rtol=1e-4)

  def test_rejects_unknown_variants(self):
    images, recon, z, aux, codebook = self._loss_inputs()
    with self.assertRaisesRegex(ValueError, "objective"):
      _albo_loss(images, recon, z, aux, codebook, beta=1.0, gamma=1.0, objective="vae")
    with self.assertRaisesRegex(ValueError, "latent_reg"):
      _albo_loss(images, recon, z, aux, codebook, beta=1.0, gamma=1.0, latent_reg="mean")

  def test_qbar_is_global_across_devices(self):
    """4 devices with a quarter of the vectors each see the 1-device loss and gradient."""
    devices = jax.devices()[:4]
    self.assertLen(devices, 4)
    zh, raw, codebook = _inputs(0, n=32)
    images = jax.random.uniform(jax.random.key(1), (4, 4, 4, 3))
    recon = jax.random.uniform(jax.random.key(2), (4, 4, 4, 3))

    def loss_and_grad(zh, raw, images, recon, axis_name):
      def loss_fn(zh):
        z, aux = _quantize(codebook, zh, raw, train=False)
        return _albo_loss(images, recon, z, aux, codebook, beta=1.0, gamma=1.0,
                              axis_name=axis_name)[0]
      loss, grad = jax.value_and_grad(loss_fn)(zh)
      return loss if axis_name is None else jax.lax.pmean(loss, axis_name), grad

    loss1, grad1 = jax.jit(functools.partial(loss_and_grad, axis_name=None))(zh, raw, images, recon)
    mesh = Mesh(np.array(devices), ("batch",))
    sharded = jax.jit(jax.shard_map(
        functools.partial(loss_and_grad, axis_name="batch"), mesh=mesh,
        in_specs=P("batch"), out_specs=(P(), P("batch")), check_vma=False))
    loss4, grad4 = sharded(zh, raw, images, recon)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
    # Each device differentiates the sum of all devices' losses (collectives
    # transpose into collectives), i.e. 4x the mean loss the 1-device run
    # differentiates; train_step pmeans parameter gradients accordingly.
    self.assertGreater(float(jnp.max(jnp.abs(grad1))), 1e-4)
    np.testing.assert_allclose(grad4 / 4.0, grad1, rtol=1e-4, atol=1e-7)


class TemperatureTest(parameterized.TestCase):

  def test_endpoints_and_monotone(self):
    schedule = functools.partial(_temperature_schedule, total_steps=1000)
    self.assertAlmostEqual(float(schedule(0)), 2.0, places=5)
    self.assertAlmostEqual(float(schedule(800)), 0.1, places=4)
    self.assertAlmostEqual(float(schedule(1000)), 0.1, places=6)
    self.assertAlmostEqual(float(schedule(400)), math.sqrt(2.0 * 0.1), places=4)
    values = np.asarray([schedule(t) for t in range(0, 1001, 50)])
    self.assertTrue(np.all(np.diff(values) <= 0))


if __name__ == "__main__":
  absltest.main()
