"""Start-up of ``superanimal-jax analyze`` with a cold and a warm compilation cache: seconds from
process start to the first batch of frames analysed and written.

    .venv/bin/python benchmarks/startup.py                 # 2 rounds, 8 frames, 3 individuals
    .venv/bin/python benchmarks/startup.py --rounds 3 --max-individuals 1

Each round, in fresh processes started the way a user starts them: ``analyze CLIP --stop B``
(one batch of B frames) with ``--compilation-cache`` on a new, empty folder (cold: everything
compiles and is kept), the same command again (warm: the programs are read back), and once with
``--compilation-cache off``.  The model is the synthetic weights, converted beforehand (not timed).
Writes ``benchmarks/results/startup_<backend>.json``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import superanimal_jax  # noqa: E402
from superanimal_jax.checkpoints import synthetic  # noqa: E402

from _common import write_clip, write_report  # noqa: E402

VIDEO = ROOT.parent / 'shared' / 'data' / 'openfield' / 'videos' / 'm3v1mp4.mp4'
FIXTURES = ROOT / 'tests' / 'fixtures'


def run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f'{" ".join(command)} failed:\n{done.stderr[-2000:]}')
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--max-individuals', type=int, default=3)
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()
    cli = str(Path(sys.executable).with_name('superanimal-jax'))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state = lambda name: synthetic.fixture_state(FIXTURES, name)  # noqa: E731
        pose = synthetic.write_pose_checkpoints(state('pose'), tmp)['dlc3']
        detector = synthetic.write_detector_checkpoints(state('detector'), tmp)['dlc3']
        model = superanimal_jax.convert(pose=pose, detector=detector, out=tmp / 'model')
        video = write_clip(VIDEO, tmp / 'clip.avi', args.batch_size)
        times = {'cold': [], 'warm': [], 'off': []}
        for i in range(args.rounds):
            cache = tmp / f'cache{i}'
            command = [cli, 'analyze', str(video), '--model', str(model), '--out', str(tmp / f'out{i}'),
                       '--stop', str(args.batch_size), '--batch-size', str(args.batch_size),
                       '--max-individuals', str(args.max_individuals)]
            times['cold'].append(run(command + ['--compilation-cache', str(cache)]))
            times['warm'].append(run(command + ['--compilation-cache', str(cache)]))
            times['off'].append(run(command + ['--compilation-cache', 'off']))
            size = sum(p.stat().st_size for p in cache.rglob('*') if p.is_file())
            print(f"round {i}: cold {times['cold'][-1]:.1f} s, warm {times['warm'][-1]:.1f} s, "
                  f"off {times['off'][-1]:.1f} s; cache {size / 2**20:.0f} MiB", flush=True)
    row = {f'{k}_s': statistics.median(v) for k, v in times.items()}
    row.update({f'{k}_times_s': v for k, v in times.items()}, cache_mib=size / 2**20,
               batch_size=args.batch_size, max_individuals=args.max_individuals,
               warm_speedup=row['cold_s'] / row['warm_s'])
    print(f"median: cold {row['cold_s']:.1f} s, warm {row['warm_s']:.1f} s ({row['warm_speedup']:.1f}x), "
          f"off {row['off_s']:.1f} s")
    write_report('startup', [row], args.out)


if __name__ == '__main__':
    main()
