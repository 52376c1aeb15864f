"""torchvision's ``MultiScaleRoIAlign`` as Faster R-CNN runs it, as pure static-shape functions.

NHWC float32, one image; RoIs ``(R, 4)`` xyxy in input-image pixels, padding rows allowed.
Parity with torchvision (RoIAlign kernel, LevelMapper): docs/parity/roi_align.md.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax.ops import boxes
from superanimal_jax.ops.boxes import divide, rounded

# The detector pools FPN levels '0'..'3' of a ResNet-FPN (strides 4..32).
FPN_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
CANONICAL_SCALE = 224
CANONICAL_LEVEL = 4
LEVEL_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Float32 arithmetic as C++ compiles it (no contraction, true division)
# ---------------------------------------------------------------------------------------------

# The FMA-contraction guard of :mod:`superanimal_jax.ops.boxes`, with NaN -> 0 so padding rows stay finite.
_rounded = functools.partial(rounded, nan=0.0)


def _floating(x):
    """``x`` as float32, or float64 if it is (float64 runs are the parity checks' exact reference)."""
    x = jnp.asarray(x)
    return x if x.dtype == jnp.float64 else x.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Level assignment
# ---------------------------------------------------------------------------------------------

def _raw_level(area: np.float32, canonical_scale: int, canonical_level: int, eps: float) -> float:
    """``floor(lvl0 + log2(sqrt(area) / s0) + eps)`` in float32, on the host, before clamping."""
    s = np.sqrt(np.float32(area))
    with np.errstate(divide='ignore'):
        log2 = np.float32(np.log2(np.float64(s / np.float32(canonical_scale))))  # Correctly rounded.
    return float(np.floor((np.float32(canonical_level) + log2) + np.float32(eps)))


# torchvision's thresholds on CPU, measured (torchvision 0.29.2 / torch 2.15, whose sqrt agrees
# with torch 2.13's and does not change with ATEN_CPU_CAPABILITY; checked by the goldens): the
# IEEE ones, except that torch's sqrt(200703.65625) is the float32 above the correctly rounded
# root, which is enough to reach level 5.  A CUDA reference (correctly rounded sqrtf) may follow
# the IEEE thresholds instead; only boxes of exactly that float32 area are affected.
_TORCHVISION_CPU_THRESHOLDS = {
    (224, 4, 2, 5, 1e-6): (12543.98046875, 50175.9296875, 200703.65625),
}


def area_thresholds(canonical_scale: int = CANONICAL_SCALE, canonical_level: int = CANONICAL_LEVEL,
                    k_min: int = 2, k_max: int = 5, eps: float = LEVEL_EPS) -> tuple[float, ...]:
    """For k = k_min + 1 .. k_max, the smallest float32 area that torchvision's LevelMapper puts
    at level >= k: measured values for Faster R-CNN's configuration, IEEE ones otherwise."""
    key = (canonical_scale, canonical_level, k_min, k_max, eps)
    if key in _TORCHVISION_CPU_THRESHOLDS:
        return _TORCHVISION_CPU_THRESHOLDS[key]
    return ieee_area_thresholds(*key)


@functools.lru_cache(maxsize=None)
def ieee_area_thresholds(canonical_scale: int = CANONICAL_SCALE, canonical_level: int = CANONICAL_LEVEL,
                         k_min: int = 2, k_max: int = 5, eps: float = LEVEL_EPS) -> tuple[float, ...]:
    """For k = k_min + 1 .. k_max, the smallest float32 area whose LevelMapper level is >= k when
    every step is correctly rounded float32 arithmetic.

    Found by bisection over the ordered bit patterns of positive float32 values; the level is
    non-decreasing in the area (every step - sqrt, divide, log2, add, floor - is monotone).
    """
    thresholds = []
    for k in range(k_min + 1, k_max + 1):
        lo, hi = 0, int(np.float32(np.inf).view(np.int32))  # level(lo) < k <= level(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            area = np.int32(mid).view(np.float32)
            if _raw_level(area, canonical_scale, canonical_level, eps) >= k:
                hi = mid
            else:
                lo = mid
        thresholds.append(float(np.int32(hi).view(np.float32)))
    return tuple(thresholds)


def level_of(rois, canonical_scale: int = CANONICAL_SCALE, canonical_level: int = CANONICAL_LEVEL,
             k_min: int = 2, k_max: int = 5, eps: float = LEVEL_EPS):
    """torchvision's ``LevelMapper``: int32 ``(...)`` level index in ``0 .. k_max - k_min``.

    ``clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), k_min, k_max)
    - k_min`` in float32, evaluated exactly as threshold comparisons on the area; float64 boxes
    (the parity checks' exact reference) in float64, as torchvision does for them.  Boxes with a
    zero, negative or NaN area get level 0 (torchvision: 0 for zero area; undefined otherwise).
    """
    rois = jnp.asarray(rois)
    if rois.dtype == jnp.float64:  # torchvision computes in the boxes' dtype: float64 throughout.
        area = boxes.area(rois)
        with np.errstate(divide='ignore'):
            raw = jnp.floor(canonical_level + jnp.log2(jnp.sqrt(area) / canonical_scale) + eps)
        level = jnp.clip(jnp.where(area > 0, raw, k_min), k_min, k_max) - k_min
        return level.astype(jnp.int32)
    thresholds = np.float32(area_thresholds(canonical_scale, canonical_level, k_min, k_max, eps))
    area = boxes.area(rois.astype(jnp.float32))
    return jnp.sum(area[..., None] >= thresholds, axis=-1, dtype=jnp.int32)


def infer_scales(feature_shapes: Sequence[Sequence[int]], image_size: Sequence[int]) -> tuple[float, ...]:
    """The spatial scale of each level as torchvision infers it: ``2 ** round(log2(h_l / h))``.

    ``feature_shapes``: per level ``(H_l, W_l, ...)``; ``image_size``: ``(h, w)`` of the resized,
    un-padded image (the maximum over the batch).  As in torchvision only the heights are used;
    ``log2`` is taken in float32 and rounded half to even.  800x1066 resized into an 800x1088
    tensor gives (1/4, 1/8, 1/16, 1/32).
    """
    scales = []
    for shape in feature_shapes:
        ratio = np.float32(float(shape[0]) / float(image_size[0]))
        scales.append(2.0 ** float(np.round(np.log2(ratio))))
    return tuple(scales)


def level_range(scales: Sequence[float]) -> tuple[int, int]:
    """``(k_min, k_max)`` as torchvision derives them: ``int(-log2(scale))`` of the first and last level."""
    return tuple(int(-np.log2(np.float32(s))) for s in (scales[0], scales[-1]))


# ---------------------------------------------------------------------------------------------
# RoIAlign
# ---------------------------------------------------------------------------------------------

def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def _samples(start, bin_size, size, pooled: int, sampling_ratio: int):
    """Bilinear taps along one axis for every RoI: ``(R, pooled * n)`` low/high int32 indices,
    low/high float32 weights, in-range mask; ``size`` is ``(R,)`` int32."""
    bins = np.arange(pooled, dtype=np.float32)
    sub = np.arange(sampling_ratio, dtype=np.float32) + np.float32(0.5)
    base = start[:, None] + _rounded(bins * bin_size[:, None])                      # (R, P)
    offset = _rounded(divide(_rounded(sub * bin_size[:, None]), sampling_ratio))   # (R, n)
    coord = (base[:, :, None] + offset[:, None, :]).reshape(start.shape[0], -1)     # (R, P*n)
    extent = size.astype(coord.dtype)[:, None]
    inside = (coord >= -1) & (coord <= extent)
    coord = jnp.where(inside, jnp.clip(coord, 0, extent), 0)
    low = coord.astype(jnp.int32)
    last = size[:, None] - 1
    edge = low >= last
    low = jnp.where(edge, last, low)
    high = jnp.where(edge, last, low + 1)
    coord = jnp.where(edge, low.astype(coord.dtype), coord)
    frac = coord - low.astype(coord.dtype)
    return low, high, 1 - frac, frac, inside


def _roi_align_table(table, rois, scale, height, width, offset, output_size, sampling_ratio):
    """RoIAlign of each RoI from its own map inside ``table`` ``(sum H*W, C)``.

    Per RoI ``(R,)``: ``scale`` float32, ``height``/``width``/``offset`` int32 (the map is
    ``table[offset : offset + height * width]`` in row-major order).
    """
    if sampling_ratio <= 0:
        raise ValueError('sampling_ratio must be positive: the adaptive grid is data-dependent')
    pooled_h, pooled_w = _pair(output_size)
    n = sampling_ratio
    rois = _floating(rois)
    rois = jnp.where(jnp.isfinite(rois), rois, 0)  # Padding rows stay finite.
    scale = scale.astype(rois.dtype)
    x1, y1, x2, y2 = (rois[:, k] for k in range(4))
    start_x, start_y = _rounded(x1 * scale), _rounded(y1 * scale)
    roi_w = jnp.maximum(_rounded(x2 * scale) - start_x, 1)
    roi_h = jnp.maximum(_rounded(y2 * scale) - start_y, 1)
    yl, yh, wyl, wyh, y_in = _samples(start_y, divide(roi_h, pooled_h), height, pooled_h, n)
    xl, xh, wxl, wxh, x_in = _samples(start_x, divide(roi_w, pooled_w), width, pooled_w, n)

    # (R, Py*n, Px*n) corner indices, weights and masks; corners in the kernel's order.
    rows_l = (offset[:, None] + yl * width[:, None])[:, :, None]
    rows_h = (offset[:, None] + yh * width[:, None])[:, :, None]
    cols_l, cols_h = xl[:, None, :], xh[:, None, :]
    index = jnp.stack([rows_l + cols_l, rows_l + cols_h, rows_h + cols_l, rows_h + cols_h])
    weight = jnp.stack([wyl[:, :, None] * wxl[:, None, :],   # hy * hx
                        wyl[:, :, None] * wxh[:, None, :],   # hy * lx
                        wyh[:, :, None] * wxl[:, None, :],   # ly * hx
                        wyh[:, :, None] * wxh[:, None, :]])  # ly * lx
    inside = y_in[:, :, None] & x_in[:, None, :]
    return _pool(table, index, weight, inside, pooled_h, pooled_w, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _pool(table, index, weight, inside, pooled_h: int, pooled_w: int, n: int):
    """Bilinear samples ``(4, R, Py*n, Px*n)`` corner rows of ``table`` with their weights, masked
    by ``inside``, averaged over each bin's ``n * n`` samples -> ``(R, Py, Px, C)``.

    Differentiable in ``table`` only, as torchvision's RoIAlign (no gradient for the boxes:
    Faster R-CNN pools detached proposals).  The gradient is built one corner and one sub-sample
    at a time, so the backward pass holds ``(R, Py, Px, C)`` updates instead of the forward's
    sixteen ``(R, Py*n, Px*n, C)`` intermediates (a quarter of the memory, or less, in training).
    """
    val = None
    for c in range(4):
        # The select is both the out-of-range rule and the guard against fused multiply-adds.
        corner = table.at[index[c]].get(mode='promise_in_bounds')
        term = jnp.where(inside[..., None], weight[c][..., None] * corner, 0)
        val = term if val is None else val + term
    val = val.reshape(val.shape[0], pooled_h, n, pooled_w, n, val.shape[-1])
    total = None
    for iy in range(n):
        for ix in range(n):
            total = val[:, :, iy, :, ix] if total is None else total + val[:, :, iy, :, ix]
    return divide(total, n * n)


def _pool_forward(table, index, weight, inside, pooled_h, pooled_w, n):
    return _pool(table, index, weight, inside, pooled_h, pooled_w, n), (table.shape, index, weight, inside)


def _pool_backward(pooled_h, pooled_w, n, residuals, g):
    """As torchvision's backward kernel: each sample adds ``g * w / count`` to its corner's row."""
    (rows, channels), index, weight, inside = residuals
    r = g.shape[0]
    grid = lambda a: a.reshape(a.shape[:-2] + (pooled_h, n, pooled_w, n))  # noqa: E731
    index, weight, inside = grid(index), grid(weight), grid(inside)
    grad = jnp.zeros((rows, channels), g.dtype)
    for c in range(4):
        for iy in range(n):
            for ix in range(n):
                w = jnp.where(inside[:, :, iy, :, ix], weight[c][:, :, iy, :, ix], 0).astype(g.dtype)
                update = divide(rounded(g * w[..., None]), n * n)
                grad = grad.at[index[c][:, :, iy, :, ix].reshape(r * pooled_h * pooled_w)].add(
                    update.reshape(-1, channels), mode='promise_in_bounds')
    return grad, None, None, None


_pool.defvjp(_pool_forward, _pool_backward)


def roi_align(features, rois, spatial_scale: float, output_size=7, sampling_ratio: int = 2):
    """``torchvision.ops.roi_align(..., aligned=False)`` on one NHWC map.

    features ``(H, W, C)``, rois ``(R, 4)`` xyxy in input-image pixels, ``spatial_scale`` =
    feature size / image size (rounded to float32, as the C++ op does) -> ``(R, Ph, Pw, C)``.
    ``sampling_ratio`` must be positive (2 in Faster R-CNN).
    """
    features, rois = _floating(features), _floating(rois)
    h, w, c = features.shape
    num = jnp.shape(rois)[0]
    per_roi = lambda v, dtype: jnp.full((num,), v, dtype)  # noqa: E731
    return _roi_align_table(features.reshape(h * w, c), rois, per_roi(spatial_scale, rois.dtype),
                            per_roi(h, jnp.int32), per_roi(w, jnp.int32), per_roi(0, jnp.int32),
                            output_size, sampling_ratio)


def multiscale_roi_align(features: Sequence, rois, scales: Sequence[float] = FPN_SCALES, output_size=7,
                         sampling_ratio: int = 2, canonical_scale: int = CANONICAL_SCALE,
                         canonical_level: int = CANONICAL_LEVEL):
    """torchvision's ``MultiScaleRoIAlign(['0', '1', '2', '3'], output_size, sampling_ratio)``.

    features: per level ``(H_l, W_l, C)`` (finest first); rois ``(R, 4)`` xyxy in image pixels;
    ``scales`` as :func:`infer_scales` gives them -> ``(R, Ph, Pw, C)`` in RoI order, each RoI
    pooled only from its :func:`level_of` level, with ``k_min``/``k_max`` from the first and last
    scale as in torchvision.  The levels are flattened into one ``(sum H_l * W_l, C)`` table so
    every RoI is pooled in a single gather from its own level (no per-level passes).
    """
    if len(features) != len(scales):
        raise ValueError(f'{len(features)} feature maps but {len(scales)} scales')
    features = [_floating(f) for f in features]
    k_min, k_max = level_range(scales)
    if k_max - k_min + 1 != len(features):
        raise ValueError(f'scales {tuple(scales)} do not span {len(features)} consecutive levels')
    channels = features[0].shape[-1]
    table = jnp.concatenate([f.reshape(-1, channels) for f in features])
    sizes = [f.shape[0] * f.shape[1] for f in features]
    offsets = np.cumsum([0] + sizes[:-1]).astype(np.int32)
    level = level_of(rois, canonical_scale, canonical_level, k_min, k_max)
    pick = lambda values, dtype: jnp.asarray(np.asarray(values, dtype))[level]  # noqa: E731
    heights, widths = [f.shape[0] for f in features], [f.shape[1] for f in features]
    return _roi_align_table(table, rois, pick(scales, np.float32), pick(heights, np.int32),
                            pick(widths, np.int32), pick(offsets, np.int32), output_size, sampling_ratio)
