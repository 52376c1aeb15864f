"""Faster R-CNN's training-time box bookkeeping as static-shape functions: torchvision's ``Matcher``,
``BoxCoder.encode``, ``BalancedPositiveNegativeSampler`` (from a JAX key) and the smooth L1 loss.

Ground truth is padded to a fixed count with a validity mask; padding rows never match anything
(not even through the low-quality rule), so an image without boxes trains on negatives only.
Parity with torchvision: docs/parity/detector_training.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from superanimal_jax.ops.boxes import divide, rounded

BELOW_LOW_THRESHOLD = -1  # torchvision Matcher's codes.
BETWEEN_THRESHOLDS = -2


def match(quality, gt_valid, high: float, low: float, allow_low_quality_matches: bool):
    """torchvision ``Matcher`` on a ``(G, N)`` quality (IoU) matrix -> ``(N,)`` int32 matches.

    Each column gets the row of its highest quality (the first on ties, as torch's ``max``);
    ``-1`` below ``low``, ``-2`` in ``[low, high)``.  With ``allow_low_quality_matches`` every
    column that attains some valid row's best quality (ties included) keeps its argmax match.
    Invalid rows (``gt_valid`` False) take no part.
    """
    quality = jnp.where(gt_valid[:, None], quality, -1)
    best = jnp.max(quality, axis=0)
    argmax = jnp.argmax(quality, axis=0).astype(jnp.int32)
    matches = jnp.where(best < low, BELOW_LOW_THRESHOLD,
                        jnp.where(best < high, BETWEEN_THRESHOLDS, argmax))
    if allow_low_quality_matches:
        highest = jnp.max(quality, axis=1, keepdims=True)
        attains = jnp.any((quality == highest) & gt_valid[:, None], axis=0)
        matches = jnp.where(attains, argmax, matches)
    return matches


def encode(reference, proposals, weights):
    """torchvision ``BoxCoder.encode_single``: the deltas that take ``proposals`` to ``reference``
    (both ``(..., 4)`` xyxy), in their dtype, with the same operation order:
    ``dx = wx * (gt_cx - cx) / w``, ``dw = ww * log(gt_w / w)``."""
    dtype = proposals.dtype
    reference = reference.astype(dtype)
    half = jnp.asarray(0.5, dtype)
    wx, wy, ww, wh = (jnp.asarray(w, dtype) for w in weights)
    widths = proposals[..., 2] - proposals[..., 0]
    heights = proposals[..., 3] - proposals[..., 1]
    ctr_x = proposals[..., 0] + rounded(half * widths)  # No fused multiply-add, as torch.
    ctr_y = proposals[..., 1] + rounded(half * heights)
    gt_widths = reference[..., 2] - reference[..., 0]
    gt_heights = reference[..., 3] - reference[..., 1]
    gt_ctr_x = reference[..., 0] + rounded(half * gt_widths)
    gt_ctr_y = reference[..., 1] + rounded(half * gt_heights)
    # IEEE divisions even where the proposals are constants (anchors), which XLA would otherwise
    # turn into multiplications by reciprocals.
    return jnp.stack([divide(wx * (gt_ctr_x - ctr_x), widths), divide(wy * (gt_ctr_y - ctr_y), heights),
                      ww * jnp.log(divide(gt_widths, widths)), wh * jnp.log(divide(gt_heights, heights))],
                     axis=-1)


def sample(key, labels, batch_size_per_image: int, positive_fraction: float):
    """torchvision ``BalancedPositiveNegativeSampler`` for one image, from a JAX key.

    ``labels (N,)``: 1 positive, 0 negative, anything else ignored.  Takes
    ``min(#pos, int(batch * fraction))`` positives and ``min(#neg, batch - taken)`` negatives,
    each a uniformly random subset.  Returns ``(indices (batch,) int32, is_positive (batch,),
    valid (batch,))``: the positives first, then the negatives, then padding slots.
    """
    n = labels.shape[0]
    max_pos = int(batch_size_per_image * positive_fraction)
    pos_key, neg_key = jax.random.split(key)
    positive, negative = labels == 1, labels == 0
    num_pos = jnp.minimum(jnp.sum(positive, dtype=jnp.int32), max_pos)
    num_neg = jnp.minimum(jnp.sum(negative, dtype=jnp.int32), batch_size_per_image - num_pos)
    # A uniformly random subset of size k: the k largest of i.i.d. uniform keys over the candidates.
    _, pos_index = jax.lax.top_k(jnp.where(positive, jax.random.uniform(pos_key, (n,)), -1.0),
                                 min(max_pos, n))
    _, neg_index = jax.lax.top_k(jnp.where(negative, jax.random.uniform(neg_key, (n,)), -1.0),
                                 min(batch_size_per_image, n))
    slots = jnp.arange(batch_size_per_image, dtype=jnp.int32)
    from_pos = slots < num_pos
    pos_pick = pos_index[jnp.clip(slots, 0, pos_index.shape[0] - 1)]
    neg_pick = neg_index[jnp.clip(slots - num_pos, 0, neg_index.shape[0] - 1)]
    indices = jnp.where(from_pos, pos_pick, neg_pick).astype(jnp.int32)
    return indices, from_pos, slots < num_pos + num_neg


def masks_of(indices, is_positive, valid, n: int):
    """``(positive (n,), negative (n,))`` masks of a :func:`sample` result."""
    pos = jnp.zeros((n,), bool).at[indices].max(valid & is_positive)
    neg = jnp.zeros((n,), bool).at[indices].max(valid & ~is_positive)
    return pos, neg


def smooth_l1(difference, beta: float):
    """Elementwise smooth L1 (torch ``smooth_l1_loss``, no reduction) of ``input - target``."""
    a = jnp.abs(difference)
    return jnp.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)
