"""Box mAP / mAR of a detector on a project's frames, as DeepLabCut 3.0.2 reports them: pycocotools'
``COCOeval`` on full-resolution images, ground-truth area ``max(1, w * h)``, 100 detections, x100.

Parity with DeepLabCut: docs/parity/detector_training.md.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import numpy as np

from superanimal_jax.constants import BBOX_MARGIN
from superanimal_jax.io.images import read_image

METRICS = ('mAP@50:95', 'mAP@50', 'mAP@75', 'mAR@50:95', 'mAR@50', 'mAR@75')


def box_metrics(ground_truth: dict[str, dict], detections: dict[str, dict]) -> dict[str, float]:
    """mAP/mAR at IoU 50:95, 50 and 75 over all images (x100; -1 where COCO has nothing to average).

    ``ground_truth[name]``: ``bboxes (n, 4)`` xywh, ``width``, ``height``; ``detections[name]``:
    ``bboxes (m, 4)`` xywh and ``scores (m,)``, for the same names.  No detection at all: zeros.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if set(ground_truth) != set(detections):
        raise ValueError(f'ground truth for {len(ground_truth)} images but detections for {len(detections)}, '
                         'or different image names')
    coco = COCO()
    coco.dataset = {'images': [], 'annotations': [], 'categories': [{'id': 1, 'name': 'animal'}]}
    rows = []
    for image_id, (name, gt) in enumerate(ground_truth.items(), start=1):
        coco.dataset['images'].append({'id': image_id, 'file_name': name, 'width': int(gt['width']),
                                       'height': int(gt['height'])})
        for box in np.asarray(gt['bboxes'], np.float64).reshape(-1, 4):
            coco.dataset['annotations'].append({
                'id': len(coco.dataset['annotations']) + 1, 'image_id': image_id, 'category_id': 1,
                'area': max(1.0, float(box[2] * box[3])), 'bbox': box.tolist(), 'iscrowd': 0})
        found = detections[name]
        for box, score in zip(np.asarray(found['bboxes'], np.float64).reshape(-1, 4), found['scores']):
            rows.append([image_id, *box, float(score), 1])
    if not rows:
        return dict.fromkeys(METRICS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress.
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(np.array(rows)), iouType='bbox')
        evaluation.evaluate()
        evaluation.accumulate()
    return {name: _summary(evaluation, name) for name in METRICS}


def _summary(evaluation, name: str) -> float:
    """One of :data:`METRICS` from an accumulated ``COCOeval`` (area 'all', 100 detections)."""
    recall = name.startswith('mAR')
    params = evaluation.params
    area = params.areaRngLbl.index('all')
    dets = params.maxDets.index(100)
    values = evaluation.eval['recall' if recall else 'precision']
    threshold = name.split('@')[1]
    if threshold != '50:95':
        values = values[np.flatnonzero(np.isclose(params.iouThrs, int(threshold) / 100))]
    values = values[:, :, area, dets] if recall else values[:, :, :, area, dets]
    kept = values[values > -1]
    return float(100 * kept.mean()) if kept.size else -1.0


def detector_ground_truth(project, frames, margin: int = BBOX_MARGIN) -> dict[str, dict]:
    """``{image path: {'bboxes', 'width', 'height'}}`` for ``frames``: boxes from the labelled
    keypoints plus ``margin``, as the detector trains on them."""
    from superanimal_jax.training.detector_data import detector_items

    sizes = {f: read_image(project.image_path(f)).shape[:2] for f in frames}
    return {item.image: {'bboxes': item.boxes, 'height': sizes[f][0], 'width': sizes[f][1]}
            for f, item in zip(frames, detector_items(project, frames, sizes=sizes, margin=margin))}


def evaluate_detector(detector, ground_truth: dict[str, dict], batch_size: int = 4) -> dict[str, float]:
    """Run ``detector`` (:class:`~superanimal_jax.inference.detector.Detector`) on every image of
    ``ground_truth`` at full resolution and score its boxes with :func:`box_metrics`."""
    by_size = defaultdict(list)
    frames = {}
    for name in ground_truth:
        frames[name] = read_image(name)
        by_size[frames[name].shape].append(name)
    detections = {}
    for names in by_size.values():
        for start in range(0, len(names), batch_size):
            chunk = names[start:start + batch_size]
            found = detector.detect(np.stack([frames[n] for n in chunk]))
            for j, name in enumerate(chunk):
                valid = np.asarray(found['valid'][j])
                xyxy = np.asarray(found['boxes'][j], np.float64)[valid]
                xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
                detections[name] = {'bboxes': xywh,
                                    'scores': np.asarray(found['scores'][j])[valid]}
    return box_metrics(ground_truth, detections)
