"""DeepLabCut's TensorFlow PoseResnet (the DLCRNet release's network) in Flax, against the network
DeepLabCut 3.0.2 builds in TensorFlow 2.14 (goldens: ``tests/reference/make_dlcrnet_fixtures.py``).

The goldens hold taps of TF's network on a real openfield crop and a random input, with the
synthetic weights of ``synthetic.synthetic_tf_state`` (regenerated here from the manifest's names,
shapes and seed) and the BatchNorm statistics and head gains calibrated on openfield frames
(``dlcrnet_overrides.npz``).  The live tier also has TF write those weights as a checkpoint and
the release's ``.tar.gz``, reads both with our reader, compares every tap again, and runs
``convert --dlcrnet`` and ``analyze`` against DeepLabCut's own ``video_inference`` on the clip.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.checkpoints import synthetic
from superanimal_jax.checkpoints.rules import convert_state_dict, flatten
from superanimal_jax.checkpoints.tables import pose_resnet_rules
from superanimal_jax.checkpoints.tf_checkpoint import read_tf_checkpoint
from superanimal_jax.errors import ConversionError
from superanimal_jax.models.pose_resnet import PoseResnet, variables_shape

from conftest import FIXTURES, run_reference_script

GOLDENS = ('dlcrnet_manifest.json',)  # The versions the goldens were made with (conftest).
TAPS = ('block1', 'block2', 'block3', 'block4', 'part_pred', 'scmap', 'locref')
RTOL = 5e-5  # Relative to each tap's max-abs; measured: at most 2.9e-5 (real/block4).
SCMAP_ATOL = 5e-4  # The sigmoid score map, absolute; measured: at most 2.7e-4 (random input).


def load(folder=FIXTURES):
    manifest = json.loads((folder / 'dlcrnet_manifest.json').read_text())
    with np.load(folder / 'dlcrnet_golden.npz') as g:
        return manifest, dict(g)


def golden_state(folder=FIXTURES) -> dict[str, np.ndarray]:
    """The TF variables the goldens were made with: synthetic, then calibrated (overrides)."""
    return synthetic.tf_fixture_state(folder)


@pytest.fixture(scope='module')
def golden():
    return load()


def convert(state):
    return convert_state_dict(state, pose_resnet_rules(), variables_shape(), source='dlcrnet')


def check_taps(variables, manifest, golden, config=None, taps=TAPS) -> dict[str, float]:
    """Each tap's max-abs error relative to the tap's max-abs (the score map: absolute), wide taps
    compared on the channels the golden kept; the score maps' argmax cells must be TF's."""
    from superanimal_jax.models.pose_resnet import PoseResnetConfig, network

    errors = {}
    apply = jax.jit(network(config or PoseResnetConfig()).apply)
    for name in ('real', 'random'):
        out = apply(variables, golden[f'inputs/{name}'])
        for tap in taps:
            ours, ref = np.asarray(out[tap], np.float32), golden[f'{name}/{tap}']
            if ours.shape[-1] > manifest.get('wide_from', 64):
                ours = ours[..., ::manifest['channels_every']]
            assert ours.shape == ref.shape, (name, tap, ours.shape, ref.shape)
            scale = 1.0 if tap == 'scmap' else float(golden.get(f'{name}/maxabs/{tap}', np.abs(ref).max()))
            errors[f'{name}/{tap}'] = float(np.abs(ours - ref).max() / scale)
        scmap, ref = np.asarray(out['scmap']), golden[f'{name}/scmap']
        np.testing.assert_array_equal(scmap.reshape(-1, scmap.shape[-1]).argmax(0),
                                      ref.reshape(-1, ref.shape[-1]).argmax(0), err_msg=name)
    print(' '.join(f'{k} {v:.1e}' for k, v in errors.items()))
    assert all(v <= (SCMAP_ATOL if k.endswith('/scmap') else RTOL) for k, v in errors.items()), errors
    return errors


def test_every_variable_converts_exactly_once(golden):
    manifest, _ = golden
    assert len(manifest['manifest']) == 269  # PoseResnet-50 with part_pred and locref_pred heads.
    variables, report = convert(golden_state())
    assert report.summary()['loaded'] == 269 and len(flatten(variables)) == 269
    kernel = variables['params']['resnet_v1_50']['block4_unit_3']['conv2']['conv']['kernel']
    assert kernel.shape == (3, 3, 512, 512)  # TF's HWIO, as it is.


def test_matches_tensorflow(golden):
    manifest, g = golden
    variables, _ = convert(golden_state())
    check_taps(variables, manifest, g)


def test_unknown_and_missing_variables_are_named():
    state = golden_state()
    del state['pose/locref_pred/block4/biases']
    state['decoder_filters/decoder_parallel_1/weights'] = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ConversionError) as err:
        convert(state)
    assert 'decoder_filters/decoder_parallel_1/weights' in str(err.value)
    assert 'params/locref_pred/biases' in str(err.value)


@pytest.mark.reference
def test_live_tensorflow(tmp_path, golden):
    """TF builds DeepLabCut's network afresh, calibrates it, writes the weights as a checkpoint and
    as the release's ``.tar.gz`` (our reader loads both, equal to the regenerated weights) and runs
    it: every tap within the same tolerance, and the multi-stage network's.  Then ``convert
    --dlcrnet`` on the archive and ``analyze`` on the clip, against the h5 DeepLabCut's
    ``video_inference`` wrote in this run."""
    import subprocess
    import sys

    import pandas as pd
    from test_dlcrnet_pipeline import CLIP, compare

    checkpoint = tmp_path / 'checkpoint'
    run_reference_script('make_dlcrnet_fixtures.py', tmp_path, '--checkpoint', str(checkpoint), '--tarball',
                         python='.ref-tf')
    manifest, live = load(tmp_path)
    assert manifest['manifest'] == golden[0]['manifest']
    regenerated = golden_state(tmp_path)
    tarball = checkpoint / 'DLC_ma_supertopview5k_resnet_50_iteration-0_shuffle-1.tar.gz'
    for source in (checkpoint / 'snapshot-0', tarball):
        state, _ = read_tf_checkpoint(source)
        assert state.keys() == regenerated.keys()
        assert all(np.array_equal(state[k], regenerated[k]) for k in state), source
    check_taps(convert(state)[0], manifest, live)
    from superanimal_jax.checkpoints.convert import convert_dlcrnet_state

    ms5_manifest = json.loads((tmp_path / 'dlcrnet_ms5_manifest.json').read_text())
    committed = json.loads((FIXTURES / 'dlcrnet_ms5_manifest.json').read_text())
    assert ms5_manifest['manifest'] == committed['manifest']
    with np.load(tmp_path / 'dlcrnet_ms5_golden.npz') as g:
        variables, config, _ = convert_dlcrnet_state(ms5_state(ms5_manifest, tmp_path))
        check_taps(variables, ms5_manifest, dict(g), config, MS5_TAPS)
    # The release's three files into one model directory; analyze picks the DLCRNet when asked.
    model = tmp_path / 'model'
    files = tmp_path / 'released'
    pose = synthetic.write_pose_checkpoints(synthetic.fixture_state(FIXTURES, 'pose'), files)['dlc3']
    detector_state = synthetic.fixture_state(FIXTURES, 'detector')
    detector = synthetic.write_detector_checkpoints(detector_state, files)['dlc3']
    cli = [sys.executable, '-m', 'superanimal_jax.cli']
    subprocess.run([*cli, 'convert', '--pose', str(pose), '--detector', str(detector), '--dlcrnet',
                    str(tarball), '--out', str(model)], check=True)
    assert {'pose', 'detector', 'dlcrnet'} <= set(json.loads((model / 'metadata.json').read_text()))
    for name, run in manifest['clip']['runs'].items():
        out = tmp_path / name
        subprocess.run([*cli, 'analyze', str(CLIP), '--model', str(model), '--out', str(out), '--network',
                        'dlcrnet', '--scales', *map(str, run['scales'])], check=True)
        compare(pd.read_hdf(out / run['h5'], 'df_with_missing'),
                pd.read_hdf(tmp_path / 'dlcrnet_clip' / f'{name}.h5', 'df_with_missing'), f'live {name}')


def test_float32_floor(golden):
    """Where float32 rounding puts the floor: TF's float32 taps and ours, each against our float64
    forward of the same weights (DeepLabCut's graph cannot be built in float64: its input
    centring is float32).  Measured with the calibrated weights (relative max-abs): on the real
    crop TF 1.4e-6 .. 6.7e-5 and ours 1.3e-6 .. 6.6e-5 (block1 .. block4: the same, ours at most
    1.05x TF's); on the random input TF 1.1e-6 .. 4.1e-6, ours 1.1e-6 .. 8.9e-6 (part_pred: 2.2x)."""
    manifest, g = golden
    variables, _ = convert(golden_state())
    every = manifest['channels_every']
    for name in ('real', 'random'):
        ours32 = jax.jit(PoseResnet().apply)(variables, g[f'inputs/{name}'])  # Jitted, as it runs.
        with jax.enable_x64(True):
            as64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
            x64 = np.asarray(g[f'inputs/{name}'], np.float64)
            ours64 = jax.jit(PoseResnet(dtype=jnp.float64).apply)(as64, x64)
            ours64 = {k: np.asarray(v) for k, v in ours64.items()}
        for tap in ('block1', 'block2', 'block3', 'block4', 'part_pred'):
            keep = slice(None, None, every if tap.startswith('block') else 1)  # Channels the golden kept.
            exact, ours = ours64[tap][..., keep], np.asarray(ours32[tap])[..., keep]
            scale = np.abs(exact).max()
            tf_error = np.abs(g[f'{name}/{tap}'] - exact).max() / scale
            our_error = np.abs(ours - exact).max() / scale
            print(f'{name}/{tap}: TF float32 {tf_error:.2e}, ours {our_error:.2e} from float64')
            assert tf_error < 1e-4 and our_error <= 2.5 * tf_error


# -- The multi-stage DLCRNet_ms5 (PoseMultiNet) ------------------------------------------------
MS5_TAPS = ('block1', 'block2', 'block3', 'block4', 'bank_1', 'bank_2', 'part_pred_s1', 'part_pred', 'scmap',
            'locref', 'pairwise_pred')


@pytest.fixture(scope='module')
def ms5(golden):
    manifest = json.loads((FIXTURES / 'dlcrnet_ms5_manifest.json').read_text())
    with np.load(FIXTURES / 'dlcrnet_ms5_golden.npz') as g:
        return manifest, dict(g)


def ms5_state(manifest, folder=FIXTURES) -> dict[str, np.ndarray]:
    """The multi-stage goldens' weights: synthetic, the backbone's calibrated BatchNorm statistics,
    checked against the sha256 ``manifest`` records."""
    assert 'state_sha256' in manifest
    return synthetic.tf_fixture_state(folder, 'dlcrnet_ms5')


def test_multistage_converts_exactly_once(ms5):
    """309 TF variables: 299 loaded, the decoder BatchNorm's 10 moving statistics skipped (TF
    normalises with batch statistics there); the architecture is read from the names."""
    from superanimal_jax.checkpoints.convert import convert_dlcrnet_state

    manifest, _ = ms5
    assert len(manifest['manifest']) == 309
    variables, config, report = convert_dlcrnet_state(ms5_state(manifest))
    assert config.multi_stage and (config.num_joints, config.num_limbs, config.locref) == (27, 351, True)
    assert report['loaded'] == 299 and [i['count'] for i in report['ignored']] == [10]
    assert len(flatten(variables)) == 299


def test_multistage_matches_tensorflow(ms5):
    """Every tap of DeepLabCut's PoseMultiNet (backbone, decoder banks after the legacy resize and
    batch-statistics BatchNorm, stage-1 and final heads, fields): the same tolerances as PoseResnet;
    measured at most 2.9e-5 relative, the score map 1.7e-4 absolute."""
    from superanimal_jax.checkpoints.convert import convert_dlcrnet_state

    manifest, g = ms5
    variables, config, _ = convert_dlcrnet_state(ms5_state(manifest))
    check_taps(variables, manifest, g, config, MS5_TAPS)


def test_multistage_float32_floor(ms5):
    """TF's float32 taps and ours against our float64 forward of the multi-stage network."""
    from superanimal_jax.checkpoints.convert import convert_dlcrnet_state
    from superanimal_jax.models.pose_resnet import network

    manifest, g = ms5
    variables, config, _ = convert_dlcrnet_state(ms5_state(manifest))
    ratios = []
    for name in ('real', 'random'):
        ours32 = jax.jit(network(config).apply)(variables, g[f'inputs/{name}'])
        with jax.enable_x64(True):
            as64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
            x64 = np.asarray(g[f'inputs/{name}'], np.float64)
            ours64 = jax.jit(network(config, jnp.float64).apply)(as64, x64)
            ours64 = {k: np.asarray(v) for k, v in ours64.items()}
        for tap in ('block4', 'bank_1', 'bank_2', 'part_pred_s1', 'part_pred', 'pairwise_pred'):
            wide = ours64[tap].shape[-1] > manifest['wide_from']
            keep = slice(None, None, manifest['channels_every'] if wide else 1)
            exact, ours = ours64[tap][..., keep], np.asarray(ours32[tap])[..., keep]
            scale = np.abs(exact).max()
            tf_error = np.abs(g[f'{name}/{tap}'] - exact).max() / scale
            our_error = np.abs(ours - exact).max() / scale
            ratios.append(our_error / tf_error)
            print(f'ms5 {name}/{tap}: TF float32 {tf_error:.2e}, ours {our_error:.2e} from float64')
            assert tf_error < 1e-4 and our_error <= 2.5 * tf_error
    print(f'ours / TF: at most {max(ratios):.2f}')


def test_multistage_model_directory(tmp_path, ms5):
    """A multi-stage model directory (``architecture: dlcrnet_ms5``) loads and predicts as the same
    weights given in memory.  (DeepLabCut's own SuperAnimal TF path cannot run this network: with
    part-affinity fields forced off its ``part_pred`` is never built.)"""
    import superanimal_jax
    from superanimal_jax.checkpoints import model_dir
    from superanimal_jax.checkpoints.convert import convert_dlcrnet_state, dlcrnet_section

    manifest, g = ms5
    state = ms5_state(manifest)
    variables, config, report = convert_dlcrnet_state(state)
    path = model_dir.write(tmp_path / 'model', {'dlcrnet': variables},
                           {'dlcrnet': dlcrnet_section(config, 'snapshot-0', source=report)})
    loaded = superanimal_jax.load(path)
    assert loaded.metadata['dlcrnet']['architecture'] == 'dlcrnet_ms5' and loaded.dlcrnet.config.multi_stage
    frames = np.clip(g['inputs/random'], 0, 255).astype(np.uint8)
    ours = loaded.predict(frames, scales=[100, 120])['keypoints']
    again = superanimal_jax.from_state_dicts(dlcrnet=state).predict(frames, scales=[100, 120])['keypoints']
    assert ours.shape == (1, 27, 3) and np.isfinite(ours).any()
    np.testing.assert_array_equal(ours, again)
