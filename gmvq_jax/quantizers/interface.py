"""The record every quantizer module builds (`make`), and the pieces codebook quantizers share.

A method plugs into the autoencoder and the train/eval steps through one
`Quantizer`: small pure functions closed over its hyperparameters, in the
spirit of optax's GradientTransformation. The steps never ask which method
they run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax import metrics as metrics_lib
from gmvq_jax.quantizers import common

Array = jax.Array
Problem = tuple  # (field, value, what is allowed); `allowed` None: the field is missing.


class Quantizer(NamedTuple):
  """One method's quantizer, as the autoencoder and the train/eval steps see it.

  Attributes:
    encoder_width: channels the encoder emits per latent position.
    codebook_size: distinct values one token can take.
    tokens_per_position: tokens per latent position.
    params_name: key of its parameters in the model's params.
    init_params: `rng -> params`, or None for a quantizer without parameters.
    init_state: `() -> state`: its non-gradient state (None if it has none).
    apply: `(params, state, z, rng, step, train) -> (z_q, aux)`: z the
      encoder's (B, h, w, encoder_width) float32 grid, z_q the decoder's
      (B, h, w, c) input; rng (B h w,) keys when training, else None.
    loss: `(params, state, images, reconstructions, z_q, aux) -> (loss,
      terms, carry)`: the scalar to minimise, float32 scalar terms to log,
      and what `update` needs of the step.
    update: `(params, state, carry, step, rng) -> (params, state, metrics)`
      after the optimizer step (TDC multipliers, +OPT, +replace, k-means
      remedies); `rng` is the same on every device.
    eval_stats: `(images, reconstructions, aux, mask) -> sums` of one padded
      eval batch (the global batch's when made with an axis_name, identical
      on every device); sums over batches combine by addition unless
      `combine` names 'min' or 'max'.
    combine: {sum name: 'min' | 'max'}.
    summarize: `totals -> figures` (Python floats) of a whole split.
    progress: the train metrics of the console's progress line.
    encoder_points: `z -> (N, L)` points of the encoder grid in the
      codebook's space (for k-means), or None when there are none.
    set_codebook: `(params, centers) -> params` with the codebook set to
      (C, L) `centers`, or None.
    tokenize: `(params, z) -> indices` (B, h, w, tokens) int32, noise-free.
    detokenize: `(params, indices) -> z_q` (B, h, w, c).
    posterior: `z -> (mu, logvar)`, each (B, h, w, c), for a Gaussian model
      whose tokens come from an offline conversion of the trained run
      (gmvq_jax.conversion); None for a quantizer that tokenizes as it trains.
  """

  encoder_width: int
  codebook_size: int
  tokens_per_position: int
  params_name: str
  init_params: Callable[[Array], Any] | None
  init_state: Callable[[], Any]
  apply: Callable[..., tuple[Array, dict[str, Array]]]
  loss: Callable[..., tuple[Array, dict[str, Array], Any]]
  update: Callable[..., tuple[Any, Any, dict[str, Array]]]
  eval_stats: Callable[..., dict[str, Array]]
  combine: Mapping[str, str]
  summarize: Callable[[dict], dict[str, float]]
  progress: tuple[str, ...]
  encoder_points: Callable[[Array], Array] | None
  set_codebook: Callable[[Any, Array], Any] | None
  tokenize: Callable[[Any, Array], Array]
  detokenize: Callable[[Any, Array], Array]
  posterior: Callable[[Array], tuple[Array, Array]] | None = None


CODE_PROGRESS = ("loss", "recon", "quantizer_loss", "batch_perplexity")
CODE_COMBINE = {"code_max_prob_max": "max"}


def no_state() -> None:
  return None


def no_update(params: Any, state: Any, carry: Any, step: Array, rng: Array):
  return params, state, {}


def flat(z: Array) -> Array:
  """(B, h, w, c) -> (B h w, c)."""
  return z.reshape(-1, z.shape[-1])


def code_histogram(indices: Array, num_codes: int, weights: Array | None = None,
                   axis_name: Any = None) -> Array:
  """(C,) float32 counts of `indices` over the global batch, by scatter-add.

  No (N, C) one-hot: FSQ/LFQ/BSQ codebooks can have 2^16 entries.
  """
  weights = jnp.ones(indices.shape, jnp.float32) if weights is None else weights
  counts = jnp.zeros((num_codes,), jnp.float32).at[indices.reshape(-1)].add(weights.reshape(-1))
  return common.psum(counts, axis_name)


def code_metrics(code_counts: Array, temperature: Array) -> dict[str, Array]:
  """Train metrics of a codebook quantizer from the global batch's (C,) code counts."""
  return dict(temperature=temperature, batch_code_usage=metrics_lib.code_usage(code_counts),
              batch_perplexity=metrics_lib.hard_perplexity(code_counts))


def image_eval_stats(images: Array, reconstructions: Array, mask: Array,
                     axis_name: Any = None) -> dict[str, Array]:
  """Eval sums every method reports: squared error, and each `metrics.IMAGE_METRICS` figure.

  Args:
    images, reconstructions: (B, H, W, 3) in [0, 1]; rows with `mask == 0`
      are padding.
    mask: (B,) float32.
    axis_name: the named batch axis: sums are then over the global batch.

  Returns:
    squared_error, num_values (pixel-channels), num_images and `<name>_sum`
    of each per-image figure, float32 scalars.
  """
  squared = jnp.sum(jnp.square(images - reconstructions), axis=(1, 2, 3))
  sums = dict(squared_error=jnp.sum(squared * mask),
              num_values=jnp.sum(mask) * np.prod(images.shape[1:]), num_images=jnp.sum(mask))
  for name, per_image in metrics_lib.IMAGE_METRICS.items():
    sums[f"{name}_sum"] = jnp.sum(per_image(images, reconstructions) * mask)
  return common.psum(sums, axis_name)


def code_eval_stats(images: Array, reconstructions: Array, aux: dict[str, Array], mask: Array,
                    codebook_size: int, axis_name: Any = None) -> dict[str, Array]:
  """Eval sums of a codebook quantizer: image sums, code histogram, the paper's perplexity.

  Args:
    images, reconstructions: (B, H, W, 3); rows with `mask == 0` are padding.
    aux: `apply`'s, with `indices` (N,) and, for soft posteriors, `probs` (N, C).
    mask: (B,) float32.
    codebook_size: C.
    axis_name: the named batch axis: the sums, and the batch whose
      perplexity is taken, are then the global batch's.

  Returns:
    `image_eval_stats`, code_counts (C,), batch_perplexity_sum and
    num_batches (the paper's perplexity `exp(H(qbar))` of this batch, and 1
    unless it is all padding), and code_max_prob_max (C,) for soft posteriors.
  """
  vectors_per_example = aux["indices"].shape[0] // images.shape[0]
  vector_mask = jnp.repeat(mask, vectors_per_example)
  code_counts = code_histogram(aux["indices"], codebook_size, vector_mask, axis_name)
  extra_sums = {}
  if "probs" in aux:  # The paper's perplexity: of the soft posterior's batch mean.
    qbar = common.psum(jnp.sum(aux["probs"] * vector_mask[:, None], axis=0), axis_name)
    extra_sums["code_max_prob_max"] = common.pmax(
        jnp.max(aux["probs"] * vector_mask[:, None], axis=0), axis_name)
  else:  # Deterministic quantizers: the posterior is the one-hot code.
    qbar = code_counts
  qbar = qbar / jnp.maximum(common.psum(jnp.sum(vector_mask), axis_name), 1.0)
  has_data = (common.psum(jnp.sum(mask), axis_name) > 0).astype(jnp.float32)
  return dict(
      image_eval_stats(images, reconstructions, mask, axis_name),
      code_counts=code_counts,
      batch_perplexity_sum=metrics_lib.perplexity(qbar) * has_data,
      num_batches=has_data,
      **extra_sums,
  )


# ------------------------------------------------------- checks of config fields
# Each returns the problems of field `field` of node `q` (a config.quantizer,
# or with `prefix` any node of a config): [] or one (name, value, allowed).


def need_int(q: Any, field: str, minimum: int, why: str = "",
             prefix: str = "quantizer.") -> list[Problem]:
  if field not in q:
    return [(f"{prefix}{field}", None, None)]
  value = q[field]
  if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
    return []
  return [(f"{prefix}{field}", value, f"must be an integer >= {minimum}{why}")]


def need_number(q: Any, field: str, minimum: float, strict: bool = False,
                prefix: str = "quantizer.") -> list[Problem]:
  if field not in q:
    return [(f"{prefix}{field}", None, None)]
  value = q[field]
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if ok and (value > minimum if strict else value >= minimum):
    return []
  return [(f"{prefix}{field}", value, f"must be a number {'>' if strict else '>='} {minimum}")]


def need_choice(q: Any, field: str, choices: tuple[Any, ...],
                prefix: str = "quantizer.") -> list[Problem]:
  if field not in q:
    return [(f"{prefix}{field}", None, None)]
  if q[field] in choices:
    return []
  return [(f"{prefix}{field}", q[field], f"allowed values are {choices}")]


def need_bool(q: Any, field: str, prefix: str = "quantizer.") -> list[Problem]:
  if isinstance(q.get(field), bool):
    return []
  return [(f"{prefix}{field}", q.get(field), "must be True or False")]


# ------------------------------------------- quantizers of one code per vector


def code_loss(images: Array, reconstructions: Array, aux: dict[str, Array]):
  """recon (MSE) + the quantizer's own weighted loss `aux['loss']`; terms to log."""
  recon = metrics_lib.mse(images, reconstructions)
  loss = recon + aux["loss"]
  return loss, dict(loss=loss, recon=recon, quantizer_loss=aux["loss"])


def code_quantizer(
    *,
    quantize: Callable[..., tuple[Array, dict[str, Array]]],
    encoder_width: int,
    codebook_size: int,
    detokenize_flat: Callable[[Any, Array], Array],
    init_params: Callable[[Array], Any] | None = None,
    init_state: Callable[[], Any] = no_state,
    temperature: Callable[[Array], Array] | None = None,
    loss: Callable[..., tuple[Array, dict[str, Array]]] = code_loss,
    after_step: Callable[..., tuple[Any, Any, dict[str, Array]]] | None = None,
    encoder_points: Callable[[Array], Array] | None = None,
    set_codebook: Callable[[Any, Array], Any] | None = None,
    axis_name: Any = None,
) -> Quantizer:
  """A `Quantizer` that maps each encoder vector to one code of `codebook_size`.

  Args:
    quantize: `(params, z, *, rng, temperature, train) -> (z_q, aux)` on
      (N, encoder_width) vectors; aux holds `indices` (N,) int32 and the
      weighted quantizer `loss`.
    detokenize_flat: `(params, indices (N,)) -> (N, c)` latents.
    temperature: `step -> tau` while training; None: always 1.
    loss: `(images, reconstructions, aux) -> (loss, terms)`.
    after_step: `(params, state, z, indices, rng) -> (params, state, metrics)`,
      z (N, encoder_width) this device's encoder vectors.
    Others: as the `Quantizer` fields.
  """
  schedule = temperature or (lambda step: jnp.float32(1.0))

  def apply(params, state, z, rng, step, train):
    del state
    batch, height, width, dim = z.shape
    z = z.reshape(-1, dim)
    tau = schedule(step) if train else 1.0
    z_q, aux = quantize(params, z, rng=rng, temperature=tau, train=train)
    return z_q.reshape(batch, height, width, -1), dict(aux, z=z)

  def loss_fn(params, state, images, reconstructions, z_q, aux):
    value, terms = loss(images, reconstructions, aux)
    return value, terms, (aux["z"], aux["indices"])

  def update(params, state, carry, step, rng):
    z, indices = carry
    counts = code_histogram(indices, codebook_size, axis_name=axis_name)
    metrics = code_metrics(counts, schedule(step))
    if after_step is not None:
      params, state, extra = after_step(params, state, z, indices, rng)
      metrics.update(extra)
    return params, state, metrics

  def eval_stats(images, reconstructions, aux, mask):
    return code_eval_stats(images, reconstructions, aux, mask, codebook_size, axis_name)

  def tokenize(params, z):
    _, aux = apply(params, None, z, None, 0, False)
    return aux["indices"].reshape(z.shape[:-1] + (1,))

  def detokenize(params, indices):
    return detokenize_flat(params, indices.reshape(-1)).reshape(indices.shape[:-1] + (-1,))

  return Quantizer(
      encoder_width=encoder_width, codebook_size=codebook_size, tokens_per_position=1,
      params_name="quantizer", init_params=init_params, init_state=init_state, apply=apply,
      loss=loss_fn, update=update, eval_stats=eval_stats, combine=CODE_COMBINE,
      summarize=metrics_lib.summarize_eval, progress=CODE_PROGRESS,
      encoder_points=encoder_points, set_codebook=set_codebook, tokenize=tokenize,
      detokenize=detokenize)


def codebook_fields(q: Any) -> list[Problem]:
  """Problems of the num_codes and latent_dim fields of a codebook quantizer."""
  return (need_int(q, "num_codes", 2, " (a codebook needs at least two codes)")
          + need_int(q, "latent_dim", 1))


def bits_for(num_codes: int) -> int:
  """log2 of the power of two nearest `num_codes` (at least 1): bits of one token."""
  return max(1, int(round(math.log2(num_codes))))


# ---------------------------------------------------- the config dataclasses' bases


@dataclasses.dataclass(frozen=True)
class ConfigFields:
  """Base of the quantizers' frozen config dataclasses: read by field name like a ConfigDict.

  A module's `Config` holds every field and default (`Config.sized(num_codes,
  latent_dim)` the defaults of one size); its `check` and `make` accept it or
  the run's `config.quantizer` alike. `renamed` maps a field name of an older
  config version to its name now (gmvq_jax.config_version refuses saved runs
  that use one).
  """

  renamed: ClassVar[Mapping[str, str]] = {}

  def __contains__(self, name: str) -> bool:
    return name in self.__dataclass_fields__  # pytype: disable=attribute-error

  def __getitem__(self, name: str) -> Any:
    return getattr(self, name)

  def get(self, name: str, default: Any = None) -> Any:
    return getattr(self, name) if name in self else default


@dataclasses.dataclass(frozen=True)
class CodebookConfig(ConfigFields):
  """A codebook of num_codes codewords of width latent_dim, sized as asked."""

  num_codes: int
  latent_dim: int

  @classmethod
  def sized(cls, num_codes: int, latent_dim: int) -> "CodebookConfig":
    return cls(num_codes=num_codes, latent_dim=latent_dim)


@dataclasses.dataclass(frozen=True)
class KMeansConfig(CodebookConfig):
  """A codebook in the encoder's space, which k-means of encoder outputs can initialise.

  kmeans_init: set the codebook to k-means of the first kmeans_batches
  training batches' encoder outputs before the first step
  (gmvq_jax.codebook_init), with kmeans_seeding and kmeans_iters Lloyd steps.
  """

  kmeans_init: bool = False
  kmeans_seeding: str = "kmeans++"
  kmeans_iters: int = 20
  kmeans_batches: int = 1


@dataclasses.dataclass(frozen=True)
class BitsConfig(ConfigFields):
  """Tokens of log2_codebook_size bits: 2^log2_codebook_size values each.

  `sized` spends log2 of num_codes (rounded) bits per token: the rate of a
  num_codes-code VQ with one token per position.
  """

  log2_codebook_size: int

  @classmethod
  def sized(cls, num_codes: int, latent_dim: int) -> "BitsConfig":
    del latent_dim
    return cls(log2_codebook_size=bits_for(num_codes))
