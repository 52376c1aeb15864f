"""DeepLabCut's heatmap targets (one Gaussian per keypoint, weights by visibility) and weighted MSE
for top-down fine-tuning.

Parity with DeepLabCut: docs/parity/targets.md.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

POS_DIST_THRESH = 17.0


def heatmap_targets(keypoints: np.ndarray, heatmap_size: tuple[int, int], stride: int = 4,
                    pos_dist_thresh: float = POS_DIST_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """``keypoints`` ``(B, K, 3)`` crop-pixel x, y, visibility -> ``targets`` and ``weights``,
    each ``(B, H, W, K)`` float32 (NHWC, like our heatmaps)."""
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f'keypoints must be (B, K, 3) x, y, visibility; got {keypoints.shape}')
    h, w = heatmap_size
    std = 2.0 * pos_dist_thresh / 3.0
    ys = (np.arange(h) * stride + stride // 2).astype(np.float64)
    xs = (np.arange(w) * stride + stride // 2).astype(np.float64)
    x, y, v = (keypoints[..., i, None, None] for i in range(3))  # (B, K, 1, 1)
    with np.errstate(invalid='ignore'):
        d2 = (xs[None, None, None, :] - x) ** 2 + (ys[None, None, :, None] - y) ** 2
        targets = np.where(v > 0, np.exp(-d2 / (2.0 * std * std)), 0.0)
    weights = np.broadcast_to(np.where(v == -1, 0.0, 1.0), targets.shape)
    return (np.ascontiguousarray(targets.transpose(0, 2, 3, 1), np.float32),
            np.ascontiguousarray(weights.transpose(0, 2, 3, 1), np.float32))


def weighted_mse(predictions, targets, weights):
    """DeepLabCut's ``WeightedMSECriterion`` (float32 sums)."""
    error = weights * (predictions.astype(jnp.float32) - targets) ** 2
    count = jnp.count_nonzero(weights).astype(jnp.float32)
    return jnp.sum(error) / jnp.maximum(count, 1.0)
