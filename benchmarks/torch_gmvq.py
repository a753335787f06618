"""A PyTorch port of the GM-VQ train step, the reference in benchmarks/train_step.py.

Same network (gmvq_jax/models/networks.py), quantizer and ALBO loss
(gmvq_jax/quantizers/gmvq.py, docs/algorithms.md, "GM-VQ") and AdamW step; timing only.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping, Sequence

import numpy as np

import torch
from torch import nn
import torch.nn.functional as F

VARIANCE_FLOOR = 1e-8  # As gmvq.VARIANCE_FLOOR.


def _norm(channels: int) -> nn.BatchNorm2d:
  # Flax momentum 0.9 keeps 0.9 of the old statistics; torch's 0.1 is the new share.
  return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class ResidualBlock(nn.Module):
  """ReLU, conv 3x3, BN, ReLU, conv 1x1, BN, skip."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    self.norm3 = _norm(channels)
    self.conv1 = nn.Conv2d(channels, channels, 1, bias=False)
    self.norm1 = _norm(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.norm3(self.conv3(F.relu(x)))
    h = self.norm1(self.conv1(F.relu(h)))
    return x + h


class Encoder(nn.Module):
  """Images (B, 3, H, W) -> (B, out_channels, H/4, W/4)."""

  def __init__(self, out_channels: int, channels: Sequence[int] = (32, 64), num_res_blocks: int = 2):
    super().__init__()
    layers: list[nn.Module] = []
    width_in = 3
    for width in channels:  # Flax 'SAME' for a 4x4 stride-2 kernel pads 1 on each side.
      layers += [nn.Conv2d(width_in, width, 4, stride=2, padding=1, bias=False), _norm(width), nn.ReLU()]
      width_in = width
    layers += [nn.Conv2d(width_in, width_in, 3, padding=1, bias=False), _norm(width_in), nn.ReLU()]
    layers += [ResidualBlock(width_in) for _ in range(num_res_blocks)]
    layers += [nn.ReLU(), nn.Conv2d(width_in, out_channels, 1)]
    self.layers = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layers(x)


class Decoder(nn.Module):
  """Latents (B, L, h, w) -> images (B, 3, 4h, 4w) through a sigmoid."""

  def __init__(self, latent_dim: int, channels: Sequence[int] = (32, 64), num_res_blocks: int = 2):
    super().__init__()
    width = channels[-1]
    layers: list[nn.Module] = [nn.Conv2d(latent_dim, width, 3, padding=1, bias=False), _norm(width)]
    layers += [ResidualBlock(width) for _ in range(num_res_blocks)]
    layers += [
        nn.ReLU(),
        nn.ConvTranspose2d(width, channels[0], 4, stride=2, padding=1, bias=False),
        _norm(channels[0]),
        nn.ReLU(),
        nn.ConvTranspose2d(channels[0], 3, 4, stride=2, padding=1),
        nn.Sigmoid(),
    ]
    self.layers = nn.Sequential(*layers)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    return self.layers(z)


def squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
  """(N, C) ||x_n - M_c||^2 in matrix-product form, clipped at 0."""
  d = (x * x).sum(-1, keepdim=True) - 2.0 * (x @ codebook.T) + (codebook * codebook).sum(-1)
  return d.clamp_min(0.0)


def quantize_train(
    codebook: torch.Tensor, zh: torch.Tensor, raw_weights: torch.Tensor,
    temperature: float | torch.Tensor,
    sigma_z2: float, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
  """`gmvq.quantize(train=True)`: Gumbel-softmax straight-through, Eq. 15-18.

  Args:
    codebook: (C, L); zh, raw_weights: (N, L) float32.

  Returns:
    `(z, aux)` as in gmvq.quantize: z (N, L); aux has probs, codes,
    code_vectors, variance.
  """
  dim = codebook.shape[1]
  weights = F.softplus(raw_weights)  # Eq. 15
  self_term = (weights * zh * zh).sum(-1, keepdim=True)  # Eq. 16, two (N, L) @ (L, C) products.
  logit = -0.5 * (self_term - 2.0 * ((weights * zh) @ codebook.T) + weights @ (codebook * codebook).T)
  log_probs = F.log_softmax(logit, dim=-1)  # Eq. 17
  probs = log_probs.exp()
  # Gumbel(0, 1) = -log(Exponential(1)).
  gumbel = -torch.empty_like(log_probs).exponential_(generator=generator).log()
  soft = F.softmax((log_probs + gumbel) / temperature, dim=-1)
  hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
  codes = hard + soft - soft.detach()
  code_vectors = codes @ codebook
  # gmvq.straight_through_pick: exact value for the chosen code, Eq. 18's gradient.
  chosen = hard @ codebook
  direct = (zh - chosen).square().sum(-1)
  distances = squared_distances(zh, codebook).detach()
  variance = (direct + ((codes - hard) * distances).sum(-1)) / (dim * 2.0 * sigma_z2)  # Eq. 18
  eps = torch.randn(zh.shape, generator=generator, device=zh.device, dtype=zh.dtype)
  z = code_vectors + (variance + VARIANCE_FLOOR).sqrt()[:, None] * eps
  return z, dict(probs=probs, codes=codes, code_vectors=code_vectors, variance=variance)


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
  return (probs * probs.clamp_min(1e-30).log()).sum(-1) + math.log(probs.shape[-1])


def albo_loss(
    images: torch.Tensor, reconstructions: torch.Tensor, z: torch.Tensor, aux: dict[str, torch.Tensor],
    *, beta: float, gamma: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
  """`gmvq.albo_loss` with objective='albo', latent_reg='sampled' (Eq. 13-14), per image."""
  num_images = images.shape[0]
  positions = z.shape[0] // num_images
  squared = (images - reconstructions).square()
  recon_loss = squared.sum() / num_images
  probs = aux["probs"]
  qbar = probs.mean(0)
  reg = (z - aux["code_vectors"]).square().sum() / num_images
  kl = kl_to_uniform(qbar)
  loss = recon_loss + gamma * (reg + beta * positions * kl)
  entropy = math.log(probs.shape[-1]) - kl_to_uniform(qbar.detach())
  return loss, dict(loss=loss, recon_loss=recon_loss, recon=squared.mean(), latent_reg=reg, kl=kl,
                    qbar_perplexity=entropy.exp())


class GMVQAutoencoder(nn.Module):
  """Encoder -> GM-VQ -> decoder; the codebook (C, L) is a parameter."""

  def __init__(self, num_codes: int, latent_dim: int, sigma_z2: float,
               channels: Sequence[int] = (32, 64), num_res_blocks: int = 2):
    super().__init__()
    self.latent_dim = latent_dim
    self.sigma_z2 = sigma_z2
    self.encoder = Encoder(2 * latent_dim, channels, num_res_blocks)
    self.decoder = Decoder(latent_dim, channels, num_res_blocks)
    self.codebook = nn.Parameter(torch.randn(num_codes, latent_dim))

  def forward(self, images: torch.Tensor, temperature: float | torch.Tensor, generator: torch.Generator | None = None):
    """Images (B, 3, H, W) -> reconstructions, z (N, L), aux; N = B h w, rows (b, y, x) as in JAX."""
    out = self.encoder(images)
    batch, _, height, width = out.shape
    out = out.permute(0, 2, 3, 1).reshape(-1, 2 * self.latent_dim)
    zh, raw_weights = out[:, : self.latent_dim], out[:, self.latent_dim:]
    z, aux = quantize_train(self.codebook, zh, raw_weights, temperature, self.sigma_z2, generator)
    grid = z.reshape(batch, height, width, self.latent_dim).permute(0, 3, 1, 2)
    return self.decoder(grid), z, aux


def learning_rate(step: int, *, peak_lr: float, init_lr_fraction: float, end_lr_fraction: float,
                  warmup_steps: int, num_steps: int) -> float:
  """optax.warmup_cosine_decay_schedule, as train_lib.learning_rate_schedule builds it."""
  init, end = init_lr_fraction * peak_lr, end_lr_fraction * peak_lr
  if step < warmup_steps:
    return init + (peak_lr - init) * step / max(warmup_steps, 1)
  progress = min((step - warmup_steps) / max(num_steps - warmup_steps, 1), 1.0)
  return end + (peak_lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def temperature(step: int, *, total_steps: int, tau_0: float, tau_min: float, anneal_fraction: float) -> float:
  """gmvq.temperature_schedule on the host."""
  rate = math.log(tau_0 / tau_min) / max(anneal_fraction * total_steps, 1.0)
  return max(tau_min, tau_0 * math.exp(-rate * step))


class Trainer:
  """Model, AdamW and one train step, configured from a gmvq_jax ConfigDict.

  Args:
    config: e.g. `configs.gmvq_cifar10.get_config()`; only GM-VQ with
      objective='albo', latent_reg='sampled' and float32 is ported.
    device: torch device.
    compile: wrap the forward + loss in `torch.compile`.
    adamw_impl: 'default' (torch's choice: a per-tensor loop on CPU, foreach
      on CUDA), 'foreach' or 'fused'.
    flax_params: start from these gmvq_jax parameters (see load_flax_params);
      torch's own initialisation when None.
    seed: torch's initialisation and noise.
  """

  def __init__(self, config: Any, device: torch.device, *, compile: bool = False,
               adamw_impl: str = "default", flax_params: Mapping[str, Any] | None = None,
               seed: int = 0):
    q, opt = config.quantizer, config.optimizer
    if q.objective != "albo" or q.latent_reg != "sampled" or config.dtype != "float32":
      raise NotImplementedError("The torch port covers objective='albo', latent_reg='sampled', float32.")
    torch.manual_seed(seed)
    self.config = config
    self.device = device
    self.model = GMVQAutoencoder(q.num_codes, q.latent_dim, q.sigma_z2, tuple(config.model.channels),
                                 config.model.num_res_blocks)
    if flax_params is not None:
      load_flax_params(self.model, flax_params)
    self.model.to(device)
    self.model.train()
    kwargs = {} if adamw_impl == "default" else {adamw_impl: True}
    self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opt.peak_lr, betas=(opt.b1, opt.b2),
                                       eps=1e-8, weight_decay=opt.weight_decay, **kwargs)
    self.generator = torch.Generator(device=device).manual_seed(seed)
    self.step_count = 0
    self._loss_fn = self._forward_loss
    if compile:
      # torch 2.13's AOTAutograd cache corrupts the view metadata of aliased
      # outputs (pytorch/pytorch#185630: garbage shapes, or a segfault, from the
      # second call on); without the cache torch.compile runs.
      torch._functorch.config.enable_autograd_cache = False
      self._loss_fn = torch.compile(self._forward_loss)

  def _forward_loss(self, images: torch.Tensor, tau: torch.Tensor):
    reconstructions, z, aux = self.model(images, tau, self.generator)
    q = self.config.quantizer
    loss, terms = albo_loss(images, reconstructions, z, aux, beta=q.beta, gamma=q.gamma)
    return loss, terms, aux["codes"].detach()

  def step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training step on (B, 3, H, W) images; metrics stay on the device (no sync)."""
    config, q, opt = self.config, self.config.quantizer, self.config.optimizer
    tau = temperature(self.step_count, total_steps=config.num_steps, tau_0=q.tau_0, tau_min=q.tau_min,
                      anneal_fraction=q.anneal_fraction)
    lr = learning_rate(self.step_count, peak_lr=opt.peak_lr, init_lr_fraction=opt.init_lr_fraction,
                       end_lr_fraction=opt.end_lr_fraction, warmup_steps=opt.warmup_steps,
                       num_steps=config.num_steps)
    for group in self.optimizer.param_groups:
      group["lr"] = lr
    self.optimizer.zero_grad(set_to_none=True)
    # A tensor, not a float: torch.compile would recompile for each new value.
    loss, terms, codes = self._loss_fn(images, torch.tensor(tau, device=self.device))
    loss.backward()
    grads = [p.grad for p in self.model.parameters() if p.grad is not None]
    if opt.grad_clip > 0:
      grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), opt.grad_clip)
    else:
      grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    self.optimizer.step()
    self.step_count += 1
    terms = {name: value.detach() for name, value in terms.items()}
    terms.update(batch_code_usage=(codes.sum(0) > 0).float().mean(), grad_norm=grad_norm)
    return terms


# ------------------------------------------------- weights from the flax model

# Flax names a module's children <Class>_<index>, counting each class apart.
_FLAX_NAMES = {nn.Conv2d: "Conv", nn.ConvTranspose2d: "Upsample2x", nn.BatchNorm2d: "_Norm",
               ResidualBlock: "ResidualBlock"}


def load_flax_params(model: GMVQAutoencoder, params: Mapping[str, Any]) -> None:
  """Copies the flax `GMVQAutoencoder` parameters into `model`, so both start alike.

  Looks children up by name, not by position: a flax params dict that went
  through a jax tree operation has its keys sorted.
  """
  with torch.no_grad():
    model.codebook.copy_(_tensor(params["codebook"]))
    _load_children(model.encoder.layers, params["encoder"])
    _load_children(model.decoder.layers, params["decoder"])


def _tensor(array: Any) -> torch.Tensor:
  return torch.from_numpy(np.array(array, dtype=np.float32))


def _load_children(layers: Sequence[nn.Module], tree: Mapping[str, Any]) -> None:
  counts: collections.Counter[str] = collections.Counter()
  for layer in layers:
    kind = _FLAX_NAMES.get(type(layer))
    if kind is None:  # ReLU, Sigmoid: no parameters.
      continue
    _load_layer(layer, tree[f"{kind}_{counts[kind]}"])
    counts[kind] += 1


def _load_layer(layer: nn.Module, tree: Mapping[str, Any]) -> None:
  if isinstance(layer, ResidualBlock):
    _load_children([layer.conv3, layer.norm3, layer.conv1, layer.norm1], tree)
    return
  if isinstance(layer, nn.BatchNorm2d):
    layer.weight.copy_(_tensor(tree["BatchNorm_0"]["scale"]))
    layer.bias.copy_(_tensor(tree["BatchNorm_0"]["bias"]))
    return
  kernel = np.asarray(tree["kernel"])  # (kh, kw, in, out)
  if isinstance(layer, nn.ConvTranspose2d):
    # Flax's ConvTranspose (transpose_kernel=False) does not flip the kernel; torch's does.
    layer.weight.copy_(_tensor(np.flip(kernel, (0, 1)).transpose(2, 3, 0, 1)))  # (in, out, kh, kw)
  else:
    layer.weight.copy_(_tensor(kernel.transpose(3, 2, 0, 1)))  # (out, in, kh, kw)
  if layer.bias is not None:
    layer.bias.copy_(_tensor(tree["bias"]))
