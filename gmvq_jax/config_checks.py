"""Validates a training config before anything is compiled.

Every error names the offending field, its value, and what is allowed, so a
bad `--config.FIELD=VALUE` fails in milliseconds instead of after a compile.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import ml_collections

from gmvq_jax import codebook_init
from gmvq_jax import config_version
from gmvq_jax import data
from gmvq_jax import errors
from gmvq_jax import faults
from gmvq_jax import methods
from gmvq_jax import parallel
from gmvq_jax.data import embedded
from gmvq_jax.models import conv
from gmvq_jax.models import networks
from gmvq_jax.quantizers import interface

# JAX PRNG implementations a run may draw its noise with (config.prng_impl).
# threefry2x32 (the default) under every parallelism; philox4x32 under 'jit'
# only (faster on CPU). rbg and unsafe_rbg are not offered: their per-example
# keys gave different noise on 1 and 4 devices.
PRNG_IMPLS = ("threefry2x32", "philox4x32")

METHODS = methods.NAMES
DTYPES = ("float32", "bfloat16")


class ConfigError(errors.UserError, ValueError):
  """A config field has a value the library cannot run with."""


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    if part not in node:
      raise ConfigError(f"config.{field} is missing; see configs/gmvq_demo.py for the full set of fields.")
    node = node[part]
  return node


def _require(ok: bool, field: str, value: Any, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}.")


def _check(config, field: str, need: Callable[..., list], *args: Any) -> Any:
  """config.<field> when `need` (one of interface's need_*) finds no problem; else ConfigError."""
  value = _get(config, field)  # Raises: the field is missing.
  parent, _, name = field.rpartition(".")
  node = _get(config, parent) if parent else config
  for problem_field, problem_value, allowed in need(node, name, *args,
                                                    prefix=f"{parent}." if parent else ""):
    _require(False, problem_field, problem_value, allowed)
  return value


def _choice(config, field: str, choices: Iterable[Any]) -> None:
  _check(config, field, interface.need_choice, tuple(choices))


def _int_at_least(config, field: str, minimum: int, why: str = "") -> int:
  return _check(config, field, interface.need_int, minimum, why)


def _number(config, field: str, *, minimum: float, strict: bool = False) -> float:
  return _check(config, field, interface.need_number, minimum, strict)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises ConfigError for the first invalid field of a training config.

  Args:
    config: the run's ConfigDict (see configs/).
    num_devices: devices the global batch will be split over.
  """
  _choice(config, "config_version", (config_version.CURRENT,))
  _choice(config, "method", METHODS)
  _choice(config, "dataset", data.DATASET_NAMES)
  _choice(config, "parallelism", parallel.MODES)
  if jax.process_count() > 1:
    _require(config.parallelism == "shard_map", "parallelism", config.parallelism,
             f"this run has {jax.process_count()} processes and only 'shard_map' spans"
             " processes; use --config.parallelism=shard_map")
  _choice(config, "nonfinite", faults.NONFINITE_MODES)
  _choice(config, "prng_impl", PRNG_IMPLS)
  _require(config.prng_impl != "philox4x32" or config.parallelism == "jit", "prng_impl",
           config.prng_impl, f"philox4x32 needs --config.parallelism='jit' (one device): JAX"
           f" cannot compile it under {config.parallelism!r}; use 'threefry2x32' there")
  _choice(config, "conv_impl", conv.IMPLS)
  _choice(config, "dtype", DTYPES)
  _require("dtype" not in config.model, "model.dtype", config.model.get("dtype"),
           "the precision is set by config.dtype (model.dtype is only read from configs saved"
           " by older versions); use --config.dtype")

  channels = _get(config, "model.channels")
  _require(isinstance(channels, (tuple, list)) and len(channels) >= 1
           and all(isinstance(c, int) and c >= 1 for c in channels), "model.channels", channels,
           "must be a non-empty tuple of positive ints (one stride-2 stage each)")
  factor = networks.downsampling_factor(channels)
  image_size = _int_at_least(config, "image_size", factor)
  if config.dataset == "embedded":
    _require(image_size >= embedded.MIN_IMAGE_SIZE, "image_size", image_size,
             f"crops of the embedded photographs need image_size >= {embedded.MIN_IMAGE_SIZE}")
  _require(image_size % factor == 0, "image_size", image_size,
           f"must divide by {factor}, the encoder's downsampling factor ({len(channels)}"
           f" stride-2 convolutions, one per model.channels entry); e.g."
           f" {max(factor, image_size - image_size % factor)}")

  batch_size = _int_at_least(config, "batch_size", 1)
  if config.parallelism != "jit" and num_devices > 1:
    _require(batch_size % num_devices == 0, "batch_size", batch_size,
             f"the global batch must divide by the {num_devices} devices; use a multiple"
             f" of {num_devices} or --config.parallelism=jit for one device")
  _int_at_least(config, "eval_batch_size", 1)
  num_steps = _int_at_least(config, "num_steps", 1)
  _int_at_least(config, "log_every_steps", 1)
  _int_at_least(config, "checkpoint_every_steps", 1)
  _int_at_least(config, "eval_every_steps", 0, " (0 evaluates only at the end)")
  _int_at_least(config, "seed", 0)
  if "input_workers" in config:  # Absent in configs saved by older versions.
    _int_at_least(config, "input_workers", 1)

  _int_at_least(config, "model.num_res_blocks", 0)

  for check in (methods.check, codebook_init.check):  # The fields before k-means of them.
    for field, value, allowed in check(config):
      if allowed is None:
        _get(config, field)  # Raises: the field is missing.
      _require(False, field, value, allowed)

  _number(config, "optimizer.peak_lr", minimum=0.0, strict=True)
  _number(config, "optimizer.weight_decay", minimum=0.0)
  _number(config, "optimizer.grad_clip", minimum=0.0)
  _number(config, "optimizer.eps", minimum=0.0, strict=True)
  warmup = _int_at_least(config, "optimizer.warmup_steps", 0)
  _require(warmup < num_steps, "optimizer.warmup_steps", warmup,
           f"must be smaller than num_steps={num_steps}")
