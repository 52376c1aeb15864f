"""torchvision's ``fasterrcnn_resnet50_fpn_v2`` as DeepLabCut builds it (2 classes), in Flax.

The networks only: ResNet-50 body + FPN (``backbone``), the RPN head (``rpn``), the box head and
predictor (``roi_heads``).  Names mirror torchvision's module tree under DeepLabCut's ``model.``
prefix.  ``features`` runs the image-level part on preprocessed, padded NHWC images; ``classify``
runs the box head on pooled RoI features ``(R, 7, 7, 256)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from superanimal_jax.models.roi_heads import BoxHead, BoxPredictor
from superanimal_jax.models.rpn import RPNHead
from superanimal_jax.nn.fpn import FPN, LEVELS
from superanimal_jax.nn.layers import Dtype
from superanimal_jax.nn.resnet import ResNet50Body


class Backbone(nn.Module):
    """torchvision's ``BackboneWithFPN``: ResNet-50 ``body`` (C2..C5) and its ``fpn``; returns both."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        body = ResNet50Body(name='body', dtype=self.dtype)(images)
        return body, FPN(name='fpn', dtype=self.dtype)(body)


class RPN(nn.Module):
    """torchvision's ``RegionProposalNetwork`` network part: the shared ``head`` over FPN levels."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, levels):
        return RPNHead(name='head', dtype=self.dtype)(levels)


class RoIHeads(nn.Module):
    """torchvision's ``RoIHeads`` network part: ``box_head`` then ``box_predictor`` on pooled RoIs."""

    num_classes: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, roi_features):
        hidden = BoxHead(name='box_head', dtype=self.dtype)(roi_features)
        return BoxPredictor(self.num_classes, name='box_predictor', dtype=self.dtype)(hidden)


class DetectorNetwork(nn.Module):
    """The Faster R-CNN networks (``backbone``, ``rpn``, ``roi_heads``) as DeepLabCut's ``model.``."""

    num_classes: int = 2
    dtype: Dtype = jnp.float32

    def setup(self):
        """Creates the ``backbone``, ``rpn`` and ``roi_heads`` submodules."""
        self.backbone = Backbone(dtype=self.dtype)
        self.rpn = RPN(dtype=self.dtype)
        self.roi_heads = RoIHeads(self.num_classes, dtype=self.dtype)

    def features(self, images) -> dict:
        """Named taps: ``C2``..``C5``, FPN levels ``'0'``..``'pool'``, flattened RPN outputs."""
        body, pyramid = self.backbone(images.astype(self.dtype))
        rpn = self.rpn([pyramid[k] for k in LEVELS])
        taps = {f'C{i + 2}': c for i, c in enumerate(body)}
        taps.update({f'fpn/{k}': pyramid[k] for k in LEVELS})
        taps['rpn_logits'] = jnp.concatenate([logits for logits, _ in rpn], axis=1)
        taps['rpn_deltas'] = jnp.concatenate([deltas for _, deltas in rpn], axis=1)
        return taps

    def classify(self, roi_features):
        """``(R, 7, 7, 256)`` -> class logits ``(R, num_classes)``, deltas ``(R, 4 * num_classes)``."""
        return self.roi_heads(roi_features.astype(self.dtype))

    def __call__(self, images, roi_features):
        return self.features(images), self.classify(roi_features)


# Variants as data: name -> number of classes (background + mouse).
DETECTOR_VARIANTS = {'fasterrcnn_resnet50_fpn_v2': 2}


def variables_shape(num_classes: int = 2):
    """The detector's variable tree as shape/dtype structs."""
    net = DetectorNetwork(num_classes)
    return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32),
                          jnp.zeros((1, 7, 7, 256), jnp.float32))
