"""Golden top-down crops from DeepLabCut 3.0.2's own ``top_down_crop`` (run inside .ref/).

    .ref/bin/python tests/reference/make_crop_fixtures.py --out tests/fixtures

For a set of float32 COCO boxes on a real openfield frame (random boxes, boxes on the frame's
edges and beyond them, slivers, and boxes whose corners fall exactly on .5 so that rounding half
to even matters) records what DeepLabCut returns: the offsets, the scales and a sha256 of each
256x256 uint8 crop, plus the crops of the first few boxes in full (``crops_golden.npz``), and
the versions it ran with (``versions``, JSON).  Takes a few seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json

import cv2
import numpy as np

from _reference import DATA

FRAME = 'img0045.png'
FULL = 6  # Crops kept in full.


def boxes(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.uniform(-40, width, 40)
    y = rng.uniform(-40, height, 40)
    w = rng.uniform(1, 300, 40)
    h = rng.uniform(1, 300, 40)
    random = np.stack([x, y, w, h], -1)
    edges = [[0, 0, 50, 80], [width - 30, height - 60, 30, 60], [-20.5, 10, 41, 40],
             [width - 10, 100, 40, 20], [100, height - 0.78, 16, 0.78], [200, 5, 0.78, 16],
             [10.5, 20.5, 3, 5], [11.5, 21.5, 3, 5], [12.25, 7.75, 5, 3], [0, 0, width, height],
             [-100, -100, width + 200, height + 200], [300.5, 200.5, 33, 33], [301.5, 201.5, 34, 34]]
    return np.concatenate([random, np.array(edges)]).astype(np.float32)


def main() -> None:
    import deeplabcut
    from deeplabcut.pose_estimation_pytorch.data.image import top_down_crop

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    frame = cv2.cvtColor(cv2.imread(str(DATA / 'labeled-data' / 'm4s1' / FRAME)), cv2.COLOR_BGR2RGB)
    b = boxes(*frame.shape[:2])
    offsets, scales, digests, full = [], [], [], []
    for i, box in enumerate(b):
        crop, offset, scale = top_down_crop(frame, box.copy(), (256, 256), margin=0, crop_with_context=True)
        offsets.append(offset)
        scales.append(scale)
        digests.append(hashlib.sha256(np.ascontiguousarray(crop).tobytes()).hexdigest())
        if i < FULL:
            full.append(crop)
    np.savez_compressed(f'{args.out}/crops_golden.npz', frame=frame, boxes=b,
                        offsets=np.array(offsets, np.int64), scales=np.array(scales, np.float64),
                        sha256=np.array(digests), crops=np.stack(full),
                        versions=np.str_(json.dumps({'deeplabcut': deeplabcut.__version__,
                                                     'opencv': cv2.__version__,
                                                     'numpy': np.__version__})))


if __name__ == '__main__':
    main()
