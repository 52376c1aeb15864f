"""Pose evaluation metrics exactly as DeepLabCut 3.0.2 computes them (``core.metrics.compute_metrics``):
RMSE (also over scores >= pcutoff), OKS, greedy matching, mAP and mAR; numpy only.

Parity with DeepLabCut: docs/parity/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
RMSE_OKS_SIGMA = 0.1
RMSE_OKS_THRESHOLD = 1e-6

# Per image: ground truth (G, K, 3), predictions sorted by score (P, K, 3) and their mean scores (P,).
Image = tuple[np.ndarray, np.ndarray, np.ndarray]


def _floats(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype.kind == 'f' else a.astype(np.float64)


def _n_valid(pose: np.ndarray) -> np.ndarray:
    """Valid keypoints (no NaN among x, y, v/score) per row of ``(N, K, 3)``."""
    return np.sum(~np.isnan(pose).any(axis=-1), axis=-1)


def prepare(ground_truth: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray]) -> list[Image]:
    """Checks the inputs, masks invisible/padded keypoints with NaN, drops empty rows and sorts the
    predictions of each image by mean score (images in ``ground_truth``'s order)."""
    missing, extra = set(ground_truth) - set(predictions), set(predictions) - set(ground_truth)
    if missing or extra:
        raise ValueError(f'ground truth and predictions must have the same images: {len(missing)} without '
                         f'predictions (e.g. {sorted(missing)[:3]}), {len(extra)} without ground truth '
                         f'(e.g. {sorted(extra)[:3]})')
    data, n_keypoints = [], None
    for name, gt in ground_truth.items():
        gt, pred = _floats(gt), _floats(predictions[name])
        if gt.ndim != 3 or gt.shape[-1] != 3:
            raise ValueError(f'{name}: ground truth must be (n_individuals, K, 3), got {gt.shape}')
        if pred.ndim != 3 or pred.shape[-1] < 3:
            raise ValueError(f'{name}: predictions must be (n_predictions, K, 3), got {pred.shape}')
        n_keypoints = gt.shape[1] if n_keypoints is None else n_keypoints
        if gt.shape[1] != n_keypoints or pred.shape[1] != n_keypoints:
            raise ValueError(f'{name}: expected {n_keypoints} keypoints, got ground truth {gt.shape} and '
                             f'predictions {pred.shape}')
        gt, pred = gt.copy(), pred[..., :3].copy()
        gt[gt[..., 2] <= 0] = np.nan
        pred[pred[..., 2] < 0] = np.nan
        gt, pred = gt[_n_valid(gt) > 0], pred[_n_valid(pred) > 0]
        score = np.nanmean(pred[..., 2], axis=-1)
        order = np.argsort(-score, kind='stable')
        data.append((gt, pred[order], score[order]))
    return data


def oks_matrix(gt_xy: np.ndarray, pred_xy: np.ndarray, sigma: float | np.ndarray = 0.1,
               margin: float = 0.0) -> np.ndarray:
    """OKS of every prediction ``(P, K, 2)`` against every individual ``(G, K, 2)``: ``(P, G)``."""
    pred_xy, gt_xy = np.asarray(pred_xy)[..., :2], np.asarray(gt_xy)[..., :2]
    out = np.zeros((len(pred_xy), len(gt_xy)))
    k_squared = (2 * (np.asarray(sigma) if np.ndim(sigma) else sigma)) ** 2
    for g, xy in enumerate(gt_xy):
        visible = ~np.isnan(xy).all(axis=-1)
        true = xy[visible]
        area = np.prod(np.ptp(true, axis=0) + np.spacing(1) + margin * 2) if len(true) >= 2 else np.nan
        if np.isnan(area) or np.isclose(area, 0):
            out[:, g] = np.nan
            continue
        denom = 2 * area * k_squared
        if np.ndim(denom):
            denom = denom[visible]
        # C order: a row mean then sums as the 1-D mean of one pair does (pairwise), to the bit.
        pred = np.ascontiguousarray(pred_xy[:, visible])
        pred[np.isnan(pred)] = np.inf
        out[:, g] = np.mean(np.exp(-np.sum((pred - true) ** 2, axis=-1) / denom), axis=-1)
    return out


def oks(pred_xy: np.ndarray, gt_xy: np.ndarray, sigma: float | np.ndarray = 0.1,
        margin: float = 0.0) -> float:
    """OKS of one prediction ``(K, 2)`` against one individual ``(K, 2)`` (NaN if undefined)."""
    return float(oks_matrix(np.asarray(gt_xy)[None], np.asarray(pred_xy)[None], sigma, margin)[0, 0])


def match_greedy(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching of score-sorted predictions (rows of the OKS matrix ``similarity``, ``(P, G)``)
    to individuals: the matched individual per prediction, or -1."""
    matched = np.full(len(similarity), -1)
    taken = np.zeros(similarity.shape[1], bool)
    for i, row in enumerate(similarity):
        if np.isnan(row).all():
            continue
        best = np.nanargmax(row)
        if not taken[best] and row[best] >= threshold:
            taken[best], matched[i] = True, best
    return matched


def pixel_errors(data: Sequence[Image], single_animal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distances and scores ``(M, K)`` of every kept prediction (NaN distances when unmatched)."""
    errors, scores = [], []
    for gt, pred, _ in data:
        if single_animal:
            if len(gt) > 1 or len(pred) > 1:
                raise ValueError(f'single_animal: at most one individual and one prediction per image, got '
                                 f'{len(gt)} and {len(pred)}')
            # Nothing to pair: no row at all (a NaN row would change the sums).
            if len(gt) == 0 or len(pred) == 0:
                continue
            matched = np.zeros(1, int)
        else:
            matched = match_greedy(oks_matrix(gt, pred, RMSE_OKS_SIGMA), RMSE_OKS_THRESHOLD)
        hit = matched >= 0
        error = np.linalg.norm(pred[hit, :, :2] - gt[matched[hit], :, :2], axis=-1)
        if not hit.all():  # DeepLabCut stacks a float64 NaN row for an unmatched prediction.
            full = np.full(pred.shape[:2], np.nan, np.result_type(error, np.float64))
            full[hit] = error
            error = full
        errors.append(error)
        scores.append(pred[..., 2])
    if not errors:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(errors), np.concatenate(scores)


def rmse(data: Sequence[Image], single_animal: bool,
         pcutoff: float | Sequence[float] = 0.6) -> tuple[float, float]:
    """DeepLabCut's ``rmse`` and ``rmse_pcutoff`` (mean distances, NaN when nothing counts)."""
    errors, scores = pixel_errors(data, single_animal)
    support = int(np.sum(~np.isnan(errors)))
    if support == 0:
        return float('nan'), float('nan')
    if isinstance(pcutoff, (int, float)):  # As given: a Python float compares in the scores' dtype.
        cutoff = pcutoff
    else:
        cutoff = float(pcutoff) if np.ndim(pcutoff) == 0 else np.asarray(pcutoff)[:errors.shape[1]]
    kept = errors[scores >= cutoff]
    support_cutoff = int(np.sum(~np.isnan(kept)))
    return (float(np.nansum(errors)) / support,
            float(np.nansum(kept)) / support_cutoff if support_cutoff else float('nan'))


def average_precision_recall(data: Sequence[Image], sigma: float | np.ndarray = 0.1,
                             margin: float = 0.0) -> tuple[float, float]:
    """COCO-style ``(mAP, mAR)`` in percent over OKS thresholds 0.50:0.05:0.95."""
    images, total_gt = [], 0
    for gt, pred, score in data:
        gt, keep = gt[_n_valid(gt) > 1], _n_valid(pred) > 1
        images.append((oks_matrix(gt, pred[keep], sigma, margin), score[keep]))
        total_gt += len(gt)
    scores = np.concatenate([s for _, s in images]).astype(np.float64) if images else np.zeros(0)
    if len(scores) == 0:
        return 0.0, 0.0
    order = np.argsort(-scores, kind='stable')
    precisions, recalls = [], []
    for threshold in OKS_THRESHOLDS:
        values = []
        for matrix, _ in images:
            matched = match_greedy(matrix, threshold)
            value = np.zeros(len(matched))
            value[matched >= 0] = matrix[matched >= 0, matched[matched >= 0]]
            values.append(value)
        values = np.concatenate(values)[order]
        tp, fp = np.cumsum(values >= threshold), np.cumsum(values < threshold)
        with np.errstate(divide='ignore', invalid='ignore'):  # No ground truth anywhere: recall NaN.
            recall = tp / total_gt
        precision = np.maximum.accumulate((tp / (fp + tp + np.spacing(1)))[::-1])[::-1]
        index = np.searchsorted(recall, RECALL_THRESHOLDS, side='left')
        inside = index < len(precision)
        sampled = np.zeros(len(RECALL_THRESHOLDS))
        sampled[inside] = precision[index[inside]]
        precisions.append(sampled)
        recalls.append(recall[-1])
    return 100 * float(np.mean(precisions)), 100 * float(np.mean(recalls))


def compute_metrics(ground_truth: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray], *,
                    single_animal: bool, pcutoff: float | Sequence[float] = 0.6,
                    oks_sigma: float | np.ndarray = 0.1, oks_bbox_margin: float = 0.0) -> dict[str, float]:
    """DeepLabCut's ``compute_metrics``: ``rmse``, ``rmse_pcutoff`` (pixels), ``mAP`` and ``mAR`` (0-100).

    ``ground_truth`` and ``predictions`` map the same image names to ``(n, K, 3)`` arrays (see
    docs/parity/metrics.md); ``pcutoff`` is a scalar or one value per keypoint, ``oks_sigma`` a scalar or
    ``K`` values (mAP/mAR only; RMSE matching always uses 0.1 and no margin, as DeepLabCut does).
    """
    data = prepare(ground_truth, predictions)
    n_keypoints = data[0][0].shape[1] if data else None
    if np.ndim(pcutoff) > 1 or (np.ndim(pcutoff) == 1 and n_keypoints is not None
                                and len(pcutoff) < n_keypoints):
        raise ValueError(f'pcutoff must be a scalar or have one value per keypoint ({n_keypoints}), '
                         f'got shape {np.shape(pcutoff)}')
    if np.ndim(oks_sigma):
        oks_sigma = np.asarray(oks_sigma, np.float64)
        if oks_sigma.ndim != 1 or (n_keypoints is not None and len(oks_sigma) != n_keypoints):
            raise ValueError(f'oks_sigma must be a scalar or have {n_keypoints} values, '
                             f'got {oks_sigma.shape}')
    average_precision, average_recall = average_precision_recall(data, oks_sigma, oks_bbox_margin)
    distance, distance_cutoff = rmse(data, single_animal, pcutoff)
    return {'rmse': distance, 'rmse_pcutoff': distance_cutoff, 'mAP': average_precision,
            'mAR': average_recall}
