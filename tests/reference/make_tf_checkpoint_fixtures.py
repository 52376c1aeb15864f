"""TensorFlow-written checkpoint bundles for the TF1 checkpoint reader's tests (run in .ref-tf/).

    .ref-tf/bin/python tests/reference/make_tf_checkpoint_fixtures.py --out tests/fixtures/tf_checkpoint
    .ref-tf/bin/python tests/reference/make_tf_checkpoint_fixtures.py --out /tmp/live --large   # live tier

TensorFlow 2.14 (``tf.compat.v1``, graph mode, ``Saver`` V2, as DeepLabCut's TF engine saves its
snapshots) writes variables of every dtype the reader supports, a scalar, an empty tensor and
enough names for the index to span several blocks, as ``snapshot-7`` (``.index``, ``.data-*``,
``.meta``, ``checkpoint``) and the released layout, ``snapshot-7.tar.gz``, holding them and a
``pose_cfg.yaml``; the loose ``.meta``, ``checkpoint`` and ``pose_cfg.yaml`` are then removed (the
archive keeps them).  ``tf.train.load_checkpoint`` reads it back; every tensor goes to
``expected.npz`` with ``versions.json``.  ``--large``: variables with the shapes of DeepLabCut's
PoseResnet-50 checkpoint (269 tensors, about 100 MB) instead.  The environment is described in
``../shared/reference/tensorflow/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
from pathlib import Path

import numpy as np

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')


def small_variables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Names in DeepLabCut's style, every supported dtype, edge shapes, many entries."""
    values = {
        'resnet_v1_50/conv1/weights': rng.standard_normal((7, 7, 3, 8)).astype(np.float32),
        'resnet_v1_50/conv1/BatchNorm/gamma': rng.uniform(0.5, 1.5, 8).astype(np.float32),
        'pose/part_pred/block4/weights': rng.standard_normal((3, 3, 5, 16)).astype(np.float32),
        'pose/part_pred/block4/biases': rng.standard_normal(5).astype(np.float32),
        'extra/float64': rng.standard_normal((2, 3)),
        'extra/float16': rng.standard_normal(7).astype(np.float16),
        'extra/int32': rng.integers(-2**31, 2**31, (4,), dtype=np.int64).astype(np.int32),
        'extra/int64': np.array([-(2**62), 5, 2**62], np.int64),
        'extra/uint8': rng.integers(0, 256, (3, 3), dtype=np.uint8),
        'extra/bool': np.array([True, False, True]),
        'extra/scalar': np.float32(3.25),
        'extra/empty': np.zeros((0, 3), np.float32),
        'global_step': np.int64(12345),
    }
    for i in range(120):  # Enough entries for several index blocks.
        values[f'resnet_v1_50/block{i % 4 + 1}/unit_{i}/bottleneck_v1/conv1/BatchNorm/moving_variance'] = (
            rng.uniform(0.1, 2.0, 4).astype(np.float32))
    return values


def large_variables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The shapes of DeepLabCut's PoseResnet-50 (27 joints, location refinement), ~100 MB."""
    values = {'resnet_v1_50/conv1/weights': rng.standard_normal((7, 7, 3, 64)).astype(np.float32)}
    bn = lambda prefix, n: {f'{prefix}/BatchNorm/{k}': rng.standard_normal(n).astype(np.float32)  # noqa: E731
                            for k in ('gamma', 'beta', 'moving_mean', 'moving_variance')}
    values.update(bn('resnet_v1_50/conv1', 64))
    channels = 64
    for block, (units, depth) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=1):
        for unit in range(1, units + 1):
            base = f'resnet_v1_50/block{block}/unit_{unit}/bottleneck_v1'
            if unit == 1:
                shortcut = rng.standard_normal((1, 1, channels, 4 * depth)).astype(np.float32)
                values[f'{base}/shortcut/weights'] = shortcut
                values.update(bn(f'{base}/shortcut', 4 * depth))
            convs = ((1, channels, depth), (3, depth, depth), (1, depth, 4 * depth))
            for conv, (k, cin, cout) in enumerate(convs, 1):
                kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
                values[f'{base}/conv{conv}/weights'] = kernel
                values.update(bn(f'{base}/conv{conv}', cout))
            channels = 4 * depth
    for head, n in (('part_pred', 27), ('locref_pred', 54)):
        values[f'pose/{head}/block4/weights'] = rng.standard_normal((3, 3, n, 2048)).astype(np.float32)
        values[f'pose/{head}/block4/biases'] = rng.standard_normal(n).astype(np.float32)
    return values


def main() -> None:
    import tensorflow as tf

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--large', action='store_true')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    values = large_variables(rng) if args.large else small_variables(rng)
    tf.compat.v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=k) for k, v in values.items()]
        saver = tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(session, str(args.out / 'snapshot'), global_step=7)
    reader = tf.train.load_checkpoint(prefix)
    expected = {name: reader.get_tensor(name) for name in reader.get_variable_to_dtype_map()}
    assert set(expected) == set(values)
    np.savez(args.out / 'expected.npz', **{k.replace('/', '|'): v for k, v in expected.items()})
    (args.out / 'pose_cfg.yaml').write_text('net_type: resnet_50\nnum_joints: 27\n')
    with tarfile.open(args.out / 'snapshot-7.tar.gz', 'w:gz') as archive:
        for name in ('snapshot-7.index', 'snapshot-7.data-00000-of-00001', 'snapshot-7.meta', 'checkpoint',
                     'pose_cfg.yaml'):
            folder = 'DLC_ma_supertopview5k_resnet_50_iteration-0_shuffle-1'
            archive.add(args.out / name, arcname=f'{folder}/{name}')
    for name in ('snapshot-7.meta', 'checkpoint', 'pose_cfg.yaml'):
        (args.out / name).unlink()
    versions = {'tensorflow': tf.__version__, 'numpy': np.__version__}
    record = {'versions': versions, 'tensors': len(expected)}
    (args.out / 'versions.json').write_text(json.dumps(record) + '\n')
    print(f'{prefix}: {len(expected)} tensors')


if __name__ == '__main__':
    main()
