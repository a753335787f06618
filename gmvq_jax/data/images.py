"""Pixel conversions the datasets share: centred square crop + resize, and [0, 1] floats.

One implementation, so a CelebA face, an ImageNet photo and a user's own image
of the same pixels come out bit-identical.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def center_crop_resize(image: np.ndarray, image_size: int) -> np.ndarray:
  """The centred square of `image`, resized bilinearly to image_size x image_size.

  Args:
    image: (H, W, 3) uint8, or (H, W, 3) float in [0, 1] (resized per
      channel in float32, not rounded to 8 bits).
    image_size: side of the output square.

  Returns:
    (image_size, image_size, 3): uint8 for uint8 input; float32 for float
    input (its own dtype when no resize is needed).
  """
  height, width = image.shape[:2]
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  square = image[top:top + side, left:left + side]
  if side == image_size:
    return square
  # PIL widens the bilinear kernel when shrinking, so this averages (no aliasing).
  if image.dtype == np.uint8:
    return np.asarray(Image.fromarray(square).resize((image_size, image_size), Image.BILINEAR))
  # A 2-D float32 array becomes a mode "F" (32-bit float) PIL image.
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(square[..., c], np.float32))
                 .resize((image_size, image_size), Image.BILINEAR))
      for c in range(square.shape[-1])
  ]
  # Bilinear weights are convex, but float rounding can step just outside [0, 1].
  return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def to_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 x / 255; float images are only cast to float32."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / np.float32(255)
  return images.astype(np.float32)
