"""Tokens from every method: round trips, token files, fingerprints, launchers, no overwrites."""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from gmvq_jax import conversion
from gmvq_jax import data
from gmvq_jax import methods
from gmvq_jax import token_files
from gmvq_jax import tokenizer as tokenizer_lib
from gmvq_jax import train_lib
import gmvq_jax
import launch_utils
import tiny_configs


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=launch_utils.REPO, capture_output=True,
                        text=True, env=launch_utils.child_env(), timeout=600)


def _config(method, **overrides):
  overrides = {"num_steps": 2, "optimizer.warmup_steps": 1, "eval_batch_size": 8,
               "parallelism": "jit", "checkpoint_every_steps": 2, "log_every_steps": 1,
               **overrides}
  return tiny_configs.method_config(method, **overrides)


class RoundTripTest(parameterized.TestCase):
  """decode(encode(x)) is the evaluation's reconstruction, for every registered method."""

  @parameterized.parameters(*methods.NAMES)
  def test_decode_of_encode_is_the_eval_reconstruction(self, method):
    config = _config(method)
    dataset = data.from_config(config)
    state = train_lib.create_train_state(config, jax.random.key(1), dataset)
    tokenizer = tokenizer_lib.Tokenizer(config, state)
    images = next(dataset.eval_batches(8))
    tokens = tokenizer.encode(images)
    self.assertEqual(tokens.dtype, np.int32)
    self.assertEqual(tokens.shape, (8,) + tokenizer.token_shape)
    self.assertTrue(np.all((np.asarray(tokens) >= 0)
                           & (np.asarray(tokens) < tokenizer.codebook_size)))
    decoded = np.asarray(tokenizer.decode(tokens))
    if methods.make_quantizer(config).posterior is None:
      _, expected = train_lib.make_eval_fn(config)(state, images, np.ones(8, np.float32))
    else:  # GQ evaluates the posterior means; its tokens are the offline conversion's.
      codebook = tokenizer.codebook_arrays["codebook"]
      expected = jax.jit(functools.partial(conversion.convert_batch, config=config))(
          state, images, codebook, np.float32(config.quantizer.prior_weight))["vq"]
    np.testing.assert_allclose(decoded, np.asarray(expected), atol=1e-5, rtol=0)
    # uint8 images are read as x / 255, and another call of the same shape is not retraced.
    as_uint8 = np.round(images * 255).astype(np.uint8)
    np.testing.assert_array_equal(tokenizer.encode(as_uint8),
                                  tokenizer.encode(as_uint8.astype(np.float32) / 255))
    self.assertEqual(tokenizer._encode._cache_size(), 1)  # pylint: disable=protected-access

  def test_bad_inputs_are_one_line_errors(self):
    config = _config("fsq")
    state = train_lib.create_train_state(config, jax.random.key(0), data.from_config(config))
    tokenizer = gmvq_jax.Tokenizer(config, state)
    with self.assertRaisesRegex(tokenizer_lib.TokenizerError, r"images of shape \(2, 8, 8, 3\)"):
      tokenizer.encode(np.zeros((2, 8, 8, 3), np.float32))
    size = tokenizer.codebook_size
    with self.assertRaisesRegex(token_files.TokenFileError, rf"outside \[0, {size}\)"):
      tokenizer.decode(np.full((1,) + tokenizer.token_shape, size))
    with self.assertRaisesRegex(tokenizer_lib.TokenizerError, "leave them out"):
      tokenizer_lib.Tokenizer(config, state, codebook_seed=3)


class TokenFileTest(absltest.TestCase):
  """Token files of trained runs: the launchers, fingerprints, refusals and no overwrites."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.workdirs = {}
    for name, method, seed in (("vq", "vqvae", 0), ("vq_other", "vqvae", 1), ("gq", "gq", 0)):
      cls.workdirs[name] = os.path.join(cls.root, name)
      train_lib.train_and_evaluate(_config(method, seed=seed), cls.workdirs[name])
    cls.vq_tokens, cls.vq_metadata = tokenizer_lib.tokenize_split(cls.workdirs["vq"])

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _tmpdir(self):
    path = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return path

  def _decode(self, workdir, tokens, **kwargs):
    return tokenizer_lib.decode_file(workdir, tokens,
                                     output=os.path.join(self._tmpdir(), "out.npz"), **kwargs)

  def test_token_file_holds_the_tokenizers_tokens_and_fingerprints(self):
    tokens, arrays, metadata = token_files.load(self.vq_tokens)
    tokenizer = tokenizer_lib.Tokenizer.from_workdir(self.workdirs["vq"])
    _, _, dataset = tokenizer_lib.evaluation.restore_run(self.workdirs["vq"])
    images = np.concatenate(list(dataset.eval_batches(8)))
    np.testing.assert_array_equal(tokens, np.asarray(tokenizer.encode(images)))
    self.assertEqual(sorted(arrays), ["quantizer/codebook"])
    self.assertEqual((metadata["version"], metadata["method"], metadata["split"]),
                     (token_files.VERSION, "vqvae", "test"))
    self.assertEqual(metadata["checkpoint_fingerprint"], tokenizer.checkpoint_fingerprint)
    self.assertEqual(metadata["codebook_fingerprint"], tokenizer.codebook_fingerprint)
    with open(str(self.vq_tokens.with_suffix(".json"))) as f:
      self.assertEqual(json.load(f), metadata)
    np.testing.assert_array_equal(tokenizer.decode(str(self.vq_tokens)), tokenizer.decode(tokens))
    path, decoded = self._decode(self.workdirs["vq"], self.vq_tokens)
    np.testing.assert_allclose(decoded, np.clip(np.asarray(tokenizer.decode(tokens)), 0, 1),
                               atol=1e-6)
    with np.load(str(path)) as stored:
      np.testing.assert_array_equal(stored["images"], np.round(decoded * 255).astype(np.uint8))

  def test_tokens_of_another_run_are_refused(self):
    directory = self._tmpdir()
    before = tiny_configs.snapshot(directory)
    with self.assertRaisesRegex(token_files.ForeignTokensError,
                                "made by another checkpoint and another codebook"):
      tokenizer_lib.decode_file(self.workdirs["vq_other"], self.vq_tokens,
                                output=os.path.join(directory, "out.npz"))
    self.assertEqual(tiny_configs.snapshot(directory), before)
    tokens, _, metadata = token_files.load(self.vq_tokens)
    other = tokenizer_lib.Tokenizer.from_workdir(self.workdirs["vq_other"])
    with self.assertRaisesRegex(token_files.ForeignTokensError, "another checkpoint"):
      other.decode(tokens, metadata=metadata)
    with self.assertRaisesRegex(token_files.ForeignTokensError, "tokens of a 'vqvae' run"):
      tokenizer_lib.decode_file(self.workdirs["gq"], self.vq_tokens,
                                output=os.path.join(directory, "out.npz"))

  def test_a_codebook_changed_by_half_is_refused(self):
    directory = self._tmpdir()
    tokens, arrays, metadata = token_files.load(self.vq_tokens)
    changed = os.path.join(directory, "changed.npz")
    token_files.save(changed, tokens, {"quantizer/codebook": arrays["quantizer/codebook"] + 0.5},
                     metadata)
    with self.assertRaisesRegex(token_files.ForeignTokensError, "changed after the tokens"):
      tokenizer_lib.decode_file(self.workdirs["vq"], changed)
    self.assertFalse(os.path.exists(os.path.join(directory, "changed_decoded.npz")))
    with self.assertRaisesRegex(token_files.ForeignTokensError, "changed after the tokens"):
      tokenizer_lib.Tokenizer.from_workdir(self.workdirs["vq"]).decode(changed)
    # The model's own codebook moved by +0.5: its tokens mean other codewords now.
    config, state, _ = tokenizer_lib.evaluation.restore_run(self.workdirs["vq"])
    quantizer = dict(state.params["quantizer"], codebook=state.params["quantizer"]["codebook"] + 0.5)
    moved = tokenizer_lib.Tokenizer(config, state.replace(params=dict(state.params,
                                                                      quantizer=quantizer)))
    with self.assertRaisesRegex(token_files.ForeignTokensError, "and another codebook"):
      moved.decode(tokens, metadata=metadata)
    # GQ: tokens of another codebook seed index another codebook.
    gq_tokens, _ = tokenizer_lib.tokenize_split(
        self.workdirs["gq"], output=os.path.join(directory, "gq.npz"), codebook_seed=5)
    _, _, gq_metadata = token_files.load(gq_tokens)
    default = tokenizer_lib.Tokenizer.from_workdir(self.workdirs["gq"])
    with self.assertRaisesRegex(token_files.ForeignTokensError,
                                "another codebook.*codebook_seed=5"):
      default.check_metadata(gq_metadata)
    seeded = tokenizer_lib.Tokenizer.from_workdir(self.workdirs["gq"], codebook_seed=5,
                                                  prior_weight=2.0)
    seeded.check_metadata(gq_metadata)  # The prior weight does not change what tokens mean.

  def test_outputs_are_not_overwritten_without_overwrite(self):
    directory = self._tmpdir()
    output = os.path.join(directory, "tokens.npz")
    tokenizer_lib.tokenize_split(self.workdirs["vq"], output=output)
    before = tiny_configs.snapshot(directory)
    with self.assertRaisesRegex(token_files.OutputExistsError, "pass --overwrite"):
      tokenizer_lib.tokenize_split(self.workdirs["vq"], output=output, split="val")
    decoded = os.path.join(directory, "images.npz")
    tokenizer_lib.decode_file(self.workdirs["vq"], output, output=decoded)
    before = tiny_configs.snapshot(directory)
    with self.assertRaisesRegex(token_files.OutputExistsError, "images.npz exists"):
      tokenizer_lib.decode_file(self.workdirs["vq"], output, output=decoded)
    with self.assertRaisesRegex(token_files.TokenFileError, "is the token file itself"):
      tokenizer_lib.decode_file(self.workdirs["vq"], output, output=output, overwrite=True)
    self.assertEqual(tiny_configs.snapshot(directory), before)
    _, metadata = tokenizer_lib.tokenize_split(self.workdirs["vq"], output=output, split="val",
                                               overwrite=True)
    self.assertEqual(metadata["split"], "val")
    tokenizer_lib.decode_file(self.workdirs["vq"], output, output=decoded, overwrite=True)

  def test_version_2_gq_files_still_decode(self):
    directory = self._tmpdir()
    tokens_path, _ = tokenizer_lib.tokenize_split(self.workdirs["gq"],
                                                  output=os.path.join(directory, "new.npz"))
    tokens, arrays, metadata = token_files.load(tokens_path)
    old = {k: metadata[k] for k in ("tokens_shape", "codebook_size", "group_size", "latent_dim",
                                    "codebook_seed", "sampler", "prior_weight", "step")}
    old_path = os.path.join(directory, "old.npz")
    np.savez(old_path, tokens=tokens, codebook=arrays["codebook"],
             metadata=np.asarray(json.dumps(dict(old, version=2))))
    _, new_images = self._decode(self.workdirs["gq"], tokens_path)
    _, old_images = self._decode(self.workdirs["gq"], old_path)
    np.testing.assert_array_equal(old_images, new_images)

  def test_launchers_tokenize_and_decode(self):
    for name in ("vq", "gq"):
      workdir = os.path.join(self._tmpdir(), name)
      shutil.copytree(self.workdirs[name], workdir)
      tokens = os.path.join(workdir, "tokens", "val.npz")
      result = _run("launch.tokenize", f"--workdir={workdir}", "--split=val")
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      self.assertIn(f"to {tokens}", result.stdout)
      result = _run("launch.decode", f"--workdir={workdir}", f"--tokens={tokens}")
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      self.assertIn("Decoded 12 images", result.stdout)
      with np.load(tokens[:-4] + "_decoded.npz") as stored:
        self.assertEqual(stored["images"].shape, (12, 16, 16, 3))
    # In the last (GQ) workdir: an existing output is kept, one line says why.
    before = tiny_configs.snapshot(workdir)
    result = _run("launch.decode", f"--workdir={workdir}", f"--tokens={tokens}")
    self.assertEqual(result.returncode, 1)
    self.assertIn("error: ", result.stderr)
    self.assertIn("exists; pass --overwrite", result.stderr.strip().splitlines()[-1])
    result = _run("launch.decode", f"--workdir={self.workdirs['vq']}", f"--tokens={tokens}")
    self.assertEqual(result.returncode, 1)
    self.assertIn("tokens of a 'gq' run", result.stderr.strip().splitlines()[-1])
    self.assertEqual(tiny_configs.snapshot(workdir), before)


if __name__ == "__main__":
  absltest.main()
