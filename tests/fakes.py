"""Small stand-ins for the streaming tests: synthetic videos, a detector that finds a bright
square by thresholding (cheap, deterministic), and the tiny HRNet pose variant with random
weights.  The real networks' parity is tested elsewhere; these exercise the plumbing
(batching, crops, padding, files) at a speed that allows thousands of frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax.inference.model import SuperAnimalModel
from superanimal_jax.inference.pose import PoseEstimator
from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork

SIZE = (96, 128)  # Frame height, width.
BODYPARTS = ('nose', 'left_ear', 'right_ear', 'neck', 'tail_base')


def frame(i: int, size=SIZE) -> np.ndarray:
    """Frame ``i`` (RGB): a bright square moving across a textured background; every 7th frame
    has no square (no detection)."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    out = np.stack([(xx * 2 + i) % 64, (yy * 3) % 64, (xx + yy) % 64], -1).astype(np.uint8)
    if i % 7 != 6:
        x0, y0 = 5 + (i * 3) % (w - 40), 4 + (i * 2) % (h - 30)
        out[y0:y0 + 20 + i % 5, x0:x0 + 30] = (250, 240, 230)
    return out


def write_video(path: Path, n: int, *, fourcc: str = 'MJPG', fps: float = 25.0, size=SIZE) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (size[1], size[0]))
    assert writer.isOpened(), f'cannot write {path}'
    for i in range(n):
        writer.write(cv2.cvtColor(frame(i, size), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


class ThresholdDetector:
    """``detect`` like :class:`superanimal_jax.Detector`: the box around pixels brighter than
    200 in every channel, score 0.95, plus a second, weaker box (0.7) on its left half."""

    def __init__(self):
        self.calls = 0

    def detect(self, frames, max_detections: int = 100) -> dict:
        self.calls += 1
        frames = np.asarray(frames)
        n = len(frames)
        boxes = np.zeros((n, max_detections, 4), np.float32)
        scores = np.zeros((n, max_detections), np.float32)
        valid = np.zeros((n, max_detections), bool)
        for i, f in enumerate(frames):
            ys, xs = np.nonzero((f > 200).all(-1))
            if len(xs):
                box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) + 0.25
                found = [(box, 0.95), (np.array([box[0], box[1], (box[0] + box[2]) / 2, box[3]]), 0.7)]
                for j, (b, s) in enumerate(found[:max_detections]):
                    boxes[i, j], scores[i, j], valid[i, j] = b, s, True
        return {'boxes': jnp.asarray(boxes), 'scores': jnp.asarray(scores), 'valid': jnp.asarray(valid)}


def tiny_pose(seed: int = 0, **options) -> PoseEstimator:
    config = POSE_VARIANTS['hrnet_tiny']
    variables = PoseNetwork(config).init(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
    return PoseEstimator(config, variables, keypoint_names=BODYPARTS, **options)


def tiny_model(detector=None) -> SuperAnimalModel:
    return SuperAnimalModel(pose=tiny_pose(), metadata={}, detector=detector or ThresholdDetector())
