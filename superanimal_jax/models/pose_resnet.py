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
import numpy as np
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
    multi_stage: bool = False  # The multi-stage DLCRNet_ms5 (models/pose_multinet.py).


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


def gaussian_kernel(sigma: float = 1.0, radius: int = 5) -> np.ndarray:
    """DeepLabCut's score-map smoothing kernel, ``(2 radius + 1)`` square: the outer product of a
    float32 softmax of ``-k**2 / (2 sigma**2)`` (so it sums to 1)."""
    k = np.arange(-radius, radius + 1).astype(np.float32) ** 2
    logits = -k / np.float32(2 * sigma ** 2)
    e = np.exp(logits - logits.max())
    g = e / e.sum(dtype=np.float32)
    return np.outer(g, g).astype(np.float32)


def thousandths(x: jax.Array) -> jax.Array:
    """``round_half_even(x * 1000)`` in ``x``'s dtype: the integer numerator of ``numpy.round(x, 3)``,
    which divides it by 1000 afterwards.  The division is left to the host (numpy): under ``jit``
    XLA turns a division by a constant into a multiplication by its reciprocal, which differs
    from numpy in the last bit; the numerators order the scores exactly as the rounded values do."""
    return jnp.round(x * jnp.asarray(1000, x.dtype))


def best_peaks(scmap: jax.Array, locref: jax.Array | None, *, nms_radius: int = 5, sigma: float = 1.0,
               min_confidence: float = 0.01) -> dict[str, jax.Array]:
    """Per frame and joint, the peak DeepLabCut's TF engine reports for one animal.

    Peaks: the score map smoothed by :func:`gaussian_kernel` (zero ``SAME`` padding), kept where it
    equals its ``nms_radius`` x ``nms_radius`` max-pool (stride 1, ``SAME``) and is at least
    ``min_confidence``.  Of a joint's peaks, the one with the highest *unsmoothed* score rounded to
    3 decimals, the first in row-major order on ties.  ``scmap (N, H, W, K)`` sigmoid scores,
    ``locref (N, H, W, 2K)`` already scaled by ``locref_stdev``.

    Returns ``row``, ``col`` (int32 ``(N, K)``), ``thousandths`` (the peak's score times 1000,
    rounded: ``thousandths / 1000`` in float32 is DeepLabCut's confidence), ``offset`` ``(N, K, 2)``
    (locref dx, dy at the peak; zeros without locref) and ``found`` (bool: the joint has a peak)."""
    n, h, w, k = scmap.shape
    kernel = jnp.asarray(gaussian_kernel(sigma, nms_radius))[:, :, None, None]
    smoothed = lax.conv_general_dilated(
        scmap, jnp.tile(kernel, (1, 1, 1, k)), (1, 1), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=k,
        precision=lax.Precision.HIGHEST)
    pooled = lax.reduce_window(smoothed, -jnp.inf, lax.max, (1, nms_radius, nms_radius, 1), (1, 1, 1, 1),
                               'SAME')
    is_peak = (smoothed == pooled) & (smoothed >= jnp.float32(min_confidence))
    score = jnp.where(is_peak, thousandths(scmap), -jnp.inf).reshape(n, h * w, k)
    index = jnp.argmax(score, axis=1)  # (N, K): the first maximum.
    score = jnp.take_along_axis(score, index[:, None], axis=1)[:, 0]
    row, col = (index // w).astype(jnp.int32), (index % w).astype(jnp.int32)
    if locref is None:
        offset = jnp.zeros((n, k, 2), jnp.float32)
    else:
        flat = locref.reshape(n, h * w, k, 2)
        offset = jnp.take_along_axis(flat, index[:, None, :, None], axis=1)[:, 0]
    return {'row': row, 'col': col, 'thousandths': score, 'offset': offset,
            'found': is_peak.any(axis=(1, 2))}


def network(config: PoseResnetConfig, dtype: Dtype = jnp.float32) -> nn.Module:
    """The Flax network for ``config``: :class:`PoseResnet`, or the multi-stage
    ``pose_multinet.PoseMultiNet`` when ``config.multi_stage``."""
    if config.multi_stage:
        from superanimal_jax.models.pose_multinet import PoseMultiNet

        return PoseMultiNet(config, dtype=dtype)
    return PoseResnet(config, dtype=dtype)


def variables_shape(config: PoseResnetConfig = PoseResnetConfig()):
    """Shape/dtype structs of the network's variables (what a converter fills)."""
    return jax.eval_shape(network(config).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
