"""Building blocks shared by the pose and detector networks.

PyTorch semantics, NHWC layout: every convolution pads explicitly and symmetrically by
``kernel // 2`` (what ``nn.Conv2d(padding=k // 2)`` does), never ``'SAME'``, which pads (0, 1)
for stride-2 convolutions on even inputs.  BatchNorm always normalises with its running
statistics: DeepLabCut freezes them in fine-tuning and uses them at inference.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# PyTorch's BatchNorm2d defaults. Flax's momentum is the fraction *kept*, PyTorch's the fraction
# replaced; the value only matters if statistics are ever updated, which we never do.
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def conv(features: int, kernel: int, stride: int = 1, *, name: str, dtype: Dtype = jnp.float32,
         use_bias: bool = False) -> nn.Conv:
    """A convolution padded as PyTorch pads it (``padding=kernel // 2``)."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


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
