"""The second stage's networks: ``FastRCNNConvFCHead`` (v2) and ``FastRCNNPredictor``.

``box_head``: 4 x (3x3 conv + BN + ReLU) on the 7x7x256 pooled RoI features, flatten, Linear
12544 -> 1024 (named ``'5'`` as in torchvision's Sequential), ReLU.  torchvision flattens NCHW
(``c * 49 + y * 7 + x``); we flatten NHWC and the converter permutes that Linear's input axis.
``box_predictor``: class logits (background, animal) and per-class box deltas.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from superanimal_jax.layers import ConvBN, Dtype


class BoxHead(nn.Module):
    channels: int = 256
    num_convs: int = 4
    representation: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.num_convs):
            x = ConvBN(self.channels, 3, name=str(k), dtype=self.dtype)(x)
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.representation, dtype=self.dtype, param_dtype=jnp.float32,
                                name=str(self.num_convs + 1))(x))


class BoxPredictor(nn.Module):
    num_classes: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
        return dense(self.num_classes, 'cls_score')(x), dense(4 * self.num_classes, 'bbox_pred')(x)
