"""Training-time augmentation of full frames, as DeepLabCut 3.0.2 does it for SuperAnimal fine-tuning.

On the host in numpy and OpenCV, in order: rotation, Gaussian noise, auto-padding, normalisation;
random draws by :func:`sample_params`, applied by the pure :func:`apply`.
Parity with DeepLabCut/albumentations: docs/parity/augment.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import cv2
import numpy as np

from superanimal_jax.transforms.normalize import normalize


@dataclasses.dataclass(frozen=True)
class TrainAugmentation:
    """``data.train`` of DeepLabCut's SuperAnimal ``hrnet_w32.yaml``."""

    rotate: float = 30.0  # Largest |angle|, degrees.
    rotate_p: float = 0.5
    noise_std: float = 12.75  # Largest standard deviation: the variance is U(0, noise_std ** 2).
    noise_p: float = 0.5
    pad_divisor: int = 32

    @classmethod
    def off(cls, pad_divisor: int = 32) -> TrainAugmentation:
        """No rotation, no noise: only auto-padding and normalisation (DeepLabCut's transform
        without augmentation, e.g. ``data.inference``)."""
        return cls(rotate=0.0, rotate_p=0.0, noise_std=0.0, noise_p=0.0, pad_divisor=pad_divisor)


class Augmented(NamedTuple):
    """What :func:`apply` returns: the normalised frame, keypoints, visibility and boxes."""

    image: np.ndarray  # (H', W', 3) float32, normalised.
    keypoints: np.ndarray  # (K, 2) float64, NaN where unlabelled.
    visible: np.ndarray  # (K,) bool.
    bboxes: np.ndarray  # (M, 4) float64 COCO xywh, zeros where dropped.


def pad_amounts(shape: tuple[int, ...], divisor: int) -> tuple[int, int]:
    """Rows and columns auto-padding adds to an image of ``shape`` ``(H, W, ...)``."""
    return (-shape[0]) % divisor, (-shape[1]) % divisor


def sample_params(config: TrainAugmentation, rng: np.random.Generator, image_shape: tuple[int, ...]) -> dict:
    """Every random decision for one frame of ``image_shape`` ``(H, W, ...)``.

    Draws, always in this order and all of them: rotation applied, angle, noise applied, noise
    variance, noise seed, pad top, pad left.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    rows, cols = pad_amounts((h, w), config.pad_divisor)
    rotate = rng.random() < config.rotate_p
    angle = rng.uniform(-config.rotate, config.rotate)
    noise = rng.random() < config.noise_p
    var = rng.uniform(0.0, config.noise_std ** 2)
    seed = int(rng.integers(2 ** 63))
    top, left = int(rng.integers(0, rows + 1)), int(rng.integers(0, cols + 1))
    return {'image_shape': (h, w), 'rotate': bool(rotate), 'angle': float(angle), 'noise': bool(noise),
            'noise_std': float(var ** 0.5), 'noise_seed': seed, 'pad_position': (top, left),
            'pad_divisor': config.pad_divisor}


def apply(image: np.ndarray, keypoints: np.ndarray, bboxes: np.ndarray, params: dict) -> Augmented:
    """The augmentation ``params`` describe (:func:`sample_params`) on a uint8 RGB frame, its
    keypoints ``(K, 2)`` (NaN if unlabelled) and boxes ``(M, 4)`` COCO xywh."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f'expected a uint8 (H, W, C) image, got {image.dtype} {image.shape}')
    if tuple(image.shape[:2]) != tuple(params['image_shape']):
        raise ValueError(f'params were drawn for {params["image_shape"]}, the image is {image.shape[:2]}')
    xy = np.array(keypoints, np.float64).reshape(-1, 2)
    visible = _inside(xy, image.shape)
    boxes, kept = _to_normalized(bboxes, image.shape)
    # albumentations clips and filters the boxes after every transform, applied or not.
    if params['rotate']:
        image, xy, boxes = _rotate(image, xy, boxes, rotation_matrix(params['angle'], *image.shape[:2]))
    boxes, kept = _filter(boxes, kept, image.shape)
    if params['noise']:
        noise = gaussian_noise(image.shape, params['noise_std'], params['noise_seed'])
        image = add_gaussian_noise(image, noise)
    boxes, kept = _filter(boxes, kept, image.shape)
    pads = _pads(image.shape, params['pad_divisor'], params['pad_position'])
    image, xy, boxes = _pad(image, xy, boxes, pads)
    boxes, kept = _filter(boxes, kept, image.shape)
    image = normalize(image)
    visible &= _inside(xy, image.shape)
    return Augmented(image, xy, visible, _from_normalized(boxes, kept, image.shape))


def augment(config: TrainAugmentation, rng: np.random.Generator, image: np.ndarray, keypoints: np.ndarray,
            bboxes: np.ndarray) -> Augmented:
    """:func:`apply` with parameters drawn by :func:`sample_params`."""
    return apply(image, keypoints, bboxes, sample_params(config, rng, np.shape(image)))


# The individual operations, each exactly a one-transform albumentations Compose as DeepLabCut
# configures it (boxes clipped and dropped ones zeroed; keypoints as they fall).

def rotate(image: np.ndarray, keypoints: np.ndarray, bboxes: np.ndarray,
           angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 1 with the angle given (degrees, albumentations' draw: positive is counter-clockwise)."""
    xy = np.array(keypoints, np.float64).reshape(-1, 2)
    boxes, kept = _to_normalized(bboxes, image.shape)
    image, xy, boxes = _rotate(image, xy, boxes, rotation_matrix(angle, *image.shape[:2]))
    boxes, kept = _filter(boxes, kept, image.shape)
    return image, xy, _from_normalized(boxes, kept, image.shape)


def add_gaussian_noise(image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Step 2: ``uint8(clip(float32(image) + noise, 0, 255))``, the sum in float64 (the noise's
    dtype), truncated toward 0."""
    return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def gaussian_noise(shape: tuple[int, ...], std: float, seed: int) -> np.ndarray:
    """The float64 noise of :func:`apply`: ``N(0, std)`` from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).normal(0.0, std, shape)


def auto_pad(image: np.ndarray, keypoints: np.ndarray, bboxes: np.ndarray, divisor: int = 32,
             position: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3, the image placed with ``position = (top, left)`` rows/columns of padding before it
    (``0 <= top <= rows``, ``0 <= left <= cols`` of :func:`pad_amounts`)."""
    xy = np.array(keypoints, np.float64).reshape(-1, 2)
    boxes, kept = _to_normalized(bboxes, image.shape)
    image, xy, boxes = _pad(image, xy, boxes, _pads(image.shape, divisor, position))
    boxes, kept = _filter(boxes, kept, image.shape)
    return image, xy, _from_normalized(boxes, kept, image.shape)



def rotation_matrix(angle: float, height: int, width: int) -> np.ndarray:
    """The 3x3 float64 matrix albumentations' ``Affine`` builds for rotation ``angle`` (its draw,
    degrees), scale 1, no translation or shear, about ``(width / 2 - 0.5, height / 2 - 0.5)``."""
    cx, cy = width / 2 - 0.5, height / 2 - 0.5

    def affine(rotation: float = 0.0, tx: float = 0.0, ty: float = 0.0) -> np.ndarray:
        # scikit-image's AffineTransform(rotation=...) with scale 1 and zero shear: the shear terms
        # add and multiply exact zeros, leaving cos/sin untouched.
        c, s = math.cos(rotation), math.sin(rotation)
        return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])

    # Composed left to right as albumentations' chain of `+`: each next matrix multiplies from the
    # left, in this order, so the float64 rounding is the same.
    shear_y = np.array([[1.0, -0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # A zero shear, signed zero too.
    chain = [affine(tx=-cx, ty=-cy), affine(-np.pi / 2), shear_y, affine(np.pi / 2),
             affine(float(np.deg2rad(-angle))), affine(tx=cx, ty=cy)]
    matrix = chain[0]
    for m in chain[1:]:
        matrix = m @ matrix
    return matrix


def in_image(keypoints: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """DeepLabCut's in-bounds test: not NaN and ``0 <= x <= W``, ``0 <= y <= H``."""
    return _inside(np.asarray(keypoints, np.float64).reshape(-1, 2), shape)


def _inside(xy: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]  # NaN compares False: unlabelled points are never inside.
    return (x >= 0) & (x <= shape[1]) & (y >= 0) & (y <= shape[0])


def _rotate(image: np.ndarray, xy: np.ndarray, boxes: np.ndarray,
            matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if np.allclose(matrix, np.eye(3, dtype=np.float32)):  # albumentations skips near-identities.
        return image, xy, boxes
    h, w = image.shape[:2]
    image = cv2.warpAffine(image, matrix[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
    if len(xy):
        xy = cv2.transform(xy.reshape(-1, 1, 2), matrix[:2]).reshape(-1, 2)
    scale = np.array([w, h, w, h])
    out = np.empty_like(boxes)
    for i, (x0, y0, x1, y1) in enumerate(boxes * scale):  # One box at a time, as albumentations.
        corners = np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x1, y1, 1.0], [x0, y1, 1.0]]) @ matrix.T
        corners = corners[:, :2] / corners[:, 2:]
        out[i] = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    return image, xy, out / scale


def _pads(shape: tuple[int, ...], divisor: int, position: tuple[int, int]) -> tuple[int, int, int, int]:
    rows, cols = pad_amounts(shape, divisor)
    top, left = (int(p) for p in position)
    if not (0 <= top <= rows and 0 <= left <= cols):
        raise ValueError(f'pad position {position} outside (0..{rows}, 0..{cols}) for {shape[:2]}')
    return top, rows - top, left, cols - left


def _pad(image: np.ndarray, xy: np.ndarray, boxes: np.ndarray,
         pads: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    top, bottom, left, right = pads
    h, w = image.shape[:2]
    image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT_101)
    xy = xy + np.array([left, top])
    shift = np.array([left, top, left, top])
    boxes = (boxes * np.array([w, h, w, h]) + shift) / np.array([w + left + right, h + top + bottom] * 2)
    return image, xy, boxes


def _to_normalized(bboxes: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    b = np.array(bboxes, np.float64).reshape(-1, 4)
    h, w = shape[:2]
    corners = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
    return corners / np.array([w, h, w, h]), np.ones(len(b), bool)


def _filter(boxes: np.ndarray, kept: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Clip to the frame, drop boxes of zero clipped area (albumentations' ``filter_bboxes``)."""
    h, w = shape[:2]
    boxes = np.clip(boxes, 0, 1.0)
    area = (boxes[:, 2] * w - boxes[:, 0] * w) * (boxes[:, 3] * h - boxes[:, 1] * h)
    return boxes, kept & (area != 0)


def _from_normalized(boxes: np.ndarray, kept: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[:2]
    b = boxes * np.array([w, h, w, h])
    out = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
    out[~kept] = 0
    return out
