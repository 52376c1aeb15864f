"""Pseudo-labels for video adaptation: a first pass's confident predictions as a COCO dataset,
as DeepLabCut's ``dlc3predictions_2_annotation_from_video`` makes it (``deeplabcut/utils/
pseudo_label.py`` in 3.0.2), from the ``_before_adapt.json`` list without any frame on disk.

What DeepLabCut does, and what we keep (README, "Video adaptation"):

* Frames are named ``frame_%05d.png`` and **sorted as strings**, then every 10th is taken: past
  99,999 frames the string order is not the frame order (``frame_100000`` sorts before
  ``frame_10001``).  Kept by default (``order='deeplabcut'``), so the same frames are chosen;
  ``order='frames'`` takes every 10th frame in time order.
* An individual is left out when all its values are <= 0 (padding), it has no box, or its box
  score is below ``bbox_threshold``.  Its keypoints whose score is below ``pose_threshold``
  become ``(0, 0, 0)``, then **every** visibility is set to 2, so a masked keypoint is a
  "visible" keypoint at the frame origin.  Kept (the pose step trains on it as DeepLabCut's does).
* ``area`` is ``w * y`` of the ``[x, y, w, h]`` box (DeepLabCut indexes ``bbox[-2] * bbox[-3]``).
  Kept in the files (nothing we train reads it).
* Image ids count the selected frames, including those left without annotations (which are not
  listed); ``test.json`` is the first 10 images and the first 10 annotations, which need not
  belong to each other.  Kept in the files; adaptation trains on ``train.json`` only, as
  DeepLabCut does.
* Frames the first pass could not decode (``null`` in our json) have no annotations.  DeepLabCut
  has no such entries.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from superanimal_jax.io.files import atomic_path

EVERY = 10  # DeepLabCut keeps every 10th frame.
TEST_ITEMS = 10  # test.json: the first 10 images and the first 10 annotations.
CATEGORY_ID = 1


def frame_name(index: int) -> str:
    """The name DeepLabCut's ``video_to_frames`` gives frame ``index``."""
    return f'frame_{index:05d}.png'


def selected_frames(num_frames: int, *, every: int = EVERY, order: str = 'deeplabcut') -> np.ndarray:
    """The frame indices whose predictions become pseudo-labels, in image-id order.

    ``order='deeplabcut'``: every ``every``-th of the frames sorted by name as strings (what
    DeepLabCut does; the time order up to 100,000 frames); ``'frames'``: every ``every``-th frame.
    """
    if order == 'frames':
        return np.arange(0, num_frames, every)
    if order != 'deeplabcut':
        raise ValueError(f"order must be 'deeplabcut' or 'frames', not {order!r}")
    by_name = sorted(range(num_frames), key=frame_name)
    return np.asarray(by_name[::every], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """A pseudo-labelled COCO dataset: ``train`` and ``test`` as DeepLabCut writes them, and
    ``frames``: for each listed image (``train['images']`` order), its frame index in the video."""

    train: dict
    test: dict
    frames: tuple[int, ...]

    @property
    def num_annotations(self) -> int:
        """How many individuals were kept."""
        return len(self.train['annotations'])

    def write(self, folder: str | Path) -> dict[str, Path]:
        """``folder/annotations/{train,test}.json`` (DeepLabCut's layout, written atomically)."""
        annotations = Path(folder) / 'annotations'
        annotations.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, data in (('test', self.test), ('train', self.train)):
            paths[name] = annotations / f'{name}.json'
            with atomic_path(paths[name]) as temp:
                temp.write_text(json.dumps(data, indent=4))
        return paths


def pseudo_labels(predictions: Sequence[dict | None], frame_size: tuple[int, int],
                  bodyparts: Sequence[str], *, num_frames: int | None = None,
                  superanimal_name: str = 'superanimal_topviewmouse',
                  pose_threshold: float = 0.1, bbox_threshold: float = 0.9, order: str = 'deeplabcut',
                  every: int = EVERY) -> PseudoLabels:
    """The COCO pseudo-label set from a first pass's per-frame predictions.

    ``predictions``: the ``_before_adapt.json`` list (per frame ``bodyparts (M, K, 3)``,
    ``bboxes (M, 4)`` xywh, ``bbox_scores (M,)``; ``None`` for a frame that was not decoded);
    ``frame_size``: the video's ``(height, width)``; ``num_frames``: the video's frame count
    (DeepLabCut uses the shorter of it and the predictions).  Thresholds and selection as
    DeepLabCut (module docstring).
    """
    if not superanimal_name.startswith('superanimal_'):
        raise ValueError(f'video adaptation needs a SuperAnimal model, not {superanimal_name!r}')
    count = len(predictions) if num_frames is None else min(len(predictions), num_frames)
    height, width = (int(v) for v in frame_size)
    category = {'name': superanimal_name[len('superanimal_'):], 'id': CATEGORY_ID, 'supercategory': 'animal',
                'keypoints': list(bodyparts)}
    images, annotations, frames = [], [], []
    for image_id, frame in enumerate(selected_frames(count, every=every, order=order)):
        prediction = predictions[int(frame)]
        kept = 0
        for pose, box, score in _individuals(prediction):
            if np.all(np.asarray(pose) <= 0) or len(box) == 0 or score < bbox_threshold:
                continue
            pose = np.array(pose, dtype=np.float64)
            pose[pose[:, -1] < pose_threshold] = 0
            pose[:, -1] = 2
            box = [float(v) for v in box][:4]
            annotations.append({
                'category_id': CATEGORY_ID, 'keypoints': [float(v) for v in pose.reshape(-1)],
                'num_keypoints': len(pose), 'image_id': image_id, 'bbox': box,
                'area': float(box[-2] * box[-3]), 'iscrowd': 0, 'id': len(annotations)})
            kept += 1
        if kept:
            images.append({'id': image_id, 'file_name': frame_name(int(frame)), 'width': width,
                           'height': height})
            frames.append(int(frame))
    train = {'images': images, 'annotations': annotations, 'categories': [category]}
    test = {'images': images[:TEST_ITEMS], 'annotations': annotations[:TEST_ITEMS], 'categories': [category]}
    return PseudoLabels(train, test, tuple(frames))


def _individuals(prediction: dict | None):
    if prediction is None:
        return []
    poses, boxes, scores = prediction['bodyparts'], prediction['bboxes'], prediction['bbox_scores']
    if not len(poses) == len(boxes) == len(scores):
        raise ValueError(f'a prediction has {len(poses)} poses, {len(boxes)} boxes and {len(scores)} '
                         'box scores')
    return zip(poses, boxes, scores)


def read_predictions(path: str | Path) -> list[dict | None]:
    """A ``_before_adapt.json`` file (ours or DeepLabCut's), with a clear error if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f'cannot read the first-pass predictions {path}: {err}') from err
    keys = {'bodyparts', 'bboxes', 'bbox_scores'}
    if not isinstance(data, list) or any(p is not None and not (isinstance(p, dict) and keys <= set(p))
                                         for p in data):
        raise ValueError(f'{path} is not a list of per-frame predictions (bodyparts, bboxes, bbox_scores)')
    return data
