"""The top-down SuperAnimal pipeline: detector -> square crops -> pose -> keypoints in the frame,
with DeepLabCut's ``video_inference_superanimal`` semantics and static shapes.
How it matches DeepLabCut: ``docs/parity/pipeline.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import numpy as np

from superanimal_jax import parallel
from superanimal_jax.transforms import crops as crops_lib


class TopDownPipeline:
    """``TopDownPipeline(detector, pose)``; ``predict(frames)`` -> keypoints, boxes, box scores.

    ``detector`` has ``detect(frames, max_detections) -> {'boxes' xyxy, 'scores', 'valid'}``
    (:class:`superanimal_jax.Detector`); ``pose`` has ``keypoints_uint8(crops)`` (a
    :class:`superanimal_jax.PoseEstimator`).
    """

    def __init__(self, detector, pose, *, max_individuals: int = 10,
                 crop_size: tuple[int, int] = (256, 256), pose_batch_size: int = 32):
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
        parts = list(self.stream(parallel.fixed_batches(frames, batch_size)))
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
        out['keypoints'][frame_index, slot] = keypoints_in_frames(
            self.pose, frames, frame_index, boxes, crop_size=self.crop_size, chunk=self.pose_batch_size)
        return out


def keypoints_in_frames(pose, frames, owners, boxes, *, crop_size=(256, 256),
                        chunk: int = 32) -> np.ndarray:
    """Top-down pose for COCO ``boxes (B, 4)``, box ``b`` in ``frames[owners[b]]``: ``(B, K, 3)``
    keypoints in frame pixels.

    DeepLabCut's steps: square crops with context (uint8, black padding), the pose model
    (``pose.keypoints_uint8``) in pieces of at most ``chunk`` crops (:func:`pose_pieces`: a few
    compiled shapes, little padding), keypoints mapped back by ``xy * scale + offset``.
    The one top-down path: the pipeline, evaluation and pseudo-labelling all run it.
    """
    windows = crops_lib.crop_windows(np.asarray(boxes, np.float32).reshape(-1, 4), crop_size)
    crops = np.stack([crops_lib.crop(frames[f], w, crop_size) for f, w in zip(owners, windows)])
    parts, counts, start = [], [], 0
    for size in pose_pieces(len(crops), chunk):
        piece = crops[start:start + size]
        parts.append(pose.keypoints_uint8(parallel.pad_batch(piece, size)))  # Async.
        counts.append(len(piece))
        start += size
    keypoints = np.concatenate([p[:c] for p, c in zip(jax.device_get(parts), counts)])
    scales, offsets = crops_lib.scales_and_offsets(windows, crop_size)
    return crops_lib.to_frame(keypoints, scales, offsets)


def pose_pieces(n: int, chunk: int) -> list[int]:
    """The batch sizes that run ``n`` crops: full chunks of ``chunk``, then the rest as its largest
    power of two and what remains padded to the next power of two (each capped at ``chunk``).
    Only powers of two (and ``chunk``) ever compile; 24 crops run as 16 + 8, 13 as 8 + 8 (3 of
    padding); padding is always less than a third of the rest, and the rest takes at most two calls."""
    if chunk < 1:
        raise ValueError(f'chunk must be >= 1, got {chunk}')
    pieces = [chunk] * (n // chunk)
    rest = n % chunk
    if rest:
        first = 1 << (rest.bit_length() - 1)  # The largest power of two <= rest.
        pieces.append(first)
        if rest > first:
            pieces.append(min(chunk, 1 << (rest - first - 1).bit_length()))
    return pieces


def pose_on_boxes(pose, frames, boxes, *, crop_size=(256, 256), chunk: int = 32) -> list[np.ndarray]:
    """:func:`keypoints_in_frames` for each frame's COCO ``boxes[j] (M_j, 4)``: a list of
    ``(M_j, K, 3)`` keypoint arrays in frame pixels."""
    boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
    owners = np.concatenate([np.full(len(b), j) for j, b in enumerate(boxes)] + [np.zeros(0)]).astype(int)
    if not len(owners):
        return [np.zeros((0, 0, 3), np.float32) for _ in frames]
    keypoints = keypoints_in_frames(pose, frames, owners, np.concatenate(boxes), crop_size=crop_size,
                                    chunk=chunk)
    return [keypoints[owners == j] for j in range(len(frames))]


def check_frames(frames) -> np.ndarray:
    """uint8 RGB ``(N, H, W, 3)``, or a clear error."""
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        raise ValueError(f'frames must be a batch (N, H, W, 3); got one frame {frames.shape}: '
                         'use frames[None]')
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f'frames must be uint8 RGB (N, H, W, 3), got shape {frames.shape}')
    if frames.dtype != np.uint8:
        raise ValueError(f'frames must be uint8 RGB (N, H, W, 3), got dtype {frames.dtype}')
    return frames
