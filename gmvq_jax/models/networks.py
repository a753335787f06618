"""ResNet encoder and decoder of SQ-VAE / Huh et al., used by every method.

Convolutions followed by BatchNorm have no bias: BN's shift replaces it.

CIFAR10: 32x32 -> 8x8 latent grid, 2 residual blocks. CelebA 128x128: the
same pattern with 6 residual blocks and a 32x32 grid (docs/algorithms.md, "GM-VQ").
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The convolution every layer evaluates, `lax.conv_general_dilated`'s signature
# (gmvq_jax.models.conv.select: XLA's, or the matrix-product form for XLA:CPU).
ConvFn = Any


def downsampling_factor(channels: Sequence[int]) -> int:
  """Image side / latent side: one stride-2 convolution per entry of `channels`.

  (32, 64) is the f4 layout of SQ-VAE / GM-VQ; three entries give f8.
  """
  return 2 ** len(channels)


# Output phase a of a 4x4 stride-2 'SAME' transposed convolution reads input
# offsets (-1, 0, +1) through these kernel taps; 4 is an all-zero tap.
_PHASE_TAPS = np.array([[0, 2, 4], [4, 1, 3]])


class Upsample2x(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2))`, computed as sub-pixel conv.

  The same (4, 4, in, out) kernel parameter and the same output, but evaluated
  as a 3x3 stride-1 convolution to 4 * out channels followed by depth-to-space:
  XLA:CPU differentiates strided transposed convolutions an order of
  magnitude slower than plain ones (benchmarks/train_step.py).
  """

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  conv: ConvFn = jax.lax.conv_general_dilated

  @nn.compact
  def __call__(self, x):
    in_features = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (4, 4, in_features, self.features), jnp.float32)
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # Tap 4 is zero.
    rows = _PHASE_TAPS[:, :, None, None]
    cols = _PHASE_TAPS[None, None, :, :]
    taps = padded[rows, cols]  # (a, dy, b, dx, in, out)
    taps = taps.transpose(1, 3, 4, 0, 2, 5).reshape(3, 3, in_features, 4 * self.features)
    y = self.conv(
        x.astype(self.dtype), taps.astype(self.dtype), (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    batch, height, width, _ = y.shape
    y = y.reshape(batch, height, width, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(batch, 2 * height, 2 * width, self.features)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


class _Norm(nn.Module):
  """BatchNorm whose statistics are averaged over the named batch axis."""

  axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=self.axis_name if train else None,
        dtype=self.dtype,
    )(x)


class ResidualBlock(nn.Module):
  """ReLU, conv 3x3, BN, ReLU, conv 1x1, BN, skip."""

  channels: int
  axis_name: Any = None
  dtype: Any = jnp.float32
  conv: ConvFn = jax.lax.conv_general_dilated

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             conv_general_dilated=self.conv)
    h = nn.relu(x)
    h = conv(self.channels, (3, 3))(h)
    h = _Norm(self.axis_name, self.dtype)(h, train)
    h = nn.relu(h)
    h = conv(self.channels, (1, 1))(h)
    h = _Norm(self.axis_name, self.dtype)(h, train)
    return x + h


class Encoder(nn.Module):
  """Images (B, H, W, 3) in [0, 1] -> (B, H/f, W/f, out_channels), f = 2^len(channels)."""

  out_channels: int
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32
  conv: ConvFn = jax.lax.conv_general_dilated

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, dtype=self.dtype, conv_general_dilated=self.conv)
    x = x.astype(self.dtype)
    for width in self.channels:  # One 4x4 stride-2 convolution per width.
      x = conv(width, (4, 4), strides=(2, 2), use_bias=False)(x)
      x = nn.relu(_Norm(self.axis_name, self.dtype)(x, train))
    x = conv(self.channels[-1], (3, 3), use_bias=False)(x)
    x = nn.relu(_Norm(self.axis_name, self.dtype)(x, train))
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.channels[-1], self.axis_name, self.dtype, self.conv)(x, train)
    x = nn.relu(x)
    return conv(self.out_channels, (1, 1))(x)


class Decoder(nn.Module):
  """Latents (B, h, w, L) -> images (B, f h, f w, 3) through a sigmoid, f = 2^len(channels)."""

  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32
  conv: ConvFn = jax.lax.conv_general_dilated

  @nn.compact
  def __call__(self, z, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             conv_general_dilated=self.conv)
    x = z.astype(self.dtype)
    x = conv(self.channels[-1], (3, 3))(x)
    x = _Norm(self.axis_name, self.dtype)(x, train)
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.channels[-1], self.axis_name, self.dtype, self.conv)(x, train)
    x = nn.relu(x)
    for width in reversed(self.channels[:-1]):  # Mirrors the encoder's strides.
      x = Upsample2x(width, use_bias=False, dtype=self.dtype, conv=self.conv)(x)
      x = nn.relu(_Norm(self.axis_name, self.dtype)(x, train))
    x = Upsample2x(3, dtype=self.dtype, conv=self.conv)(x)
    return jax.nn.sigmoid(x.astype(jnp.float32))
