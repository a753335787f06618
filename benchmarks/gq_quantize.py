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
TARGET_MATMUL_FRACTION = 0.25
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
  fn = functools.partial(gq_codebook.quantize, prior_weight=_PRIOR_WEIGHT.value,
                         tile_size=tile_size)
  compiled, compile_s = compile_timed(fn, mu, std, codebook)
  seconds, runs = median_seconds(compiled, mu, std, codebook)
  num_tokens, dim = mu.shape
  return dict(compiled=compiled, compile_s=compile_s, seconds=seconds, runs=runs,
              tokens_per_s=num_tokens / seconds, temp=temp_bytes(compiled),
              gflops=2 * num_tokens * codebook.shape[0] * 2 * dim / seconds / 1e9)


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
    # Scores of one tile, the (K, 2m) code features and the (N, 2m) token features.
    # Per tile: the (N, tile) scores and the (N, tile) candidate indices of
    # the lowest-index-of-the-max reduction; plus the codebook features.
    model = 4 * (2 * tokens * tile + padded * 2 * dim + tokens * 2 * dim)
    rows.append(dict(tokens=tokens, codes=codes, temp=temp_bytes(compiled), model=model,
                     full=4.0 * tokens * codes))
  return rows


def argmax_breakdown(mu, std, codebook, tiles) -> list[str]:
  """Splits quantize's time: the tile matmul with a cheap fused max vs the argmax reduce.

  The variants rebuild quantize's scan locally (gq_codebook.py is not changed): 'matmul+max'
  keeps only the running max, a ceiling for any tiled argmax; 'max+min-where'
  finds the index as the lowest k whose score equals the tile max, a two-pass
  argmax without the variadic (value, index) reduce.
  """
  num_tokens, dim = mu.shape
  inv_var = 1.0 / jnp.square(std)
  features = jnp.concatenate([mu * inv_var, 0.5 * (_PRIOR_WEIGHT.value - inv_var)], axis=-1)
  code_features = jnp.concatenate([codebook, jnp.square(codebook)], axis=-1)
  reference = np.asarray(gq_codebook.quantize(mu, std, codebook, prior_weight=_PRIOR_WEIGHT.value))
  flops = 2 * num_tokens * codebook.shape[0] * 2 * dim
  lines = []
  for tile in tiles:
    def scan(features, code_features, mode, tile=tile):
      tiles_ = code_features.reshape(-1, tile, 2 * dim)
      offsets = jnp.arange(tiles_.shape[0], dtype=jnp.int32) * tile

      def body(carry, tile_and_offset):
        best_score, best_index = carry
        scores = jnp.dot(features, tile_and_offset[0].T, precision=HIGHEST)
        tile_score = jnp.max(scores, axis=-1)
        if mode == "max":
          return (jnp.maximum(best_score, tile_score), best_index), None
        iota = jnp.arange(tile, dtype=jnp.int32)
        tile_index = jnp.min(jnp.where(scores == tile_score[:, None], iota, tile), axis=-1)
        better = tile_score > best_score
        return (jnp.where(better, tile_score, best_score),
                jnp.where(better, tile_and_offset[1] + tile_index, best_index)), None

      init = (jnp.full((num_tokens,), -jnp.inf, jnp.float32), jnp.zeros((num_tokens,), jnp.int32))
      best_score, best_index = jax.lax.scan(body, init, (tiles_, offsets))[0]
      return best_score if mode == "max" else best_index  # Both returned: nothing is dead code.

    rates = {}
    for mode in ("max", "min_where"):
      fn = jax.jit(functools.partial(scan, mode=mode))
      rates[mode] = flops / median_seconds(fn, features, code_features)[0] / 1e9
    agree = np.mean(np.asarray(jax.jit(functools.partial(scan, mode="min_where"))(
        features, code_features)) == reference)
    quantize_rate = time_quantize(mu, std, codebook, tile)["gflops"]
    # The reduce alone, on a stored (N, tile) score block: argmax vs max.
    block = jnp.asarray(np.random.default_rng(3).normal(size=(num_tokens, tile)), jnp.float32)
    argmax_s = median_seconds(jax.jit(lambda x: jnp.argmax(x, axis=-1)), block)[0]
    max_s = median_seconds(jax.jit(lambda x: jnp.max(x, axis=-1)), block)[0]
    argmax_rate, max_rate = block.size / argmax_s, block.size / max_s
    lines.append(
        f"  tile {tile}: matmul + fused max only {rates['max']:.1f} | gq_codebook.quantize {quantize_rate:.1f} | "
        f"max + min-where index {rates['min_where']:.1f} (agrees with gq_codebook.quantize {agree:.4f})\n"
        f"    reduce over a stored ({num_tokens}, {tile}) block: jnp.argmax {argmax_rate / 1e6:,.0f} M "
        f"scores/s ({4 * argmax_rate / 1e9:.1f} GB/s), jnp.max {max_rate / 1e6:,.0f} M scores/s "
        f"({4 * max_rate / 1e9:.1f} GB/s); at {4 * dim} flops per score argmax alone caps quantize "
        f"at {argmax_rate * 4 * dim / 1e9:.1f} GFLOP/s")
    print(f"  tile {tile} done", flush=True)
  return lines


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
    print("Breakdown (benchmark-local variants of quantize's scan; same FLOP count):", flush=True)
    breakdown = argmax_breakdown(mu, std, codebook, sorted({headline_tile, 512}))
  probe = memory_probe(num_tokens, num_codes, dim, headline_tile)

  # ---------------------------------------------------------------- report.
  print()
  print(f"GQ quantize, float32, prior_weight={_PRIOR_WEIGHT.value}; median of up to {_REPEATS.value} calls after "
        f"{_WARMUP.value} warm-up; compile = trace + lower + compile. FLOPs = 2 N K 2m.")
  print(f"Matmul rates: " + "; ".join(f"{m}x{k}x{n} {r:.1f}" for (m, k, n), r in rates)
        + f" GFLOP/s. Peak (best measured) {peak:.1f}.")
  header = (f"{'N':>6}{'K':>7}{'m':>4}{'tile':>6}{'compile s':>10}{'ms/call':>9}{'tokens/s':>11}"
            f"{'GFLOP/s':>9}{'% peak':>8}")
  print(header + "\n" + "-" * len(header))
  rows = [(r["size"], r["tile"], r["quant"]) for r in results]
  rows += [((num_tokens, num_codes, dim), tile, quant) for tile, quant in sweep]
  for (tokens, codes, size_dim), tile, quant in rows:
    print(f"{tokens:>6}{codes:>7}{size_dim:>4}{tile:>6}{quant['compile_s']:>10.2f}"
          f"{1e3 * quant['seconds']:>9.1f}{quant['tokens_per_s']:>11,.0f}{quant['gflops']:>9.1f}"
          f"{100 * quant['gflops'] / peak:>7.1f}%")
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
        f"(2 N tile + K 2m + N 2m):")
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
  fraction = head["quant"]["gflops"] / peak
  verdict = lambda ok: "MET" if ok else "MISSED"
  print(f"Targets at N={num_tokens} K={num_codes} m={dim}:")
  torch_note = (f"; against eager torch, the published code path: "
                f"{head['quant']['tokens_per_s'] / torch_direct['tokens_per_s']:.0f}x" if torch_direct else "")
  print(f"  >= {TARGET_SPEEDUP:.0f}x faster than direct: {verdict(speedup_mat >= TARGET_SPEEDUP)} "
        f"(jitted JAX, (N', K, m) materialised: {speedup_mat:.1f}x; jitted JAX, fused by XLA: "
        f"{speedup_fused:.1f}x{torch_note})")
  print(f"  >= {100 * TARGET_MATMUL_FRACTION:.0f}% of measured matmul rate: "
        f"{verdict(fraction >= TARGET_MATMUL_FRACTION)} ({100 * fraction:.1f}% of peak {peak:.1f} "
        f"GFLOP/s; {100 * head['quant']['gflops'] / tile_shape:.0f}% of the one-tile matmul "
        f"{num_tokens}x{2 * dim}x{headline_tile} at {tile_shape:.1f}, "
        f"{100 * head['quant']['gflops'] / full_shape:.0f}% of the full {num_tokens}x{2 * dim}x{num_codes} "
        f"at {full_shape:.1f})")
  print(f"  memory not growing with N x K: {verdict(memory_ok)} (temp within 1.25x of the "
        f"O(N tile + K m) model at every probe)")
  print(host_line())
  warn_if_busy()
  print(f"Total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
  app.run(main)
