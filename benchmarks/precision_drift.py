"""Keypoint drift of the bfloat16 compute policy against float32, on real openfield crops.

    .venv/bin/python benchmarks/precision_drift.py                  # every labelled openfield frame
    .venv/bin/python benchmarks/precision_drift.py --limit 16
    .venv/bin/python benchmarks/precision_drift.py --model models/topviewmouse   # the released weights

Crops: each labelled individual of ``../shared/data/openfield`` boxed from its labels (margin 25)
and cropped to 256x256 as at inference.  The HRNet-w32 pose model runs on them at both compute
dtypes with the same float32 weights: by default the test suite's synthetic SuperAnimal weights
(the released ones cannot be downloaded here, so the default figures show what bfloat16 rounding
does to a random-feature network, which amplifies perturbations layer after layer, not to the
released model), or ``--model DIR``'s; the drift is the distance in frame pixels
between the two keypoints, over all crops and keypoints, with the heatmaps' relative error and
the score differences; and, for reading those, the same figures for the float32 network on
inputs rounded to bfloat16 (the network's own sensitivity to a perturbation of that size).
Writes ``benchmarks/results/precision_drift_<backend>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superanimal_jax.checkpoints import synthetic  # noqa: E402
from superanimal_jax.checkpoints.convert import convert_pose_state  # noqa: E402
from superanimal_jax.inference.pose import PoseEstimator  # noqa: E402
from superanimal_jax.io.images import read_image  # noqa: E402
from superanimal_jax.models.pose import POSE_VARIANTS, decode_heatmaps  # noqa: E402
from superanimal_jax.training.data import bbox_from_keypoints  # noqa: E402
from superanimal_jax.training.project import read_project  # noqa: E402
from superanimal_jax.transforms import crops as crops_lib  # noqa: E402
from superanimal_jax.transforms.normalize import normalize_crops  # noqa: E402

from _common import write_report  # noqa: E402

PROJECT = ROOT.parent / 'shared' / 'data' / 'openfield'


def openfield_crops(limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops of every labelled individual, and their scales (frame px per crop px)."""
    project = read_project(PROJECT, drop_unlabeled=True)
    crops, scales = [], []
    for f in range(len(project.images)):
        image = read_image(project.image_path(f))
        h, w = image.shape[:2]
        for i in range(len(project.individuals)):
            xy = project.keypoints[f, i]
            keypoints = np.concatenate([np.nan_to_num(xy), (~np.isnan(xy).any(1))[:, None] * 2.0], 1)
            if not (keypoints[:, 2] > 0).any():
                continue
            box = bbox_from_keypoints(keypoints, h, w, 25)
            window = crops_lib.crop_windows(box[None].astype(np.float32), (256, 256))
            crops.append(crops_lib.crop(image, window[0], (256, 256)))
            scales.append(crops_lib.scales_and_offsets(window, (256, 256))[0][0])
        if limit and len(crops) >= limit:
            break
    return np.stack(crops)[:limit], np.stack(scales)[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--limit', type=int, help='at most this many crops')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--model', type=Path, help='a converted model directory (default: synthetic weights)')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()

    if args.model is not None:
        from superanimal_jax.inference.model import load

        pose = load(args.model).pose
        config, variables, weights = pose.config, pose.variables, str(args.model)
    else:
        config = POSE_VARIANTS['hrnet_w32']
        state = synthetic.fixture_state(ROOT / 'tests' / 'fixtures', 'pose')
        variables, _ = convert_pose_state(state)
        weights = 'synthetic (tests/fixtures/pose_manifest.json)'

    crops, scales = openfield_crops(args.limit)
    n = len(crops)
    found = {}
    # 'input_rounding': the float32 network on inputs rounded to bfloat16, i.e. the network's own
    # sensitivity to a perturbation of bfloat16's size, for reading the bfloat16 figures.
    for name, dtype, rounded in (('float32', 'float32', False), ('bfloat16', 'bfloat16', False),
                                 ('input_rounding', 'float32', True)):
        pose = PoseEstimator(config, variables, dtype=dtype)
        keypoints, heatmaps = [], []
        for start in range(0, n, args.batch_size):
            x = normalize_crops(crops[start:start + args.batch_size])
            if rounded:
                x = x.astype(jnp.bfloat16).astype(jnp.float32)
            h = pose.heatmaps(x)
            keypoints.append(np.asarray(decode_heatmaps(h, config.stride)))
            heatmaps.append(np.asarray(h.astype(np.float32)))
        found[name] = np.concatenate(keypoints), np.concatenate(heatmaps)
        print(f'{name}: {n} crops', flush=True)
    k32, h32 = found['float32']
    row = {'crops': n, 'keypoints': int(k32[..., 0].size), 'weights': weights}
    for name in ('bfloat16', 'input_rounding'):
        k, h = found[name]
        drift = np.linalg.norm((k[..., :2] - k32[..., :2]) * scales[:, None, :], axis=-1).ravel()
        rel = np.abs(h - h32).max(axis=(1, 2, 3)) / np.abs(h32).max(axis=(1, 2, 3))
        row[name] = {'drift_px_median': float(np.median(drift)),
                     'drift_px_p99': float(np.percentile(drift, 99)), 'drift_px_max': float(drift.max()),
                     'identical_fraction': float(np.mean(drift == 0)),
                     'heatmap_rel_err_median': float(np.median(rel)), 'heatmap_rel_err_max': float(rel.max()),
                     'score_abs_diff_max': float(np.abs(k[..., 2] - k32[..., 2]).max())}
    for name in ('bfloat16', 'input_rounding'):
        print(name + ': ' + ', '.join(f'{k} {v:.4g}' for k, v in row[name].items()))
    write_report('precision_drift', [row], args.out, '' if args.model is None else 'model')


if __name__ == '__main__':
    main()
