"""Video adaptation's training data, in memory: the pseudo-labelled frames decoded from the video
itself (DeepLabCut writes every frame of the video to PNG first), and the pose and detector items
DeepLabCut makes from its COCO pseudo-label set.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from superanimal_jax.adaptation.pseudo_labels import PseudoLabels
from superanimal_jax.errors import VideoError
from superanimal_jax.io.video import VideoReader
from superanimal_jax.training.data import Item
from superanimal_jax.training.detector_data import DetectorItem

_FRAME = re.compile(r'frame_(\d+)\.png')


def frame_index(name: str) -> int:
    """The frame index in a :func:`~superanimal_jax.adaptation.pseudo_labels.frame_name`."""
    match = _FRAME.fullmatch(name)
    if match is None:
        raise ValueError(f'{name!r} is not a frame name (frame_<index>.png)')
    return int(match.group(1))


class VideoFrames:
    """``read_image`` for items named ``frame_%05d.png``: the frames ``frames`` of ``video``,
    RGB uint8, decoded in one sequential pass the first time any is asked for (the order
    DeepLabCut's frame extraction reads them in, so frame ``i`` is the same image) and kept.

    Memory: the pseudo-labelled frames only (at most every 10th frame of the video).
    """

    def __init__(self, video: str | os.PathLike, frames: Iterable[int]):
        self.path = Path(video)
        self.wanted = frozenset(int(f) for f in frames)
        self._frames: dict[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __call__(self, name: str) -> np.ndarray:
        index = frame_index(name)
        if index not in self.wanted:
            raise KeyError(f'frame {index} of {self.path} is not one of the pseudo-labelled frames')
        with self._lock:
            if self._frames is None:
                self._frames = self._decode()
        return self._frames[index]

    def _decode(self) -> dict[int, np.ndarray]:
        if not self.wanted:
            return {}
        reader = VideoReader(self.path, 0, max(self.wanted) + 1)
        found = {}
        for batch in reader.batches(32):
            for j in range(batch.count):
                if batch.start + j in self.wanted:
                    found[batch.start + j] = batch.frames[j].copy()
        missing = sorted(self.wanted - set(found))
        if missing:
            more = '...' if len(missing) > 5 else ''
            raise VideoError(f'{self.path}: frames {missing[:5]}{more} could not be decoded')
        return found


def pose_items(labels: PseudoLabels) -> list[Item]:
    """One pose item per pseudo-label annotation: its frame, its keypoints ``(K, 3)`` (masked ones
    as DeepLabCut leaves them: visible at (0, 0)) and its detector box, cropped with no margin."""
    names = {image['id']: image['file_name'] for image in labels.train['images']}
    items = []
    for annotation in labels.train['annotations']:
        keypoints = np.asarray(annotation['keypoints'], np.float64).reshape(-1, 3)
        box = np.asarray(annotation['bbox'], np.float64)
        items.append(Item(names[annotation['image_id']], keypoints, box))
    return items


def detector_items(labels: PseudoLabels) -> list[DetectorItem]:
    """One detector item per pseudo-labelled frame with every box kept on it (COCO xywh)."""
    boxes: dict[int, list] = {image['id']: [] for image in labels.train['images']}
    for annotation in labels.train['annotations']:
        boxes[annotation['image_id']].append(annotation['bbox'])
    return [DetectorItem(image['file_name'], np.asarray(boxes[image['id']], np.float64).reshape(-1, 4))
            for image in labels.train['images']]

