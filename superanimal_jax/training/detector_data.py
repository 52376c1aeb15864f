"""Training batches for the detector, made as DeepLabCut's detector dataset and collate make them:
one item per labelled frame with all its boxes (keypoints plus margin), deterministic and
resumable order and augmentation, fixed-size batches with box validity.

Parity with DeepLabCut: docs/parity/detector_training.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from superanimal_jax.constants import BBOX_MARGIN
from superanimal_jax.io.images import read_image
from superanimal_jax.training.data import ItemBatches, bbox_from_keypoints
from superanimal_jax.transforms import detector_augment, detector_input
from superanimal_jax.transforms.detector_augment import DetectorAugmentation


@dataclasses.dataclass(frozen=True)
class DetectorItem:
    """One training image and its boxes ``(n, 4)`` COCO xywh in frame pixels (n may be 0)."""

    image: str
    boxes: np.ndarray


def detector_items(project, frames, *, sizes: dict[int, tuple[int, int]], margin: int = BBOX_MARGIN
                   ) -> list[DetectorItem]:
    """One item per frame of ``frames``: each labelled individual's box from its keypoints plus
    ``margin``, clipped to the frame (DeepLabCut's ``bbox_from_keypoints``); individuals with no
    labelled keypoint have no box."""
    items = []
    for f in frames:
        h, w = sizes[f]
        boxes = []
        for xy in project.keypoints[f]:
            keypoints = np.concatenate([np.nan_to_num(xy), np.where(np.isnan(xy[:, :1]), 0, 2)], axis=1)
            box = bbox_from_keypoints(keypoints, h, w, margin)
            if box[2] > 0 and box[3] > 0:
                boxes.append(box)
        items.append(DetectorItem(str(project.image_path(f)), np.array(boxes, np.float64).reshape(-1, 4)))
    return items


@dataclasses.dataclass(frozen=True)
class DetectorDataConfig:
    """DeepLabCut's detector data settings (``base_detector.yaml``; batch 1 for SuperAnimal)."""

    batch_size: int = 1
    bbox_margin: int = BBOX_MARGIN
    augmentation: DetectorAugmentation = DetectorAugmentation()
    min_size: int = detector_input.MIN_SIZE  # torchvision's transform.
    max_size: int = detector_input.MAX_SIZE
    workers: int = 2
    prefetch: int = 2


class DetectorData(ItemBatches):
    """Deterministic, resumable detector batches of ``items``.

    ``batch(epoch, step)``: ``image (B, Hp, Wp, 3)`` after torchvision's transform (padded to /32),
    ``image_size (B, 2)``, ``boxes (B, G, 4)`` xyxy in resized pixels, ``box_valid (B, G)``,
    ``image_valid (B,)``; ``G`` is the most boxes any item has (at least 1).  Order, flips,
    affines, the collate's size and offsets are pure functions of ``(seed, epoch, position)``.
    With ``process_count > 1`` each process returns its rows of every global batch.
    """

    def __init__(self, items: list[DetectorItem], config: DetectorDataConfig = DetectorDataConfig(), *,
                 seed: int = 42, read_image: Callable[[str], np.ndarray] = read_image,
                 process_index: int = 0, process_count: int = 1):
        if not items:
            raise ValueError('no training images: the training split is empty')
        if config.batch_size < 1 or config.batch_size % process_count:
            raise ValueError(f'batch size {config.batch_size} does not split over {process_count} processes')
        super().__init__(read_image)
        self.items, self.config, self.seed = list(items), config, seed
        self.process_index, self.process_count = process_index, process_count
        self.max_boxes = max(1, max(len(item.boxes) for item in self.items))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.items) / self.config.batch_size)

    @property
    def local_batch_size(self) -> int:
        return self.config.batch_size // self.process_count

    def order(self, epoch: int) -> np.ndarray:
        """The item order of ``epoch``: a permutation drawn from ``(seed, epoch)``."""
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.items))

    def sample(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """One item flipped, warped and normalised (``rng`` None: no augmentation): the float32
        image and its xywh boxes."""
        item = self.items[index]
        aug = self.config.augmentation if rng is not None else DetectorAugmentation.off()
        return detector_augment.augment_frame(aug, rng if rng is not None else np.random.default_rng(0),
                                              self.frame(item.image), item.boxes)

    def batch(self, epoch: int, step: int, *, augment_items: bool = True) -> dict[str, np.ndarray]:
        """Batch ``step`` of ``epoch`` (this process's rows), padded to the batch size."""
        order = self.order(epoch)
        first = step * self.config.batch_size
        positions = range(first, min(first + self.config.batch_size, len(self.items)))
        local = range(first + self.process_index * self.local_batch_size,
                      first + (self.process_index + 1) * self.local_batch_size)
        mine = [p for p in local if p in positions]
        samples = list(self._pool().map(
            lambda p: self.sample(int(order[p]), np.random.default_rng([self.seed, 1, epoch, p])
                                  if augment_items else None), mine))
        size = None
        if augment_items and self.config.augmentation.collate:
            # The batch's size comes from its first image, the same on every process.
            shape = self.frame(self.items[int(order[first])].image).shape[:2]
            size = detector_augment.collate_size(self.config.augmentation,
                                                 np.random.default_rng([self.seed, 2, epoch, step]), shape)
            samples = [detector_augment.resize_and_crop(
                self.config.augmentation, np.random.default_rng([self.seed, 3, epoch, p]), image, boxes, size)
                for p, (image, boxes) in zip(mine, samples)]
        return self.collate(samples, self.local_batch_size)

    def collate(self, samples: list[tuple[np.ndarray, np.ndarray]], size: int) -> dict[str, np.ndarray]:
        """torchvision's transform per item, padded to a common /32 size; ``size`` rows."""
        g = self.max_boxes
        images, sizes = [], np.zeros((size, 2), np.int32)
        boxes = np.zeros((size, g, 4), np.float32)
        valid = np.zeros((size, g), bool)
        for i, (image, xywh) in enumerate(samples):
            keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)  # DeepLabCut's get_target.
            xywh = xywh[keep].astype(np.float32)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            x, sizes[i], scaled = detector_augment.torchvision_transform(
                image, xyxy, self.config.min_size, self.config.max_size)
            images.append(x)
            boxes[i, :len(scaled)], valid[i, :len(scaled)] = scaled, True
        if not images:  # A process whose rows are all padding still sends a batch of the global shape.
            h, w = detector_input.resized_size(*self.frame(self.items[0].image).shape[:2],
                                               self.config.min_size, self.config.max_size)
            images.append(np.zeros((h, w, 3), np.float32))
        hp, wp = detector_input.padded_size(max(x.shape[0] for x in images), max(x.shape[1] for x in images))
        out = np.zeros((size, hp, wp, 3), np.float32)
        for i, x in enumerate(images[:len(samples)]):
            out[i, :x.shape[0], :x.shape[1]] = x
        sizes[len(samples):] = sizes[0] if samples else (hp, wp)
        return {'image': out, 'image_size': sizes, 'boxes': boxes, 'box_valid': valid,
                'image_valid': np.arange(size) < len(samples)}
