"""Data parallelism: 8 CPU devices and 2 processes x 4 devices give the 1-device results; the
bfloat16 compute policy; distributed start-up and process shares.

JAX fixes its device count when it starts, so the multi-device runs are subprocesses
(``tests/parallel_worker.py`` with ``--xla_force_host_platform_device_count``); this process
has one CPU device.
"""

import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import superanimal_jax
from superanimal_jax import parallel

from conftest import write_tiny_model

HERE = Path(__file__).resolve().parent
WORKER = HERE / 'parallel_worker.py'
VIDEO_FRAMES = (10, 13, 16)


def worker(*args: str, wait: bool = True):
    command = [sys.executable, str(WORKER), *args]
    if not wait:
        return subprocess.Popen(command, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    done = subprocess.run(command, cwd=HERE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def max_relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 where both are all zero)."""
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale else float(np.abs(a).max())


def compare_params(a: Path, b: Path) -> tuple[float, int, int]:
    """Worst per-leaf relative max-abs difference, identical leaves, leaves."""
    with np.load(a) as x, np.load(b) as y:
        names = [k for k in x.files if k != 'losses']
        assert sorted(names) == sorted(k for k in y.files if k != 'losses')
        worst = max(max_relative(x[k], y[k]) for k in names)
        return worst, sum(np.array_equal(x[k], y[k]) for k in names), len(names)


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Path:
    # Non-zero biases, as in a trained network: a relative comparison of a bias that starts at 0
    # would divide by three steps' worth of updates.  (Random weights can also put a ReLU input
    # within float32 rounding of 0, where a last-bit difference between two compiled programs
    # flips a whole unit's gradient: with seed 3 the 2-process float32 gradients differ from the
    # 1-process ones by up to 0.7 % in four kernels, while in float64 the two agree to 3e-16 and
    # the 2-process float32 run is the closer to them.  Seed 0 has no such unit.)
    return write_tiny_model(tmp_path_factory.mktemp('parallel') / 'model', seed=0, bias_std=0.05)


@pytest.fixture(scope='module')
def videos(tmp_path_factory) -> Path:
    import fakes

    folder = tmp_path_factory.mktemp('videos')
    for i, n in enumerate(VIDEO_FRAMES):
        fakes.write_video(folder / f'clip{i}.avi', n)
    return folder


@pytest.fixture(scope='module')
def runs(model, videos, tmp_path_factory) -> dict[str, Path]:
    """Every multi-device run, started together (their compilations overlap on the cores):

    * ``infer``: one process, 8 devices: inference on all 8 and on one;
    * ``eight``: one process, 8 devices: 3 steps on all 8 and on one, and the 1-device run
      resumed on 8 from its step-2 checkpoint;
    * ``two``: 2 processes x 4 devices (gloo on localhost): the same 3 steps, then each process
      analyses its share of the videos;
    * ``single``: one host like each of those (4 devices) analysing every video.  (XLA:CPU's
      arithmetic depends, in the last bits, on how many host devices a process has: the video
      comparison is between hosts alike, as the hosts of one job are.)
    """
    out = {name: tmp_path_factory.mktemp(name) for name in ('infer', 'eight', 'two', 'single')}
    m = ['--model', str(model)]
    two = ['train', '--devices', '4', *m, '--out', str(out['two']), '--videos', str(videos),
           '--coordinator', f'localhost:{free_port()}', '--num-processes', '2']
    commands = [['infer', '--devices', '8', *m, '--out', str(out['infer'])],
                ['train', '--devices', '8', *m, '--out', str(out['eight']), '--with-one-device'],
                [*two, '--process-id', '1'], [*two, '--process-id', '0'],
                ['videos', '--devices', '4', *m, '--out', str(out['single']), '--videos', str(videos)]]
    procs = [worker(*c, wait=False) for c in commands]
    try:
        outputs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for c, p, output in zip(commands, procs, outputs):
        assert p.returncode == 0, f'{" ".join(c)}:\n{output[-6000:]}'
    return out


@pytest.fixture(scope='module')
def eight_devices(runs) -> Path:
    return runs['eight']


def test_inference_on_8_devices_matches_1_device(runs):
    tmp_path = runs['infer']
    report = json.loads((tmp_path / 'infer.json').read_text())
    # The batch of 8 crops was split: one crop per device; the weights are on all 8.
    assert report['all']['mesh'] == 8 and report['one']['mesh'] == 1
    assert report['all']['heatmaps'] == {'spec': "P('data',)", 'devices': 8,
                                         'shard_shapes': [[1, 64, 64, 27]], 'dtype': 'float32'}
    assert report['one']['heatmaps']['shard_shapes'] == [[8, 64, 64, 27]]
    assert report['all']['params']['spec'] == 'P()' and report['all']['params']['devices'] == 8
    with np.load(tmp_path / 'infer.npz') as found:
        names = sorted(k[len('all/'):] for k in found.files if k.startswith('all/'))
        assert ({'heatmaps', 'keypoints', 'predict/keypoints', 'predict/boxes', 'predict/box_scores'}
                <= set(names))
        # Float32 rounding: XLA:CPU picks its convolution kernels by the per-device batch (1 vs 8),
        # and on some CPUs (AVX2; not AVX-512) they round apart.  So heatmaps, and the scores read
        # from them, agree to a millionth of the heatmaps' scale; where the keypoints are is exact.
        scale = np.abs(found['one/heatmaps']).max()
        for name in names:
            all_, one = found[f'all/{name}'], found[f'one/{name}']
            if name in ('heatmaps', 'keypoints', 'predict/keypoints'):
                if name != 'heatmaps':
                    np.testing.assert_array_equal(all_[..., :2], one[..., :2], err_msg=name)
                    all_, one = all_[..., 2], one[..., 2]
                np.testing.assert_allclose(all_, one, rtol=0, atol=1e-6 * scale, err_msg=name)
                continue
            np.testing.assert_array_equal(all_, one, err_msg=name)
        assert found['all/keypoints'].shape == (29, 27, 3)  # 29 crops, padded to 32 on the devices.
        assert found['all/predict/keypoints'].shape == (21, 2, 27, 3)
        assert (found['all/predict/box_scores'] > 0).sum() > 10  # The fake detector found boxes.
    tables = [pd.read_hdf(report[name]['h5']) for name in ('all', 'one')]
    likelihood = tables[0].columns.get_level_values('coords') == 'likelihood'
    pd.testing.assert_frame_equal(tables[0].loc[:, ~likelihood], tables[1].loc[:, ~likelihood],
                                  check_exact=True)
    np.testing.assert_allclose(tables[0].loc[:, likelihood], tables[1].loc[:, likelihood], rtol=0,
                               atol=1e-6 * scale)


@pytest.mark.slow
def test_detector_on_8_devices_matches_1_device(tmp_path):
    """The real detector network and post-processing, frames split over 8 devices (about 3 min
    on 2 cores: opt-in, ``pytest -m slow``)."""
    worker('detector', '--devices', '8', '--out', str(tmp_path))
    report = json.loads((tmp_path / 'detector.json').read_text())
    assert report['all']['boxes'] == {'spec': "P('data',)", 'devices': 8, 'shard_shapes': [[1, 10, 4]],
                                      'dtype': 'float32'}
    with np.load(tmp_path / 'detector.npz') as found:
        assert found['all/valid'].sum() > 8  # The synthetic weights make detections.
        for name in ('boxes', 'scores', 'valid'):
            np.testing.assert_array_equal(found[f'all/{name}'], found[f'one/{name}'], err_msg=name)


@pytest.mark.slow  # Minutes on 2 cores: two detector fine-tuning runs (pytest -m slow).
def test_detector_training_on_4_devices_matches_1_device(tmp_path):
    """Batches of 4 split one frame a device: the samplers' keys and the loss normalisations are
    over the global batch, so a step over 4 devices is the step on one.  Shown in float64, where
    the two programs' rounding cannot flip a choice: losses and every gradient to rounding.  In
    float32 a last-bit difference between the programs (other convolution kernels for batches of
    1 and 4) can flip a near-tie in NMS or the samplers, and Adam's first steps move every weight
    by about +-lr whatever its gradient: two float32 steps agree in their losses, and no weight is
    further apart than those moves allow."""
    worker('detector_train', '--devices', '4', '--steps', '2', '--out', str(tmp_path))
    report = json.loads((tmp_path / 'detector_train.json').read_text())
    assert report['all']['devices'] == 4 and report['all']['params']['spec'] == 'P()'
    assert report['one']['devices'] == 1
    with np.load(tmp_path / 'detector-float64.npz') as found:
        np.testing.assert_allclose(found['all/losses'], found['one/losses'], rtol=1e-12)
        names = [k.removeprefix('one/grad/') for k in found.files if k.startswith('one/grad/')]
        assert len(names) > 200
        worst = max(max_relative(found[f'all/grad/{k}'], found[f'one/grad/{k}']) for k in names)
        losses = np.abs(found['all/losses'] - found['one/losses']) / np.abs(found['one/losses'])
        print(f'\nfloat64, 4 devices vs 1: losses {losses.max():.1e}, gradients (worst leaf, relative '
              f'max-abs) {worst:.1e}')
        assert worst < 1e-10, worst
    with np.load(tmp_path / 'detector-all.npz') as a, np.load(tmp_path / 'detector-one.npz') as b:
        assert len(a['losses']) == 2
        np.testing.assert_allclose(a['losses'][0], b['losses'][0], rtol=1e-4)
        np.testing.assert_allclose(a['losses'][1], b['losses'][1], rtol=1e-2)
        moved = max(np.abs(a[k] - b[k]).max() for k in a.files if k != 'losses')
        assert moved <= 2 * 2 * 1e-5 * 1.01, moved  # Two steps of lr 1e-5, each way.


def test_dlcrnet_on_8_devices_matches_1_device(tmp_path):
    """The DLCRNet's batches split over 8 devices, like the other networks: peaks sharded one frame
    a device, keypoints as on one device (per-device batches of 1 and 8 pick other conv kernels:
    positions within 0.01 px, likelihoods within 0.001, the same joints found)."""
    worker('dlcrnet', '--devices', '8', '--out', str(tmp_path))
    report = json.loads((tmp_path / 'dlcrnet.json').read_text())
    assert report['all']['row'] == {'spec': "P('data',)", 'devices': 8, 'shard_shapes': [[1, 27]],
                                    'dtype': 'int32'}
    assert report['one']['row']['devices'] == 1
    with np.load(tmp_path / 'dlcrnet.npz') as found:
        every, one = found['all'], found['one']
    assert np.isfinite(one[..., 0]).sum() > 10  # Small crops: a handful of joints found (16).
    np.testing.assert_array_equal(np.isnan(every), np.isnan(one))
    np.testing.assert_allclose(every[..., :2], one[..., :2], atol=0.01)
    np.testing.assert_allclose(every[..., 2], one[..., 2], atol=0.0011)


def test_training_on_8_devices_matches_1_device(eight_devices):
    report = json.loads((eight_devices / 'report-0.json').read_text())
    assert report['device_count'] == 8 and report['process_count'] == 1
    # Each global batch of 8 is split over the 8 devices, one item each; the state is replicated.
    assert report['batch'] == {'spec': "P('data',)", 'devices': 8, 'shard_shapes': [[1, 256, 256, 3]],
                               'dtype': 'float32'}
    assert report['main']['params']['spec'] == 'P()' and report['main']['params']['devices'] == 8
    assert report['one']['params']['devices'] == 1
    worst, _, leaves = compare_params(eight_devices / 'main-0.npz', eight_devices / 'one-0.npz')
    assert leaves > 100 and worst < 1e-6, worst
    with np.load(eight_devices / 'main-0.npz') as a, np.load(eight_devices / 'one-0.npz') as b:
        assert len(a['losses']) == 3
        np.testing.assert_allclose(a['losses'], b['losses'], rtol=1e-6)


def test_checkpoint_restores_on_another_device_count(eight_devices):
    """Steps 1-2 on one device, checkpointed; step 3 restored onto 8 devices."""
    report = json.loads((eight_devices / 'report-0.json').read_text())
    assert report['resumed']['steps_run'] == 1 and report['resumed']['params']['devices'] == 8
    worst, _, _ = compare_params(eight_devices / 'resumed-0.npz', eight_devices / 'one-0.npz')
    assert worst < 1e-6, worst


def test_two_processes_of_4_devices_match_one_process_of_8(runs, eight_devices):
    tmp_path = runs['two']
    for i in (0, 1):
        report = json.loads((tmp_path / f'report-{i}.json').read_text())
        assert report['process_count'] == 2 and report['device_count'] == 8
        # Each process made 4 rows of every batch of 8; together they fill the 8 devices.
        assert report['local_batch_rows'] == 4
        assert report['batch']['devices'] == 8 and report['batch']['shard_shapes'] == [[1, 256, 256, 3]]
    # Both processes hold the same parameters, and those of the one-process run.
    worst, identical, leaves = compare_params(tmp_path / 'main-1.npz', tmp_path / 'main-0.npz')
    assert identical == leaves
    worst, _, _ = compare_params(tmp_path / 'main-0.npz', eight_devices / 'main-0.npz')
    assert worst < 1e-6, worst
    # Process 0 wrote the run's files; orbax wrote the final checkpoint from both.
    assert (tmp_path / 'main' / 'model' / 'metadata.json').is_file()
    assert sorted(p.name for p in (tmp_path / 'main' / 'checkpoints').iterdir() if p.name.isdigit()) == ['3']
    # The videos were shared out (process 0: clips 0 and 2, process 1: clip 1), and each result
    # file is byte for byte the single host's.
    shares = [json.loads((tmp_path / f'videos-{i}.json').read_text()) for i in (0, 1)]
    assert shares == [['clip0.avi', 'clip2.avi'], ['clip1.avi']]
    ours = sorted(p.name for p in (tmp_path / 'videos').iterdir())
    assert ours == sorted(p.name for p in (runs['single'] / 'videos').iterdir()) and len(ours) == 6
    for name in ours:  # Results (h5) and DeepLabCut's json, each as the single host wrote them.
        assert ((tmp_path / 'videos' / name).read_bytes()
                == (runs['single'] / 'videos' / name).read_bytes()), name


# ----------------------------------------------------------------------------- In this process

def test_bfloat16_policy_outputs_in_compute_dtype_params_float32(tmp_path):
    from superanimal_jax.models.detector import DetectorNetwork
    from superanimal_jax.models.detector import variables_shape as detector_shape

    path = write_tiny_model(tmp_path / 'model', seed=1, bias_std=0.05)
    model = superanimal_jax.load(path, dtype='bfloat16')
    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    taps = model.pose.taps(superanimal_jax.normalize_crops(crops))
    assert {t.dtype for t in jax.tree_util.tree_leaves(taps)} == {jnp.dtype(jnp.bfloat16)}
    assert {p.dtype for p in jax.tree_util.tree_leaves(model.pose.variables)} == {jnp.dtype(jnp.float32)}
    # Keypoints are decoded in float32 (checked on shapes).
    assert jax.eval_shape(model.pose._keypoints_uint8, model.pose.variables, crops).dtype == jnp.float32

    # The detector: every network output in bfloat16 (checked on shapes: no compilation needed).
    network = DetectorNetwork(dtype=jnp.bfloat16)
    variables = detector_shape()
    assert {v.dtype for v in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    features, (logits, deltas) = jax.eval_shape(network.apply, variables,
                                               jnp.zeros((1, 64, 64, 3), jnp.float32),
                                               jnp.zeros((3, 7, 7, 256), jnp.float32))
    assert {t.dtype for t in jax.tree_util.tree_leaves(features)} | {logits.dtype, deltas.dtype} == {
        jnp.dtype(jnp.bfloat16)}


def test_bfloat16_training_keeps_float32_state():
    import optax

    from superanimal_jax.models.pose import POSE_VARIANTS, PoseNetwork
    from superanimal_jax.training.step import init_state, make_train_step

    config = POSE_VARIANTS['hrnet_tiny']
    network = PoseNetwork(config, dtype=jnp.bfloat16)
    x = jnp.zeros((2, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(PoseNetwork(config).init, jax.random.key(0), x)
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), variables['params'])
    optimizer = optax.adamw(1e-5, weight_decay=0.01)
    state = init_state(params, optimizer, 0)
    batch = {'image': x, 'targets': jnp.zeros((2, 16, 16, 5)), 'weights': jnp.ones((2, 16, 16, 5))}
    step = make_train_step(network, optimizer, with_grads=True)
    new_state, metrics = jax.eval_shape(step, state, variables['batch_stats'], batch)
    floats = [leaf for leaf in jax.tree_util.tree_leaves((new_state, metrics))
              if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and {leaf.dtype for leaf in floats} == {jnp.dtype(jnp.float32)}
    assert {g.dtype for g in jax.tree_util.tree_leaves(metrics['grads'])} == {jnp.dtype(jnp.float32)}
    heatmaps = jax.eval_shape(network.apply, variables, x)['heatmaps']
    assert heatmaps.dtype == jnp.bfloat16


def test_compute_dtype_names_the_choices():
    assert (parallel.compute_dtype('bfloat16') == jnp.bfloat16
            and parallel.compute_dtype(jnp.float32) == jnp.float32)
    with pytest.raises(ValueError, match='bfloat16'):
        parallel.compute_dtype('float16')
    with pytest.raises(ValueError, match='compute dtype'):
        superanimal_jax.TrainConfig(compute_dtype='int8')


def test_padding_and_shares():
    eight = types.SimpleNamespace(size=8)  # Only the device count matters here.
    assert [parallel.padded_size(n, eight) for n in (1, 8, 13, 16)] == [8, 8, 16, 16]
    padded = parallel.pad_batch(np.ones((3, 2), np.float32), 8)
    assert padded.shape == (8, 2) and padded[:3].all() and not padded[3:].any()
    with pytest.raises(ValueError, match='does not fit'):
        parallel.pad_batch(np.ones((9, 2)), 8)
    with pytest.raises(ValueError, match='pad it first'):
        parallel.put_batch(np.ones((3, 2)), types.SimpleNamespace(size=2))
    items = [f'v{i}' for i in range(7)]
    shares = [parallel.process_share(items, i, 3) for i in range(3)]
    assert shares == [['v0', 'v3', 'v6'], ['v1', 'v4'], ['v2', 'v5']]
    with pytest.raises(ValueError, match='not in 0..2'):
        parallel.process_share(items, 3, 3)


def test_initialize_reads_flags_then_env(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
    for name in ('COORDINATOR', 'NUM_PROCESSES', 'PROCESS_ID'):
        monkeypatch.delenv(parallel.ENV_PREFIX + name, raising=False)
    assert parallel.initialize() is False and not calls  # One process: nothing to start.
    with pytest.raises(ValueError, match='needs a coordinator'):
        parallel.initialize(num_processes=2, process_id=1)
    with pytest.raises(ValueError, match='number of processes'):
        parallel.initialize('host0:99')
    with pytest.raises(ValueError, match='not in 0..1'):
        parallel.initialize('host0:99', 2, 5)
    assert not calls
    assert parallel.initialize('10.0.0.1:1234', 4, 2) is True
    assert calls[-1] == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 2}
    monkeypatch.setenv('SUPERANIMAL_JAX_COORDINATOR', 'host0:99')
    monkeypatch.setenv('SUPERANIMAL_JAX_NUM_PROCESSES', '2')
    monkeypatch.setenv('SUPERANIMAL_JAX_PROCESS_ID', '1')
    assert parallel.initialize() is True
    assert calls[-1] == {'coordinator_address': 'host0:99', 'num_processes': 2, 'process_id': 1}
    assert parallel.initialize(process_id=0) is True and calls[-1]['process_id'] == 0  # Flags win.
    assert parallel.initialize('auto') is True and calls[-1] == {}  # JAX's own cluster detection.


def test_batches_must_split_over_devices_and_processes(tiny_model_dir, tmp_path):
    from superanimal_jax.training.data import DataConfig, Item, TrainData
    from superanimal_jax.training.loop import train

    from conftest import OPENFIELD_PROJECT

    with pytest.raises(ValueError, match='batch size 3 does not split over 2 processes'):
        TrainData([Item('x', np.zeros((4, 3)))], DataConfig(batch_size=3), process_count=2)
    eight = types.SimpleNamespace(size=8, devices=np.asarray(jax.devices()))
    with pytest.raises(ValueError,
                       match='does not split over the 8 devices of the mesh: use a multiple of 8'):
        train(OPENFIELD_PROJECT, tiny_model_dir, tmp_path, superanimal_jax.TrainConfig(batch_size=4),
              mesh=eight)
    assert not any(tmp_path.iterdir())  # Refused before anything was written.


def test_inference_refuses_a_mesh_with_other_processes_devices():
    class Foreign:
        process_index = 1

    mesh = types.SimpleNamespace(devices=np.asarray([Foreign()]))
    with pytest.raises(ValueError, match='other processes'):
        parallel.check_local(mesh)


def test_cli_scaling_options(tmp_path, capsys):
    from superanimal_jax import cli

    common = ['--project', str(tmp_path), '--model', str(tmp_path), '--out', str(tmp_path / 'run')]
    assert cli.main(['train', *common, '--coordinator', 'host0:1234']) == 2
    assert 'also give the number of processes' in capsys.readouterr().err
    assert cli.main(['train', *common, '--num-processes', '2', '--process-id', '1']) == 2
    assert 'needs a coordinator' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(['train', *common, '--dtype', 'float16'])
    assert "invalid choice: 'float16'" in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()
