"""Detector frames/s: superanimal-jax vs DeepLabCut 3.0.2's torchvision Faster R-CNN, same run.

Run inside the reference environment (it has both stacks):

    .ref/bin/python benchmarks/detector_throughput.py                    # 640x480 openfield frames
    .ref/bin/python benchmarks/detector_throughput.py --batch-sizes 1 4 --repeats 5
    python benchmarks/detector_throughput.py --batch-sizes 1 4 8 16 32 --dtypes float32 bfloat16   # GPU

Both sides get the test suite's synthetic detector weights (BatchNorm calibrated, a realistic
handful of detections) and the same uint8 RGB frames.  Each timed call is the whole detector
stage from uint8 frames: DeepLabCut's Normalize + its detector forward (torchvision's transform,
backbone, RPN, RoI heads, post-processing) vs our jitted ``Detector.detect`` as the product runs
it, and ``ours_before``: the same function jitted with XLA's defaults, as before issue 17.  Calls go
in turn; medians over ``--repeats``; our first calls (trace + compile) are reported separately.  With
``--dtypes float32 bfloat16`` ours runs at both compute dtypes (DeepLabCut's stays float32); the
batch sizes are split over every local device.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests' / 'reference'))

from superanimal_jax import normalize_crops  # noqa: E402
from superanimal_jax.checkpoints import synthetic  # noqa: E402
from superanimal_jax.checkpoints.convert import convert_detector_state  # noqa: E402
from superanimal_jax.inference.detector import Detector  # noqa: E402

from _common import describe, in_turn, timed, write_report  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'


def synthetic_state() -> dict[str, np.ndarray]:
    return synthetic.fixture_state(FIXTURES, 'detector')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--dtypes', nargs='+', default=['float32'], choices=['float32', 'bfloat16'])
    parser.add_argument('--tag', default='')
    args = parser.parse_args()

    state = synthetic_state()
    variables = convert_detector_state(state)[0]
    try:
        import torch
        from deeplabcut.pose_estimation_pytorch.models.detectors import DETECTORS

        from _reference import superanimal_config
    except ImportError:
        print('DeepLabCut not importable: measuring superanimal-jax only')
        reference = None
    else:
        torch.set_num_threads(os.cpu_count())
        reference = DETECTORS.build(superanimal_config()['detector']['model'])
        reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        reference.eval()
    with np.load(FIXTURES / 'detector_golden_pipeline.npz') as golden:
        openfield = golden['frames']  # Two 480x640 openfield frames.

    results = []
    for dtype, batch in [(d, b) for d in args.dtypes for b in args.batch_sizes]:
        detector = Detector(variables, dtype=dtype)
        frames = np.concatenate([openfield] * (batch // 2 + 1))[:batch]
        before = jax.jit(detector._detect_batch, static_argnames=('max_detections', 'with_taps'))
        ours = lambda: jax.block_until_ready(detector.detect(frames))  # noqa: E731
        ours_before = lambda: jax.block_until_ready(  # noqa: E731
            before(detector.variables, frames, max_detections=100, with_taps=False))
        compile_s = timed(ours)
        compile_before_s = timed(ours_before)
        theirs = None
        if reference is not None:
            def theirs():
                with torch.inference_mode():
                    x = torch.from_numpy(np.asarray(normalize_crops(frames))).permute(0, 3, 1, 2)
                    return reference(x.contiguous())

            theirs()  # Warm-up.
        ours()
        row = {'batch': batch, 'dtype': dtype, 'devices': detector.mesh.size,
               'frame': list(frames.shape[1:3]), 'compile_s': compile_s, 'compile_before_s': compile_before_s,
               **in_turn({'ours': ours, 'ours_before': ours_before, 'deeplabcut': theirs}, args.repeats,
                         batch, 'frames')}
        if theirs is not None:
            row['ratio'] = row['ours_frames_per_s'] / row['deeplabcut_frames_per_s']
            row['ratio_before'] = row['ours_before_frames_per_s'] / row['deeplabcut_frames_per_s']
        results.append(row)
        print(f'{dtype} batch {batch} at {frames.shape[2]}x{frames.shape[1]}: {describe(row, "frames")}; '
              f"before {row['ours_before_frames_per_s']:.3f} frames/s (compile {compile_s:.1f} s, "
              f'before {compile_before_s:.1f} s)', flush=True)
    write_report('detector_throughput', results, args.out, args.tag)


if __name__ == '__main__':
    main()
