"""The autoencoder every method shares: encoder -> the method's quantizer -> decoder.

The quantizer is a `gmvq_jax.quantizers.interface.Quantizer` record of pure
functions; this module owns its parameters and the per-vector noise keys.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmvq_jax.models import networks
from gmvq_jax.quantizers import interface


def vector_keys(example_keys: jax.Array, vectors_per_example: int) -> jax.Array:
  """One key per latent vector, from one key per example.

  Args:
    example_keys: (B,) typed keys.
    vectors_per_example: h * w.

  Returns:
    (B * h * w,) typed keys, row-major over (example, position).
  """
  positions = jnp.arange(vectors_per_example)
  per_example = jax.vmap(lambda k: jax.vmap(lambda p: jax.random.fold_in(k, p))(positions))
  return per_example(example_keys).reshape(-1)


class Autoencoder(nn.Module):
  """Encoder (to `quantizer.encoder_width` channels), quantizer, decoder.

  Attributes:
    quantizer: the method's `Quantizer`.
    channels: widths of the stride-2 stages.
    num_res_blocks: residual blocks in encoder and decoder.
    axis_name: batch axis for cross-device BatchNorm, None on one device.
    dtype: network compute dtype; quantizer math is always float32.
    conv: the networks' convolution function (`gmvq_jax.models.conv.select`).
  """

  quantizer: interface.Quantizer
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32
  conv: Any = jax.lax.conv_general_dilated

  def setup(self):
    shared = (self.channels, self.num_res_blocks, self.axis_name, self.dtype, self.conv)
    self.encoder = networks.Encoder(self.quantizer.encoder_width, *shared)
    self.decoder = networks.Decoder(*shared)
    init = self.quantizer.init_params
    self.quantizer_params = None if init is None else self.param(self.quantizer.params_name, init)

  def encode(self, images: jax.Array, train: bool) -> jax.Array:
    """Images (B, H, W, 3) -> encoder outputs (B, h, w, encoder_width) float32."""
    return self.encoder(images, train).astype(jnp.float32)

  def decode(self, z: jax.Array, train: bool) -> jax.Array:
    """Latents (B, h, w, c) -> images (B, H, W, 3) in (0, 1)."""
    return self.decoder(z, train)

  def __call__(
      self,
      images: jax.Array,
      *,
      train: bool,
      example_keys: jax.Array | None = None,
      step: jax.Array | int = 0,
      quantizer_state: Any = None,
  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Encodes, quantizes and decodes.

    Args:
      images: (B, H, W, 3) in [0, 1].
      train: the quantizer's training path (noise, sampling) and batch
        statistics, or its noise-free path and running statistics.
      example_keys: (B,) typed keys, one per example; required when `train`.
      step: the training step (temperature schedules).
      quantizer_state: the quantizer's non-gradient state.

    Returns:
      `(reconstructions, z_q, aux)`: (B, H, W, 3), the decoder's (B, h, w, c)
      input and the quantizer's aux dict.
    """
    z = self.encode(images, train)
    rng = vector_keys(example_keys, z.shape[1] * z.shape[2]) if train else None
    z_q, aux = self.quantizer.apply(self.quantizer_params, quantizer_state, z, rng, step, train)
    return self.decode(z_q, train), z_q, aux
