"""The region proposal network: torchvision's ``RPNHead`` (v2: two 3x3 conv+ReLU layers) and its
proposal filtering.

Outputs are flattened in torchvision's order: for each level, index ``(y * W + x) * A + a``, and
the 4 deltas of anchor ``a`` are channels ``4a .. 4a + 3`` (dx, dy, dw, dh).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from superanimal_jax.nn.layers import Dtype, conv
from superanimal_jax.ops import boxes, nms


class ConvReLU(nn.Module):
    """``Conv2dNormActivation(norm_layer=None)``: a biased conv named ``'0'`` and a ReLU."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.relu(conv(self.features, 3, name='0', dtype=self.dtype, use_bias=True)(x))


class Convs(nn.Module):
    """The RPN head's ``conv`` tower: ``depth`` ``ConvReLU`` layers named ``'0'`` ..."""

    depth: int
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.depth):
            x = ConvReLU(self.features, name=str(k), dtype=self.dtype)(x)
        return x


class RPNHead(nn.Module):
    """Shared over levels; returns per level (logits (N, h*w*A), deltas (N, h*w*A, 4))."""

    num_anchors: int = 3
    channels: int = 256
    depth: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, levels):
        tower = Convs(self.depth, self.channels, name='conv', dtype=self.dtype)
        cls = conv(self.num_anchors, 1, name='cls_logits', dtype=self.dtype, use_bias=True)
        box = conv(4 * self.num_anchors, 1, name='bbox_pred', dtype=self.dtype, use_bias=True)
        outputs = []
        for x in levels:
            t = tower(x)
            n = x.shape[0]
            outputs.append((cls(t).reshape(n, -1), box(t).reshape(n, -1, 4)))
        return outputs


def filter_proposals(logits, deltas, anchors, level_sizes, image_size, *, pre_nms_top_n: int = 1000,
                     post_nms_top_n: int = 1000, nms_threshold: float = 0.7, min_size: float = 1e-3,
                     nms_method: str = 'cpu'):
    """torchvision ``RegionProposalNetwork.filter_proposals`` (eval) for one image, static shapes.

    ``logits (A,)``, ``deltas (A, 4)``, ``anchors (A, 4)`` flattened over levels whose anchor
    counts are ``level_sizes``; ``image_size``: resized, un-padded ``(h, w)``.  Per level the top
    ``min(pre_nms_top_n, n_l)`` logits, decoded against their anchors, clipped, tiny boxes
    dropped, NMS per level.  ``nms_method`` picks torchvision's batched-NMS path: ``'cpu'`` (what
    DeepLabCut runs on a CPU) or ``'cuda'``.  Returns ``(proposals (post_nms_top_n, 4),
    valid (post_nms_top_n,))`` in descending objectness.
    """
    candidates, scores, groups = [], [], []
    start = 0
    for level, n in enumerate(level_sizes):
        k = min(pre_nms_top_n, n)
        top, index = jax.lax.top_k(logits[start:start + n], k)
        index = index + start
        candidates.append(boxes.decode(deltas[index], anchors[index], boxes.RPN_WEIGHTS))
        scores.append(top)
        groups.append(jnp.full((k,), level, jnp.int32))
        start += n
    candidates = boxes.clip_to_image(jnp.concatenate(candidates), *image_size)
    probability = jax.nn.sigmoid(jnp.concatenate(scores))
    valid = boxes.small_box_mask(candidates, min_size) & (probability >= 0.0)
    keep, keep_valid = nms.batched_nms(candidates, probability, jnp.concatenate(groups), valid,
                                       nms_threshold, post_nms_top_n, method=nms_method)
    return candidates[keep], keep_valid
