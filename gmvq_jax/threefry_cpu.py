"""Threefry on the CPU without JAX's rolled loop: the same bits, about 5x faster.

JAX lowers its threefry2x32 hash on the CPU as a `while` loop over the five
groups of rounds, to keep compile times short; each trip reads and writes the
whole (N, C) state, so drawing GM-VQ's Gumbel noise for (N, C) = (16384, 1024)
took ~200 ms of memory traffic, ~17% of the CIFAR10 train step at batch 256
(`benchmarks/README.md`). The unrolled lowering, which JAX itself uses on
every other platform, fuses the 20 rounds into one pass: ~40 ms, with
identical bits (the same algorithm, so every key, seed and golden figure is
unchanged, and 1-device and k-device runs still draw the same noise).

`install()` registers that lowering for the CPU platform. It reaches into
JAX's private modules; where a JAX version lacks them, it logs a warning once
and leaves JAX's default, which is correct, only slower.
"""

from __future__ import annotations

import logging

_installed: bool | None = None  # None: not tried yet.


def install() -> bool:
  """Lowers threefry2x32 unrolled on the CPU; returns whether it is (idempotent)."""
  global _installed
  if _installed is not None:
    return _installed
  try:
    # pylint: disable=g-import-not-at-top
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32
    mlir.register_lowering(threefry2x32.threefry2x32_p,
                           threefry2x32._threefry2x32_lowering_rule,  # pylint: disable=protected-access
                           platform="cpu")
    _installed = True
  except (ImportError, AttributeError) as error:
    logging.warning("Kept JAX's rolled threefry lowering on the CPU (random draws are slower, the"
                    " same bits): this JAX has no %s.", error)
    _installed = False
  return _installed
