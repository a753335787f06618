"""Times the compiled GM-VQ train step (CIFAR10 config) against a PyTorch port.

`python -m benchmarks.train_step [--batch_sizes=256,32] [--quick]`. In one
process, at each batch size: the library's JAX step, the same step built
without its non-finite guard (the guard's cost), and the PyTorch port eager
and under torch.compile. The variants' steps alternate, so machine drift hits
all alike.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import statistics
import time
from typing import Callable

from absl import app
from absl import flags

# JAX and torch share one GPU here: JAX takes memory as it needs it, not 75% up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

try:  # The bench extra; --skip_torch times JAX without it.
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None

from configs import gmvq_cifar10
from gmvq_jax import train_lib
from gmvq_jax.quantizers import gmvq

try:
  from benchmarks import step_timing
except ImportError:  # Run as `python benchmarks/train_step.py`: benchmarks/ is on sys.path.
  import step_timing
if torch is not None:
  try:
    from benchmarks import torch_gmvq
  except ImportError:
    import torch_gmvq

RandomImages = step_timing.RandomImages
JaxRunner = step_timing.JaxRunner
time_repeat = step_timing.time_repeat

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["256", "32"], "Global batch sizes to time.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework after compilation.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats per framework; the median is reported.")
_STEPS_PER_REPEAT = flags.DEFINE_integer(
    "steps_per_repeat", None, "Steps in one timed repeat; default 1 on CPU, 20 on GPU (short steps).")
_QUICK = flags.DEFINE_bool(
    "quick", False, "Sanity run of ~30 s on a 2-core CPU: batch 32 only, 1 warm-up, 3 repeats.")
_DEVICE = flags.DEFINE_enum(
    "device", "auto", ["auto", "cpu", "gpu"],
    "auto: JAX's default backend, and CUDA for torch when present; cpu or gpu force both.")
_TORCH_THREADS = flags.DEFINE_list(
    "torch_threads", [], "torch intra-op thread counts, one torch variant each; empty: the usable cores.")
_TORCH_MODES = flags.DEFINE_list(
    "torch_modes", ["eager", "compile"],
    "torch variants to time: 'eager', and 'compile' (forward + loss under torch.compile).")
_GUARD_COST = flags.DEFINE_bool(
    "guard_cost", True, "Also time the JAX step built without its non-finite guard.")
_TORCH_ADAMW = flags.DEFINE_enum(
    "torch_adamw", "default", ["default", "foreach", "fused"],
    "torch AdamW implementation; 'default' is torch's own choice (a per-tensor loop on CPU).")
_KMEANS_INIT = flags.DEFINE_bool(
    "kmeans_init", False, "k-means codebook init before timing (the step's cost does not depend on it).")
_CHECK_PORT = flags.DEFINE_bool(
    "check_port", True, "First check that the torch port computes what the flax model does.")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "Time JAX only.")
_XLA_CONV = flags.DEFINE_bool(
    "xla_conv", False,
    "Also time the JAX step with conv_impl='xla' (XLA's own convolutions) beside the default.")


@dataclasses.dataclass
class Timing:
  """One framework variant at one batch size."""

  name: str
  framework: str
  batch_size: int
  setup_s: float  # JAX: trace + lower + compile. torch: its first step.
  setup_note: str
  step_s: list[float] = dataclasses.field(default_factory=list)
  final_loss: float = float("nan")

  @property
  def median_ms(self) -> float:
    return 1e3 * statistics.median(self.step_s)

  @property
  def images_per_s(self) -> float:
    return self.batch_size / (self.median_ms / 1e3)

  @property
  def spread(self) -> str:
    return f"{1e3 * min(self.step_s):.1f}-{1e3 * max(self.step_s):.1f}"


class TorchRunner:
  """`torch_gmvq.Trainer` from the same initial weights; its first step is the setup."""

  framework = "torch"

  def __init__(self, config, device: torch.device, batch_size: int, flax_params, *, threads: int,
               compile: bool, adamw_impl: str, name: str):
    self.device = device
    self.threads = threads
    self.name = name
    self.trainer = torch_gmvq.Trainer(config, device, compile=compile, adamw_impl=adamw_impl,
                                      flax_params=flax_params)
    images = RandomImages().train_batch(10_000, batch_size)
    self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)  # NCHW
    self.metrics = None
    started = time.perf_counter()
    self.step()
    self.sync()
    self.setup_s = time.perf_counter() - started
    self.setup_note = "first step, torch.compile included" if compile else "first eager step"

  def step(self) -> None:
    if torch.get_num_threads() != self.threads:
      torch.set_num_threads(self.threads)
    self.metrics = self.trainer.step(self.images)

  def sync(self) -> None:
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

  def loss(self) -> float:
    return float(self.metrics["loss"])


def pick_devices(choice: str) -> tuple[jax.Device, torch.device | None]:
  """JAX's device and torch's (None without torch)."""
  if torch is None:
    return (jax.devices(choice)[0] if choice != "auto" else jax.devices()[0]), None
  if choice == "cpu":
    return jax.devices("cpu")[0], torch.device("cpu")
  if choice == "gpu":
    if not torch.cuda.is_available():
      raise app.UsageError("--device=gpu, but torch sees no CUDA device.")
    return jax.devices("gpu")[0], torch.device("cuda")
  return jax.devices()[0], torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_info(jax_device: jax.Device, torch_device: torch.device, torch_threads: list[int]) -> list[str]:
  lines = [
      f"host: {platform.machine()}, os.cpu_count()={os.cpu_count()}, usable cores="
      f"{len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f} (1 min, all processes)",
      f"jax {jax.__version__}, backend {jax.default_backend()}, jax.devices()={jax.devices()}, "
      f"timed on {jax_device} ({jax_device.device_kind}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
  ]
  if torch_device is None:
    return lines + ["torch: not installed (pip install -e '.[bench]'); JAX variants only"]
  lines += [
      f"torch {torch.__version__} on {torch_device}, intra-op threads {torch_threads}, inter-op "
      f"threads {torch.get_num_interop_threads()}, mkldnn={torch.backends.mkldnn.is_available()}, "
      f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')!r}, "
      f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')!r}",
  ]
  if torch_device.type == "cuda":
    lines.append(f"torch CUDA {torch.version.cuda}, {torch.cuda.get_device_name(torch_device)}")
  return lines


def warn_if_busy() -> None:
  cores = len(os.sched_getaffinity(0))
  load = os.getloadavg()[0]
  if load <= cores:
    return
  advice = "rerun on an idle machine"
  if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
    advice += ("; torch's spinning OpenMP threads suffer most from the contention (many times slower), "
               "OMP_WAIT_POLICY=PASSIVE avoids that")
  print(f"WARNING: load average {load:.1f} > {cores} cores: other processes compete for the CPU; "
        f"{advice}.", flush=True)


def check_port(config, jax_device: jax.Device) -> dict[str, float]:
  """Max |flax - torch| of encoder, decoder and q(c|x) from the same weights (torch on CPU).

  The Gumbel and Gaussian draws differ between the frameworks, so the
  sampled parts are checked given the same codes: the variance of Eq. 18.
  """
  model = train_lib.build_model(config)
  images = RandomImages().train_batch(0, 4)
  with jax.default_device(jax_device):
    variables = model.init(jax.random.key(0), images, train=False)
    out, _ = model.apply(variables, images, True, method=model.encode, mutable=["batch_stats"])
    zh, raw_weights = np.split(np.asarray(out), 2, axis=-1)  # Eq. 15: [zh, r].
    latents = np.random.default_rng(0).normal(size=zh.shape).astype(np.float32)
    decoded, _ = model.apply(variables, latents, True, method=model.decode, mutable=["batch_stats"])
  params = jax.device_get(variables["params"])
  torch_model = torch_gmvq.GMVQAutoencoder(config.quantizer.num_codes, config.quantizer.latent_dim,
                                           config.quantizer.sigma_z2, tuple(config.model.channels),
                                           config.model.num_res_blocks)
  torch_gmvq.load_flax_params(torch_model, params)
  torch_model.train()
  nchw = lambda a: torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)
  with torch.no_grad():
    torch_out = torch_model.encoder(nchw(images)).permute(0, 2, 3, 1).numpy()
    torch_decoded = torch_model.decoder(nchw(latents)).permute(0, 2, 3, 1).numpy()
    dim = zh.shape[-1]
    zh, raw_weights = np.array(zh).reshape(-1, dim), np.array(raw_weights).reshape(-1, dim)
    _, aux = torch_gmvq.quantize_train(torch_model.codebook, torch.from_numpy(zh),
                                       torch.from_numpy(raw_weights), 1.0, config.quantizer.sigma_z2)
  log_probs = jax.nn.log_softmax(gmvq.logits(zh, jax.nn.softplus(raw_weights), params["codebook"]))
  # Eq. 18 given torch's codes.
  codes = aux["codes"].numpy()
  _, distance = gmvq.straight_through_pick(codes, np.argmax(codes, -1), params["codebook"], zh)
  variance = distance / (dim * 2.0 * config.quantizer.sigma_z2)
  return dict(
      encoder=float(np.abs(torch_out - np.concatenate([zh, raw_weights], -1).reshape(torch_out.shape)).max()),
      decoder=float(np.abs(torch_decoded - np.asarray(decoded)).max()),
      probs=float(np.abs(aux["probs"].numpy() - np.exp(np.asarray(log_probs))).max()),
      variance=float(np.abs(aux["variance"].numpy() - np.asarray(variance)).max()),
  )


def run_batch(batch_size: int, build_jax: list[Callable[[], JaxRunner]], build_torch: list[Callable],
              *, warmup: int, repeats: int, steps_per_repeat: int) -> list[Timing]:
  """Builds each variant's step, warms it up, then times them in alternation."""
  jax_runners = [build() for build in build_jax]
  built = jax_runners + [build(jax_runners[0].initial_params) for build in build_torch]
  timings = [Timing(r.name, r.framework, batch_size, r.setup_s, r.setup_note) for r in built]
  for runner, timing in zip(built, timings):
    print(f"  B={batch_size} {timing.name}: setup {timing.setup_s:.2f}s ({timing.setup_note})", flush=True)
    for _ in range(warmup):
      runner.step()
    runner.sync()
  for repeat in range(repeats):
    order = list(range(len(built)))
    if repeat % 2:  # Alternate who goes first, so neither always follows the other.
      order.reverse()
    for index in order:
      timings[index].step_s.append(time_repeat(built[index], steps_per_repeat))
  for runner, timing in zip(built, timings):
    timing.final_loss = runner.loss()
    print(f"  B={batch_size} {timing.name}: median {timing.median_ms:.1f} ms/step "
          f"(range {timing.spread} ms over {repeats}), last loss {timing.final_loss:.4f}", flush=True)
  return timings


def format_table(timings: list[Timing]) -> list[str]:
  header = (f"{'variant':<12}{'batch':>6}{'setup s':>9}{'ms/step':>10}{'range ms':>17}"
            f"{'images/s':>10}{'JAX speed-up':>14}")
  lines = [header, "-" * len(header)]
  jax_ms = {t.batch_size: t.median_ms for t in timings if t.name == "jax"}
  for t in timings:
    speedup = f"{t.median_ms / jax_ms[t.batch_size]:.2f}x" if t.name != "jax" else ""
    lines.append(f"{t.name:<12}{t.batch_size:>6}{t.setup_s:>9.2f}{t.median_ms:>10.1f}"
                 f"{t.spread:>17}{t.images_per_s:>10.0f}{speedup:>14}")
  return lines


def summary(timings: list[Timing]) -> list[str]:
  """The guard's cost and the JAX step against each torch variant, per batch size."""
  lines = []
  for batch_size in sorted({t.batch_size for t in timings}, reverse=True):
    by_name = {t.name: t for t in timings if t.batch_size == batch_size}
    jax_ms = by_name["jax"].median_ms
    if "jax/no-guard" in by_name:
      cost = jax_ms / by_name["jax/no-guard"].median_ms - 1
      lines.append(f"B={batch_size}: the non-finite guard costs {100 * cost:+.1f}% of the step "
                   f"(target < 3%: {'MET' if cost < 0.03 else 'MISSED'}).")
    rivals = [t for t in by_name.values() if t.framework == "torch"]
    if rivals:
      ratios = ", ".join(f"{t.name} {t.median_ms / jax_ms:.2f}x" for t in rivals)
      faster = all(t.median_ms > jax_ms for t in rivals)
      lines.append(f"B={batch_size}: JAX is faster than every torch variant: "
                   f"{'YES' if faster else 'NO'} (torch ms / JAX ms: {ratios}).")
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  batch_sizes = [int(b) for b in _BATCH_SIZES.value]
  warmup, repeats = _WARMUP.value, _REPEATS.value
  if _QUICK.value:
    batch_sizes, warmup, repeats = [32], 1, 3
  if torch is None and not _SKIP_TORCH.value:
    raise app.UsageError("torch is not installed: pip install -e '.[bench]', or pass --skip_torch"
                         " to time the JAX variants only.")
  torch_threads = [int(t) for t in _TORCH_THREADS.value] or [len(os.sched_getaffinity(0))]
  if torch is not None:
    torch.set_num_threads(torch_threads[0])
  jax_device, torch_device = pick_devices(_DEVICE.value)
  on_cuda = torch_device is not None and torch_device.type == "cuda"
  if on_cuda:
    torch_threads = torch_threads[:1]  # The thread count hardly matters to a CUDA step.
  on_gpu = jax_device.platform == "gpu" or on_cuda
  steps_per_repeat = _STEPS_PER_REPEAT.value or (20 if on_gpu else 1)
  print("\n".join(device_info(jax_device, torch_device, torch_threads)), flush=True)
  warn_if_busy()
  started = time.perf_counter()
  if _CHECK_PORT.value and not _SKIP_TORCH.value:
    differences = check_port(gmvq_cifar10.get_config(), jax_device)
    print("torch port vs flax, same weights, max abs difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()), flush=True)

  timings = []
  for batch_size in batch_sizes:
    config = gmvq_cifar10.get_config()
    config.batch_size = batch_size
    config.quantizer.kmeans_init = _KMEANS_INIT.value
    build_jax = [functools.partial(JaxRunner, config, jax_device, batch_size)]
    if _GUARD_COST.value:
      build_jax.append(functools.partial(JaxRunner, config, jax_device, batch_size, guard=False))
    if _XLA_CONV.value:
      xla_conv = config.copy_and_resolve_references()
      xla_conv.conv_impl = "xla"
      build_jax.append(functools.partial(JaxRunner, xla_conv, jax_device, batch_size,
                                         name="jax/xla-conv"))
    build_torch = [] if _SKIP_TORCH.value else [
        functools.partial(TorchRunner, config, torch_device, batch_size, threads=threads,
                          compile=mode == "compile", adamw_impl=_TORCH_ADAMW.value,
                          name=f"torch/{mode}" + (f"/{threads}thr" if len(torch_threads) > 1 else ""))
        for mode in _TORCH_MODES.value for threads in torch_threads]
    timings += run_batch(batch_size, build_jax, build_torch, warmup=warmup, repeats=repeats,
                         steps_per_repeat=steps_per_repeat)

  print()
  print(f"GM-VQ train step, CIFAR10 config (32x32 images, C=1024, L=64, channels (32, 64), 2 residual "
        f"blocks), float32, conv_impl={config.conv_impl!r}.\n"
        f"Median of {repeats} repeats x {steps_per_repeat} step(s), after "
        f"{warmup} warm-up step(s), variants alternating; torch AdamW={_TORCH_ADAMW.value}.")
  print("\n".join(format_table(timings)))
  print("JAX speed-up = variant ms/step / JAX ms/step (>1: the library's JAX step is faster). "
        "setup s: JAX trace + lower + compile; torch: its first step (compilation included).")
  print("\n".join(summary(timings)))
  print("\n".join(device_info(jax_device, torch_device, torch_threads)))
  warn_if_busy()
  print(f"Total wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
  app.run(main)
