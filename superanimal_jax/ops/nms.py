"""Greedy non-maximum suppression with torchvision's semantics, static shapes and validity masks.

``nms`` and ``batched_nms`` (offset trick, per-group, or torchvision's CPU/CUDA dispatch), blockwise.
Parity with torchvision: docs/parity/nms.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from superanimal_jax.ops.boxes import area, intersection_over_union, rounded

DEFAULT_BLOCK_SIZE = 64  # fastest of 32..512 on CPU within noise; larger blocks suit TPUs
METHODS = ('offset', 'per_group', 'cpu', 'cuda')
# torchvision's batched_nms switches to per-group NMS above this many box *elements* (4 per box).
VANILLA_ABOVE_ELEMENTS = {'cpu': 4000, 'cuda': 100_000}


def float32_threshold(iou_threshold: float) -> np.float32:
    """The largest float32 ``<= iou_threshold``: for a float32 IoU, ``iou > it`` is exactly the
    CPU kernel's ``(double) iou > iou_threshold``."""
    t = np.float32(iou_threshold)
    if float(t) > iou_threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return t


def _greedy(boxes, scores, valid, groups, iou_threshold, max_output, block_size):
    """Greedy NMS over all valid boxes; suppression only within equal ``groups`` if given."""
    boxes = jnp.asarray(boxes)
    dtype = boxes.dtype
    n = boxes.shape[0]
    k = int(max_output)
    scores = jnp.asarray(scores).astype(dtype)
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    if n == 0 or k == 0:
        return jnp.zeros((k,), jnp.int32), jnp.zeros((k,), bool)
    thr = jnp.asarray(float32_threshold(iou_threshold), dtype)
    t = min(int(block_size), -(-n // 8) * 8)
    num_blocks = -(-n // t)
    pad = num_blocks * t - n

    # Valid first, then descending score (-0.0 made +0.0 so it ties with 0.0), then index.
    iota = jnp.arange(n, dtype=jnp.int32)
    keys = -jnp.where(scores == 0, jnp.zeros((), dtype), scores)
    _, _, order = lax.sort(((~valid).astype(jnp.int32), keys, iota), num_keys=2, is_stable=True)
    s_boxes = jnp.pad(boxes[order], ((0, pad), (0, 0)))
    s_area = area(s_boxes)
    s_valid = jnp.pad(valid[order], (0, pad))
    s_index = jnp.pad(order, (0, pad))
    s_group = None if groups is None else jnp.pad(jnp.asarray(groups)[order], (0, pad))
    slots = jnp.arange(k, dtype=jnp.int32)
    upper = jnp.arange(t)[:, None] < jnp.arange(t)[None, :]

    def block(state):
        b, count, k_boxes, k_area, k_group, k_index = state
        take = functools.partial(lax.dynamic_slice_in_dim, start_index=b * t, slice_size=t)
        bb, ba, bv, bi = take(s_boxes), take(s_area), take(s_valid), take(s_index)
        # Suppressed by a box kept in an earlier block?
        hit = intersection_over_union(bb[:, None], k_boxes[None], ba[:, None], k_area[None]) > thr
        hit &= (slots < count)[None, :]
        if s_group is not None:
            bg = take(s_group)
            hit &= bg[:, None] == k_group[None, :]
        cand = bv & ~jnp.any(hit, axis=1)
        # Within the block: keep = cand & ~(some earlier kept box of the block suppresses it).
        sup = intersection_over_union(bb[:, None], bb[None], ba[:, None], ba[None]) > thr
        sup &= upper & cand[:, None] & cand[None, :]
        if s_group is not None:
            sup &= bg[:, None] == bg[None, :]

        def step(carry):
            keep, _ = carry
            new = cand & ~jnp.any(sup & keep[:, None], axis=0)
            return new, jnp.any(new != keep)

        keep, _ = lax.while_loop(lambda c: c[1], step, (cand, jnp.array(True)))
        pos = jnp.where(keep, count + jnp.cumsum(keep, dtype=jnp.int32) - 1, k)
        k_boxes = k_boxes.at[pos].set(bb, mode='drop')
        k_area = k_area.at[pos].set(ba, mode='drop')
        k_index = k_index.at[pos].set(bi, mode='drop')
        if s_group is not None:
            k_group = k_group.at[pos].set(bg, mode='drop')
        return b + 1, count + jnp.sum(keep, dtype=jnp.int32), k_boxes, k_area, k_group, k_index

    init = (jnp.int32(0), jnp.int32(0), jnp.zeros((k, 4), dtype), jnp.zeros((k,), dtype),
            jnp.zeros((k,), jnp.int32 if s_group is None else s_group.dtype),
            jnp.zeros((k,), jnp.int32))
    _, count, _, _, _, k_index = lax.while_loop(
        lambda s: (s[0] < num_blocks) & (s[1] < k), block, init)
    keep_valid = slots < count
    return jnp.where(keep_valid, k_index, 0), keep_valid


@functools.partial(jax.jit, static_argnames=('iou_threshold', 'max_output', 'block_size'))
def nms(boxes, scores, valid, iou_threshold: float, max_output: int,
        block_size: int = DEFAULT_BLOCK_SIZE):
    """torchvision ``nms`` on the valid boxes, first ``max_output`` kept boxes.

    ``boxes (N, 4)`` xyxy float32, ``scores (N,)``, ``valid (N,)`` bool (or None: all valid).
    Returns ``keep_indices (max_output,) int32`` (indices into the inputs, descending score, ties
    lower index first; padding slots hold 0) and ``keep_valid (max_output,) bool`` (a prefix).
    ``iou_threshold``, ``max_output`` and ``block_size`` are static.
    """
    return _greedy(boxes, scores, valid, None, iou_threshold, max_output, block_size)


def _offset_boxes(boxes, groups, valid):
    """torchvision's coordinate trick: ``boxes + groups * (max over valid boxes + 1)``."""
    boxes = jnp.asarray(boxes)
    one = jnp.ones((), boxes.dtype)
    max_coordinate = jnp.max(jnp.where(jnp.asarray(valid, bool)[:, None], boxes, -jnp.inf))
    offsets = jnp.asarray(groups).astype(boxes.dtype) * (max_coordinate + one)
    return boxes + rounded(offsets)[:, None]


@functools.partial(jax.jit, static_argnames=('iou_threshold', 'max_output', 'method', 'block_size'))
def batched_nms(boxes, scores, groups, valid, iou_threshold: float, max_output: int,
                method: str = 'offset', block_size: int = DEFAULT_BLOCK_SIZE):
    """torchvision ``batched_nms``: NMS that never suppresses across different ``groups``.

    ``method``: ``'offset'`` (the coordinate trick, single-pass NMS on shifted boxes),
    ``'per_group'`` (independent NMS per group id, merged by descending score, ties lower
    index first), or ``'cpu'``/``'cuda'``: torchvision's own choice on that device from the
    number of valid boxes (``per_group`` if ``4 * n_valid`` exceeds 4000 / 100 000).
    Returns ``(keep_indices, keep_valid)`` as :func:`nms`.
    """
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    valid = jnp.ones(jnp.shape(scores), bool) if valid is None else jnp.asarray(valid, bool)

    def offset():
        return _greedy(_offset_boxes(boxes, groups, valid), scores, valid, None,
                       iou_threshold, max_output, block_size)

    def per_group():
        return _greedy(boxes, scores, valid, groups, iou_threshold, max_output, block_size)

    if method == 'offset':
        return offset()
    if method == 'per_group':
        return per_group()
    elements = 4 * jnp.sum(valid, dtype=jnp.int32)
    return lax.cond(elements > VANILLA_ABOVE_ELEMENTS[method], per_group, offset)
