"""ResNet encoder and decoder of SQ-VAE / Huh et al., used by every method.

Convolutions followed by BatchNorm have no bias: BN's shift replaces it.

CIFAR10: 32x32 -> 8x8 latent grid, 2 residual blocks. CelebA 128x128: the
same pattern with 6 residual blocks and a 32x32 grid (ALGORITHMS.md §1).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Two stride-2 convolutions: the image side must divide by this.
DOWNSAMPLING = 4


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

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.relu(x)
    h = nn.Conv(self.channels, (3, 3), use_bias=False, dtype=self.dtype)(h)
    h = _Norm(self.axis_name, self.dtype)(h, train)
    h = nn.relu(h)
    h = nn.Conv(self.channels, (1, 1), use_bias=False, dtype=self.dtype)(h)
    h = _Norm(self.axis_name, self.dtype)(h, train)
    return x + h


class Encoder(nn.Module):
  """Images (B, H, W, 3) in [0, 1] -> (B, H/4, W/4, out_channels)."""

  out_channels: int
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = x.astype(self.dtype)
    for width in self.channels:  # Two 4x4 stride-2 convolutions.
      x = nn.Conv(width, (4, 4), strides=(2, 2), use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_Norm(self.axis_name, self.dtype)(x, train))
    x = nn.Conv(self.channels[-1], (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_Norm(self.axis_name, self.dtype)(x, train))
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.channels[-1], self.axis_name, self.dtype)(x, train)
    x = nn.relu(x)
    return nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(x)


class Decoder(nn.Module):
  """Latents (B, h, w, L) -> images (B, 4h, 4w, 3) through a sigmoid."""

  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool):
    x = z.astype(self.dtype)
    x = nn.Conv(self.channels[-1], (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = _Norm(self.axis_name, self.dtype)(x, train)
    for _ in range(self.num_res_blocks):
      x = ResidualBlock(self.channels[-1], self.axis_name, self.dtype)(x, train)
    x = nn.relu(x)
    x = nn.ConvTranspose(self.channels[0], (4, 4), strides=(2, 2), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_Norm(self.axis_name, self.dtype)(x, train))
    x = nn.ConvTranspose(3, (4, 4), strides=(2, 2), dtype=self.dtype)(x)
    return jax.nn.sigmoid(x.astype(jnp.float32))
