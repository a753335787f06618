"""CIFAR-10, CelebA and ImageNet through `tfds.data_source`: random access over ArrayRecord files.

Reading needs no TensorFlow and never downloads; a dataset that is not
prepared raises DatasetNotPreparedError saying how to prepare it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gmvq_jax.data.registry import DatasetNotPreparedError

TFDS_NAMES = ("cifar10", "celeb_a", "imagenet2012")
# The held-out split evaluation uses: ImageNet's test labels are not public,
# so its 50,000-image validation split plays that role.
EVAL_SPLITS = {"cifar10": "test", "celeb_a": "test", "imagenet2012": "validation"}
# ImageNet images vary in size; the centred square is resized (up or down).
MAX_IMAGENET_SIZE = 512
# CelebA's aligned images are 218x178; the usual face crop is the centred
# 178x178 square, which is then resized. Larger sizes would only upsample.
CELEB_A_CROP = 178
MIN_IMAGE_SIZE = 8
# Rebuilding a 162,770-index permutation costs milliseconds per step; batches
# touch at most two epochs at a time, so two cached permutations suffice.
_CACHED_EPOCHS = 2


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that builds `name` as ArrayRecord files under `data_dir`."""
  return (
      "python -c \"import tensorflow_datasets as tfds; "
      f"tfds.builder('{name}', data_dir='{data_dir}', file_format='array_record')"
      ".download_and_prepare()\"")


def _not_prepared_message(name: str, data_dir: str, cause: BaseException) -> str:
  lines = [
      f"TFDS dataset '{name}' is not prepared as ArrayRecord files in data_dir={data_dir!r}"
      " (gmvq_jax only reads it with tfds.data_source and never downloads).",
      "Prepare it once, on a machine with internet access (building, unlike reading,"
      " needs TensorFlow; importlib_resources is a TFDS build dependency the"
      " tensorflow-datasets wheel does not declare):",
      "  pip install tensorflow importlib_resources",
      f"  {prepare_command(name, data_dir)}",
      f"then pass data_dir={data_dir!r} (config.data_dir).",
  ]
  if name == "imagenet2012":
    lines.append("ImageNet cannot be downloaded by TFDS: put ILSVRC2012_img_train.tar and"
                 " ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/ first.")
  if name == "celeb_a":
    lines.append("CelebA downloads ~1.4 GB from Google Drive, which can refuse with a"
                 " download-quota error; retry later if it does.")
  lines.append(f"TFDS said: {type(cause).__name__}: {cause}")
  return "\n".join(lines)


def open_split(name: str, split: str, data_dir: str | None) -> Sequence[dict[str, Any]]:
  """Opens one split for random access, without downloading.

  Args:
    name: a TFDS dataset name.
    split: e.g. "train" or "test".
    data_dir: TFDS data_dir; None means TFDS's default (TFDS_DATA_DIR or
      ~/tensorflow_datasets).

  Returns:
    The `tfds.data_source` sequence of feature dicts.

  Raises:
    DatasetNotPreparedError: no ArrayRecord files for `name` under data_dir.
  """
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as error:  # TFDS raises KeyError, NotImplementedError, ... here.
    builder = tfds.builder(name, data_dir=data_dir)
    formats = builder.info.available_file_formats() if builder.is_prepared() else set()
    if tfds.core.FileFormat.ARRAY_RECORD in formats:
      raise  # Prepared, so this is a different problem; keep TFDS's error.
    root = os.fspath(builder.data_dir_root)
    raise DatasetNotPreparedError(_not_prepared_message(name, root, error)) from error


def _check_int(value, what: str, minimum: int = 0) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def check_image_size(name: str, image_size: int) -> int:
  """Raises ValueError unless `name` can be served at `image_size`."""
  if name == "cifar10":
    if image_size != 32:
      raise ValueError(f"cifar10 images are 32x32; image_size must be 32, got {image_size!r}.")
    return 32
  if name == "celeb_a":
    ok = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not ok or not MIN_IMAGE_SIZE <= image_size <= CELEB_A_CROP:
      raise ValueError(
          f"celeb_a image_size must be an integer in [{MIN_IMAGE_SIZE}, {CELEB_A_CROP}]"
          f" (the {CELEB_A_CROP}x{CELEB_A_CROP} face crop, resized), got {image_size!r}.")
    return int(image_size)
  if name == "imagenet2012":
    ok = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not ok or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGENET_SIZE:
      raise ValueError(
          f"imagenet2012 image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGENET_SIZE}]"
          f" (the centred square crop, resized), got {image_size!r}.")
    return int(image_size)
  raise ValueError(f"Unknown TFDS dataset {name!r}; this module serves {TFDS_NAMES}.")


def _center_crop_resize(image: np.ndarray, image_size: int) -> np.ndarray:
  """(H, W, 3) uint8 -> (image_size, image_size, 3) uint8 from the centred square."""
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = Image.fromarray(image[top:top + side, left:left + side])
  if side == image_size:
    return np.asarray(square)
  # PIL widens the bilinear kernel when shrinking, so this averages (no aliasing).
  return np.asarray(square.resize((image_size, image_size), Image.BILINEAR))


class TfdsImageDataset:
  """Shuffled training batches and the in-order test split of one TFDS image dataset."""

  def __init__(self, name: str, *, image_size: int, seed: int, data_dir: str | None = None,
               num_eval_examples: int | None = None):
    """Opens the train and test splits (fast; nothing is read yet).

    Args:
      name: one of TFDS_NAMES.
      image_size: 32 for cifar10; 8..178 for celeb_a (128 is the usual size).
      seed: selects the per-epoch shuffles of the training split.
      data_dir: TFDS data_dir holding the prepared ArrayRecord files.
      num_eval_examples: evaluate on the first this many test examples; None
        for the whole test split.

    Raises:
      DatasetNotPreparedError: the dataset is not prepared in data_dir.
      ValueError: bad image_size, seed or num_eval_examples.
    """
    self.name = name
    self.image_size = check_image_size(name, image_size)
    self.image_shape = (self.image_size, self.image_size, 3)
    self.seed = _check_int(seed, "seed")
    self._train = open_split(name, "train", data_dir)
    self._test = open_split(name, EVAL_SPLITS[name], data_dir)
    self.num_train_examples = len(self._train)
    test_size = len(self._test)
    if num_eval_examples is None:
      num_eval_examples = test_size
    num_eval_examples = _check_int(num_eval_examples, "num_eval_examples", 1)
    if num_eval_examples > test_size:
      raise ValueError(
          f"num_eval_examples={num_eval_examples} exceeds the {test_size} examples"
          f" of the {name} test split.")
    self.num_eval_examples = num_eval_examples
    self._permutations: dict[int, np.ndarray] = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) >= _CACHED_EPOCHS:
        self._permutations.pop(min(self._permutations))
      rng = np.random.default_rng((self.seed, epoch))
      self._permutations[epoch] = rng.permutation(self.num_train_examples)
    return self._permutations[epoch]

  def train_indices(self, step: int, batch_size: int) -> np.ndarray:
    """Training-split indices of batch `step`.

    Example number `step * batch_size + i` of the run is position
    `(step * batch_size + i) % N` of epoch `(step * batch_size + i) // N`'s
    permutation, so a batch may straddle two epochs and no state is kept.

    Returns:
      (batch_size,) int64.
    """
    step = _check_int(step, "step")
    batch_size = _check_int(batch_size, "batch_size", 1)
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_train_examples)
    indices = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      here = epochs == epoch
      indices[here] = self._permutation(int(epoch))[offsets[here]]
    return indices

  def _read(self, source, indices) -> np.ndarray:
    keys = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    # ArrayRecord reads a batch of keys in one call, faster than one by one.
    records = getitems(keys) if getitems is not None else [source[k] for k in keys]
    images = [np.asarray(record["image"], np.uint8) for record in records]
    if self.name in ("celeb_a", "imagenet2012"):
      images = [_center_crop_resize(image, self.image_size) for image in images]
    batch = np.stack(images)
    if batch.shape[1:] != self.image_shape:
      raise ValueError(f"{self.name} gave images of shape {batch.shape[1:]}, expected {self.image_shape}.")
    return batch.astype(np.float32) / np.float32(255)

  def train_batch(self, step: int, batch_size: int) -> np.ndarray:
    """Training batch `step`, a pure function of (seed, step, batch_size).

    Returns:
      (batch_size, H, W, 3) float32 in [0, 1].
    """
    return self._read(self._train, self.train_indices(step, batch_size))

  def train_split_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The whole training split in index order (not shuffled), e.g. to tokenize it.

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; the last batch may be smaller.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    total = self.num_train_examples
    return (self._read(self._train, range(start, min(start + batch_size, total)))
            for start in range(0, total, batch_size))

  def eval_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The first num_eval_examples of the test split, in index order.

    Args:
      batch_size: images per batch; the last batch may be smaller.

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; b == batch_size except
      possibly for the last batch.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)  # Now, not at the first next().
    return (self._read(self._test, range(start, min(start + batch_size, self.num_eval_examples)))
            for start in range(0, self.num_eval_examples, batch_size))
