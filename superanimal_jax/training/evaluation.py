"""Evaluation as DeepLabCut defines it (top-down, ground-truth boxes) and replay pseudo-labels,
both through the inference runtime (:func:`superanimal_jax.inference.topdown.pose_on_boxes`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from superanimal_jax.constants import BBOX_MARGIN
from superanimal_jax.errors import ModelDirError, ProjectError
from superanimal_jax.inference.topdown import pose_on_boxes
from superanimal_jax.io.images import read_image
from superanimal_jax.training import metrics as metrics_lib
from superanimal_jax.training.data import bbox_from_keypoints
from superanimal_jax.training.detector_evaluation import detector_ground_truth, evaluate_detector
from superanimal_jax.training.modes import Task, evaluation_task, labelled_individuals
from superanimal_jax.training.project import Project, Split, read_project


def evaluate_frames(pose, project: Project, frames: Sequence[int], task: Task, *,
                    bbox_margin: int = BBOX_MARGIN, pcutoff: float = 0.6, single_animal: bool = False,
                    cache: dict | None = None, chunk: int = 8, crop_size=(256, 256)) -> dict[str, float]:
    """DeepLabCut's top-down evaluation of ``pose`` (a :class:`~superanimal_jax.inference.pose.PoseEstimator`)
    with ground-truth boxes: RMSE (mean pixel distance), RMSE over predictions with score >=
    pcutoff, mAP and mAR (OKS, sigma 0.1).  ``cache`` keeps the frames read, across calls."""
    cache = {} if cache is None else cache
    ground_truth, images, boxes, names = {}, [], [], []
    for f in frames:
        if f not in cache:
            cache[f] = read_image(project.image_path(f))
        image = cache[f]
        h, w = image.shape[:2]
        labels = [lab for _, lab in labelled_individuals(project, f, task, h, w)]
        if not labels:
            continue
        names.append(project.images[f])
        ground_truth[project.images[f]] = np.stack(labels)
        images.append(image)
        boxes.append(np.stack([bbox_from_keypoints(lab, h, w, bbox_margin) for lab in labels]))
    if not names:
        raise ProjectError('no labelled frames to evaluate')
    predicted = pose_on_boxes(pose, images, boxes, chunk=chunk, crop_size=crop_size)
    predictions = {n: p[:, task.channels] for n, p in zip(names, predicted)}
    return metrics_lib.compute_metrics(ground_truth, predictions, single_animal=single_animal,
                                       pcutoff=pcutoff)


def pseudo_labels(pose, project: Project, frames, task: Task, *, bbox_margin: int = BBOX_MARGIN) -> dict:
    """Memory replay: the SuperAnimal model's keypoints ``(27, 3)`` on each labelled box,
    ``{(frame, individual): keypoints}``."""
    out = {}
    for f in frames:
        image = read_image(project.image_path(f))
        h, w = image.shape[:2]
        found = labelled_individuals(project, f, task, h, w)
        keys = [(f, i) for i, _ in found]
        boxes = [bbox_from_keypoints(labels, h, w, bbox_margin) for _, labels in found]
        if keys:
            for key, kp in zip(keys, pose_on_boxes(pose, [image], [np.stack(boxes)], chunk=8)[0]):
                out[key] = kp
    return out


def evaluate(project: str | Path | Project, model: str | Path, *, frames: str | Sequence[int] = 'all',
             split: str | Path | None = None, bbox_margin: int = BBOX_MARGIN, pcutoff: float | None = None,
             single_animal: bool | None = None, box_score_threshold: float = 0.01) -> dict:
    """DeepLabCut's evaluation of a model directory on a project's labelled frames.

    The model's keypoints are matched to project bodyparts by name, or through the project's
    conversion table for a SuperAnimal model.  ``frames``: 'all', or indices; with ``split`` (a
    ``split.json`` written by :func:`train`) the train and test sets are reported apart.
    ``pcutoff`` defaults to the project's.  Single-animal projects pair predictions directly
    (``single_animal`` defaults to that, as in DeepLabCut's ``evaluate_network``); the training
    loop always matches by OKS, as DeepLabCut's does.  A model with a detector also gets box
    mAP/mAR (``<set>.box.mAP@50:95`` ...) on full-resolution frames, detections scored above
    ``box_score_threshold``, ground truth from the keypoints plus ``bbox_margin``.
    """
    from superanimal_jax.inference.model import load  # The top of the inference layer, loaded at run time.

    project = project if isinstance(project, Project) else read_project(project)
    loaded = load(model)
    if loaded.pose is None and loaded.detector is None:
        raise ModelDirError(f'{model} has neither a pose network nor a detector')
    task = evaluation_task(project, loaded.pose.keypoint_names) if loaded.pose is not None else None
    if pcutoff is None:
        pcutoff = project.config.get('pcutoff', 0.6)
        pcutoff = [float(p) for p in pcutoff] if isinstance(pcutoff, (list, tuple)) else float(pcutoff)
    if single_animal is None:
        single_animal = not project.multi_animal
    options = dict(bbox_margin=bbox_margin, pcutoff=pcutoff, single_animal=single_animal, cache={})
    if split is not None:
        s = Split.from_json(json.loads(Path(split).read_text()), project)
        sets = {'train': s.train, 'test': s.test}
    else:
        sets = {'all': tuple(range(len(project.images))) if frames == 'all' else tuple(frames)}
    results = {}
    boxes = None
    if loaded.detector is not None:  # DeepLabCut scores detectors with their training threshold, 0.01.
        from superanimal_jax.inference.detector import Detector

        boxes = Detector(loaded.detector.variables, score_threshold=box_score_threshold,
                         mesh=loaded.detector.mesh)
    for name, indices in sets.items():
        if not indices:
            continue
        if task is not None:
            m = evaluate_frames(loaded.pose, project, indices, task, **options)
            results.update({f'{name}.{k}': float(v) for k, v in m.items()})
        if boxes is not None:
            m = evaluate_detector(boxes, detector_ground_truth(project, indices, bbox_margin))
            results.update({f'{name}.box.{k}': float(v) for k, v in m.items()})
    return results
