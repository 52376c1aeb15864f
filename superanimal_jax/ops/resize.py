"""TensorFlow 1's legacy bilinear resize (``tf.compat.v1.image.resize_images``, the default
``align_corners=False``, ``half_pixel_centers=False``), which DeepLabCut's multi-stage DLCRNet
uses on its decoder's feature banks.  ``jax.image.resize`` samples at half-pixel centres and
differs (by about 1.2 on those features).  Parity: docs/parity/dlcrnet.md.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _axis_weights(size_in: int, size_out: int):
    """Source rows ``lower``, ``upper`` and the float32 weight of ``upper`` for each output row:
    ``source = i * (size_in / size_out)`` (float32), clamped at the last row."""
    scale = np.float32(size_in) / np.float32(size_out)  # As TF: a float32 quotient.
    source = np.arange(size_out, dtype=np.float32) * scale
    lower = np.floor(source).astype(np.int32)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, (source - lower.astype(np.float32)).astype(np.float32)


def resize_bilinear_legacy(x, size: tuple[int, int]):
    """``(N, H, W, C)`` -> ``(N, *size, C)``, TF1's legacy bilinear resize (top-left aligned
    corners, no half-pixel offset); the identity when the size does not change."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    y0, y1, wy = _axis_weights(h, size[0])
    x0, x1, wx = _axis_weights(w, size[1])
    wx = jnp.asarray(wx, x.dtype)[None, None, :, None]
    wy = jnp.asarray(wy, x.dtype)[None, :, None, None]
    top, bottom = x[:, y0], x[:, y1]
    top = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * wx
    bottom = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * wx
    return top + (bottom - top) * wy
