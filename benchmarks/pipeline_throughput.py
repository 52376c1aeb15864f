"""End-to-end video frames/s: superanimal-jax ``analyze_video`` vs DeepLabCut's
``video_inference_superanimal``, same clip, same synthetic weights, same process, alternating.

Run inside the reference environment with our package added (README, "Benchmarks"):

    .ref/bin/python benchmarks/pipeline_throughput.py                  # 16 frames, 1 and 3 individuals
    .ref/bin/python benchmarks/pipeline_throughput.py --frames 32 --repeats 3 --max-individuals 3

The clip is the first ``--frames`` frames of the openfield video (640x480, MJPG re-encoded).
Both sides get the same ``--max-individuals`` and ``--batch-size`` (DeepLabCut's ``batch_size``
and ``detector_batch_size``; ``--deeplabcut-batch-size 1`` gives it its own defaults instead).
Each timed call analyses the whole clip and writes its h5/json (no labeled video).  DeepLabCut's
call includes building its two models from the snapshot files (it does so on every call); ours
uses a model loaded and compiled beforehand (load and first-call compile, and the compilation
cache in use, are reported apart).  The synthetic detector finds more than 3 boxes in every
frame, so each setting runs pose on exactly ``max_individuals`` crops a frame on both sides.  The
host-side crop cost (OpenCV) of our pipeline is measured on its own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests' / 'reference'))

from make_pipeline_fixtures import VIDEO, state  # noqa: E402

import superanimal_jax  # noqa: E402
from superanimal_jax.analysis.analyze import analyze_video  # noqa: E402
from superanimal_jax.checkpoints import synthetic  # noqa: E402
from superanimal_jax.transforms import crops  # noqa: E402

from _common import describe, side_by_side, timed, write_clip, write_report  # noqa: E402


def main() -> None:
    import deeplabcut
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--max-individuals', type=int, nargs='+', default=[1, 3])
    parser.add_argument('--deeplabcut-batch-size', type=int,
                        help="DeepLabCut's batch_size and detector_batch_size (default: --batch-size; its "
                        'own default is 1)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--tag', default='', help='suffix for the result file')
    args = parser.parse_args()
    torch.set_num_threads(2)
    theirs_batch = args.deeplabcut_batch_size or args.batch_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pose = synthetic.write_pose_checkpoints(state('pose'), tmp)['dlc3']
        detector = synthetic.write_detector_checkpoints(state('detector'), tmp)['dlc3']
        video = write_clip(VIDEO, tmp / 'clip.avi', args.frames)
        start = time.perf_counter()
        model = superanimal_jax.load(superanimal_jax.convert(pose=pose, detector=detector, out=tmp / 'model'))
        load_s = time.perf_counter() - start
        for individuals in args.max_individuals:
            ours_dir, theirs_dir = tmp / f'ours{individuals}', tmp / f'theirs{individuals}'
            ours_dir.mkdir()
            theirs_dir.mkdir()
            options = dict(max_individuals=individuals, batch_size=args.batch_size, progress=False)
            first_s = timed(lambda: analyze_video(video, model, ours_dir, stop=args.batch_size, **options))

            def ours():
                analyze_video(video, model, ours_dir, **options)

            def theirs():
                deeplabcut.video_inference_superanimal(
                    [str(video)], 'superanimal_topviewmouse', model_name='hrnet_w32',
                    detector_name='fasterrcnn_resnet50_fpn_v2', customized_pose_checkpoint=str(pose),
                    customized_detector_checkpoint=str(detector), dest_folder=str(theirs_dir),
                    video_adapt=False, create_labeled_video=False, device='cpu', max_individuals=individuals,
                    batch_size=theirs_batch, detector_batch_size=theirs_batch)

            row = side_by_side(ours, theirs, args.repeats, args.frames, 'frames')
            row.update({'frames': args.frames, 'batch_size': args.batch_size,
                        'deeplabcut_batch_size': theirs_batch, 'max_individuals': individuals,
                        'convert_and_load_s': load_s, 'first_call_with_compile_s': first_s,
                        'compilation_cache': jax.config.jax_compilation_cache_dir
                        if jax.config.jax_enable_compilation_cache else None,
                        'individuals_found': found_per_frame(ours_dir)})
            rows.append(row)
            print(f'{args.frames} frames at 640x480, {individuals} individual(s): {describe(row, "frames")} '
                  f'(first call {first_s:.1f} s)', flush=True)
        capture = cv2.VideoCapture(str(video))
        frame = cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)
        capture.release()
        boxes = crops.xyxy_to_xywh(np.array([[100, 80, 180, 150]] * 10, np.float32))
        windows = crops.crop_windows(boxes)
        host_ms = 1e3 * timed(lambda: [crops.crop(frame, w) for _ in range(10) for w in windows]) / (
            10 * len(windows))
        for row in rows:
            row['host_crop_ms_per_crop'] = host_ms
        print(f'host crops {host_ms:.3f} ms each')
    write_report('pipeline_throughput', rows, args.out, args.tag)


def found_per_frame(folder: Path) -> float:
    """The mean number of individuals with a keypoint in our h5 of ``folder``."""
    import pandas as pd

    table = pd.read_hdf(next(folder.glob('*.h5')))
    likelihood = table.xs('likelihood', level='coords', axis=1)
    return float((likelihood.T.groupby(level='individuals').max().T > -1).sum(axis=1).mean())


if __name__ == '__main__':
    main()
