"""Golden outputs of DeepLabCut's TensorFlow PoseResnet (the DLCRNet release's network) and of its
SuperAnimal TF video path, run in .ref-tf/.

    .ref-tf/bin/python tests/reference/make_dlcrnet_fixtures.py --out tests/fixtures

Builds the network with DeepLabCut 3.0.2's own TF code (``PoseNetFactory``, the SuperAnimal
TopViewMouse settings: resnet_50, stride 8, 27 joints, location refinement, no PAFs) and fills its
variables with ``synthetic.synthetic_tf_state`` (deterministic from a seed; numpy only, so the
tests regenerate them).  Then, so that score maps look like a trained network's (a handful of
peaks, some above DeepLabCut's 0.1 cut-off):

* every BatchNorm's moving statistics are set, layer by layer in graph order, to the batch
  statistics of its input on four real openfield frames;
* the part_pred kernel is scaled and each joint's bias chosen, the locref head scaled
  (``synthetic.apply_tf_overrides``; the values go to ``dlcrnet_overrides.npz``).

Writes (and the multi-stage network's taps: ``multistage_goldens``):

* ``dlcrnet_golden.npz``: the taps (block1-4, part_pred logits, sigmoid score map, scaled locref)
  on a real openfield crop and a random input (block taps every 8th channel plus their full
  max-abs; heads whole); ``dlcrnet_manifest.json``: variable names and shapes, seed, versions.
* ``dlcrnet_clip/``: what DeepLabCut's ``superanimal_inference.video_inference`` writes for the
  8-frame openfield clip (``pipeline/openfield_clip.avi``) from these weights saved as a TF1
  checkpoint ``snapshot-0``: the h5 at DeepLabCut's default scales (``[h-50, h, h+50]``) and at
  the single scale ``[h]``, renamed (the original names are in ``dlcrnet_clip/manifest.json``),
  with the sha256 of every decoded frame and of every imgaug-resized frame.

``--checkpoint DIR`` keeps the checkpoint (and packs it as the release is packed,
``DLC_ma_supertopview5k_resnet_50_iteration-0_shuffle-1.tar.gz``, with ``--tarball``).

DeepLabCut's public ``video_inference`` cannot build its config for this model (it reads the
project config's ``bobyparts``, a key that does not exist: KeyError; and the merged config's
``bodyparts`` is the model config's empty one), so the config is built as that code means to: the
project config merged with ``model_configs/dlcrnet.yaml``, the joints named by the project's
``bodyparts``, passed as ``customized_test_config``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
from _reference import DATA, ROOT, synthetic  # noqa: E402

sys.path.insert(0, str(ROOT.parent / 'shared' / 'reference' / 'tensorflow'))
SEED = 0
CHANNELS = 8  # Block taps keep every 8th channel.
CLIP = ROOT / 'tests' / 'fixtures' / 'pipeline' / 'openfield_clip.avi'
CALIBRATION = ('img0010.png', 'img0030.png', 'img0050.png', 'img0070.png')
PEAKS_PER_MAP = 3.0  # Each joint's part_pred bias is chosen for about this many peaks per score map.
LOGIT_STD = 1.5  # The part_pred kernel's gain: logits of this standard deviation.
LOCREF_STD = 0.25  # The locref head's gain: offsets of this standard deviation (times 7.28 px).
TARBALL = 'DLC_ma_supertopview5k_resnet_50_iteration-0_shuffle-1.tar.gz'


def superanimal_test_config() -> dict:
    """The config ``video_inference`` builds for ('superanimal_topviewmouse', 'dlcrnet'), with the
    joints named by the project's ``bodyparts`` (see the module docstring)."""
    import deeplabcut
    from deeplabcut.pose_estimation_tensorflow.config import load_config

    zoo = Path(deeplabcut.__file__).parent / 'modelzoo'
    project = load_config(zoo / 'project_configs' / 'superanimal_topviewmouse.yaml')
    cfg = {**project, **load_config(zoo / 'model_configs' / 'dlcrnet.yaml')}
    # The model config's empty ``bodyparts`` overrides the project's: the names come from the project.
    cfg['all_joints_names'] = list(project['bodyparts'])
    cfg['all_joints'] = list(range(len(project['bodyparts'])))
    cfg['num_joints'] = len(cfg['all_joints'])
    cfg['num_limbs'] = cfg['num_joints'] * (cfg['num_joints'] - 1) // 2
    return cfg


def network_config() -> dict:
    """The same settings, as the network factory reads them (one image per run)."""
    from deeplabcut.pose_estimation_tensorflow import default_config

    cfg = dict(default_config.cfg)
    cfg.update(superanimal_test_config())
    cfg.update(partaffinityfield_predict=False, partaffinityfield_graph=[], batch_size=1)
    return cfg


def read_rgb(path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def inputs() -> dict[str, np.ndarray]:
    frame = read_rgb(DATA / 'labeled-data' / 'm4s1' / 'img0045.png')
    real = frame[100:260, 200:424].astype(np.float32)[None]  # 160x224 around the mouse.
    rng = np.random.default_rng([SEED, 11])
    return {'real': real, 'random': rng.uniform(0, 255, (1, 96, 128, 3)).astype(np.float32)}


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def count_peaks(scmap: np.ndarray, radius: int = 5, threshold: float = 0.01) -> float:
    """Mean number of DeepLabCut peaks per score map (smoothed, max-pooled), for choosing the bias."""
    from scipy import ndimage

    k = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-k ** 2 / 2)
    g /= g.sum()
    counts = []
    for frame in scmap:
        for j in range(frame.shape[-1]):
            s = ndimage.convolve(frame[..., j], np.outer(g, g), mode='constant')
            pooled = ndimage.maximum_filter(s, size=radius, mode='constant', cval=-np.inf)
            counts.append(np.sum((s == pooled) & (s >= threshold)))
    return float(np.mean(counts))


def calibrate(tf, session, image, variables, state, frames) -> dict[str, np.ndarray]:
    """BatchNorm statistics from ``frames`` layer by layer, then the head gains (see the module
    docstring); loads them into the session and returns them."""
    by_name = {v.op.name: v for v in variables}
    overrides = {}
    norms = [op for op in session.graph.get_operations()
             if op.type.startswith('FusedBatchNorm') and op.name.startswith('resnet_v1_50/')]
    for op in norms:
        x = np.concatenate([session.run(op.inputs[0], {image: f[None]}) for f in frames]).astype(np.float64)
        scope = op.name.rsplit('/', 1)[0]
        overrides[f'{scope}/moving_mean'] = x.mean((0, 1, 2)).astype(np.float32)
        overrides[f'{scope}/moving_variance'] = x.var((0, 1, 2)).astype(np.float32)
        for key in ('moving_mean', 'moving_variance'):
            by_name[f'{scope}/{key}'].load(overrides[f'{scope}/{key}'], session)
    print(f'calibrated {len(norms)} BatchNorm layers')
    part = session.graph.get_tensor_by_name('pose/part_pred/block4/BiasAdd:0')
    locref = session.graph.get_tensor_by_name('pose/locref_pred/block4/BiasAdd:0')
    bias = state['pose/part_pred/block4/biases']
    raw = np.concatenate([session.run(part, {image: f[None]}) for f in frames]) - bias
    gain = np.float32(LOGIT_STD / raw.std())
    logits = raw * gain
    choices = np.arange(-30.0, 5.01, 0.25, dtype=np.float32)
    biases, counts, tops = [], [], []
    for j in range(logits.shape[-1]):  # Each joint its own bias: about PEAKS_PER_MAP peaks.
        found = [count_peaks(1 / (1 + np.exp(-(logits[..., j:j + 1] + b)))) for b in choices]
        best = int(np.argmin([abs(c - PEAKS_PER_MAP) for c in found]))
        biases.append(choices[best])
        counts.append(found[best])
        tops.append(float(np.median(1 / (1 + np.exp(-(logits[..., j] + choices[best]).max((1, 2)))))))
    loc = np.concatenate([session.run(locref, {image: f[None]}) for f in frames])
    overrides.update({'part_pred/gain': gain, 'part_pred/bias': np.float32(biases),
                      'locref_pred/gain': np.float32(LOCREF_STD / loc.std())})
    print(f'part_pred gain {gain:.3g}, biases {min(biases)}..{max(biases)}: {np.mean(counts):.2f} peaks a '
          f'map, best score {np.min(tops):.2f}..{np.max(tops):.2f}; '
          f"locref gain {overrides['locref_pred/gain']:.3g}")
    final = synthetic.apply_tf_overrides(state, overrides)
    for name in ('pose/part_pred/block4/weights', 'pose/part_pred/block4/biases',
                 'pose/locref_pred/block4/weights', 'pose/locref_pred/block4/biases'):
        by_name[name].load(final[name], session)
    return overrides


def clip_frames() -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return frames


def video_goldens(checkpoint: Path, out: Path) -> dict:
    """DeepLabCut's SuperAnimal TF video path on the clip at the default and a single scale."""
    from deeplabcut.pose_estimation_tensorflow.modelzoo.api import superanimal_inference as sa

    out.mkdir(parents=True, exist_ok=True)
    frames = clip_frames()
    height = frames[0].shape[0]
    record = {'clip': CLIP.name, 'frames': [sha(f) for f in frames], 'runs': {}}
    for name, scales in (('scales3', None), ('scale1', [height])):
        with tempfile.TemporaryDirectory() as work:
            video = Path(work) / CLIP.name
            shutil.copy(CLIP, video)
            sa.video_inference([str(video)], 'superanimal_topviewmouse', 'dlcrnet', scale_list=scales,
                               destfolder=work, batchsize=1, init_weights=str(checkpoint / 'snapshot-0'),
                               customized_test_config=superanimal_test_config())
            (h5,) = Path(work).glob('*.h5')
            shutil.copy(h5, out / f'{name}.h5')
            used = scales or [height - 50, height, height + 50]
            resized = [sa.get_multi_scale_frames(f, used)[0] for f in frames]
            record['runs'][name] = {'scales': used, 'h5': h5.name,
                                    'resized': [[sha(r) for r in rs] for rs in resized],
                                    'shapes': [list(r.shape) for r in resized[0]]}
    return record


def multistage_goldens(tf, out: Path, overrides: dict) -> None:
    """Taps of DeepLabCut's multi-stage ``PoseMultiNet`` (DLCRNet_ms5: ``multi_stage``, resnet_50,
    stride 8, part-affinity fields for 351 limbs, as a multi-animal DLCRNet is trained), built
    directly (the factory picks it only below stride 8), synthetic weights with the backbone's
    calibrated BatchNorm statistics, on the real crop and a 100x140 random input (whose decoder
    banks need a real resize).  ``dlcrnet_ms5_golden.npz``, ``dlcrnet_ms5_manifest.json``."""
    from deeplabcut.pose_estimation_tensorflow.nnets.multi import PoseMultiNet

    cfg = network_config()
    cfg.update(multi_stage=True, partaffinityfield_predict=True, pairwise_predict=False,
               dataset_type='multi-animal-imgaug', intermediate_supervision=False)
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3])
        net = PoseMultiNet(cfg)
        features, end_points = net.extract_features(image)
        heads = net.prediction_layers(features, end_points, tf.shape(image))
        taps = {f'block{b}': end_points[f'resnet_v1_50/block{b}'] for b in range(1, 5)}
        named = {'bank_1': 'decoder_filters/decoder_parallel_5/Relu:0',
                 'bank_2': 'decoder_filters/decoder_parallel_2/Relu:0',
                 'part_pred_s1': 'pose/part_pred_s1/Conv2d_transpose/BiasAdd:0'}
        taps.update({k: graph.get_tensor_by_name(v) for k, v in named.items()})
        taps.update(part_pred=heads['part_pred'], scmap=tf.sigmoid(heads['part_pred']),
                    locref=heads['locref'] * cfg['locref_stdev'], pairwise_pred=heads['pairwise_pred'])
        variables = tf.compat.v1.global_variables()
        manifest = [(v.op.name, [int(d) for d in v.shape]) for v in variables]
        state = synthetic.apply_tf_overrides(synthetic.synthetic_tf_state(manifest, seed=SEED), overrides)
        rng = np.random.default_rng([SEED, 12])
        cases = {'real': inputs()['real'], 'random': rng.uniform(0, 255, (1, 100, 140, 3)).astype(np.float32)}
        golden = {}
        with tf.compat.v1.Session() as session:
            for v in variables:
                v.load(state[v.op.name], session)
            for name, x in cases.items():
                golden[f'inputs/{name}'] = x
                for tap, value in session.run(taps, {image: x}).items():
                    golden[f'{name}/maxabs/{tap}'] = np.float32(np.abs(value).max())
                    if value.shape[-1] > 64:  # Wide taps: every 8th channel.
                        value = value[..., ::CHANNELS]
                    golden[f'{name}/{tap}'] = value
    np.savez_compressed(out / 'dlcrnet_ms5_golden.npz', **golden)
    (out / 'dlcrnet_ms5_manifest.json').write_text(json.dumps({
        'made_by': 'tests/reference/make_dlcrnet_fixtures.py', 'seed': SEED, 'channels_every': CHANNELS,
        'wide_from': 64, 'backbone_statistics': 'dlcrnet_overrides.npz',
        'state_sha256': synthetic.tf_state_sha256(state),
        'versions': {'tensorflow': tf.__version__, 'numpy': np.__version__}, 'manifest': manifest}) + '\n')
    print(f'multi-stage: {len(manifest)} variables')


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
    parser.add_argument('--checkpoint', type=Path, help='keep the TF1 checkpoint here')
    parser.add_argument('--tarball', action='store_true', help=f'also pack it as {TARBALL}')
    parser.add_argument('--no-video', action='store_true', help='taps only (no video_inference run)')
    parser.add_argument('--multi-stage-only', action='store_true',
                        help='only the multi-stage goldens, from the committed dlcrnet_overrides.npz')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tf.compat.v1.disable_eager_execution()
    if args.multi_stage_only:
        with np.load(ROOT / 'tests' / 'fixtures' / 'dlcrnet_overrides.npz') as committed:
            multistage_goldens(tf, args.out, dict(committed))
        return
    cfg = network_config()
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
            calibration = [read_rgb(DATA / 'labeled-data' / 'm4s1' / n).astype(np.float32)
                           for n in CALIBRATION]
            overrides = calibrate(tf, session, image, variables, state, calibration)
            golden = {}
            for name, x in inputs().items():
                golden[f'inputs/{name}'] = x
                for tap, value in session.run(taps, {image: x}).items():
                    if tap.startswith('block'):
                        golden[f'{name}/maxabs/{tap}'] = np.float32(np.abs(value).max())
                        value = value[..., ::CHANNELS]
                    golden[f'{name}/{tap}'] = value
            checkpoint = args.checkpoint or Path(tempfile.mkdtemp(prefix='dlcrnet-checkpoint-'))
            checkpoint.mkdir(parents=True, exist_ok=True)
            tf.compat.v1.train.Saver(variables).save(session, str(checkpoint / 'snapshot'), global_step=0)
    np.savez_compressed(args.out / 'dlcrnet_golden.npz', **golden)
    np.savez_compressed(args.out / 'dlcrnet_overrides.npz', **overrides)
    manifest_out = {
        'made_by': 'tests/reference/make_dlcrnet_fixtures.py', 'seed': SEED, 'channels_every': CHANNELS,
        'calibration_frames': [f'labeled-data/m4s1/{n}' for n in CALIBRATION],
        'state_sha256': synthetic.tf_state_sha256(synthetic.apply_tf_overrides(state, overrides)),
        'versions': {'tensorflow': tf.__version__, 'numpy': np.__version__},
        'manifest': manifest}
    if not args.no_video:
        from importlib import metadata

        import imgaug

        manifest_out['clip'] = video_goldens(checkpoint, args.out / 'dlcrnet_clip')
        manifest_out['versions'].update(deeplabcut=metadata.version('deeplabcut'), imgaug=imgaug.__version__,
                                        opencv=metadata.version('opencv-python-headless'))
        manifest_out['keypoints'] = superanimal_test_config()['all_joints_names']
    (args.out / 'dlcrnet_manifest.json').write_text(json.dumps(manifest_out) + '\n')
    multistage_goldens(tf, args.out, overrides)
    if args.tarball:
        with tarfile.open(checkpoint / TARBALL, 'w:gz') as tar:
            for path in sorted(checkpoint.glob('snapshot-0*')) + [checkpoint / 'checkpoint']:
                tar.add(path, arcname=path.name)
    if not args.checkpoint:
        shutil.rmtree(checkpoint)
    print(f'{len(manifest)} variables; taps {sorted(k for k in golden if k.startswith("real/"))}')


if __name__ == '__main__':
    main()
