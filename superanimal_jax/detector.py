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
import numpy as np

from superanimal_jax.fpn import FPN, LEVELS
from superanimal_jax.layers import Dtype
from superanimal_jax.resnet import ResNet50Body
from superanimal_jax.roi_heads import BoxHead, BoxPredictor
from superanimal_jax.rpn import RPNHead


class Backbone(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        body = ResNet50Body(name='body', dtype=self.dtype)(images)
        return body, FPN(name='fpn', dtype=self.dtype)(body)


class RPN(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, levels):
        return RPNHead(name='head', dtype=self.dtype)(levels)


class RoIHeads(nn.Module):
    num_classes: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, roi_features):
        hidden = BoxHead(name='box_head', dtype=self.dtype)(roi_features)
        return BoxPredictor(self.num_classes, name='box_predictor', dtype=self.dtype)(hidden)


class DetectorNetwork(nn.Module):
    num_classes: int = 2
    dtype: Dtype = jnp.float32

    def setup(self):
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


def variables_shape(num_classes: int = 2):
    """The detector's variable tree as shape/dtype structs."""
    net = DetectorNetwork(num_classes)
    return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32),
                          jnp.zeros((1, 7, 7, 256), jnp.float32))


class Detector:
    """The detector network with its weights, compiled once per input shape.

    ``features(images)``: preprocessed, padded NHWC images -> the named taps of
    :meth:`DetectorNetwork.features`; ``classify(roi_features)`` -> class logits and box deltas.
    """

    def __init__(self, variables, *, dtype=jnp.float32):
        self.network = DetectorNetwork(dtype=dtype)
        self.variables = jax.device_put(variables)
        self._features = jax.jit(lambda v, x: self.network.apply(v, x, method='features'))
        self._classify = jax.jit(lambda v, r: self.network.apply(v, r, method='classify'))

    def features(self, images) -> dict:
        if np.ndim(images) != 4 or np.shape(images)[-1] != 3:
            raise ValueError(f'images must be (N, H, W, 3), got shape {np.shape(images)}')
        if np.shape(images)[1] % 32 or np.shape(images)[2] % 32:
            raise ValueError(f'padded image height and width must be multiples of 32, got '
                             f'{np.shape(images)[1:3]}')
        return self._features(self.variables, images)

    def classify(self, roi_features):
        return self._classify(self.variables, roi_features)
