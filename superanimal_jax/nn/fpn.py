"""torchvision's FeaturePyramidNetwork as ``fasterrcnn_resnet50_fpn_v2`` builds it.

v2 blocks are conv + BatchNorm without bias or activation: ``inner_blocks.i`` 1x1 (C_i -> 256),
``layer_blocks.i`` 3x3 (256 -> 256).  Top-down: start at C5, add the 2x nearest-upsampled running
sum to each lateral (inputs are padded to multiples of 32, so every level is exactly twice the
next), and ``LastLevelMaxPool`` adds ``'pool'`` = P5 sampled every second pixel.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from superanimal_jax.nn.layers import ConvBN, Dtype, upsample_nearest

LEVELS = ('0', '1', '2', '3', 'pool')


class PerLevel(nn.Module):
    """One ConvBN (no activation) per pyramid level, named ``'0'`` ..."""

    channels: int
    kernel: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs):
        return [ConvBN(self.channels, self.kernel, relu=False, name=str(i), dtype=self.dtype)(x)
                for i, x in enumerate(xs)]


class FPN(nn.Module):
    """C2..C5 -> ``{'0': P2, '1': P3, '2': P4, '3': P5, 'pool': P6}``, 256 channels each."""

    channels: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features):
        laterals = PerLevel(self.channels, 1, name='inner_blocks', dtype=self.dtype)(features)
        sums = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            sums.insert(0, lateral + upsample_nearest(sums[0], 2))
        outputs = PerLevel(self.channels, 3, name='layer_blocks', dtype=self.dtype)(sums)
        outputs.append(outputs[-1][:, ::2, ::2])  # max_pool2d(kernel 1, stride 2).
        return dict(zip(LEVELS, outputs))
