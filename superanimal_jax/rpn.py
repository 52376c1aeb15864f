"""The region proposal network's head (torchvision ``RPNHead``, v2: two 3x3 conv+ReLU layers).

Outputs are flattened in torchvision's order: for each level, index ``(y * W + x) * A + a``, and
the 4 deltas of anchor ``a`` are channels ``4a .. 4a + 3`` (dx, dy, dw, dh).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from superanimal_jax.layers import Dtype, conv


class ConvReLU(nn.Module):
    """``Conv2dNormActivation(norm_layer=None)``: a biased conv named ``'0'`` and a ReLU."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.relu(conv(self.features, 3, name='0', dtype=self.dtype, use_bias=True)(x))


class Convs(nn.Module):
    depth: int
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.depth):
            x = ConvReLU(self.features, name=str(k), dtype=self.dtype)(x)
        return x


class RPNHead(nn.Module):
    """Shared over levels; returns per level (logits (N, h*w*A), deltas (N, h*w*A, 4))."""

    num_anchors: int = 3
    channels: int = 256
    depth: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, levels):
        tower = Convs(self.depth, self.channels, name='conv', dtype=self.dtype)
        cls = conv(self.num_anchors, 1, name='cls_logits', dtype=self.dtype, use_bias=True)
        box = conv(4 * self.num_anchors, 1, name='bbox_pred', dtype=self.dtype, use_bias=True)
        outputs = []
        for x in levels:
            t = tower(x)
            n = x.shape[0]
            outputs.append((cls(t).reshape(n, -1), box(t).reshape(n, -1, 4)))
        return outputs
