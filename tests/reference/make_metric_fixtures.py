"""Golden evaluation metrics from DeepLabCut 3.0.2's own ``compute_metrics`` (run inside .ref/).

    .ref/bin/python tests/reference/make_metric_fixtures.py --out tests/fixtures

Writes ``metrics_golden.npz`` (about 460 KB, a second plus DeepLabCut's 8 s import), consumed by
``tests/test_metrics.py``.  Every expected value comes from ``deeplabcut.core.metrics.compute_metrics``
called as the training loop and ``evaluate_network`` call it (``compute_detection_rmse=False``),
plus, per image, ``compute_oks_matrix`` on ``prepare_evaluation_data``'s output (the scenario's
sigma and margin) and the ``match_greedy_oks`` result RMSE uses (sigma 0.1, OKS >= 1e-6).  Inputs
are seeded numpy (``SEED``), 27 keypoints unless noted:

* ``single_animal``: one mouse per image, one prediction, direct pairing; invisible (v 0/-1) and
  -1-padded keypoints, NaN coordinates, scores on and around the 0.6 cutoff, an image with no
  visible GT, one with only padding, one prediction with a single valid keypoint.
* ``multi_animal``: 1-4 mice per image, 10 prediction rows (-1 padded, as SuperAnimal's
  ``max_individuals``): noisy copies at very different noise levels, near-duplicates (just above
  and below the original's score), false positives, NaN coordinates with a positive score, mice
  with 0 or 1 visible keypoint, an image with no prediction rows, one with no GT.
* ``pcutoff_per_bodypart`` / ``pcutoff_longer``: another draw with one cutoff per keypoint (27, and
  29 which DeepLabCut cuts to 27).  ``sigma_margin``: ``oks_sigma=0.05``, ``oks_bbox_margin=10``, with
  one far prediction that RMSE matches only because it always uses sigma 0.1 and no margin.
  ``sigma_per_keypoint``: a numpy array of 27 sigmas.
* ``float32``: a multi-animal draw in float32 with ``pcutoff=0.7`` and scores exactly
  ``float32(0.7)`` (below the double 0.7; DeepLabCut compares in float32, so they count).
* ``degenerate`` (6 keypoints): GT on a horizontal line or on one point (zero OKS area), a NaN x
  with v > 0, v = NaN, predictions with NaN scores but finite xy, scores exactly 0, tied mean
  scores, equal OKS to two GT, a best GT already taken while the second best is free.
* ``perfect``, ``no_predictions``, ``no_ground_truth``: the limits.
* ``single_animal_two_mice``: ``single_animal=True`` with two visible mice: DeepLabCut raises
  (``expected/error`` holds the exception's type name).

Layout: ``scenarios`` (names); per scenario ``<s>/images``, ``<s>/gt/<i>``, ``<s>/pred/<i>`` (or
``<s>/same_inputs_as``, another scenario's name), ``<s>/params`` (JSON), ``<s>/expected/{rmse,
rmse_pcutoff, mAP, mAR}`` or ``<s>/expected/error``, ``<s>/oks/<i>``, ``<s>/rmse_match/<i>`` (matched
GT per sorted prediction, -1 if none), ``<s>/prepared/{gt, pred}/<i>`` for the ``PREPARED`` scenarios;
``versions`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

import _reference  # noqa: F401  (puts the repository on sys.path)

SEED = 0
K = 27
ROWS = 10  # Prediction rows per image (SuperAnimal's max_individuals).
FRAME = np.array([640.0, 480.0])
PREPARED = ('multi_animal', 'float32', 'degenerate')  # Scenarios whose prepared data are stored.


def mouse(rng, k: int = K) -> np.ndarray:
    """(k, 2) keypoints scattered around a random centre."""
    return rng.uniform(60, FRAME - 60) + rng.normal(0, 25, (k, 2))


def ground_truth(rng, mice: list[np.ndarray], p_missing: float = 0.15) -> np.ndarray:
    gt = np.zeros((len(mice), mice[0].shape[0] if mice else K, 3))
    for i, xy in enumerate(mice):
        gt[i, :, :2], gt[i, :, 2] = xy, rng.choice([1.0, 2.0], len(xy))
        missing = rng.random(len(xy)) < p_missing
        gt[i, missing, 2] = rng.choice([0.0, -1.0], missing.sum())
        gt[i, missing & (rng.random(len(xy)) < 0.5), :2] = np.nan  # Unlabelled: NaN or stale coordinates.
    return gt


def prediction(rng, xy: np.ndarray, sd: float, score: float = 0.65) -> np.ndarray:
    k = len(xy)
    pred = np.concatenate([xy + rng.normal(0, sd, (k, 2)),
                           np.clip(rng.normal(score, 0.12, (k, 1)), 0, 1)], -1)
    pred[rng.random(k) < 0.15, 2] = 0.6  # Exactly on the default cutoff.
    pred[rng.random(k) < 0.03] = -1.0  # Padded keypoints.
    pred[rng.random(k) < 0.02, :2] = np.nan  # NaN coordinates with a positive score.
    return pred


def padded(rows: list[np.ndarray], k: int = K, n: int = ROWS) -> np.ndarray:
    out = -np.ones((n, k, 3))
    for i, row in enumerate(rows[:n]):
        out[i] = row
    return out


def multi_animal(rng, n_images: int, dtype=np.float64) -> tuple[dict, dict]:
    gts, preds = {}, {}
    for i in range(n_images):
        name = f'labeled-data/m{i % 3}s1/img{i:04d}.png'
        mice = [mouse(rng) for _ in range(rng.integers(1, 5) if i != 1 else 3)]
        gt = ground_truth(rng, mice)
        if i == 1:  # One mouse with a single visible keypoint, one with none.
            gt[1, 1:, 2], gt[2, :, 2] = 0.0, 0.0
        rows = []
        for xy in mice:
            if rng.random() < 0.9:
                rows.append(prediction(rng, xy, sd=rng.choice([0.5, 2.0, 4.0, 8.0, 15.0, 40.0])))
                if rng.random() < 0.35:  # Near-duplicate, just above or below the original's score.
                    dup = rows[-1].copy()
                    dup[:, :2] += rng.normal(0, 0.5, dup[:, :2].shape)
                    dup[dup[:, 2] >= 0, 2] += rng.choice([-0.01, 0.005])
                    rows.append(dup)
        for _ in range(rng.integers(0, 3)):  # False positives.
            rows.append(prediction(rng, mouse(rng), sd=0, score=0.45))
        if rows and rng.random() < 0.2:  # A prediction with a single valid keypoint.
            rows[0][1:] = -1.0
        order = rng.permutation(len(rows))
        pred = padded([rows[j] for j in order])
        if i == 0:
            pred = np.zeros((0, K, 3))  # No prediction rows at all.
        if i == 2:
            gt = np.zeros((0, K, 3))  # No ground truth, only (false) predictions.
        gts[name], preds[name] = gt.astype(dtype), pred.astype(dtype)
    return gts, preds


def single_animal(rng, n_images: int) -> tuple[dict, dict]:
    gts, preds = {}, {}
    for i in range(n_images):
        xy = mouse(rng)
        gt, pred = ground_truth(rng, [xy]), prediction(rng, xy, sd=rng.choice([1.0, 3.0, 10.0]))[None]
        if i == 3:
            gt[..., 2] = 0.0  # Nothing labelled.
        if i == 4:
            pred[:] = -1.0  # Nothing predicted.
        if i == 5:
            pred[0, 1:] = -1.0  # One valid keypoint: counts in RMSE, not in mAP.
        gts[f'img{i:04d}.png'], preds[f'img{i:04d}.png'] = gt, pred
    return gts, preds


def degenerate() -> tuple[dict, dict]:
    k = 6
    line = np.stack([np.linspace(100, 150, k), np.full(k, 200.0)], -1)
    point = np.full((k, 2), 300.0)
    base = np.stack([np.linspace(50, 90, k), np.array([40, 52, 47, 61, 55, 70.0])], -1)
    vis = lambda xy, v=2.0: np.concatenate([xy, np.full((len(xy), 1), v)], -1)  # noqa: E731
    scored = lambda xy, s: np.concatenate([xy, np.broadcast_to(np.float64(s), (len(xy), 1))], -1)  # noqa: E731

    a = {'gt': np.stack([vis(line), vis(point)]),
         'pred': padded([scored(line + 1, 0.9), scored(point + 1, 0.8)], k, 3)}

    partial = vis(base)
    partial[2, 0] = np.nan  # x NaN, y and v fine: visible for OKS, NaN box.
    v_nan = vis(base + 200)
    v_nan[1, 2] = np.nan  # v NaN keeps the coordinates.
    nan_score = scored(base + 201, 0.7)
    nan_score[[0, 3], 2] = np.nan  # Finite xy, NaN score.
    zero = scored(base + 1, 0.0)  # Scores exactly 0 are kept.
    b = {'gt': np.stack([partial, v_nan]), 'pred': padded([zero, nan_score], k, 4)}

    # Two GT side by side, equidistant prediction with tied scores: first GT index and input order win.
    left, right = base + [0, 0], base + [30, 0]
    mid = scored(base + [15, 0], 0.5)
    c = {'gt': np.stack([vis(left), vis(right)]), 'pred': np.stack([mid, mid.copy(), scored(right + 2, 0.5)])}

    # Best GT taken by a higher-scored prediction; the second-best GT is free but not used (no fall-back).
    near, far = base + [200, 200], base + [200, 236]
    d = {'gt': np.stack([vis(near), vis(far)]),
         'pred': np.stack([scored(near + 0.5, 0.9), scored(near + [0, 12], 0.8), scored(far + 1, 0.1)])}

    # One visible keypoint: kept for RMSE matching data but NaN OKS; a prediction may still not match.
    one = vis(base + [400, 0])
    one[1:, 2] = 0.0
    e = {'gt': one[None], 'pred': scored(base + [400, 1], 0.95)[None]}
    cases = {'lines.png': a, 'nan.png': b, 'ties.png': c, 'taken.png': d, 'single_keypoint.png': e}
    return {n: c['gt'] for n, c in cases.items()}, {n: c['pred'] for n, c in cases.items()}


def far_match(rng) -> tuple[np.ndarray, np.ndarray]:
    """A mouse and a prediction shifted so that OKS is about 1e-3 at sigma 0.1 without margin (matched for
    RMSE) but about 1e-8 at sigma 0.05 with margin 10 (it would not be, were those passed on)."""
    gt = ground_truth(rng, [mouse(rng)], p_missing=0)
    area = np.prod(np.ptp(gt[0, :, :2], axis=0))
    pred = gt.copy()
    pred[..., :2] += np.sqrt(0.55 * area / 2)
    pred[..., 2] = 0.8
    return gt, pred


def perfect(rng) -> tuple[dict, dict]:
    gts, preds = {}, {}
    for i in range(6):
        gt = ground_truth(rng, [mouse(rng) for _ in range(rng.integers(1, 4))], p_missing=0)
        pred = gt.copy()
        pred[..., 2] = 0.9
        gts[f'img{i}.png'], preds[f'img{i}.png'] = gt, padded(list(pred))
    return gts, preds


def scenarios() -> dict[str, dict]:
    rng = np.random.default_rng(SEED)
    multi = dict(single_animal=False, pcutoff=0.6, oks_sigma=0.1, oks_bbox_margin=0)
    out = {'single_animal': dict(zip(('gt', 'pred'), single_animal(rng, 20)),
                                 **dict(multi, single_animal=True)),
           'multi_animal': dict(zip(('gt', 'pred'), multi_animal(rng, 18)), **multi)}
    gt, pred = multi_animal(rng, 14)
    cutoffs = np.round(rng.uniform(0.3, 0.9, K + 2), 3).tolist()
    out['pcutoff_per_bodypart'] = dict(gt=gt, pred=pred, **dict(multi, pcutoff=cutoffs[:K]))
    out['pcutoff_longer'] = dict(gt=gt, pred=pred, same_inputs_as='pcutoff_per_bodypart',
                                 **dict(multi, pcutoff=cutoffs))
    gt, pred = multi_animal(rng, 14)
    gt['far.png'], pred['far.png'] = far_match(rng)
    out['sigma_margin'] = dict(gt=gt, pred=pred, **dict(multi, oks_sigma=0.05, oks_bbox_margin=10))
    sigmas = np.round(rng.uniform(0.025, 0.107, K), 3).tolist()
    out['sigma_per_keypoint'] = dict(gt=gt, pred=pred, same_inputs_as='sigma_margin',
                                     **dict(multi, oks_sigma=sigmas))
    gt, pred = multi_animal(rng, 14, np.float32)
    for p in pred.values():
        p[..., 2][(p[..., 2] > 0.62) & (p[..., 2] < 0.75)] = np.float32(0.7)
    out['float32'] = dict(gt=gt, pred=pred, **dict(multi, pcutoff=0.7))
    out['degenerate'] = dict(zip(('gt', 'pred'), degenerate()), **multi)
    out['perfect'] = dict(zip(('gt', 'pred'), perfect(rng)), **multi)
    gt, pred = multi_animal(rng, 5)
    out['no_predictions'] = dict(gt=gt, pred={n: -np.ones_like(p) for n, p in pred.items()}, **multi)
    out['no_ground_truth'] = dict(gt={n: np.where(np.arange(3) == 2, 0.0, g) for n, g in gt.items()},
                                  pred=pred, **multi)
    two = ground_truth(rng, [mouse(rng), mouse(rng)], p_missing=0)
    out['single_animal_two_mice'] = dict(gt={'a.png': two}, pred={'a.png': padded([two[0]], n=1)},
                                         **dict(multi, single_animal=True))
    return out


def matched_indices(gt: np.ndarray, matches) -> np.ndarray:
    """Which GT row each PotentialMatch holds (by memory address: DeepLabCut stores a view)."""
    rows = [g.__array_interface__['data'][0] for g in gt]
    return np.array([-1 if m.gt is None else rows.index(m.gt.__array_interface__['data'][0])
                     for m in matches], np.int64)


def main() -> None:
    import deeplabcut
    from deeplabcut.core.metrics import compute_metrics, prepare_evaluation_data
    from deeplabcut.core.metrics.distance_metrics import compute_oks_matrix
    from deeplabcut.core.metrics.matching import match_greedy_oks

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True)
    args = parser.parse_args()
    out = {}
    cases = scenarios()
    for name, case in cases.items():
        gt, pred = case['gt'], case['pred']
        params = {k: case[k] for k in ('single_animal', 'pcutoff', 'oks_sigma', 'oks_bbox_margin')}
        sigma = (np.array(params['oks_sigma']) if isinstance(params['oks_sigma'], list)
                 else params['oks_sigma'])
        out[f'{name}/params'] = np.str_(json.dumps(params))
        if 'same_inputs_as' in case:
            out[f'{name}/same_inputs_as'] = np.str_(case['same_inputs_as'])
        else:
            out[f'{name}/images'] = np.array(list(gt))
            for i, image in enumerate(gt):
                out[f'{name}/gt/{i}'], out[f'{name}/pred/{i}'] = gt[image], pred[image]
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)  # 0 / 0 recall when there is no GT at all.
            try:
                result = compute_metrics(gt, pred, single_animal=params['single_animal'],
                                         pcutoff=params['pcutoff'],
                                         oks_bbox_margin=params['oks_bbox_margin'], oks_sigma=sigma,
                                         compute_detection_rmse=False)
            except ValueError as error:
                out[f'{name}/expected/error'] = np.str_(type(error).__name__)
                print(f'{name}: DeepLabCut raised {error!r}')
                continue
        for key in ('rmse', 'rmse_pcutoff', 'mAP', 'mAR'):
            out[f'{name}/expected/{key}'] = np.float64(result[key])
        for i, (g, p) in enumerate(prepare_evaluation_data(gt, pred)):
            if name in PREPARED:
                out[f'{name}/prepared/gt/{i}'], out[f'{name}/prepared/pred/{i}'] = g, p
            out[f'{name}/oks/{i}'] = compute_oks_matrix(g[:, :, :2], p[:, :, :2], oks_sigma=sigma,
                                                        oks_bbox_margin=params['oks_bbox_margin'])
            rmse_oks = compute_oks_matrix(g[:, :, :2], p[:, :, :2], oks_sigma=0.1)
            out[f'{name}/rmse_match/{i}'] = matched_indices(
                g, match_greedy_oks(g, p, rmse_oks, oks_threshold=1e-6))
        print(name, {k: round(float(v), 6) for k, v in result.items()})
    out['scenarios'] = np.array(list(cases))
    out['versions'] = np.str_(json.dumps({'deeplabcut': deeplabcut.__version__, 'numpy': np.__version__}))
    np.savez_compressed(f'{args.out}/metrics_golden.npz', **out)


if __name__ == '__main__':
    main()
