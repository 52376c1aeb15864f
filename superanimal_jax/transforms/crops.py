"""Top-down crops around detector boxes, as DeepLabCut 3.0.2 makes them for SuperAnimal models.

Windows about each box at the output's aspect ratio (square for 256x256), black outside the frame,
resized by OpenCV on the host.  Parity with DeepLabCut: docs/parity/crops.md.
"""

from __future__ import annotations

import cv2
import numpy as np


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` corners -> COCO ``x, y, w, h`` in float32 (``w = x2 - x1``)."""
    boxes = np.asarray(boxes, np.float32)
    return np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)


def crop_windows(boxes_xywh: np.ndarray, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Integer crop windows ``(M, 4)`` ``x1, y1, x2, y2`` (unclipped) for COCO boxes ``(M, 4)``.

    ``size`` is the output ``(width, height)``; the window takes its aspect ratio by growing the
    box's shorter side about the centre, as DeepLabCut's ``top_down_crop`` with context does.
    """
    b = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
    x, y, w, h = b.T
    half = np.float32(0.5)
    cx, cy = x + w * half, y + h * half  # w / 2 and w * 0.5 are the same float32.
    out_ratio = size[0] / size[1]
    with np.errstate(divide='ignore', invalid='ignore'):
        ratio = w / h
    wider, taller = ratio > out_ratio, ratio < out_ratio
    h = np.where(wider, w / np.float32(out_ratio), h).astype(np.float32)
    w = np.where(taller, h * np.float32(out_ratio), w).astype(np.float32)
    x1, x2 = np.rint(cx - w * half), np.rint(cx + w * half)  # rint: half to even, like round().
    y1, y2 = np.rint(cy - h * half), np.rint(cy + h * half)
    windows = np.stack([x1, y1, x2, y2], axis=-1).astype(np.int64)
    # DeepLabCut would fail on an empty window (a box thinner than half a pixel rounding to a
    # single column); we keep at least one pixel instead.
    windows[:, 2] = np.maximum(windows[:, 2], windows[:, 0] + 1)
    windows[:, 3] = np.maximum(windows[:, 3], windows[:, 1] + 1)
    return windows


def crop(frame: np.ndarray, window: np.ndarray, size: tuple[int, int] = (256, 256)) -> np.ndarray:
    """The uint8 crop of ``frame`` (H, W, 3) inside ``window`` (x1, y1, x2, y2), black outside
    the frame, resized to ``size`` (width, height) by OpenCV."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in window)
    canvas = np.zeros((y2 - y1, x2 - x1, frame.shape[2]), frame.dtype)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 > cx1 and cy2 > cy1:
        canvas[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1] = frame[cy1:cy2, cx1:cx2]
    return cv2.resize(canvas, size, interpolation=cv2.INTER_LINEAR)


def scales_and_offsets(windows: np.ndarray, size: tuple[int, int] = (256, 256)
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``(M, 2)`` float64 scales and offsets that take crop pixels back to the frame."""
    windows = np.asarray(windows, np.int64)
    scales = (windows[:, 2:] - windows[:, :2]) / np.asarray(size, np.float64)
    return scales, windows[:, :2].astype(np.float64)


def to_frame(keypoints: np.ndarray, scales: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Crop keypoints ``(M, K, 3)`` (x, y, score) -> frame pixels, float32 (the affine in float64)."""
    out = np.array(keypoints, np.float32)
    out[..., :2] = keypoints[..., :2] * scales[:, None, :] + offsets[:, None, :]
    return out
