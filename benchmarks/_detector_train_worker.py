"""The DeepLabCut side of ``detector_train_throughput.py``, run in ``.ref/`` (from tests/reference/):

    python _detector_train_worker.py BATCH.npz

Builds DeepLabCut's SuperAnimal detector (torchvision ``fasterrcnn_resnet50_fpn_v2``, 2 classes,
``freeze_bn_stats``) with the test suite's synthetic weights and ``torch.optim.AdamW(lr 1e-5,
weight decay 0.01)``, prints ``{"setup_s": ...}``, then for each line of stdin (a number of steps)
runs that many of DeepLabCut's detector train steps on the batch in BATCH.npz (``images``: its
normalised NHWC frames, ``boxes``: xywh, padded with zeros, which its ``get_target`` drops) and
prints ``{"run_s": ...}``.  A step is the body of ``DetectorTrainingRunner.step(batch, 'train')``:
``model.train()``, ``zero_grad``, ``get_target``, forward (torchvision's transform, backbone, RPN
and RoI heads in training mode), the four losses summed, ``backward``, ``optimizer.step``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests' / 'reference'))
from make_detector_fixtures import build_detector  # noqa: E402

from _reference import ROOT, synthetic  # noqa: E402


def main() -> None:
    import torch

    torch.set_num_threads(os.cpu_count())
    start = time.perf_counter()
    with np.load(sys.argv[1]) as batch:
        images, boxes = batch['images'], batch['boxes']
    detector = build_detector()
    state = synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'detector')
    detector.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    detector.freeze_bn_stats = True
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-5, weight_decay=0.01)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    annotations = {'boxes': torch.from_numpy(boxes).float(),
                   'area': torch.from_numpy(boxes[..., 2] * boxes[..., 3]),
                   'labels': torch.ones(boxes.shape[:2]), 'is_crowd': torch.zeros(boxes.shape[:2])}

    def step():
        optimizer.zero_grad()
        detector.train()
        target = detector.get_target({k: v.clone() for k, v in annotations.items()})
        losses, _ = detector(x, target)
        sum(losses.values()).backward()
        optimizer.step()

    print(json.dumps({'setup_s': time.perf_counter() - start}), flush=True)
    for line in sys.stdin:
        steps = int(line)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(json.dumps({'run_s': time.perf_counter() - start}), flush=True)


if __name__ == '__main__':
    main()
