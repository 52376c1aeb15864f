"""ResNet building blocks and torchvision's ResNet-50 body (the detector's backbone).

Module names mirror torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``downsample``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from superanimal_jax.nn.layers import ConvBN, Dtype, batch_norm, conv


class Bottleneck(nn.Module):
    """torchvision/timm ``Bottleneck`` v1.5: expansion 4, the stride on the 3x3 conv."""

    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        y = nn.relu(batch_norm(name='bn1', dtype=d)(conv(self.planes, 1, name='conv1', dtype=d)(x)))
        y = nn.relu(batch_norm(name='bn2', dtype=d)(
            conv(self.planes, 3, self.stride, name='conv2', dtype=d)(y)))
        y = batch_norm(name='bn3', dtype=d)(conv(4 * self.planes, 1, name='conv3', dtype=d)(y))
        if self.downsample:
            x = ConvBN(4 * self.planes, 1, self.stride, relu=False, name='downsample', dtype=d)(x)
        return nn.relu(y + x)


class BasicBlock(nn.Module):
    """timm/torchvision ``BasicBlock``: two 3x3 convolutions and an identity shortcut."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        y = nn.relu(batch_norm(name='bn1', dtype=d)(conv(self.channels, 3, name='conv1', dtype=d)(x)))
        y = batch_norm(name='bn2', dtype=d)(conv(self.channels, 3, name='conv2', dtype=d)(y))
        return nn.relu(y + x)


class ResNetStage(nn.Module):
    """``layerN``: Bottlenecks ``'0'`` ..., the first with the stride and a projection shortcut."""

    num_blocks: int
    planes: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.num_blocks):
            x = Bottleneck(self.planes, self.stride if k == 0 else 1, downsample=k == 0, name=str(k),
                           dtype=self.dtype)(x)
        return x


class ResNet50Body(nn.Module):
    """conv1 7x7/2 + BN + ReLU + 3x3/2 max-pool, then layer1-4; returns C2..C5 (strides 4-32)."""

    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x = nn.relu(batch_norm(name='bn1', dtype=d)(conv(self.width, 7, 2, name='conv1', dtype=d)(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # Pads with -inf.
        outputs = []
        for i, n in enumerate(self.stage_blocks):
            x = ResNetStage(n, self.width * 2 ** i, 1 if i == 0 else 2, name=f'layer{i + 1}', dtype=d)(x)
            outputs.append(x)
        return outputs
