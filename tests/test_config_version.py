"""Config versions: runs saved with renamed fields are refused; each default has one home."""

import dataclasses
import inspect
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax.numpy as jnp
import ml_collections

from configs import base
from gmvq_jax import checkpointing
from gmvq_jax import config_checks
from gmvq_jax import config_version
from gmvq_jax import conversion
from gmvq_jax import methods
from gmvq_jax import train_lib
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook
import tiny_configs


def _version_1(method, **renamed):
  """A config as gmvq_jax saved it before config versions: no config_version, old names."""
  config = tiny_configs.method_config(method).to_dict()
  del config["config_version"]
  quantizer = config["quantizer"]
  for old, new in renamed.items():
    quantizer[old] = quantizer.pop(new)
  return ml_collections.ConfigDict(config)


class UpgradeTest(parameterized.TestCase):

  def test_gq_beta_and_latent_channels_are_refused_with_their_new_names(self):
    saved = _version_1("gq", beta="prior_weight", latent_channels="latent_dim")
    with self.assertRaises(config_version.ConfigVersionError) as raised:
      config_version.upgrade(saved, "WORKDIR")
    message = str(raised.exception)
    self.assertEqual(
        message,
        "WORKDIR: this run was made by gmvq_jax config version 1; field quantizer.beta of gq"
        " is now quantizer.prior_weight; field quantizer.latent_channels of gq is now"
        " quantizer.latent_dim (config version 2). Train it again in a new --workdir, or use"
        " the gmvq_jax that made it.")
    self.assertNotIn("\n", message)

  @parameterized.parameters("lfq", "bsq")
  def test_bit_quantizers_old_names_are_refused(self, method):
    saved = _version_1(method, num_bits="log2_codebook_size", commitment_weight="commitment")
    with self.assertRaisesRegex(
        config_version.ConfigVersionError,
        f"version 1; field quantizer.commitment_weight of {method} is now quantizer.commitment;"
        f" field quantizer.num_bits of {method} is now quantizer.log2_codebook_size"):
      config_version.upgrade(saved, "WORKDIR")

  def test_gmvq_beta_is_not_renamed(self):
    saved = _version_1("gmvq")
    self.assertIn("beta", saved.quantizer)
    upgraded = config_version.upgrade(saved, "WORKDIR")
    self.assertEqual(upgraded.config_version, config_version.CURRENT)
    without_version = upgraded.to_dict()
    del without_version["config_version"]
    self.assertEqual(without_version, saved.to_dict())

  def test_a_newer_version_is_refused(self):
    saved = tiny_configs.method_config("vqvae")
    saved.config_version = config_version.CURRENT + 1
    with self.assertRaisesRegex(config_version.ConfigVersionError,
                                f"config version {config_version.CURRENT + 1}"):
      config_version.upgrade(saved, "WORKDIR")

  def test_the_current_version_reads_as_it_is(self):
    saved = tiny_configs.method_config("gq")
    self.assertIs(config_version.upgrade(saved, "WORKDIR"), saved)

  @parameterized.parameters(1, 2)
  def test_a_field_added_later_reads_as_what_the_run_did(self, version):
    """Runs saved before config.prng_impl existed drew with threefry: they resume and compare."""
    current = tiny_configs.method_config("gmvq")
    saved = current.to_dict()
    del saved["prng_impl"]
    if version == 1:
      del saved["config_version"]
    upgraded = config_version.upgrade(ml_collections.ConfigDict(saved), "WORKDIR")
    self.assertEqual(upgraded.prng_impl, "threefry2x32")
    self.assertEqual(upgraded.to_dict(), current.to_dict())
    checkpointing.check_resumable(upgraded, current, "WORKDIR")  # Nothing differs.
    current.prng_impl = "philox4x32"
    with self.assertRaisesRegex(checkpointing.CheckpointError, "prng_impl"):
      checkpointing.check_resumable(upgraded, current, "WORKDIR")

  def test_base_config_is_the_current_version(self):
    self.assertEqual(base.get_config().config_version, config_version.CURRENT)

  def test_a_fresh_config_with_an_old_name_names_the_new_one(self):
    config = tiny_configs.method_config("gq")
    config.quantizer.beta = config.quantizer.prior_weight
    del config.quantizer["prior_weight"]
    with self.assertRaisesRegex(config_checks.ConfigError,
                                r"quantizer.beta=1.0 is invalid: the field is now"
                                r" quantizer.prior_weight"):
      config_checks.validate(config, num_devices=1)

  def test_a_config_of_another_version_is_invalid(self):
    config = tiny_configs.method_config("vqvae")
    config.config_version = 1
    with self.assertRaisesRegex(config_checks.ConfigError, "config.config_version=1 is invalid"):
      config_checks.validate(config, num_devices=1)


class SavedRunTest(absltest.TestCase):
  """The refusal where a saved run is read: resume, evaluation, conversion."""

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)
    manager = checkpointing.make_manager(self.workdir)
    saved = _version_1("gq", beta="prior_weight", latent_channels="latent_dim")
    checkpointing.save(manager, 2, {"step": jnp.zeros((), jnp.int32)}, saved)
    manager.close()

  def test_resume_is_refused_before_anything_is_restored(self):
    with self.assertRaisesRegex(config_version.ConfigVersionError,
                                "field quantizer.beta of gq is now quantizer.prior_weight"):
      train_lib.train_and_evaluate(tiny_configs.method_config("gq"), self.workdir)

  def test_conversion_is_refused(self):
    with self.assertRaisesRegex(config_version.ConfigVersionError, "config version 1"):
      conversion.convert(self.workdir)


class SingleSourceDefaultsTest(absltest.TestCase):

  def test_no_function_repeats_a_config_default(self):
    """A quantizer function's parameter named as a Config field has no default (None aside)."""
    repeated = []
    modules = {methods.get(name).quantizer_module() for name in methods.NAMES}
    # (module, the Config whose fields it must not default): GQ's codebook module too.
    pairs = [(module, module.Config) for module in modules] + [(gq_codebook, gq.Config)]
    for module, config_class in pairs:
      fields = {field.name for field in dataclasses.fields(config_class)}
      for name, function in vars(module).items():
        if not inspect.isfunction(function) or function.__module__ != module.__name__:
          continue
        for parameter in inspect.signature(function).parameters.values():
          if parameter.name in fields and parameter.default not in (inspect.Parameter.empty,
                                                                     None):
            repeated.append(f"{module.__name__}.{name}({parameter.name}={parameter.default!r})")
    self.assertEqual(repeated, [])

  def test_shared_fields_come_from_one_base(self):
    """k-means and codebook fields are declared once, in interface's bases."""
    for name in methods.NAMES:
      config_class = methods.get(name).quantizer_module().Config
      own = set(config_class.__dict__.get("__annotations__", {}))
      for shared in ("num_codes", "latent_dim", "kmeans_seeding", "kmeans_iters",
                     "kmeans_batches", "log2_codebook_size"):
        if shared == "latent_dim" and "latent_dim" in own:
          continue  # GQ's latent_dim has its own default (c = 8).
        self.assertNotIn(shared, own, (name, shared))

  def test_fsq_levels_follow_num_codes(self):
    self.assertEqual(methods.quantizer_config("fsq", num_codes=1024).levels, (8, 5, 5, 5))
    self.assertEqual(methods.quantizer_config("fsq", num_codes=2**16).levels, (8, 8, 8, 5, 5, 5))

  def test_bits_follow_num_codes(self):
    for name in ("lfq", "bsq", "gq"):
      self.assertEqual(methods.quantizer_config(name, num_codes=4096).log2_codebook_size, 12)


if __name__ == "__main__":
  absltest.main()
