"""The scale pyramid of DeepLabCut's SuperAnimal TF video path: each frame resized to a list of
heights at its own aspect ratio, by OpenCV's bicubic resize on the host (what imgaug's
``Resize({'height': s, 'width': 'keep-aspect-ratio'})`` runs).  Parity: docs/parity/dlcrnet.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def default_scales(height: int) -> list[int]:
    """DeepLabCut's default scale list for frames ``height`` pixels high: ``[h - 50, h, h + 50]``."""
    return [height - 50, height, height + 50]


def check_scales(scales: Sequence[int]) -> list[int]:
    """Positive integer heights, or a clear error."""
    out = []
    for s in scales:
        if isinstance(s, bool) or int(s) != s or s < 1:
            raise ValueError(f'scales are frame heights in pixels (positive integers), got {s!r}')
        out.append(int(s))
    if not out:
        raise ValueError('the scale list is empty')
    return out


def scaled_shape(height: int, width: int, scale: int) -> tuple[int, int]:
    """``(scale, round(scale * width / height))``, imgaug's keep-aspect-ratio arithmetic (the ratio
    first, rounding half to even)."""
    return scale, max(int(np.round(scale * (width / height))), 1)


def resize_to_height(frames: np.ndarray, scale: int) -> np.ndarray:
    """uint8 frames ``(N, H, W, C)`` resized to height ``scale`` at their aspect ratio (bicubic,
    OpenCV); the frames themselves when the size does not change."""
    n, h, w = frames.shape[:3]
    size = scaled_shape(h, w, scale)
    if size == (h, w):
        return frames
    return np.stack([cv2.resize(f, size[::-1], interpolation=cv2.INTER_CUBIC) for f in frames])
