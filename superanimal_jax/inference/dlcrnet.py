"""The DLCRNet release at run time, as DeepLabCut's SuperAnimal TF video path runs it
(``superanimal_inference.video_inference``): every frame at a list of heights, the best peak of
each joint at each scale, projected back and merged across scales.

How it matches DeepLabCut: ``docs/parity/dlcrnet.md``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax import compilation, parallel
from superanimal_jax.inference.topdown import check_frames
from superanimal_jax.models.pose_resnet import PoseResnetConfig, best_peaks, network
from superanimal_jax.transforms import scales as scales_lib

CONFIDENCE_CUTOFF = 0.1  # Scale predictions below this are left out of the merge.
COSINE_CUTOFF = 0.997  # ... and those whose cosine to the scales' median is below this.


class DLCRNetEstimator:
    """DeepLabCut's TF pose network (PoseResnet, or the multi-stage DLCRNet_ms5) with its weights,
    for one animal per frame.

    ``predict(frames)`` on uint8 RGB frames ``(N, H, W, 3)`` gives ``(N, K, 3)`` x, y (frame
    pixels), likelihood, float64, exactly as DeepLabCut lays them out (NaN where a joint has no
    prediction).  ``scales`` (default ``[H - 50, H, H + 50]``) are the heights each frame is seen
    at.  Each (scale, frame size, batch size) compiles once; batches are split across ``mesh``
    (default: every device of this process).  ``dtype``: compute dtype (weights stay float32);
    ``precision``: that of its matmuls and convolutions, as for :class:`superanimal_jax.PoseEstimator`.
    """

    def __init__(self, config: PoseResnetConfig, variables, *, keypoint_names=None,
                 snapshot: str = 'snapshot-0', dtype=jnp.float32, mesh=None, nms_radius: int = 5,
                 sigma: float = 1.0, min_confidence: float = 0.01, precision: str | None = None):
        self.config = config
        self.keypoint_names = tuple(keypoint_names or ())
        if self.keypoint_names and len(self.keypoint_names) != config.num_joints:
            raise ValueError(f'{len(self.keypoint_names)} keypoint names for a '
                             f'{config.num_joints}-joint model')
        self.snapshot = snapshot
        self.dtype = parallel.compute_dtype(dtype)
        self.precision = compilation.resolve_precision(precision, self.dtype)
        self.network = network(config, self.dtype)
        self.mesh = parallel.check_local(mesh or parallel.local_mesh())
        self.variables = parallel.put_replicated(variables, self.mesh)
        options = dict(nms_radius=nms_radius, sigma=sigma, min_confidence=min_confidence)

        def peaks(v, frames):
            out = self.network.apply(v, frames.astype(jnp.float32))
            return best_peaks(out['scmap'], out.get('locref'), **options)

        self._peaks = jax.jit(compilation.with_precision(peaks, self.precision))
        self._taps = jax.jit(compilation.with_precision(self.network.apply, self.precision))

    @property
    def scorer(self) -> str:
        """DeepLabCut's scorer name for this file: ``DLC_snapshot-N``."""
        return f'DLC_{self.snapshot}'

    def with_variables(self, variables) -> DLCRNetEstimator:
        """The same compiled model with other weights: nothing recompiles."""
        other = copy.copy(self)
        other.variables = parallel.put_replicated(variables, self.mesh)
        return other

    def taps(self, frames) -> dict:
        """Every named output (``block1``..``block4``, ``part_pred``, ``scmap``, ``locref``) of
        RGB frames ``(N, H, W, 3)`` in 0-255, at their own size."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f'frames must be RGB (N, H, W, 3), got shape {frames.shape}')
        return parallel.run_split(self._taps, self.variables, frames.astype(np.float32), self.mesh)

    def peaks(self, frames: np.ndarray) -> dict:
        """:func:`superanimal_jax.models.pose_resnet.best_peaks` of uint8 frames at their own size
        (device arrays; dispatched, not waited for)."""
        return parallel.run_split(self._peaks, self.variables, frames, self.mesh)

    def predict(self, frames, *, scales: Sequence[int] | None = None, batch_size: int = 8) -> np.ndarray:
        """``(N, K, 3)`` keypoints (x, y, likelihood) of uint8 RGB frames, float64."""
        frames = check_frames(frames)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        parts = list(self.stream(parallel.fixed_batches(frames, batch_size), scales=scales))
        if not parts:
            return np.zeros((0, self.config.num_joints, 3))
        return np.concatenate(parts)

    def stream(self, batches: Iterable[tuple[np.ndarray, int]], *, scales: Sequence[int] | None = None
               ) -> Iterator[np.ndarray]:
        """For each ``(frames, count)`` batch (rows past ``count`` padding), the keypoints of its
        first ``count`` frames.  Batch i+1 is resized and dispatched before batch i is decoded."""
        checked = scales_lib.check_scales(scales) if scales is not None else None
        pending = None
        for frames, count in batches:
            frames = check_frames(frames)
            used = checked or scales_lib.default_scales(frames.shape[1])
            found = [self.peaks(scales_lib.resize_to_height(frames, s)) for s in used]  # Async.
            if pending is not None:
                yield self._finish(*pending)
            pending = (frames.shape[1], used, found, count)
        if pending is not None:
            yield self._finish(*pending)

    def _finish(self, height: int, scales: list[int], found: list[dict], count: int) -> np.ndarray:
        found = [{k: v[:count] for k, v in f.items()} for f in jax.device_get(found)]
        xy = np.stack([scale_coordinates(f, self.config.stride, height / s) for f, s in zip(found, scales)])
        confidence = np.stack([confidence_of(f['thousandths']) for f in found])
        peaks = np.stack([f['found'] for f in found])
        return merge_scales(xy, confidence, peaks)


def confidence_of(thousandths: np.ndarray) -> np.ndarray:
    """DeepLabCut's confidence (``numpy.round(score, 3)``, float32) from :func:`best_peaks`'s numerators."""
    return np.asarray(thousandths, np.float32) / np.float32(1000)


def scale_coordinates(peaks: dict, stride: int, ratio: float) -> np.ndarray:
    """Frame coordinates ``(N, K, 2)`` (float64) of one scale's peaks: cell ``stride * [col, row]
    + stride // 2`` plus the locref offset, rounded to 3 decimals, times ``old_h / new_h`` on both
    axes (DeepLabCut's projection uses the height ratio for x too)."""
    cells = np.stack([peaks['col'], peaks['row']], axis=-1)
    position = (float(stride) * cells + float(stride // 2)) + np.asarray(peaks['offset'], np.float32)
    return np.round(position, 3) * ratio


def merge_scales(xy: np.ndarray, confidence: np.ndarray, found: np.ndarray, *,
                 confidence_cutoff: float = CONFIDENCE_CUTOFF, cosine_cutoff: float = COSINE_CUTOFF
                 ) -> np.ndarray:
    """DeepLabCut's merge of per-scale predictions: ``xy (S, N, K, 2)`` projected coordinates,
    ``confidence (S, N, K)`` float32, ``found (S, N, K)`` -> ``(N, K, 3)`` float64.

    One scale: the prediction itself; a frame without any peak gets NaN coordinates and likelihood
    0, a joint without a peak NaN.  Several scales: a frame without any peak at a scale is left
    out of that scale (NaN); a joint without a peak (or at exactly (0, 0)) counts as (0, 0) with
    confidence 0.  Predictions with confidence below ``confidence_cutoff``, or whose position
    vector's cosine to the median over scales is below ``cosine_cutoff``, are masked; the result
    is the median of what is left (NaN if nothing), the likelihood rounded to float32.
    """
    frame_found = found.any(axis=-1, keepdims=True)  # (S, N, 1): the frame has a peak at this scale.
    if len(xy) == 1:
        out = np.concatenate([xy[0], confidence[0, ..., None].astype(np.float64)], axis=-1)
        out[~found[0]] = np.nan
        empty = ~frame_found[0, :, 0]
        out[empty, :, 2] = 0.0
        return out
    xyp = np.zeros(xy.shape[:-1] + (3,))
    keep = found & np.any(xy != 0, axis=-1)
    xyp[..., :2] = np.where(keep[..., None], xy, 0.0)
    xyp[..., 2] = np.where(keep, confidence.astype(np.float64), 0.0)
    xyp[np.broadcast_to(~frame_found, keep.shape)] = np.nan
    with np.errstate(invalid='ignore', divide='ignore'), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # All-NaN medians are expected.
        positions = xyp[..., :2]
        median = np.nanmedian(positions, axis=0)
        dot = np.einsum('snkc,nkc->snk', positions, median)
        cosine = np.nan_to_num(dot / (np.linalg.norm(positions, axis=-1) * np.linalg.norm(median, axis=-1)))
        xyp[(xyp[..., 2] < confidence_cutoff) | (cosine < cosine_cutoff)] = np.nan
        coordinates = np.nanmedian(xyp[..., :2], axis=0)
        likelihood = np.nanmedian(xyp[..., 2], axis=0).astype(np.float32)
    return np.concatenate([coordinates, likelihood[..., None].astype(np.float64)], axis=-1)


def frame_names(count: int, total: int, start: int = 0) -> list[str]:
    """DeepLabCut's row names for frames ``start .. start + count - 1`` of a ``total``-frame video:
    ``frame`` + the index zero-padded to ``ceil(log10(total))`` digits."""
    width = int(np.ceil(np.log10(total))) if total > 0 else 0
    return ['frame' + str(i).zfill(width) for i in range(start, start + count)]
