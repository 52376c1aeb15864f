"""What a fine-tuning run trains, by mode: the head's starting weights and the labels per channel.

``convert`` slices the 27-channel head to the project's bodyparts (conversion table), ``replay``
keeps 27 outputs and fills unlabelled keypoints from the model's own predictions, ``transfer``
puts a new head on the backbone; see ``docs/parity/fine_tuning.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from superanimal_jax.constants import BBOX_MARGIN
from superanimal_jax.ops.boxes import iou_xywh
from superanimal_jax.training.data import Item, bbox_from_keypoints
from superanimal_jax.training.project import Project


def init_variables(mode: str, variables: dict, channels: np.ndarray | None, num_keypoints: int,
                   seed: int = 0) -> dict:
    """The starting variables for ``mode`` from the SuperAnimal ones (see docs/parity/fine_tuning.md)."""
    params = jax.tree_util.tree_map(np.asarray, variables['params'])
    head = dict(params['head']['deconv'])
    if mode == 'convert':
        head = {'kernel': head['kernel'][..., channels], 'bias': head['bias'][channels]}
    elif mode == 'transfer':
        rng = np.random.default_rng([seed, 3])
        in_features = head['kernel'].shape[2]
        head = {'kernel': (0.001 * rng.standard_normal((1, 1, in_features, num_keypoints))
                           ).astype(np.float32),
                'bias': np.zeros(num_keypoints, np.float32)}
    params = {**params, 'head': {'deconv': head}}
    return {'params': params, 'batch_stats': jax.tree_util.tree_map(np.asarray, variables['batch_stats'])}


@dataclasses.dataclass(frozen=True)
class Task:
    """What a run trains: model keypoint names, and which project bodyparts feed which channel."""

    mode: str
    keypoint_names: tuple[str, ...]
    bodyparts: tuple[str, ...]  # The project bodyparts that are evaluated (in project order).
    project_columns: np.ndarray  # For each evaluated bodypart, its column in project.keypoints.
    channels: np.ndarray  # For each evaluated bodypart, its model channel.
    source_channels: np.ndarray | None  # convert: SuperAnimal channels kept by the head.


def make_task(mode: str, project: Project, model_keypoints: tuple[str, ...]) -> Task:
    """The :class:`Task` of a run in ``mode`` for a model predicting ``model_keypoints``."""
    if mode == 'transfer':
        k = np.arange(len(project.bodyparts))
        return Task(mode, project.bodyparts, project.bodyparts, k, k, None)
    bodyparts, sa_channels = project.conversion_array(model_keypoints)
    columns = np.asarray([project.bodyparts.index(b) for b in bodyparts])
    if mode == 'convert':
        return Task(mode, bodyparts, bodyparts, columns, np.arange(len(bodyparts)), sa_channels)
    return Task(mode, tuple(model_keypoints), bodyparts, columns, sa_channels, None)


def evaluation_task(project: Project, names: tuple[str, ...]) -> Task:
    """Which model channel answers for which project bodypart: by name for a model fine-tuned on
    the project (the bodyparts it predicts), else through the project's conversion table."""
    shared = [b for b in project.bodyparts if b in names]
    if shared:
        return Task('direct', names, tuple(shared), np.asarray([project.bodyparts.index(b) for b in shared]),
                    np.asarray([names.index(b) for b in shared]), None)
    return make_task('replay', project, names)


def labelled_keypoints(project: Project, frame: int, individual: int, height: int, width: int) -> np.ndarray:
    """One individual's project labels ``(bodyparts, 3)``: ``v = 2`` where labelled strictly inside
    the frame (DeepLabCut's loader), else 0; unlabelled points at (0, 0)."""
    xy = project.keypoints[frame, individual]
    inside = (~np.isnan(xy).any(axis=1) & (xy[:, 0] > 0) & (xy[:, 0] < width) & (xy[:, 1] > 0)
              & (xy[:, 1] < height))
    return np.concatenate([np.nan_to_num(xy), np.where(inside, 2.0, 0.0)[:, None]], axis=1)


def labelled_individuals(project: Project, frame: int, task: Task, height: int, width: int
                         ) -> list[tuple[int, np.ndarray]]:
    """``(individual, labels)`` for each individual of ``frame`` with a visible label; ``labels``
    ``(bodyparts, 3)`` over the task's evaluated bodyparts (:func:`labelled_keypoints`)."""
    out = []
    for i in range(len(project.individuals)):
        labels = labelled_keypoints(project, frame, i, height, width)[task.project_columns]
        if (labels[:, 2] > 0).any():
            out.append((i, labels))
    return out


def make_items(project: Project, frames: Sequence[int], task: Task, *, sizes: dict[int, tuple[int, int]],
               pseudo: dict | None = None, replay_threshold: float = 0.1, replay_iou: float = 0.7,
               bbox_margin: int = BBOX_MARGIN) -> list[Item]:
    """Training items (one per individual with a visible label) in the model's channel space."""
    k_model = len(task.keypoint_names)
    items = []
    for f in frames:
        height, width = sizes[f]
        for i, labels in labelled_individuals(project, f, task, height, width):
            keypoints = np.zeros((k_model, 3))
            keypoints[task.channels] = labels
            if task.mode == 'replay':
                predicted = pseudo[(f, i)]
                fill = np.ones(k_model, bool)
                fill[task.channels[labels[:, 2] > 0]] = False
                confident = predicted[:, 2] >= replay_threshold
                keypoints[fill] = np.where(confident[fill, None],
                                           np.concatenate([predicted[fill, :2],
                                                           np.full((fill.sum(), 1), 2.0)], 1),
                                           np.array([0.0, 0.0, -1.0]))
                truth = bbox_from_keypoints(labels, height, width, bbox_margin)
                guess = bbox_from_keypoints(np.concatenate([predicted[:, :2], confident[:, None] * 2.0], 1),
                                            height, width, bbox_margin)
                if iou_xywh(truth, guess) < replay_iou:
                    keypoints[fill] = np.array([0.0, 0.0, -1.0])
            items.append(Item(str(project.image_path(f)), keypoints))
    return items
