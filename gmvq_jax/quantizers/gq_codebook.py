"""GQ's fixed codebook and its posterior-mean quantizer (the GQ paper, arXiv 2512.06609).

The codebook is K points of N(0, I_m), regenerable from a seed; a token's
code is the codeword that best explains its Gaussian posterior. Used by the
offline conversion (gmvq_jax.conversion) and by GQ's optional
straight-through training (`gq.quantize_ste`).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SAMPLERS = ("sobol", "normal")
DEFAULT_TILE_SIZE = 512  # Codewords per tile (benchmarks/gq_quantize.py --tile_sweep).
TOKEN_BLOCK = 2048  # Tokens per block of pass 1: a (tile, block) score block stays in cache.
RESCORE_CHUNK = 64  # Tokens rescored at once in pass 2: a (chunk, tile, 2m) gather.


def check_group_size(channels: int, group_size: int) -> None:
  """ValueError unless tokens of `group_size` consecutive channels tile `channels`."""
  if group_size < 1 or channels % group_size:
    raise ValueError(
        f"group_size={group_size} must be a positive divisor of the channel count "
        f"{channels}: each token is {group_size} consecutive channels.")


def sample_codebook(seed: int, codebook_size: int, group_size: int,
                    sampler: str) -> np.ndarray:
  """The fixed GQ codebook: K points of N(0, I_m), regenerable from `seed`.

  'sobol': scrambled Sobol points in [0, 1)^m through the inverse normal CDF
  (quasi-random normal). 'normal': i.i.d. N(0, 1) draws. Runs on the host in
  float64 and rounds once to float32, so the same seed gives the same bits
  for a given numpy/scipy version. Sobol's balance properties need K to be a
  power of two; scipy warns (UserWarning) otherwise, and we let it.

  Args:
    seed: a non-negative integer, recorded with the tokens.
    codebook_size: K >= 2.
    group_size: m >= 1, the token dimension.
    sampler: 'sobol' or 'normal'.

  Returns:
    (K, m) float32 numpy array.
  """
  # Imported here: only this offline step needs scipy.
  from scipy import special
  from scipy.stats import qmc

  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}: need a non-negative int so the codebook can be regenerated.")
  if codebook_size < 2:
    raise ValueError(f"codebook_size={codebook_size}: need K >= 2 codewords.")
  if group_size < 1:
    raise ValueError(f"group_size={group_size}: need m >= 1 dimensions per codeword.")
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler={sampler!r}; allowed: {SAMPLERS}.")
  rng = np.random.default_rng(int(seed))
  if sampler == "normal":
    return rng.standard_normal((codebook_size, group_size)).astype(np.float32)
  uniform = qmc.Sobol(d=group_size, scramble=True, seed=rng).random(codebook_size)
  # A point at exactly 0 would map to -inf; the largest float64 below 1 is 1 - 2^-53.
  tiny = np.finfo(np.float64).epsneg
  uniform = np.clip(uniform, tiny, 1.0 - tiny)
  return special.ndtri(uniform).astype(np.float32)


def quantize(mu: Array, std: Array, codebook: Array, *, prior_weight: Any,
             tile_size: int | None = None) -> Array:
  """Index of the codeword that best explains each token's posterior (§2).

  k* = argmax_k sum_j [log N(c_kj; mu_j, var_j) - w log N(c_kj; 0, 1)]
     = argmax_k [sum_j c_kj mu_j / var_j + 1/2 sum_j c_kj^2 (w - 1/var_j)]

  with w the prior weight. The second form is features [mu/var, (w - 1/var)/2] (N, 2m) times
  [c, c^2]^T (2m, K), evaluated in two passes that never hold N x K scores:

  1. Tile by tile over K (blocks of tokens at a time, so a tile's scores
     stay in cache), keep each token's best score and the first tile that
     reaches it: a matrix product and a max, nothing else per score.
  2. Rescore each token against its winning tile only and take the argmax
     there: 1/(number of tiles) of the work of pass 1.

  Ties go to the lowest index, as `jnp.argmax` does: pass 1 replaces the
  running best only when a later tile is strictly greater, and pass 2's
  argmax picks the lowest index within the tile. Memory is
  O(N + K m + tile x (block + chunk x 2m)), never N x K.

  The function is compiled on its first call for each shape (the tile size
  is static), so calling it eagerly is as fast as calling it under `jit`.

  Args:
    mu: (N, m) posterior means.
    std: (N, m) posterior standard deviations, > 0.
    codebook: (K, m) codewords.
    prior_weight: w, weight of the prior term (the paper's omega); 2.0 keeps
      more codes in use at low bitrates.
    tile_size: codewords per tile (static); default min(K, DEFAULT_TILE_SIZE).

  Returns:
    (N,) int32 indices in [0, K).
  """
  num_codes, dim = codebook.shape
  if mu.ndim != 2 or mu.shape[-1] != dim or std.shape != mu.shape:
    raise ValueError(
        f"mu {mu.shape} and std {std.shape} must both be (N, {dim}) for a codebook "
        f"of shape {codebook.shape}.")
  tile_size = min(num_codes, DEFAULT_TILE_SIZE) if tile_size is None else int(tile_size)
  if tile_size < 1:
    raise ValueError(f"tile_size={tile_size}: need at least 1 codeword per tile.")
  return _quantize(mu, std, codebook, prior_weight, tile_size=tile_size)


@functools.partial(jax.jit, static_argnames=("tile_size",))
def _quantize(mu: Array, std: Array, codebook: Array, prior_weight: Any, *,
              tile_size: int) -> Array:
  """`quantize` after its argument checks; see there."""
  num_codes, dim = codebook.shape
  num_tokens = mu.shape[0]
  mu = mu.astype(jnp.float32)
  inv_var = 1.0 / jnp.square(std.astype(jnp.float32))
  prior_weight = jnp.asarray(prior_weight, jnp.float32)
  features = jnp.concatenate([mu * inv_var, 0.5 * (prior_weight - inv_var)], axis=-1)  # (N, 2m)
  tiles = code_tiles(codebook, tile_size)
  if num_tokens == 0:
    return jnp.zeros((0,), jnp.int32)
  winners = _winning_tiles(features, tiles, num_codes)
  return _argmax_within(features, tiles, winners, num_codes)


def code_tiles(codebook: Array, tile_size: int) -> Array:
  """The code features [c, c^2] as (T, 2m, tile) tiles, zero-padded to T tiles.

  Codewords run along the last axis: a block of token rows times a tile
  gives (block, tile) scores whose max runs along contiguous memory (22%
  faster on XLA:CPU than the (tile, block) layout). Built from the
  transposed codebook in one pass, so that one K x 2m copy is held.
  """
  num_codes, dim = codebook.shape
  num_tiles = -(-num_codes // tile_size)
  codes_t = jnp.pad(codebook.astype(jnp.float32), ((0, num_tiles * tile_size - num_codes), (0, 0)))
  codes_t = codes_t.reshape(num_tiles, tile_size, dim).transpose(0, 2, 1)  # (T, m, tile)
  return jnp.concatenate([codes_t, jnp.square(codes_t)], axis=1)


def _blocks(x: Array, size: int) -> Array:
  """(N, ...) -> (ceil(N / size), size, ...), zero-padded at the end."""
  num_blocks = -(-x.shape[0] // size)
  padding = [(0, num_blocks * size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, padding).reshape((num_blocks, size) + x.shape[1:])


def _winning_tiles(features: Array, tiles: Array, num_codes: int) -> Array:
  """Pass 1: (N,) index of the first tile holding each token's best score."""
  num_tiles, _, tile_size = tiles.shape
  block = min(TOKEN_BLOCK, features.shape[0])
  last_valid = jnp.arange(tile_size) < num_codes - (num_tiles - 1) * tile_size

  def block_winners(block_features):  # (block, 2m)
    def scan_tile(carry, tile):
      best_score, best_tile = carry
      scores = jnp.dot(block_features, tiles[tile], precision=jax.lax.Precision.HIGHEST)
      if num_codes % tile_size:  # Padded codewords (last tile only) never win.
        scores = jnp.where((tile < num_tiles - 1) | last_valid[None, :], scores, -jnp.inf)
      tile_score = jnp.max(scores, axis=1)
      better = tile_score > best_score  # Strict: ties keep the earlier tile.
      return (jnp.where(better, tile_score, best_score), jnp.where(better, tile, best_tile)), None

    init = (jnp.full((block,), -jnp.inf, jnp.float32), jnp.zeros((block,), jnp.int32))
    tile_ids = jnp.arange(num_tiles, dtype=jnp.int32)
    return jax.lax.scan(scan_tile, init, tile_ids)[0][1]

  return jax.lax.map(block_winners, _blocks(features, block)).reshape(-1)[:features.shape[0]]


def _argmax_within(features: Array, tiles: Array, winners: Array, num_codes: int) -> Array:
  """Pass 2: (N,) index of each token's best codeword inside its winning tile."""
  tile_size = tiles.shape[2]
  chunk = min(RESCORE_CHUNK, features.shape[0])
  positions = jnp.arange(tile_size, dtype=jnp.int32)

  def chunk_indices(args):
    chunk_features, chunk_winners = args
    scores = jnp.einsum("nd,ndt->nt", chunk_features, tiles[chunk_winners],
                        precision=jax.lax.Precision.HIGHEST)
    first = chunk_winners[:, None] * tile_size
    scores = jnp.where(first + positions[None, :] < num_codes, scores, -jnp.inf)
    # NaN scores give argmax's NaN position: still an index in range.
    return chunk_winners * tile_size + jnp.argmax(scores, axis=-1).astype(jnp.int32)

  indices = jax.lax.map(chunk_indices, (_blocks(features, chunk), _blocks(winners, chunk)))
  return indices.reshape(-1)[:features.shape[0]]


def dequantize(indices: Array, codebook: Array) -> Array:
  """Codewords of `indices`, by table look-up.

  `jnp.take` rather than `one_hot(indices) @ codebook`: this is the offline
  path on host-side or replicated indices, where a gather is O(N m) and the
  one-hot product would be O(N K m). (STYLE.md: under explicit batch sharding
  prefer the one-hot product.) An out-of-range index gives NaNs (take's
  "fill" mode), which makes the error visible.

  Args:
    indices: (...) int indices in [0, K).
    codebook: (K, m) codewords.

  Returns:
    (..., m) float32 codewords.
  """
  return jnp.take(codebook.astype(jnp.float32), indices, axis=0)


def bits_per_pixel(latent_hw: int | Sequence[int], channels: int, group_size: int,
                   log2_codebook_size: float, image_hw: int | Sequence[int]) -> float:
  """bpp = h * w * (c / m) * log2(K) / (H * W).

  Args:
    latent_hw: (h, w) latent grid, or one int for a square grid.
    channels: c latent channels.
    group_size: m channels per token; must divide c.
    log2_codebook_size: bits per token, log2 K.
    image_hw: (H, W) image size, or one int for a square image.

  Returns:
    Python float, bits per image pixel.
  """
  check_group_size(channels, group_size)
  h, w = _pair(latent_hw)
  height, width = _pair(image_hw)
  return h * w * (channels // group_size) * float(log2_codebook_size) / (height * width)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  first, second = size
  return int(first), int(second)
