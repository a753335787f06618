"""GM-VQ: Gaussian-mixture vector quantization and the ALBO objective.

Pure functions on flattened `(N, L)` latents, as specified in docs/algorithms.md, "GM-VQ"
(GM-VQ paper, Eqs. 12-18). No training-loop code lives here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from gmvq_jax import metrics as metrics_lib
from gmvq_jax.quantizers import common
from gmvq_jax.quantizers import interface
from gmvq_jax.quantizers import kmeans
from gmvq_jax.quantizers import vq

OBJECTIVES = ("albo", "elbo")
LATENT_REGS = ("sampled", "aggregated")
VARIANCE_FLOOR = 1e-8

Array = jax.Array


def logits(zh: Array, weights: Array, codebook: Array) -> Array:
  """Mahalanobis-like logits of Eq. 16, in matrix-product form.

  l_c = -1/2 sum_i w_i (zh_i - M_ci)^2
      = -1/2 [ sum_i w_i zh_i^2 - 2 (w * zh) . M_c + w . (M_c * M_c) ]

  Two `(N, L) @ (L, C)` products; no `(N, C, L)` tensor is formed.

  Args:
    zh: (N, L) proxy latents.
    weights: (N, L) positive weights `w = softplus(r)` (Eq. 15).
    codebook: (C, L) Gaussian means `M`.

  Returns:
    (N, C) float32 logits.
  """
  zh = zh.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  hp = jax.lax.Precision.HIGHEST  # Cancellation in the expanded form needs full f32.
  self_term = jnp.sum(weights * zh * zh, axis=-1, keepdims=True)  # (N, 1)
  cross = jnp.dot(weights * zh, codebook.T, precision=hp)  # (N, C)
  code_term = jnp.dot(weights, (codebook * codebook).T, precision=hp)  # (N, C)
  return -0.5 * (self_term - 2.0 * cross + code_term)


def gumbel_softmax_straight_through(
    rng: Array, log_probs: Array, temperature: Array | float
) -> tuple[Array, Array]:
  """Straight-through Gumbel-softmax sample (Sec. 3.3.2).

  Args:
    rng: a typed key, or an (N,) array of keys (one per row, which makes the
      draw independent of how rows are split across devices).
    log_probs: (N, C) log q(c|x).
    temperature: scalar tau > 0.

  Returns:
    `(c_q, y)`: `c_q` (N, C) is one-hot in the forward pass and carries the
    gradient of the soft sample `y` (N, C).
  """
  noise = common.draw(jax.random.gumbel, rng, log_probs.shape)
  y = jax.nn.softmax((log_probs + noise) / temperature, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=y.dtype)
  # Parenthesised so that the forward value is exactly one-hot (y - sg(y) == 0).
  return hard + (y - jax.lax.stop_gradient(y)), y


def quantize(
    codebook: Array,
    zh: Array,
    raw_weights: Array | None = None,
    *,
    rng: Array | None = None,
    temperature: Array | float = 1.0,
    sigma_z2: float,
    train: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """GM-VQ forward pass.

  Training (`train=True`): Gumbel-softmax straight-through code `c_q`,
  `z_c = c_q @ M`, adaptive variance `s2 = (c_q . d) / (2 L sigma_z2)` with
  `d_c = ||zh - M_c||^2` (Eq. 18), and `z = z_c + sqrt(s2) * eps`.
  Evaluation (`train=False`): `c = argmax_c l_c`, `z = M_c`, no noise.

  Args:
    codebook: (C, L) Gaussian means.
    zh: (N, L) proxy latents; or the whole (N, 2L) encoder output `[zh, r]`
      when `raw_weights` is None (the `quantize(codebook, z)` interface
      shared by the quantizers).
    raw_weights: (N, L) raw weights `r`; `w = softplus(r)` (Eq. 15).
    rng: typed key or (N,) keys; required when `train`.
    temperature: Gumbel-softmax temperature.
    sigma_z2: the generative model's fixed latent variance sigma^2 (Eq. 18).
    train: sample (True) or take the noise-free argmax (False).

  Returns:
    `(z, aux)`: `z` (N, L) float32 latents for the decoder; `aux` holds
    `indices` (N,) int32, `probs` (N, C) q(c|x), `codes` (N, C) the code
    one-hot (straight-through when training), `code_vectors` (N, L) the
    chosen codewords `M_c`, `variance` (N,) s2 (zero at evaluation) and
    `log_probs` (N, C).
  """
  codebook = codebook.astype(jnp.float32)
  num_codes, dim = codebook.shape
  if raw_weights is None:
    if zh.shape[-1] != 2 * dim:
      raise ValueError(
          f"Without raw_weights, the encoder output must be (N, 2L) = (N, {2 * dim}) holding"
          f" [zh, r]; got {zh.shape}. Pass raw_weights=r separately for (N, L) latents.")
    zh, raw_weights = zh[..., :dim], zh[..., dim:]
  zh = zh.astype(jnp.float32)
  weights = jax.nn.softplus(raw_weights.astype(jnp.float32))  # Eq. 15
  logit = logits(zh, weights, codebook)  # Eq. 16
  log_probs = jax.nn.log_softmax(logit, axis=-1)  # Eq. 17
  probs = jnp.exp(log_probs)
  if train:
    if rng is None:
      raise ValueError("gmvq.quantize(train=True) needs `rng` for the Gumbel and Gaussian noise.")
    gumbel_rng, normal_rng = common.split_keys(rng)
    # `codes`, the straight-through one-hot, is for callers of aux only.
    codes, soft = gumbel_softmax_straight_through(gumbel_rng, log_probs, temperature)
    indices = jnp.argmax(soft, axis=-1)
    # c_q @ M and c_q . d of Eq. 18 with their straight-through gradients,
    # without the (N, C) one-hot and distance arrays autodiff would write.
    code_vectors, distance = straight_through_pick(soft, indices, codebook, zh)
    variance = distance / (dim * 2.0 * sigma_z2)  # Eq. 18
    eps = common.draw(jax.random.normal, normal_rng, zh.shape)
    # sqrt(s2) has an unbounded derivative where zh sits on its codeword (as
    # after k-means on the same batch), where the gradient's direction is
    # rounding noise; a variance floor of 1e-8 (std 1e-4) keeps it bounded.
    z = code_vectors + jnp.sqrt(variance + VARIANCE_FLOOR)[:, None] * eps
  else:
    indices = jnp.argmax(logit, axis=-1)
    codes = jax.nn.one_hot(indices, num_codes, dtype=jnp.float32)
    code_vectors = codebook[indices]
    variance = jnp.zeros(zh.shape[:1], jnp.float32)
    z = code_vectors
  aux = dict(
      indices=indices.astype(jnp.int32),
      probs=probs,
      log_probs=log_probs,
      codes=codes,
      code_vectors=code_vectors,
      variance=variance,
  )
  return z, aux


@jax.custom_vjp
def straight_through_pick(soft: Array, indices: Array, codebook: Array,
                          zh: Array) -> tuple[Array, Array]:
  """`(c_q @ M, c_q . d)` for the straight-through code c_q = onehot + soft - sg(soft).

  With d_c = ||zh - M_c||^2 (Eq. 18). Forward values: the chosen codeword
  M_k and its distance ||zh - M_k||^2, computed directly (the expanded
  matmul form of d loses the small distance to float32 cancellation), and 0
  where that distance is below float32 resolution (as when k-means put a
  codeword on this very vector, where its gradient would point in a
  rounding-noise direction amplified by d sqrt(s2) / d s2).

  Gradients, those of the straight-through expression with d held constant:
    d/d soft = g_z @ M^T + g_s d = (g_z - 2 g_s zh) @ M^T + g_s (|zh|^2 + |M_c|^2),
    d/d M    = sum over the vectors that chose each code of g_z - 2 g_s (zh - M_k)
               (a scatter-add on the CPU; a one-hot product elsewhere, deterministic
               on GPUs),
    d/d zh   = 2 g_s (zh - M_k),
  one (N, L) @ (L, C) product in all, where autodiff of the straight-through
  expression writes the one-hot and d as (N, C) arrays and multiplies by them.

  Args:
    soft: (N, C) the relaxed sample y (its value is not used; it carries the gradient).
    indices: (N,) int the chosen codes k (argmax of y).
    codebook: (C, L) M.
    zh: (N, L) proxy latents.

  Returns:
    (N, L) chosen codewords and (N,) squared distances to them.
  """
  return _pick_forward(indices, codebook, zh)[:2]


def _pick_forward(indices, codebook, zh):
  chosen = codebook[indices]
  distance = jnp.sum(jnp.square(zh - chosen), axis=-1)
  scale = jnp.sum(jnp.square(zh), axis=-1) + jnp.sum(jnp.square(chosen), axis=-1)
  resolved = distance > 1e-12 * scale
  return chosen, jnp.where(resolved, distance, 0.0), resolved


def _pick_fwd(soft, indices, codebook, zh):
  del soft
  chosen, distance, resolved = _pick_forward(indices, codebook, zh)
  return (chosen, distance), (indices, codebook, zh, chosen, resolved)


def _pick_bwd(residuals, grads):
  indices, codebook, zh, chosen, resolved = residuals
  grad_vectors, grad_distance = grads  # (N, L), (N,)
  hp = jax.lax.Precision.HIGHEST
  # g_z @ M^T + g_s d with d_c = |zh|^2 - 2 zh . M_c + |M_c|^2, folded into one product.
  grad_soft = (jnp.dot(grad_vectors - 2.0 * grad_distance[:, None] * zh, codebook.T, precision=hp)
               + grad_distance[:, None] * (jnp.sum(jnp.square(zh), axis=-1, keepdims=True)
                                           + jnp.sum(jnp.square(codebook), axis=-1)))
  grad_direct = jnp.where(resolved, 2.0 * grad_distance, 0.0)[:, None] * (zh - chosen)
  grad_chosen = grad_vectors - grad_direct
  if jax.default_backend() == "cpu":  # A sequential scatter-add: cheap and deterministic.
    grad_codebook = jax.ops.segment_sum(grad_chosen, indices, num_segments=codebook.shape[0])
  else:  # GPU scatter-adds use atomics (run-to-run rounding); the one-hot product does not.
    one_hot = jax.nn.one_hot(indices, codebook.shape[0], dtype=grad_chosen.dtype)
    grad_codebook = jnp.dot(one_hot.T, grad_chosen, precision=hp)
  return grad_soft, None, grad_codebook, grad_direct


straight_through_pick.defvjp(_pick_fwd, _pick_bwd)


def kl_to_uniform(probs: Array, log_probs: Array | None = None) -> Array:
  """KL(p || Uniform(C)) = sum_c p_c log p_c + log C along the last axis.

  Probabilities that underflow to 0 contribute 0 with a finite gradient
  (log p is floored at log 1e-30), where `xlogy` would give 0 * inf = NaN.
  """
  num_codes = probs.shape[-1]
  if log_probs is None:
    log_probs = jnp.log(jnp.maximum(probs, 1e-30))
  return jnp.sum(probs * log_probs, axis=-1) + math.log(num_codes)


def kl_agg(qbar: Array) -> Array:
  """The ALBO's KL term: KL(qbar || Uniform(C)), 0 for a uniform qbar, log C for a one-hot one.

  Args:
    qbar: (C,) aggregated posterior, the mean of q(c|x) over the global batch.
  """
  return kl_to_uniform(qbar)


def albo_loss(
    images: Array,
    reconstructions: Array,
    z: Array,
    aux: dict[str, Array],
    codebook: Array,
    *,
    beta: float,
    gamma: float,
    objective: str,
    latent_reg: str,
    axis_name: Any = None,
) -> tuple[Array, dict[str, Array]]:
  """The GM-VQ loss (Eqs. 13-14) on the paper's scale, per image.

      loss = recon_loss + gamma * (latent_reg + beta * P * kl)

  `recon_loss` is the squared error summed over one image's pixels and
  channels, `latent_reg` the sum of ||z - M_c||^2 over its P latent vectors,
  both averaged over images; so gamma = sigma_x^2 / sigma_z^2 means the same
  thing whatever the image and latent sizes. `qbar` is the mean of q(c|x)
  over every vector of the GLOBAL batch: with `axis_name` it is
  `lax.pmean`-ed across devices, so one device with batch B and k devices
  with B/k each see the same loss.

  Args:
    images: (B, H, W, 3) targets in [0, 1].
    reconstructions: (B, H, W, 3) decoder outputs.
    z: (N, L) latents fed to the decoder.
    aux: the `aux` dict of `quantize(train=True)`.
    codebook: (C, L) Gaussian means.
    beta: weight of the KL term (beta > 1 is "GM-VQ + Entropy").
    gamma: weight of the whole regulariser.
    objective: 'albo' (KL of the aggregated posterior `qbar`) or 'elbo' (mean
      over vectors of KL(q(c|x) || Uniform)).
    latent_reg: 'sampled' (||z - M_c||^2 for the sampled c) or 'aggregated'
      (E_{qbar(c)} ||z - M_c||^2, the literal reading; ablation only).
    axis_name: the named batch axis to reduce over, or None on one device.

  Returns:
    `(loss, terms)`, float32 scalars; terms: loss, recon_loss (per image),
    recon (the per-pixel mean squared error, for logs), latent_reg (per
    image), kl (per latent vector: KL(qbar || U) for 'albo'), and
    qbar_perplexity.
  """
  if objective not in OBJECTIVES:
    raise ValueError(f"objective={objective!r}; allowed: {OBJECTIVES}.")
  if latent_reg not in LATENT_REGS:
    raise ValueError(f"latent_reg={latent_reg!r}; allowed: {LATENT_REGS}.")
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  num_images = images.shape[0]
  if z.shape[0] % num_images:
    raise ValueError(f"{z.shape[0]} latent vectors do not split evenly over {num_images} images.")
  positions = z.shape[0] // num_images  # P = h * w latent vectors per image.
  squared = jnp.square(images.astype(jnp.float32) - reconstructions.astype(jnp.float32))
  recon_loss = jnp.sum(squared) / num_images  # Eq. 13: ||x - D(z)||^2 of a whole image.
  probs = aux["probs"]
  qbar = common.pmean(jnp.mean(probs, axis=0), axis_name)  # Eq. 12, global batch
  if latent_reg == "sampled":
    reg = jnp.sum(jnp.square(z - aux["code_vectors"])) / num_images
  else:
    distances = common.squared_distances(z, codebook)  # (N, C)
    reg = jnp.sum(jnp.dot(distances, qbar)) / num_images
  if objective == "albo":
    kl = kl_agg(qbar)
  else:
    kl = jnp.mean(kl_to_uniform(probs, aux["log_probs"]))
  loss = recon_loss + gamma * (reg + beta * positions * kl)  # Eq. 13-14, per image.
  entropy = math.log(probs.shape[-1]) - kl_to_uniform(jax.lax.stop_gradient(qbar))
  terms = dict(
      loss=loss,
      recon_loss=recon_loss,
      recon=jnp.mean(squared),
      latent_reg=reg,
      kl=kl,
      qbar_perplexity=jnp.exp(entropy),
  )
  return loss, terms


def temperature_schedule(
    step: Array | int,
    *,
    total_steps: int,
    tau_0: float,
    tau_min: float,
    anneal_fraction: float,
) -> Array:
  """tau(t) = max(tau_min, tau_0 exp(-r t)), reaching tau_min at anneal_fraction * total_steps."""
  anneal_steps = max(anneal_fraction * total_steps, 1.0)
  rate = math.log(tau_0 / tau_min) / anneal_steps
  step = jnp.asarray(step, jnp.float32)
  return jnp.maximum(tau_min, tau_0 * jnp.exp(-rate * step))


# ------------------------------------------------------------ the Quantizer


@dataclasses.dataclass(frozen=True)
class Config(interface.KMeansConfig):
  """GM-VQ's fields and defaults: the single home of each."""

  kmeans_init: bool = True  # As the GM-VQ paper initialises every codebook (Sec. 5.1).
  beta: float = 1.0
  # Chosen on validation data with beta = 1, as the GM-VQ paper tunes it:
  # lowest mean validation MSE of 7 values x 3 seeds (experiments/gamma_sweep.py).
  gamma: float = 0.001
  sigma_z2: float = 0.5  # beta = 2 sigma_z^2 in the paper's derivation (App. A.3).
  objective: str = "albo"
  latent_reg: str = "sampled"
  tau_0: float = 2.0
  tau_min: float = 0.1
  anneal_fraction: float = 0.8
  kmeans_init_step: int = 0  # > 0: k-means again on the global batch of that step.
  # > 0: codes unchosen this many steps move onto the data. 20 won the
  # stranded-code ablation on validation data (experiments/dead_codes.py).
  recenter_after: int = 20


def check(q: Any, num_steps: int) -> list[interface.Problem]:
  """Problems of the config fields as (field, value, what is allowed)."""
  need_number = interface.need_number
  problems = (interface.codebook_fields(q) + need_number(q, "beta", 0.0)
              + need_number(q, "gamma", 0.0) + need_number(q, "sigma_z2", 0.0, strict=True)
              + interface.need_choice(q, "objective", OBJECTIVES)
              + interface.need_choice(q, "latent_reg", LATENT_REGS))
  taus = need_number(q, "tau_min", 0.0, strict=True) + need_number(q, "tau_0", 0.0, strict=True)
  problems += taus
  if not taus and q.tau_0 < q.tau_min:
    problems.append(("quantizer.tau_0", q.tau_0, f"must be >= quantizer.tau_min={q.tau_min}"))
  fraction = need_number(q, "anneal_fraction", 0.0, strict=True)
  if not fraction and q.anneal_fraction > 1.0:
    fraction = [("quantizer.anneal_fraction", q.anneal_fraction, "must be in (0, 1]")]
  problems += fraction
  for field in ("kmeans_init_step", "recenter_after"):  # Absent in configs of older versions.
    if field in q:
      problems += interface.need_int(q, field, 0)
  step = q.get("kmeans_init_step", 0)
  if isinstance(step, int) and step >= num_steps:
    problems.append(("quantizer.kmeans_init_step", step,
                     f"must be smaller than num_steps={num_steps} (0: only at init)"))
  return problems


def make(q: Any, *, num_steps: int, axis_name: Any = None) -> interface.Quantizer:
  """GM-VQ with the ALBO (or ELBO) objective as a `Quantizer`; its codebook is `codebook`."""
  dim = q.latent_dim

  def schedule(step):
    return temperature_schedule(step, total_steps=num_steps, tau_0=q.tau_0, tau_min=q.tau_min,
                                anneal_fraction=q.anneal_fraction)

  def apply(codebook, state, z, rng, step, train):
    del state
    zh, raw_weights = z[..., :dim], z[..., dim:]  # Eq. 15: the encoder emits (zh, r).
    batch, height, width, _ = zh.shape
    z_q, aux = quantize(codebook, zh.reshape(-1, dim), raw_weights.reshape(-1, dim), rng=rng,
                        temperature=schedule(step) if train else 1.0, sigma_z2=q.sigma_z2,
                        train=train)
    return z_q.reshape(batch, height, width, dim), dict(aux, zh=zh.reshape(-1, dim), z=z_q)

  def loss(codebook, state, images, reconstructions, z_q, aux):
    value, terms = albo_loss(images, reconstructions, aux["z"], aux, codebook, beta=q.beta,
                             gamma=q.gamma, objective=q.objective, latent_reg=q.latent_reg,
                             axis_name=axis_name)
    max_probs = jnp.max(jax.lax.stop_gradient(aux["probs"]), axis=0)  # (C,)
    return value, terms, (max_probs, aux["zh"], aux["indices"])

  def update(codebook, state, carry, step, rng):
    max_probs, zh, indices = carry
    code_counts = interface.code_histogram(indices, q.num_codes, axis_name=axis_name)
    metrics = interface.code_metrics(code_counts, schedule(step))
    metrics["batch_reachable_codes"] = metrics_lib.reachable_codes(
        common.pmax(max_probs, axis_name))
    codebook, state, extra = remedies(q, codebook, state, zh, indices, step, rng,
                                      axis_name=axis_name)
    metrics.update(extra)
    return codebook, state, metrics

  def tokenize(codebook, z):
    _, aux = apply(codebook, None, z, None, 0, False)
    return aux["indices"].reshape(z.shape[:-1] + (1,))

  return interface.Quantizer(
      encoder_width=2 * dim, codebook_size=q.num_codes, tokens_per_position=1,
      params_name="codebook",
      init_params=lambda rng: jax.random.normal(rng, (q.num_codes, dim), jnp.float32),
      init_state=lambda: (vq.init_replace_state(q.num_codes) if q.get("recenter_after", 0)
                          else None),
      apply=apply, loss=loss, update=update,
      eval_stats=lambda images, reconstructions, aux, mask: interface.code_eval_stats(
          images, reconstructions, aux, mask, q.num_codes, axis_name),
      combine=interface.CODE_COMBINE, summarize=metrics_lib.summarize_eval,
      progress=("loss", "recon", "kl", "qbar_perplexity"),
      encoder_points=lambda z: interface.flat(z[..., :dim]),
      set_codebook=lambda codebook, centers: centers, tokenize=tokenize,
      detokenize=lambda codebook, indices: codebook.astype(jnp.float32)[indices[..., 0]])


def global_kmeans(rng: Array, points: Array, *, num_clusters: int, num_iters: int,
                  seeding: str, axis_name: Any = None) -> Array:
  """k-means of the GLOBAL batch's points: the same centers on every device.

  Args:
    rng: a key identical on every device.
    points: (N_local, L) this device's points.
    axis_name: the named batch axis (None on one device); points are
      all-gathered in global row order, so any split gives the same result.

  Returns:
    (num_clusters, L) float32 centers.
  """
  if axis_name is not None:
    points = jax.lax.all_gather(points, axis_name, tiled=True)
  return kmeans.kmeans(rng, jax.lax.stop_gradient(points), num_clusters=num_clusters,
                       num_iters=num_iters, seeding=seeding)


def remedies(q: Any, codebook: Array, state: Any, zh: Array, indices: Array, step: Array,
             rng: Array, *, axis_name: Any = None) -> tuple[Array, Any, dict[str, Array]]:
  """GM-VQ's dead-code remedies after the optimizer step of step `step` (0-based).

  `q.kmeans_init_step` > 0 re-runs k-means on the global batch after that
  step; `q.recenter_after` > 0 moves codes no vector has chosen for that many
  steps onto encoder vectors of the global batch.

  Args:
    codebook: (C, L) after the optimizer update.
    state: `vq.ReplaceState` when `recenter_after`, else None.
    zh: (N, L) this device's proxy latents of the step.
    indices: (N,) the sampled codes.
    rng: a key identical on every device.

  Returns:
    `(codebook, state, metrics)`, identical on every device.
  """
  extra = {}
  zh = jax.lax.stop_gradient(zh.astype(jnp.float32))
  if q.get("kmeans_init_step", 0):
    kmeans_rng, rng = jax.random.split(rng)
    rerun = functools.partial(global_kmeans, kmeans_rng, zh, num_clusters=q.num_codes,
                              num_iters=q.kmeans_iters, seeding=q.kmeans_seeding,
                              axis_name=axis_name)
    codebook = jax.lax.cond(step + 1 == q.kmeans_init_step, lambda c: rerun(), lambda c: c,
                            codebook)
  if q.get("recenter_after", 0):
    codebook, state, moved = vq.replace_dead_codes(
        codebook, state, zh, indices, rng, replace_after=q.recenter_after, axis_name=axis_name)
    extra["codes_recentred"] = moved.astype(jnp.float32)
  return codebook, state, extra
