"""torchvision's ``AnchorGenerator`` for Faster R-CNN ResNet50-FPN, on the host in numpy.

Computed once per resolution and passed to the jitted model as a constant.
Parity with torchvision: docs/parity/anchors.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FPN_SIZES = (32, 64, 128, 256, 512)  # One size per FPN level '0', '1', '2', '3', 'pool'.
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width


def fpn_feature_sizes(padded_size: tuple[int, int]) -> list[tuple[int, int]]:
    """FPN level sizes ``(h, w)`` of a ``padded_size`` input (both multiples of 32).

    Levels '0'..'3' are ``padded / 4, 8, 16, 32``; 'pool' (``P5[::2, ::2]``) is ``ceil(h32 / 2)``.
    """
    height, width = padded_size
    if height % 32 or width % 32:
        raise ValueError(f'padded size must be a multiple of 32, got {padded_size}')
    sizes = [(height // s, width // s) for s in (4, 8, 16, 32)]
    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


def cell_anchors(size: int | Sequence[int], aspect_ratios: Sequence[float] = ASPECT_RATIOS
                 ) -> np.ndarray:
    """Zero-centred anchors ``(len(aspect_ratios) * len(sizes), 4)`` float32, xyxy.

    For ``size=32``: ``[[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]``.
    """
    scales = np.atleast_1d(np.asarray(size, np.float32))
    h_ratios = np.sqrt(np.asarray(aspect_ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2))


def anchors_per_level(feature_sizes: Sequence[tuple[int, int]],
                      aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> list[int]:
    """Number of anchors of each level: ``h * w * len(aspect_ratios)``."""
    return [int(h) * int(w) * len(aspect_ratios) for h, w in feature_sizes]


def grid_anchors(feature_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int],
                 sizes: Sequence[int | Sequence[int]] = FPN_SIZES,
                 aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> np.ndarray:
    """All anchors ``(total, 4)`` float32 for the given levels, in the RPN's flattened order.

    ``feature_sizes``: ``[(h, w), ...]`` per level (see :func:`fpn_feature_sizes`);
    ``padded_size``: ``(H, W)`` of the padded batch tensor; ``sizes[i]``: anchor size(s) of level i.
    """
    if len(feature_sizes) != len(sizes):
        raise ValueError(f'{len(feature_sizes)} feature sizes but {len(sizes)} anchor sizes')
    height, width = padded_size
    levels = []
    for (grid_h, grid_w), size in zip(feature_sizes, sizes):
        base = cell_anchors(size, aspect_ratios)
        shifts_x = (np.arange(grid_w, dtype=np.int64) * (width // grid_w)).astype(np.float32)
        shifts_y = (np.arange(grid_h, dtype=np.int64) * (height // grid_h)).astype(np.float32)
        shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing='ij')
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=1)
        levels.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(levels, axis=0).astype(np.float32)
