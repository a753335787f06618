"""The `embedded` demo dataset: random crops of the photographs scikit-image ships.

Needs no download, so the demo trains anywhere. Test crops come only from
held-out photographs, so test figures measure generalisation, not memory.
Validation crops come from the bottom quarter of every training photograph,
a region that training crops never touch: hyperparameters are chosen on it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from gmvq_jax import errors
from gmvq_jax.data import shuffling

# Natural photographs only: no synthetic images (color.png, phantom.png),
# binary or text images (horse.png, page.png, text.png), chessboards, logos,
# nearly blank ones (cell.png) or synthetically blurred ones (clock_motion.png).
# motorcycle_left/right are a stereo pair of one scene, so both train: holding
# one out would leak its twin into the test set.
TRAIN_PHOTOS = (
    "astronaut.png",  # portrait, colour
    "rocket.jpg",  # outdoor scene with sky, colour
    "motorcycle_left.png",  # cluttered indoor scene, colour
    "motorcycle_right.png",
    "hubble_deep_field.jpg",  # galaxies on black, colour
    "ihc.png",  # stained tissue micrograph, colour
    "retina.jpg",  # fundus photograph, colour
    "camera.png",  # cameraman, grey
    "coins.png",  # grey
    "moon.png",  # lunar surface, grey
    "brick.png",  # texture, grey
    "grass.png",  # texture, grey
)
# One animal, one still life and one texture: the test set mixes colour and
# grey content that the training photographs cover only in kind.
HELD_OUT_PHOTOS = (
    "chelsea.png",  # cat, colour
    "coffee.png",  # cup of coffee, colour
    "gravel.png",  # texture, grey
)
# Crops are taken from the photo at full size and at 1/2 and 1/4 size, so the
# same photograph yields both fine detail and whole objects.
DOWNSCALE_FACTORS = (1, 2, 4)
# The bottom VAL_FRACTION of each training photograph's rows (at full size) is
# the validation region; training crops lie wholly above it, at every scale.
VAL_FRACTION = 0.25
MIN_IMAGE_SIZE = 8
DEFAULT_IMAGE_SIZE = 32
DEFAULT_NUM_EVAL_EXAMPLES = 512
# Eval crop i is drawn from np.random.default_rng((_EVAL_STREAM, i)): fixed for
# every seed, so runs with different seeds are scored on the same crops.
_EVAL_STREAM = 0x5EED_E7A1
_VAL_STREAM = 0x5EED_7A11


class CropSpec(NamedTuple):
  """Where one crop comes from: `load_photo(photo, downscale)[top:, left:]`."""

  photo: str
  downscale: int
  top: int
  left: int
  flip: bool  # Mirrored left-right after cropping.


def photo_dir() -> str:
  """The `data/` folder of the installed scikit-image package (no fetching)."""
  spec = importlib.util.find_spec("skimage")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("The embedded dataset needs scikit-image: pip install scikit-image.")
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


@functools.lru_cache(maxsize=None)
def _pyramid(name: str) -> dict[int, np.ndarray]:
  path = os.path.join(photo_dir(), name)
  if not os.path.exists(path):
    raise errors.UserFileNotFoundError(
        f"Photograph {path} of the embedded dataset is missing; this scikit-image"
        " install does not ship it (the dataset was built against scikit-image 0.26).")
  with Image.open(path) as image:
    # convert("RGB") replicates grey photographs to three channels.
    full = image.convert("RGB")
  levels = {}
  for factor in DOWNSCALE_FACTORS:
    # reduce() averages factor x factor boxes: an exact, alias-free downscale.
    level = np.asarray(full.reduce(factor) if factor > 1 else full, np.uint8).copy()
    level.setflags(write=False)  # Shared by every dataset through the cache.
    levels[factor] = level
  return levels


def load_photo(name: str, downscale: int = 1) -> np.ndarray:
  """One photograph, decoded once per process and cached.

  Args:
    name: a file name from TRAIN_PHOTOS or HELD_OUT_PHOTOS.
    downscale: one of DOWNSCALE_FACTORS.

  Returns:
    (H, W, 3) uint8, read-only.
  """
  return _pyramid(name)[downscale]


def crop(spec: CropSpec, image_size: int) -> np.ndarray:
  """Cuts out one crop.

  Returns:
    (image_size, image_size, 3) uint8 view of the cached photograph.
  """
  photo = load_photo(spec.photo, spec.downscale)
  patch = photo[spec.top:spec.top + image_size, spec.left:spec.left + image_size]
  return patch[:, ::-1] if spec.flip else patch


class EmbeddedDataset:
  """Random training crops from TRAIN_PHOTOS; fixed test crops from HELD_OUT_PHOTOS."""

  def __init__(self, *, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
               num_eval_examples: int | None = None):
    """Decodes the photographs (cached per process) and fixes the val and test crops.

    Args:
      image_size: side of the square crops, MIN_IMAGE_SIZE up to the shortest
        side of any held-out photograph (300, chelsea.png), and small enough
        that some training photograph holds a crop both above and inside its
        validation region.
      seed: selects the training crop sequence; val and test crops do not depend on it.
      num_eval_examples: number of val and of test crops; DEFAULT_NUM_EVAL_EXAMPLES if None.
    """
    self.seed = shuffling.check_int(seed, "seed")
    image_size = shuffling.check_int(image_size, "embedded image_size", MIN_IMAGE_SIZE)
    max_size = min(min(load_photo(name).shape[:2]) for name in HELD_OUT_PHOTOS)
    if image_size > max_size:
      raise ValueError(
          f"embedded image_size={image_size} does not fit the photographs; it must be"
          f" between {MIN_IMAGE_SIZE} and {max_size} (the shortest held-out photograph side).")
    self.image_size = image_size
    self.image_shape = (image_size, image_size, 3)
    if num_eval_examples is None:
      num_eval_examples = DEFAULT_NUM_EVAL_EXAMPLES
    self.num_eval_examples = shuffling.check_int(num_eval_examples, "num_eval_examples", 1)
    self.num_val_examples = self.num_eval_examples
    self.num_train_examples = None  # Random crops: no finite training split, no epochs.

    # Level l of a photo is its 1/DOWNSCALE_FACTORS[l] copy. Smaller copies
    # stop fitting first, so the usable training levels of photo p are
    # 0 .. _num_levels[p] - 1; photos where none fits are not sampled.
    self._num_levels = np.array([self._fitting_levels(name, "train") for name in TRAIN_PHOTOS])
    self._train_photos = np.flatnonzero(self._num_levels)
    self._val_photos = tuple(name for name in TRAIN_PHOTOS if self._fitting_levels(name, "val"))
    if not len(self._train_photos) or not self._val_photos:
      limit = max(min(_train_rows(name, 1), _val_rows(name, 1)) for name in TRAIN_PHOTOS)
      raise ValueError(
          f"embedded image_size={image_size} leaves no training photograph with room for a"
          f" crop both above and inside its validation region (the bottom {VAL_FRACTION:.0%});"
          f" use image_size <= {limit}.")
    # (photos, levels, 2): the training region's height and the photo's width.
    self._level_shapes = np.array(
        [[(_train_rows(name, factor), load_photo(name, factor).shape[1])
          for factor in DOWNSCALE_FACTORS] for name in TRAIN_PHOTOS])
    self._eval_specs = tuple(self._eval_spec(i) for i in range(self.num_eval_examples))
    self._val_specs = tuple(self._val_spec(i) for i in range(self.num_val_examples))

  def _fitting_levels(self, name: str, split: str) -> int:
    rows = {"train": _train_rows, "val": _val_rows, "test": _photo_rows}[split]
    return sum(min(rows(name, factor), load_photo(name, factor).shape[1]) >= self.image_size
               for factor in DOWNSCALE_FACTORS)

  def _eval_spec(self, index: int) -> CropSpec:
    rng = np.random.default_rng((_EVAL_STREAM, index))
    name = HELD_OUT_PHOTOS[index % len(HELD_OUT_PHOTOS)]  # Equal share per photo.
    factor = DOWNSCALE_FACTORS[rng.integers(self._fitting_levels(name, "test"))]
    height, width = load_photo(name, factor).shape[:2]
    top = rng.integers(height - self.image_size + 1)
    left = rng.integers(width - self.image_size + 1)
    return CropSpec(name, factor, int(top), int(left), False)

  def _val_spec(self, index: int) -> CropSpec:
    rng = np.random.default_rng((_VAL_STREAM, index))
    name = self._val_photos[index % len(self._val_photos)]  # Equal share per photo.
    factor = DOWNSCALE_FACTORS[rng.integers(self._fitting_levels(name, "val"))]
    height, width = load_photo(name, factor).shape[:2]
    first = height - _val_rows(name, factor)
    top = first + rng.integers(height - first - self.image_size + 1)
    left = rng.integers(width - self.image_size + 1)
    return CropSpec(name, factor, int(top), int(left), False)

  def train_crop_specs(self, step: int, batch_size: int) -> list[CropSpec]:
    """The crops of training batch `step`, a pure function of (seed, step, batch_size).

    Photo uniform over the TRAIN_PHOTOS a crop fits, then downscale uniform
    over the levels the crop fits, position uniform above the validation
    region, and a left-right flip with probability 1/2.
    """
    step = shuffling.check_int(step, "step")
    batch_size = shuffling.check_int(batch_size, "batch_size", 1)
    rng = np.random.default_rng((self.seed, step))
    photo = self._train_photos[rng.integers(len(self._train_photos), size=batch_size)]
    level = rng.integers(self._num_levels[photo])
    shapes = self._level_shapes[photo, level]  # (batch, 2)
    top = rng.integers(shapes[:, 0] - self.image_size + 1)
    left = rng.integers(shapes[:, 1] - self.image_size + 1)
    flip = rng.random(batch_size) < 0.5
    return [
        CropSpec(TRAIN_PHOTOS[p], DOWNSCALE_FACTORS[l], int(t), int(x), bool(f))
        for p, l, t, x, f in zip(photo, level, top, left, flip)
    ]

  def _render(self, specs) -> np.ndarray:
    batch = np.empty((len(specs),) + self.image_shape, np.uint8)
    for i, spec in enumerate(specs):
      batch[i] = crop(spec, self.image_size)
    return batch.astype(np.float32) / np.float32(255)

  def train_batch(self, step: int, batch_size: int, *, shard: int = 0,
                  num_shards: int = 1) -> np.ndarray:
    """(One host's slice of) training batch `step`, a pure function of (seed, step, batch_size).

    No iterator state, so a resumed run sees the same batches.

    Args:
      step: training step, >= 0.
      batch_size: crops per global batch, over all hosts.
      shard: this host's index, 0 <= shard < num_shards.
      num_shards: the number of hosts; batch_size must divide by it.

    Returns:
      (batch_size // num_shards, H, W, 3) float32 in [0, 1]: rows
      [shard * b, (shard + 1) * b) of the global batch. Only those crops are cut.
    """
    rows = shuffling.shard_rows(batch_size, shard, num_shards)
    # The specs of the whole batch come from one random stream (cheap), so a
    # slice's crops are the global batch's, bit for bit.
    specs = self.train_crop_specs(step, batch_size)
    return self._render(specs[rows.start:rows.stop])

  def position(self, step: int, batch_size: int) -> dict[str, int | None]:
    """Progress before batch `step`; crops are drawn afresh, so there are no epochs.

    Returns:
      dict(examples_seen=step * batch_size, epoch=None, index_in_epoch=None).
    """
    step = shuffling.check_int(step, "step")
    batch_size = shuffling.check_int(batch_size, "batch_size", 1)
    return dict(examples_seen=step * batch_size, epoch=None, index_in_epoch=None)

  def eval_crop_specs(self, split: str = "test") -> tuple[CropSpec, ...]:
    """The val or test crops, in eval order (their photographs in turn)."""
    shuffling.check_eval_split(split)
    return self._val_specs if split == "val" else self._eval_specs

  def eval_batches(self, batch_size: int, split: str = "test") -> Iterator[np.ndarray]:
    """The whole val or test split in a fixed order.

    Args:
      batch_size: crops per batch; the last batch may be smaller.
      split: 'val' (the training photographs' held-out region) or 'test'
        (the held-out photographs).

    Returns:
      An iterator of (b, H, W, 3) float32 in [0, 1]; b == batch_size except
      possibly for the last batch.
    """
    batch_size = shuffling.check_int(batch_size, "batch_size", 1)  # Now, not at the first next().
    specs = self.eval_crop_specs(split)
    return (self._render(specs[start:start + batch_size])
            for start in range(0, len(specs), batch_size))


def _photo_rows(name: str, factor: int) -> int:
  return load_photo(name, factor).shape[0]


def _train_rows(name: str, factor: int) -> int:
  """Rows of the 1/factor copy above the validation region (whole pixels only)."""
  cut = int(load_photo(name).shape[0] * (1.0 - VAL_FRACTION))  # At full size.
  return cut // factor


def _val_rows(name: str, factor: int) -> int:
  """Rows of the 1/factor copy wholly inside the validation region."""
  cut = int(load_photo(name).shape[0] * (1.0 - VAL_FRACTION))
  return _photo_rows(name, factor) - -(-cut // factor)
