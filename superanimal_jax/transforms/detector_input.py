"""The detector's preprocessing: DeepLabCut's Normalize, then torchvision's GeneralizedRCNNTransform.

Normalisation table, bit-exact bilinear resize, padding to multiples of 32, box rescaling.
Parity with DeepLabCut/torchvision: docs/parity/detector_input.md.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from superanimal_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from superanimal_jax.ops.float32 import fma, fma_host, mul

# The torch whose CPU resize arithmetic is reproduced by default: DeepLabCut 3.0.2's reference
# environment resolved torch 2.15 when the goldens were made (the arithmetic changed in 2.15).
DEFAULT_TORCH_VERSION = '2.15'
MIN_SIZE = 800
MAX_SIZE = 1333
SIZE_DIVISIBLE = 32
KERNELS = ('separable', 'channels_last')


# ------------------------------------------------------------------------------------------
# Sizes and the normalisation table (host)

def resized_size(height: int, width: int, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE
                 ) -> tuple[int, int]:
    """torchvision >= 0.16: ``scale = min(min_size / min(H, W), max_size / max(H, W))`` in Python
    float64, output ``int(dim * scale)`` (truncation, as ``recompute_scale_factor=True`` does)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def padded_size(height: int, width: int, divisor: int = SIZE_DIVISIBLE) -> tuple[int, int]:
    """``batch_images``: each side rounded up to a multiple of ``divisor``."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def normalization_table() -> np.ndarray:
    """``(256, 3)`` float32: the detector input for each uint8 value and RGB channel.

    albumentations ``(f32(v) - f32(mean) * 255) * f32(1 / (f32(std) * 255))`` followed by
    torchvision ``(x - f32(mean)) / f32(std)``, each operation rounded to float32."""
    mean, std = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)
    values = np.arange(256, dtype=np.float32)[:, None]
    x = (values - mean * np.float32(255)) * (np.float32(1) / (std * np.float32(255)))
    return ((x - mean) / std).astype(np.float32)


# ------------------------------------------------------------------------------------------
# Source indices and weights (host)

def source_indices(in_size: int, out_size: int, index_fma: bool = True):
    """torch's ``compute_source_index_and_lambda`` (align_corners=False, ``scales=None``) for
    every output index: ``(i0, i1, l0, l1)``, int32 and float32.

    ``s = f32(in) / f32(out)``; ``src = max(0, fma(s, dst + 0.5, -0.5))`` (``index_fma``) or
    ``max(0, f32(s * (dst + 0.5)) - 0.5)``;
    ``i0 = min(floor(src), in - 1)``, ``i1 = min(i0 + 1, in - 1)``, ``l1 = clip(src - i0, 0, 1)``,
    ``l0 = 1 - l1``; equal sizes copy (``i1 = i0``, ``l = (1, 0)``)."""
    dst = np.arange(out_size)
    if in_size == out_size:
        return (dst.astype(np.int32), dst.astype(np.int32), np.ones(out_size, np.float32),
                np.zeros(out_size, np.float32))
    scale = np.float32(in_size) / np.float32(out_size)
    centre = dst.astype(np.float32) + np.float32(0.5)
    if index_fma:
        src = fma_host(scale, centre, np.float32(-0.5))
    else:
        src = (scale * centre).astype(np.float32) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    return i0.astype(np.int32), i1.astype(np.int32), (np.float32(1) - l1).astype(np.float32), l1


def torch_cpu_bilinear_kernel(out_h: int, out_w: int, channels: int = 3, num_threads: int = 2,
                              torch_version: str = DEFAULT_TORCH_VERSION, channels_last: bool = False
                              ) -> tuple[str, bool]:
    """``(kernel, index_fma)`` that torch's CPU float ``upsample_bilinear2d`` computes with.

    Kernel: ``'channels_last'`` when (channels-last input and C > 3) or ``out_h + out_w <= 128``
    or (one thread and C == 3), else ``'separable'`` (the generic kernel); DeepLabCut's frames
    take the generic one on multi-threaded CPUs.  ``index_fma``: measured True for both kernels
    on torch 2.13 (DeepLabCut's lockfile), False for the generic kernel on torch 2.15; 2.14 is
    unmeasured and assumed to be like 2.13."""
    small = out_h + out_w <= 128
    if (channels_last and channels > 3) or small or (num_threads == 1 and channels == 3):
        return 'channels_last', True
    major, minor = (int(v) for v in torch_version.split('+')[0].split('.')[:2])
    return 'separable', (major, minor) < (2, 15)


def resize_bilinear(image, out_h: int, out_w: int, kernel: str = 'separable',
                    index_fma: bool = True):
    """torch ``F.interpolate(mode='bilinear', align_corners=False)`` with ``scales=None`` on
    float32 ``(..., H, W, C)``, bit for bit as torch's CPU kernels compute it (pick ``kernel`` and
    ``index_fma`` with :func:`torch_cpu_bilinear_kernel`; indices from :func:`source_indices`).

    ``'separable'`` (the generic kernel): ``top = fma(l0x, a, l1x * b)``,
    ``bot = fma(l0x, c, l1x * d)``, ``out = fma(l0y, top, l1y * bot)``.
    ``'channels_last'``: ``w.. = ly * lx``; ``out = fma(d, w11, fma(c, w10, fma(a, w00, b * w01)))``.
    (a, b, c, d = pixels (y0, x0), (y0, x1), (y1, x0), (y1, x1).)"""
    if kernel not in KERNELS:
        raise ValueError(f'kernel must be one of {KERNELS}, got {kernel!r}')
    image = jnp.asarray(image, jnp.float32)
    in_h, in_w = image.shape[-3], image.shape[-2]
    y0, y1, ly0, ly1 = source_indices(in_h, out_h, index_fma)
    x0, x1, lx0, lx1 = source_indices(in_w, out_w, index_fma)
    column = (slice(None), None)  # weights broadcast over the channel axis

    def take(x, indices, axis):  # indices are in range by construction
        return jnp.take(x, indices, axis=axis, mode='clip')

    if kernel == 'separable':
        a, b = take(image, x0, -2), take(image, x1, -2)
        rows = fma(lx0[column], a, mul(lx1[column], b))
        top, bot = take(rows, y0, -3), take(rows, y1, -3)
        return fma(ly0[:, None, None], top, mul(ly1[:, None, None], bot))
    top, bot = take(image, y0, -3), take(image, y1, -3)
    a, b = take(top, x0, -2), take(top, x1, -2)
    c, d = take(bot, x0, -2), take(bot, x1, -2)
    w00, w01, w10, w11 = (mul(jnp.asarray(ly)[:, None, None], jnp.asarray(lx)[:, None])
                          for ly in (ly0, ly1) for lx in (lx0, lx1))
    return fma(d, w11, fma(c, w10, fma(a, w00, mul(b, w01))))


def preprocess(frames, min_size: int = MIN_SIZE, max_size: int = MAX_SIZE, divisor: int = SIZE_DIVISIBLE, *,
               torch_version: str = DEFAULT_TORCH_VERSION, kernel: str | None = None,
               index_fma: bool | None = None):
    """uint8 RGB ``(N, H, W, 3)`` -> ``(images (N, Hp, Wp, 3) float32, (h, w))``.

    Table lookup (:func:`normalization_table`), bilinear resize to ``(h, w) = resized_size``
    with the arithmetic of ``torch_version``'s multi-threaded CPU kernel
    (:func:`torch_cpu_bilinear_kernel`; ``kernel``/``index_fma`` override it), zeros
    bottom/right up to ``padded_size``.  Shapes depend only on ``(H, W)``: it jits once per frame size."""
    frames = jnp.asarray(frames)
    if frames.dtype != jnp.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'expected uint8 frames (N, H, W, 3), got {frames.dtype} {frames.shape}')
    height, width = frames.shape[1:3]
    h, w = resized_size(height, width, min_size, max_size)
    hp, wp = padded_size(h, w, divisor)
    if kernel is None or index_fma is None:
        default_kernel, default_fma = torch_cpu_bilinear_kernel(h, w, torch_version=torch_version)
        kernel = default_kernel if kernel is None else kernel
        index_fma = default_fma if index_fma is None else index_fma
    table, values = normalization_table(), frames.astype(jnp.int32)
    # One 1-D lookup per channel: XLA fuses it into the resize; a 2-D gather costs twice as much.
    x = jnp.stack([jnp.take(table[:, c], values[..., c], mode='clip') for c in range(3)], -1)
    x = resize_bilinear(x, h, w, kernel, index_fma)
    return jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0))), (h, w)


def rescale_boxes(boxes, resized: tuple[int, int], original: tuple[int, int]):
    """torchvision ``resize_boxes`` in ``postprocess``: xyxy boxes ``(..., 4)`` from resized
    ``(h, w)`` to original ``(H, W)`` pixels, ``x * f32(W) / f32(w)``, ``y * f32(H) / f32(h)``
    (float32 ratios), no clipping."""
    ratio_h = np.float32(original[0]) / np.float32(resized[0])
    ratio_w = np.float32(original[1]) / np.float32(resized[1])
    return jnp.asarray(boxes, jnp.float32) * jnp.asarray([ratio_w, ratio_h, ratio_w, ratio_h])
