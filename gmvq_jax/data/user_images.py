"""The user's own images: a folder of PNG/JPEG files ('folder') or an .npz file ('npz').

Selected with config.dataset and found at config.data_dir; checked before
training starts, and shuffled per epoch exactly like the TFDS datasets. The
validation split is the user's own (a val/ folder, an array 'val') or else
the last tenth of the training images, which are then not trained on.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from typing import Sequence

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageOps

from gmvq_jax import errors
from gmvq_jax import io as io_lib
from gmvq_jax.data import images as image_ops
from gmvq_jax.data import shuffling

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # Matched case-insensitively.
SPLITS = ("train", "test")  # Required.
VAL_SPLIT = "val"  # Optional: without it, the last held_out_size(N) training images.
MIN_IMAGE_SIZE = 8
FOLDER_LAYOUT = (
    "dataset='folder' expects config.data_dir to be a directory holding train/ and test/"
    " (and optionally val/) subdirectories of .png/.jpg/.jpeg images (searched recursively;"
    " names starting with '.' are skipped)")
NPZ_LAYOUT = (
    "dataset='npz' expects config.data_dir to be the path of an .npz file holding arrays"
    " 'train' and 'test' (and optionally 'val'), each (N, H, W, 3) RGB or (N, H, W)"
    " greyscale, uint8 in 0..255 or float in [0, 1]; write one with"
    " np.savez(path, train=..., test=...)")
_SHOWN_FILES = 5  # Unreadable files named in one message; the rest are counted.
# Decoded images a FolderDataset keeps in memory, so that only the first epoch
# decodes files (32x32 PNGs decode at ~3.5k images/s on 2 cores, too slow for
# a GPU step; benchmarks/input_pipeline.py). Files past the budget are decoded
# at every read.
DECODED_CACHE_BYTES = 2 << 30


@functools.lru_cache(maxsize=None)
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  # PIL decodes and resizes with the GIL released, so threads decode in parallel.
  return concurrent.futures.ThreadPoolExecutor(
      max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="gmvq_decode")


def _check_image_size(image_size) -> int:
  ok = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
  if not ok or image_size < MIN_IMAGE_SIZE:
    raise ValueError(
        f"image_size must be an integer >= {MIN_IMAGE_SIZE} for the user's images"
        f" (the centred square of each image is resized to it), got {image_size!r}.")
  return int(image_size)


def _held_out(train_size: int, has_val: bool, where: str, missing: str, fix: str) -> int | None:
  """Training images held out as the val split; None if the user gave one.

  Raises:
    DataError: holding them out would leave no image to train on.
  """
  if has_val:
    return None
  held_out = shuffling.held_out_size(train_size)
  if held_out >= train_size:
    raise errors.DataError(
        f"{where} holds only {train_size} image(s) and there is no {missing}, so the"
        f" validation split would be the last {held_out} training image(s), leaving none to"
        f" train on; add {fix}, or more training images.")
  return held_out


def _check_num_eval(num_eval_examples: int | None, test_size: int, where: str) -> int:
  if num_eval_examples is None:
    return test_size
  num_eval_examples = shuffling.check_int(num_eval_examples, "num_eval_examples", 1)
  if num_eval_examples > test_size:  # E.g. a :smoke config (32) on a small folder.
    logging.warning("num_eval_examples=%d exceeds the %d test images in %s: evaluating on all"
                    " %d.", num_eval_examples, test_size, where, test_size)
    return test_size
  return num_eval_examples


# --- 'folder': PNG and JPEG files -------------------------------------------


def find_images(directory: str) -> list[str]:
  """Paths of the .png/.jpg/.jpeg files under `directory` (local or gs://...), recursively, sorted.

  Files and folders whose names start with '.' (e.g. macOS's '._x.jpg') are skipped.
  """
  if not io_lib.is_local(directory):
    return sorted(_find_remote_images(io_lib.as_path(directory)))
  paths = []
  for root, dirs, files in os.walk(directory, followlinks=True):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    paths += [os.path.join(root, name) for name in files
              if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(paths)


def _find_remote_images(directory) -> list[str]:
  paths = []
  for child in directory.iterdir():
    if child.name.startswith("."):
      continue
    if child.is_dir():
      paths += _find_remote_images(child)
    elif child.name.lower().endswith(IMAGE_EXTENSIONS):
      paths.append(os.fspath(child))
  return paths


def _open_problem(path: str) -> str | None:
  """Why PIL cannot open `path`, or None if it can (a cheap check: no full decode)."""
  try:
    with io_lib.as_path(path).open("rb") as f, Image.open(f) as image:
      image.verify()  # Parses the structure (PNG chunk CRCs), without decoding pixels.
  except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
    return f"{type(error).__name__}: {error}"
  return None


def load_image(path: str, image_size: int) -> np.ndarray:
  """Decodes one file to its centred square at image_size: (S, S, 3) uint8.

  Grey images are replicated to RGB, alpha is dropped, 16-bit grey is scaled
  to 8 bits and EXIF rotations are applied. JPEGs decode at the smallest
  1/1..1/8 scale that still covers image_size (much faster for big photos).

  Raises:
    DataError: the file cannot be decoded, naming it.
  """
  try:
    with io_lib.as_path(path).open("rb") as f, Image.open(f) as image:
      image.draft("RGB", (image_size, image_size))  # A no-op except for JPEG.
      image = ImageOps.exif_transpose(image)
      if image.mode in ("I", "I;16", "I;16L", "I;16B"):  # 16-bit greyscale PNG.
        grey = np.round(np.asarray(image, np.float64) / 257).clip(0, 255).astype(np.uint8)
        pixels = np.repeat(grey[..., None], 3, axis=-1)
      else:
        pixels = np.asarray(image.convert("RGB"))
  except Exception as error:  # As in _open_problem, PIL raises many types.
    raise errors.DataError(
        f"Cannot decode image file {path} ({type(error).__name__}: {error}); it is probably"
        " truncated or corrupted: remove or replace it, then restart.") from error
  if min(pixels.shape[:2]) == 0:
    raise errors.DataError(f"Image file {path} has no pixels ({pixels.shape[1]}x{pixels.shape[0]});"
                    " remove or replace it.")
  return image_ops.center_crop_resize(pixels, image_size)


class FolderDataset(shuffling.ShuffledSplits):
  """PNG/JPEG files under data_dir/train/, val/ (optional) and test/, each resized to a square."""

  def __init__(self, data_dir: str | None, *, image_size: int, seed: int,
               num_eval_examples: int | None = None):
    """Lists the images and checks that PIL can open every one (no training yet).

    Args:
      data_dir: directory holding train/ and test/ (any subfolders), and
        optionally val/; without val/, the last max(1, N // 10) of the N
        training files (in sorted order) are the val split, not trained on.
      image_size: side of the square images, >= MIN_IMAGE_SIZE; each image's
        centred square is resized (down or up) to it.
      seed: selects the per-epoch shuffles of the training split.
      num_eval_examples: evaluate on the first this many test images (sorted
        by path); None for all of them. Caps the val split too (min with its size).

    Raises:
      DataError: missing folders, a split without images, files PIL cannot
        open, or a single training image and no val/.
      ValueError: bad image_size, seed or num_eval_examples.
    """
    self.image_size = _check_image_size(image_size)
    self.image_shape = (self.image_size, self.image_size, 3)
    self.seed = shuffling.check_int(seed, "seed")
    if data_dir is None:
      raise errors.DataError(f"config.data_dir is not set; {FOLDER_LAYOUT}.")
    self.data_dir = os.path.expanduser(os.fspath(data_dir))
    if not io_lib.as_path(self.data_dir).exists():
      raise errors.DataError(f"config.data_dir={self.data_dir!r} does not exist; {FOLDER_LAYOUT}.")
    if not io_lib.as_path(self.data_dir).is_dir():
      raise errors.DataError(f"config.data_dir={self.data_dir!r} is a file, not a directory;"
                      f" {FOLDER_LAYOUT} (for an .npz file use dataset='npz').")
    self._files = {split: self._split_files(split) for split in SPLITS}
    if (io_lib.as_path(self.data_dir) / VAL_SPLIT).is_dir():
      self._files[VAL_SPLIT] = self._split_files(VAL_SPLIT)
    logging.info("Checking %s images under %s.", ", ".join(
        f"{len(files)} {split}" for split, files in self._files.items()), self.data_dir)
    self._check_files([path for files in self._files.values() for path in files])
    train_size = len(self._files["train"])
    held_out = _held_out(train_size, VAL_SPLIT in self._files,
                         os.path.join(self.data_dir, "train"), "val/ folder",
                         f"a val/ folder of images next to train/ and test/ in {self.data_dir}")
    if held_out is not None:
      logging.info("No %s/ folder: the last %d of the %d training images (sorted by path) are"
                   " the validation split.", VAL_SPLIT, held_out, train_size)
      for other in ("validation", "valid"):
        if (io_lib.as_path(self.data_dir) / other).is_dir():
          logging.warning("%s/ is ignored: the validation images are read from %s/ only.",
                          os.path.join(self.data_dir, other), VAL_SPLIT)
    self.num_eval_examples = _check_num_eval(
        num_eval_examples, len(self._files["test"]), os.path.join(self.data_dir, "test"))
    self._decoded: dict[tuple[str, int], np.ndarray] = {}  # (split folder, index) -> uint8.
    self._decoded_bytes = 0
    self._cache_lock = threading.Lock()
    self._set_splits(train_size=train_size, test_size=len(self._files["test"]),
                     val_size=len(self._files[VAL_SPLIT]) if held_out is None else None,
                     held_out=held_out or 0, num_eval_examples=num_eval_examples)

  def _split_files(self, split: str) -> list[str]:
    directory = os.path.join(self.data_dir, split)
    if not io_lib.as_path(directory).is_dir():
      present = sorted(path.name for path in io_lib.as_path(self.data_dir).iterdir())
      shown = ", ".join(present[:_SHOWN_FILES]) + (", ..." if len(present) > _SHOWN_FILES else "")
      raise errors.DataError(f"{self.data_dir} has no {split}/ subdirectory (it holds:"
                      f" {shown or 'nothing'}); {FOLDER_LAYOUT}.")
    paths = find_images(directory)
    if not paths:
      raise errors.DataError(f"{directory} holds no .png/.jpg/.jpeg images; {FOLDER_LAYOUT}.")
    return paths

  @staticmethod
  def _check_files(paths: Sequence[str]) -> None:
    problems = [(path, problem) for path, problem in zip(paths, _pool().map(_open_problem, paths))
                if problem is not None]
    if problems:
      shown = "; ".join(f"{path} ({problem})" for path, problem in problems[:_SHOWN_FILES])
      more = f"; and {len(problems) - _SHOWN_FILES} more" if len(problems) > _SHOWN_FILES else ""
      raise errors.DataError(f"{len(problems)} image file(s) cannot be opened: {shown}{more}."
                      " Remove or replace them, then restart.")

  def files(self, split: str) -> tuple[str, ...]:
    """The image paths of `split` ('train', 'val' or 'test'), in index order.

    'train' is only the files trained on: without val/, 'val' is the
    training files that follow them.
    """
    if split not in self._spans:
      raise ValueError(f"Unknown split {split!r}; allowed values are {tuple(self._spans)}.")
    source, start, stop = self._spans[split]
    return tuple(self._files[source][start:stop])

  def _read(self, source: str, indices: Sequence[int]) -> np.ndarray:
    return image_ops.to_unit_float(np.stack(list(_pool().map(
        functools.partial(self._decoded_image, source), [int(i) for i in indices]))))

  def _decoded_image(self, source: str, index: int) -> np.ndarray:
    """Image `index` of folder `source`, decoded once while DECODED_CACHE_BYTES lasts."""
    cached = self._decoded.get((source, index))
    if cached is not None:
      return cached
    image = load_image(self._files[source][index], self.image_size)
    with self._cache_lock:
      if self._decoded_bytes + image.nbytes <= DECODED_CACHE_BYTES:
        if self._decoded.setdefault((source, index), image) is image:
          self._decoded_bytes += image.nbytes
    return image


# --- 'npz': arrays in one file ---------------------------------------------


def _checked_images(path: str, name: str, images: np.ndarray) -> np.ndarray:
  """`images` checked: (N, H, W, 3) or (N, H, W) (from (N, H, W, 1)), uint8 or float in [0, 1]."""
  where = f"{path}[{name!r}]"
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
    raise errors.DataError(f"{where} has shape {images.shape}; expected (N, H, W, 3) RGB or"
                    f" (N, H, W) greyscale images. {NPZ_LAYOUT}.")
  if 0 in images.shape:
    raise errors.DataError(f"{where} holds no images (shape {images.shape}). {NPZ_LAYOUT}.")
  if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
    raise errors.DataError(
        f"{where} has dtype {images.dtype}; expected uint8 (0..255) or float (0..1)."
        " If it holds integers 0..255, store images.astype(np.uint8).")
  if np.issubdtype(images.dtype, np.floating):
    low, high = float(images.min()), float(images.max())  # NaN propagates to both.
    if not (0.0 <= low and high <= 1.0):
      raise errors.DataError(
          f"{where} is {images.dtype} with values in [{low}, {high}]; float images must lie"
          " in [0, 1] (no NaN): divide 0..255 values by 255, or store them as uint8.")
  return images


class NpzDataset(shuffling.ShuffledSplits):
  """Arrays 'train', 'val' (optional) and 'test' of an .npz file, in memory, resized to squares."""

  def __init__(self, data_dir: str | None, *, image_size: int, seed: int,
               num_eval_examples: int | None = None):
    """Loads and checks the arrays.

    Args:
      data_dir: path of the .npz file (np.savez or np.savez_compressed).
        Without an array 'val', the last max(1, N // 10) of the N images of
        'train' are the val split, not trained on.
      image_size: side of the square images, >= MIN_IMAGE_SIZE; each image's
        centred square is resized (down or up) to it.
      seed: selects the per-epoch shuffles of the training split.
      num_eval_examples: evaluate on the first this many test images; None
        for all of them. Caps the val split too (min with its size).

    Raises:
      DataError: a missing or unreadable file, arrays of the wrong key,
        shape, dtype or value range, or a single training image and no 'val'.
      ValueError: bad image_size, seed or num_eval_examples.
    """
    self.image_size = _check_image_size(image_size)
    self.image_shape = (self.image_size, self.image_size, 3)
    self.seed = shuffling.check_int(seed, "seed")
    if data_dir is None:
      raise errors.DataError(f"config.data_dir is not set; {NPZ_LAYOUT}.")
    self.path = os.path.expanduser(os.fspath(data_dir))
    if not io_lib.as_path(self.path).exists():
      raise errors.DataError(f"config.data_dir={self.path!r} does not exist; {NPZ_LAYOUT}.")
    if io_lib.as_path(self.path).is_dir():
      raise errors.DataError(f"config.data_dir={self.path!r} is a directory; {NPZ_LAYOUT}"
                      " (for a folder of image files use dataset='folder').")
    self._arrays = self._load()
    train_size = len(self._arrays["train"])
    held_out = _held_out(train_size, VAL_SPLIT in self._arrays, f"{self.path}['train']",
                         "array 'val'", "an array 'val' (np.savez(path, train=..., val=...,"
                         " test=...))")
    self.num_eval_examples = _check_num_eval(
        num_eval_examples, len(self._arrays["test"]), f"{self.path}['test']")
    self._set_splits(train_size=train_size, test_size=len(self._arrays["test"]),
                     val_size=len(self._arrays[VAL_SPLIT]) if held_out is None else None,
                     held_out=held_out or 0, num_eval_examples=num_eval_examples)

  def _load(self) -> dict[str, np.ndarray]:
    with io_lib.as_path(self.path).open("rb") as f:
      return self._load_archive(f)

  def _load_archive(self, f) -> dict[str, np.ndarray]:
    try:
      archive = np.load(f, allow_pickle=False)
    except Exception as error:  # Not a zip, not an array, ...
      raise errors.DataError(f"Cannot read {self.path} as an .npz file ({type(error).__name__}:"
                      f" {error}); {NPZ_LAYOUT}.") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise errors.DataError(f"{self.path} holds a single array (.npy), not an .npz archive;"
                      f" {NPZ_LAYOUT}.")
    with archive:
      missing = [name for name in SPLITS if name not in archive.files]
      if missing:
        raise errors.DataError(f"{self.path} has no array {missing[0]!r} (it has"
                        f" {sorted(archive.files)}); {NPZ_LAYOUT}.")
      arrays = {}
      for name in SPLITS + ((VAL_SPLIT,) if VAL_SPLIT in archive.files else ()):
        try:
          images = archive[name]
        except Exception as error:  # Object arrays need pickle; a damaged member, zlib.
          raise errors.DataError(f"Cannot read {self.path}[{name!r}] ({type(error).__name__}:"
                          f" {error}); {NPZ_LAYOUT}.") from error
        arrays[name] = _checked_images(self.path, name, images)
    return arrays

  def _read(self, source: str, indices: Sequence[int]) -> np.ndarray:
    images = self._arrays[source][np.asarray(indices, np.int64)]
    if images.ndim == 3:  # Greyscale.
      images = np.repeat(images[..., None], 3, axis=-1)
    if images.shape[1:3] != (self.image_size, self.image_size):
      images = np.stack([image_ops.center_crop_resize(image, self.image_size) for image in images])
    return image_ops.to_unit_float(images)
