"""Released PyTorch weights -> a converted model directory that :func:`superanimal_jax.load` reads.

Files are read without executing code from them (:mod:`superanimal_jax.checkpoints.torch_file`).  The
detector: the seed's ``detector.pt`` (``model_state_dict``), DeepLabCut 3 snapshots such as
``superanimal_topviewmouse_fasterrcnn_resnet50_fpn_v2.pt`` (``model``) or a bare state dict, 404
keys under ``model.``.  Pose files:

* the seed's ``pose_model.pth``: ``{'model_state_dict': ...}`` holding DeepLabCut 3's backbone
  keys, the head as one ``ConvTranspose2d`` named ``heads.bodypart.heatmap_head.model``
  (``.weight`` / ``.bias``, no ``.0``) and timm's ``downsamp_modules``, ``final_layer`` and
  ``classifier`` tensors (no ``incre_modules``).  Evidence: DeepLabCut's own loader for these
  files, ``_parse_model_snapshot`` in ``deeplabcut/pose_estimation_pytorch/modelzoo/utils.py``
  (in the parent of commit ffcd2908c, "SuperAnimal Model Updates #2756"), drops exactly those
  three timm prefixes and renames a key whose first four parts are
  ``heads.bodypart.heatmap_head.model`` by putting ``deconv_layers.0`` in the fourth part, then
  loads the result strictly: a ``model.0.weight`` key would become ``deconv_layers.0.0.weight``
  and fail that load.  Other entries beside the weights (an optimizer state, an epoch, metadata,
  as older DeepLabCut 3 snapshots hold) are not loaded; the model directory's metadata lists them;
* DeepLabCut 3 snapshots such as ``superanimal_topviewmouse_hrnet_w32.pt``:
  ``{'model': ..., 'metadata': ...}``;
* a bare state dict.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from superanimal_jax.checkpoints import model_dir
from superanimal_jax.checkpoints.rules import (ConversionError, Ignore, Rule, conv_kernel, convert_state_dict,
                                        linear_after_flatten_kernel, linear_kernel,
                                        transposed_conv_1x1_kernel)
from superanimal_jax.models.detector import variables_shape as detector_variables_shape
from superanimal_jax.models.pose import POSE_VARIANTS, PoseConfig, variables_shape
from superanimal_jax.checkpoints.torch_file import read_checkpoint

# Module paths whose ``weight`` is a conv kernel / BatchNorm: timm and torchvision name them
# ``convN`` / ``bnN``, and in every ``nn.Sequential`` of these networks index 0 is the conv and
# index 1 its BatchNorm (``downsample.0``, ``transition1.0.1``, ``fpn.inner_blocks.2.1`` ...).
_CONV = r'(?P<m>(?:.+\.)?conv\d|.+\.0)'
_BN = r'(?P<m>(?:.+\.)?bn\d|.+\.1)'
# DeepLabCut 3's name | the seed file's name (``_parse_model_snapshot``'s rename, module docstring).
_HEAD = r'heads\.bodypart\.heatmap_head\.(?:deconv_layers\.0|model)'
_BN_COUNTER = Ignore(r'.+\.num_batches_tracked',
                     'BatchNorm update counter; statistics are frozen, so it is never used')


def conv_bn_rules(source: str, target: str) -> list[Rule]:
    """Conv kernels and BatchNorms under the key prefix ``source`` (a regex) -> ``target/``."""
    return [
        Rule(rf'{source}{_CONV}\.weight', f'params/{target}{{m}}/kernel', conv_kernel),
        Rule(rf'{source}{_BN}\.weight', f'params/{target}{{m}}/scale'),
        Rule(rf'{source}{_BN}\.bias', f'params/{target}{{m}}/bias'),
        Rule(rf'{source}{_BN}\.running_mean', f'batch_stats/{target}{{m}}/mean'),
        Rule(rf'{source}{_BN}\.running_var', f'batch_stats/{target}{{m}}/var'),
    ]


def pose_rules(config: PoseConfig) -> tuple[list[Ignore], list[Rule]]:
    """The ordered conversion table for a pose variant (ignore list first, then rules)."""
    last_stage = len(config.backbone.stages) + 1
    last_module = config.backbone.stages[-1].num_modules - 1
    ignore = [
        _BN_COUNTER,
        Ignore(rf'backbone\.model\.stage{last_stage}\.{last_module}\.fuse_layers\.[1-9]\d*\..+',
               'fuse outputs 1+ of the last HRNet module: timm computes them, DeepLabCut keeps '
               'only branch 0, so they affect no output and get no gradient'),
        Ignore(r'backbone\.model\.(?:downsamp_modules|final_layer|classifier)\..+',
               "timm's classification head in the seed's pose_model.pth, dropped by DeepLabCut "
               "(_parse_model_snapshot) and unused by its features-only HRNet"),
    ]
    rules = conv_bn_rules(r'backbone\.model\.', 'backbone/') + [
        Rule(rf'{_HEAD}\.weight', 'params/head/deconv/kernel', transposed_conv_1x1_kernel),
        Rule(rf'{_HEAD}\.bias', 'params/head/deconv/bias'),
    ]
    return ignore, rules


def detector_rules() -> tuple[list[Ignore], list[Rule]]:
    """The ordered conversion table for the Faster R-CNN detector (404 keys under ``model.``)."""
    rules = [
        # Biased convs first: the RPN tower (conv.K.0) and its two 1x1 output convs.
        Rule(r'model\.(?P<m>rpn\.head\.conv\.\d+\.0)\.weight', 'params/{m}/kernel', conv_kernel),
        Rule(r'model\.(?P<m>rpn\.head\.conv\.\d+\.0)\.bias', 'params/{m}/bias'),
        Rule(r'model\.(?P<m>rpn\.head\.(?:cls_logits|bbox_pred))\.weight', 'params/{m}/kernel',
             conv_kernel),
        Rule(r'model\.(?P<m>rpn\.head\.(?:cls_logits|bbox_pred))\.bias', 'params/{m}/bias'),
        Rule(r'model\.roi_heads\.box_head\.5\.weight', 'params/roi_heads/box_head/5/kernel',
             linear_after_flatten_kernel(256, 7, 7)),
        Rule(r'model\.roi_heads\.box_head\.5\.bias', 'params/roi_heads/box_head/5/bias'),
        Rule(r'model\.(?P<m>roi_heads\.box_predictor\.(?:cls_score|bbox_pred))\.weight',
             'params/{m}/kernel', linear_kernel),
        Rule(r'model\.(?P<m>roi_heads\.box_predictor\.(?:cls_score|bbox_pred))\.bias', 'params/{m}/bias'),
    ] + conv_bn_rules(r'model\.', '')
    return [_BN_COUNTER], rules


def extract_state_dict(obj, source: str) -> tuple[dict[str, np.ndarray], str, dict]:
    """Find the weights inside a loaded checkpoint.

    Returns the weights, the format's name and a JSON-able summary of every other top-level entry
    (an optimizer state, an epoch, metadata), which is not loaded.
    """
    if isinstance(obj, dict) and 'model_state_dict' in obj:
        entry, fmt = 'model_state_dict', 'seed (model_state_dict)'
    elif isinstance(obj, dict) and 'model' in obj:
        entry, fmt = 'model', 'DeepLabCut 3 snapshot (model)'
    elif isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
        entry, fmt = None, 'bare state dict'
    else:
        keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{source}: no weights found: expected a state dict or a dict with "
                              f"'model' or 'model_state_dict', got {keys}")
    state = obj if entry is None else obj[entry]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ConversionError(f'{source}: the {fmt} entry is not a mapping of tensors')
    others = {} if entry is None else {str(k): describe(v) for k, v in obj.items() if k != entry}
    return dict(state), fmt, others


def describe(value, depth: int = 4):
    """A short JSON-able account of a checkpoint entry: scalars as they are, tensors by shape and
    dtype, containers by their contents down to ``depth`` levels (long ones by their length)."""
    if isinstance(value, np.ndarray):
        return {'tensor': list(value.shape), 'dtype': str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dict, list, tuple)):
        kind = 'dict' if isinstance(value, dict) else 'list'
        if depth == 0 or len(value) > 16:
            return f'{kind} of {len(value)} entries'
        if isinstance(value, dict):
            return {str(k): describe(v, depth - 1) for k, v in value.items()}
        return [describe(v, depth - 1) for v in value]
    return type(value).__name__


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def convert_file(path: str | os.PathLike, table: tuple[list[Ignore], list[Rule]], target) -> tuple[dict, dict]:
    """Read one checkpoint and convert it with ``table``; returns (variables, source metadata)."""
    path = Path(path)
    state, fmt, others = extract_state_dict(read_checkpoint(path), str(path))
    ignore, rules = table
    variables, report = convert_state_dict(state, rules, ignore, target, source=str(path))
    source = {'file': path.name, 'sha256': sha256(path), 'format': fmt, **report.summary()}
    if others:
        source['other_entries_not_loaded'] = others
    return variables, source


def convert_pose_file(path: str | os.PathLike, variant: str = 'hrnet_w32') -> tuple[dict, dict]:
    """Read and convert one pose checkpoint; returns (variables, metadata section)."""
    config = POSE_VARIANTS[variant]
    variables, source = convert_file(path, pose_rules(config), variables_shape(config))
    return variables, {'variant': variant, 'num_keypoints': config.num_keypoints,
                       'stride': config.stride, 'source': source}


def convert_detector_file(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read and convert one detector checkpoint; returns (variables, metadata section)."""
    variables, source = convert_file(path, detector_rules(), detector_variables_shape())
    return variables, {'variant': 'fasterrcnn_resnet50_fpn_v2', 'num_classes': 2, 'source': source}


def convert(pose: str | os.PathLike | None = None, detector: str | os.PathLike | None = None,
            out: str | os.PathLike = 'superanimal_topviewmouse_jax', *, pose_variant: str = 'hrnet_w32',
            keypoints: tuple[str, ...] | None = None, overwrite: bool = False) -> Path:
    """Convert released PyTorch weights (pose and/or detector) into a model directory.

    ``keypoints`` defaults to the 27 SuperAnimal-TopViewMouse names for ``hrnet_w32``.
    Returns the directory's path.
    """
    if pose is None and detector is None:
        raise ValueError('nothing to convert: give pose= and/or detector=')
    if pose_variant not in POSE_VARIANTS:
        raise ValueError(f'unknown pose variant {pose_variant!r}; known: {sorted(POSE_VARIANTS)}')
    networks, sections = {}, {}
    if pose is not None:
        networks['pose'], meta = convert_pose_file(pose, pose_variant)
        meta['keypoints'] = list(keypoints or model_dir.default_keypoints(POSE_VARIANTS[pose_variant]))
        if len(meta['keypoints']) != meta['num_keypoints']:
            raise ValueError(f"{len(meta['keypoints'])} keypoint names for a "
                             f"{meta['num_keypoints']}-keypoint model")
        sections['pose'] = meta
    if detector is not None:
        networks['detector'], sections['detector'] = convert_detector_file(detector)
    return model_dir.write(out, networks, sections, overwrite=overwrite)
