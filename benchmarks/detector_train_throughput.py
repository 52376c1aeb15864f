"""Detector train steps/s: superanimal-jax vs DeepLabCut 3.0.2's detector step, same batch, same run.

    .venv/bin/python benchmarks/detector_train_throughput.py                  # batch 1 and 2, CPU
    .venv/bin/python benchmarks/detector_train_throughput.py --batch-sizes 1 8 --repeats 5   # GPU

The batch: openfield frames (640x480) with their labelled boxes (keypoints plus 25 px), normalised
as DeepLabCut's dataset does, augmentation and the resize collate off, so both sides train on
the same 800x1066 images (torchvision's transform; 800x1088 padded).  Both start from the test
suite's synthetic weights with AdamW (lr 1e-5, weight decay 0.01), BatchNorm statistics frozen.

DeepLabCut runs in a worker process in ``.ref/`` (``_detector_train_worker.py``; its torch uses
every core).  This process times ``--steps`` of ours, then asks the worker for as many of
theirs, ``--repeats`` times alternating; medians.  Ours: the jitted step on the batch as our
data pipeline hands it over (torchvision's transform already applied on the host, which runs
in background threads during training: its time per batch is reported apart); our first step
(trace + compile) is reported apart.  Theirs: the body of ``DetectorTrainingRunner.step``,
whose transform runs inside the model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np

from superanimal_jax.checkpoints import synthetic
from superanimal_jax.checkpoints.convert import convert_detector_state
from superanimal_jax.models.detector import DetectorNetwork
from superanimal_jax.training.detector_data import DetectorData, DetectorDataConfig, detector_items
from superanimal_jax.training.detector_loop import DetectorTrainConfig
from superanimal_jax.training.detector_step import make_detector_train_step
from superanimal_jax.training.optim import make_optimizer
from superanimal_jax.training.project import read_project
from superanimal_jax.training.step import init_state
from superanimal_jax.transforms.detector_augment import DetectorAugmentation

from _common import ReferenceWorker, side_by_side, timed, write_report

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT.parent / 'shared' / 'data' / 'openfield'


class Worker(ReferenceWorker):
    """DeepLabCut's detector step in ``.ref/``, answering one timed run of N steps per request."""

    def __init__(self, batch: Path):
        super().__init__('.ref', '_detector_train_worker.py', batch)

    def run(self, steps: int) -> float:
        return self.ask(str(steps))['run_s']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--steps', type=int, default=2, help='steps per timed call')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--no-deeplabcut', action='store_true')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--tag', default='')
    args = parser.parse_args()

    project = read_project(PROJECT)
    frames = list(range(len(project.images)))
    items = detector_items(project, frames, sizes=dict.fromkeys(frames, (480, 640)))
    variables = convert_detector_state(synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'detector'))[0]
    results = []
    for size in args.batch_sizes:
        data = DetectorData(items, DetectorDataConfig(batch_size=size,
                                                      augmentation=DetectorAugmentation.off()))
        order = data.order(0)[:size]
        samples = [data.sample(int(i), None) for i in order]
        host_s = timed(lambda: data.collate(samples, size))
        batch = data.collate(samples, size)
        config = DetectorTrainConfig(batch_size=size)
        optimizer = make_optimizer(config, variables['params'], 100)
        step = make_detector_train_step(DetectorNetwork(), optimizer)
        state = init_state(jax.tree_util.tree_map(np.asarray, variables['params']), optimizer, 0)
        stats = variables['batch_stats']
        holder = {'state': state}

        def ours():
            for _ in range(args.steps):
                holder['state'], metrics = step(holder['state'], stats, batch)
            jax.block_until_ready(metrics)

        def first():
            holder['state'], metrics = step(holder['state'], stats, batch)
            jax.block_until_ready(metrics)

        compile_s = timed(first)
        worker = theirs = None
        if not args.no_deeplabcut:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / 'batch.npz'
                boxes = np.zeros((size, data.max_boxes, 4))
                for row, i in enumerate(order):
                    boxes[row, :len(items[i].boxes)] = items[i].boxes
                np.savez(path, images=np.stack([s[0] for s in samples]), boxes=boxes)
                worker = Worker(path)
                worker.run(1)  # Warm-up, as ours had its first step.

                def theirs():
                    worker.run(args.steps)
        try:
            row = {'batch': size, 'padded_input': list(batch['image'].shape[1:3]), 'compile_s': compile_s,
                   'host_transform_s_per_batch': host_s,
                   **side_by_side(ours, theirs, args.repeats, size * args.steps, 'images')}
        finally:
            if worker is not None:
                worker.close()
        row['ours_steps_per_s'] = row['ours_images_per_s'] / size
        if 'ratio' in row:
            row['deeplabcut_steps_per_s'] = row['deeplabcut_images_per_s'] / size
            row['deeplabcut_setup_s'] = worker.setup_s
        results.append(row)
        text = f"batch {size}: ours {row['ours_steps_per_s']:.3f} steps/s"
        if 'ratio' in row:
            text += f", DeepLabCut {row['deeplabcut_steps_per_s']:.3f} steps/s, ratio {row['ratio']:.2f}"
        print(f'{text} (compile {compile_s:.0f} s, host transform {host_s:.2f} s/batch)', flush=True)
        data.close()
    write_report('detector_train_throughput', results, args.out, args.tag)


if __name__ == '__main__':
    main()
