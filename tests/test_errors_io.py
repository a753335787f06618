"""errors.UserError (every user error derives from it), io.atomic_write, padded eval batches."""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from gmvq_jax import checkpointing
from gmvq_jax import config_checks
from gmvq_jax import conversion
from gmvq_jax import data
from gmvq_jax import distributed
from gmvq_jax import errors
from gmvq_jax import faults
from gmvq_jax import io as io_lib
from gmvq_jax.data import pipeline
import tiny_configs


class UserErrorTest(absltest.TestCase):

  def test_every_user_error_derives_from_user_error(self):
    for error in (config_checks.ConfigError, conversion.ConversionError,
                  conversion.TokenFileError, checkpointing.CheckpointError,
                  faults.NonFiniteError, data.DatasetNotPreparedError, data.DataError,
                  pipeline.DataPositionError, distributed.DistributedSetupError,
                  errors.UserFileNotFoundError, errors.UserNotADirectoryError):
      self.assertTrue(issubclass(error, errors.UserError), error)
    # Callers that caught the built-in kinds still catch them.
    self.assertTrue(issubclass(data.DatasetNotPreparedError, FileNotFoundError))
    self.assertTrue(issubclass(config_checks.ConfigError, ValueError))


class AtomicWriteTest(absltest.TestCase):

  def test_renames_on_success_and_leaves_nothing_on_failure(self):
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "out.txt")
    with io_lib.atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
      f.write("first")
    with self.assertRaises(RuntimeError):
      with io_lib.atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
          f.write("second")
        raise RuntimeError("interrupted")
    with open(path, encoding="utf-8") as f:
      self.assertEqual(f.read(), "first")
    self.assertEqual(os.listdir(directory), ["out.txt"])

  def test_suffix_for_numpy(self):
    path = os.path.join(tempfile.mkdtemp(), "arrays.npz")
    with io_lib.atomic_write(path, ".npz") as tmp:
      np.savez(tmp, x=np.arange(3))
    with np.load(path) as contents:
      np.testing.assert_array_equal(contents["x"], np.arange(3))


class PaddedBatchesTest(absltest.TestCase):

  def test_pads_the_short_batch_and_masks_it(self):
    batches = [np.ones((4, 2), np.float32), np.full((1, 2), 2.0, np.float32)]
    out = list(pipeline.padded_batches(iter(batches), 4))
    self.assertEqual([real for _, _, real in out], [4, 1])
    for padded, mask, _ in out:
      self.assertEqual(padded.shape, (4, 2))
      self.assertEqual(mask.dtype, np.float32)
    np.testing.assert_array_equal(out[1][1], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[1][0][:, 0], [2.0, 0.0, 0.0, 0.0])


class FromConfigTest(absltest.TestCase):

  def test_reads_the_config_fields(self):
    config = tiny_configs.tiny_config()
    dataset = data.from_config(config)
    self.assertEqual(dataset.image_shape, (16, 16, 3))
    self.assertEqual(dataset.num_eval_examples, 12)


if __name__ == "__main__":
  absltest.main()
