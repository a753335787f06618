"""Autoencoder glue: encoder -> quantizer (GM-VQ, a baseline) or Gaussian posterior (GQ) -> decoder.

The quantizers themselves are pure functions (`gmvq_jax.quantizers`); these
modules only own the quantizer parameters and reshape the latent grid.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmvq_jax.models import networks
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import gmvq
from gmvq_jax.quantizers import gq


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


def _encoder_decoder(module: nn.Module, encoder_width: int):
  """The shared ResNet encoder (to `encoder_width` channels) and decoder of every model.

  Called from a model's `setup`; reads its channels, num_res_blocks,
  axis_name and dtype fields.
  """
  shared = (module.channels, module.num_res_blocks, module.axis_name, module.dtype)
  return networks.Encoder(encoder_width, *shared), networks.Decoder(*shared)


class GMVQAutoencoder(nn.Module):
  """The GM-VQ model: the encoder emits (zh, r) of width L each (Eq. 15).

  Attributes:
    num_codes: C.
    latent_dim: L.
    sigma_z2: the fixed variance of Eq. 18.
    channels: widths of the two stride-2 stages.
    num_res_blocks: residual blocks in encoder and decoder.
    axis_name: batch axis for cross-device BatchNorm, None on one device.
    dtype: network compute dtype; quantizer math is always float32.
  """

  num_codes: int
  latent_dim: int
  sigma_z2: float = 1.0
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder, self.decoder = _encoder_decoder(self, 2 * self.latent_dim)
    self.codebook = self.param(
        "codebook", nn.initializers.normal(1.0), (self.num_codes, self.latent_dim), jnp.float32)

  def encode(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Images (B, H, W, 3) -> (zh, r), each (B, h, w, L) float32."""
    out = self.encoder(images, train).astype(jnp.float32)
    return out[..., : self.latent_dim], out[..., self.latent_dim:]

  def decode(self, z: jax.Array, train: bool) -> jax.Array:
    """Latents (B, h, w, L) -> images (B, H, W, 3) in (0, 1)."""
    return self.decoder(z, train)

  def __call__(
      self,
      images: jax.Array,
      *,
      train: bool,
      example_keys: jax.Array | None = None,
      temperature: jax.Array | float = 1.0,
  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Encodes, quantizes and decodes.

    Args:
      images: (B, H, W, 3) in [0, 1].
      train: Gumbel sampling and batch statistics (True), or the noise-free
        argmax and running statistics (False).
      example_keys: (B,) typed keys, one per example; required when `train`.
      temperature: Gumbel-softmax temperature.

    Returns:
      `(reconstructions, z, aux)`: (B, H, W, 3), (N, L) with N = B h w, and
      the quantizer's aux dict.
    """
    zh, raw_weights = self.encode(images, train)
    batch, height, width, dim = zh.shape
    rng = None
    if train:
      rng = vector_keys(example_keys, height * width)
    z, aux = gmvq.quantize(
        self.codebook,
        zh.reshape(-1, dim),
        raw_weights.reshape(-1, dim),
        rng=rng,
        temperature=temperature,
        sigma_z2=self.sigma_z2,
        train=train,
    )
    reconstructions = self.decode(z.reshape(batch, height, width, dim), train)
    return reconstructions, z, dict(aux, zh=zh.reshape(-1, dim))


class GaussianAutoencoder(nn.Module):
  """The GQ model: a Gaussian VAE whose encoder emits (mu, logvar), 2c channels.

  Training samples `z = mu + sigma * eps` (ALGORITHMS.md §2); evaluation
  decodes the posterior mean. Offline, `gq.quantize` turns `mu` into tokens.

  Attributes:
    latent_channels: c, channels of the latent grid (tokens are groups of m).
    channels, num_res_blocks, axis_name, dtype: as in `GMVQAutoencoder`.
  """

  latent_channels: int
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder, self.decoder = _encoder_decoder(self, 2 * self.latent_channels)

  def encode(self, images: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """Images -> (mu, logvar), each (B, h, w, c) float32, logvar clipped to [-30, 20]."""
    out = self.encoder(images, train).astype(jnp.float32)
    mu, logvar = out[..., : self.latent_channels], out[..., self.latent_channels:]
    return mu, jnp.clip(logvar, gq.LOGVAR_MIN, gq.LOGVAR_MAX)

  def decode(self, z: jax.Array, train: bool) -> jax.Array:
    """Latents (B, h, w, c) -> images (B, H, W, 3) in (0, 1)."""
    return self.decoder(z, train)

  def __call__(
      self,
      images: jax.Array,
      *,
      train: bool,
      example_keys: jax.Array | None = None,
      sample_fn: Callable[..., jax.Array] | None = None,
  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Encodes, samples (train) or takes the mean (eval), and decodes.

    Args:
      images: (B, H, W, 3) in [0, 1].
      train: sample z and use batch statistics, or decode the mean.
      example_keys: (B,) typed keys; required when `train`.
      sample_fn: `(mu, logvar, eps) -> z` replacing the plain Gaussian sample
        `mu + sigma * eps` when training, e.g. the straight-through variant
        `gq.quantize_ste` with its codebook bound.

    Returns:
      `(reconstructions, z, aux)`: z is (B, h, w, c); aux holds `mu` and
      `logvar`, each (B, h, w, c).
    """
    mu, logvar = self.encode(images, train)
    z = mu
    if train:
      batch, height, width, channels = mu.shape
      keys = vector_keys(example_keys, height * width)
      eps = common.draw(jax.random.normal, keys, (batch * height * width, channels))
      eps = eps.reshape(mu.shape)
      z = mu + jnp.exp(0.5 * logvar) * eps if sample_fn is None else sample_fn(mu, logvar, eps)
    return self.decode(z, train), z, dict(mu=mu, logvar=logvar)


class BaselineAutoencoder(nn.Module):
  """A baseline quantizer (VQ-VAE family, SQ-VAE, Gumbel-VQVAE, FSQ, LFQ, BSQ) in the shared network.

  Attributes:
    encoder_width: channels the encoder emits per position.
    latent_width: channels the quantizer returns and the decoder reads.
    quantize: `(params, z, *, rng, temperature, train) -> (z_q, aux)` on
      (N, encoder_width) vectors (`methods.make_quantize`).
    init_quantizer_params: `rng -> params` of the quantizer, or None.
    channels, num_res_blocks, axis_name, dtype: as in `GMVQAutoencoder`.
  """

  encoder_width: int
  latent_width: int
  quantize: Callable[..., Any]
  init_quantizer_params: Callable[[jax.Array], Any] | None = None
  channels: Sequence[int] = (32, 64)
  num_res_blocks: int = 2
  axis_name: Any = None
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder, self.decoder = _encoder_decoder(self, self.encoder_width)
    self.quantizer = (None if self.init_quantizer_params is None
                      else self.param("quantizer", self.init_quantizer_params))

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
      temperature: jax.Array | float = 1.0,
  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Encodes, quantizes and decodes.

    Returns:
      `(reconstructions, z_q, aux)`: (B, H, W, 3), (N, latent_width) and the
      quantizer's aux dict, plus `z` (N, encoder_width), the encoder vectors.
    """
    z = self.encode(images, train)
    batch, height, width, dim = z.shape
    rng = vector_keys(example_keys, height * width) if train else None
    z_q, aux = self.quantize(self.quantizer, z.reshape(-1, dim), rng=rng,
                             temperature=temperature, train=train)
    reconstructions = self.decode(z_q.reshape(batch, height, width, -1), train)
    return reconstructions, z_q, dict(aux, z=z.reshape(-1, dim))
