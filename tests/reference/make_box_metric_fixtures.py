"""Golden box mAP/mAR from DeepLabCut 3.0.2's own ``compute_bbox_metrics`` (pycocotools), run inside .ref/.

    .ref/bin/python tests/reference/make_box_metric_fixtures.py --out tests/fixtures

Seeded cases, each a set of images with ground-truth and detected xywh boxes: a mixed case
(good, poor and missing detections, several boxes per image, an image without ground truth, an
image without detections, a zero-area ground-truth box), detections everywhere but no ground
truth, ground truth but no detection at all, and one perfect image.  Writes the inputs and
DeepLabCut's metrics to ``box_metrics_golden.json``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def jitter(rng, box, scale):
    x, y, w, h = box
    return [x + rng.normal(0, scale * w), y + rng.normal(0, scale * h), w * np.exp(rng.normal(0, scale)),
            h * np.exp(rng.normal(0, scale))]


def cases() -> dict:
    rng = np.random.default_rng(0)
    mixed_gt, mixed_det = {}, {}
    for i in range(6):
        name = f'img{i}.png'
        n = int(rng.integers(1, 4)) if i != 4 else 0  # img4: no ground truth.
        boxes = [[float(rng.uniform(0, 500)), float(rng.uniform(0, 350)), float(rng.uniform(20, 140)),
                  float(rng.uniform(20, 130))] for _ in range(n)]
        if i == 2:
            boxes.append([100.0, 100.0, 0.0, 30.0])  # Zero area: counted with area max(1, w*h).
        mixed_gt[name] = {'bboxes': boxes, 'width': 640, 'height': 480}
        det, scores = [], []
        if i != 5:  # img5: no detection.
            for box in boxes:
                if rng.random() < 0.8:
                    det.append(jitter(rng, box, float(rng.choice([0.02, 0.1, 0.3]))))
                    scores.append(float(rng.uniform(0.3, 1)))
            for _ in range(int(rng.integers(0, 3))):  # False positives.
                det.append([float(rng.uniform(0, 500)), float(rng.uniform(0, 350)), 60.0, 50.0])
                scores.append(float(rng.uniform(0, 0.7)))
        mixed_det[name] = {'bboxes': det, 'scores': scores}
    no_gt = ({'a.png': {'bboxes': [], 'width': 640, 'height': 480}},
             {'a.png': {'bboxes': [[10.0, 10.0, 50.0, 50.0]], 'scores': [0.9]}})
    no_det = ({'a.png': {'bboxes': [[10.0, 10.0, 50.0, 50.0]], 'width': 640, 'height': 480}},
              {'a.png': {'bboxes': [], 'scores': []}})
    perfect = ({'a.png': {'bboxes': [[10.5, 20.25, 50.0, 70.0]], 'width': 640, 'height': 480}},
               {'a.png': {'bboxes': [[10.5, 20.25, 50.0, 70.0]], 'scores': [0.99]}})
    return {'mixed': (mixed_gt, mixed_det), 'no_ground_truth': no_gt, 'no_detection': no_det,
            'perfect': perfect}


def main() -> None:
    from importlib.metadata import version

    import deeplabcut
    from deeplabcut.core.metrics.bbox import compute_bbox_metrics

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    out = {'made_by': 'tests/reference/make_box_metric_fixtures.py',
           'versions': {'deeplabcut': deeplabcut.__version__, 'pycocotools': version('pycocotools'),
                        'numpy': np.__version__}, 'cases': {}}
    for name, (gt, det) in cases().items():
        gt_np = {k: {**v, 'bboxes': np.asarray(v['bboxes'], np.float64).reshape(-1, 4)}
                 for k, v in gt.items()}
        det_np = {k: {'bboxes': np.asarray(v['bboxes'], np.float64).reshape(-1, 4),
                      'scores': np.asarray(v['scores'])} for k, v in det.items()}
        metrics = compute_bbox_metrics(gt_np, det_np)
        out['cases'][name] = {'ground_truth': gt, 'detections': det,
                              'metrics': {k: float(v) for k, v in metrics.items()}}
    with open(f'{args.out}/box_metrics_golden.json', 'w') as f:
        f.write(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
    main()
