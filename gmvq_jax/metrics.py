"""Reconstruction and codebook metrics: MSE, PSNR, SSIM, perplexities, code usage.

Pure array functions; each works on jax or numpy arrays. The paper's
perplexity (GM-VQ paper, Sec. 5.1) is `exp(H(qbar))` of one evaluation batch;
the hard perplexity is over the argmax codes of a whole evaluation set.
"""

from __future__ import annotations

from typing import Callable

import dm_pix
import jax.numpy as jnp
import numpy as np


def mse(images, reconstructions):
  """Mean squared error over all pixels and channels, images in [0, 1]."""
  diff = jnp.asarray(images, jnp.float32) - jnp.asarray(reconstructions, jnp.float32)
  return jnp.mean(jnp.square(diff))


def psnr(mean_squared_error, max_value: float = 1.0):
  """Peak signal-to-noise ratio in dB from an MSE on [0, max_value] pixels."""
  return 10.0 * jnp.log10(max_value**2 / jnp.asarray(mean_squared_error, jnp.float32))


def ssim(images, reconstructions):
  """Mean SSIM of each image (Wang et al., 2004), images in [0, 1].

  dm_pix's defaults: an 11x11 Gaussian window of sigma 1.5, max_val 1.0,
  k1 = 0.01, k2 = 0.03, over every channel.

  Args:
    images, reconstructions: (B, H, W, C).

  Returns:
    (B,) float32, 1 for identical images.
  """
  return dm_pix.ssim(jnp.asarray(images, jnp.float32),
                     jnp.asarray(reconstructions, jnp.float32), max_val=1.0)


# Per-image figures of every evaluation: name -> fn(images, reconstructions)
# -> (B,) float32 on (B, H, W, 3) images in [0, 1]. The eval step sums each
# over the real images (`<name>_sum`) and the summaries report its mean as
# `<name>`. Extra entries (e.g. LPIPS from a network with pretrained weights)
# must be jax functions and be registered before the eval step is compiled.
IMAGE_METRICS: dict[str, Callable] = {"ssim": ssim}


def entropy(probs, axis: int = -1):
  """Shannon entropy in nats; zero-probability entries contribute 0."""
  probs = jnp.asarray(probs, jnp.float32)
  logs = jnp.log(jnp.where(probs > 0, probs, 1.0))
  return -jnp.sum(probs * logs, axis=axis)


def perplexity(probs, axis: int = -1):
  """exp(H(p)): the paper's perplexity when `p` is the batch-mean posterior qbar."""
  return jnp.exp(entropy(probs, axis))


def hard_perplexity(code_counts):
  """exp of the entropy of the histogram of argmax codes.

  Args:
    code_counts: (C,) how often each code was chosen over an evaluation set.
  """
  counts = jnp.asarray(code_counts, jnp.float32)
  return perplexity(counts / jnp.maximum(jnp.sum(counts), 1.0))


def code_usage(code_counts):
  """Fraction of the C codes chosen at least once."""
  counts = jnp.asarray(code_counts)
  return jnp.mean((counts > 0).astype(jnp.float32))


# A code is reachable while q(c|x) exceeds this for at least one vector: below
# it, the gradient that could pull the code back toward the data is negligible.
REACHABLE_PROBABILITY = 1e-6


def reachable_codes(max_probs, threshold: float = REACHABLE_PROBABILITY):
  """Fraction of codes with q(c|x) > threshold for at least one vector.

  Args:
    max_probs: (C,) the largest q(c|x) of each code over a set of vectors.
  """
  return jnp.mean((jnp.asarray(max_probs) > threshold).astype(jnp.float32))


def image_figures(sums: dict) -> dict[str, float]:
  """mse, psnr and the mean of each IMAGE_METRICS figure, from evaluation sums.

  Args:
    sums: `squared_error` (sum over pixels), `num_values` (pixel-channels),
      and, for each per-image figure, `<name>_sum` and `num_images`.
  """
  mean_sq = float(sums["squared_error"]) / max(float(sums["num_values"]), 1.0)
  figures = dict(mse=mean_sq, psnr=float(psnr(mean_sq)))
  for name in IMAGE_METRICS:
    if f"{name}_sum" in sums:
      figures[name] = float(sums[f"{name}_sum"]) / max(float(sums["num_images"]), 1.0)
  return figures


def summarize_eval(sums: dict) -> dict[str, float]:
  """Turns accumulated evaluation sums into the reported figures.

  Args:
    sums: host numpy sums over an evaluation set with the keys of
      `image_figures`, `batch_perplexity_sum` and `num_batches` (the paper's
      per-batch perplexity, averaged over batches) and `code_counts` (C,).

  Returns:
    mse, psnr, ssim, perplexity, hard_perplexity, code_usage as Python
    floats; reachable_codes too when the sums hold `code_max_prob_max` (C,),
    the largest posterior probability of each code (soft-posterior methods).
  """
  figures = image_figures(sums)
  figures.update(
      perplexity=float(sums["batch_perplexity_sum"]) / max(float(sums["num_batches"]), 1.0),
      hard_perplexity=float(hard_perplexity(np.asarray(sums["code_counts"]))),
      code_usage=float(code_usage(np.asarray(sums["code_counts"]))),
  )
  if "code_max_prob_max" in sums:
    figures["reachable_codes"] = float(reachable_codes(np.asarray(sums["code_max_prob_max"])))
  return figures


def summarize_gaussian_eval(sums: dict) -> dict[str, float]:
  """Figures of a Gaussian (GQ, before conversion) evaluation from accumulated sums.

  Args:
    sums: the keys of `image_figures`, and the per-token KL statistics
      `kl_bits_sum`, `num_tokens`, `within_tolerance`, `kl_bits_min`,
      `kl_bits_max`.

  Returns:
    mse, psnr, ssim, kl_bits_mean, kl_bits_min, kl_bits_max and
    fraction_within_tolerance, as Python floats.
  """
  tokens = max(float(sums["num_tokens"]), 1.0)
  return dict(
      image_figures(sums),
      kl_bits_mean=float(sums["kl_bits_sum"]) / tokens,
      kl_bits_min=float(sums["kl_bits_min"]),
      kl_bits_max=float(sums["kl_bits_max"]),
      fraction_within_tolerance=float(sums["within_tolerance"]) / tokens,
  )
