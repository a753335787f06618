"""Tests of the VQ-VAE family (gmvq_jax/quantizers/vq.py): +l2, +affine, +OPT, +replace."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from gmvq_jax.quantizers import vq

# The module's Config is the one home of the hyperparameters' defaults.
CONFIG = vq.Config(num_codes=16, latent_dim=4)
_quantize = functools.partial(vq.quantize, l2=CONFIG.l2, commitment=CONFIG.commitment)
_codebook_update = functools.partial(vq.codebook_update, l2=CONFIG.l2)


N, C, L = 32, 8, 4


def _inputs(seed=0, n=N, c=C, l=L):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return jax.random.normal(k1, (c, l)), jax.random.normal(k2, (n, l))


def _affine(seed=7, l=L):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return dict(scale=jax.random.uniform(k1, (l,), minval=0.5, maxval=2.0),
              shift=jax.random.normal(k2, (l,)))


def _numpy_nearest(codebook, z, l2=False, affine=None):
  codebook = np.asarray(codebook, np.float64)
  z = np.asarray(z, np.float64)
  if affine is not None:
    codebook = codebook * np.asarray(affine["scale"]) + np.asarray(affine["shift"])
  if l2:
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    codebook = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
  d = np.sum((z[:, None, :] - codebook[None]) ** 2, axis=-1)
  ordered = np.sort(d, axis=-1)
  # The known answer is only meaningful without near-ties.
  assert np.min(ordered[:, 1] - ordered[:, 0]) > 1e-5
  return np.argmin(d, axis=-1), codebook, z


def _sharded(fn, in_specs, out_specs):
  mesh = Mesh(np.array(jax.devices()[:4]), ("batch",))
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                               check_vma=False))


class QuantizeTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("plain", False, False), ("l2", True, False), ("affine", False, True),
      ("l2_affine", True, True))
  def test_indices_and_outputs_match_numpy_nearest_neighbour(self, l2, use_affine):
    codebook, z = _inputs()
    affine = _affine() if use_affine else None
    z_q, aux = jax.jit(functools.partial(_quantize, l2=l2))(codebook, z, affine=affine)
    expected, codewords, _ = _numpy_nearest(codebook, z, l2=l2, affine=affine)
    chex.assert_shape(z_q, (N, L))
    chex.assert_shape([aux["codes"]], (N, C))
    chex.assert_shape(aux["code_vectors"], (N, L))
    self.assertEqual(aux["indices"].dtype, jnp.int32)
    np.testing.assert_array_equal(aux["indices"], expected)
    np.testing.assert_array_equal(aux["codes"], np.eye(C, dtype=np.float32)[expected])
    np.testing.assert_allclose(z_q, codewords[expected], rtol=1e-5, atol=1e-6)
    if l2:
      np.testing.assert_allclose(jnp.linalg.norm(z_q, axis=-1), 1.0, rtol=1e-5)

  def test_affine_changes_the_assignment(self):
    # Guards the affine test above against an affine that happens to be a no-op.
    codebook, z = _inputs()
    _, plain = _quantize(codebook, z)
    _, affine = _quantize(codebook, z, affine=_affine())
    self.assertFalse(bool(jnp.all(plain["indices"] == affine["indices"])))
    identity = vq.init_affine(L)
    np.testing.assert_array_equal(identity["scale"], 1.0)
    np.testing.assert_array_equal(identity["shift"], 0.0)
    np.testing.assert_array_equal(vq.effective_codebook(codebook, identity), codebook)

  @parameterized.parameters(True, False)
  def test_forward_value_is_exactly_the_codeword(self, train):
    codebook, z = _inputs()
    z_q, aux = jax.jit(functools.partial(_quantize, train=train))(codebook, z)
    np.testing.assert_array_equal(z_q, np.asarray(codebook)[np.asarray(aux["indices"])])
    np.testing.assert_array_equal(z_q, aux["code_vectors"])

  def test_straight_through_gradient(self):
    codebook, z = _inputs()
    g = jax.random.normal(jax.random.key(5), (N, L))
    read_out = jax.jit(jax.grad(lambda cb, z: jnp.sum(_quantize(cb, z)[0] * g), argnums=(0, 1)))
    grad_codebook, grad_z = read_out(codebook, z)
    np.testing.assert_array_equal(grad_z, g)
    # The decoder's gradient does not reach the codebook (only the losses do).
    np.testing.assert_array_equal(grad_codebook, 0.0)
    # At evaluation there is no path to z.
    eval_grad = jax.grad(lambda z: jnp.sum(_quantize(codebook, z, train=False)[0] * g))(z)
    np.testing.assert_array_equal(eval_grad, 0.0)

  def test_l2_straight_through_goes_through_the_normalisation(self):
    codebook, z = _inputs()
    g = jax.random.normal(jax.random.key(5), (N, L))
    got = jax.jit(jax.grad(lambda z: jnp.sum(_quantize(codebook, z, l2=True)[0] * g)))(z)
    expected = jax.grad(lambda z: jnp.sum(z / jnp.linalg.norm(z, axis=-1, keepdims=True) * g))(z)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  def test_float32_whatever_the_input_dtype(self):
    codebook, z = _inputs()
    z_q, aux = jax.jit(_quantize)(codebook.astype(jnp.bfloat16), z.astype(jnp.bfloat16))
    self.assertEqual(z_q.dtype, jnp.float32)
    for key in ("codes", "code_vectors", "codebook_loss", "commitment_loss", "loss"):
      self.assertEqual(aux[key].dtype, jnp.float32, key)


class LossTest(parameterized.TestCase):

  def test_loss_values_are_element_means(self):
    codebook, z = _inputs()
    _, aux = jax.jit(functools.partial(_quantize, commitment=0.5))(codebook, z)
    chosen = np.asarray(codebook)[np.asarray(aux["indices"])]
    expected = np.mean((np.asarray(z) - chosen) ** 2)
    np.testing.assert_allclose(aux["codebook_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(aux["commitment_loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], 1.5 * expected, rtol=1e-5)

  @parameterized.parameters("codebook_loss", "commitment_loss")
  def test_each_loss_reaches_only_its_side(self, term):
    codebook, z = _inputs()
    affine = _affine()
    grads = jax.jit(jax.grad(lambda cb, z, a: _quantize(cb, z, affine=a)[1][term],
                             argnums=(0, 1, 2)))(codebook, z, affine)
    grad_codebook, grad_z, grad_affine = grads
    _, aux = _quantize(codebook, z, affine=affine)
    diff = np.asarray(z) - np.asarray(aux["code_vectors"])  # z - M_c, effective M
    used = np.zeros(C, bool)
    used[np.asarray(aux["indices"])] = True
    if term == "codebook_loss":
      np.testing.assert_array_equal(grad_z, 0.0)
      # d/dM_c mean (z - M_c)^2 = -2 / (N L) sum_{n in c} (z_n - M_c), then the affine chain.
      per_code = -2.0 / (N * L) * (np.eye(C)[np.asarray(aux["indices"])].T @ diff)
      np.testing.assert_allclose(grad_codebook, per_code * np.asarray(affine["scale"]),
                                 rtol=1e-4, atol=1e-6)
      np.testing.assert_array_equal(np.asarray(grad_codebook)[~used], 0.0)
      self.assertGreater(float(jnp.max(jnp.abs(grad_affine["shift"]))), 1e-4)
      np.testing.assert_allclose(grad_affine["shift"], per_code.sum(0), rtol=1e-4, atol=1e-6)
    else:
      np.testing.assert_array_equal(grad_codebook, 0.0)
      np.testing.assert_array_equal(grad_affine["scale"], 0.0)
      np.testing.assert_array_equal(grad_affine["shift"], 0.0)
      np.testing.assert_allclose(grad_z, 2.0 / (N * L) * diff, rtol=1e-4, atol=1e-7)


class CodebookUpdateTest(parameterized.TestCase):

  def _case(self):
    codebook, z = _inputs(3)
    # Codes 6 and 7 are left unused.
    indices = jnp.asarray(np.arange(N) % 6, jnp.int32)
    return codebook, z, indices

  @parameterized.named_parameters(("plain", False, False), ("affine", True, False),
                                  ("l2", False, True))
  def test_used_codes_move_to_cluster_means(self, use_affine, l2):
    codebook, z, indices = self._case()
    affine = _affine() if use_affine else None
    new = jax.jit(functools.partial(_codebook_update, l2=l2))(codebook, z, indices, affine=affine)
    z_np = np.asarray(z, np.float64)
    if l2:
      z_np = z_np / np.linalg.norm(z_np, axis=-1, keepdims=True)
    means = np.stack([z_np[np.asarray(indices) == c].mean(0) for c in range(6)])
    effective = vq.effective_codebook(new, affine)
    np.testing.assert_allclose(effective[:6], means, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new[6:], codebook[6:])
    chex.assert_shape(new, (C, L))

  def test_same_on_four_devices_as_on_one(self):
    codebook, z, indices = self._case()
    affine = _affine()
    one = jax.jit(_codebook_update)(codebook, z, indices, affine=affine)

    def per_device(codebook, z, indices, affine):
      return _codebook_update(codebook, z, indices, affine=affine, axis_name="batch")[None]

    four = _sharded(per_device, (P(), P("batch"), P("batch"), P()), P("batch"))(
        codebook, z, indices, affine)
    chex.assert_shape(four, (4, C, L))
    for device_codebook in four:
      np.testing.assert_array_equal(device_codebook, four[0])
    np.testing.assert_allclose(four[0], one, rtol=1e-5, atol=1e-6)
    # Not trivially equal to the input: the used codes did move.
    self.assertGreater(float(jnp.max(jnp.abs(one[:6] - codebook[:6]))), 1e-2)


class ReplaceTest(parameterized.TestCase):

  def test_dead_codes_replaced_by_batch_rows_and_counters(self):
    codebook, z = _inputs(4)
    indices = jnp.asarray(np.arange(N) % 5, jnp.int32)  # Codes 5, 6, 7 unused.
    state = vq.ReplaceState(steps_unused=jnp.asarray([9, 0, 0, 0, 0, 2, 0, 2], jnp.int32))
    replace = jax.jit(functools.partial(vq.replace_dead_codes, replace_after=3))
    new, new_state, num = replace(codebook, state, z, indices, jax.random.key(0))
    # Codes 5 and 7 reach 3 unused steps and are replaced; 6 reaches only 1.
    np.testing.assert_array_equal(new_state.steps_unused, [0, 0, 0, 0, 0, 0, 1, 0])
    self.assertEqual(int(num), 2)
    self.assertEqual(new_state.steps_unused.dtype, jnp.int32)
    np.testing.assert_array_equal(new[:5], codebook[:5])  # Used codes untouched.
    np.testing.assert_array_equal(new[6], codebook[6])
    z_np = np.asarray(z)
    for c in (5, 7):
      self.assertTrue(np.any(np.all(z_np == np.asarray(new[c]), axis=-1)), f"code {c}")
    self.assertFalse(np.array_equal(new[5], new[7]))  # Distinct rows when N >= C.

  def test_unused_code_replaced_after_exactly_replace_after_steps(self):
    codebook, z = _inputs(5)
    indices = jnp.asarray(np.arange(N) % (C - 1), jnp.int32)  # Code C-1 never used.
    replace = jax.jit(functools.partial(vq.replace_dead_codes, replace_after=3))
    state = vq.init_replace_state(C)
    np.testing.assert_array_equal(state.steps_unused, 0)
    for step in range(3):
      new, state, num = replace(codebook, state, z, indices, jax.random.key(step))
      if step < 2:
        self.assertEqual(int(num), 0)
        np.testing.assert_array_equal(new, codebook)
        self.assertEqual(int(state.steps_unused[C - 1]), step + 1)
    self.assertEqual(int(num), 1)
    self.assertEqual(int(state.steps_unused[C - 1]), 0)
    self.assertTrue(np.any(np.all(np.asarray(z) == np.asarray(new[C - 1]), axis=-1)))

  def test_affine_replacement_makes_the_effective_code_a_batch_row(self):
    codebook, z = _inputs(6)
    affine = _affine()
    indices = jnp.zeros((N,), jnp.int32)  # Only code 0 used.
    new, _, num = jax.jit(functools.partial(vq.replace_dead_codes, replace_after=1))(
        codebook, vq.init_replace_state(C), z, indices, jax.random.key(1), affine=affine)
    self.assertEqual(int(num), C - 1)
    effective = np.asarray(vq.effective_codebook(new, affine))
    distance = np.min(np.sum((effective[1:, None] - np.asarray(z)[None]) ** 2, -1), axis=1)
    np.testing.assert_allclose(distance, 0.0, atol=1e-8)

  def test_same_on_four_devices_as_on_one(self):
    codebook, z = _inputs(7)
    # Code 2 is used on one device's quarter only: globally used, never replaced.
    indices = np.arange(N) % 2
    indices[N // 4 + 1] = 2
    indices = jnp.asarray(indices, jnp.int32)
    state = vq.ReplaceState(steps_unused=jnp.asarray([0, 0, 4, 0, 4, 4, 1, 4], jnp.int32))
    rng = jax.random.key(11)
    fn = functools.partial(vq.replace_dead_codes, replace_after=5)
    one_codebook, one_state, one_num = jax.jit(fn)(codebook, state, z, indices, rng)
    self.assertEqual(int(one_num), 3)  # Codes 4, 5, 7.
    np.testing.assert_array_equal(one_state.steps_unused, [0, 0, 0, 1, 0, 0, 2, 0])

    def per_device(codebook, state, z, indices, rng):
      new, new_state, num = fn(codebook, state, z, indices, rng, axis_name="batch")
      return new[None], new_state.steps_unused[None], num[None]

    four = _sharded(per_device, (P(), P(), P("batch"), P("batch"), P()),
                    (P("batch"), P("batch"), P("batch")))(codebook, state, z, indices, rng)
    for got, want in zip(four, (one_codebook, one_state.steps_unused, one_num)):
      self.assertEqual(got.shape[0], 4)
      for device_value in got:
        np.testing.assert_array_equal(device_value, want)

  def test_rejects_nonpositive_replace_after(self):
    codebook, z = _inputs()
    with self.assertRaisesRegex(ValueError, "replace_after"):
      vq.replace_dead_codes(codebook, vq.init_replace_state(C), z, jnp.zeros((N,), jnp.int32),
                            jax.random.key(0), replace_after=0)


class UsageTest(parameterized.TestCase):

  def test_hand_made_histogram(self):
    indices = jnp.asarray([0, 0, 1, 1, 4, 4, 4, 4], jnp.int32)  # p = (1/4, 1/4, 0, 0, 1/2, 0...)
    stats = jax.jit(vq.usage, static_argnums=1)(indices, 8)
    expected = math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))
    self.assertAlmostEqual(float(stats["perplexity"]), expected, places=5)
    self.assertAlmostEqual(float(stats["code_usage"]), 3 / 8, places=6)
    np.testing.assert_array_equal(stats["code_counts"], [2, 2, 0, 0, 4, 0, 0, 0])

  def test_global_over_four_devices(self):
    # Each device uses one code; the global histogram uses four, uniformly.
    indices = jnp.asarray(np.repeat(np.arange(4), 2), jnp.int32)

    def per_device(indices):
      stats = vq.usage(indices, 8, axis_name="batch")
      return stats["perplexity"][None], stats["code_usage"][None]

    perplexity, code_usage = _sharded(per_device, P("batch"), (P("batch"), P("batch")))(indices)
    np.testing.assert_allclose(perplexity, 4.0, rtol=1e-5)
    np.testing.assert_allclose(code_usage, 0.5, rtol=1e-6)


if __name__ == "__main__":
  absltest.main()
