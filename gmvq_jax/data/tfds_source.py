"""CIFAR-10, CelebA and ImageNet through `tfds.data_source`: random access over ArrayRecord files.

Reading needs no TensorFlow and never downloads; a dataset that is not
prepared raises DatasetNotPreparedError saying how to prepare it.
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Sequence

from absl import logging

import numpy as np
import tensorflow_datasets as tfds

from gmvq_jax import errors
from gmvq_jax.data import images as image_ops
from gmvq_jax.data import shuffling

TFDS_NAMES = shuffling.TFDS_DATASET_NAMES
# The TFDS split our "test" split is: ImageNet's test labels are not public,
# so its 50,000-image validation split plays that role.
TEST_SPLITS = {"cifar10": "test", "celeb_a": "test", "imagenet2012": "validation"}
# The TFDS split our "val" split is; None: the last
# shuffling.held_out_size(N, MAX_HELD_OUT_TFDS) examples of 'train' (cifar10:
# 5,000 of 50,000; imagenet2012: 10,000), which are then not trained on.
VAL_SPLITS = {"cifar10": None, "celeb_a": "validation", "imagenet2012": None}
# ImageNet images vary in size; the centred square is resized (up or down).
MAX_IMAGENET_SIZE = 512
# CelebA's aligned images are 218x178; the usual face crop is the centred
# 178x178 square, which is then resized. Larger sizes would only upsample.
CELEB_A_CROP = 178
MIN_IMAGE_SIZE = 8
# ImageNet's archives need a login, so TFDS cannot fetch them; the user puts
# them where TFDS looks: <data_dir>/downloads/manual/.
IMAGENET_MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def prepare_command(name: str, data_dir: str) -> str:
  """The shell command that builds `name` as ArrayRecord files under `data_dir`."""
  return f"python -m launch.prepare_data --dataset={name} --data_dir={shlex.quote(data_dir)}"


def manual_dir(data_dir: str) -> str:
  """Where TFDS looks for manually downloaded archives (ImageNet's tars)."""
  return os.path.join(data_dir, "downloads", "manual")


def download_notes(name: str, data_dir: str) -> list[str]:
  """What building `name` needs beyond internet access, one line per note."""
  if name == "imagenet2012":
    return [f"ImageNet cannot be downloaded by TFDS: put {' and '.join(IMAGENET_MANUAL_FILES)}"
            f" (from image-net.org, after registering) in {manual_dir(data_dir)}/ first."]
  if name == "celeb_a":
    return ["CelebA downloads ~1.4 GB from Google Drive, which can refuse with a"
            " download-quota error; retry later if it does."]
  return []


def _not_prepared_message(name: str, data_dir: str, cause: BaseException) -> str:
  lines = [
      f"TFDS dataset '{name}' is not prepared as ArrayRecord files in data_dir={data_dir!r}"
      " (gmvq_jax only reads it with tfds.data_source and never downloads).",
      "Prepare it once, on a machine with internet access; building, unlike reading,"
      " needs TensorFlow (the 'prepare' extra):",
      "  pip install -e '.[prepare]'",
      f"  {prepare_command(name, data_dir)}",
      "(which runs tfds.builder(name, data_dir=..., file_format='array_record')"
      ".download_and_prepare()),",
      f"then pass data_dir={data_dir!r} (config.data_dir).",
  ]
  lines += download_notes(name, data_dir)
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
    raise errors.DatasetNotPreparedError(_not_prepared_message(name, root, error)) from error


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


class TfdsImageDataset(shuffling.ShuffledSplits):
  """Shuffled training batches and the in-order val and test splits of one TFDS image dataset."""

  def __init__(self, name: str, *, image_size: int, seed: int, data_dir: str | None = None,
               num_eval_examples: int | None = None):
    """Opens the train, test and (celeb_a) validation splits (fast; nothing is read yet).

    Args:
      name: one of TFDS_NAMES.
      image_size: 32 for cifar10; 8..178 for celeb_a (128 is the usual size).
      seed: selects the per-epoch shuffles of the training split.
      data_dir: TFDS data_dir holding the prepared ArrayRecord files.
      num_eval_examples: evaluate on the first this many test examples; None
        for the whole test split. Caps the val split too (min with its size).

    Raises:
      DatasetNotPreparedError: the dataset is not prepared in data_dir.
      ValueError: bad image_size, seed or num_eval_examples.
    """
    self.name = name
    self.image_size = check_image_size(name, image_size)
    self.image_shape = (self.image_size, self.image_size, 3)
    self.seed = shuffling.check_int(seed, "seed")
    self._sources = {"train": open_split(name, "train", data_dir),
                     "test": open_split(name, TEST_SPLITS[name], data_dir)}
    if VAL_SPLITS[name] is not None:
      self._sources["val"] = open_split(name, VAL_SPLITS[name], data_dir)
    test_size = len(self._sources["test"])
    cap = num_eval_examples
    if num_eval_examples is None:
      num_eval_examples = test_size
    num_eval_examples = shuffling.check_int(num_eval_examples, "num_eval_examples", 1)
    if num_eval_examples > test_size:
      logging.warning("num_eval_examples=%d exceeds the %d examples of the %s test split:"
                      " evaluating on all %d.", num_eval_examples, test_size, name, test_size)
      num_eval_examples = test_size
    self.num_eval_examples = num_eval_examples
    train_size = len(self._sources["train"])
    self._set_splits(
        train_size=train_size, test_size=test_size,
        val_size=len(self._sources["val"]) if "val" in self._sources else None,
        held_out=shuffling.held_out_size(train_size, shuffling.MAX_HELD_OUT_TFDS),
        num_eval_examples=cap)

  def _read(self, source: str, indices: Sequence[int]) -> np.ndarray:
    """Examples `indices` of opened split "train", "test" or "val" as float32 images."""
    source = self._sources[source]
    keys = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    # ArrayRecord reads a batch of keys in one call, faster than one by one.
    records = getitems(keys) if getitems is not None else [source[k] for k in keys]
    images = [np.asarray(record["image"], np.uint8) for record in records]
    if self.name in ("celeb_a", "imagenet2012"):
      images = [image_ops.center_crop_resize(image, self.image_size) for image in images]
    batch = np.stack(images)
    if batch.shape[1:] != self.image_shape:
      raise ValueError(
          f"{self.name} gave images of shape {batch.shape[1:]}, expected {self.image_shape}.")
    return image_ops.to_unit_float(batch)
