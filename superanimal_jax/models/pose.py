"""The top-down pose model: HRNet backbone, DeepLabCut's heatmap head and its predictor.

Input: crops ``(N, H, W, 3)`` float32, RGB, normalised as DeepLabCut normalises them
(:func:`superanimal_jax.transforms.normalize.normalize_crops`); H and W multiples of 32
(256x256 for SuperAnimal).
Output: raw heatmaps ``(N, H/4, W/4, K)``, no activation; keypoints decoded from their argmax.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from superanimal_jax.nn.hrnet import HRNET_TINY, HRNET_W32, HRNet, HRNetConfig
from superanimal_jax.nn.layers import Dtype


@dataclasses.dataclass(frozen=True)
class PoseConfig:
    """A pose model variant: the HRNet backbone configuration and the number of keypoints."""

    backbone: HRNetConfig = HRNET_W32
    num_keypoints: int = 27

    @property
    def stride(self) -> int:
        return self.backbone.stride


# Variants are data; the name is what a converted model directory records.
POSE_VARIANTS = {
    'hrnet_w32': PoseConfig(),
    'hrnet_tiny': PoseConfig(backbone=HRNET_TINY, num_keypoints=5),
}


class HeatmapHead(nn.Module):
    """DeepLabCut's ``HeatmapHead`` here: one 1x1 ``ConvTranspose2d`` (i.e. a 1x1 conv), no activation."""

    num_keypoints: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.Conv(self.num_keypoints, (1, 1), use_bias=True, dtype=self.dtype,
                       param_dtype=jnp.float32, name='deconv')(x)


class PoseNetwork(nn.Module):
    """Backbone + head. Returns the backbone's named taps plus ``'heatmaps'``."""

    config: PoseConfig = POSE_VARIANTS['hrnet_w32']
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        taps = HRNet(self.config.backbone, name='backbone', dtype=self.dtype)(x.astype(self.dtype))
        taps['heatmaps'] = HeatmapHead(self.config.num_keypoints, name='head', dtype=self.dtype)(
            taps['features'])
        return taps


def variables_shape(config: PoseConfig):
    """The network's variable tree as shape/dtype structs, computed without allocating weights."""
    return jax.eval_shape(PoseNetwork(config).init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3), jnp.float32))


def decode_heatmaps(heatmaps, stride: float = 4.0):
    """DeepLabCut's ``HeatmapPredictor``: per keypoint, the first row-major argmax.

    Returns ``(N, K, 3)`` float32: x and y in input pixels at the cell centre
    (``stride * index + stride / 2``) and the heatmap value there clipped to [0, 1].
    """
    n, h, w, k = heatmaps.shape
    flat = heatmaps.reshape(n, h * w, k)
    index = jnp.argmax(flat, axis=1)  # First maximum wins, as in torch.
    score = jnp.take_along_axis(flat, index[:, None, :], axis=1)[:, 0, :]
    y, x = jnp.divmod(index, w)
    half = 0.5 * stride
    return jnp.stack([x.astype(jnp.float32) * stride + half, y.astype(jnp.float32) * stride + half,
                      jnp.clip(score.astype(jnp.float32), 0.0, 1.0)], axis=-1)
