"""Test setup: 4 fake CPU devices, set before jax is imported anywhere."""

import os

# The tests' models are tiny, so XLA's LLVM optimisation passes, not running,
# dominate their time: level 0 compiles ~2.4x faster here (measured on
# tests/test_methods.py). Benchmarks and launchers keep XLA's defaults.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
