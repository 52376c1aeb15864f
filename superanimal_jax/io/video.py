"""Streaming video frames: decoded by OpenCV in a background thread, handed out in fixed-size batches
of RGB uint8 frames, as DeepLabCut reads them.  Details: ``docs/parity/video.md``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from superanimal_jax.errors import TruncatedVideoWarning, VideoError


@dataclasses.dataclass
class Batch:
    """One fixed-size batch of decoded frames: ``frames``, how many are real, and where it starts."""

    frames: np.ndarray  # (batch_size, H, W, 3) uint8 RGB; rows past ``count`` are zero padding.
    count: int  # Real frames in this batch.
    start: int  # Index (in the video) of the first frame.


class VideoReader:
    """``VideoReader(path, start=0, stop=None)``: frames ``[start, stop)`` of a video file."""

    def __init__(self, path: str | os.PathLike, start: int = 0, stop: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f'{self.path}: no such video file')
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise VideoError(f'{self.path}: not a video OpenCV can open')
            self.fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0
            self.width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
            self.height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            self.header_frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            ok, first = capture.read()
        finally:
            capture.release()
        if not ok or first is None:
            raise VideoError(f'{self.path}: the video has no decodable frames')
        self.height, self.width = first.shape[:2]
        total = self.header_frames or None
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError(f'bad frame range [{start}, {stop}): it must hold at least one frame')
        if total is not None and start >= total:
            raise ValueError(f'{self.path}: start frame {start} is past the last frame ({total - 1})')
        self.start = start
        self.stop = min(stop, total) if stop is not None and total is not None else (stop or total)
        self.truncated_at: int | None = None

    def __len__(self) -> int:
        """Frames in the range, as the header promises (what decoding delivers may be fewer)."""
        return (self.stop - self.start) if self.stop is not None else 0

    def _frames(self, stop_event: threading.Event) -> Iterator[np.ndarray]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            if self.start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, self.start)
            index = self.start
            while (self.stop is None or index < self.stop) and not stop_event.is_set():
                ok, frame = capture.read()
                if not ok or frame is None:
                    if self.stop is not None:
                        self.truncated_at = index
                    break
                if frame.shape[:2] != (self.height, self.width):
                    self.truncated_at = index
                    break
                yield frame[..., ::-1]
                index += 1
        finally:
            capture.release()

    def batches(self, batch_size: int, queue_size: int = 4) -> Iterator[Batch]:
        """Fixed-size batches (the last one zero-padded) decoded ahead in a background thread."""
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        slots: queue.Queue = queue.Queue(maxsize=queue_size)
        stop_event = threading.Event()
        failure: list[BaseException] = []

        def decode() -> None:
            try:
                buffer, count, start = None, 0, self.start
                for frame in self._frames(stop_event):
                    if buffer is None:
                        buffer = np.zeros((batch_size, self.height, self.width, 3), np.uint8)
                    buffer[count] = frame
                    count += 1
                    if count == batch_size:
                        _put(Batch(buffer, count, start))
                        buffer, start, count = None, start + count, 0
                if count:
                    _put(Batch(buffer, count, start))
            except BaseException as err:  # Handed to the consumer, raised there.
                failure.append(err)
            finally:
                _put(None)

        def _put(item) -> None:
            while not stop_event.is_set():
                try:
                    slots.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        thread = threading.Thread(target=decode, name=f'decode {self.path.name}', daemon=True)
        thread.start()
        try:
            while (item := slots.get()) is not None:
                yield item
            if failure:
                raise failure[0]
            if self.truncated_at is not None:
                warnings.warn(f'{self.path}: decoding stopped at frame {self.truncated_at} of '
                              f'{self.stop} the header promises (damaged or truncated file); frames '
                              f'{self.truncated_at}..{self.stop - 1} are marked missing (NaN)',
                              TruncatedVideoWarning, stacklevel=2)
        finally:
            stop_event.set()
            thread.join()
