"""Training batches for top-down fine-tuning, made as DeepLabCut's ``PoseDataset`` makes them:
one item per labelled individual, deterministic and resumable order and augmentation, fixed-size batches.

Parity with DeepLabCut: docs/parity/training_data.md.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
from typing import Callable

import numpy as np

from superanimal_jax.constants import BBOX_MARGIN
from superanimal_jax.io.images import read_image
from superanimal_jax.training.targets import heatmap_targets
from superanimal_jax.transforms import crops as crops_lib
from superanimal_jax.transforms.augment import TrainAugmentation, augment


def bbox_from_keypoints(keypoints: np.ndarray, height: int, width: int, margin: float) -> np.ndarray:
    """DeepLabCut's ``bbox_from_keypoints`` for one individual ``(K, 3)``: COCO xywh float64,
    zeros if no keypoint has ``v > 0``."""
    visible = keypoints[:, 2] > 0
    if not visible.any():
        return np.zeros(4)
    xy = keypoints[visible, :2]
    return _clipped_xywh(np.concatenate([xy.min(axis=0) - margin, xy.max(axis=0) + margin]), height, width)


def clip_box(bbox: np.ndarray, height: int, width: int) -> np.ndarray:
    """A COCO xywh box clipped to the frame (DeepLabCut's ``_compute_crop_bounds``): float64 xywh."""
    x, y, w, h = np.asarray(bbox, np.float64)
    return _clipped_xywh(np.array([x, y, x + w, y + h]), height, width)


def _clipped_xywh(xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """An xyxy box clipped to a ``height`` x ``width`` frame, as COCO xywh."""
    box = np.clip(xyxy, 0, [width, height, width, height])
    return np.concatenate([box[:2], box[2:] - box[:2]])


@dataclasses.dataclass(frozen=True)
class Item:
    """One training item: a frame and one individual's ``(K, 3)`` keypoints in frame pixels, and
    optionally its box (COCO xywh, frame pixels: video adaptation crops around the detector's
    box; without one, the box is the keypoints' plus ``bbox_margin``, as for projects)."""

    image: str
    keypoints: np.ndarray
    bbox: np.ndarray | None = None


def crop_item(image: np.ndarray, keypoints: np.ndarray, bbox: np.ndarray, *,
              crop_size: tuple[int, int] = (256, 256), margin: int = 0) -> dict[str, np.ndarray]:
    """Steps 4-5 on an augmented, normalised frame: the float32 crop, keypoints in the crop,
    and the crop's offset and scale (``frame = crop * scale + offset``)."""
    keypoints = np.array(keypoints, np.float64)
    box = np.asarray(bbox).astype(int)  # DeepLabCut truncates the (augmented) box.
    if box[2] == 0 or box[3] == 0:
        keypoints[:, 2] = 0
        return {'image': np.zeros((crop_size[1], crop_size[0], image.shape[2]), image.dtype),
                'keypoints': keypoints, 'offsets': np.zeros(2), 'scales': np.ones(2)}
    box = box + np.array([-margin, -margin, 2 * margin, 2 * margin])
    window = crops_lib.crop_windows(box[None], crop_size)[0]
    crop = crops_lib.crop(image, window, crop_size)
    scales, offsets = crops_lib.scales_and_offsets(window[None], crop_size)
    keypoints[:, :2] = (keypoints[:, :2] - offsets[0]) / scales[0]
    out = (keypoints[:, 2] > 0) & (np.isnan(keypoints[:, :2]).any(axis=1) | (keypoints[:, 0] < 0)
                                   | (keypoints[:, 0] > crop_size[0]) | (keypoints[:, 1] < 0)
                                   | (keypoints[:, 1] > crop_size[1]))
    keypoints[out, 2] = 0
    return {'image': crop, 'keypoints': keypoints, 'offsets': offsets[0], 'scales': scales[0]}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """DeepLabCut's SuperAnimal fine-tuning data settings (``hrnet_w32.yaml`` + 3.0.2 defaults)."""

    batch_size: int = 1
    bbox_margin: int = BBOX_MARGIN
    crop_size: tuple[int, int] = (256, 256)
    crop_margin: int = 0
    augmentation: TrainAugmentation = TrainAugmentation()
    workers: int = 2
    prefetch: int = 2


class ItemBatches:
    """What the pose and the detector batch sources share: frames read once and then kept in
    memory, a thread pool preparing items (``config.workers`` threads), resumable iterators."""

    def __init__(self, read_image: Callable[[str], np.ndarray]):
        self._read_image = read_image
        self._frames: dict[str, np.ndarray] = {}

    def frame(self, path: str) -> np.ndarray:
        """The image at ``path``, read once and then kept in memory."""
        if path not in self._frames:
            self._frames[path] = self._read_image(path)
        return self._frames[path]

    def _pool(self) -> concurrent.futures.Executor:
        if not hasattr(self, '_executor'):
            self._executor = concurrent.futures.ThreadPoolExecutor(max(1, self.config.workers))
        return self._executor

    def close(self) -> None:
        """Shut down the thread pool that prepares items, if one was started."""
        if hasattr(self, '_executor'):
            self._executor.shutdown(wait=False, cancel_futures=True)
            del self._executor

    def iterator(self, state: dict | None = None, *, num_epochs: int | None = None) -> TrainIterator:
        """A :class:`TrainIterator` from ``state`` (default: the start), stopping after ``num_epochs``."""
        return TrainIterator(self, state, num_epochs=num_epochs)


class TrainData(ItemBatches):
    """Deterministic, resumable batches of ``items`` (see docs/parity/training_data.md).

    ``read_image(path) -> uint8 RGB``; frames are cached in memory once read.  With
    ``process_count > 1``, :meth:`batch` returns this process's rows of each global batch.
    """

    def __init__(self, items: list[Item], config: DataConfig = DataConfig(), *, seed: int = 42,
                 stride: int = 4, read_image: Callable[[str], np.ndarray] = read_image,
                 process_index: int = 0, process_count: int = 1):
        if not items:
            raise ValueError('no training items: every frame of the training split is unlabelled')
        if config.batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {config.batch_size}')
        if config.batch_size % process_count:
            raise ValueError(f'batch size {config.batch_size} does not split over {process_count} processes')
        if not 0 <= process_index < process_count:
            raise ValueError(f'process index {process_index} is not in 0..{process_count - 1}')
        super().__init__(read_image)
        self.items, self.config, self.seed = list(items), config, seed
        self.process_index, self.process_count = process_index, process_count
        self.stride = stride
        self.num_keypoints = int(self.items[0].keypoints.shape[0])

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.items) / self.config.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The item order of ``epoch``: a permutation drawn from ``(seed, epoch)``."""
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.items))

    def sample(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """One item through steps 2-5 of docs/parity/training_data.md (no augmentation when ``rng`` is
        None)."""
        item = self.items[index]
        image = self.frame(item.image)
        h, w = image.shape[:2]
        keypoints = np.array(item.keypoints, np.float64)
        bbox = (bbox_from_keypoints(keypoints, h, w, self.config.bbox_margin) if item.bbox is None
                else clip_box(item.bbox, h, w))
        aug = self.config.augmentation if rng is not None else TrainAugmentation.off()
        image, xy, visible, boxes = augment(aug, rng if rng is not None else np.random.default_rng(0),
                                            image, np.where(keypoints[:, 2:] > 0, keypoints[:, :2], np.nan),
                                            bbox[None])
        keypoints[:, :2] = np.where(keypoints[:, 2:] > 0, xy, keypoints[:, :2])
        keypoints[~visible & (keypoints[:, 2] > 0), 2] = 0
        return crop_item(image, keypoints, boxes[0], crop_size=self.config.crop_size,
                         margin=self.config.crop_margin)

    @property
    def local_batch_size(self) -> int:
        return self.config.batch_size // self.process_count

    def batch(self, epoch: int, step: int, *, augment_items: bool = True) -> dict[str, np.ndarray]:
        """Batch ``step`` (0-based, within the epoch) of ``epoch``, padded to the batch size (this
        process's rows of it)."""
        first = step * self.config.batch_size + self.process_index * self.local_batch_size
        positions = range(first, min(first + self.local_batch_size, len(self.items)))
        order = self.order(epoch)
        samples = list(self._pool().map(
            lambda p: self.sample(int(order[p]), np.random.default_rng([self.seed, 1, epoch, p])
                                  if augment_items else None), positions))
        return self.collate(samples, self.local_batch_size)

    def collate(self, samples: list[dict], size: int | None = None) -> dict[str, np.ndarray]:
        """``size`` rows (default: the batch size): ``samples``, then blank items."""
        size = self.config.batch_size if size is None else size
        (cw, ch), k = self.config.crop_size, self.num_keypoints
        images = np.zeros((size, ch, cw, 3), np.float32)
        keypoints = np.zeros((size, k, 3))
        for i, s in enumerate(samples):
            images[i], keypoints[i] = s['image'], s['keypoints']
        stride = self.stride
        targets, weights = heatmap_targets(keypoints, (ch // stride, cw // stride), stride)
        weights[len(samples):] = 0  # Padding items: no loss, no count.
        return {'image': images, 'targets': targets, 'weights': weights}



class TrainIterator:
    """Batches in order from ``{'epoch': e, 'step': s}``; :meth:`get_state` is the position of the
    next batch to be returned, so saving it with a checkpoint resumes exactly."""

    def __init__(self, data: ItemBatches, state: dict | None = None, *, num_epochs: int | None = None):
        self.data, self.num_epochs = data, num_epochs
        state = state or {'epoch': 0, 'step': 0}
        self.epoch, self.step = int(state['epoch']), int(state['step'])
        self._pending: collections.deque = collections.deque()
        self._next = (self.epoch, self.step)
        self._background = concurrent.futures.ThreadPoolExecutor(1)

    def get_state(self) -> dict:
        """``{'epoch': e, 'step': s}``: the position of the next batch to be returned."""
        return {'epoch': self.epoch, 'step': self.step}

    def _advance(self, position):
        epoch, step = position
        step += 1
        return (epoch + 1, 0) if step >= self.data.steps_per_epoch else (epoch, step)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while len(self._pending) < 1 + self.data.config.prefetch:
            epoch, step = self._next
            if self.num_epochs is not None and epoch >= self.num_epochs:
                break
            self._pending.append(((epoch, step), self._background.submit(self.data.batch, epoch, step)))
            self._next = self._advance(self._next)
        if not self._pending:
            raise StopIteration
        (epoch, step), future = self._pending.popleft()
        batch = future.result()
        batch['epoch'], batch['epoch_step'] = epoch, step
        self.epoch, self.step = self._advance((epoch, step))
        return batch

    def close(self) -> None:
        """Cancel the batches being prepared and stop the background thread."""
        for _, future in self._pending:
            future.cancel()
        self._background.shutdown(wait=False, cancel_futures=True)
