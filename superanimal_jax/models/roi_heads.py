"""The second stage: ``FastRCNNConvFCHead`` (v2), ``FastRCNNPredictor`` and the detection
post-processing.

``box_head``: 4 x (3x3 conv + BN + ReLU) on the 7x7x256 pooled RoI features, flatten, Linear
12544 -> 1024 (named ``'5'`` as in torchvision's Sequential), ReLU.  torchvision flattens NCHW
(``c * 49 + y * 7 + x``); we flatten NHWC and the converter permutes that Linear's input axis.
``box_predictor``: class logits (background, animal) and per-class box deltas.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from superanimal_jax.nn.layers import ConvBN, Dtype
from superanimal_jax.ops import boxes, nms


class BoxHead(nn.Module):
    """torchvision's ``FastRCNNConvFCHead`` (v2): ConvBN+ReLU x 4, flatten (NHWC), Linear, ReLU."""

    channels: int = 256
    num_convs: int = 4
    representation: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for k in range(self.num_convs):
            x = ConvBN(self.channels, 3, name=str(k), dtype=self.dtype)(x)
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.representation, dtype=self.dtype, param_dtype=jnp.float32,
                                name=str(self.num_convs + 1))(x))


class BoxPredictor(nn.Module):
    """torchvision's ``FastRCNNPredictor``: ``(cls_score, bbox_pred)`` Linear outputs."""

    num_classes: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        return dense(self.num_classes, 'cls_score')(x), dense(4 * self.num_classes, 'bbox_pred')(x)


def postprocess_detections(class_logits, box_deltas, proposals, proposal_valid, image_size, *,
                           score_threshold: float = 0.6, nms_threshold: float = 0.5,
                           max_detections: int = 100, min_size: float = 1e-2):
    """torchvision ``RoIHeads.postprocess_detections`` for one image and one foreground class.

    Deltas decoded against the proposals with weights (10, 10, 5, 5), softmax scores, boxes
    clipped to the resized image ``(h, w)``, ``score > score_threshold`` (strict), tiny boxes
    dropped, NMS with torchvision's coordinate-offset trick (its path for <= 1000 boxes on CPU
    and GPU alike).  Returns ``(boxes (K, 4), scores (K,), valid (K,))``, descending score.
    """
    num_classes = class_logits.shape[-1]
    decoded = boxes.decode(box_deltas.reshape(-1, num_classes, 4)[:, 1], proposals, boxes.ROI_WEIGHTS)
    decoded = boxes.clip_to_image(decoded, *image_size)
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1]
    valid = proposal_valid & (scores > score_threshold) & boxes.small_box_mask(decoded, min_size)
    labels = jnp.ones(scores.shape, jnp.int32)
    keep, keep_valid = nms.batched_nms(decoded, scores, labels, valid, nms_threshold, max_detections,
                                       method='offset')
    return decoded[keep], jnp.where(keep_valid, scores[keep], 0.0), keep_valid
