"""Labeled videos and trajectory plots in DeepLabCut's SuperAnimal style (drawn with OpenCV and
matplotlib).  What DeepLabCut 3.0.2 draws and how we match it: ``docs/parity/plotting.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from superanimal_jax.constants import TOPVIEWMOUSE_COLORS
from superanimal_jax.io.files import atomic_path

BOX_COLOR = (255, 0, 0)
RADIUS = 6


def bodypart_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB: the TopViewMouse colours for 27 keypoints, otherwise the colour map
    sampled evenly (as DeepLabCut samples a colour map over the bodyparts)."""
    if n == len(TOPVIEWMOUSE_COLORS):
        return TOPVIEWMOUSE_COLORS.copy()
    positions = np.linspace(0, len(TOPVIEWMOUSE_COLORS) - 1, n)
    return np.stack([np.interp(positions, np.arange(27), TOPVIEWMOUSE_COLORS[:, c]) for c in range(3)],
                    -1).astype(np.uint8)


def draw_frame(frame: np.ndarray, keypoints: np.ndarray, boxes: np.ndarray | None = None,
               box_scores: np.ndarray | None = None, *, pcutoff: float = 0.1, bbox_threshold: float = 0.9,
               colors: np.ndarray | None = None, radius: int = RADIUS) -> np.ndarray:
    """A copy of the uint8 RGB ``frame`` with ``keypoints (M, K, 3)`` (likelihood > ``pcutoff``)
    and COCO ``boxes (M, 4)`` (score >= ``bbox_threshold``) drawn; -1 entries are absent."""
    image = np.ascontiguousarray(frame, np.uint8).copy()
    keypoints = np.asarray(keypoints, np.float32)
    colors = bodypart_colors(keypoints.shape[1]) if colors is None else np.asarray(colors, np.uint8)
    if boxes is not None and box_scores is not None:
        for (x, y, w, h), score in zip(np.asarray(boxes), np.asarray(box_scores)):
            if score >= bbox_threshold and w > 0 and h > 0:
                cv2.rectangle(image, (int(x), int(y)), (int(x + w), int(y + h)), BOX_COLOR, 1)
    for individual in keypoints:
        for (x, y, likelihood), color in zip(individual, colors):
            if likelihood > pcutoff and np.isfinite(x) and np.isfinite(y):
                cv2.circle(image, (int(round(x)), int(round(y))), radius, tuple(int(c) for c in color), -1)
    return image


class LabeledVideoWriter:
    """``with LabeledVideoWriter(path, fps, (width, height)) as video: video.write(frame, ...)``.

    Frames go to a hidden temporary file; it becomes ``path`` only when the block ends without
    an exception (otherwise it is deleted)."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], *, pcutoff: float = 0.1,
                 bbox_threshold: float = 0.9, codec: str = 'mp4v'):
        self.path = Path(path)
        self.size = tuple(size)
        self.pcutoff, self.bbox_threshold = pcutoff, bbox_threshold
        self._atomic = atomic_path(self.path)
        temp = self._atomic.__enter__()
        self._writer = cv2.VideoWriter(str(temp), cv2.VideoWriter_fourcc(*codec), fps, self.size)
        if not self._writer.isOpened():
            self._writer.release()
            self._atomic.__exit__(OSError, OSError(), None)
            raise OSError(f'cannot write a {codec} video at {self.path} '
                          '(folder not writable, or codec missing)')

    def __enter__(self) -> LabeledVideoWriter:
        return self

    def write(self, frame: np.ndarray, keypoints: np.ndarray, boxes=None, box_scores=None) -> None:
        """Append the uint8 RGB ``frame`` with ``keypoints (M, K, 3)`` and COCO ``boxes (M, 4)`` drawn
        (:func:`draw_frame`, with this writer's ``pcutoff`` and ``bbox_threshold``)."""
        drawn = draw_frame(frame, keypoints, boxes, box_scores, pcutoff=self.pcutoff,
                           bbox_threshold=self.bbox_threshold)
        self._writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def __exit__(self, kind, value, traceback) -> None:
        self._writer.release()
        if kind is None:
            self._atomic.__exit__(None, None, None)
        else:
            try:
                self._atomic.__exit__(kind, value, traceback)
            except BaseException:
                pass  # The temporary file is gone; the caller's exception propagates.


def plot_trajectories(keypoints: np.ndarray, path: str | os.PathLike, *, pcutoff: float = 0.1,
                      bodyparts=None, title: str | None = None) -> Path:
    """A PNG of every keypoint above ``pcutoff`` over the video (``keypoints (N, M, K, 3)``),
    one colour per bodypart, image coordinates (y down)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    keypoints = np.asarray(keypoints, np.float32)
    colors = bodypart_colors(keypoints.shape[2]) / 255
    figure, axes = plt.subplots(figsize=(8, 6), dpi=100)
    with np.errstate(invalid='ignore'):
        for k in range(keypoints.shape[2]):
            points = keypoints[:, :, k].reshape(-1, 3)
            points = points[points[:, 2] > pcutoff]
            label = bodyparts[k] if bodyparts is not None else None
            axes.scatter(points[:, 0], points[:, 1], s=2, color=colors[k], label=label)
    axes.invert_yaxis()
    axes.set_aspect('equal', adjustable='datalim')
    axes.set_xlabel('x (pixels)')
    axes.set_ylabel('y (pixels)')
    if title:
        axes.set_title(title, fontsize=8)
    if bodyparts is not None:
        axes.legend(fontsize=5, markerscale=3, ncol=2, loc='upper left', bbox_to_anchor=(1.01, 1))
    path = Path(path)
    try:
        with atomic_path(path) as temp:
            figure.savefig(temp, bbox_inches='tight')
    finally:
        plt.close(figure)
    return path


def plot_training(records: list[dict], path: str | os.PathLike) -> Path:
    """A PNG of a fine-tuning run's ``log.jsonl`` records: the loss over steps, and the train/test
    RMSE (pixels) and mAP of each evaluation."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    steps = [r for r in records if 'loss' in r]
    evals = [r for r in records if any(k.endswith('.rmse') for k in r)]
    figure, (loss_axes, rmse_axes, map_axes) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    loss_axes.plot([r['step'] for r in steps], [r['loss'] for r in steps], color='tab:blue')
    loss_axes.set_yscale('log')
    loss_axes.set_xlabel('step')
    loss_axes.set_title('training loss (weighted MSE)', fontsize=9)
    for split, color in (('train', 'tab:orange'), ('test', 'tab:green')):
        points = [r for r in evals if f'{split}.rmse' in r]
        if points:
            x = [r['step'] for r in points]
            rmse_axes.plot(x, [r[f'{split}.rmse'] for r in points], 'o-', color=color, label=f'{split} RMSE')
            rmse_axes.plot(x, [r[f'{split}.rmse_pcutoff'] for r in points], 'x--', color=color,
                           label=f'{split} RMSE (p >= cutoff)')
            map_axes.plot(x, [r[f'{split}.mAP'] for r in points], 'o-', color=color, label=f'{split} mAP')
    rmse_axes.set_xlabel('step')
    rmse_axes.set_title('mean keypoint error (pixels)', fontsize=9)
    map_axes.set_xlabel('step')
    map_axes.set_title('mAP (OKS, sigma 0.1)', fontsize=9)
    for axes in (rmse_axes, map_axes):
        if axes.lines:
            axes.legend(fontsize=7)
    figure.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as temp:
            figure.savefig(temp)
    finally:
        plt.close(figure)
    return path
