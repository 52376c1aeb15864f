"""DLCRNet video frames/s: superanimal-jax ``analyze_video`` vs DeepLabCut's SuperAnimal TF path,
same clip, same weights, same run, alternating; at one scale and at DeepLabCut's default three.

    .venv/bin/python benchmarks/dlcrnet_throughput.py                     # 16 openfield frames
    .venv/bin/python benchmarks/dlcrnet_throughput.py --frames 32 --repeats 3

JAX and DeepLabCut's TensorFlow engine cannot share an environment (TF 2.14 needs numpy < 2), so
DeepLabCut runs in a worker process in ``.ref-tf/`` (``_dlcrnet_tf_worker.py``) that builds its
session once; this process times one call of ours, then asks the worker for one call of theirs,
and so on (both wait for their results; only one runs at a time).  The weights are the golden
ones (synthetic, BatchNorm calibrated on openfield frames: ``tests/fixtures/dlcrnet_*``).

Timed: ours, ``analyze_video`` on the clip (decode, resize, network, peaks, merge, h5 written),
model loaded and compiled beforehand; theirs, ``superanimal_inference._video_inference`` on the
clip (decode, resize, network, peaks, merge; the session built beforehand, no h5).
DeepLabCut's ``video_inference`` runs one frame at a time by default (``--tf-batch-size``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

import superanimal_jax  # noqa: E402
from superanimal_jax.analysis.analyze import analyze_video  # noqa: E402
from superanimal_jax.checkpoints import synthetic  # noqa: E402

from _common import ReferenceWorker, describe, side_by_side, timed, write_clip, write_report  # noqa: E402

VIDEO = ROOT.parent / 'shared' / 'data' / 'openfield' / 'videos' / 'm3v1mp4.mp4'
FIXTURES = ROOT / 'tests' / 'fixtures'


class Worker(ReferenceWorker):
    """DeepLabCut's TF path in ``.ref-tf/``, answering one timed run per request."""

    def __init__(self, video: Path, batch_size: int):
        super().__init__('.ref-tf', '_dlcrnet_tf_worker.py', video, batch_size)

    def run(self, scales: list[int]) -> float:
        return self.ask(json.dumps(scales))['run_s']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=8, help='our frames per batch')
    parser.add_argument('--tf-batch-size', type=int, default=1,
                        help="DeepLabCut's frames per batch (video_inference's default: 1)")
    parser.add_argument('--no-deeplabcut', action='store_true', help='ours only (e.g. on a GPU machine)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--tag', default='')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = write_clip(VIDEO, tmp / 'clip.avi', args.frames)
        start = time.perf_counter()
        model = superanimal_jax.from_state_dicts(dlcrnet=synthetic.tf_fixture_state(FIXTURES))
        load_s = time.perf_counter() - start
        worker = None if args.no_deeplabcut else Worker(video, args.tf_batch_size)
        rows = []
        try:
            for scales in ([480], [430, 480, 530]):
                out = tmp / f'ours{len(scales)}'
                out.mkdir()
                first_s = timed(lambda: analyze_video(video, model, out, scales=scales,
                                                      batch_size=args.batch_size, progress=False))

                def ours():
                    analyze_video(video, model, out, scales=scales, batch_size=args.batch_size,
                                  progress=False)

                theirs = None
                if worker is not None:
                    worker.run(scales)  # Warm-up, as ours had its first call.

                    def theirs():
                        worker.run(scales)

                row = side_by_side(ours, theirs, args.repeats, args.frames, 'frames')
                row.update({'scales': scales, 'frames': args.frames, 'batch_size': args.batch_size,
                            'deeplabcut_batch_size': args.tf_batch_size, 'first_call_with_compile_s': first_s,
                            'load_s': load_s})
                if worker is not None:
                    row['deeplabcut_session_setup_s'] = worker.setup_s
                    row['tf_onednn'] = os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default (on)')
                print(f'{args.frames} frames at 640x480, scales {scales}: {describe(row, "frames")}')
                rows.append(row)
        finally:
            if worker is not None:
                worker.close()
    write_report('dlcrnet_throughput', rows, args.out, args.tag)


if __name__ == '__main__':
    main()
