"""A fine-tuned pose network written as a model directory that :func:`superanimal_jax.load` reads."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from superanimal_jax.checkpoints import model_dir
from superanimal_jax.models.pose import PoseConfig
from superanimal_jax.training.modes import Task


def export_model(path: Path, source, pose_config: PoseConfig, variables: dict, task: Task,
                 training: dict) -> Path:
    """A model directory with the fine-tuned pose network (and the source's detector, if any)."""
    pose_section = dict(source.metadata['pose'])
    pose_section.update({'num_keypoints': pose_config.num_keypoints, 'keypoints': list(task.keypoint_names),
                         'fine_tuned': training})
    networks = {'pose': jax.tree_util.tree_map(np.asarray, variables)}
    sections = {'pose': pose_section}
    if source.detector is not None:
        networks['detector'] = jax.tree_util.tree_map(np.asarray, source.detector.variables)
        sections['detector'] = source.metadata['detector']
    return model_dir.write(path, networks, sections, overwrite=True)
