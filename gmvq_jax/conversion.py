"""GQ's offline step: turn a trained Gaussian VAE into a VQ-VAE, and back to images.

`convert` samples the fixed N(0, I) codebook, quantizes the posterior means
of a split (docs/algorithms.md, "GQ") and writes tokens, report and pictures;
`decode` turns a token file back into images (through gmvq_jax.tokenizer).
Used by `launch.quantize` and `launch.decode`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmvq_jax import checkpointing
from gmvq_jax import errors
from gmvq_jax import evaluation
from gmvq_jax import io as io_lib
from gmvq_jax import methods
from gmvq_jax import metrics as metrics_lib
from gmvq_jax import token_files
from gmvq_jax import tokenizer as tokenizer_lib
from gmvq_jax import train_lib
from gmvq_jax import visualization
from gmvq_jax import workdir_lock
from gmvq_jax.data import pipeline
from gmvq_jax.quantizers import gq
from gmvq_jax.quantizers import gq_codebook

TOKENS_SUBDIR = "tokens"
REPORT_NAME = "gq_report.json"
PICTURE_NAME = "gq_reconstructions.png"
SPLITS = ("test", "train")
TOKEN_FILE_VERSION = token_files.VERSION
HISTOGRAM_BIN_BITS = 0.25  # Width of the per-token KL histogram's bins.
PERCENTILES = (1, 5, 50, 95, 99)  # Reported levels of the per-token KL bits.
REPORT_KEYS = ("psnr_gaussian", "psnr_vq", "psnr_drop_db", "bpp", "codebook_size", "code_usage",
               "token_perplexity", "kl_bits_mean", "kl_bits_min", "kl_bits_max",
               "kl_bits_histogram")

Array = jax.Array


class ConversionError(errors.UserError, ValueError):
  """A flag or a workdir that the offline GQ step cannot use; the message says why."""


class TokenFileError(ConversionError, token_files.TokenFileError):
  """A token file that does not fit the checkpoint it is decoded with."""


# -------------------------------------------------------------- token files


def load_tokens(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """Reads a GQ token file (gmvq_jax.token_files): (tokens, codebook, metadata).

  Raises:
    errors.UserFileNotFoundError: no such file.
    TokenFileError: not a GQ token file (missing arrays, unreadable).
  """
  try:
    tokens, arrays, metadata = token_files.load(path)
  except token_files.TokenFileError as error:
    raise TokenFileError(str(error)) from error
  if "codebook" not in arrays:
    raise TokenFileError(f"{path} lacks ['codebook']: not a GQ token file written by"
                         " `launch.quantize`.")
  return tokens, arrays["codebook"], metadata


# ------------------------------------------------------------ device steps


def _variables(state: train_lib.TrainState) -> dict[str, Any]:
  return {"params": state.params, "batch_stats": state.batch_stats}


def convert_batch(state: train_lib.TrainState, images: Array, codebook: Array,
                  prior_weight: Array, *,
                  config: ml_collections.ConfigDict) -> dict[str, Array]:
  """Encodes one batch, quantizes the posterior means, decodes both ways.

  Args:
    state: a GQ train state.
    images: (B, H, W, 3) in [0, 1].
    codebook: (K, m) codewords.
    prior_weight: scalar prior weight of the quantization rule.
    config: the run's config (static).

  Returns:
    `tokens` (B, h, w, c/m) int32, `kl_bits` (B, h, w, c/m), per-image
    squared errors `squared_gaussian` / `squared_vq` and SSIMs `ssim_gaussian`
    / `ssim_vq` (B,) of the images decoded from the posterior means and from
    the tokens, and those images, `gaussian` and `vq`, each (B, H, W, 3).
  """
  model = train_lib.build_model(config)
  group = config.quantizer.group_size
  variables = _variables(state)
  mu, logvar = model.quantizer.posterior(model.apply(variables, images, False,
                                                     method=model.encode))
  std = jnp.exp(0.5 * logvar)
  tokens = gq_codebook.quantize(mu.reshape(-1, group), std.reshape(-1, group), codebook,
                                prior_weight=prior_weight)
  tokens = tokens.reshape(mu.shape[:-1] + (mu.shape[-1] // group,))
  z_q = gq_codebook.dequantize(tokens, codebook).reshape(mu.shape)
  gaussian = model.apply(variables, mu, False, method=model.decode)
  vq = model.apply(variables, z_q, False, method=model.decode)
  per_image = lambda x: jnp.sum(jnp.square(x - images), axis=(1, 2, 3))
  return dict(tokens=tokens, kl_bits=gq.kl_bits(mu, logvar, group),
              squared_gaussian=per_image(gaussian), squared_vq=per_image(vq),
              ssim_gaussian=metrics_lib.ssim(images, gaussian),
              ssim_vq=metrics_lib.ssim(images, vq), gaussian=gaussian, vq=vq)


# --------------------------------------------------------------- the steps


def converts(config: ml_collections.ConfigDict) -> bool:
  """Whether a run's config is one this offline conversion applies to: a Gaussian posterior."""
  return methods.make_quantizer(config).posterior is not None


def restore_gq_run(workdir: str):
  """(config, state, dataset) of a GQ workdir's latest checkpoint; ConversionError otherwise."""
  if not io_lib.as_path(workdir).is_dir():
    raise errors.UserFileNotFoundError(f"--workdir={workdir} is not a directory of a training run.")
  config = checkpointing.restore_config(workdir)
  if not converts(config):
    raise ConversionError(
        f"--workdir={workdir} holds a {config.method!r} run; the offline conversion needs a GQ"
        " run (train with --config=configs/gq_demo.py or another gq_* config).")
  return evaluation.restore_run(workdir)


def _check_flags(codebook_seed, prior_weight, sampler, split, num_images) -> None:
  if isinstance(codebook_seed, bool) or not isinstance(codebook_seed, (int, np.integer)) \
      or codebook_seed < 0:
    raise ConversionError(f"--codebook_seed={codebook_seed!r}: need an integer >= 0.")
  if not (isinstance(prior_weight, (int, float)) and math.isfinite(prior_weight)
          and prior_weight >= 0):
    raise ConversionError(f"--prior_weight={prior_weight!r}: need a finite number >= 0 (2.0"
                          " keeps more codes in use at low rates).")
  if sampler not in gq_codebook.SAMPLERS:
    raise ConversionError(f"--sampler={sampler!r}; allowed: {', '.join(gq_codebook.SAMPLERS)}.")
  if split not in SPLITS:
    raise ConversionError(f"--split={split!r}; allowed: {', '.join(SPLITS)}.")
  if num_images < 0:
    raise ConversionError(f"--num_images={num_images}: need >= 0.")


def _split_batches(dataset: Any, split: str, batch_size: int) -> Iterator[np.ndarray]:
  if split == "test":
    return dataset.eval_batches(batch_size)
  train_batches = getattr(dataset, "train_split_batches", None)
  if train_batches is None:
    raise ConversionError(
        f"--split={split}: the {type(dataset).__name__} has no finite, ordered training split"
        " (the embedded photographs give endless random crops); use --split=test.")
  return train_batches(batch_size)


def kl_histogram(counts: np.ndarray) -> dict[str, list]:
  """The non-empty range of fixed-width KL-bit bins as {'bin_edges', 'counts'}."""
  used = np.flatnonzero(counts)
  if used.size == 0:
    return dict(bin_width_bits=HISTOGRAM_BIN_BITS, bin_edges=[], counts=[])
  first, last = int(used[0]), int(used[-1])
  edges = np.arange(first, last + 2) * HISTOGRAM_BIN_BITS
  return dict(bin_width_bits=HISTOGRAM_BIN_BITS, bin_edges=[float(e) for e in edges],
              counts=[int(c) for c in counts[first:last + 1]])


def kl_percentiles(counts: np.ndarray, maximum: float,
                   levels: tuple[float, ...] = PERCENTILES) -> dict[str, float]:
  """Percentiles of the per-token KL bits, read off the fixed-width histogram.

  Each value is the upper edge of the bin where the cumulative count first
  reaches the level (resolution HISTOGRAM_BIN_BITS), capped at the true
  maximum; a level that falls in the overflow bin (the last entry of
  `counts`) reads as the maximum.

  Args:
    counts: (bins + 1,) counts of bins [i w, (i + 1) w) and the overflow bin.
    maximum: the largest KL bits seen.
    levels: percent levels in (0, 100].

  Returns:
    {'p<level>': bits} for each level.
  """
  cumulative = np.cumsum(counts) / max(int(np.sum(counts)), 1)
  figures = {}
  for level in levels:
    index = int(np.searchsorted(cumulative, level / 100.0 - 1e-12))
    edge = maximum if index >= len(counts) - 1 else (index + 1) * HISTOGRAM_BIN_BITS
    figures[f"p{level:g}"] = float(min(edge, maximum))
  return figures


@workdir_lock.locked("tokenizing")
def convert(workdir: str, *, codebook_seed: int | None = None,
            prior_weight: float | None = None, sampler: str | None = None, split: str = "test",
            batch_size: int | None = None, num_images: int = 16,
            overwrite: bool = False) -> dict[str, Any]:
  """The offline GQ step on the latest checkpoint of `workdir`.

  Samples the codebook, quantizes the posterior means of `split`, decodes the
  images from the means and from the tokens, and writes
  WORKDIR/tokens/<split>.npz (tokens, codebook, metadata), WORKDIR/gq_report.json
  and WORKDIR/gq_reconstructions.png (originals, decoded from the means,
  decoded from the tokens). Every file goes through a temporary name and a
  rename; nothing is written before all of the split is done. Tokens of an
  earlier conversion of the split are kept (OutputExistsError, before any
  work) unless `overwrite`.

  Args:
    workdir: a GQ training run.
    codebook_seed, prior_weight, sampler: default to the run's
      `quantizer.codebook_seed`, `quantizer.prior_weight` and `quantizer.codebook_sampler`.
    split: 'test' (the held-out split evaluation uses) or 'train' (TFDS only).
    batch_size: images per device call; default the run's eval_batch_size.
    num_images: images in the picture.
    overwrite: replace WORKDIR/tokens/<split>.npz and .json if they exist.

  Returns:
    The report (also written as gq_report.json).
  """
  config, state, dataset = restore_gq_run(workdir)
  q = config.quantizer
  codebook_seed = q.codebook_seed if codebook_seed is None else codebook_seed
  prior_weight = q.prior_weight if prior_weight is None else prior_weight
  sampler = q.codebook_sampler if sampler is None else sampler
  batch_size = config.eval_batch_size if batch_size is None else batch_size
  _check_flags(codebook_seed, prior_weight, sampler, split, num_images)
  if batch_size < 1:
    raise ConversionError(f"--batch_size={batch_size}: need >= 1.")
  tokens_dir = io_lib.as_path(workdir) / TOKENS_SUBDIR
  token_files.refuse_existing(
      [tokens_dir / f"{split}.npz", tokens_dir / f"{split}.json"], overwrite,
      what=" (tokens of an earlier conversion)", fix="")
  num_codes = 2**q.log2_codebook_size
  codebook = gq_codebook.sample_codebook(int(codebook_seed), num_codes, q.group_size, sampler)

  step_fn = jax.jit(functools.partial(convert_batch, config=config))
  device_codebook, device_prior_weight = jnp.asarray(codebook), jnp.float32(prior_weight)
  hist_bins = int(math.ceil(4 * q.log2_codebook_size / HISTOGRAM_BIN_BITS)) + 1
  histogram = np.zeros(hist_bins + 1, np.int64)  # Last bin: everything above.
  totals = dict(squared_gaussian=0.0, squared_vq=0.0, ssim_gaussian=0.0, ssim_vq=0.0,
                kl_sum=0.0, within=0)
  kl_min, kl_max = math.inf, -math.inf
  token_batches, rows = [], [[], [], []]
  for images, _, real in pipeline.padded_batches(_split_batches(dataset, split, batch_size),
                                                 batch_size):
    out = jax.device_get(step_fn(state, images, device_codebook, device_prior_weight))
    bits = np.asarray(out["kl_bits"][:real], np.float64)
    token_batches.append(np.asarray(out["tokens"][:real]))
    totals["squared_gaussian"] += float(np.sum(out["squared_gaussian"][:real], dtype=np.float64))
    totals["squared_vq"] += float(np.sum(out["squared_vq"][:real], dtype=np.float64))
    for name in ("ssim_gaussian", "ssim_vq"):
      totals[name] += float(np.sum(out[name][:real], dtype=np.float64))
    totals["kl_sum"] += float(bits.sum())
    totals["within"] += int(np.sum(np.abs(bits - q.log2_codebook_size) <= q.tolerance))
    kl_min, kl_max = min(kl_min, float(bits.min())), max(kl_max, float(bits.max()))
    bins = np.minimum(np.floor(np.maximum(bits, 0.0) / HISTOGRAM_BIN_BITS), hist_bins)
    histogram += np.bincount(bins.astype(np.int64).ravel(), minlength=hist_bins + 1)
    have = sum(r.shape[0] for r in rows[0])
    if have < num_images:
      take = min(num_images - have, real)
      for row, picture in zip(rows, (images, out["gaussian"], out["vq"])):
        row.append(np.asarray(picture[:take]))
  tokens = np.concatenate(token_batches)
  num_tokens = tokens.size
  num_values = tokens.shape[0] * int(np.prod(dataset.image_shape))
  mse_gaussian = totals["squared_gaussian"] / num_values
  mse_vq = totals["squared_vq"] / num_values
  counts = np.bincount(tokens.ravel(), minlength=num_codes)
  bpp = gq_codebook.bits_per_pixel(tokens.shape[1:3], q.latent_dim, q.group_size,
                          q.log2_codebook_size, dataset.image_shape[:2])
  report = dict(
      psnr_gaussian=float(metrics_lib.psnr(mse_gaussian)),
      psnr_vq=float(metrics_lib.psnr(mse_vq)),
      psnr_drop_db=float(metrics_lib.psnr(mse_gaussian) - metrics_lib.psnr(mse_vq)),
      mse_gaussian=mse_gaussian,
      mse_vq=mse_vq,
      ssim_gaussian=totals["ssim_gaussian"] / tokens.shape[0],
      ssim_vq=totals["ssim_vq"] / tokens.shape[0],
      bpp=bpp,
      codebook_size=num_codes,
      log2_codebook_size=int(q.log2_codebook_size),
      group_size=int(q.group_size),
      code_usage=float(metrics_lib.code_usage(counts)),
      token_perplexity=float(metrics_lib.hard_perplexity(counts)),
      kl_bits_mean=totals["kl_sum"] / num_tokens,
      kl_bits_min=kl_min,
      kl_bits_max=kl_max,
      fraction_within_tolerance=totals["within"] / num_tokens,
      kl_bits_percentiles=kl_percentiles(histogram, kl_max),
      kl_bits_histogram=kl_histogram(histogram[:-1]),
      kl_bits_above_histogram=int(histogram[-1]),
      split=split,
      num_images=int(tokens.shape[0]),
      num_tokens=int(num_tokens),
      step=int(state.step),
      codebook_seed=int(codebook_seed),
      sampler=sampler,
      prior_weight=float(prior_weight),
  )
  tokenizer = tokenizer_lib.Tokenizer(config, state, codebook_seed=int(codebook_seed),
                                      prior_weight=float(prior_weight), sampler=sampler)
  metadata = dict(tokenizer.metadata(tokens.shape[0]), bpp=bpp, split=split)
  tokens_dir.mkdir(parents=True, exist_ok=True)
  token_files.save(tokens_dir / f"{split}.npz", tokens, dict(codebook=codebook), metadata)
  evaluation.write_json(tokens_dir / f"{split}.json", metadata)
  evaluation.write_json(io_lib.as_path(workdir) / REPORT_NAME, report)
  if rows[0]:
    visualization.save_reconstructions(io_lib.as_path(workdir) / PICTURE_NAME,
                                       np.stack([np.concatenate(r) for r in rows]))
  return report


def decode(workdir: str, tokens_path: str, *, output: str | None = None, overwrite: bool = False,
           batch_size: int | None = None, num_images: int = 16) -> tuple[str, np.ndarray]:
  """Decodes a token file with the latest checkpoint of `workdir` (see tokenizer.decode_file).

  Everything is checked before anything is computed or written: the tokens
  must fit the checkpoint's K, m and token grid, their fingerprints must be
  its checkpoint's and codebook's, and the output must be neither the token
  file itself nor, unless `overwrite`, an existing file.

  Returns:
    (output path, the decoded images as float32 in [0, 1]).
  """
  try:
    output, images = tokenizer_lib.decode_file(workdir, tokens_path, output=output,
                                               overwrite=overwrite, batch_size=batch_size,
                                               num_images=num_images)
  except token_files.TokenFileError as error:
    raise TokenFileError(str(error)) from error
  return str(output), images
