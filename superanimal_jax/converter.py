"""Released PyTorch weights -> a converted model directory that :func:`superanimal_jax.load` reads.

Accepted pose files, all read without executing code from them (:mod:`superanimal_jax.torch_file`):

* the seed's ``pose_model.pth``: ``{'model_state_dict': ...}`` with the legacy head name
  ``heads.bodypart.heatmap_head.model.0`` and timm's classification-head tensors;
* DeepLabCut 3 snapshots such as ``superanimal_topviewmouse_hrnet_w32.pt``:
  ``{'model': ..., 'metadata': ...}``;
* a bare state dict.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from superanimal_jax import model_dir
from superanimal_jax.conversion import (ConversionError, Ignore, Rule, convert_state_dict,
                                        conv_kernel, transposed_conv_1x1_kernel)
from superanimal_jax.pose import POSE_VARIANTS, PoseConfig, variables_shape
from superanimal_jax.torch_file import read_checkpoint

# A module path inside the backbone whose weight is a conv kernel: timm names convs ``convN``,
# and in every ``nn.Sequential`` of HRNet index 0 is the conv, index 1 its BatchNorm.
_CONV = r'(?P<m>(?:.+\.)?conv\d|.+\.0)'
_BN = r'(?P<m>(?:.+\.)?bn\d|.+\.1)'
_HEAD = r'heads\.bodypart\.heatmap_head\.(?:deconv_layers|model)\.0'  # DLC 3 name | legacy name


def pose_rules(config: PoseConfig) -> tuple[list[Ignore], list[Rule]]:
    """The ordered conversion table for a pose variant (ignore list first, then rules)."""
    last_stage = len(config.backbone.stages) + 1
    last_module = config.backbone.stages[-1].num_modules - 1
    ignore = [
        Ignore(r'.+\.num_batches_tracked',
               'BatchNorm update counter; statistics are frozen, so it is never used'),
        Ignore(rf'backbone\.model\.stage{last_stage}\.{last_module}\.fuse_layers\.[1-9]\d*\..+',
               'fuse outputs 1+ of the last HRNet module: timm computes them, DeepLabCut keeps '
               'only branch 0, so they affect no output and get no gradient'),
        Ignore(r'backbone\.model\.(?:incre_modules|downsamp_modules|final_layer|classifier)\..+',
               "timm's classification head, dropped by DeepLabCut's features-only HRNet"),
    ]
    rules = [
        Rule(rf'backbone\.model\.{_CONV}\.weight', 'params/backbone/{m}/kernel', conv_kernel),
        Rule(rf'backbone\.model\.{_BN}\.weight', 'params/backbone/{m}/scale'),
        Rule(rf'backbone\.model\.{_BN}\.bias', 'params/backbone/{m}/bias'),
        Rule(rf'backbone\.model\.{_BN}\.running_mean', 'batch_stats/backbone/{m}/mean'),
        Rule(rf'backbone\.model\.{_BN}\.running_var', 'batch_stats/backbone/{m}/var'),
        Rule(rf'{_HEAD}\.weight', 'params/head/deconv/kernel', transposed_conv_1x1_kernel),
        Rule(rf'{_HEAD}\.bias', 'params/head/deconv/bias'),
    ]
    return ignore, rules


def extract_state_dict(obj, source: str) -> tuple[dict[str, np.ndarray], str]:
    """Find the weights inside a loaded checkpoint; returns them and the format's name."""
    if isinstance(obj, dict) and 'model_state_dict' in obj:
        state, fmt = obj['model_state_dict'], 'seed (model_state_dict)'
    elif isinstance(obj, dict) and 'model' in obj:
        state, fmt = obj['model'], 'DeepLabCut 3 snapshot (model)'
    elif isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        state, fmt = obj, 'bare state dict'
    else:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{source}: no weights found: expected a state dict or a dict with "
                              f"'model' or 'model_state_dict', got {keys}")
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ConversionError(f'{source}: the {fmt} entry is not a mapping of tensors')
    return dict(state), fmt


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def convert_pose_file(path: str | os.PathLike, variant: str = 'hrnet_w32') -> tuple[dict, dict]:
    """Read and convert one pose checkpoint; returns (variables, metadata section)."""
    path = Path(path)
    config = POSE_VARIANTS[variant]
    state, fmt = extract_state_dict(read_checkpoint(path), str(path))
    ignore, rules = pose_rules(config)
    variables, report = convert_state_dict(state, rules, ignore, variables_shape(config),
                                           source=str(path))
    meta = {
        'variant': variant,
        'num_keypoints': config.num_keypoints,
        'stride': config.stride,
        'source': {'file': path.name, 'sha256': sha256(path), 'format': fmt,
                   **report.summary()},
    }
    return variables, meta


def convert(pose: str | os.PathLike | None = None, detector: str | os.PathLike | None = None,
            out: str | os.PathLike = 'superanimal_topviewmouse_jax', *, pose_variant: str = 'hrnet_w32',
            keypoints: tuple[str, ...] | None = None, overwrite: bool = False) -> Path:
    """Convert released PyTorch weights into a model directory and return its path.

    ``keypoints`` defaults to the 27 SuperAnimal-TopViewMouse names for ``hrnet_w32``.
    """
    if detector is not None:
        raise NotImplementedError('detector conversion is not available yet; convert --pose alone')
    if pose is None:
        raise ValueError('nothing to convert: give pose= (and later detector=)')
    if pose_variant not in POSE_VARIANTS:
        raise ValueError(f'unknown pose variant {pose_variant!r}; known: {sorted(POSE_VARIANTS)}')
    variables, meta = convert_pose_file(pose, pose_variant)
    meta['keypoints'] = list(keypoints or model_dir.default_keypoints(POSE_VARIANTS[pose_variant]))
    if len(meta['keypoints']) != meta['num_keypoints']:
        raise ValueError(f"{len(meta['keypoints'])} keypoint names for a "
                         f"{meta['num_keypoints']}-keypoint model")
    return model_dir.write(out, {'pose': variables}, {'pose': meta}, overwrite=overwrite)
