"""DeepLabCut's crop normalisation (albumentations' ``Normalize``), on the device and on the host.

``(float32(x) - mean * 255) * float32(1 / (std * 255))``, all in float32: a multiply by the
float32 reciprocal, bit for bit as DeepLabCut normalises crops.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from superanimal_jax.constants import IMAGENET_MEAN, IMAGENET_STD

MEAN_255 = np.float32(IMAGENET_MEAN) * np.float32(255)
INV_STD_255 = np.float32(1) / (np.float32(IMAGENET_STD) * np.float32(255))


def normalize_crops(crops):
    """uint8 RGB ``(..., 3)`` -> float32, bit for bit as DeepLabCut normalises crops (jittable)."""
    return (jnp.asarray(crops).astype(jnp.float32) - MEAN_255) * INV_STD_255


def normalize(image: np.ndarray) -> np.ndarray:
    """:func:`normalize_crops` in numpy on the host (float32, the same two operations)."""
    out = image.astype(np.float32)
    out -= MEAN_255
    out *= INV_STD_255
    return out
