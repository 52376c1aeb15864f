"""Run the SuperAnimal-TopViewMouse pose model on images and draw the keypoints.

    python examples/pose_on_images.py --pose superanimal_topviewmouse_hrnet_w32.pt   # real weights
    python examples/pose_on_images.py --model models/topviewmouse IMAGE...           # converted dir
    python examples/pose_on_images.py                                                # demo weights

Without weights it builds deterministic *synthetic* weights (the ones the parity tests use),
which prove the pipeline runs but do not find mice.  Each image is centre-cropped to a square and
resized to 256x256 (the detector-driven crops arrive with the end-to-end pipeline).  Writes
``<out>/<image stem>_pose.png`` and prints the keypoints in image pixels.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

import superanimal_jax
from superanimal_jax import PoseEstimator, synthetic

ROOT = Path(__file__).resolve().parents[1]
OPENFIELD = ROOT.parent / 'shared' / 'data' / 'openfield' / 'labeled-data' / 'm4s1'


def demo_pose() -> PoseEstimator:
    """The test suite's synthetic weights, converted in memory (no torch needed)."""
    state = synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'pose')
    return superanimal_jax.from_state_dicts(pose=state).pose


def square_crop(image: np.ndarray, size: int = 256) -> tuple[np.ndarray, float, tuple[int, int]]:
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = cv2.resize(image[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_LINEAR)
    return crop, side / size, (x0, y0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('images', nargs='*', type=Path)
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--model', type=Path, help='a converted model directory')
    source.add_argument('--pose', type=Path, help='a released PyTorch pose file to convert first')
    parser.add_argument('--out', type=Path, default=Path('out'))
    parser.add_argument('--pcutoff', type=float, default=0.1)
    args = parser.parse_args()

    images = args.images or sorted(OPENFIELD.glob('img00[0-2]0.png'))
    if not images:  # A fresh clone without ../shared: the openfield crops vendored for the tests.
        with np.load(ROOT / 'tests' / 'fixtures' / 'pose_golden.npz') as golden:
            images = {f'{k.split("/")[1]}.png': cv2.cvtColor(golden[k], cv2.COLOR_RGB2BGR)
                      for k in golden.files if k.startswith('crops/')}
    if args.model or args.pose:
        model_dir = args.model
        if args.pose:
            model_dir = superanimal_jax.convert(pose=args.pose, out=Path(tempfile.mkdtemp()) / 'model')
        pose = superanimal_jax.load(model_dir).pose
    else:
        print('No weights given: using synthetic demo weights (they do not find mice).')
        pose = demo_pose()

    args.out.mkdir(parents=True, exist_ok=True)
    for path in images:
        image = images[path].copy() if isinstance(images, dict) else cv2.imread(str(path), cv2.IMREAD_COLOR)
        path = Path(path)
        if image is None:
            raise SystemExit(f'{path}: not a readable image')
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        crop, scale, (x0, y0) = square_crop(rgb)
        keypoints = np.asarray(pose.keypoints(superanimal_jax.normalize_crops(crop[None])))[0]
        xy = keypoints[:, :2] * scale + (x0, y0)
        for (x, y), score in zip(xy, keypoints[:, 2]):
            if score >= args.pcutoff:
                cv2.circle(image, (int(round(x)), int(round(y))), 4, (0, 0, 255), -1)
        cv2.imwrite(str(args.out / f'{path.stem}_pose.png'), image)
        print(f'{path.name}: ' + ', '.join(f'{n} ({x:.0f}, {y:.0f}, {s:.2f})' for n, (x, y), s in
                                          zip(pose.keypoint_names, xy, keypoints[:, 2])))
    print(f'wrote {len(images)} images to {args.out}/')


if __name__ == '__main__':
    main()
