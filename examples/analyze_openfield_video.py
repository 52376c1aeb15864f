"""Analyse the openfield video end to end: detector, top-down crops, pose, result files, labeled video.

    python examples/analyze_openfield_video.py                                   # demo weights
    python examples/analyze_openfield_video.py --model models/topviewmouse       # converted weights
    python examples/analyze_openfield_video.py --weights POSE.pt DETECTOR.pt --stop 2330

Without ``--model``/``--weights`` it uses deterministic *synthetic* weights (the ones the parity
tests use): they exercise every stage but do not find mice, so the boxes and keypoints drawn are
meaningless.  By default only the first 16 frames are analysed (about a minute on a 2-core CPU);
``--stop 2330`` runs the whole video.  Writes the h5, json, csv and labeled video next to
``--out`` (default ``examples/output``) and prints where.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import superanimal_jax
from superanimal_jax import analyze_video, synthetic

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / 'shared' / 'data' / 'openfield' / 'videos' / 'm3v1mp4.mp4'
FIXTURES = ROOT / 'tests' / 'fixtures'


def demo_model() -> superanimal_jax.SuperAnimalModel:
    """The test suite's synthetic pose and detector weights, converted in memory (no torch)."""
    return superanimal_jax.from_state_dicts(pose=synthetic.fixture_state(FIXTURES, 'pose'),
                                            detector=synthetic.fixture_state(FIXTURES, 'detector'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('video', nargs='?', type=Path, default=VIDEO)
    parser.add_argument('--model', type=Path, help='converted model directory')
    parser.add_argument('--weights', nargs=2, metavar=('POSE', 'DETECTOR'), help='released PyTorch files')
    parser.add_argument('--out', type=Path, default=ROOT / 'examples' / 'output')
    parser.add_argument('--start', type=int, default=0)
    parser.add_argument('--stop', type=int, default=16)
    parser.add_argument('--batch-size', type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = superanimal_jax.load(args.model)
    elif args.weights:
        model = superanimal_jax.load(
            superanimal_jax.hub.ensure_model(pose=args.weights[0], detector=args.weights[1]))
    else:
        print('no --model or --weights: using synthetic demo weights (they do not find mice)')
        model = demo_model()
    paths = analyze_video(args.video, model, args.out, start=args.start, stop=args.stop,
                          batch_size=args.batch_size, labeled_video=True, csv=True, plot_trajectories=True)
    for kind, path in paths.items():
        print(f'{kind}: {path}')


if __name__ == '__main__':
    main()
