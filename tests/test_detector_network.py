"""The detector's networks (ResNet-50 + FPN, RPN head, box head) against torchvision, and the
detector converter.  Goldens: ``tests/reference/make_detector_fixtures.py`` (DeepLabCut 3.0.2 reference
environment), on synthetic weights regenerated here bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superanimal_jax.checkpoints import synthetic
from superanimal_jax.checkpoints.rules import convert_state_dict, flatten
from superanimal_jax.checkpoints.tables import detector_rules
from superanimal_jax.errors import ConversionError
from superanimal_jax.models.detector import DetectorNetwork, variables_shape

from conftest import FIXTURES

GOLDENS = ('detector_manifest.json',)  # Files recording the versions the goldens were made with (conftest).

LIMIT = 1e-4  # Relative max-abs error, per tap.


@pytest.fixture(scope='module')
def variables(detector_variables):
    return detector_variables


@pytest.fixture(scope='module')
def golden():
    with np.load(FIXTURES / 'detector_golden.npz') as g:
        return dict(g)


@pytest.fixture(scope='module')
def inputs(detector_manifest, golden):
    rois = np.random.default_rng(detector_manifest['rois']['stream']).standard_normal(
        (detector_manifest['rois']['count'], 7, 7, 256)).astype(np.float32)
    random = synthetic.random_crops(tuple(detector_manifest['random_input']['shape']),
                                    detector_manifest['random_input']['index'], detector_manifest['seed'])
    return {'random': random, 'real': golden['inputs/real']}, rois


def run(variables, images, rois, dtype=jnp.float32):
    net = DetectorNetwork(dtype=dtype)
    taps = jax.jit(lambda v, x: net.apply(v, x, method='features'))(variables, images)
    logits, deltas = jax.jit(lambda v, r: net.apply(v, r, method='classify'))(variables, rois)
    return {**taps, 'class_logits': logits, 'box_deltas': deltas}


def test_converter_consumes_all_404_keys(detector_manifest, detector_state):
    assert len(detector_manifest['manifest']) == 404
    _, report = convert_state_dict(detector_state, detector_rules(), variables_shape(), source='detector')
    assert len(report.loaded) + sum(len(k) for k in report.ignored.values()) == 404
    assert len(report.loaded) == len(flatten(variables_shape()))


def test_converter_names_a_wrong_flatten_size(detector_state):
    bad = {**detector_state, 'model.roi_heads.box_head.5.weight': np.zeros((1024, 256 * 6 * 6), np.float32)}
    with pytest.raises(ConversionError, match=r'box_head\.5\.weight.*expected 12544 inputs'):
        convert_state_dict(bad, detector_rules(), variables_shape(), source='detector')


def test_nchw_flatten_permutation_puts_weights_where_torch_reads_them(detector_state, variables):
    """Our NHWC-flattened input times the converted kernel equals torch's NCHW-flattened product."""
    w = detector_state['model.roi_heads.box_head.5.weight']
    x = np.random.default_rng(0).standard_normal((2, 256, 7, 7)).astype(np.float64)
    theirs = x.reshape(2, -1) @ w.T.astype(np.float64)
    kernel = np.asarray(variables['params']['roi_heads']['box_head']['5']['kernel'], np.float64)
    ours = x.transpose(0, 2, 3, 1).reshape(2, -1) @ kernel
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('name', ['random', 'real'])
def test_taps_match_torchvision(name, variables, golden, inputs, detector_manifest):
    images, rois = inputs
    taps = run(variables, images[name], rois)
    errors = {}
    for key in [k for k in golden if k.startswith(f'{name}/') and '/maxabs/' not in k]:
        tap = key.removeprefix(f'{name}/')
        ref = golden[key]
        ours = np.asarray(taps[tap])
        if tap.startswith(('C', 'fpn/')):
            ours = ours[:, ::detector_manifest['subsample'], ::detector_manifest['subsample']]
            scale = float(golden[f'{name}/maxabs/{tap}'])
        else:
            scale = float(np.abs(ref).max())
        assert ours.shape == ref.shape, tap
        errors[tap] = float(np.abs(ours - ref).max() / scale)
    print(f'\n{name}: ' + ', '.join(f'{t} {e:.1e}' for t, e in errors.items()))
    assert max(errors.values()) <= LIMIT, errors


def test_float64_matches_torchvision(variables, inputs):
    images, rois = inputs
    with np.load(FIXTURES / 'detector_golden_float64.npz') as golden64, jax.enable_x64(True):
        v64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
        taps = run(v64, images['random'].astype(np.float64), rois.astype(np.float64), jnp.float64)
        for tap in [k for k in golden64.files if '/' not in k]:  # Per-frame detections are keyed 'frame/...'.
            ref = golden64[tap]
            error = np.abs(np.asarray(taps[tap]) - ref).max() / np.abs(ref).max()
            print(f'{tap}: float64 relative error {error:.1e}')
            assert error <= 1e-10, (tap, error)
