"""Tests for `python -m launch.prepare_data`, run as a user runs it, as far as no TensorFlow allows.

Building needs TensorFlow and the internet, neither of which the tests have,
so a real download is not tested. "Already prepared" uses a small cifar10
written here as genuine ArrayRecord files with TFDS's own metadata classes,
which `tfds.data_source` then reads like a built one.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from array_record.python import array_record_module
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_pb2

from gmvq_jax import data
from launch import prepare_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


def _feature(**kind) -> tf_feature_pb2.Feature:
  return tf_feature_pb2.Feature(**kind)


def write_prepared_cifar10(data_dir: str, sizes: dict[str, int],
                           file_format: str = "array_record") -> dict[str, np.ndarray]:
  """Writes a cifar10 with `sizes[split]` random images per split, as TFDS would.

  Returns:
    The images of each split, (N, 32, 32, 3) uint8, in record order.
  """
  builder = tfds.builder("cifar10", data_dir=data_dir)
  path = builder.data_path
  os.makedirs(path)
  images, splits = {}, []
  for index, (split, size) in enumerate(sizes.items()):
    images[split] = np.random.default_rng(index).integers(0, 256, (size, 32, 32, 3), np.uint8)
    template = tfds.core.ShardedFileTemplate(
        data_dir=path, dataset_name="cifar10", split=split, filetype_suffix=file_format)
    writer = array_record_module.ArrayRecordWriter(
        os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)), "group_size:1")
    num_bytes = 0
    for i, image in enumerate(images[split]):
      png = io.BytesIO()
      Image.fromarray(image).save(png, "PNG")
      example = tf_example_pb2.Example(features=tf_feature_pb2.Features(feature={
          "id": _feature(bytes_list=tf_feature_pb2.BytesList(value=[f"{split}_{i}".encode()])),
          "image": _feature(bytes_list=tf_feature_pb2.BytesList(value=[png.getvalue()])),
          "label": _feature(int64_list=tf_feature_pb2.Int64List(value=[i % 10])),
      }))
      record = example.SerializeToString()
      num_bytes += len(record)
      writer.write(record)
    writer.close()
    splits.append(tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=num_bytes,
                                      filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  builder.info.set_file_format(file_format, override=True)
  builder.info.write_to_directory(path)
  return images


def _snapshot(directory: str) -> dict[str, tuple[int, int]]:
  """Every file under `directory` with its size and modification time."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      stat = os.stat(os.path.join(root, name))
      files[os.path.join(root, name)] = (stat.st_size, stat.st_mtime_ns)
  return files


class PrepareDataLauncherTest(absltest.TestCase):
  """The launcher as a subprocess: its exit status and what it prints."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
    cls.prepared_dir = os.path.join(cls.tmp, "prepared")
    write_prepared_cifar10(cls.prepared_dir, {"train": 6, "test": 3})
    cls.before = _snapshot(cls.prepared_dir)
    cls.empty_dir = os.path.join(cls.tmp, "empty")
    runs = {"prepared": ["--dataset=cifar10", f"--data_dir={cls.prepared_dir}"]}
    if not HAS_TENSORFLOW:  # With TensorFlow this would start a real download.
      runs["no_tensorflow"] = ["--dataset=cifar10", f"--data_dir={cls.empty_dir}"]
    # Started together: each pays ~3 s of imports.
    processes = {
        key: subprocess.Popen([sys.executable, "-m", "launch.prepare_data", *args], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for key, args in runs.items()}
    cls.results = {}
    for key, process in processes.items():
      stdout, stderr = process.communicate(timeout=300)
      cls.results[key] = (process.returncode, stdout, stderr)

  def _failure_line(self, key: str) -> str:
    returncode, stdout, stderr = self.results[key]
    self.assertEqual(returncode, 1, stderr)
    self.assertEqual(stdout, "")
    self.assertNotIn("Traceback", stderr)
    line = stderr.strip().splitlines()[-1]
    self.assertTrue(line.startswith("error: "), stderr)
    return line

  def test_missing_tensorflow_says_how_to_install_it(self):
    if HAS_TENSORFLOW:
      self.skipTest("TensorFlow is installed, so the launcher would build for real.")
    line = self._failure_line("no_tensorflow")
    self.assertIn("needs TensorFlow", line)
    self.assertIn("pip install -e '.[prepare]'", line)
    self.assertFalse(os.path.exists(self.empty_dir))  # Nothing written.

  def test_already_prepared_changes_nothing(self):
    returncode, stdout, stderr = self.results["prepared"]
    self.assertEqual(returncode, 0, stderr)
    self.assertIn("cifar10 is already prepared as ArrayRecord files", stdout)
    self.assertIn(f"config.data_dir={self.prepared_dir!r}", stdout)
    self.assertEqual(_snapshot(self.prepared_dir), self.before)


class PreparedDataTest(absltest.TestCase):
  """`prepare` in-process on hand-made data_dirs, and the reader on a prepared one."""

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

  def test_prepared_array_record_files_are_read_by_the_training_pipeline(self):
    images = write_prepared_cifar10(self.tmp, {"train": 10, "test": 4})
    ds = data.make_dataset("cifar10", image_size=32, seed=2, data_dir=self.tmp)
    # The last of the 10 training images is held out as the val split.
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples), (9, 1, 4))
    np.testing.assert_array_equal(np.concatenate(list(ds.eval_batches(3))),
                                  (images["test"] / np.float32(255)).astype(np.float32))
    np.testing.assert_array_equal(next(ds.eval_batches(3, split="val")),
                                  (images["train"][9:] / np.float32(255)).astype(np.float32))
    order = np.random.default_rng((2, 0)).permutation(9)
    whole = ds.train_batch(0, 8)
    np.testing.assert_array_equal(whole, (images["train"][order[:8]] / np.float32(255))
                                  .astype(np.float32))
    parts = [ds.train_batch(0, 8, shard=i, num_shards=4) for i in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)

  def test_unknown_dataset_lists_the_allowed_names(self):
    with self.assertRaises(prepare_data.PrepareError) as raised:
      prepare_data.prepare("mnist", self.tmp)
    message = str(raised.exception)
    self.assertIn("Unknown dataset 'mnist'", message)
    for name in ("cifar10", "celeb_a", "imagenet2012"):
      self.assertIn(repr(name), message)
    self.assertEqual(os.listdir(self.tmp), [])

  def test_other_file_format_is_left_alone(self):
    write_prepared_cifar10(self.tmp, {"train": 2, "test": 2}, file_format="tfrecord")
    before = _snapshot(self.tmp)
    with self.assertRaisesRegex(prepare_data.PrepareError,
                                "already holds cifar10 as tfrecord, not as the ArrayRecord"):
      prepare_data.prepare("cifar10", self.tmp)
    self.assertEqual(_snapshot(self.tmp), before)

  def test_interrupted_version_folder_is_reported(self):
    version_dir = tfds.builder("cifar10", data_dir=self.tmp).data_path
    os.makedirs(version_dir)
    with self.assertRaisesRegex(prepare_data.PrepareError, "holds no complete dataset.*remove"):
      prepare_data.prepare("cifar10", self.tmp)
    self.assertEqual(os.listdir(version_dir), [])

  def test_imagenet_needs_its_archives_in_the_manual_folder(self):
    with self.assertRaises(prepare_data.PrepareError) as raised:
      prepare_data.prepare("imagenet2012", self.tmp)
    message = str(raised.exception)
    self.assertIn(os.path.join(self.tmp, "downloads", "manual"), message)
    self.assertIn("Missing: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar", message)
    self.assertEqual(os.listdir(self.tmp), [])

  def test_not_prepared_error_points_at_the_launcher(self):
    with self.assertRaises(data.DatasetNotPreparedError) as raised:
      data.make_dataset("cifar10", image_size=32, seed=0, data_dir=self.tmp)
    message = str(raised.exception)
    self.assertIn(f"python -m launch.prepare_data --dataset=cifar10 --data_dir={self.tmp}",
                  message)
    self.assertIn("pip install -e '.[prepare]'", message)


if __name__ == "__main__":
  absltest.main()
