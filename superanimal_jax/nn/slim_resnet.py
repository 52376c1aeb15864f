"""tf_slim's ``resnet_v1_50`` in Flax, as DeepLabCut's TensorFlow engine builds it (inference).

Output stride 16: the stride sits on the last unit of blocks 1 and 2, block 3's last unit runs at
stride 1 and block 4 is atrous (rate 2).  Strided convolutions pad like slim's ``conv2d_same``
(explicit symmetric padding, then VALID), not XLA's "SAME".  Parity: docs/parity/dlcrnet.md.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from superanimal_jax.nn.layers import Dtype

BN_EPSILON = 1e-5  # slim's batch_norm in resnet_arg_scope.
# (bottleneck depth, units) of resnet_v1_50's four blocks, each unit's output 4 x depth.
RESNET_V1_50 = ((64, 3), (128, 4), (256, 6), (512, 3))


class SlimConv(nn.Module):
    """slim ``conv2d`` (no bias) + ``batch_norm`` (moving statistics) [+ ReLU]; ``conv2d_same``
    padding when ``stride > 1``."""

    features: int
    kernel: int
    stride: int = 1
    rate: int = 1
    relu: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.stride == 1:
            padding = 'SAME'
        else:
            total = self.kernel + (self.kernel - 1) * (self.rate - 1) - 1
            begin, end = total // 2, total - total // 2
            x = jnp.pad(x, ((0, 0), (begin, end), (begin, end), (0, 0)))
            padding = 'VALID'
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding=padding,
                    kernel_dilation=self.rate, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                    name='conv')(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                         param_dtype=jnp.float32, name='BatchNorm')(x)
        return nn.relu(x) if self.relu else x


class SlimBottleneck(nn.Module):
    """slim's ``bottleneck`` (v1): 1x1, 3x3 (``conv2d_same``, stride, rate), 1x1; the shortcut is a
    strided 1x1 conv + BatchNorm where the depth changes, else the input subsampled."""

    depth: int
    stride: int = 1
    rate: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        out = 4 * self.depth
        if x.shape[-1] == out:
            shortcut = x[:, ::self.stride, ::self.stride]
        else:
            shortcut = SlimConv(out, 1, self.stride, relu=False, dtype=self.dtype, name='shortcut')(x)
        r = SlimConv(self.depth, 1, dtype=self.dtype, name='conv1')(x)
        r = SlimConv(self.depth, 3, self.stride, self.rate, dtype=self.dtype, name='conv2')(r)
        r = SlimConv(out, 1, relu=False, dtype=self.dtype, name='conv3')(r)
        return nn.relu(shortcut + r)


class SlimResNetV1(nn.Module):
    """``resnet_v1_50(global_pool=False, output_stride=16, is_training=False)``; returns the
    taps ``block1`` .. ``block4`` (block 4: stride 16, 2048 channels) and the unit outputs named
    in ``units`` (slim's end points ``block{b}/unit_{u}``)."""

    blocks: tuple[tuple[int, int], ...] = RESNET_V1_50
    output_stride: int = 16
    units: tuple[str, ...] = ()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = SlimConv(64, 7, 2, dtype=self.dtype, name='conv1')(x)
        x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
        taps, current, rate = {}, 4, 1
        for b, (depth, units) in enumerate(self.blocks, start=1):
            for u in range(1, units + 1):
                stride = 2 if (u == units and b < len(self.blocks)) else 1
                name = f'block{b}_unit_{u}'  # TF: block{b}/unit_{u}/bottleneck_v1 (see tables.py).
                if current == self.output_stride:  # slim's stack_blocks_dense: atrous from here on.
                    x = SlimBottleneck(depth, 1, rate, dtype=self.dtype, name=name)(x)
                    rate *= stride
                else:
                    x = SlimBottleneck(depth, stride, 1, dtype=self.dtype, name=name)(x)
                    current *= stride
                if f'block{b}/unit_{u}' in self.units:
                    taps[f'block{b}/unit_{u}'] = x
            taps[f'block{b}'] = x
        return taps
