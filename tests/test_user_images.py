"""Tests for the user's own images: dataset='folder' (PNG/JPEG files) and dataset='npz'.

Every image is a real file written into pytest's tmp_path; no decoder is faked.
"""

from __future__ import annotations

import json
import os
import pathlib
from unittest import mock

from absl.testing import parameterized
import chex
import numpy as np
from PIL import Image
import pytest

from gmvq_jax import data
from gmvq_jax.data import shuffling
from gmvq_jax.data import user_images

SIZE = 16  # image_size of most tests.


def _pattern(height: int, width: int, seed: int, period: float = 1.0) -> np.ndarray:
  """A smooth colour image, (H, W, 3) uint8, distinct per seed (JPEG keeps it close).

  Its waves are about 50 * period pixels long.
  """
  rows, cols = np.mgrid[:height, :width]
  phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=3)
  channels = [np.sin(rows / (7 * period) + phase[c]) + np.cos(cols / (9 * period) - phase[c])
              for c in range(3)]
  return np.round(np.stack(channels, -1) * 60 + 128).clip(0, 255).astype(np.uint8)


def _save(path: pathlib.Path, pixels: np.ndarray, **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, **kwargs)
  return path


def _resize_reference(pixels: np.ndarray, size: int) -> np.ndarray:
  """Centred square, bilinear resize: written out here, independently of the library."""
  height, width = pixels.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = Image.fromarray(pixels[top:top + side, left:left + side])
  return np.asarray(square.resize((size, size), Image.BILINEAR))


def _to_uint8(images: np.ndarray) -> np.ndarray:
  return np.round(images * 255).astype(np.uint8)


def _folder(root: pathlib.Path) -> dict[str, np.ndarray]:
  """Writes a small dataset under root; returns each image's expected SIZE pixels by file name."""
  expected = {}
  for i in range(5):  # Square RGB PNGs at SIZE: decoded exactly.
    pixels = _pattern(SIZE, SIZE, i)
    expected[str(_save(root / "train" / f"img{i}.png", pixels))] = pixels
  wide = _pattern(20, 36, 10)  # Non-square, in a subfolder, upper-case extension.
  expected[str(_save(root / "train" / "sub" / "wide.PNG", wide))] = _resize_reference(wide, SIZE)
  grey = _pattern(24, 24, 11)[..., 0]
  expected[str(_save(root / "train" / "grey.png", grey))] = np.repeat(
      _resize_reference(grey, SIZE)[..., None], 3, -1)
  # A JPEG at SIZE decodes at full scale: its pixels are PIL's decode of the file.
  jpeg = _save(root / "train" / "photo.JPG", _pattern(SIZE, SIZE, 12), quality=95)
  expected[str(jpeg)] = np.asarray(Image.open(jpeg).convert("RGB"))
  for i in range(3):
    pixels = _pattern(SIZE, SIZE, 20 + i)
    expected[str(_save(root / "test" / f"t{i}.png", pixels))] = pixels
  # Ignored: not an image extension, or a hidden file (e.g. macOS's ._ files).
  (root / "train" / "notes.txt").write_text("not an image")
  (root / "train" / "._img0.png").write_bytes(b"AppleDouble metadata")
  return expected


def _assert_val_never_trained_on(test: parameterized.TestCase, ds, val: np.ndarray) -> None:
  """A full epoch trains on every training index once, and on no image of `val`."""
  num_train = ds.num_train_examples
  for step in range(2):  # Batch num_train: step e is exactly epoch e.
    np.testing.assert_array_equal(np.sort(ds.train_indices(step, num_train)), np.arange(num_train))
  trained = _to_uint8(ds.train_batch(0, num_train))
  for image in _to_uint8(val):
    test.assertFalse(any(np.array_equal(image, seen) for seen in trained))


def _assert_fixed(test: parameterized.TestCase, ds, other, split: str) -> np.ndarray:
  """`split`'s batches are the same on every call, batch size and seed; returns them."""
  images = np.concatenate(list(ds.eval_batches(2, split=split)))
  np.testing.assert_array_equal(np.concatenate(list(ds.eval_batches(5, split=split))), images)
  np.testing.assert_array_equal(np.concatenate(list(other.eval_batches(3, split=split))), images)
  return images


class FolderTest(parameterized.TestCase):

  @pytest.fixture(autouse=True)
  def _tmp_path(self, tmp_path):
    self.root = tmp_path / "images"
    self.tmp = tmp_path

  def _dataset(self, **kwargs) -> user_images.FolderDataset:
    kwargs = dict(image_size=SIZE, seed=3) | kwargs
    return data.make_dataset("folder", data_dir=str(self.root), **kwargs)

  def test_finds_images_recursively_in_sorted_order(self):
    expected = _folder(self.root)
    ds = self._dataset()
    train = sorted(p for p in expected if f"{os.sep}train{os.sep}" in p)
    test = sorted(p for p in expected if f"{os.sep}test{os.sep}" in p)
    # No val/: the last of the 8 training files is held out as the val split.
    self.assertEqual(ds.files("train"), tuple(train[:7]))
    self.assertEqual(ds.files("val"), tuple(train[7:]))
    self.assertEqual(ds.files("test"), tuple(test))
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples), (7, 1, 3))
    self.assertEqual(ds.image_shape, (SIZE, SIZE, 3))

  def test_split_batches_decode_every_image(self):
    expected = _folder(self.root)
    ds = self._dataset()
    train = list(ds.train_split_batches(3))
    self.assertEqual([b.shape[0] for b in train], [3, 3, 1])  # 7: the 8th is held out.
    chex.assert_type(train[0], np.float32)
    images = np.concatenate(train)
    self.assertTrue(0.0 <= images.min() and images.max() <= 1.0)
    np.testing.assert_array_equal(
        _to_uint8(images), np.stack([expected[p] for p in ds.files("train")]))
    grey = _to_uint8(images[ds.files("train").index(str(self.root / "train" / "grey.png"))])
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    evaluated = np.concatenate(list(ds.eval_batches(2)))
    np.testing.assert_array_equal(
        _to_uint8(evaluated), np.stack([expected[p] for p in ds.files("test")]))
    subset = self._dataset(num_eval_examples=2)
    np.testing.assert_array_equal(np.concatenate(list(subset.eval_batches(5))), evaluated[:2])
    # More than the split holds (a :smoke config on a small folder): all of it, with a notice.
    with self.assertLogs(level="WARNING") as logs:
      capped = self._dataset(num_eval_examples=4)
    self.assertIn("num_eval_examples=4 exceeds the 3 test images", logs.output[0])
    self.assertEqual(capped.num_eval_examples, 3)

  def test_large_jpeg_is_centre_cropped_and_resized(self):
    _folder(self.root)
    big = _pattern(300, 200, 30, period=4)  # Smooth at SIZE, so resamplers agree.
    _save(self.root / "test" / "zz_big.jpeg", big, quality=95)
    ds = self._dataset()
    decoded = _to_uint8(np.concatenate(list(ds.eval_batches(4)))[3]).astype(float)
    # Decoded at a reduced JPEG scale, then resized: close to resizing the
    # original's centred square, far from squashing it or taking its top square.
    error = lambda pixels: np.abs(decoded - pixels.astype(float)).mean()
    self.assertLess(error(_resize_reference(big, SIZE)), 4.0)
    self.assertGreater(error(np.asarray(Image.fromarray(big).resize((SIZE, SIZE)))), 20.0)
    self.assertGreater(error(_resize_reference(big[:200], SIZE)), 20.0)

  def test_sixteen_bit_greyscale_is_scaled_to_eight_bits(self):
    _folder(self.root)
    grey16 = (_pattern(SIZE, SIZE, 40)[..., 0].astype(np.uint16) * 257)
    _save(self.root / "test" / "zz_16bit.png", grey16)
    ds = self._dataset()
    decoded = _to_uint8(np.concatenate(list(ds.eval_batches(4)))[3])
    np.testing.assert_array_equal(decoded, np.repeat((grey16 // 257)[..., None], 3, -1))

  def test_train_batches_follow_the_epoch_shuffle(self):
    expected = _folder(self.root)
    ds = self._dataset(seed=3)
    files = ds.files("train")
    # Batch size 3 over the 7 trained-on images: step 2 straddles epochs 0 and 1.
    order = np.concatenate([np.random.default_rng((3, epoch)).permutation(7) for epoch in range(3)])
    for step in range(5):
      batch = ds.train_batch(step, 3)
      want = np.stack([expected[files[i]] for i in order[3 * step:3 * step + 3]])
      np.testing.assert_array_equal(_to_uint8(batch), want)
    self.assertEqual(ds.position(3, 3), dict(examples_seen=9, epoch=1, index_in_epoch=2))
    self.assertEqual(json.loads(json.dumps(ds.position(3, 3))), ds.position(3, 3))
    fresh = self._dataset(seed=3)
    np.testing.assert_array_equal(fresh.train_batch(41, 3), ds.train_batch(41, 3))
    other = self._dataset(seed=4)
    self.assertFalse(np.array_equal(
        np.concatenate([other.train_indices(s, 4) for s in range(2)])[:7], order[:7]))

  def test_shard_decodes_only_its_own_files(self):
    _folder(self.root)
    ds = self._dataset()
    whole = self._dataset().train_batch(1, 4)  # Another instance: ds has decoded nothing yet.
    mine = ds.train_indices(1, 4, shard=1, num_shards=2)
    # Corrupting every training file outside shard 1 must not disturb its read.
    for index, path in enumerate(ds.files("train")):
      if index not in mine:
        pathlib.Path(path).write_bytes(b"corrupted after the start-up check")
    np.testing.assert_array_equal(ds.train_batch(1, 4, shard=1, num_shards=2), whole[2:])
    with self.assertRaisesRegex(data.DataError, "Cannot decode image file"):
      ds.train_batch(1, 4, shard=0, num_shards=2)

  def test_each_file_is_decoded_once_within_the_cache_budget(self):
    _folder(self.root)
    ds = self._dataset()
    with mock.patch.object(user_images, "load_image", wraps=user_images.load_image) as decode:
      first = ds.train_batch(1, 4)
      self.assertEqual(decode.call_count, 4)
      np.testing.assert_array_equal(ds.train_batch(1, 4), first)  # From memory.
      self.assertEqual(decode.call_count, 4)
    with mock.patch.object(user_images, "DECODED_CACHE_BYTES", 0), \
         mock.patch.object(user_images, "load_image", wraps=user_images.load_image) as decode:
      fresh = self._dataset()
      fresh.train_batch(1, 4)
      np.testing.assert_array_equal(fresh.train_batch(1, 4), first)  # Decoded again.
      self.assertEqual(decode.call_count, 8)

  def test_corrupt_files_are_named_before_training(self):
    _folder(self.root)
    garbage = self.root / "train" / "sub" / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    not_an_image = self.root / "test" / "text.jpg"
    not_an_image.write_text("hello")
    with self.assertRaises(data.DataError) as raised:
      self._dataset()
    message = str(raised.exception)
    self.assertIsInstance(raised.exception, ValueError)
    self.assertIn(str(garbage), message)
    self.assertIn(str(not_an_image), message)
    self.assertIn("2 image file(s) cannot be opened", message)
    self.assertIn("Remove or replace", message)
    self.assertNotIn("\n", message)  # One line for the launcher.

  def test_truncated_jpeg_is_named_when_read(self):
    _folder(self.root)
    whole = self.tmp / "whole.jpg"
    _save(whole, _pattern(64, 64, 50), quality=95)
    truncated = self.root / "test" / "t9_truncated.jpg"
    encoded = whole.read_bytes()
    truncated.write_bytes(encoded[:len(encoded) * 2 // 3])  # Headers intact, scan cut.
    ds = self._dataset()  # The cheap open check passes: JPEG has no checksums.
    batches = ds.eval_batches(3)
    next(batches)  # The first three test images are fine.
    with self.assertRaises(data.DataError) as raised:
      next(batches)
    self.assertIn(str(truncated), str(raised.exception))
    self.assertIn("remove or replace it", str(raised.exception))

  def test_missing_data_dir_and_layout_errors(self):
    cases = [(None, "config.data_dir is not set"),
             (str(self.tmp / "nowhere"), "does not exist")]
    for data_dir, message in cases:
      with self.assertRaisesRegex(data.DataError, message):
        data.make_dataset("folder", image_size=SIZE, seed=0, data_dir=data_dir)
    (self.root / "train").mkdir(parents=True)
    _save(self.root / "train" / "a.png", _pattern(SIZE, SIZE, 0))
    with self.assertRaisesRegex(data.DataError, r"has no test/ subdirectory \(it holds: train\)"):
      self._dataset()
    (self.root / "test").mkdir()
    (self.root / "test" / "readme.txt").write_text("no images here")
    with self.assertRaisesRegex(data.DataError, "test holds no .png/.jpg/.jpeg images"):
      self._dataset()
    with self.assertRaisesRegex(data.DataError, "is a file, not a directory.*dataset='npz'"):
      data.make_dataset("folder", image_size=SIZE, seed=0,
                        data_dir=str(self.root / "train" / "a.png"))

  def _val_folder(self) -> dict[str, np.ndarray]:
    """_folder's dataset plus val/ holding three images, one in a subfolder."""
    expected = _folder(self.root)
    for i, name in enumerate(("v0.png", "v1.png", os.path.join("deeper", "v2.png"))):
      pixels = _pattern(SIZE, SIZE, 60 + i)
      expected[str(_save(self.root / "val" / name, pixels))] = pixels
    return expected

  def test_val_folder_is_the_val_split(self):
    expected = self._val_folder()
    ds = self._dataset(seed=3)
    split_files = {split: tuple(sorted(p for p in expected if f"{os.sep}{split}{os.sep}" in p))
                   for split in ("train", "val", "test")}
    for split, files in split_files.items():
      self.assertEqual(ds.files(split), files)  # Nothing held out of train/.
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples), (8, 3, 3))
    other = self._dataset(seed=4)
    val = _assert_fixed(self, ds, other, "val")
    np.testing.assert_array_equal(_to_uint8(val), np.stack([expected[p] for p in ds.files("val")]))
    test = _assert_fixed(self, ds, other, "test")
    np.testing.assert_array_equal(_to_uint8(test),
                                  np.stack([expected[p] for p in ds.files("test")]))
    _assert_val_never_trained_on(self, ds, val)
    capped = self._dataset(num_eval_examples=2)  # Caps val as well as test.
    self.assertEqual((capped.num_val_examples, capped.num_eval_examples), (2, 2))
    np.testing.assert_array_equal(np.concatenate(list(capped.eval_batches(5, "val"))), val[:2])

  def test_without_val_folder_the_last_training_files_are_val(self):
    expected = _folder(self.root)
    ds = self._dataset(seed=3)
    train = sorted(p for p in expected if f"{os.sep}train{os.sep}" in p)
    # max(1, 8 // 10) = 1 file: the last in sorted order.
    self.assertEqual(ds.files("val"), (str(self.root / "train" / "sub" / "wide.PNG"),))
    self.assertEqual(ds.files("val"), tuple(train[7:]))
    self.assertFalse(set(ds.files("val")) & set(ds.files("train")))
    self.assertEqual(ds.num_val_examples, 1)
    val = _assert_fixed(self, ds, self._dataset(seed=9), "val")
    np.testing.assert_array_equal(_to_uint8(val), expected[train[7]][None])
    _assert_val_never_trained_on(self, ds, val)
    _assert_fixed(self, ds, self._dataset(seed=9), "test")

  def test_without_val_folder_a_tenth_is_held_out(self):
    for i in range(25):
      _save(self.root / "train" / f"a{i:02d}.png", _pattern(SIZE, SIZE, 100 + i))
    _save(self.root / "test" / "t.png", _pattern(SIZE, SIZE, 99))
    ds = self._dataset()
    self.assertEqual((ds.num_train_examples, ds.num_val_examples), (23, 2))
    self.assertEqual(ds.files("val"), tuple(str(self.root / "train" / f"a{i}.png")
                                            for i in (23, 24)))
    val = np.concatenate(list(ds.eval_batches(4, split="val")))
    np.testing.assert_array_equal(_to_uint8(val), np.stack([_pattern(SIZE, SIZE, 123),
                                                            _pattern(SIZE, SIZE, 124)]))
    _assert_val_never_trained_on(self, ds, val)

  def test_single_training_image_needs_a_val_folder(self):
    _save(self.root / "train" / "only.png", _pattern(SIZE, SIZE, 0))
    _save(self.root / "test" / "t.png", _pattern(SIZE, SIZE, 1))
    with self.assertRaises(data.DataError) as raised:
      self._dataset()
    message = str(raised.exception)
    self.assertIn(f"{self.root / 'train'} holds only 1 image(s)", message)
    self.assertIn("add a val/ folder of images", message)
    self.assertIn("or more training images", message)
    self.assertNotIn("\n", message)
    _save(self.root / "val" / "v.png", _pattern(SIZE, SIZE, 2))
    ds = self._dataset()
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples), (1, 1, 1))

  def test_val_folder_is_checked_like_the_others(self):
    self._val_folder()
    broken = self.root / "val" / "deeper" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with self.assertRaisesRegex(data.DataError, "1 image file.*cannot be opened: " + str(broken)):
      self._dataset()
    empty = self.tmp / "empty_val"
    _save(empty / "train" / "a.png", _pattern(SIZE, SIZE, 0))
    _save(empty / "test" / "t.png", _pattern(SIZE, SIZE, 1))
    (empty / "val").mkdir()
    with self.assertRaisesRegex(data.DataError, "val holds no .png/.jpg/.jpeg images"):
      data.make_dataset("folder", image_size=SIZE, seed=0, data_dir=str(empty))

  def test_bad_split_name_raises(self):
    _folder(self.root)
    ds = self._dataset()
    for split in ("train", "validation", None):
      with self.assertRaisesRegex(ValueError, r"Unknown evaluation split .*'val', 'test'"):
        ds.eval_batches(2, split=split)
    with self.assertRaisesRegex(ValueError, "Unknown split 'valid'"):
      ds.files("valid")

  @parameterized.parameters(4, 7.5, True)
  def test_bad_image_size(self, image_size):
    _folder(self.root)
    with self.assertRaisesRegex(ValueError, "image_size must be an integer >= 8"):
      self._dataset(image_size=image_size)


def _npz(path: pathlib.Path, **arrays) -> str:
  np.savez(path, **arrays)
  return str(path)


class NpzTest(parameterized.TestCase):

  @pytest.fixture(autouse=True)
  def _tmp_path(self, tmp_path):
    self.tmp = tmp_path

  def test_uint8_rgb_at_image_size_is_exact(self):
    train = np.random.default_rng(0).integers(0, 256, (7, SIZE, SIZE, 3), dtype=np.uint8)
    test = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    path = _npz(self.tmp / "d.npz", train=train, test=test)
    ds = data.make_dataset("npz", image_size=SIZE, seed=2, data_dir=path, num_eval_examples=4)
    # No 'val': the last of the 7 training images is held out as the val split.
    self.assertEqual((ds.num_train_examples, ds.num_eval_examples), (6, 4))
    np.testing.assert_array_equal(np.concatenate(list(ds.eval_batches(3))),
                                  (test[:4] / np.float32(255)).astype(np.float32))
    np.testing.assert_array_equal(np.concatenate(list(ds.train_split_batches(3))),
                                  (train[:6] / np.float32(255)).astype(np.float32))
    order = np.random.default_rng((2, 0)).permutation(6)
    batch = ds.train_batch(0, 5)
    chex.assert_type(batch, np.float32)
    np.testing.assert_array_equal(_to_uint8(batch), train[order[:5]])
    self.assertEqual(ds.position(3, 5), dict(examples_seen=15, epoch=2, index_in_epoch=3))

  def test_greyscale_and_resizing(self):
    grey = np.stack([_pattern(20, 30, i)[..., 0] for i in range(4)])
    path = _npz(self.tmp / "grey.npz", train=grey, test=grey[:, :, :, None])
    ds = data.make_dataset("npz", image_size=SIZE, seed=0, data_dir=path)
    expected = np.stack([np.repeat(_resize_reference(g, SIZE)[..., None], 3, -1) for g in grey])
    np.testing.assert_array_equal(_to_uint8(np.concatenate(list(ds.eval_batches(4)))), expected)
    # The 4th training image is held out as the val split.
    np.testing.assert_array_equal(_to_uint8(next(ds.train_split_batches(4))), expected[:3])
    np.testing.assert_array_equal(_to_uint8(next(ds.eval_batches(4, split="val"))), expected[3:])

  def test_float_images_keep_float_precision(self):
    pixels = np.stack([_pattern(24, 40, i) for i in range(3)])
    as_float = pixels.astype(np.float64) / 255
    path = _npz(self.tmp / "f.npz", train=as_float, test=as_float[:, 4:20, 12:28])
    ds = data.make_dataset("npz", image_size=SIZE, seed=0, data_dir=path)
    # Test images are SIZE x SIZE already: passed through, only cast.
    np.testing.assert_array_equal(next(ds.eval_batches(3)),
                                  as_float[:, 4:20, 12:28].astype(np.float32))
    resized = next(ds.train_split_batches(3))
    chex.assert_shape(resized, (2, SIZE, SIZE, 3))  # The 3rd is held out as val.
    self.assertTrue(0.0 <= resized.min() and resized.max() <= 1.0)
    # Within rounding of the uint8 path, but not rounded to 8 bits itself.
    via_uint8 = np.stack([_resize_reference(p, SIZE) for p in pixels[:2]]) / 255
    np.testing.assert_allclose(resized, via_uint8, atol=1 / 255)
    self.assertFalse(np.allclose(resized * 255, np.round(resized * 255), atol=1e-3))

  def test_bad_files(self):
    images = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    text = self.tmp / "notes.npz"
    text.write_text("not a zip archive")
    single = self.tmp / "one.npy"
    np.save(single, images)
    cases = [
        (None, "config.data_dir is not set"),
        (str(self.tmp / "missing.npz"), "does not exist"),
        (str(self.tmp), "is a directory.*dataset='folder'"),
        (str(text), "Cannot read .*notes.npz as an .npz file"),
        (str(single), r"holds a single array \(.npy\)"),
        (_npz(self.tmp / "keys.npz", train=images, validation=images),
         r"has no array 'test' \(it has \['train', 'validation'\]\)"),
        (_npz(self.tmp / "obj.npz", train=np.array([images, None], dtype=object), test=images),
         r"Cannot read .*obj.npz\['train'\].*allow_pickle"),
        (_npz(self.tmp / "flat.npz", train=np.zeros((2, 768), np.uint8), test=images),
         r"\['train'\] has shape \(2, 768\); expected \(N, H, W, 3\)"),
        (_npz(self.tmp / "rgba.npz", train=images, test=np.zeros((2, 8, 8, 4), np.uint8)),
         r"\['test'\] has shape \(2, 8, 8, 4\)"),
        (_npz(self.tmp / "empty.npz", train=images[:0], test=images),
         r"\['train'\] holds no images"),
        (_npz(self.tmp / "int.npz", train=images.astype(np.int64), test=images),
         r"dtype int64; expected uint8.*astype\(np.uint8\)"),
        (_npz(self.tmp / "range.npz", train=images + np.float32(200), test=images),
         r"float32 with values in \[200.0, 200.0\]; float images must lie in \[0, 1\]"),
        (_npz(self.tmp / "nan.npz", train=images, test=np.full((1, 8, 8), np.nan)),
         r"values in \[nan, nan\]"),
    ]
    for data_dir, message in cases:
      with self.subTest(data_dir), self.assertRaisesRegex(data.DataError, message):
        data.make_dataset("npz", image_size=SIZE, seed=0, data_dir=data_dir)


class NpzValTest(parameterized.TestCase):

  @pytest.fixture(autouse=True)
  def _tmp_path(self, tmp_path):
    self.tmp = tmp_path

  def _images(self, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)

  def test_val_array_is_the_val_split(self):
    train, val, test = self._images(6, 0), self._images(4, 1), self._images(3, 2)
    path = _npz(self.tmp / "d.npz", train=train, val=val, test=test)
    ds = data.make_dataset("npz", image_size=SIZE, seed=0, data_dir=path)
    self.assertEqual((ds.num_train_examples, ds.num_val_examples, ds.num_eval_examples), (6, 4, 3))
    other = data.make_dataset("npz", image_size=SIZE, seed=1, data_dir=path)
    np.testing.assert_array_equal(_to_uint8(_assert_fixed(self, ds, other, "val")), val)
    np.testing.assert_array_equal(_to_uint8(_assert_fixed(self, ds, other, "test")), test)
    np.testing.assert_array_equal(_to_uint8(next(ds.train_split_batches(10))), train)
    _assert_val_never_trained_on(self, ds, val / np.float32(255))
    capped = data.make_dataset("npz", image_size=SIZE, seed=0, data_dir=path, num_eval_examples=2)
    self.assertEqual((capped.num_val_examples, capped.num_eval_examples), (2, 2))
    np.testing.assert_array_equal(_to_uint8(next(capped.eval_batches(4, "val"))), val[:2])

  def test_val_array_is_checked_like_the_others(self):
    images = self._images(3, 0)
    path = _npz(self.tmp / "bad.npz", train=images, val=np.zeros((2, 768), np.uint8), test=images)
    with self.assertRaisesRegex(data.DataError, r"\['val'\] has shape \(2, 768\)"):
      data.make_dataset("npz", image_size=SIZE, seed=0, data_dir=path)

  def test_without_val_array_the_last_tenth_of_train_is_val(self):
    train, test = self._images(21, 3), self._images(2, 4)
    path = _npz(self.tmp / "d.npz", train=train, test=test)
    ds = data.make_dataset("npz", image_size=SIZE, seed=5, data_dir=path)
    self.assertEqual((ds.num_train_examples, ds.num_val_examples), (19, 2))  # 21 // 10 = 2.
    other = data.make_dataset("npz", image_size=SIZE, seed=6, data_dir=path)
    val = _assert_fixed(self, ds, other, "val")
    np.testing.assert_array_equal(_to_uint8(val), train[19:])
    np.testing.assert_array_equal(_to_uint8(_assert_fixed(self, ds, other, "test")), test)
    np.testing.assert_array_equal(_to_uint8(next(ds.train_split_batches(30))), train[:19])
    _assert_val_never_trained_on(self, ds, val)

  def test_single_training_image_needs_a_val_array(self):
    one, test = self._images(1, 0), self._images(2, 1)
    with self.assertRaises(data.DataError) as raised:
      data.make_dataset("npz", image_size=SIZE, seed=0,
                        data_dir=_npz(self.tmp / "one.npz", train=one, test=test))
    message = str(raised.exception)
    self.assertIn("['train'] holds only 1 image(s) and there is no array 'val'", message)
    self.assertIn("add an array 'val'", message)
    ds = data.make_dataset("npz", image_size=SIZE, seed=0,
                           data_dir=_npz(self.tmp / "two.npz", train=one, val=one, test=test))
    self.assertEqual((ds.num_train_examples, ds.num_val_examples), (1, 1))

  def test_bad_split_name_raises(self):
    images = self._images(4, 0)
    ds = data.make_dataset("npz", image_size=SIZE, seed=0,
                           data_dir=_npz(self.tmp / "d.npz", train=images, test=images))
    for split in ("train", "Val", ""):
      with self.assertRaisesRegex(ValueError, r"Unknown evaluation split .*'val', 'test'"):
        ds.eval_batches(2, split=split)


class ShardTest(parameterized.TestCase):
  """Every dataset kind: the host slices of a global batch concatenate to it, bit for bit."""

  @pytest.fixture(autouse=True)
  def _tmp_path(self, tmp_path):
    self.tmp = tmp_path

  def _make(self, kind: str):
    if kind == "folder":
      _folder(self.tmp / "images")
      return data.make_dataset("folder", image_size=12, seed=1, data_dir=str(self.tmp / "images"))
    pixels = np.stack([_pattern(20, 14, i) for i in range(6)])
    path = _npz(self.tmp / "d.npz", train=pixels, test=pixels[:2])
    return data.make_dataset("npz", image_size=12, seed=1, data_dir=path)

  @parameterized.parameters("folder", "npz")
  def test_shards_concatenate_to_the_global_batch(self, kind):
    ds = self._make(kind)
    for step in (0, 3):  # For the 5 trained-on npz images, step 3 spans epochs 4 to 6.
      whole = ds.train_batch(step, 8)
      chex.assert_shape(whole, (8, 12, 12, 3))
      for num_shards in (2, 4, 8):
        parts = [ds.train_batch(step, 8, shard=i, num_shards=num_shards)
                 for i in range(num_shards)]
        self.assertEqual({p.shape[0] for p in parts}, {8 // num_shards})
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    with self.assertRaisesRegex(ValueError, "batch_size=8 does not divide by num_shards=3"):
      ds.train_batch(0, 8, shard=0, num_shards=3)
    with self.assertRaisesRegex(ValueError, "shard=4 is out of range for num_shards=4"):
      ds.train_batch(0, 8, shard=4, num_shards=4)


class EpochShufflerTest(parameterized.TestCase):

  def test_every_epoch_is_a_fresh_permutation(self):
    shuffler = shuffling.EpochShuffler(10, seed=7)
    order = np.concatenate([shuffler.indices(step, 4) for step in range(10)])  # 4 epochs.
    for epoch in range(4):
      np.testing.assert_array_equal(order[10 * epoch:10 * epoch + 10],
                                    np.random.default_rng((7, epoch)).permutation(10))
    self.assertFalse(np.array_equal(order[:10], order[10:20]))
    # Going back to an evicted epoch gives the same order again: no state.
    np.testing.assert_array_equal(shuffler.indices(0, 4), order[:4])
    self.assertEqual(shuffler.position(10, 4), dict(examples_seen=40, epoch=4, index_in_epoch=0))
    self.assertEqual(shuffler.position(0, 4), dict(examples_seen=0, epoch=0, index_in_epoch=0))

  def test_shard_rows(self):
    self.assertEqual(shuffling.shard_rows(12, 2, 3), range(8, 12))
    self.assertEqual(shuffling.shard_rows(12, 0, 1), range(0, 12))
    with self.assertRaisesRegex(ValueError, "multiple of the number of hosts"):
      shuffling.shard_rows(10, 0, 4)
