"""DeepLabCut's TensorFlow ``PoseResnet`` (the DLCRNet release's network) in Flax: the input
centred by the mean pixel, slim's ``resnet_v1_50`` and transposed-conv heads (``part_pred``, the
location refinement ``locref_pred``, the part-affinity ``pairwise_pred`` when present).
Parity: docs/parity/dlcrnet.md.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from superanimal_jax.nn.layers import Dtype
from superanimal_jax.nn.slim_resnet import SlimResNetV1

MEAN_PIXEL = (123.68, 116.779, 103.939)  # RGB, subtracted from 0-255 frames (no division).


@dataclasses.dataclass(frozen=True)
class PoseResnetConfig:
    """The heads of a DeepLabCut TF pose network (SuperAnimal-TopViewMouse: 27 joints, locref)."""

    num_joints: int = 27
    locref: bool = True
    num_limbs: int = 0  # Part-affinity fields (2 channels a limb); 0: none.
    locref_stdev: float = 7.2801
    stride: int = 8


class TransposedHead(nn.Module):
    """slim ``conv2d_transpose`` 3x3, stride 2, SAME, with bias (TF kernel layout ``[h, w, out, in]``)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param('weights', nn.initializers.lecun_normal(), (3, 3, self.features, x.shape[-1]),
                            jnp.float32)
        bias = self.param('biases', nn.initializers.zeros, (self.features,), jnp.float32)
        y = lax.conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), (2, 2), 'SAME',
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'), transpose_kernel=True)
        return y + bias.astype(self.dtype)


class PoseResnet(nn.Module):
    """RGB frames ``(N, H, W, 3)`` in 0-255 -> taps ``block1``..``block4``, ``part_pred`` (logits),
    ``scmap`` (sigmoid), ``locref`` (times ``locref_stdev``, channels joint x [dx, dy]) and
    ``pairwise_pred`` when the config has limbs."""

    config: PoseResnetConfig = PoseResnetConfig()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, frames):
        x = (frames - jnp.asarray(MEAN_PIXEL, jnp.float32)).astype(self.dtype)
        taps = dict(SlimResNetV1(dtype=self.dtype, name='resnet_v1_50')(x))
        features = taps['block4']
        part = TransposedHead(self.config.num_joints, dtype=self.dtype, name='part_pred')(features)
        taps.update(part_pred=part, scmap=jax.nn.sigmoid(part.astype(jnp.float32)))
        if self.config.locref:
            locref = TransposedHead(2 * self.config.num_joints, dtype=self.dtype,
                                    name='locref_pred')(features)
            taps['locref'] = locref.astype(jnp.float32) * jnp.float32(self.config.locref_stdev)
        if self.config.num_limbs:
            taps['pairwise_pred'] = TransposedHead(2 * self.config.num_limbs, dtype=self.dtype,
                                                   name='pairwise_pred')(features)
        return taps
