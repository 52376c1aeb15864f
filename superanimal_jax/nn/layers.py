"""Building blocks shared by the pose and detector networks.

PyTorch semantics, NHWC layout: every convolution pads explicitly and symmetrically by
``kernel // 2`` (what ``nn.Conv2d(padding=k // 2)`` does), never ``'SAME'``, which pads (0, 1)
for stride-2 convolutions on even inputs.  BatchNorm always normalises with its running
statistics: DeepLabCut freezes them in fine-tuning and uses them at inference.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

# PyTorch's BatchNorm2d defaults. Flax's momentum is the fraction *kept*, PyTorch's the fraction
# replaced; the value only matters if statistics are ever updated, which we never do.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def conv(features: int, kernel: int, stride: int = 1, *, name: str, dtype: Dtype = jnp.float32,
         use_bias: bool = False) -> nn.Conv:
    """A convolution padded as PyTorch pads it (``padding=kernel // 2``), with the fast kernel
    gradient of :func:`conv_general_dilated`."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                   param_dtype=jnp.float32, name=name, conv_general_dilated=conv_general_dilated)


FAST_KERNEL_GRADIENT_FROM = 10_000  # Output positions (batch x height x width) of a convolution.
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
    """``lax.conv_general_dilated`` (the same forward computation), whose kernel gradient for
    plain NHWC convolutions is a sum of matrix products, one per kernel tap.

    XLA:CPU computes a convolution's kernel gradient as a convolution with the output gradient as
    its kernel, 5-10x slower than the forward pass on ResNet shapes (a 1x1 kernel's gradient, a
    single matrix product, takes 40x longer); the input gradient is left to XLA.  Anything else
    (dilations, groups, string padding, other layouts) goes to ``lax`` as is.
    """
    plain = (feature_group_count == 1 and not isinstance(padding, str) and lhs.ndim == 4
             and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC)
    # Only where it pays: the per-tap form makes the program larger (compilation ~30 % longer
    # for a small HRNet), and below this many output positions XLA's own form is fast enough.
    positions = lhs.shape[0] * lhs.shape[1] * lhs.shape[2] // (window_strides[0] * window_strides[1])
    if not plain or positions < FAST_KERNEL_GRADIENT_FROM:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision)
    return _plain_conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _plain_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC, precision=precision)


def _plain_conv_forward(x, w, strides, padding, precision):
    return _plain_conv(x, w, strides, padding, precision), (x, w)


def _plain_conv_backward(strides, padding, precision, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    _, input_vjp = jax.vjp(lambda v: lax.conv_general_dilated(v, w, strides, padding, dimension_numbers=_NHWC,
                                                              precision=precision), x)
    input_grad = input_vjp(g)[0]
    n, ho, wo, _ = g.shape
    padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    accumulate = jnp.result_type(x, g, jnp.float32)  # bfloat16 sums in float32, float64 in float64.
    taps = []
    for a in range(kh):
        for b in range(kw):
            shifted = lax.slice(padded, (0, a, b, 0),
                                (n, a + strides[0] * (ho - 1) + 1, b + strides[1] * (wo - 1) + 1, x.shape[3]),
                                (1, strides[0], strides[1], 1))
            taps.append(jnp.einsum('nhwi,nhwo->io', shifted, g, precision=precision,
                                   preferred_element_type=accumulate))
    kernel_grad = jnp.stack(taps).reshape(w.shape).astype(w.dtype)
    return input_grad, kernel_grad


_plain_conv.defvjp(_plain_conv_forward, _plain_conv_backward)


def batch_norm(*, name: str, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
    """BatchNorm that normalises with running statistics (kept in float32)."""
    return nn.BatchNorm(use_running_average=True, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        dtype=dtype, param_dtype=jnp.float32, name=name)


class ConvBN(nn.Module):
    """``nn.Sequential(conv, BatchNorm[, ReLU])`` with the children named ``0`` and ``1``."""

    features: int
    kernel: int
    stride: int = 1
    relu: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv(self.features, self.kernel, self.stride, name='0', dtype=self.dtype)(x)
        x = batch_norm(name='1', dtype=self.dtype)(x)
        return nn.relu(x) if self.relu else x


def upsample_nearest(x, factor: int):
    """``nn.Upsample(scale_factor=factor, mode='nearest')`` for NHWC: out[i] = in[i // factor]."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
    return x.reshape(n, h * factor, w * factor, c)
