"""Image files: reading them as DeepLabCut does (OpenCV, BGR -> RGB) and finding them in folders."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (``cv2.imread`` then BGR -> RGB, as DeepLabCut loads images)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: no such image file')
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'{path}: not an image OpenCV can read')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (sorted, not recursive) in folders."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(item)
    return files
