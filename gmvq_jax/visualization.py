"""Pictures for people: image grids written as PNG files.

Files are written to a temporary name and renamed, so a reader never sees a
half-written picture.
"""

from __future__ import annotations

from etils import epath
import numpy as np
from PIL import Image

from gmvq_jax import io as io_lib


def image_grid(rows: np.ndarray, padding: int = 2) -> np.ndarray:
  """Tiles (R, n, H, W, 3) images in [0, 1] into one uint8 (R*(H+p)+p, n*(W+p)+p, 3) grid."""
  rows = np.clip(np.asarray(rows, np.float32), 0.0, 1.0)
  num_rows, num_cols, height, width, _ = rows.shape
  grid = np.ones((num_rows * (height + padding) + padding,
                  num_cols * (width + padding) + padding, 3), np.float32)
  for r in range(num_rows):
    for c in range(num_cols):
      top, left = padding + r * (height + padding), padding + c * (width + padding)
      grid[top:top + height, left:left + width] = rows[r, c]
  return np.round(grid * 255.0).astype(np.uint8)


def save_png(path: epath.PathLike, image: np.ndarray, scale: int = 1) -> None:
  """Writes a uint8 (H, W, 3) image, enlarged `scale` times (nearest neighbour), to a local or gs:// path."""
  picture = Image.fromarray(image)
  if scale > 1:
    picture = picture.resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
  with io_lib.atomic_write(path) as tmp, tmp.open("wb") as f:
    picture.save(f, format="PNG")


def save_reconstructions(path: epath.PathLike, pairs: np.ndarray, scale: int = 4) -> None:
  """Originals above reconstructions: `pairs` is (2, n, H, W, 3) in [0, 1]."""
  save_png(path, image_grid(pairs), scale=scale)
