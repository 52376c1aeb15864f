"""The detector's training images, as DeepLabCut 3.0.2 makes them (``base_detector.yaml``): horizontal
flip, affine rotation/translation, normalisation, then ``ResizeFromDataSizeCollate`` (a random
size per batch, antialiased bilinear resize, random offset, zero padding), then torchvision's own
transform (normalised again, resized without antialiasing, padded to /32) on the host.

On the host in numpy and OpenCV; every random draw comes from the ``numpy.random.Generator``
given.  Parity with DeepLabCut: docs/parity/detector_training.md.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from superanimal_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from superanimal_jax.transforms import detector_input
from superanimal_jax.transforms.augment import rotation_matrix
from superanimal_jax.transforms.normalize import normalize


@dataclasses.dataclass(frozen=True)
class DetectorAugmentation:
    """``data.train`` of DeepLabCut's ``base_detector.yaml`` (collate: ``ResizeFromDataSizeCollate``)."""

    hflip_p: float = 0.5
    affine_p: float = 0.5
    rotate: float = 30.0  # Largest |angle|, degrees.
    translate: int = 40  # Largest |shift|, pixels (integers).
    collate: bool = True
    min_scale: float = 0.4
    max_scale: float = 1.0
    min_short_side: int = 128
    max_short_side: int = 1152
    max_ratio: float = 2.0
    multiple_of: int = 32
    max_shift: int = 10
    max_size: int = 2048

    @classmethod
    def off(cls) -> DetectorAugmentation:
        """No flip, no affine, no resize collate: the frames as they are (evaluation, parity)."""
        return cls(hflip_p=0.0, affine_p=0.0, collate=False)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; COCO ``xywh`` boxes follow (``x -> W - x - w``)."""
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    boxes[:, 0] = image.shape[1] - boxes[:, 0] - boxes[:, 2]
    return np.ascontiguousarray(image[:, ::-1]), boxes


def affine(image: np.ndarray, boxes: np.ndarray, angle: float, shift: tuple[int, int]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle`` degrees about the centre and translate by ``shift = (tx, ty)`` pixels
    (bilinear, black border); each box becomes the enclosing box of its rotated corners, clipped
    to the frame (a box left with no area is zeroed)."""
    h, w = image.shape[:2]
    matrix = rotation_matrix(angle, h, w)
    matrix[0, 2] += shift[0]
    matrix[1, 2] += shift[1]
    image = cv2.warpAffine(image, matrix[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    out = np.zeros_like(boxes)
    for i, (x, y, bw, bh) in enumerate(boxes):
        if bw <= 0 or bh <= 0:
            continue
        corners = np.array([[x, y, 1], [x + bw, y, 1], [x + bw, y + bh, 1], [x, y + bh, 1]]) @ matrix[:2].T
        x0, y0 = np.clip(corners.min(axis=0), 0, [w, h])
        x1, y1 = np.clip(corners.max(axis=0), 0, [w, h])
        if x1 > x0 and y1 > y0:
            out[i] = (x0, y0, x1 - x0, y1 - y0)
    return image, out


def augment_frame(config: DetectorAugmentation, rng: np.random.Generator, image: np.ndarray,
                  boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip, affine (each with its probability), normalise: uint8 RGB -> float32, boxes xywh.

    Draws, always in this order and all of them: flip, affine applied, angle, tx, ty."""
    flip = rng.random() < config.hflip_p
    warp = rng.random() < config.affine_p
    angle = rng.uniform(-config.rotate, config.rotate)
    shift = (int(rng.integers(-config.translate, config.translate + 1)),
             int(rng.integers(-config.translate, config.translate + 1)))
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    if flip:
        image, boxes = hflip(image, boxes)
    if warp:
        image, boxes = affine(image, boxes, angle, shift)
    return normalize(image), boxes


# ------------------------------------------------------------------------------------------
# ResizeFromDataSizeCollate

def collate_size(config: DetectorAugmentation, rng: np.random.Generator, shape: tuple[int, int]
                 ) -> tuple[int, int]:
    """The batch's target ``(h, w)`` from the first image's ``shape``: its short side times
    U(min_scale, max_scale), clamped, the long side by the (capped) aspect ratio, both rounded up
    to ``multiple_of``."""
    h, w = shape
    scale = rng.uniform(config.min_scale, config.max_scale)
    short, long = min(h, w), max(h, w)
    ratio = min(long / short, config.max_ratio)
    short_size = int(round(min(config.max_short_side, max(config.min_short_side, scale * short))))
    long_size = int(ratio * short_size)
    th, tw = (short_size, long_size) if h < w else (long_size, short_size)
    up = lambda v: -(-v // config.multiple_of) * config.multiple_of  # noqa: E731
    return up(th), up(tw)


def antialias_weights(in_size: int, out_size: int) -> np.ndarray:
    """``(out, in)`` float32 weights of torchvision's antialiased bilinear resize along one axis:
    a triangle filter widened by the downscaling factor, normalised per output pixel."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) / support))
        weights[i, lo:hi] = taps / taps.sum() if taps.sum() else 0
    return weights.astype(np.float32)


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(H, W, C)`` float32 -> ``(height, width, C)``, antialiased bilinear (separable)."""
    wy = antialias_weights(image.shape[0], height)
    wx = antialias_weights(image.shape[1], width)
    return np.einsum('yh,hwc,xw->yxc', wy, image, wx, optimize=True).astype(np.float32)


def resize_and_crop(config: DetectorAugmentation, rng: np.random.Generator, image: np.ndarray,
                    boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One item into the batch's ``size``: resized keeping its aspect ratio so that it covers the
    target (long side at most ``max_size``), a random offset (up to ``max_shift`` past the edges),
    cut or zero-padded to ``size``; boxes scaled, shifted and clipped (xywh, zero if emptied)."""
    oh, ow = image.shape[:2]
    th, tw = size
    if oh / th <= ow / tw:
        h, w = th, int(ow * (th / oh))
    else:
        h, w = int(oh * (tw / ow)), tw
    if max(h, w) > config.max_size:
        h, w = ((int(oh * (config.max_size / ow)), config.max_size) if h <= w
                else (config.max_size, int(ow * (config.max_size / oh))))
    scaled = resize_antialiased(image, h, w) if (h, w) != (oh, ow) else image.astype(np.float32)
    extra_x, extra_y = max(0, w - tw), max(0, h - th)
    shift = config.max_shift
    ox = int(rng.integers(max(-tw // 2, -max(0, tw - w) - shift),
                          min(shift + extra_x, extra_x + min(w, tw) // 2)))
    oy = int(rng.integers(max(-th // 2, -max(0, th - h) - shift),
                          min(shift + extra_y, extra_y + min(h, th) // 2)))
    out = np.zeros((th, tw, image.shape[2]), np.float32)
    ys, xs = slice(max(oy, 0), min(oy + th, h)), slice(max(ox, 0), min(ox + tw, w))
    out[ys.start - oy:ys.stop - oy, xs.start - ox:xs.stop - ox] = scaled[ys, xs]
    boxes = np.array(boxes, np.float64).reshape(-1, 4) / np.array([ow / w, oh / h, ow / w, oh / h])
    boxes[:, :2] -= (ox, oy)
    corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    corners = np.clip(corners, 0, [tw, th, tw, th])
    return out, np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)


# ------------------------------------------------------------------------------------------
# torchvision's GeneralizedRCNNTransform, on the host

def torchvision_transform(image: np.ndarray, boxes_xyxy: np.ndarray, min_size: int = detector_input.MIN_SIZE,
                          max_size: int = detector_input.MAX_SIZE
                          ) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """``(x - mean) / std``, bilinear resize (align_corners False, no antialiasing) to
    ``resized_size``, boxes times ``f32(new) / f32(old)``: ``(image, (h, w), boxes)``, unpadded
    (the batch pads to its largest /32 size)."""
    height, width = image.shape[:2]
    x = (image - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    h, w = detector_input.resized_size(height, width, min_size, max_size)
    if (h, w) != (height, width):
        _, index_fma = detector_input.torch_cpu_bilinear_kernel(h, w)  # Its source positions.
        y0, y1, ly0, ly1 = detector_input.source_indices(height, h, index_fma)
        x0, x1, lx0, lx1 = detector_input.source_indices(width, w, index_fma)
        rows = x[y0] * ly0[:, None, None] + x[y1] * ly1[:, None, None]
        x = rows[:, x0] * lx0[None, :, None] + rows[:, x1] * lx1[None, :, None]
    ratios = np.array([np.float32(w) / np.float32(width), np.float32(h) / np.float32(height)] * 2, np.float32)
    return x.astype(np.float32), (h, w), (np.asarray(boxes_xyxy, np.float32) * ratios).astype(np.float32)
