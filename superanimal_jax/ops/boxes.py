"""Box arithmetic of torchvision's Faster R-CNN, bit for bit in float32: pure jittable functions.

Boxes are ``(..., 4)`` arrays ``(x1, y1, x2, y2)`` in pixels of the resized (un-padded) image.
Parity with torchvision: docs/parity/boxes.md.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

# torchvision's BoxCoder defaults for Faster R-CNN (``models/detection/_utils.py``).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def rounded(x, nan: float = float('nan')):
    """``x`` unchanged, but materialised as a rounded float32 value.

    An identity select (``isnan(x) ? nan : x``) that XLA's simplifier cannot remove and LLVM does
    not look through, so a following ``+``/``-`` is not fused with the product into an FMA.
    Only NaN entries change (to ``nan``; RoIAlign uses 0 to keep padding rows finite).
    """
    return jnp.where(jnp.isnan(x), jnp.asarray(nan, x.dtype), x)


def divide(x, divisor):
    """``x / divisor`` as an IEEE division, for a scalar (or otherwise broadcast) ``divisor``.

    XLA rewrites ``x / broadcast(d)`` into ``x * broadcast(1 / d)`` (two roundings: about 20 % of
    float32 results change); a divisor the shape of ``x`` that it cannot prove uniform is left
    alone.  NaN ``x`` divides by 1 and stays NaN.
    """
    x = jnp.asarray(x)
    return x / jnp.where(jnp.isnan(x), jnp.ones((), x.dtype), jnp.asarray(divisor, x.dtype))


def decode(deltas, reference_boxes, weights=RPN_WEIGHTS, clip=BBOX_XFORM_CLIP):
    """torchvision ``BoxCoder.decode_single``: regression deltas + reference boxes -> boxes.

    ``deltas`` ``(..., 4)`` as ``(dx, dy, dw, dh)``; ``reference_boxes`` ``(..., 4)`` xyxy,
    broadcast against ``deltas`` (for the box head's class-wise deltas ``(R, C*4)`` pass
    ``deltas.reshape(R, C, 4)`` and ``proposals[:, None]``).  Computed in the deltas' dtype:

        w = x2 - x1; h = y2 - y1; cx = x1 + 0.5 * w; cy = y1 + 0.5 * h
        dx, dy, dw, dh = deltas / weights        (true division by float(weight))
        dw, dh = min(dw, float32(clip)), min(dh, float32(clip))   (above only; NaN propagates)
        pcx = dx * w + cx; pcy = dy * h + cy; pw = exp(dw) * w; ph = exp(dh) * h
        -> (pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph)

    RPN: ``weights=(1, 1, 1, 1)``; box head: ``(10, 10, 5, 5)``; both clip at ``log(1000/16)``.
    """
    deltas = jnp.asarray(deltas)
    dtype = deltas.dtype
    ref = jnp.asarray(reference_boxes).astype(dtype)
    half = jnp.asarray(0.5, dtype)
    widths = ref[..., 2] - ref[..., 0]
    heights = ref[..., 3] - ref[..., 1]
    ctr_x = ref[..., 0] + rounded(half * widths)
    ctr_y = ref[..., 1] + rounded(half * heights)
    wx, wy, ww, wh = weights
    dx = divide(deltas[..., 0], wx)
    dy = divide(deltas[..., 1], wy)
    limit = jnp.asarray(np.float32(clip), dtype)
    dw = jnp.minimum(divide(deltas[..., 2], ww), limit)
    dh = jnp.minimum(divide(deltas[..., 3], wh), limit)
    pred_ctr_x = rounded(dx * widths) + ctr_x
    pred_ctr_y = rounded(dy * heights) + ctr_y
    pred_w = jnp.exp(dw) * widths
    pred_h = jnp.exp(dh) * heights
    c_to_c_w = rounded(half * pred_w)
    c_to_c_h = rounded(half * pred_h)
    return jnp.stack([pred_ctr_x - c_to_c_w, pred_ctr_y - c_to_c_h,
                      pred_ctr_x + c_to_c_w, pred_ctr_y + c_to_c_h], axis=-1)


def _clamp(x, lo, hi):
    """torch.clamp: ``x < lo -> lo``, then ``> hi -> hi``; keeps ``x`` on ties and NaN."""
    x = jnp.where(x < lo, lo, x)
    return jnp.where(x > hi, hi, x)


def clip_to_image(boxes, height, width):
    """torchvision ``clip_boxes_to_image``: x clamped to ``[0, width]``, y to ``[0, height]``.

    torch ``clamp`` semantics: a value equal to a bound is kept as is (``-0.0`` stays ``-0.0``),
    NaN propagates.  ``height``/``width`` may
    be Python numbers or traced scalars (the resized, un-padded image size).
    """
    boxes = jnp.asarray(boxes)
    zero = jnp.zeros((), boxes.dtype)
    w = jnp.asarray(width, boxes.dtype)
    h = jnp.asarray(height, boxes.dtype)
    x = _clamp(boxes[..., 0::2], zero, w)
    y = _clamp(boxes[..., 1::2], zero, h)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1)


def small_box_mask(boxes, min_size):
    """torchvision ``remove_small_boxes`` as a mask: ``(x2 - x1 >= m) & (y2 - y1 >= m)``.

    ``m = float32(min_size)``: the comparison is float32, as torch compares a float32 tensor with
    a Python float.  RPN: ``1e-3``; box head: ``1e-2``.
    """
    boxes = jnp.asarray(boxes)
    m = jnp.asarray(np.float32(min_size), boxes.dtype)
    return ((boxes[..., 2] - boxes[..., 0]) >= m) & ((boxes[..., 3] - boxes[..., 1]) >= m)


def area(boxes):
    """torchvision ``box_area``: ``(x2 - x1) * (y2 - y1)``, rounded (:func:`rounded`): areas are
    summed next, and whether XLA would fuse that sum with this product into an FMA depends on the
    CPU (seen on AVX2, not on AVX-512), so the rounding is made explicit."""
    boxes = jnp.asarray(boxes)
    return rounded((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))


def intersection_over_union(a, b, area_a, area_b):
    """IoU of broadcast boxes ``a``, ``b`` (``(..., 4)``) with their areas given.

    ``inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0)``,
    ``iou = inter / ((area_a + area_b) - inter)``: the expression (and order) of torchvision's
    ``box_iou`` and of its CPU and CUDA NMS kernels.  ``0 / 0`` (two empty boxes) is NaN, which
    compares false against any threshold, as in the kernels.
    """
    zero = jnp.zeros((), a.dtype)
    w = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), zero)
    h = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), zero)
    inter = rounded(w * h)
    return inter / ((area_a + area_b) - inter)


def pairwise_iou(boxes1, boxes2):
    """torchvision ``box_iou``: ``(..., N, 4), (..., M, 4) -> (..., N, M)`` float32."""
    boxes1 = jnp.asarray(boxes1)
    boxes2 = jnp.asarray(boxes2).astype(boxes1.dtype)
    return intersection_over_union(boxes1[..., :, None, :], boxes2[..., None, :, :],
                                   area(boxes1)[..., :, None], area(boxes2)[..., None, :])


def iou_xywh(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two COCO ``x, y, w, h`` boxes in float64 on the host (DeepLabCut's memory-replay check)."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0
