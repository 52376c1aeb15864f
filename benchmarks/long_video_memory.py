"""Peak memory and output stability over long videos: does streaming stay flat?

    .venv/bin/python benchmarks/long_video_memory.py                       # 2,000 and 20,000 frames
    .venv/bin/python benchmarks/long_video_memory.py --frames 2000 20000 --batch-sizes 16 64

Each run is a fresh subprocess (so its peak RSS is its own) analysing a synthetic 96x128 video
(``tests/fakes.py``: a moving bright square) with the thresholding stand-in detector and the tiny
HRNet pose variant: the networks are cheap stand-ins so that 20,000 frames take minutes on a CPU,
while the plumbing measured (decode thread and queue, fixed batches, crops, pose chunks, the
streamed h5/json writers) is the real one.  Reports peak RSS per length and batch size, and
whether the h5 files of one length are byte-identical across batch sizes.  About 15 minutes
on 2 cores for the defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = '''
import resource, sys, time
sys.path.insert(0, {tests!r})
import fakes
from superanimal_jax.analysis.analyze import analyze_video
start = time.perf_counter()
paths = analyze_video({video!r}, fakes.tiny_model(), {out!r}, max_individuals=1, batch_size={batch},
                      progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start, paths['h5'])
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--frames', type=int, nargs='+', default=[2000, 20000])
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[16, 64])
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / 'tests'))
    import fakes

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            video = fakes.write_video(Path(tmp) / f'synthetic_{n}.avi', n)
            digests = {}
            for batch in args.batch_sizes:
                out = Path(tmp) / f'{n}_{batch}'
                out.mkdir()
                code = CHILD.format(tests=str(ROOT / 'tests'), video=str(video), out=str(out), batch=batch)
                result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                                        check=True)
                peak_kib, seconds, h5 = result.stdout.split()
                digests[batch] = hashlib.sha256(Path(h5).read_bytes()).hexdigest()
                row = {'frames': n, 'batch_size': batch, 'peak_rss_mib': int(peak_kib) / 1024,
                       'seconds': float(seconds), 'frames_per_s': n / float(seconds),
                       'h5_sha256': digests[batch]}
                rows.append(row)
                print(f"{n} frames, batch {batch}: peak RSS {row['peak_rss_mib']:.0f} MiB, "
                      f"{row['frames_per_s']:.0f} frames/s", flush=True)
            print(f'{n} frames: h5 identical across batch sizes: {len(set(digests.values())) == 1}')
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / 'long_video_memory_cpu.json'
    path.write_text(json.dumps({'benchmark': 'long_video_memory', 'date': time.strftime('%Y-%m-%d'),
                                'results': rows}, indent=2) + '\n')
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
