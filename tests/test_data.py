"""Tests for gmvq_jax.data: the embedded photographs and the TFDS pipelines.

TFDS datasets run under `tfds.testing.mock_data`, which keeps the real
`tfds.data_source` call and ArrayRecordDataSource but fakes the records.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking as tfds_mocking

from gmvq_jax import data
from gmvq_jax.data import embedded
from gmvq_jax.data import tfds_source

NUM_MOCK_EXAMPLES = 10
# cifar10 holds out the last tenth of its mocked 'train' split as "val".
NUM_MOCK_TRAIN = NUM_MOCK_EXAMPLES - 1


def _to_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(images * 255).astype(np.uint8)


def _contains_patch(photo: np.ndarray, patch: np.ndarray) -> bool:
  """Whether `patch` (h, w, 3) occurs anywhere in `photo` (H, W, 3), exactly."""
  height, width = patch.shape[:2]
  if photo.shape[0] < height or photo.shape[1] < width:
    return False
  rows, cols = np.mgrid[:photo.shape[0] - height + 1, :photo.shape[1] - width + 1]
  rows, cols = rows.ravel(), cols.ravel()
  # Narrow the candidate corners one pixel at a time; vectorised over corners.
  for i in range(height):
    for j in range(width):
      keep = np.all(photo[rows + i, cols + j] == patch[i, j], axis=-1)
      rows, cols = rows[keep], cols[keep]
      if rows.size == 0:
        return False
  return True


def _found_in(patch: np.ndarray, photo_names) -> set[str]:
  return {name for name in photo_names for factor in embedded.DOWNSCALE_FACTORS
          if _contains_patch(embedded.load_photo(name, factor), patch)}


class EmbeddedTest(parameterized.TestCase):

  @parameterized.parameters(8, 32, 64)
  def test_shapes_dtype_range(self, image_size):
    ds = data.make_dataset("embedded", image_size=image_size, seed=0, num_eval_examples=20)
    self.assertEqual(ds.image_shape, (image_size, image_size, 3))
    batch = ds.train_batch(3, 16)
    chex.assert_shape(batch, (16, image_size, image_size, 3))
    chex.assert_type(batch, np.float32)
    self.assertGreaterEqual(batch.min(), 0.0)
    self.assertLessEqual(batch.max(), 1.0)
    for images in ds.eval_batches(8):
      chex.assert_type(images, np.float32)
      self.assertTrue(0.0 <= images.min() and images.max() <= 1.0)

  def test_train_batch_is_a_pure_function_of_seed_step_batch_size(self):
    first = data.make_dataset("embedded", image_size=32, seed=7)
    second = data.make_dataset("embedded", image_size=32, seed=7)
    later = first.train_batch(1000, 64)
    first.train_batch(3, 64)  # Other calls in between must not matter.
    np.testing.assert_array_equal(later, second.train_batch(1000, 64))
    np.testing.assert_array_equal(first.train_batch(0, 64), second.train_batch(0, 64))
    self.assertFalse(np.array_equal(first.train_batch(0, 64), first.train_batch(1, 64)))
    other_seed = data.make_dataset("embedded", image_size=32, seed=8)
    self.assertFalse(np.array_equal(first.train_batch(0, 64), other_seed.train_batch(0, 64)))

  def test_training_crops_come_only_from_training_photos(self):
    ds = embedded.EmbeddedDataset(image_size=32, seed=0)
    specs = [spec for step in range(50) for spec in ds.train_crop_specs(step, 64)]
    self.assertTrue({spec.photo for spec in specs} <= set(embedded.TRAIN_PHOTOS))
    # The sampler covers every training photo, every scale and both flips.
    self.assertEqual({spec.photo for spec in specs}, set(embedded.TRAIN_PHOTOS))
    self.assertEqual({spec.downscale for spec in specs}, set(embedded.DOWNSCALE_FACTORS))
    self.assertEqual({spec.flip for spec in specs}, {False, True})
    # The batch is exactly the crops its specs describe.
    batch = _to_uint8(ds.train_batch(4, 64))
    expected = np.stack([embedded.crop(spec, 32) for spec in ds.train_crop_specs(4, 64)])
    np.testing.assert_array_equal(batch, expected)

  def test_train_and_held_out_photos_are_disjoint_and_present(self):
    self.assertFalse(set(embedded.TRAIN_PHOTOS) & set(embedded.HELD_OUT_PHOTOS))
    for name in embedded.TRAIN_PHOTOS + embedded.HELD_OUT_PHOTOS:
      self.assertTrue(os.path.exists(os.path.join(embedded.photo_dir(), name)), name)
      chex.assert_rank(embedded.load_photo(name), 3)
      self.assertEqual(embedded.load_photo(name).shape[-1], 3)

  def test_eval_crops_come_only_from_held_out_photos(self):
    ds = embedded.EmbeddedDataset(image_size=16, seed=0, num_eval_examples=24)
    specs = ds.eval_crop_specs()
    self.assertEqual({spec.photo for spec in specs}, set(embedded.HELD_OUT_PHOTOS))
    crops = _to_uint8(np.concatenate(list(ds.eval_batches(10))))
    np.testing.assert_array_equal(crops, np.stack([embedded.crop(s, 16) for s in specs]))
    # Independently of the specs: every pixel-exact occurrence of a test crop
    # is in a held-out photograph, none in a training one.
    for index in range(0, 24, 3):
      self.assertTrue(_found_in(crops[index], embedded.HELD_OUT_PHOTOS), index)
      self.assertEqual(_found_in(crops[index], embedded.TRAIN_PHOTOS), set(), index)

  @parameterized.parameters(16, 32, 100)
  def test_val_and_train_regions_never_overlap(self, image_size):
    """Training crops lie above the cut of every training photograph, val crops below it."""
    ds = embedded.EmbeddedDataset(image_size=image_size, seed=0, num_eval_examples=60)
    cuts = {name: int(embedded.load_photo(name).shape[0] * (1 - embedded.VAL_FRACTION))
            for name in embedded.TRAIN_PHOTOS}
    train_specs = [spec for step in range(20) for spec in ds.train_crop_specs(step, 64)]
    for spec in train_specs:  # Rows in full-size pixels.
      self.assertLessEqual((spec.top + image_size) * spec.downscale, cuts[spec.photo], spec)
    val_specs = ds.eval_crop_specs("val")
    self.assertLen(val_specs, 60)
    self.assertTrue({spec.photo for spec in val_specs} <= set(embedded.TRAIN_PHOTOS))
    for spec in val_specs:
      self.assertGreaterEqual(spec.top * spec.downscale, cuts[spec.photo], spec)
      height, width = embedded.load_photo(spec.photo, spec.downscale).shape[:2]
      self.assertLessEqual(spec.top + image_size, height)
      self.assertLessEqual(spec.left + image_size, width)
      self.assertFalse(spec.flip)
    crops = _to_uint8(np.concatenate(list(ds.eval_batches(25, split="val"))))
    np.testing.assert_array_equal(
        crops, np.stack([embedded.crop(spec, image_size) for spec in val_specs]))

  def test_val_split_is_fixed_for_every_seed_and_differs_from_test(self):
    ds = data.make_dataset("embedded", image_size=32, seed=0, num_eval_examples=40)
    other_seed = data.make_dataset("embedded", image_size=32, seed=5, num_eval_examples=40)
    self.assertEqual(ds.num_val_examples, 40)
    val = np.concatenate(list(ds.eval_batches(16, split="val")))
    np.testing.assert_array_equal(val, np.concatenate(list(other_seed.eval_batches(40, "val"))))
    self.assertEqual(len(np.unique(val.reshape(40, -1), axis=0)), 40)
    test = np.concatenate(list(ds.eval_batches(16)))
    self.assertFalse(np.array_equal(val, test))
    with self.assertRaisesRegex(ValueError, "allowed values are 'val', 'test'"):
      ds.eval_batches(16, split="train")

  def test_eval_batches_cover_num_eval_examples_in_a_fixed_order(self):
    ds = data.make_dataset("embedded", image_size=32, seed=0, num_eval_examples=50)
    self.assertEqual(ds.num_eval_examples, 50)
    batches = list(ds.eval_batches(16))
    self.assertEqual([b.shape[0] for b in batches], [16, 16, 16, 2])
    everything = np.concatenate(batches)
    np.testing.assert_array_equal(everything, np.concatenate(list(ds.eval_batches(16))))
    np.testing.assert_array_equal(everything, np.concatenate(list(ds.eval_batches(7))))
    # The test set is the same for every seed, so seeds compare on one set.
    other_seed = data.make_dataset("embedded", image_size=32, seed=3, num_eval_examples=50)
    np.testing.assert_array_equal(everything, np.concatenate(list(other_seed.eval_batches(50))))
    self.assertEqual(len(np.unique(everything.reshape(50, -1), axis=0)), 50)

  def test_default_num_eval_examples(self):
    ds = data.make_dataset("embedded", image_size=32, seed=0)
    self.assertEqual(ds.num_eval_examples, 512)
    self.assertEqual(sum(b.shape[0] for b in ds.eval_batches(100)), 512)

  @parameterized.parameters(4, 7, 301, 1000)
  def test_image_size_that_does_not_fit_raises(self, image_size):
    with self.assertRaisesRegex(ValueError, "image_size"):
      data.make_dataset("embedded", image_size=image_size, seed=0)

  def test_shards_concatenate_to_the_global_batch(self):
    ds = data.make_dataset("embedded", image_size=16, seed=4)
    self.assertIsNone(ds.num_train_examples)
    whole = ds.train_batch(9, 12)
    for num_shards in (1, 2, 3, 4):
      parts = [ds.train_batch(9, 12, shard=i, num_shards=num_shards) for i in range(num_shards)]
      self.assertEqual({p.shape for p in parts}, {(12 // num_shards, 16, 16, 3)})
      np.testing.assert_array_equal(np.concatenate(parts), whole)
    self.assertFalse(np.array_equal(ds.train_batch(9, 12, shard=0, num_shards=2),
                                    ds.train_batch(9, 12, shard=1, num_shards=2)))

  @parameterized.parameters(
      (dict(shard=0, num_shards=5), "does not divide by num_shards=5"),
      (dict(shard=2, num_shards=2), "shard=2 is out of range"),
      (dict(shard=-1, num_shards=2), "shard must be an integer >= 0"),
      (dict(shard=0, num_shards=0), "num_shards must be an integer >= 1"))
  def test_bad_shards_raise(self, kwargs, message):
    ds = data.make_dataset("embedded", image_size=16, seed=0)
    with self.assertRaisesRegex(ValueError, message):
      ds.train_batch(0, 12, **kwargs)

  def test_position_has_no_epochs(self):
    ds = data.make_dataset("embedded", image_size=16, seed=0)
    position = ds.position(7, 32)
    self.assertEqual(position, dict(examples_seen=224, epoch=None, index_in_epoch=None))
    self.assertEqual(json.loads(json.dumps(position)), position)

  def test_largest_image_size(self):
    ds = data.make_dataset("embedded", image_size=300, seed=0, num_eval_examples=3)
    chex.assert_shape(ds.train_batch(0, 2), (2, 300, 300, 3))
    chex.assert_shape(next(ds.eval_batches(3)), (3, 300, 300, 3))


class RegistryTest(parameterized.TestCase):

  def test_names(self):
    self.assertEqual(data.DATASET_NAMES,
                     ("embedded", "cifar10", "celeb_a", "imagenet2012", "folder", "npz"))
    self.assertEqual(set(data.DEFAULT_IMAGE_SIZE), set(data.DATASET_NAMES))
    for name in data.DATASET_NAMES:
      data.validate_dataset_name(name)  # Must not raise.

  def test_unknown_name_raises_naming_the_allowed_names(self):
    for call in (lambda: data.validate_dataset_name("mnist"),
                 lambda: data.make_dataset("mnist", image_size=32, seed=0)):
      with self.assertRaises(ValueError) as raised:
        call()
      for name in ("mnist",) + data.DATASET_NAMES:
        self.assertIn(repr(name), str(raised.exception))

  @parameterized.parameters(("cifar10", 64), ("cifar10", 16), ("celeb_a", 179), ("celeb_a", 4),
                            ("imagenet2012", 513), ("imagenet2012", 4))
  def test_image_size_the_source_cannot_provide_raises(self, name, image_size):
    with self.assertRaisesRegex(ValueError, "image_size"):
      data.make_dataset(name, image_size=image_size, seed=0)


def _getitems_without_self(record_keys, generator, serialized=False):
  # tfds 4.9.10's mock_data sets `__getitems__` as a plain attribute of a
  # MagicMock, so it is called without `self` and fails; this signature fits
  # how it is actually called.
  del serialized
  return [generator[key] for key in record_keys]


def _mock_tfds(test: absltest.TestCase, num_examples: int) -> None:
  """Fakes every TFDS split as `num_examples` records until `test` ends.

  The mocked splits of one dataset hold the same images (one seed), so a
  split's identity shows in which split is read, not in its pixels.
  """
  stack = contextlib.ExitStack()
  test.addCleanup(stack.close)
  stack.enter_context(mock.patch.object(tfds_mocking, "_getitems", _getitems_without_self))
  stack.enter_context(tfds.testing.mock_data(num_examples=num_examples))


def _raw_tfds_images(name: str, split: str, indices) -> np.ndarray:
  source = tfds.data_source(name, split=split, download=False)
  return np.stack([np.asarray(source[int(i)]["image"]) for i in indices])


def _celeb_a_crop(images: np.ndarray, size: int) -> np.ndarray:
  """The standard CelebA face crop (rows 20..197 of 218x178), resized bilinearly."""
  return np.stack([np.asarray(Image.fromarray(image[20:198]).resize((size, size), Image.BILINEAR))
                   for image in images])


class TfdsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    _mock_tfds(self, NUM_MOCK_EXAMPLES)

  def _raw_images(self, name: str, split: str, indices) -> np.ndarray:
    return _raw_tfds_images(name, split, indices)

  def test_reads_through_tfds_data_source(self):
    with mock.patch.object(tfds, "data_source", wraps=tfds.data_source) as spy:
      ds = data.make_dataset("cifar10", image_size=32, seed=0, data_dir="/nonexistent")
      ds.train_batch(0, 2)
    splits = sorted(call.kwargs["split"] for call in spy.call_args_list)
    self.assertEqual(splits, ["test", "train"])
    for call in spy.call_args_list:
      self.assertEqual(call.args, ("cifar10",))
      self.assertEqual(call.kwargs["data_dir"], "/nonexistent")
      self.assertFalse(call.kwargs["download"])

  def test_cifar10_batches(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=0)
    self.assertEqual(ds.image_shape, (32, 32, 3))
    batch = ds.train_batch(0, 4)
    chex.assert_shape(batch, (4, 32, 32, 3))
    chex.assert_type(batch, np.float32)
    self.assertTrue(0.0 <= batch.min() and batch.max() <= 1.0)
    # Decoding is exactly uint8 / 255 of the records the indices name.
    expected = self._raw_images("cifar10", "train", ds.train_indices(0, 4)) / np.float32(255)
    np.testing.assert_array_equal(batch, expected.astype(np.float32))

  def test_train_batches_are_deterministic_and_straddle_epochs(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=5)
    # Batch size 4 over the 9 training examples (the 10th is held out as
    # val): step 2 holds the last example of epoch 0 and the first 3 of epoch 1.
    order = np.concatenate([ds.train_indices(step, 4) for step in range(5)])
    epoch0, epoch1 = order[:9], order[9:18]
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(9))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(9))
    self.assertFalse(np.array_equal(epoch0, epoch1))  # Reshuffled every epoch.
    # The documented order: epoch e is np.random.default_rng((seed, e)).permutation(N).
    np.testing.assert_array_equal(epoch0, np.random.default_rng((5, 0)).permutation(9))
    np.testing.assert_array_equal(epoch1, np.random.default_rng((5, 1)).permutation(9))
    straddling = ds.train_batch(2, 4)
    expected = self._raw_images("cifar10", "train", order[8:12]) / np.float32(255)
    np.testing.assert_array_equal(straddling, expected.astype(np.float32))
    # A fresh dataset (a resumed run) sees bit-identical batches, even late ones.
    fresh = data.make_dataset("cifar10", image_size=32, seed=5)
    np.testing.assert_array_equal(fresh.train_batch(37, 4), ds.train_batch(37, 4))
    np.testing.assert_array_equal(fresh.train_batch(2, 4), straddling)
    other_seed = data.make_dataset("cifar10", image_size=32, seed=6)
    self.assertFalse(np.array_equal(
        np.concatenate([other_seed.train_indices(s, 5) for s in range(2)])[:9], epoch0))

  @parameterized.parameters("cifar10", "celeb_a")
  def test_shards_concatenate_to_the_global_batch(self, name):
    ds = data.make_dataset(name, image_size=32, seed=5)
    # Step 2 of batch 8 over 9 (cifar10) or 10 (celeb_a) examples straddles two epochs.
    whole = ds.train_batch(2, 8)
    for num_shards in (2, 4, 8):
      parts = [ds.train_batch(2, 8, shard=i, num_shards=num_shards) for i in range(num_shards)]
      np.testing.assert_array_equal(np.concatenate(parts), whole)
      indices = [ds.train_indices(2, 8, shard=i, num_shards=num_shards) for i in range(num_shards)]
      np.testing.assert_array_equal(np.concatenate(indices), ds.train_indices(2, 8))
    with self.assertRaisesRegex(ValueError, "batch_size=8 does not divide by num_shards=3"):
      ds.train_batch(2, 8, shard=0, num_shards=3)

  def test_shard_reads_only_its_rows(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=5)
    with mock.patch.object(ds, "_read", wraps=ds._read) as spy:
      ds.train_batch(3, 8, shard=1, num_shards=4)
    (_, indices), = [call.args for call in spy.call_args_list]
    np.testing.assert_array_equal(indices, ds.train_indices(3, 8)[2:4])

  def test_position(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=0)
    self.assertEqual(ds.num_train_examples, NUM_MOCK_TRAIN)
    self.assertEqual(ds.position(0, 4), dict(examples_seen=0, epoch=0, index_in_epoch=0))
    # After 3 steps of 4, 12 examples are seen: batch 3 starts at epoch 1, index 3.
    self.assertEqual(ds.position(3, 4), dict(examples_seen=12, epoch=1, index_in_epoch=3))
    self.assertEqual(ds.train_indices(3, 4)[0],
                     np.random.default_rng((0, 1)).permutation(NUM_MOCK_TRAIN)[3])

  def test_eval_batches_are_the_test_split_in_order(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=0)
    self.assertEqual(ds.num_eval_examples, NUM_MOCK_EXAMPLES)
    batches = list(ds.eval_batches(4))
    self.assertEqual([b.shape[0] for b in batches], [4, 4, 2])
    expected = self._raw_images("cifar10", "test", range(NUM_MOCK_EXAMPLES)) / np.float32(255)
    np.testing.assert_array_equal(np.concatenate(batches), expected.astype(np.float32))
    subset = data.make_dataset("cifar10", image_size=32, seed=0, num_eval_examples=5)
    self.assertEqual(subset.num_eval_examples, 5)
    np.testing.assert_array_equal(np.concatenate(list(subset.eval_batches(3))),
                                  np.concatenate(batches)[:5])
    # More than the split holds: all of it, with a one-line notice.
    with self.assertLogs(level="WARNING") as logs:
      capped = data.make_dataset("cifar10", image_size=32, seed=0, num_eval_examples=11)
    self.assertTrue(any(f"num_eval_examples=11 exceeds the {NUM_MOCK_EXAMPLES} examples" in line
                        for line in logs.output), logs.output)
    self.assertEqual(capped.num_eval_examples, NUM_MOCK_EXAMPLES)

  def test_celeb_a_center_crop_and_resize(self):
    ds = data.make_dataset("celeb_a", image_size=64, seed=1)
    self.assertEqual(ds.image_shape, (64, 64, 3))
    batch = ds.train_batch(1, 3)
    chex.assert_shape(batch, (3, 64, 64, 3))
    chex.assert_type(batch, np.float32)
    raw = self._raw_images("celeb_a", "train", ds.train_indices(1, 3))
    chex.assert_shape(raw, (3, 218, 178, 3))
    # The standard CelebA face crop: rows 20..197 of the 218x178 image.
    expected = np.stack([
        np.asarray(Image.fromarray(image[20:198]).resize((64, 64), Image.BILINEAR))
        for image in raw])
    np.testing.assert_array_equal(_to_uint8(batch), expected)
    np.testing.assert_array_equal(
        data.make_dataset("celeb_a", image_size=64, seed=1).train_batch(1, 3), batch)
    eval_batches = list(ds.eval_batches(4))
    self.assertEqual([b.shape for b in eval_batches], [(4, 64, 64, 3), (4, 64, 64, 3), (2, 64, 64, 3)])

  def test_imagenet_evaluates_on_validation_with_centre_square_crops(self):
    with mock.patch.object(tfds, "data_source", wraps=tfds.data_source) as spy:
      ds = data.make_dataset("imagenet2012", image_size=32, seed=2)
    # ImageNet's test labels are not public: its validation split is held out.
    self.assertEqual(sorted(c.kwargs["split"] for c in spy.call_args_list),
                     ["train", "validation"])
    batch = ds.train_batch(0, 3)
    chex.assert_shape(batch, (3, 32, 32, 3))
    raw = [np.asarray(tfds.data_source("imagenet2012", split="train", download=False)[int(i)]
                      ["image"]) for i in ds.train_indices(0, 3)]
    expected = []
    for image in raw:  # The centred square, resized bilinearly.
      side = min(image.shape[:2])
      top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
      square = Image.fromarray(image[top:top + side, left:left + side])
      expected.append(np.asarray(square.resize((32, 32), Image.BILINEAR)))
    np.testing.assert_array_equal(_to_uint8(batch), expected)
    chex.assert_shape(next(ds.eval_batches(4)), (4, 32, 32, 3))

  def test_train_split_batches_cover_the_training_split_in_order(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=3)
    batches = list(ds.train_split_batches(4))
    self.assertEqual([b.shape[0] for b in batches], [4, 4, 1])  # Not the held-out 10th.
    expected = self._raw_images("cifar10", "train", range(NUM_MOCK_TRAIN)) / np.float32(255)
    np.testing.assert_array_equal(np.concatenate(batches), expected.astype(np.float32))


  def test_cifar10_val_is_the_held_out_end_of_train_never_trained_on(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=0)
    # A tenth of the 10 mocked training examples: the last one.
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples),
                     (NUM_MOCK_TRAIN, 1, NUM_MOCK_EXAMPLES))
    val = np.concatenate(list(ds.eval_batches(4, split="val")))
    raw_train = self._raw_images("cifar10", "train", range(NUM_MOCK_EXAMPLES))
    np.testing.assert_array_equal(val, (raw_train[NUM_MOCK_TRAIN:] / np.float32(255))
                                  .astype(np.float32))
    # Fixed: the same on every call, for every seed and batch size.
    other_seed = data.make_dataset("cifar10", image_size=32, seed=7)
    np.testing.assert_array_equal(np.concatenate(list(other_seed.eval_batches(1, "val"))), val)
    for dataset in (ds, other_seed):
      # A full epoch (3 steps of 3) trains on exactly the other 9 examples,
      # and none of its images is the validation image.
      epoch = np.concatenate([dataset.train_indices(step, 3) for step in range(3)])
      np.testing.assert_array_equal(np.sort(epoch), np.arange(NUM_MOCK_TRAIN))
      trained = np.concatenate([dataset.train_batch(step, 3) for step in range(3)])
      self.assertFalse(any(np.array_equal(image, val[0]) for image in trained))
    self.assertLen(np.unique(raw_train.reshape(NUM_MOCK_EXAMPLES, -1), axis=0),
                   NUM_MOCK_EXAMPLES)  # So the pixel check above means something.
    # The test split is untouched and fixed too.
    test = np.concatenate(list(ds.eval_batches(4, split="test")))
    np.testing.assert_array_equal(test, np.concatenate(list(other_seed.eval_batches(3))))
    self.assertLen(test, NUM_MOCK_EXAMPLES)

  def test_celeb_a_val_is_tfds_validation_split(self):
    with mock.patch.object(tfds, "data_source", wraps=tfds.data_source) as spy:
      ds = data.make_dataset("celeb_a", image_size=32, seed=1)
    self.assertEqual(sorted(c.kwargs["split"] for c in spy.call_args_list),
                     ["test", "train", "validation"])
    # Nothing is held out of 'train': TFDS's 'validation' split is the val split.
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples),
                     (NUM_MOCK_EXAMPLES, NUM_MOCK_EXAMPLES, NUM_MOCK_EXAMPLES))
    epoch = np.concatenate([ds.train_indices(step, 5) for step in range(2)])
    np.testing.assert_array_equal(np.sort(epoch), np.arange(NUM_MOCK_EXAMPLES))
    with mock.patch.object(tfds, "data_source", wraps=tfds.data_source) as spy:
      val = np.concatenate(list(ds.eval_batches(4, split="val")))
    self.assertEqual(spy.call_count, 0)  # Read through the sources opened above.
    expected = _celeb_a_crop(self._raw_images("celeb_a", "validation", range(10)), 32)
    np.testing.assert_array_equal(_to_uint8(val), expected)
    again = data.make_dataset("celeb_a", image_size=32, seed=2)
    np.testing.assert_array_equal(np.concatenate(list(again.eval_batches(3, "val"))), val)
    np.testing.assert_array_equal(np.concatenate(list(again.eval_batches(3, "test"))),
                                  np.concatenate(list(ds.eval_batches(4))))
    # num_eval_examples caps the val split as well as the test split.
    capped = data.make_dataset("celeb_a", image_size=32, seed=1, num_eval_examples=4)
    self.assertEqual((capped.num_val_examples, capped.num_eval_examples), (4, 4))
    np.testing.assert_array_equal(np.concatenate(list(capped.eval_batches(3, "val"))), val[:4])

  def test_num_eval_examples_caps_val_at_its_size(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=0, num_eval_examples=5)
    self.assertEqual((ds.num_val_examples, ds.num_eval_examples), (1, 5))
    self.assertEqual([b.shape[0] for b in ds.eval_batches(4, split="val")], [1])

  @parameterized.parameters("cifar10", "celeb_a")
  def test_bad_split_name_raises_naming_the_allowed_values(self, name):
    ds = data.make_dataset(name, image_size=32, seed=0)
    for split in ("train", "validation", "TEST", None):
      with self.assertRaisesRegex(ValueError, r"Unknown evaluation split .*'val', 'test'"):
        ds.eval_batches(4, split=split)  # At the call, not at the first batch.
    self.assertEqual(data.registry.EVAL_SPLITS, ("val", "test"))


class TfdsHeldOutTest(absltest.TestCase):
  """cifar10 with 25 mocked training examples: the last 2 (a tenth, rounded down) are val."""

  def setUp(self):
    super().setUp()
    _mock_tfds(self, 25)

  def test_last_tenth_of_train_is_val(self):
    ds = data.make_dataset("cifar10", image_size=32, seed=4)
    self.assertEqual((ds.num_train_examples, ds.num_val_examples), (23, 2))
    raw = _raw_tfds_images("cifar10", "train", range(25))
    np.testing.assert_array_equal(_to_uint8(np.concatenate(list(ds.eval_batches(1, "val")))),
                                  raw[23:])
    np.testing.assert_array_equal(_to_uint8(np.concatenate(list(ds.train_split_batches(10)))),
                                  raw[:23])
    # Two epochs of batch 23: every training index once per epoch, 23 and 24 never.
    for step in range(2):
      np.testing.assert_array_equal(np.sort(ds.train_indices(step, 23)), np.arange(23))

  def test_held_out_size(self):
    held_out_size = data.shuffling.held_out_size
    maximum = data.shuffling.MAX_HELD_OUT_TFDS
    self.assertEqual(held_out_size(50_000, maximum), 5_000)  # cifar10.
    self.assertEqual(held_out_size(1_281_167, maximum), 10_000)  # imagenet2012.
    self.assertEqual(held_out_size(1_281_167), 128_116)  # folder/npz: no cap.
    self.assertEqual([held_out_size(n) for n in (1, 9, 10, 19, 20)], [1, 1, 1, 1, 2])


class NotPreparedTest(parameterized.TestCase):

  @parameterized.parameters(("cifar10", 32), ("celeb_a", 64), ("imagenet2012", 64))
  def test_empty_data_dir_raises_with_instructions(self, name, image_size):
    # Not create_tempdir(): under pytest, absl flags (--test_tmpdir) are unparsed.
    data_dir = self.enterContext(tempfile.TemporaryDirectory())
    with self.assertRaises(data.DatasetNotPreparedError) as raised:
      data.make_dataset(name, image_size=image_size, seed=0, data_dir=data_dir)
    self.assertIsInstance(raised.exception, FileNotFoundError)
    message = str(raised.exception)
    self.assertIn(repr(name), message)
    self.assertIn(data_dir, message)
    self.assertIn(tfds_source.prepare_command(name, data_dir), message)
    self.assertIn("file_format='array_record'", message)
    self.assertIn("internet", message)
    self.assertEqual(os.listdir(data_dir), [])  # Nothing was downloaded or written.


if __name__ == "__main__":
  absltest.main()
