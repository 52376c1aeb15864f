"""DeepLabCut's multi-stage TF network, ``PoseMultiNet`` with ``multi_stage`` ("DLCRNet_ms5"), in
Flax, as TF runs it at inference: slim's ``resnet_v1_50``; a decoder that resizes the outputs of
``block1/unit_3`` and ``block2/unit_3`` (TF1's legacy bilinear resize) and brings them to stride
16 through strided convs whose BatchNorm uses the *batch statistics* (slim's ``batch_norm``
defaults to ``is_training=True``, and DeepLabCut does not override it); the stage-1 transposed
heads at stride 8 (score map, locref, part-affinity fields, a 128-channel feature), then three
refinement stages of 3x3 convs on [score map, fields, feature] and the final ``part_pred`` /
``pairwise_pred``.  Parity: docs/parity/dlcrnet.md.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from superanimal_jax.models.pose_resnet import MEAN_PIXEL, PoseResnetConfig, TransposedHead
from superanimal_jax.nn.layers import Dtype
from superanimal_jax.nn.slim_resnet import SlimResNetV1
from superanimal_jax.ops.resize import resize_bilinear_legacy

DECODER_BN_EPSILON = 1e-3  # slim's batch_norm default (the decoder does not take resnet_arg_scope's).
BANK_1, BANK_2 = 'block1/unit_3', 'block2/unit_3'
FEATURE_CHANNELS = 128  # The ``pose/Conv2d_transpose`` feature fed to every refinement stage.


class DecoderConv(nn.Module):
    """slim ``conv2d`` (TF ``SAME`` padding, no bias) + ``batch_norm`` in training mode (this
    frame's mean and biased variance over H, W; offset ``beta``, no scale) + ReLU.

    TensorFlow normalises over the whole batch; DeepLabCut's SuperAnimal video path runs one frame
    per batch (its default), so each frame is normalised on its own here, whatever the batch."""

    features: int
    kernel: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding='SAME',
                    use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name='conv')(x)
        beta = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=(1, 2), keepdims=True)
        centred = x32 - mean
        variance = jnp.square(centred).mean(axis=(1, 2), keepdims=True)
        y = centred * jax.lax.rsqrt(variance + DECODER_BN_EPSILON) + beta
        return nn.relu(y).astype(self.dtype)


class StageConv(nn.Module):
    """slim ``conv2d`` 3x3, stride 1, ``SAME``, with bias, no activation (a refinement stage)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Conv(self.features, (3, 3), padding='SAME', dtype=self.dtype, param_dtype=jnp.float32,
                       name='Conv')(x)


class PoseMultiNet(nn.Module):
    """RGB frames ``(N, H, W, 3)`` in 0-255 -> taps ``block1``..``block4``, the decoder banks,
    ``part_pred_s1``, ``part_pred`` (final logits), ``scmap`` (sigmoid), ``locref`` (times
    ``locref_stdev``) and ``pairwise_pred``.  Needs ``config.num_limbs`` (the stages refine the
    part-affinity fields with the score maps)."""

    config: PoseResnetConfig = PoseResnetConfig(num_limbs=351, multi_stage=True)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, frames):
        c = self.config
        if not c.num_limbs:
            raise ValueError('the multi-stage network needs part-affinity fields (num_limbs > 0)')
        x = (frames - jnp.asarray(MEAN_PIXEL, jnp.float32)).astype(self.dtype)
        taps = dict(SlimResNetV1(units=(BANK_1, BANK_2), dtype=self.dtype, name='resnet_v1_50')(x))
        final = (math.ceil(frames.shape[1] / 16), math.ceil(frames.shape[2] / 16))
        bank_1 = resize_bilinear_legacy(taps.pop(BANK_1), (4 * final[0], 4 * final[1]))
        bank_2 = resize_bilinear_legacy(taps.pop(BANK_2), (2 * final[0], 2 * final[1]))
        bank_2 = DecoderConv(512, 3, 2, dtype=self.dtype, name='decoder_parallel_1')(bank_2)
        bank_2 = DecoderConv(128, 1, dtype=self.dtype, name='decoder_parallel_2')(bank_2)
        bank_1 = DecoderConv(256, 3, 2, dtype=self.dtype, name='decoder_parallel_3')(bank_1)
        bank_1 = DecoderConv(256, 3, 2, dtype=self.dtype, name='decoder_parallel_4')(bank_1)
        bank_1 = DecoderConv(128, 1, dtype=self.dtype, name='decoder_parallel_5')(bank_1)
        net = jnp.concatenate([bank_1, bank_2, taps['block4']], axis=-1)
        taps.update(bank_1=bank_1, bank_2=bank_2)
        joints, fields = c.num_joints, 2 * c.num_limbs
        heatmap = TransposedHead(joints, dtype=self.dtype, name='part_pred_s1')(net)
        taps['part_pred_s1'] = heatmap
        if c.locref:
            locref = TransposedHead(2 * joints, dtype=self.dtype, name='locref_pred')(net)
            taps['locref'] = locref.astype(jnp.float32) * jnp.float32(c.locref_stdev)
        feature = nn.relu(TransposedHead(FEATURE_CHANNELS, dtype=self.dtype, name='Conv2d_transpose')(net))
        paf = TransposedHead(fields, dtype=self.dtype, name='pairwise_pred_s1')(net)
        stage_input = jnp.concatenate([heatmap, paf, feature], axis=-1)
        for i in range(2, 5):
            paf = StageConv(fields, dtype=self.dtype, name=f'pairwise_pred_s{i}')(stage_input)
            refined = StageConv(joints, dtype=self.dtype, name=f'part_pred_s{i}')(stage_input)
            heatmap = refined + heatmap if i > 2 else refined
            stage_input = jnp.concatenate([heatmap, paf, feature], axis=-1)
        part = StageConv(joints, dtype=self.dtype, name='part_pred')(stage_input)
        taps.update(part_pred=part, scmap=jax.nn.sigmoid(part.astype(jnp.float32)),
                    pairwise_pred=StageConv(fields, dtype=self.dtype, name='pairwise_pred')(stage_input))
        return taps
