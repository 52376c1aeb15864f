"""XLA:CPU options for our two networks: crops/s and frames/s under each, same process, alternating,
with the parity each keeps against XLA's defaults.  This is how ``compilation.CPU_OPTIONS`` was chosen.

    .venv/bin/python benchmarks/cpu_options.py                       # pose batch 16, detector batch 2
    .venv/bin/python benchmarks/cpu_options.py --pose-batch 8 --repeats 5 --skip-detector

Variants (``compiler_options`` of ``jax.jit``, so one process measures them all):

* ``xla-default``: jaxlib's defaults (0.10: each convolution a YNNPACK library call, BatchNorm and
  ReLU a separate element-wise pass);
* ``eigen``: YNNPACK off, XLA's older Eigen convolutions;
* ``ynn-eltwise``: YNNPACK convolutions with the element-wise work after them fused into the call;
* ``ynn-eltwise-reduce``: the same plus reductions.

For the pose model, ``bn-as-bias`` also measures what folding BatchNorm into the convolution
weights at load time could gain at most: the network with every BatchNorm replaced by a bias add
(random weights; timing only), under ``ynn-eltwise``.

Parity against ``xla-default`` on the synthetic fixture weights: the heatmaps' largest difference
relative to their largest magnitude and whether the decoded keypoints are identical (pose, 256x256
openfield-like crops); the largest box and score differences (detector, two openfield frames).
Writes ``benchmarks/results/cpu_options_<backend>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from superanimal_jax.checkpoints import synthetic  # noqa: E402
from superanimal_jax.checkpoints.convert import convert_detector_state, convert_pose_state  # noqa: E402
from superanimal_jax.inference.detector import Detector  # noqa: E402
from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork, decode_heatmaps  # noqa: E402
from superanimal_jax.nn import hrnet, layers, resnet  # noqa: E402
from superanimal_jax.transforms.normalize import normalize_crops  # noqa: E402

import _common  # noqa: E402
from _common import write_report  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'
YNN = 'xla_cpu_experimental_ynn_fusion_type'
VARIANTS = {
    'xla-default': None,
    'eigen': {YNN: ''},
    'ynn-eltwise': {YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_ELTWISE'},
    'ynn-eltwise-reduce': {YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_ELTWISE,'
                                'LIBRARY_FUSION_TYPE_REDUCE'},
}


class BiasOnly(nn.Module):
    """What a BatchNorm folded into its convolution leaves behind: a per-channel bias."""

    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        return x + self.param('bias', nn.initializers.zeros, (x.shape[-1],)).astype(x.dtype)


@contextlib.contextmanager
def batch_norm_as_bias():
    """Within: every pose network built or traced has a bias add where its BatchNorms were."""
    saved = layers.batch_norm, hrnet.batch_norm, resnet.batch_norm
    replacement = lambda *, name, dtype=jnp.float32: BiasOnly(dtype=dtype, name=name)  # noqa: E731
    layers.batch_norm = hrnet.batch_norm = resnet.batch_norm = replacement
    try:
        yield
    finally:
        layers.batch_norm, hrnet.batch_norm, resnet.batch_norm = saved


def timed(fn) -> float:
    """Seconds until ``fn()``'s results are ready."""
    return _common.timed(lambda: jax.block_until_ready(fn()))


def alternate(calls: dict, repeats: int) -> dict:
    """Median seconds of each call, the calls taken in turn ``repeats`` times (after a warm-up)."""
    blocking = {name: lambda call=call: jax.block_until_ready(call()) for name, call in calls.items()}
    row = _common.in_turn(blocking, repeats, 1, 'call')
    return {name: {'median_s': 1 / row[f'{name}_call_per_s'], 'times_s': row[f'{name}_times_s']}
            for name in calls}


def pose_rows(batch: int, repeats: int) -> list[dict]:
    network = PoseNetwork(POSE_VARIANTS['hrnet_w32'])
    variables = convert_pose_state(synthetic.fixture_state(FIXTURES, 'pose'))[0]
    with np.load(FIXTURES / 'detector_golden_pipeline.npz') as golden:
        frames = golden['frames']  # Two 480x640 openfield frames: 256x256 windows across them.
    corners = [(16 * (i // 2) % 224, 24 * i % 384) for i in range(batch)]
    crops = np.stack([frames[i % 2, y:y + 256, x:x + 256] for i, (y, x) in enumerate(corners)])
    x = normalize_crops(crops)
    heatmaps = lambda v, x: network.apply(v, x)['heatmaps']  # noqa: E731
    calls, outputs, compile_s = {}, {}, {}
    for name, options in VARIANTS.items():
        fn = jax.jit(heatmaps, compiler_options=options)
        compile_s[name] = timed(lambda: fn(variables, x))
        outputs[name] = np.asarray(fn(variables, x))
        calls[name] = lambda fn=fn: fn(variables, x)
    with batch_norm_as_bias():  # Random weights, traced and compiled inside: timing only.
        bias_variables = jax.jit(network.init)(jax.random.key(0), x[:1])
        bias_fn = jax.jit(heatmaps, compiler_options=VARIANTS['ynn-eltwise'])
        compile_s['bn-as-bias'] = timed(lambda: bias_fn(bias_variables, x))
    calls['bn-as-bias'] = lambda: bias_fn(bias_variables, x)
    measured = alternate(calls, repeats)
    base = outputs['xla-default']
    base_keypoints = np.asarray(decode_heatmaps(jnp.asarray(base), 4))
    rows = []
    for name, m in measured.items():
        row = {'model': 'pose', 'variant': name, 'batch': batch, 'crops_per_s': batch / m['median_s'],
               'compile_s': compile_s[name], **m}
        if name in outputs:
            keypoints = np.asarray(decode_heatmaps(jnp.asarray(outputs[name]), 4))
            row['heatmap_max_rel_diff'] = float(np.abs(outputs[name] - base).max() / np.abs(base).max())
            row['keypoint_xy_identical'] = bool(np.array_equal(keypoints[..., :2], base_keypoints[..., :2]))
            row['score_max_diff'] = float(np.abs(keypoints[..., 2] - base_keypoints[..., 2]).max())
        rows.append(row)
    return rows


def detector_rows(batch: int, repeats: int) -> list[dict]:
    variables = convert_detector_state(synthetic.fixture_state(FIXTURES, 'detector'))[0]
    with np.load(FIXTURES / 'detector_golden_pipeline.npz') as golden:
        frames = np.concatenate([golden['frames']] * (batch // 2 + 1))[:batch]
    detector = Detector(variables)
    calls, outputs, compile_s = {}, {}, {}
    for name, options in VARIANTS.items():
        fn = jax.jit(detector._detect_batch, static_argnames=('max_detections', 'with_taps'),
                     compiler_options=options)
        call = lambda fn=fn: fn(detector.variables, frames, max_detections=100, with_taps=False)  # noqa: E731
        compile_s[name] = timed(call)
        outputs[name] = jax.device_get(call())
        calls[name] = call
    measured = alternate(calls, repeats)
    base = outputs['xla-default']
    rows = []
    for name, m in measured.items():
        out = outputs[name]
        rows.append({'model': 'detector', 'variant': name, 'batch': batch,
                     'frames_per_s': batch / m['median_s'], 'compile_s': compile_s[name], **m,
                     'same_valid': bool(np.array_equal(out['valid'], base['valid'])),
                     'box_max_diff_px': float(np.abs(out['boxes'] - base['boxes'])[base['valid']].max()),
                     'score_max_diff': float(np.abs(out['scores'] - base['scores'])[base['valid']].max())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pose-batch', type=int, default=16)
    parser.add_argument('--detector-batch', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--skip-detector', action='store_true')
    parser.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results')
    args = parser.parse_args()
    rows = pose_rows(args.pose_batch, args.repeats)
    if not args.skip_detector:
        rows += detector_rows(args.detector_batch, args.repeats)
    for row in rows:
        speed = (f"{row['crops_per_s']:.2f} crops/s" if 'crops_per_s' in row
                 else f"{row['frames_per_s']:.3f} frames/s")
        parity = {k: row[k] for k in row if k.startswith(('heatmap', 'keypoint', 'score', 'box', 'same'))}
        print(f"{row['model']:8} {row['variant']:19} {speed}  compile {row['compile_s']:.1f} s  {parity}")
    write_report('cpu_options', rows, args.out)


if __name__ == '__main__':
    main()
