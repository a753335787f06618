"""Each convolution of the CIFAR10 networks, forward + backward, as XLA's and as conv.py's form.

    python -m benchmarks.conv_impl [--batch_size=256] [--repeats=7] [--quick]

For every convolution shape of the encoder and decoder (configs/gmvq_cifar10.py:
32x32 images, channels (32, 64), latent width 64), times the gradient of
sum(conv(x, w)^2) with respect to the input (except for the first layer,
whose input is the images) and the kernel, with `lax.conv_general_dilated`
and with `gmvq_jax.models.conv.conv_general_dilated` (what conv_impl='matmul'
and, on the CPU, 'auto' use), alternating, median of the repeats. Then the
whole encoder and decoder, forward + backward, the same way.
"""

from __future__ import annotations

import time
from typing import Callable

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gmvq_jax.models import conv
from gmvq_jax.models import networks

_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repeats; the median is reported.")
_QUICK = flags.DEFINE_bool("quick", False, "Batch 8 and 2 repeats: a smoke check.")

# (name, input (H, W, C_in), kernel, stride, C_out, input gradient needed)
LAYERS = (
    ("enc 4x4/2 3->32", (32, 32, 3), 4, 2, 32, False),
    ("enc 4x4/2 32->64", (16, 16, 32), 4, 2, 64, True),
    ("3x3 64->64", (8, 8, 64), 3, 1, 64, True),
    ("1x1 64->64", (8, 8, 64), 1, 1, 64, True),
    ("enc out 1x1 64->128", (8, 8, 64), 1, 1, 128, True),
    ("up 3x3 64->4*32", (8, 8, 64), 3, 1, 128, True),
    ("up 3x3 32->4*3", (16, 16, 32), 3, 1, 12, True),
)
IMPLS = (("xla", lax.conv_general_dilated), ("matmul", conv.conv_general_dilated))


def _median_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
  """Times the functions in alternation, after a warm-up call each."""
  for fn in fns:
    jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for repeat in range(repeats):
    order = range(len(fns)) if repeat % 2 == 0 else reversed(range(len(fns)))
    for index in order:
      started = time.perf_counter()
      jax.block_until_ready(fns[index]())
      times[index].append(time.perf_counter() - started)
  return [1e3 * float(np.median(t)) for t in times]


def layer_steps(batch: int, shape, kernel: int, stride: int, out: int, wrt_input: bool):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch,) + shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], out)) * 0.1, jnp.float32)
  steps = []
  for _, fn in IMPLS:
    loss = lambda x, w, fn=fn: jnp.sum(jnp.square(
        fn(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1) if wrt_input else (1,)))
    steps.append(lambda grad=grad: grad(x, w))
  return steps


def network_steps(batch: int):
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(batch, 32, 32, 3)), jnp.float32)
  latents = jnp.asarray(np.random.default_rng(2).normal(size=(batch, 8, 8, 64)), jnp.float32)
  steps = {"encoder": [], "decoder": []}
  for _, fn in IMPLS:
    for name, module, inputs in (("encoder", networks.Encoder(128, conv=fn), images),
                                 ("decoder", networks.Decoder(conv=fn), latents)):
      variables = module.init(jax.random.key(0), inputs, train=False)

      def loss(params, inputs, module=module, variables=variables):
        out, _ = module.apply(dict(variables, params=params), inputs, train=True,
                              mutable=["batch_stats"])
        return jnp.sum(jnp.square(out))
      grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
      steps[name].append(lambda grad=grad, v=variables, x=inputs: grad(v["params"], x))
  return steps


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  batch, repeats = (8, 2) if _QUICK.value else (_BATCH.value, _REPEATS.value)
  print(f"Convolutions of the CIFAR10 networks, batch {batch}, forward + backward, median of "
        f"{repeats}; jax {jax.__version__}, backend {jax.default_backend()}.")
  header = f"{'layer':<22}{'xla ms':>10}{'matmul ms':>11}{'xla/matmul':>12}"
  print(header)
  print("-" * len(header))
  rows = [(name, layer_steps(batch, shape, kernel, stride, out, wrt_input))
          for name, shape, kernel, stride, out, wrt_input in LAYERS]
  rows += list(network_steps(batch).items())
  for name, steps in rows:
    xla_ms, matmul_ms = _median_ms(steps, repeats)
    print(f"{name:<22}{xla_ms:>10.2f}{matmul_ms:>11.2f}{xla_ms / matmul_ms:>11.2f}x")


if __name__ == "__main__":
  app.run(main)
