"""Golden pseudo-label sets from DeepLabCut's own ``dlc3predictions_2_annotation_from_video``
(``deeplabcut/utils/pseudo_label.py``; run inside .ref/).

    .ref/bin/python tests/reference/make_pseudo_label_fixtures.py --out tests/fixtures

Writes ``tests/fixtures/pseudo_labels/``: ``predictions.json`` (a first pass's
``_before_adapt.json``: 131 frames of 3 individuals, float32 values as our writer stores them,
made here from a seeded generator; only the frames DeepLabCut selects, every 10th, hold
animals), and for each threshold setting ``<name>/train.json`` and ``<name>/test.json`` as
DeepLabCut writes them, plus ``manifest.json`` (frame size, settings,
bodyparts, versions).  The predictions mix what the selection has to get right: padding
individuals (-1 everywhere), box scores just above, at and below 0.9, keypoint scores around
0.1, frames where nobody is kept (their image ids are skipped), and more than ten annotations
(``test.json`` takes the first ten of each).  DeepLabCut reads each selected frame with OpenCV for
its size: the script writes black PNGs of the manifest's size.  A few seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

import _reference

NUM_FRAMES = 131
INDIVIDUALS = 3
FRAME_SIZE = (48, 64)  # (height, width)
SETTINGS = {  # name: (pose_threshold, bbox_threshold)
    'default': (0.1, 0.9),
    'loose': (0.0, 0.0),
    'strict': (0.5, 0.95),
}


def predictions(rng: np.random.Generator, bodyparts: int) -> list[dict]:
    """Per frame: ``bodyparts (3, K, 3)``, ``bboxes (3, 4)`` xywh, ``bbox_scores (3,)`` as float32
    values (``tolist`` of float32 arrays, as ``ResultWriter`` writes them)."""
    frames = []
    score_choices = np.float32([0.95, 0.9, 0.8999999761581421, 0.5, 0.99, 0.1])
    for f in range(NUM_FRAMES):
        poses = np.full((INDIVIDUALS, bodyparts, 3), -1, np.float32)
        boxes = np.full((INDIVIDUALS, 4), -1, np.float32)
        scores = np.full((INDIVIDUALS,), -1, np.float32)
        # Only the selected frames (every 10th) hold animals; frames 30 and 70 nobody.
        present = 0 if f % 10 or f in (30, 70) else 1 + (f // 10) % INDIVIDUALS
        for i in range(present):
            xy = rng.uniform(0, 60, (bodyparts, 2)).astype(np.float32)
            likelihood = rng.choice(np.float32([0.05, 0.0999, 0.1, 0.1001, 0.5, 0.95]), bodyparts)
            poses[i] = np.concatenate([xy, likelihood[:, None]], axis=1)
            x, y = rng.uniform(-5, 40, 2)
            boxes[i] = np.float32([x, y, rng.uniform(1, 30), rng.uniform(1, 30)])
            scores[i] = rng.choice(score_choices, p=[0.3, 0.2, 0.1, 0.1, 0.2, 0.1])
        frames.append({'bodyparts': poses.tolist(), 'bboxes': boxes.tolist(), 'bbox_scores': scores.tolist()})
    return frames


def main() -> None:
    import cv2
    import deeplabcut
    from deeplabcut.utils.pseudo_label import dlc3predictions_2_annotation_from_video

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    bodyparts = list(_reference.superanimal_config()['metadata']['bodyparts'])
    first_pass = predictions(np.random.default_rng(0), len(bodyparts))
    out = Path(args.out) / 'pseudo_labels'
    out.mkdir(parents=True, exist_ok=True)
    (out / 'predictions.json').write_text(json.dumps(first_pass))
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / 'project' / 'images'
        images.mkdir(parents=True)
        black = np.zeros(FRAME_SIZE + (3,), np.uint8)
        for f in range(NUM_FRAMES):
            cv2.imwrite(str(images / f'frame_{f:05d}.png'), black)
        for name, (pose_threshold, bbox_threshold) in SETTINGS.items():
            annotations = Path(tmp) / 'project' / 'annotations'
            shutil.rmtree(annotations, ignore_errors=True)
            annotations.mkdir()
            loaded = json.loads((out / 'predictions.json').read_text())  # As video_inference loads it.
            dlc3predictions_2_annotation_from_video(loaded, Path(tmp) / 'project', bodyparts,
                                                    'superanimal_topviewmouse', pose_threshold=pose_threshold,
                                                    bbox_threshold=bbox_threshold)
            (out / name).mkdir(exist_ok=True)
            for split in ('train', 'test'):
                shutil.copy(annotations / f'{split}.json', out / name / f'{split}.json')
    manifest = {'num_frames': NUM_FRAMES, 'frame_size': FRAME_SIZE, 'bodyparts': bodyparts,
                'settings': {k: {'pose_threshold': p, 'bbox_threshold': b} for k, (p, b) in SETTINGS.items()},
                'versions': {'deeplabcut': deeplabcut.__version__, 'numpy': np.__version__,
                             'opencv': cv2.__version__}}
    (out / 'manifest.json').write_text(json.dumps(manifest, indent=1) + '\n')
    counts = {k: len(json.loads((out / k / 'train.json').read_text())['annotations']) for k in SETTINGS}
    print('annotations per setting:', counts)


if __name__ == '__main__':
    main()
