"""Golden outputs of DeepLabCut's TensorFlow PoseResnet (the DLCRNet release's network), run in .ref-tf/.

    .ref-tf/bin/python tests/reference/make_dlcrnet_fixtures.py --out tests/fixtures

Builds the network with DeepLabCut 3.0.2's own TF code (``PoseNetFactory``, the SuperAnimal
TopViewMouse settings: resnet_50, stride 8, 27 joints, location refinement, no PAFs), fills its
variables with ``synthetic.synthetic_tf_state`` (deterministic from a seed; numpy only, so the
tests regenerate them), saves them as a TF1 checkpoint (``--checkpoint DIR``) and records the taps
(block1-4, part_pred logits, sigmoid score map, scaled locref) on a real openfield frame and a
random input: ``dlcrnet_golden.npz`` (block taps every 8th channel plus their full max-abs;
heads whole) and ``dlcrnet_manifest.json`` (variable names and shapes, seed, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
from _reference import DATA, ROOT, synthetic  # noqa: E402

sys.path.insert(0, str(ROOT.parent / 'shared' / 'reference' / 'tensorflow'))
SEED = 0
CHANNELS = 8  # Block taps keep every 8th channel.


def config() -> dict:
    """DeepLabCut's TF config for the SuperAnimal-TopViewMouse DLCRNet file (see docs/parity/dlcrnet.md)."""
    from deeplabcut.pose_estimation_tensorflow import default_config

    cfg = dict(default_config.cfg)
    cfg.update(net_type='resnet_50', multi_stage=True, stride=8.0, num_joints=27, num_limbs=351,
               location_refinement=True, locref_stdev=7.2801, mean_pixel=[123.68, 116.779, 103.939],
               partaffinityfield_predict=False, partaffinityfield_graph=[], intermediate_supervision=False,
               batch_size=1, dataset_type='multi-animal-imgaug')
    return cfg


def inputs() -> dict[str, np.ndarray]:
    import cv2

    frame = cv2.cvtColor(cv2.imread(str(DATA / 'labeled-data' / 'm4s1' / 'img0045.png')), cv2.COLOR_BGR2RGB)
    real = frame[100:260, 200:424].astype(np.float32)[None]  # 160x224 around the mouse.
    rng = np.random.default_rng([SEED, 11])
    return {'real': real, 'random': rng.uniform(0, 255, (1, 96, 128, 3)).astype(np.float32)}


def main() -> None:
    # The two shims of ../shared/reference/tensorflow first, in this order.
    # isort: off
    import tf_keras_shim  # noqa: F401
    import dlc_tf_only  # noqa: F401
    import tensorflow as tf
    from deeplabcut.pose_estimation_tensorflow.nnets import PoseNetFactory
    # isort: on

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--checkpoint', type=Path, help='also save the weights as a TF1 checkpoint here')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tf.compat.v1.disable_eager_execution()
    cfg = config()
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3])
        net = PoseNetFactory.create(cfg)
        features, end_points = net.extract_features(image)
        heads = net.prediction_layers(features, end_points)
        taps = {f'block{b}': end_points[f'resnet_v1_50/block{b}'] for b in range(1, 5)}
        taps.update(part_pred=heads['part_pred'], scmap=tf.sigmoid(heads['part_pred']),
                    locref=heads['locref'] * cfg['locref_stdev'])
        variables = tf.compat.v1.global_variables()
        manifest = [(v.op.name, [int(d) for d in v.shape]) for v in variables]
        state = synthetic.synthetic_tf_state(manifest, seed=SEED)
        with tf.compat.v1.Session() as session:
            for v in variables:
                v.load(state[v.op.name], session)
            if args.checkpoint:
                saver = tf.compat.v1.train.Saver(variables)
                saver.save(session, str(args.checkpoint / 'snapshot'), global_step=0)
            golden = {}
            for name, x in inputs().items():
                golden[f'inputs/{name}'] = x
                for tap, value in session.run(taps, {image: x}).items():
                    if tap.startswith('block'):
                        golden[f'{name}/maxabs/{tap}'] = np.float32(np.abs(value).max())
                        value = value[..., ::CHANNELS]
                    golden[f'{name}/{tap}'] = value
    np.savez_compressed(args.out / 'dlcrnet_golden.npz', **golden)
    (args.out / 'dlcrnet_manifest.json').write_text(json.dumps({
        'made_by': 'tests/reference/make_dlcrnet_fixtures.py', 'seed': SEED, 'channels_every': CHANNELS,
        'versions': {'tensorflow': tf.__version__, 'numpy': np.__version__},
        'manifest': manifest}) + '\n')
    print(f'{len(manifest)} variables; taps {sorted(k for k in golden if k.startswith("real/"))}')


if __name__ == '__main__':
    main()
