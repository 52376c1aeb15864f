"""Faster R-CNN's training path (torchvision's ``model.train()`` forward) in JAX, static shapes.

``training_inputs``: torchvision's ``GeneralizedRCNNTransform`` on DeepLabCut-normalised float
images (normalised again, resized to 800 / <= 1333 without antialiasing, padded to /32) and the
boxes scaled with it.  ``detector_losses``: the RPN (anchor matching 0.7 / 0.3 with low-quality
matches, 256 sampled anchors per image, half positive), 2,000 training proposals per image from
the detached outputs, ground truth appended, RoI matching 0.5 / 0.5, 512 sampled RoIs per image (a
quarter positive), box coding (1, 1, 1, 1) and (10, 10, 5, 5), and the four losses normalised as
torchvision does: by the number of samples over the whole batch.

Ground truth comes padded to a fixed count ``G`` with a validity mask.  The samplers draw from a
JAX key; a parity check can inject the reference's choices instead (``injected``).
Parity with torchvision: docs/parity/detector_training.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax.constants import IMAGENET_MEAN, IMAGENET_STD
from superanimal_jax.models.rpn import filter_proposals
from superanimal_jax.nn.fpn import LEVELS
from superanimal_jax.ops import anchors as anchors_lib
from superanimal_jax.ops import boxes as box_ops
from superanimal_jax.ops import matching, roi_align
from superanimal_jax.transforms import detector_input

# torchvision's fasterrcnn_resnet50_fpn_v2 training settings.
RPN_IOU = (0.7, 0.3)
RPN_SAMPLES, RPN_POSITIVE_FRACTION = 256, 0.5
TRAIN_PROPOSALS = 2000  # Per image, before and after NMS.
ROI_IOU = (0.5, 0.5)
ROI_SAMPLES, ROI_POSITIVE_FRACTION = 512, 0.25
BETA = 1 / 9
LOSSES = ('loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg')


def training_inputs(images, boxes, *, min_size: int = detector_input.MIN_SIZE,
                    max_size: int = detector_input.MAX_SIZE,
                    torch_version: str = detector_input.DEFAULT_TORCH_VERSION):
    """torchvision's transform in training mode on a collated batch.

    ``images (B, H, W, 3)`` float (DeepLabCut-normalised), ``boxes (B, G, 4)`` xyxy in their
    pixels.  ``(x - mean) / std``, bilinear resize (torch's CPU arithmetic) to
    ``resized_size(H, W)``, zeros to a multiple of 32; boxes times ``f32(new) / f32(old)``.
    Returns ``(images, (h, w), boxes)``.
    """
    dtype = images.dtype
    height, width = images.shape[1:3]
    h, w = detector_input.resized_size(height, width, min_size, max_size)
    hp, wp = detector_input.padded_size(h, w)
    # torchvision makes its mean and std tensors in the image's dtype from Python floats: float64
    # runs (the parity checks' exact reference) use the double constants, not float32 ones.
    mean = jnp.asarray(np.asarray(IMAGENET_MEAN, dtype))
    std = jnp.asarray(np.asarray(IMAGENET_STD, dtype))
    x = (images - mean) / std
    if (h, w) != (height, width) and dtype == jnp.float64:
        x = _resize_bilinear_float64(x, h, w)
    elif (h, w) != (height, width):
        kernel, index_fma = detector_input.torch_cpu_bilinear_kernel(h, w, torch_version=torch_version)
        x = detector_input.resize_bilinear(x, h, w, kernel, index_fma).astype(dtype)
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    ratio_h = np.float32(h) / np.float32(height)
    ratio_w = np.float32(w) / np.float32(width)
    ratios = jnp.asarray(np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32)).astype(boxes.dtype)
    # Rounded before the widths are taken: a fused multiply-subtract would differ from torch.
    return x, (h, w), box_ops.rounded(boxes * ratios)


def _resize_bilinear_float64(x, h: int, w: int):
    """torch's bilinear resize of a float64 tensor (align_corners False): source positions and
    weights in float64 (the parity checks' exact reference; float32 goes through
    :func:`~superanimal_jax.transforms.detector_input.resize_bilinear`)."""
    def taps(n_in: int, n_out: int):
        src = np.maximum((n_in / n_out) * (np.arange(n_out) + 0.5) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        l1 = src - i0
        return i0, i1, 1.0 - l1, l1

    y0, y1, ly0, ly1 = taps(x.shape[1], h)
    x0, x1, lx0, lx1 = taps(x.shape[2], w)
    rows = x[:, y0] * ly0[:, None, None] + x[:, y1] * ly1[:, None, None]
    return rows[:, :, x0] * lx0[:, None] + rows[:, :, x1] * lx1[:, None]


def rpn_targets(anchors, gt_boxes, gt_valid):
    """Anchor labels ``(A,)`` (1 object, 0 background, -1 ignored) and regression targets ``(A, 4)``
    (zero where not positive)."""
    quality = box_ops.pairwise_iou(gt_boxes.astype(anchors.dtype), anchors)
    matches = matching.match(quality, gt_valid, *RPN_IOU, allow_low_quality_matches=True)
    labels = jnp.where(matches >= 0, 1, jnp.where(matches == matching.BELOW_LOW_THRESHOLD, 0, -1))
    matched = gt_boxes[jnp.maximum(matches, 0)].astype(anchors.dtype)
    targets = matching.encode(matched, anchors, box_ops.RPN_WEIGHTS)
    return labels, jnp.where((labels == 1)[:, None], targets, 0)


def roi_targets(proposals, proposal_valid, gt_boxes, gt_valid):
    """Proposal labels ``(P,)`` (1 mouse, 0 background, -1 ignored: padding) and regression targets
    ``(P, 4)`` with weights (10, 10, 5, 5) (zero where not positive)."""
    quality = box_ops.pairwise_iou(gt_boxes.astype(proposals.dtype), proposals)
    matches = matching.match(quality, gt_valid, *ROI_IOU, allow_low_quality_matches=False)
    labels = jnp.where(matches >= 0, 1, jnp.where(matches == matching.BELOW_LOW_THRESHOLD, 0, -1))
    labels = jnp.where(proposal_valid, labels, -1)
    matched = gt_boxes[jnp.maximum(matches, 0)].astype(proposals.dtype)
    targets = matching.encode(matched, proposals, box_ops.ROI_WEIGHTS)
    return labels, jnp.where((labels == 1)[:, None], targets, 0)


def _bce_with_logits(logits, labels):
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def detector_losses(network, variables, images, image_sizes, gt_boxes, gt_valid, key, *,
                    image_valid=None, injected: dict | None = None, nms_method: str = 'cpu',
                    with_details: bool = False):
    """The four Faster R-CNN training losses of a batch (and their sum under ``'loss'``).

    ``images (B, Hp, Wp, 3)``: :func:`training_inputs`' output (normalised, resized, padded),
    ``image_sizes (B, 2)`` each image's resized ``(h, w)`` inside the padding (traced: one
    compilation per padded size); ``gt_boxes (B, G, 4)`` xyxy in resized pixels with
    ``gt_valid (B, G)``; ``key``: the samplers' randomness (one split per image);
    ``image_valid (B,)``: False for padding rows of a short last batch, which sample nothing and
    count for nothing.  ``injected`` (parity checks) replaces the
    samplers and, optionally, the proposals: ``rpn_positive``/``rpn_negative`` ``(B, A)`` masks,
    ``proposals (B, P, 4)`` + ``proposal_valid (B, P)`` (ground truth already appended), and
    ``roi_index``/``roi_positive``/``roi_valid`` ``(B, 512)``.  ``with_details`` also returns
    the labels, targets, proposals and samples.
    """
    injected = injected or {}
    taps = network.apply(variables, images, method='features')
    padded = images.shape[1:3]
    level_shapes = anchors_lib.fpn_feature_sizes(padded)
    dtype = taps['rpn_logits'].dtype
    grid = jnp.asarray(anchors_lib.grid_anchors(level_shapes, padded)).astype(dtype)
    level_sizes = anchors_lib.anchors_per_level(level_shapes)
    pyramid = [taps[f'fpn/{k}'] for k in LEVELS[:4]]
    # torchvision infers the pooling scales from the largest resized height; the padded height
    # (at most 31 px more) rounds to the same powers of two.
    scales = roi_align.infer_scales([p.shape[1:] for p in pyramid], padded)
    batch = images.shape[0]
    rpn_keys, roi_keys = jnp.split(jax.random.split(key, 2 * batch), 2)
    logits, deltas = taps['rpn_logits'], taps['rpn_deltas']

    # RPN targets and anchor samples.
    labels, targets = jax.vmap(rpn_targets, in_axes=(None, 0, 0))(grid, gt_boxes, gt_valid)
    if 'rpn_positive' in injected:
        positive, negative = injected['rpn_positive'], injected['rpn_negative']
    else:
        def draw(k, lab):
            return matching.masks_of(*matching.sample(k, lab, RPN_SAMPLES, RPN_POSITIVE_FRACTION),
                                     lab.shape[0])
        positive, negative = jax.vmap(draw)(rpn_keys, labels)
    if image_valid is not None:
        positive, negative = positive & image_valid[:, None], negative & image_valid[:, None]
    sampled = positive | negative
    rpn_count = jnp.maximum(jnp.sum(sampled), 1).astype(dtype)
    objectness = _bce_with_logits(logits, positive.astype(dtype))
    loss_objectness = jnp.sum(jnp.where(sampled, objectness, 0)) / rpn_count
    rpn_box = matching.smooth_l1(deltas - targets.astype(dtype), BETA).sum(-1)
    loss_rpn_box_reg = jnp.sum(jnp.where(positive, rpn_box, 0)) / rpn_count

    # Proposals from the detached RPN outputs, ground truth appended.
    if 'proposals' in injected:
        proposals, proposal_valid = injected['proposals'].astype(dtype), injected['proposal_valid']
    else:
        def propose(lg, dl, size):
            return filter_proposals(lg, dl, grid, level_sizes, (size[0], size[1]),
                                    pre_nms_top_n=TRAIN_PROPOSALS, post_nms_top_n=TRAIN_PROPOSALS,
                                    nms_method=nms_method)
        found, found_valid = jax.vmap(propose)(jax.lax.stop_gradient(logits), jax.lax.stop_gradient(deltas),
                                               image_sizes)
        proposals = jnp.concatenate([found, gt_boxes.astype(dtype)], axis=1)
        proposal_valid = jnp.concatenate([found_valid, gt_valid], axis=1)
    roi_labels, roi_regression = jax.vmap(roi_targets)(proposals, proposal_valid, gt_boxes, gt_valid)
    if 'roi_index' in injected:
        roi_index, roi_positive, roi_valid = (injected[k] for k in ('roi_index', 'roi_positive', 'roi_valid'))
    else:
        roi_index, roi_positive, roi_valid = jax.vmap(
            lambda k, lab: matching.sample(k, lab, ROI_SAMPLES, ROI_POSITIVE_FRACTION))(roi_keys, roi_labels)
    if image_valid is not None:
        roi_valid = roi_valid & image_valid[:, None]
        roi_positive = roi_positive & roi_valid
    take = jax.vmap(lambda values, index: values[index])
    rois = jax.lax.stop_gradient(take(proposals, roi_index))

    pooled = jax.vmap(lambda r, *levels: roi_align.multiscale_roi_align(levels, r, scales))(rois, *pyramid)
    class_logits, box_deltas = network.apply(variables, pooled.reshape(-1, *pooled.shape[2:]),
                                             method='classify')
    class_logits = class_logits.reshape(batch, ROI_SAMPLES, -1)
    box_deltas = box_deltas.reshape(batch, ROI_SAMPLES, -1, 4)[:, :, 1]  # The mouse class.
    roi_count = jnp.maximum(jnp.sum(roi_valid), 1).astype(dtype)
    cross_entropy = (jax.nn.logsumexp(class_logits, axis=-1)
                     - jnp.where(roi_positive, class_logits[..., 1], class_logits[..., 0]))
    loss_classifier = jnp.sum(jnp.where(roi_valid, cross_entropy, 0)) / roi_count
    roi_box = matching.smooth_l1(box_deltas - take(roi_regression, roi_index).astype(dtype), BETA).sum(-1)
    loss_box_reg = jnp.sum(jnp.where(roi_valid & roi_positive, roi_box, 0)) / roi_count

    losses = dict(zip(LOSSES, (loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg)))
    losses['loss'] = loss_classifier + loss_box_reg + loss_objectness + loss_rpn_box_reg
    if not with_details:
        return losses
    details = {'rpn_labels': labels, 'rpn_targets': targets, 'rpn_positive': positive,
               'rpn_negative': negative, 'proposals': proposals, 'proposal_valid': proposal_valid,
               'roi_labels': roi_labels, 'roi_targets': roi_regression, 'roi_index': roi_index,
               'roi_positive': roi_positive, 'roi_valid': roi_valid}
    return losses, details
