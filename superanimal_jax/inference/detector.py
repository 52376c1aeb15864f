"""The detector at run time: DeepLabCut's whole detector stage as one jitted function per frame size.

Normalisation and torchvision's resize and padding (:mod:`superanimal_jax.transforms.detector_input`),
the networks (:mod:`superanimal_jax.models.detector`), RPN proposals, RoIAlign, the box head,
score threshold and NMS, with static shapes and validity masks; frames split over the mesh.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax import compilation, parallel
from superanimal_jax.models import roi_heads, rpn
from superanimal_jax.models.detector import DetectorNetwork
from superanimal_jax.nn.fpn import LEVELS
from superanimal_jax.ops import anchors, roi_align
from superanimal_jax.transforms import detector_input


class Detector:
    """The detector with its weights: ``detect(frames)`` is DeepLabCut's detector stage.

    ``frames``: uint8 RGB ``(N, H, W, 3)``.  One function is compiled per frame size and
    ``max_detections``; everything inside has static shapes, with validity masks where
    torchvision's counts vary.  ``features``/``classify`` expose the networks alone.

    Frames are split across ``mesh`` (default: every device of this process), the weights
    replicated; a batch that does not split evenly is padded with black frames whose outputs are
    dropped.  ``dtype`` is the networks' compute dtype; box arithmetic (decoding, NMS, RoIAlign
    coordinates) stays float32 whatever it is.  ``precision``: that of the networks' matmuls and
    convolutions, as for :class:`superanimal_jax.PoseEstimator`.
    """

    def __init__(self, variables, *, num_classes: int = 2, score_threshold: float = 0.6, dtype=jnp.float32,
                 nms_method: str = 'cpu', torch_version: str = detector_input.DEFAULT_TORCH_VERSION,
                 mesh=None, precision: str | None = None):
        self.dtype = parallel.compute_dtype(dtype)
        self.precision = compilation.resolve_precision(precision, self.dtype)
        self.network = DetectorNetwork(num_classes, dtype=self.dtype)
        # Which torch CPU resize arithmetic to reproduce (see detector_input.DEFAULT_TORCH_VERSION).
        self.torch_version = torch_version
        self.mesh = parallel.check_local(mesh or parallel.local_mesh())
        self.variables = parallel.put_replicated(variables, self.mesh)
        self.score_threshold = score_threshold
        self.nms_method = nms_method
        self._features = self._jit(lambda v, x: self.network.apply(v, x, method='features'))
        self._classify = self._jit(lambda v, r: self.network.apply(v, r, method='classify'))
        self._detect = self._jit(self._detect_batch, static_argnames=('max_detections', 'with_taps'))

    def _jit(self, fn, **options):
        return compilation.jit(compilation.with_precision(fn, self.precision), 'detector',
                               self.mesh.devices.flat, **options)

    def with_variables(self, variables) -> Detector:
        """The same compiled detector with other weights (e.g. while fine-tuning): nothing recompiles."""
        other = copy.copy(self)
        other.variables = parallel.put_replicated(variables, self.mesh)
        return other

    def features(self, images) -> dict:
        """The backbone, FPN and RPN head alone on normalised, padded ``images (N, H, W, 3)`` (H and W
        multiples of 32), split over the mesh: named taps ``C2``..``C5``, ``fpn/<level>``,
        ``rpn_logits`` and ``rpn_deltas``."""
        if np.ndim(images) != 4 or np.shape(images)[-1] != 3:
            raise ValueError(f'images must be (N, H, W, 3), got shape {np.shape(images)}')
        if np.shape(images)[1] % 32 or np.shape(images)[2] % 32:
            raise ValueError(f'padded image height and width must be multiples of 32, got '
                             f'{np.shape(images)[1:3]}')
        return self._run(self._features, images)

    def classify(self, roi_features):
        """The RoI box head alone, split over the mesh: pooled ``roi_features (R, 7, 7, 256)`` ->
        ``(class_logits, box_deltas)``."""
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
        the resize arithmetic of ``torch_version``'s CPU kernel
        (:mod:`superanimal_jax.transforms.detector_input`)."""
        return detector_input.preprocess(frames, torch_version=self.torch_version)

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
        out = {'boxes': detector_input.rescale_boxes(boxes_, image_size, frames.shape[1:3]),
               'scores': scores, 'valid': valid}
        if with_taps:
            out.update(zip(('proposals', 'proposal_valid', 'roi_features', 'class_logits', 'box_deltas'),
                           extra))
        return out
