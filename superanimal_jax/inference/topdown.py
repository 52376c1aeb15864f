"""The top-down SuperAnimal pipeline: detector -> square crops -> pose -> keypoints in the frame.

DeepLabCut's ``video_inference_superanimal`` semantics: the first ``max_individuals`` detections
(torchvision's output is sorted by score) become COCO boxes, each is cropped with context to
256x256 (:mod:`superanimal_jax.transforms.crops`), the pose model predicts 27 keypoints per crop, and they
are mapped back to frame pixels.  Absent individuals are padded with -1 (keypoints, boxes, box
scores), so every frame gives arrays of the same shape.

Shapes stay static: the detector compiles once per (batch, height, width), the pose model once
per ``pose_batch_size`` (crops are packed and the last chunk padded).  :meth:`stream` overlaps the
next batch's detector run (dispatched asynchronously) with the current batch's crops and pose.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import numpy as np

from superanimal_jax.transforms import crops as crops_lib


class TopDownPipeline:
    """``TopDownPipeline(detector, pose)``; ``predict(frames)`` -> keypoints, boxes, box scores.

    ``detector`` has ``detect(frames, max_detections) -> {'boxes' xyxy, 'scores', 'valid'}``
    (:class:`superanimal_jax.Detector`); ``pose`` has ``keypoints_uint8(crops)`` (a
    :class:`superanimal_jax.PoseEstimator`).
    """

    def __init__(self, detector, pose, *, max_individuals: int = 10, crop_size: tuple[int, int] = (256, 256),
                 pose_batch_size: int = 32):
        if detector is None or pose is None:
            raise ValueError('the top-down pipeline needs both a detector and a pose model '
                             '(convert both files into the model directory)')
        if not 1 <= max_individuals <= 100:
            raise ValueError(f'max_individuals must be in 1..100, got {max_individuals}')
        if pose_batch_size < 1:
            raise ValueError(f'pose_batch_size must be >= 1, got {pose_batch_size}')
        self.detector, self.pose = detector, pose
        self.max_individuals = max_individuals
        self.crop_size = tuple(crop_size)
        self.pose_batch_size = pose_batch_size

    @property
    def num_keypoints(self) -> int:
        return self.pose.config.num_keypoints

    def predict(self, frames: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
        """uint8 RGB ``(N, H, W, 3)`` -> ``keypoints (N, M, K, 3)`` (x, y, likelihood),
        ``boxes (N, M, 4)`` COCO xywh and ``box_scores (N, M)``, M = ``max_individuals``, -1 where
        fewer individuals were found.  Frames run ``batch_size`` at a time (the last batch
        padded), so any N reuses one compiled detector."""
        frames = check_frames(frames)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        batches = []
        for start in range(0, len(frames), batch_size):
            chunk = frames[start:start + batch_size]
            if len(chunk) < batch_size:
                chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + frames.shape[1:], np.uint8)])
            batches.append((chunk, min(batch_size, len(frames) - start)))
        parts = list(self.stream(batches))
        if not parts:
            return self._empty(0)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def stream(self, batches: Iterable[tuple[np.ndarray, int]]) -> Iterator[dict[str, np.ndarray]]:
        """For each ``(frames, count)`` batch (fixed size, rows past ``count`` padding), the
        predictions of its first ``count`` frames.  The detector of batch i+1 is dispatched before
        batch i's crops and pose run."""
        pending = None
        for frames, count in batches:
            found = self.detector.detect(frames, max_detections=self.max_individuals)  # Async.
            if pending is not None:
                yield self._finish(*pending)
            pending = (frames, count, found)
        if pending is not None:
            yield self._finish(*pending)

    def _empty(self, n: int) -> dict[str, np.ndarray]:
        m, k = self.max_individuals, self.num_keypoints
        return {'keypoints': np.full((n, m, k, 3), -1, np.float32),
                'boxes': np.full((n, m, 4), -1, np.float32),
                'box_scores': np.full((n, m), -1, np.float32)}

    def _finish(self, frames: np.ndarray, count: int, found: dict) -> dict[str, np.ndarray]:
        found = jax.device_get(found)
        out = self._empty(count)
        valid = np.asarray(found['valid'][:count])
        frame_index, slot = np.nonzero(valid)  # Detections are sorted: valid ones come first.
        if len(frame_index) == 0:
            return out
        boxes = crops_lib.xyxy_to_xywh(found['boxes'][frame_index, slot])
        out['boxes'][frame_index, slot] = boxes
        out['box_scores'][frame_index, slot] = found['scores'][frame_index, slot]
        windows = crops_lib.crop_windows(boxes, self.crop_size)
        crops = np.stack([crops_lib.crop(frames[f], w, self.crop_size) for f, w in zip(frame_index, windows)])
        keypoints = self._pose(crops)
        scales, offsets = crops_lib.scales_and_offsets(windows, self.crop_size)
        out['keypoints'][frame_index, slot] = crops_lib.to_frame(keypoints, scales, offsets)
        return out

    def _pose(self, crops: np.ndarray) -> np.ndarray:
        """Pose on ``crops`` in fixed chunks of ``pose_batch_size`` (one compiled shape)."""
        n, size = len(crops), self.pose_batch_size
        padded = -(-n // size) * size
        if padded != n:
            crops = np.concatenate([crops, np.zeros((padded - n,) + crops.shape[1:], crops.dtype)])
        chunks = [self.pose.keypoints_uint8(crops[i:i + size]) for i in range(0, padded, size)]  # Async.
        return np.concatenate(jax.device_get(chunks))[:n]


def check_frames(frames) -> np.ndarray:
    """uint8 RGB ``(N, H, W, 3)``, or a clear error."""
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        raise ValueError(f'frames must be a batch (N, H, W, 3); got one frame {frames.shape}: use frames[None]')
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'frames must be uint8 RGB (N, H, W, 3), got shape {frames.shape}')
    if frames.dtype != np.uint8:
        raise ValueError(f'frames must be uint8 RGB (N, H, W, 3), got dtype {frames.dtype}')
    return frames
