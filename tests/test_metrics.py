"""Evaluation metrics against DeepLabCut 3.0.2's own ``compute_metrics`` (goldens from
``tests/reference/make_metric_fixtures.py``): every metric bit for bit (OKS matrices to 4 ulp: numpy's
float64 kernels differ in the last bit between CPUs), plus properties and input checks.

The ``reference`` test reruns the fixture script live in ``.ref/`` (about 15 s) and compares both
its file with the stored one and our metrics with its values.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from superanimal_jax.training import metrics

from conftest import FIXTURES, run_reference_script

GOLDENS = ('metrics_golden.npz',)  # Files recording the versions the goldens were made with (conftest).

GOLDEN = FIXTURES / 'metrics_golden.npz'
with np.load(GOLDEN) as _g:
    SCENARIOS = [str(s) for s in _g['scenarios']]
KEYS = ('rmse', 'rmse_pcutoff', 'mAP', 'mAR')


@pytest.fixture(scope='module')
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as g:
        return dict(g)


def scenario(golden: dict, name: str) -> tuple[dict, dict, dict]:
    """The scenario's (ground truth, predictions, compute_metrics keyword arguments)."""
    source = str(golden[f'{name}/same_inputs_as']) if f'{name}/same_inputs_as' in golden else name
    images = [str(n) for n in golden[f'{source}/images']]
    gt = {n: golden[f'{source}/gt/{i}'] for i, n in enumerate(images)}
    pred = {n: golden[f'{source}/pred/{i}'] for i, n in enumerate(images)}
    params = json.loads(str(golden[f'{name}/params']))
    if isinstance(params['oks_sigma'], list):  # DeepLabCut was given a numpy array.
        params['oks_sigma'] = np.array(params['oks_sigma'])
    return gt, pred, params


def check_metrics(golden: dict, name: str) -> None:
    gt, pred, params = scenario(golden, name)
    if f'{name}/expected/error' in golden:
        assert str(golden[f'{name}/expected/error']) == 'ValueError'
        with pytest.raises(ValueError):
            metrics.compute_metrics(gt, pred, **params)
        return
    result = metrics.compute_metrics(gt, pred, **params)
    assert set(result) == set(KEYS)
    for key in KEYS:  # Exact (NaN where DeepLabCut gives NaN).
        np.testing.assert_array_equal(result[key], golden[f'{name}/expected/{key}'], err_msg=f'{name}: {key}')


@pytest.mark.parametrize('name', SCENARIOS)
def test_compute_metrics_is_deeplabcut(golden, name):
    check_metrics(golden, name)


@pytest.mark.parametrize('name', [s for s in SCENARIOS if s != 'single_animal_two_mice'])
def test_oks_and_rmse_matching_are_deeplabcut(golden, name):
    gt, pred, params = scenario(golden, name)
    data = metrics.prepare(gt, pred)
    for i, (g, p, _) in enumerate(data):
        if f'{name}/prepared/gt/{i}' in golden:
            for ours, key in ((g, 'gt'), (p, 'pred')):
                ref = golden[f'{name}/prepared/{key}/{i}']
                assert ours.dtype == ref.dtype
                np.testing.assert_array_equal(ours, ref, err_msg=f'{name} image {i}: prepared {key}')
        matrix = metrics.oks_matrix(g, p, params['oks_sigma'], params['oks_bbox_margin'])
        # numpy's float64 kernels differ in the last bit between CPUs (the goldens were made on an
        # AVX-512 machine; on AVX2 a few OKS values differ by 1 ulp): bit-exact there, 4 ulp here.
        np.testing.assert_allclose(matrix, golden[f'{name}/oks/{i}'], rtol=4 * np.finfo(np.float64).eps,
                                   atol=0, err_msg=f'{name} image {i}: OKS')
        matched = metrics.match_greedy(metrics.oks_matrix(g, p), metrics.RMSE_OKS_THRESHOLD)
        np.testing.assert_array_equal(matched, golden[f'{name}/rmse_match/{i}'], err_msg=f'{name} image {i}')


def test_goldens_cover_the_quirks(golden):
    # The scenarios must tell the quirks apart: RMSE matching ignores oks_sigma / margin, float32
    # stays float32, a prediction whose best GT is taken gets no second choice.
    gt, pred, params = scenario(golden, 'sigma_margin')
    data = metrics.prepare(gt, pred)
    ours = [metrics.match_greedy(metrics.oks_matrix(g, p, 0.05, 10), 1e-6) for g, p, _ in data]
    ref = [golden[f'sigma_margin/rmse_match/{i}'] for i in range(len(data))]
    assert any((a != b).any() for a, b in zip(ours, ref))
    gt, pred, params = scenario(golden, 'float32')
    as64 = metrics.compute_metrics({k: v.astype(np.float64) for k, v in gt.items()},
                                   {k: v.astype(np.float64) for k, v in pred.items()}, **params)
    assert as64['rmse_pcutoff'] != golden['float32/expected/rmse_pcutoff']
    taken = next(i for i, n in enumerate(golden['degenerate/images']) if str(n) == 'taken.png')
    oks = golden[f'degenerate/oks/{taken}']
    assert (golden[f'degenerate/rmse_match/{taken}'][1] == -1 and np.nanargmax(oks[1]) == 0
            and oks[1, 1] > 1e-6)


def test_perfect_predictions():
    rng = np.random.default_rng(1)
    gt = {f'{i}.png': np.concatenate([rng.uniform(0, 500, (3, 27, 2)), np.ones((3, 27, 1))], -1)
          for i in range(4)}
    pred = {k: np.concatenate([v[..., :2], np.full((3, 27, 1), 0.9)], -1) for k, v in gt.items()}
    result = metrics.compute_metrics(gt, pred, single_animal=False)
    assert result == {'rmse': 0.0, 'rmse_pcutoff': 0.0, 'mAP': 100.0, 'mAR': 100.0}
    single = {k: v[:1] for k, v in gt.items()}
    result = metrics.compute_metrics(single, {k: v[:1] for k, v in pred.items()}, single_animal=True,
                                     pcutoff=0.95)
    assert result['rmse'] == 0.0 and np.isnan(result['rmse_pcutoff']) and result['mAP'] == 100.0
    assert metrics.oks(gt['0.png'][0, :, :2], gt['0.png'][0, :, :2]) == 1.0


def test_rmse_is_a_mean_distance_and_inputs_are_untouched():
    rng = np.random.default_rng(2)
    gt = {'a.png': np.concatenate([rng.uniform(0, 100, (1, 8, 2)), np.ones((1, 8, 1))], -1)}
    pred = {'a.png': np.concatenate([gt['a.png'][..., :2] + rng.normal(0, 3, (1, 8, 2)),
                                     rng.uniform(0, 1, (1, 8, 1))], -1)}
    gt['a.png'][0, 0, 2], pred['a.png'][0, 1, 2] = 0, -1  # Invisible, padded: neither counts.
    before = [gt['a.png'].copy(), pred['a.png'].copy()]
    result = metrics.compute_metrics(gt, pred, single_animal=True, pcutoff=0.5)
    distance = np.linalg.norm(pred['a.png'][0, 2:, :2] - gt['a.png'][0, 2:, :2], axis=-1)
    confident = pred['a.png'][0, 2:, 2] >= 0.5
    assert result['rmse'] == pytest.approx(distance.mean(), rel=1e-15)
    assert result['rmse'] != pytest.approx(np.sqrt(np.mean(distance ** 2)))
    assert result['rmse_pcutoff'] == pytest.approx(distance[confident].mean(), rel=1e-15)
    np.testing.assert_array_equal(gt['a.png'], before[0])
    np.testing.assert_array_equal(pred['a.png'], before[1])
    assert metrics.oks(np.full((8, 2), np.nan), gt['a.png'][0, :, :2]) == 0.0  # NaN: infinitely far.


@pytest.mark.parametrize('change, match', [
    (lambda gt, pred: (gt, {**pred, 'b.png': pred['a.png']}), 'same images'),
    (lambda gt, pred: ({'a.png': gt['a.png'][0]}, pred), 'ground truth must be'),
    (lambda gt, pred: (gt, {'a.png': pred['a.png'][..., :2]}), 'predictions must be'),
    (lambda gt, pred: (gt, {'a.png': pred['a.png'][:, :3]}), 'expected 4 keypoints'),
])
def test_bad_inputs_raise(change, match):
    gt = {'a.png': np.ones((2, 4, 3))}
    pred = {'a.png': np.ones((3, 4, 3))}
    with pytest.raises(ValueError, match=match):
        metrics.compute_metrics(*change(gt, pred), single_animal=False)


def test_bad_options_raise():
    gt, pred = {'a.png': np.ones((2, 4, 3))}, {'a.png': np.ones((3, 4, 3))}
    with pytest.raises(ValueError, match='pcutoff'):
        metrics.compute_metrics(gt, pred, single_animal=False, pcutoff=[0.5, 0.6])
    with pytest.raises(ValueError, match='oks_sigma'):
        metrics.compute_metrics(gt, pred, single_animal=False, oks_sigma=np.full(3, 0.1))
    with pytest.raises(ValueError, match='single_animal'):
        metrics.compute_metrics(gt, pred, single_animal=True)


@pytest.mark.reference
def test_live_deeplabcut(golden, tmp_path):
    run_reference_script('make_metric_fixtures.py', tmp_path)
    with np.load(tmp_path / 'metrics_golden.npz') as g:
        live = dict(g)
    assert set(live) == set(golden)  # The stored goldens are what the script makes today ...
    for key, value in live.items():
        if '/oks/' in key:  # ... to the last bit but OKS, whose float64 kernels round by CPU.
            np.testing.assert_allclose(value, golden[key], rtol=4 * np.finfo(np.float64).eps, atol=0,
                                       err_msg=key)
        elif key != 'versions':
            np.testing.assert_array_equal(value, golden[key], err_msg=key)
    for name in (str(s) for s in live['scenarios']):
        check_metrics(live, name)
        if name == 'single_animal_two_mice' or f'{name}/expected/error' in live:
            continue
        gt, pred, params = scenario(live, name)  # On this machine, OKS too is bit for bit.
        for i, (g, p, _) in enumerate(metrics.prepare(gt, pred)):
            if f'{name}/oks/{i}' in live:
                ours = metrics.oks_matrix(g, p, params['oks_sigma'], params['oks_bbox_margin'])
                np.testing.assert_array_equal(ours, live[f'{name}/oks/{i}'], err_msg=f'{name} image {i}')
