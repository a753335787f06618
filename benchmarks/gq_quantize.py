"""Times GQ's tiled matrix-product quantizer against the direct per-dimension formula.

`python -m benchmarks.gq_quantize [--sizes=4096:65536:16,...] [--quick]`. Also
measures this machine's matmul rate and the compiled executables' memory.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from gmvq_jax.quantizers import gq_codebook

_SIZES = flags.DEFINE_list(
    "sizes", ["4096:65536:16", "4096:65536:4", "1024:4096:8", "16384:65536:16"],
    "N:K:m triples (tokens, codewords, token dimension); the first is the headline size.")
_TILE_SIZE = flags.DEFINE_integer("tile_size", None,
                                  "gq_codebook.quantize tile; default the function's own.")
_TILE_SWEEP = flags.DEFINE_list("tile_sweep", ["4096", "16384"], "Extra tile sizes timed at the first size.")
_DIRECT_GIB = flags.DEFINE_float(
    "direct_memory_gib", 1.0, "Cap on the direct formula's (N', K, m) float32 buffer: it runs on the "
    "first N' tokens, the largest N' under the cap.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls after compilation.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls; the median is reported.")
_BUDGET_S = flags.DEFINE_float(
    "seconds_per_measurement", 8.0, "Stop repeating (after at least 3) once one measurement took this long.")
_BREAKDOWN = flags.DEFINE_bool(
    "breakdown", True, "Time where quantize's time goes (matmul vs argmax) at the first size.")
_PRIOR_WEIGHT = flags.DEFINE_float("prior_weight", 1.0,
                                   "Prior weight of both formulas (the paper's omega).")
_TORCH = flags.DEFINE_bool(
    "torch_direct", True, "Also time the published PyTorch code path (eager torch.distributions.Normal "
    "log_prob on the (N', K, m) tensor) at the first size, on the same N' tokens.")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Sanity run of ~20 s: one size 1024:65536:16, 3 repeats, no tile sweep.")

TARGET_SPEEDUP = 100.0
# Fraction of the measured matmul rate the eager call must reach, by token dimension m
# (N = 4096, K = 2^16): smaller m means fewer FLOPs per score, so a lower bar.
TARGET_MATMUL_FRACTION = {16: 0.50, 4: 0.25}
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
HIGHEST = jax.lax.Precision.HIGHEST


def host_line() -> str:
  return (f"host: {platform.machine()}, usable cores {len(os.sched_getaffinity(0))}, load average "
          f"{os.getloadavg()[0]:.2f} (1 min, all processes); jax {jax.__version__}, "
          f"{jax.devices()[0]} ({jax.devices()[0].device_kind}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def warn_if_busy() -> None:
  cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
  if load > cores:
    print(f"WARNING: load average {load:.1f} > {cores} cores: other processes compete for the CPU; "
          "rates are lower bounds, rerun on an idle machine.", flush=True)


def compile_timed(fn: Callable, *args) -> tuple[Any, float]:
  """AOT-compiles jit(fn) for args; returns (executable, trace+lower+compile seconds)."""
  started = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - started


def median_seconds(fn: Callable, *args) -> tuple[float, int]:
  """Median seconds of fn(*args) after warm-up; repeats stop early past the time budget."""
  for _ in range(_WARMUP.value):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(_REPEATS.value):
    started = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - started)
    if len(times) >= 3 and sum(times) > _BUDGET_S.value:
      break
  return statistics.median(times), len(times)


def temp_bytes(compiled) -> float:
  stats = compiled.memory_analysis()
  return float("nan") if stats is None else float(stats.temp_size_in_bytes)


def output_bytes(compiled) -> float:
  stats = compiled.memory_analysis()
  return float("nan") if stats is None else float(stats.output_size_in_bytes)


def mib(num_bytes: float) -> str:
  return f"{num_bytes / 2**20:,.1f} MiB"


# ----------------------------------------------------------------------------
# The direct formula, as the published (PyTorch) implementation computes it.


def direct_log_ratios(mu, std, codebook, prior_log_prob, prior_weight):
  """(N, K, m) log N(c_kj; mu_j, var_j) - w log N(c_kj; 0, 1), torch Normal.log_prob's algebra."""
  mu, std = mu[:, None, :], std[:, None, :]
  log_prob = -jnp.square(codebook[None] - mu) / (2.0 * jnp.square(std)) - jnp.log(std) - HALF_LOG_2PI
  return log_prob - prior_weight * prior_log_prob[None]


def direct_argmax(log_ratios):
  return jnp.argmax(jnp.sum(log_ratios, axis=2), axis=1).astype(jnp.int32)


def direct_fused(mu, std, codebook, prior_log_prob, prior_weight):
  """One jit: XLA fuses the (N, K, m) expression into the sum; only (N, K) scores are stored."""
  return direct_argmax(direct_log_ratios(mu, std, codebook, prior_log_prob, prior_weight))


# ----------------------------------------------------------------------------
# Measurements.


def make_inputs(num_tokens: int, num_codes: int, dim: int, codebooks: dict):
  if (num_codes, dim) not in codebooks:
    codebooks[(num_codes, dim)] = jnp.asarray(
        gq_codebook.sample_codebook(0, num_codes, dim, "sobol"))
  rng = np.random.default_rng(num_tokens * 7919 + dim)
  mu = jnp.asarray(rng.normal(size=(num_tokens, dim)), jnp.float32)
  std = jnp.asarray(np.exp(rng.uniform(math.log(0.05), 0.0, size=(num_tokens, dim))), jnp.float32)
  return mu, std, codebooks[(num_codes, dim)]


def time_quantize(mu, std, codebook, tile_size) -> dict:
  """The compiled executable (for its memory) and the eager call, as a user makes it."""
  fn = functools.partial(gq_codebook.quantize, prior_weight=_PRIOR_WEIGHT.value,
                         tile_size=tile_size)
  compiled, compile_s = compile_timed(fn, mu, std, codebook)
  seconds, runs = median_seconds(fn, mu, std, codebook)  # Eager: quantize compiles inside.
  jit_seconds, _ = median_seconds(compiled, mu, std, codebook)
  num_tokens, dim = mu.shape
  flops = 2 * num_tokens * codebook.shape[0] * 2 * dim
  return dict(compiled=compiled, compile_s=compile_s, seconds=seconds, runs=runs,
              tokens_per_s=num_tokens / seconds, temp=temp_bytes(compiled),
              gflops=flops / seconds / 1e9, jit_gflops=flops / jit_seconds / 1e9)


def time_direct(mu, std, codebook, quantized) -> dict:
  """Both direct variants on the first N' tokens, N' the largest under the memory cap."""
  num_codes, dim = codebook.shape
  chunk = max(1, min(mu.shape[0], int(_DIRECT_GIB.value * 2**30) // (num_codes * dim * 4)))
  mu, std = mu[:chunk], std[:chunk]
  prior = jax.scipy.stats.norm.logpdf(codebook)  # A precomputed buffer in the published code.
  prior_weight = jnp.float32(_PRIOR_WEIGHT.value)
  fused, fused_compile = compile_timed(direct_fused, mu, std, codebook, prior, prior_weight)
  fused_s, _ = median_seconds(fused, mu, std, codebook, prior, prior_weight)
  # Two jits: the (N', K, m) log-ratio tensor is a real buffer between them, as in PyTorch.
  ratios, ratios_compile = compile_timed(direct_log_ratios, mu, std, codebook, prior, prior_weight)
  shape = jax.ShapeDtypeStruct((chunk, num_codes, dim), jnp.float32)
  reduce, reduce_compile = compile_timed(direct_argmax, shape)
  materialised = lambda *args: reduce(ratios(*args))
  materialised_s, _ = median_seconds(materialised, mu, std, codebook, prior, prior_weight)
  expected = np.asarray(quantized[:chunk])
  return dict(
      chunk=chunk, fused_tps=chunk / fused_s, fused_compile_s=fused_compile,
      materialised_tps=chunk / materialised_s, materialised_compile_s=ratios_compile + reduce_compile,
      fused_agree=float(np.mean(np.asarray(fused(mu, std, codebook, prior, prior_weight)) == expected)),
      materialised_agree=float(np.mean(np.asarray(materialised(mu, std, codebook, prior, prior_weight)) == expected)),
      fused_temp=temp_bytes(fused),
      materialised_peak=output_bytes(ratios) + temp_bytes(ratios) + temp_bytes(reduce))


def time_torch_direct(mu, std, codebook, quantized, chunk: int) -> dict:
  """The published implementation's quantizer loop body, eager PyTorch on the CPU's usable cores."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.distributions import Normal  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  mu, std = (torch.from_numpy(np.array(x[:chunk])) for x in (mu, std))
  codebook = torch.from_numpy(np.array(codebook))
  prior = Normal(torch.zeros(1, codebook.shape[1]), torch.ones(1, codebook.shape[1])).log_prob(codebook)

  def indices():
    with torch.no_grad():
      log_ratios = (Normal(mu[:, None, :], std[:, None, :]).log_prob(codebook[None])
                    - prior[None] * _PRIOR_WEIGHT.value)
      return torch.argmax(torch.sum(log_ratios, dim=2), dim=1)

  def run() -> None:  # Eager torch on the CPU is synchronous: nothing to wait for.
    indices()

  seconds, _ = median_seconds(run)
  agree = float(np.mean(indices().numpy() == np.asarray(quantized[:chunk])))
  return dict(tokens_per_s=chunk / seconds, agree=agree, threads=torch.get_num_threads(),
              version=torch.__version__)


def matmul_rates(shapes) -> list[tuple[tuple[int, int, int], float]]:
  """Median GFLOP/s of jitted float32 (M, k) @ (k, n) at HIGHEST precision."""
  matmul = jax.jit(lambda a, b: jnp.dot(a, b, precision=HIGHEST))
  rates = []
  for m_rows, depth, n_cols in shapes:
    a = jnp.asarray(np.random.default_rng(1).normal(size=(m_rows, depth)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).normal(size=(depth, n_cols)), jnp.float32)
    seconds, _ = median_seconds(matmul, a, b)
    rates.append(((m_rows, depth, n_cols), 2 * m_rows * depth * n_cols / seconds / 1e9))
    print(f"  matmul ({m_rows} x {depth}) @ ({depth} x {n_cols}): {rates[-1][1]:.1f} GFLOP/s", flush=True)
  return rates


def memory_probe(num_tokens: int, num_codes: int, dim: int, tile: int) -> list[dict]:
  """Compiled temp bytes of quantize as N and K grow (compile only, nothing runs)."""
  rows = []
  for tokens, codes in [(num_tokens // 4, num_codes), (num_tokens, num_codes), (num_tokens * 4, num_codes),
                        (num_tokens, num_codes * 4)]:
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    fn = functools.partial(gq_codebook.quantize, prior_weight=_PRIOR_WEIGHT.value, tile_size=tile)
    compiled = jax.jit(fn).lower(spec(tokens, dim), spec(tokens, dim), spec(codes, dim)).compile()
    padded = -(-codes // tile) * tile
    # Pass 1: one (tile, block) score block; pass 2: one (chunk, tile, 2m)
    # gather and its (chunk, tile) scores; the (K, 2m) code features and the
    # (N, 2m) token features (twice: plain and blocked), and (N,) winners.
    block = min(gq_codebook.TOKEN_BLOCK, tokens)
    chunk = min(gq_codebook.RESCORE_CHUNK, tokens)
    model = 4 * (tile * block + chunk * tile * (2 * dim + 1) + padded * 2 * dim
                 + 2 * tokens * 2 * dim + 2 * tokens)
    rows.append(dict(tokens=tokens, codes=codes, temp=temp_bytes(compiled), model=model,
                     full=4.0 * tokens * codes))
  return rows


def pass_breakdown(mu, std, codebook, tile: int) -> list[str]:
  """Where quantize's time goes: pass 1 (tile matmul + max) alone, and the bare tile matmuls.

  'matmuls only' runs pass 1's scan with the max replaced by reading one score
  per tile: the rate of XLA's tiled product itself, a ceiling for any
  reduction built on it.
  """
  num_tokens, dim = mu.shape
  num_codes = codebook.shape[0]
  inv_var = 1.0 / jnp.square(std)
  features = jnp.concatenate([mu * inv_var, 0.5 * (_PRIOR_WEIGHT.value - inv_var)], axis=-1)
  tiles = gq_codebook.code_tiles(codebook, tile)  # (T, 2m, tile)
  flops = 2 * num_tokens * num_codes * 2 * dim
  pass_one = jax.jit(lambda f, t: gq_codebook._winning_tiles(f, t, num_codes))  # pylint: disable=protected-access

  def matmuls_only(f, t):
    block = min(gq_codebook.TOKEN_BLOCK, num_tokens)
    blocks = f[:num_tokens // block * block].reshape(-1, block, 2 * dim)
    return jax.lax.map(lambda b: jax.lax.scan(
        lambda c, tile_: (c + jnp.dot(b, tile_, precision=HIGHEST)[:, 0], None),
        jnp.zeros((block,), jnp.float32), t)[0], blocks)

  full = time_quantize(mu, std, codebook, tile)["gflops"]
  first = flops / median_seconds(pass_one, features, tiles)[0] / 1e9
  bare = flops / median_seconds(jax.jit(matmuls_only), features, tiles)[0] / 1e9
  return [f"  tile {tile}, token block {gq_codebook.TOKEN_BLOCK}: quantize {full:.1f} GFLOP/s | "
          f"pass 1 alone (matmul + max) {first:.1f} | tile matmuls only {bare:.1f}; pass 2 "
          f"(rescoring the winning tile) takes {100 * max(0.0, 1 - full / first):.0f}% of quantize's time"]


# ----------------------------------------------------------------------------


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  sizes, tile_sweep = _SIZES.value, [int(t) for t in _TILE_SWEEP.value]
  if _QUICK.value:
    sizes, tile_sweep = ["1024:65536:16"], []
    flags.FLAGS.repeats, flags.FLAGS.direct_memory_gib = 3, 0.25
  sizes = [tuple(int(v) for v in size.split(":")) for size in sizes]
  started = time.perf_counter()
  print(host_line(), flush=True)
  warn_if_busy()
  codebooks: dict = {}
  num_tokens, num_codes, dim = sizes[0]
  headline_tile = _TILE_SIZE.value or min(num_codes, gq_codebook.DEFAULT_TILE_SIZE)

  print("Matmul rate (jitted float32, precision HIGHEST, median):", flush=True)
  rates = matmul_rates([(num_tokens, 2 * dim, num_codes), (num_tokens, 2 * dim, headline_tile),
                        (2048, 2048, 2048)])
  peak = max(rate for _, rate in rates)
  full_shape, tile_shape = rates[0][1], rates[1][1]

  print("Quantize (tiled matrix product) and the direct formula:", flush=True)
  results = []
  for tokens, codes, size_dim in sizes:
    mu, std, codebook = make_inputs(tokens, codes, size_dim, codebooks)
    tile = _TILE_SIZE.value or min(codes, gq_codebook.DEFAULT_TILE_SIZE)
    quant = time_quantize(mu, std, codebook, _TILE_SIZE.value)
    direct = time_direct(mu, std, codebook, quant["compiled"](mu, std, codebook))
    results.append(dict(size=(tokens, codes, size_dim), tile=tile, quant=quant, direct=direct))
    print(f"  N={tokens} K={codes} m={size_dim} tile={tile}: quantize {quant['tokens_per_s']:,.0f} tokens/s "
          f"({quant['gflops']:.1f} GFLOP/s, {quant['runs']} runs); direct on N'={direct['chunk']}: "
          f"fused {direct['fused_tps']:,.0f}, materialised {direct['materialised_tps']:,.0f} tokens/s",
          flush=True)

  torch_direct = None
  if _TORCH.value:
    head_inputs = make_inputs(num_tokens, num_codes, dim, codebooks)
    torch_direct = time_torch_direct(*head_inputs, results[0]["quant"]["compiled"](*head_inputs),
                                     results[0]["direct"]["chunk"])
    print(f"  torch {torch_direct['version']} eager direct (published code path), N={num_tokens} "
          f"K={num_codes} m={dim} on N'={results[0]['direct']['chunk']}: {torch_direct['tokens_per_s']:,.1f} "
          f"tokens/s", flush=True)
  sweep = []
  mu, std, codebook = make_inputs(num_tokens, num_codes, dim, codebooks)
  for tile in tile_sweep:
    sweep.append((tile, time_quantize(mu, std, codebook, tile)))
    print(f"  tile sweep N={num_tokens} K={num_codes} m={dim}: tile {tile}: "
          f"{sweep[-1][1]['tokens_per_s']:,.0f} tokens/s ({sweep[-1][1]['gflops']:.1f} GFLOP/s)", flush=True)
  breakdown = []
  if _BREAKDOWN.value:
    print("Breakdown (quantize's passes; same FLOP count):", flush=True)
    breakdown = pass_breakdown(mu, std, codebook, headline_tile)
  probe = memory_probe(num_tokens, num_codes, dim, headline_tile)

  # ---------------------------------------------------------------- report.
  print()
  print(f"GQ quantize, float32, prior_weight={_PRIOR_WEIGHT.value}; median of up to {_REPEATS.value} calls after "
        f"{_WARMUP.value} warm-up; compile = trace + lower + compile. FLOPs = 2 N K 2m.")
  print(f"Matmul rates: " + "; ".join(f"{m}x{k}x{n} {r:.1f}" for (m, k, n), r in rates)
        + f" GFLOP/s. Peak (best measured) {peak:.1f}.")
  print("Eager: gq_codebook.quantize(mu, std, codebook, ...) called as a user calls it; "
        "jit: the same inside jax.jit.")
  header = (f"{'N':>6}{'K':>7}{'m':>4}{'tile':>6}{'compile s':>10}{'ms/call':>9}{'tokens/s':>11}"
            f"{'GFLOP/s':>9}{'% peak':>8}{'jit % peak':>11}")
  print(header + "\n" + "-" * len(header))
  rows = [(r["size"], r["tile"], r["quant"]) for r in results]
  rows += [((num_tokens, num_codes, dim), tile, quant) for tile, quant in sweep]
  for (tokens, codes, size_dim), tile, quant in rows:
    print(f"{tokens:>6}{codes:>7}{size_dim:>4}{tile:>6}{quant['compile_s']:>10.2f}"
          f"{1e3 * quant['seconds']:>9.1f}{quant['tokens_per_s']:>11,.0f}{quant['gflops']:>9.1f}"
          f"{100 * quant['gflops'] / peak:>7.1f}%{100 * quant['jit_gflops'] / peak:>10.1f}%")
  print()
  print(f"Direct formula, timed on the first N' tokens only: the largest N' whose (N', K, m) float32 "
        f"buffer fits in {_DIRECT_GIB.value} GiB; tokens/s = N' / seconds.")
  print("  fused: one jit (XLA fuses the per-dimension terms into the sum; no (N', K, m) buffer).")
  print("  materialised: the (N', K, m) log-ratio tensor is stored, then summed + argmaxed (as PyTorch does).")
  header = (f"{'N':>6}{'K':>7}{'m':>4}{'N_chunk':>8}{'fused tok/s':>12}{'mat. tok/s':>11}"
            f"{'speed-up vs fused':>18}{'vs mat.':>9}{'agree fused/mat.':>18}")
  print(header + "\n" + "-" * len(header))
  for r in results:
    d, q = r["direct"], r["quant"]
    print(f"{r['size'][0]:>6}{r['size'][1]:>7}{r['size'][2]:>4}{d['chunk']:>8}{d['fused_tps']:>12,.0f}"
          f"{d['materialised_tps']:>11,.0f}{q['tokens_per_s'] / d['fused_tps']:>17.1f}x"
          f"{q['tokens_per_s'] / d['materialised_tps']:>8.1f}x"
          f"{d['fused_agree']:>10.4f}/{d['materialised_agree']:.4f}")
  head = results[0]
  if torch_direct:
    print(f"Published code path (eager torch {torch_direct['version']}, {torch_direct['threads']} threads, "
          f"Normal.log_prob materialising several (N', K, m) temporaries) at N={num_tokens} K={num_codes} "
          f"m={dim} on N'={head['direct']['chunk']}: {torch_direct['tokens_per_s']:,.1f} tokens/s; "
          f"quantize is {head['quant']['tokens_per_s'] / torch_direct['tokens_per_s']:.0f}x faster; "
          f"agreement {torch_direct['agree']:.4f}.")
  print()
  print(f"Memory (compiled memory_analysis), quantize tile {headline_tile}, m={dim}; model = 4 B x "
        f"(tile block + chunk tile (2m + 1) + K 2m + 2 N 2m + 2 N), O(N + K):")
  memory_ok = True
  for row in probe:
    ok = row["temp"] <= 1.25 * row["model"] + 2**20
    memory_ok &= ok
    print(f"  N={row['tokens']:>6} K={row['codes']:>7}: temp {mib(row['temp']):>12}  model "
          f"{mib(row['model']):>12}  N*K*4 {mib(row['full']):>12}  temp/(N*K*4) "
          f"{row['temp'] / row['full']:.4f}")
  d = head["direct"]
  print(f"  direct at N'={d['chunk']} K={num_codes}: fused temp {mib(d['fused_temp'])} (the N' x K "
        f"scores); materialised {mib(d['materialised_peak'])} (N' x K x m log ratios + scores).")
  print()
  if breakdown:
    print(f"Breakdown at N={num_tokens} K={num_codes} m={dim} (GFLOP/s, FLOPs as above):")
    print("\n".join(breakdown))
    print()
  speedup_mat = head["quant"]["tokens_per_s"] / d["materialised_tps"]
  speedup_fused = head["quant"]["tokens_per_s"] / d["fused_tps"]
  verdict = lambda ok: "MET" if ok else "MISSED"
  print(f"Targets at N={num_tokens} K={num_codes} m={dim}:")
  torch_note = (f"; against eager torch, the published code path: "
                f"{head['quant']['tokens_per_s'] / torch_direct['tokens_per_s']:.0f}x" if torch_direct else "")
  print(f"  >= {TARGET_SPEEDUP:.0f}x faster than direct: {verdict(speedup_mat >= TARGET_SPEEDUP)} "
        f"(jitted JAX, (N', K, m) materialised: {speedup_mat:.1f}x; jitted JAX, fused by XLA: "
        f"{speedup_fused:.1f}x{torch_note})")
  for r in results:
    tokens, codes, size_dim = r["size"]
    target = TARGET_MATMUL_FRACTION.get(size_dim)
    if target is None or (tokens, codes) != (4096, 65536):
      continue
    fraction = r["quant"]["gflops"] / peak
    print(f"  m={size_dim}: eager call >= {100 * target:.0f}% of the measured matmul rate: "
          f"{verdict(fraction >= target)} ({100 * fraction:.1f}% of peak {peak:.1f} GFLOP/s; "
          f"under jit {100 * r['quant']['jit_gflops'] / peak:.1f}%)")
  print(f"  memory not growing with N x K: {verdict(memory_ok)} (temp within 1.25x of the "
        f"O(N + K) model at every probe)")
  print(host_line())
  warn_if_busy()
  print(f"Total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
  app.run(main)
