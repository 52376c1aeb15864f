"""End-to-end video frames/s: superanimal-jax ``analyze_video`` vs DeepLabCut's
``video_inference_superanimal``, same clip, same synthetic weights, same process, alternating.

Run inside the reference environment (it has both stacks):

    .ref/bin/python benchmarks/pipeline_throughput.py                  # 16 openfield frames
    .ref/bin/python benchmarks/pipeline_throughput.py --frames 32 --repeats 3 --batch-size 8

The clip is the first ``--frames`` frames of the openfield video (640x480, MJPG re-encoded).
Each timed call analyses the whole clip and writes its h5/json (no labeled video).  DeepLabCut's
call includes building its two models from the snapshot files (it does so on every call); ours
uses a model loaded and compiled beforehand (load and first-call compile are reported apart).
The host-side crop cost (OpenCV) of our pipeline is measured on its own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
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
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pose = synthetic.write_pose_checkpoints(state('pose'), tmp)['dlc3']
        detector = synthetic.write_detector_checkpoints(state('detector'), tmp)['dlc3']
        video = write_clip(VIDEO, tmp / 'clip.avi', args.frames)
        start = time.perf_counter()
        model = superanimal_jax.load(superanimal_jax.convert(pose=pose, detector=detector, out=tmp / 'model'))
        load_s = time.perf_counter() - start
        ours_dir, theirs_dir = tmp / 'ours', tmp / 'theirs'
        ours_dir.mkdir()
        theirs_dir.mkdir()
        first_s = timed(lambda: analyze_video(video, model, ours_dir, batch_size=args.batch_size,
                                              stop=args.batch_size, progress=False))

        def ours():
            analyze_video(video, model, ours_dir, batch_size=args.batch_size, progress=False)

        def theirs():
            deeplabcut.video_inference_superanimal(
                [str(video)], 'superanimal_topviewmouse', model_name='hrnet_w32',
                detector_name='fasterrcnn_resnet50_fpn_v2', customized_pose_checkpoint=str(pose),
                customized_detector_checkpoint=str(detector), dest_folder=str(theirs_dir),
                video_adapt=False, create_labeled_video=False, device='cpu')

        row = side_by_side(ours, theirs, args.repeats, args.frames, 'frames')
        row.update({'frames': args.frames, 'batch_size': args.batch_size, 'convert_and_load_s': load_s,
                    'first_call_with_compile_s': first_s})
        capture = cv2.VideoCapture(str(video))
        frame = cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)
        capture.release()
        boxes = crops.xyxy_to_xywh(np.array([[100, 80, 180, 150]] * 10, np.float32))
        windows = crops.crop_windows(boxes)
        row['host_crop_ms_per_crop'] = 1e3 * timed(lambda: [crops.crop(frame, w) for _ in range(10)
                                                            for w in windows]) / (10 * len(windows))
        print(f'{args.frames} frames at 640x480: {describe(row, "frames")}; '
              f"host crops {row['host_crop_ms_per_crop']:.3f} ms each")
    write_report('pipeline_throughput', [row], args.out)


if __name__ == '__main__':
    main()
