"""Dataset names and `make_dataset`, the one entry point the training loop uses.

Every dataset serves deterministic training batches (a pure function of seed,
step and batch size) and two fixed, ordered evaluation splits: "val" to choose
hyperparameters on and "test" for the figures reported; see ImageDataset.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np

from gmvq_jax import errors
from gmvq_jax.data import embedded
from gmvq_jax.data import shuffling

TFDS_DATASET_NAMES = shuffling.TFDS_DATASET_NAMES
# 'folder' and 'npz' are the user's own images, found at config.data_dir.
USER_DATASET_NAMES = ("folder", "npz")
# The splits eval_batches serves: "val" (choose hyperparameters on it) and
# "test" (report it; never tune on it). Defined in shuffling so that dataset
# modules, embedded included, need not import this module, which imports them.
EVAL_SPLITS = shuffling.EVAL_SPLITS
check_eval_split = shuffling.check_eval_split
DATASET_NAMES = ("embedded",) + TFDS_DATASET_NAMES + USER_DATASET_NAMES
DEFAULT_IMAGE_SIZE = {"embedded": embedded.DEFAULT_IMAGE_SIZE, "cifar10": 32, "celeb_a": 128,
                      "imagenet2012": 256, "folder": 64, "npz": 64}


DatasetNotPreparedError = errors.DatasetNotPreparedError
DataError = errors.DataError


class ImageDataset(Protocol):
  """What `make_dataset` returns, whatever the source."""

  image_shape: tuple[int, int, int]  # (H, W, 3)
  num_eval_examples: int  # Size of the test split that eval_batches(b, "test") covers.
  num_val_examples: int  # Size of the val split that eval_batches(b, "val") covers.
  # Size of the training split that epochs run over; None for a source
  # without epochs (the embedded dataset draws fresh random crops).
  num_train_examples: int | None

  def train_batch(self, step: int, batch_size: int, *, shard: int = 0,
                  num_shards: int = 1) -> np.ndarray:
    """Rows [shard * b, (shard + 1) * b) of global batch `step`, b = batch_size // num_shards.

    Reads only those rows, so each host of a multi-host run reads a disjoint
    slice; concatenating shards 0..num_shards-1 gives the unsharded batch bit
    for bit. (b, H, W, 3) float32 in [0, 1]; same (seed, step, batch_size),
    same bits.
    """

  def position(self, step: int, batch_size: int) -> dict[str, Any]:
    """JSON-able progress before batch `step`: examples_seen, epoch, index_in_epoch."""

  def eval_batches(self, batch_size: int, split: str = "test") -> Iterator[np.ndarray]:
    """One evaluation split, whole, in a fixed order, as (b, H, W, 3) float32 batches.

    `split` is "test" (num_eval_examples; the figures reported, never tuned
    on) or "val" (num_val_examples; for choosing hyperparameters), disjoint
    from the test split and from every training batch; any other value
    raises ValueError naming EVAL_SPLITS. The batches do not depend on the
    seed. Where the validation split comes from:
      embedded: see embedded.EmbeddedDataset;
      cifar10, imagenet2012: the last min(N // 10, 10000) examples of TFDS's
        'train' split (of N), no longer trained on (ImageNet's 'validation'
        split is already its test split);
      celeb_a: TFDS's 'validation' split;
      folder: data_dir/val/ if present, else the last max(1, N // 10)
        training files in sorted order;
      npz: the array 'val' if present, else the last max(1, N // 10)
        images of 'train'.
    """


def validate_dataset_name(name: str) -> None:
  """Raises ValueError, naming the allowed names, unless `name` is in DATASET_NAMES."""
  if name not in DATASET_NAMES:
    allowed = ", ".join(repr(n) for n in DATASET_NAMES)
    raise ValueError(f"Unknown dataset {name!r}; allowed names are {allowed}.")


def make_dataset(name: str, *, image_size: int, seed: int, data_dir: str | None = None,
                 num_eval_examples: int | None = None) -> ImageDataset:
  """Builds the named dataset.

  Args:
    name: one of DATASET_NAMES.
    image_size: side of the square images: 8..300 for embedded (crops),
      exactly 32 for cifar10, 8..178 for celeb_a (resized face crops),
      8..512 for imagenet2012, >= 8 for folder and npz (resized centre squares).
    seed: selects the training batch sequence.
    data_dir: TFDS data_dir for the TFDS datasets; for 'folder' a directory
      holding train/ and test/ (and optionally val/) image folders; for 'npz'
      the path of an .npz file with arrays 'train' and 'test' (and optionally
      'val'); ignored by embedded.
    num_eval_examples: test examples to evaluate on; None for the default
      (512 embedded crops; the whole test split of the others). It caps the
      val split too, at min(num_eval_examples, the val split's size).

  Returns:
    An ImageDataset.

  Raises:
    ValueError: unknown name, or an image_size the source cannot provide.
    DatasetNotPreparedError: a TFDS dataset is not prepared in data_dir.
    DataError: the user's images for 'folder' or 'npz' are missing or unreadable.
  """
  validate_dataset_name(name)
  if name == "embedded":
    return embedded.EmbeddedDataset(image_size=image_size, seed=seed,
                                    num_eval_examples=num_eval_examples)
  # Imported here so that config validation and the embedded demo do not pay
  # for importing TFDS or scanning image folders.
  if name in USER_DATASET_NAMES:
    from gmvq_jax.data import user_images  # pylint: disable=g-import-not-at-top
    dataset_class = {"folder": user_images.FolderDataset, "npz": user_images.NpzDataset}[name]
    return dataset_class(data_dir, image_size=image_size, seed=seed,
                         num_eval_examples=num_eval_examples)
  from gmvq_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TfdsImageDataset(name, image_size=image_size, seed=seed, data_dir=data_dir,
                                      num_eval_examples=num_eval_examples)


def from_config(config: Any) -> ImageDataset:
  """The dataset a training config names (dataset, image_size, seed, data_dir, num_eval_examples)."""
  return make_dataset(config.dataset, image_size=config.image_size, seed=config.seed,
                      data_dir=config.get("data_dir"),
                      num_eval_examples=config.get("num_eval_examples"))
