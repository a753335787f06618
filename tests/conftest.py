"""Test setup: 4 fake CPU devices and a shared compilation cache, set before jax is imported."""

import atexit
import os
import shutil
import tempfile

# The tests' models are tiny, so XLA's LLVM optimisation passes, not running,
# dominate their time: level 0 compiles ~2.4x faster here (measured on
# tests/test_methods.py). Benchmarks and launchers keep XLA's defaults.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests train the same tiny configs (resume tests run one config four
# times), and compilation is most of their time: JAX's persistent cache,
# in a directory private to this session (inherited by the launcher
# subprocesses), compiles each distinct program once. Same program, same
# executable, so results are unchanged. Measured on the GM-VQ exact-resume
# test: 57 s without, 39 s with a cold cache.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="gmvq-jax-test-compilation-cache-")
  atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
