"""DeepLabCut's TensorFlow PoseResnet (the DLCRNet release's network) in Flax, against the network
DeepLabCut 3.0.2 builds in TensorFlow 2.14 (goldens: ``tests/reference/make_dlcrnet_fixtures.py``).

The goldens hold taps of TF's network on a real openfield crop and a random input, with the
synthetic weights of ``synthetic.synthetic_tf_state`` (regenerated here from the manifest's names,
shapes and seed).  The live tier also has TF write those weights as a checkpoint, reads it with
our reader and compares every tap again.
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
from superanimal_jax.models.pose_resnet import PoseResnet

from conftest import FIXTURES, run_reference_script

GOLDENS = ('dlcrnet_manifest.json',)  # The versions the goldens were made with (conftest).
TAPS = ('block1', 'block2', 'block3', 'block4', 'part_pred', 'scmap', 'locref')
RTOL = 1e-5  # Relative to each tap's max-abs; measured: at most 1.3e-6 (float32 rounding).


def load(folder=FIXTURES):
    manifest = json.loads((folder / 'dlcrnet_manifest.json').read_text())
    with np.load(folder / 'dlcrnet_golden.npz') as g:
        return manifest, dict(g)


@pytest.fixture(scope='module')
def golden():
    return load()


def convert(state):
    shapes = jax.eval_shape(PoseResnet().init, jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    return convert_state_dict(state, pose_resnet_rules(), shapes, source='dlcrnet')


def check_taps(variables, manifest, golden) -> dict[str, float]:
    errors = {}
    apply = jax.jit(PoseResnet().apply)
    for name in ('real', 'random'):
        out = apply(variables, golden[f'inputs/{name}'])
        for tap in TAPS:
            ours, ref = np.asarray(out[tap], np.float32), golden[f'{name}/{tap}']
            if tap.startswith('block'):
                ours, scale = ours[..., ::manifest['channels_every']], float(golden[f'{name}/maxabs/{tap}'])
            else:
                scale = float(np.abs(ref).max())
            assert ours.shape == ref.shape, (name, tap)
            errors[f'{name}/{tap}'] = float(np.abs(ours - ref).max() / scale)
        # The keypoint cells (argmax of each score map) are TF's.
        scmap, ref = np.asarray(out['scmap']), golden[f'{name}/scmap']
        np.testing.assert_array_equal(scmap.reshape(-1, scmap.shape[-1]).argmax(0),
                                      ref.reshape(-1, ref.shape[-1]).argmax(0), err_msg=name)
    worst = max(errors, key=errors.get)
    print(f'worst tap {worst}: {errors[worst]:.2e} relative max-abs error')
    assert errors[worst] <= RTOL, errors
    return errors


def test_every_variable_converts_exactly_once(golden):
    manifest, _ = golden
    assert len(manifest['manifest']) == 269  # PoseResnet-50 with part_pred and locref_pred heads.
    variables, report = convert(synthetic.synthetic_tf_state(manifest['manifest'], seed=manifest['seed']))
    assert report.summary()['loaded'] == 269 and len(flatten(variables)) == 269
    kernel = variables['params']['resnet_v1_50']['block4_unit_3']['conv2']['conv']['kernel']
    assert kernel.shape == (3, 3, 512, 512)  # TF's HWIO, as it is.


def test_matches_tensorflow(golden):
    manifest, g = golden
    variables, _ = convert(synthetic.synthetic_tf_state(manifest['manifest'], seed=manifest['seed']))
    check_taps(variables, manifest, g)


def test_unknown_and_missing_variables_are_named(golden):
    manifest, _ = golden
    state = synthetic.synthetic_tf_state(manifest['manifest'], seed=manifest['seed'])
    del state['pose/locref_pred/block4/biases']
    state['decoder_filters/decoder_parallel_1/weights'] = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ConversionError) as err:
        convert(state)
    assert 'decoder_filters/decoder_parallel_1/weights' in str(err.value)
    assert 'params/locref_pred/biases' in str(err.value)


@pytest.mark.reference
def test_live_tensorflow(tmp_path, golden):
    """TF builds DeepLabCut's network afresh, writes the weights as a checkpoint (our reader loads
    it, equal to the regenerated weights) and runs it: every tap within the same tolerance."""
    run_reference_script('make_dlcrnet_fixtures.py', tmp_path, '--checkpoint', str(tmp_path),
                         python='.ref-tf')
    manifest, live = load(tmp_path)
    assert manifest['manifest'] == golden[0]['manifest']
    state, _ = read_tf_checkpoint(tmp_path / 'snapshot-0')
    regenerated = synthetic.synthetic_tf_state(manifest['manifest'], seed=manifest['seed'])
    assert state.keys() == regenerated.keys()
    assert all(np.array_equal(state[k], regenerated[k]) for k in state)
    check_taps(convert(state)[0], manifest, live)


def test_float32_floor(golden):
    """Where float32 rounding puts the floor: TF's float32 taps and ours, each against our float64
    forward of the same weights (DeepLabCut's graph cannot be built in float64: its input
    centring is float32).  Measured: TF float32 at most 8.9e-7 from float64, ours at most 1.3e-6:
    the same order, ours up to 1.6x further (our BatchNorm is not folded as TF's fused kernel is)."""
    manifest, g = golden
    variables, _ = convert(synthetic.synthetic_tf_state(manifest['manifest'], seed=manifest['seed']))
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
            assert tf_error < 2e-6 and our_error <= 2 * tf_error
