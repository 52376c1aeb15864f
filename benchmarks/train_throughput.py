"""Does the host keep up with the device in fine-tuning?  Batches/s of the data pipeline vs steps/s.

    .venv/bin/python benchmarks/train_throughput.py                          # batch 1 and 8
    .venv/bin/python benchmarks/train_throughput.py --batch-sizes 8 32 --workers 1 2 4

Host side: :class:`superanimal_jax.training.data.TrainData` on the openfield project (640x480
frames, DeepLabCut's SuperAnimal augmentation on: rotation and noise each with p = 0.5, full-frame
normalisation, crop, targets), items/s with 1..N worker threads, frames already cached (as after
the first epoch).  Device side: the jitted hrnet_w32 train step (4 keypoints, conversion-table
mode) on this machine's default backend, steps/s after compilation (compile time reported
apart).  The ratio host items/s over device items/s must stay above 1 for the device never to
wait; the iterator prefetches ``prefetch`` batches on a background thread, so the two overlap.
About 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax import TOPVIEWMOUSE_KEYPOINTS
from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork
from superanimal_jax.training.config import TrainConfig
from superanimal_jax.training.data import DataConfig, TrainData
from superanimal_jax.training.modes import make_items, make_task
from superanimal_jax.training.optim import make_optimizer
from superanimal_jax.training.project import read_project
from superanimal_jax.training.step import init_state, make_train_step

from _common import write_report

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT.parent / 'shared' / 'data' / 'openfield'


def host_rate(project, batch_size: int, workers: int, batches: int) -> float:
    task = make_task('convert', project, TOPVIEWMOUSE_KEYPOINTS)
    items = make_items(project, range(len(project.images)), task,
                       sizes={f: (480, 640) for f in range(len(project.images))})
    data = TrainData(items, DataConfig(batch_size=batch_size, workers=workers), seed=0)
    for f in {i.image for i in items}:
        data.frame(f)  # Cached, as from the second epoch on.
    data.batch(0, 0)
    start = time.perf_counter()
    for s in range(batches):
        data.batch(1, s % data.steps_per_epoch)
    return batches * batch_size / (time.perf_counter() - start)


def device_rate(batch_size: int, steps: int) -> tuple[float, float]:
    config = dataclasses.replace(POSE_VARIANTS['hrnet_w32'], num_keypoints=4)
    network = PoseNetwork(config)
    variables = jax.jit(network.init)(jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
    optimizer = make_optimizer(TrainConfig(), variables['params'], 100)
    state = init_state(variables['params'], optimizer, 0)
    rng = np.random.default_rng(0)
    batch = {'image': rng.standard_normal((batch_size, 256, 256, 3), np.float32),
             'targets': rng.random((batch_size, 64, 64, 4), np.float32),
             'weights': np.ones((batch_size, 64, 64, 4), np.float32)}
    step = make_train_step(network, optimizer)
    start = time.perf_counter()
    state, metrics = step(state, variables['batch_stats'], batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, variables['batch_stats'], batch)
    jax.block_until_ready(metrics)
    return steps * batch_size / (time.perf_counter() - start), compile_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()
    project = read_project(PROJECT)
    results = []
    for batch_size in args.batch_sizes:
        device, compile_s = device_rate(batch_size, args.steps)
        row = {'batch_size': batch_size, 'device_items_per_s': device, 'compile_s': compile_s}
        for workers in args.workers:
            host = host_rate(project, batch_size, workers, batches=max(2, 16 // batch_size))
            row[f'host_items_per_s_{workers}_workers'] = host
            row[f'host_over_device_{workers}_workers'] = host / device
        print(row)
        results.append(row)
    write_report('train_throughput', results, args.out)


if __name__ == '__main__':
    main()
