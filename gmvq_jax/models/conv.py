"""Convolutions as matrix products where that is the fast form on XLA:CPU.

XLA:CPU evaluates `lax.conv_general_dilated` and its gradients through
Eigen's convolution kernels. On the networks of this library, a 1x1
convolution's forward + backward runs ~4x faster as plain matrix products,
and a strided 4x4 one 1.4-2x faster as an im2col product; stride-1 k x k
convolutions measured no faster in any matrix-product form, so they stay
XLA's (`python -m benchmarks.conv_impl` times each layer both ways).

`conv_general_dilated` below is a drop-in replacement for
`lax.conv_general_dilated` in the case the networks use (NHWC inputs, HWIO
kernels, strides, explicit or 'SAME'/'VALID' padding, no dilation, one
feature group):

  1x1, stride 1, unpadded:  Y = X @ W (autodiff gives two more products);
  stride > 1:               Y = patches(X) @ W, the k x k windows of the
                            padded input gathered into (B, h, w, k k C_in)
                            (im2col), with a written-out gradient
                            (`jax.custom_vjp`): dW = patches^T @ dY (patches
                            recomputed, not stored) and dX = col2im(dY @ W^T)
                            (each tap's gradient added back where it was read);
  otherwise:                XLA's convolution.

The result is the same convolution, up to float rounding (summation order).
Anything outside that case falls through to `lax.conv_general_dilated`.
`select(impl, dtype)` picks the function a network uses: 'xla', 'matmul', or
'auto' (matmul for float32 networks on the CPU backend, XLA's convolution
elsewhere, where cuDNN and the TPU's convolution units beat a matrix product
of patches).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
from jax import lax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "matmul")

_NHWC = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def select(impl: str, dtype: Any = jnp.float32) -> Callable[..., jax.Array]:
  """The convolution function for `impl` ('auto', 'xla' or 'matmul'); see the module docstring.

  'auto' is 'matmul' for float32 networks on the CPU backend and 'xla'
  otherwise. In bfloat16, XLA:CPU computes its own convolutions in float32
  and may skip the rounding of their outputs to bfloat16; the matrix-product
  form rounds them, and a bf16 GM-VQ run drifted ~5% further from float32's
  loss in 8 steps (tests/test_precision.py), so bf16 keeps XLA's form.
  """
  if impl not in IMPLS:
    raise ValueError(f"conv_impl={impl!r}; allowed: {IMPLS}.")
  if impl == "auto":
    on_cpu = jax.default_backend() == "cpu"
    impl = "matmul" if on_cpu and jnp.dtype(dtype) == jnp.float32 else "xla"
  return conv_general_dilated if impl == "matmul" else lax.conv_general_dilated


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated`'s signature; the form of the module docstring."""
  fallback = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if (lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1
      or any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ()))
      or preferred_element_type is not None):
    return fallback()
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if numbers != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return fallback()
  strides = tuple(int(s) for s in window_strides)
  kernel = rhs.shape[:2]
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], kernel, strides, padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if any(lo < 0 or hi < 0 for lo, hi in pads):  # Negative padding crops: XLA's.
    return fallback()
  return _conv(lhs, rhs, strides, pads, precision)


def _output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def _patches(x: jax.Array, kernel: Sequence[int], strides: Sequence[int], pads: Pads) -> jax.Array:
  """(B, H, W, C) -> (B, h, w, kh kw C): the window of every output position, taps major."""
  (kh, kw), (sh, sw) = kernel, strides
  batch, height, width, channels = x.shape
  oh = _output_size(height, kh, sh, pads[0])
  ow = _output_size(width, kw, sw, pads[1])
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  taps = [lax.slice(padded, (0, i, j, 0), (batch, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1,
                                            channels), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _forward(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pads,
             precision: Any) -> jax.Array:
  patches = _patches(x, w.shape[:2], strides, pads)
  batch, oh, ow, depth = patches.shape
  y = _dot(patches.reshape(-1, depth), w.reshape(depth, w.shape[-1]), precision)
  return y.reshape(batch, oh, ow, w.shape[-1])


def _dot(a: jax.Array, b: jax.Array, precision: Any, contract: int = 1,
         dtype: Any = None) -> jax.Array:
  """a @ b (contract=1) or a^T @ b (contract=0), accumulated in float32 as XLA's convolution is.

  The result has `dtype`, default a's.
  """
  out = lax.dot_general(a, b, (((contract,), (0,)), ((), ())), precision=precision,
                        preferred_element_type=jnp.float32)
  return out.astype(dtype or a.dtype)


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv(x, w, strides, pads, precision):
  """The convolution in the form that is fastest on XLA:CPU for its shape."""
  if w.shape[:2] == (1, 1) and strides == (1, 1) and pads == ((0, 0), (0, 0)):
    # A 1x1 convolution is a matrix product; its autodiff is two more.
    batch, height, width, channels = x.shape
    y = _dot(x.reshape(-1, channels), w[0, 0], precision)
    return y.reshape(batch, height, width, w.shape[-1])
  if strides == (1, 1):
    # XLA's own stride-1 convolution and gradients measured as fast as any
    # matrix-product form of them.
    return _xla_conv(x, w, strides, pads, precision)
  return _im2col_conv(x, w, strides, pads, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _im2col_conv(x, w, strides, pads, precision):
  return _forward(x, w, strides, pads, precision)


def _im2col_fwd(x, w, strides, pads, precision):
  return _forward(x, w, strides, pads, precision), (x, w)


def _im2col_bwd(strides, pads, precision, residuals, grad):
  x, w = residuals
  kh, kw, cin, cout = w.shape
  patches = _patches(x, (kh, kw), strides, pads)  # Recomputed: cheaper than keeping it.
  flat_grad = grad.reshape(-1, cout)
  dw = _dot(patches.reshape(-1, kh * kw * cin), flat_grad, precision, contract=0)
  # The taps' gradients overlap where windows do: summed in float32, as XLA's
  # convolution gradient sums them (in bfloat16 a bf16 run drifts off float32's).
  dx = _col2im(_dot(flat_grad, w.reshape(-1, cout).T, precision, dtype=jnp.float32), x.shape,
               grad.shape[1:3], (kh, kw), strides, pads)
  return dx.astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


_im2col_conv.defvjp(_im2col_fwd, _im2col_bwd)


def _col2im(patch_grads: jax.Array, shape: Sequence[int], out_hw: Sequence[int],
            kernel: Sequence[int], strides: Sequence[int], pads: Pads) -> jax.Array:
  """The adjoint of `_patches`: each tap's gradient added back where it was read."""
  batch, height, width, channels = shape
  (oh, ow), (kh, kw), (sh, sw) = out_hw, kernel, strides
  padded_h, padded_w = height + sum(pads[0]), width + sum(pads[1])
  taps = patch_grads.reshape(batch, oh, ow, kh, kw, channels)
  zero = jnp.zeros((), patch_grads.dtype)
  total = None
  for i in range(kh):
    for j in range(kw):
      placed = lax.pad(taps[:, :, :, i, j, :], zero,
                       ((0, 0, 0), (i, padded_h - i - (oh - 1) * sh - 1, sh - 1),
                        (j, padded_w - j - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
      total = placed if total is None else total + placed
  return total[:, pads[0][0]:pads[0][0] + height, pads[1][0]:pads[1][0] + width, :]

