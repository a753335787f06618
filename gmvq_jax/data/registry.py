"""Dataset names and `make_dataset`, the one entry point the training loop uses.

Every dataset serves deterministic training batches (a pure function of seed,
step and batch size) and a fixed, ordered test split; see ImageDataset.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np

from gmvq_jax.data import embedded

DATASET_NAMES = ("embedded", "cifar10", "celeb_a", "imagenet2012")
DEFAULT_IMAGE_SIZE = {"embedded": embedded.DEFAULT_IMAGE_SIZE, "cifar10": 32, "celeb_a": 128,
                      "imagenet2012": 256}


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset has no ArrayRecord files in data_dir; the message says how to build them."""


class ImageDataset(Protocol):
  """What `make_dataset` returns, whatever the source."""

  image_shape: tuple[int, int, int]  # (H, W, 3)
  num_eval_examples: int  # Size of the test split that eval_batches covers.

  def train_batch(self, step: int, batch_size: int) -> np.ndarray:
    """(batch_size, H, W, 3) float32 in [0, 1]; same (seed, step, batch_size), same bits."""

  def eval_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """The whole test split in a fixed order, as (b, H, W, 3) float32 batches."""


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
      8..512 for imagenet2012 (resized centre squares).
    seed: selects the training batch sequence.
    data_dir: TFDS data_dir for the TFDS datasets; ignored by embedded.
    num_eval_examples: test examples to evaluate on; None for the default
      (512 embedded crops; the whole TFDS test split).

  Returns:
    An ImageDataset.

  Raises:
    ValueError: unknown name, or an image_size the source cannot provide.
    DatasetNotPreparedError: a TFDS dataset is not prepared in data_dir.
  """
  validate_dataset_name(name)
  if name == "embedded":
    return embedded.EmbeddedDataset(image_size=image_size, seed=seed,
                                    num_eval_examples=num_eval_examples)
  # Imported here so that config validation and the embedded demo do not pay
  # for importing TFDS.
  from gmvq_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TfdsImageDataset(name, image_size=image_size, seed=seed, data_dir=data_dir,
                                      num_eval_examples=num_eval_examples)
