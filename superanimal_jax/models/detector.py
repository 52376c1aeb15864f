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

from superanimal_jax import parallel
from superanimal_jax.ops import anchors
from superanimal_jax.transforms import detector_input as resize
from superanimal_jax.ops import roi_align
from superanimal_jax.models import roi_heads
from superanimal_jax.models import rpn
from superanimal_jax.nn.fpn import FPN, LEVELS
from superanimal_jax.nn.layers import Dtype
from superanimal_jax.nn.resnet import ResNet50Body
from superanimal_jax.models.roi_heads import BoxHead, BoxPredictor
from superanimal_jax.models.rpn import RPNHead


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
    """The detector with its weights: ``detect(frames)`` is DeepLabCut's detector stage.

    ``frames``: uint8 RGB ``(N, H, W, 3)``.  One function is compiled per frame size and
    ``max_detections``; everything inside has static shapes, with validity masks where
    torchvision's counts vary.  ``features``/``classify`` expose the networks alone.

    Frames are split across ``mesh`` (default: every device of this process), the weights
    replicated; a batch that does not split evenly is padded with black frames whose outputs are
    dropped.  ``dtype`` is the networks' compute dtype; box arithmetic (decoding, NMS, RoIAlign
    coordinates) stays float32 whatever it is.
    """

    def __init__(self, variables, *, score_threshold: float = 0.6, dtype=jnp.float32,
                 nms_method: str = 'cpu', torch_version: str = '2.15', mesh=None):
        self.dtype = parallel.compute_dtype(dtype)
        self.network = DetectorNetwork(dtype=self.dtype)
        # Which torch CPU resize arithmetic to reproduce (it changed in torch 2.15; the
        # reference environment of DeepLabCut 3.0.2 resolves torch 2.15).
        self.torch_version = torch_version
        self.mesh = parallel.check_local(mesh or parallel.local_mesh())
        self.variables = parallel.put_replicated(variables, self.mesh)
        self.score_threshold = score_threshold
        self.nms_method = nms_method
        self._features = jax.jit(lambda v, x: self.network.apply(v, x, method='features'))
        self._classify = jax.jit(lambda v, r: self.network.apply(v, r, method='classify'))
        self._detect = jax.jit(self._detect_batch, static_argnames=('max_detections', 'with_taps'))

    def features(self, images) -> dict:
        if np.ndim(images) != 4 or np.shape(images)[-1] != 3:
            raise ValueError(f'images must be (N, H, W, 3), got shape {np.shape(images)}')
        if np.shape(images)[1] % 32 or np.shape(images)[2] % 32:
            raise ValueError(f'padded image height and width must be multiples of 32, got '
                             f'{np.shape(images)[1:3]}')
        return self._run(self._features, images)

    def classify(self, roi_features):
        return self._run(self._classify, roi_features)

    def _run(self, fn, batch, **options):
        return parallel.run_split(fn, self.variables, batch, self.mesh, **options)

    def detect(self, frames, max_detections: int = 100, *, with_taps: bool = False) -> dict:
        """``{'boxes': (N, K, 4) xyxy frame pixels, 'scores': (N, K), 'valid': (N, K)}``, sorted by
        descending score, K = ``max_detections`` (at most torchvision's 100).  ``with_taps`` adds
        the RPN proposals (and their validity), the pooled RoI features and the box predictor's
        outputs, for parity checks."""
        shape, dtype = np.shape(frames), getattr(frames, 'dtype', None)
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise ValueError(f'frames must be uint8 RGB (N, H, W, 3), got {dtype} {shape}')
        if not 1 <= max_detections <= 100:
            raise ValueError(f'max_detections must be in 1..100, got {max_detections}')
        return self._run(self._detect, frames, max_detections=max_detections, with_taps=with_taps)

    def preprocess(self, frames):
        """uint8 frames -> (normalised, resized, padded images, resized size ``(h, w)``), with
        the resize arithmetic of ``torch_version``'s CPU kernel (:mod:`superanimal_jax.transforms.detector_input`)."""
        kernel, index_fma = resize.torch_cpu_bilinear_kernel(
            *resize.resized_size(*frames.shape[1:3]), torch_version=self.torch_version)
        return resize.preprocess(frames, kernel=kernel, index_fma=index_fma)

    def _detect_batch(self, variables, frames, max_detections: int, with_taps: bool):
        images, image_size = self.preprocess(frames)
        padded = images.shape[1:3]
        level_shapes = anchors.fpn_feature_sizes(padded)
        grid = jnp.asarray(anchors.grid_anchors(level_shapes, padded))
        level_sizes = anchors.anchors_per_level(level_shapes)
        taps = self.network.apply(variables, images, method='features')
        scales = roi_align.infer_scales([taps[f'fpn/{k}'].shape[1:] for k in LEVELS[:4]], image_size)

        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  Box arithmetic is float32 in any policy.

        def one_image(logits, deltas, *pyramid):
            proposals, proposal_valid = rpn.filter_proposals(
                f32(logits), f32(deltas), grid, level_sizes, image_size, nms_method=self.nms_method)
            pooled = roi_align.multiscale_roi_align([f32(level) for level in pyramid], proposals, scales)
            class_logits, box_deltas = map(f32, self.network.apply(variables, pooled, method='classify'))
            found = roi_heads.postprocess_detections(
                class_logits, box_deltas, proposals, proposal_valid, image_size,
                score_threshold=self.score_threshold, max_detections=max_detections)
            return found, (proposals, proposal_valid, pooled, class_logits, box_deltas)

        (boxes_, scores, valid), extra = jax.vmap(one_image)(
            taps['rpn_logits'], taps['rpn_deltas'], *[taps[f'fpn/{k}'] for k in LEVELS[:4]])
        out = {'boxes': resize.rescale_boxes(boxes_, image_size, frames.shape[1:3]),
               'scores': scores, 'valid': valid}
        if with_taps:
            out.update(zip(('proposals', 'proposal_valid', 'roi_features', 'class_logits', 'box_deltas'),
                           extra))
        return out
