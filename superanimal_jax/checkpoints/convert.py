"""Released weights -> a converted model directory that :func:`superanimal_jax.load` reads: the
detector and pose PyTorch files in the layouts DeepLabCut and the seed release use, and the
DLCRNet TensorFlow checkpoint (``.tar.gz`` or a loose ``snapshot-N.index``).

Parity with DeepLabCut: docs/parity/conversion.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from superanimal_jax.checkpoints import model_dir
from superanimal_jax.checkpoints.rules import ConversionTable, convert_state_dict
from superanimal_jax.checkpoints.tables import (
    detector_rules,
    pose_multinet_rules,
    pose_resnet_rules,
    pose_rules,
)
from superanimal_jax.checkpoints.tf_checkpoint import read_tf_checkpoint
from superanimal_jax.checkpoints.torch_file import read_checkpoint
from superanimal_jax.errors import ConversionError
from superanimal_jax.io.files import sha256
from superanimal_jax.models import pose_resnet
from superanimal_jax.models.detector import variables_shape as detector_variables_shape
from superanimal_jax.models.pose import POSE_VARIANTS, variables_shape

_PART_PRED = 'pose/part_pred/block4'
_MULTI_STAGE = ('decoder_filters/', 'pose/part_pred_s', 'pose/pairwise_pred_s')
_MULTI_HEAD = 'pose/part_pred_s1/Conv2d_transpose'


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


def convert_file(path: str | os.PathLike, table: ConversionTable, target) -> tuple[dict, dict]:
    """Read one checkpoint and convert it with ``table``; returns (variables, source metadata)."""
    path = Path(path)
    state, fmt, others = extract_state_dict(read_checkpoint(path), str(path))
    variables, report = convert_state_dict(state, table, target, source=str(path))
    source = {'file': path.name, 'sha256': sha256(path), 'format': fmt, **report.summary()}
    if others:
        source['other_entries_not_loaded'] = others
    return variables, source


def convert_pose_state(state, variant: str = 'hrnet_w32', *, source: str = 'state dict') -> tuple[dict, dict]:
    """A pose state dict in memory (DeepLabCut 3 or seed key names) -> ``(variables, report summary)``."""
    config = POSE_VARIANTS[variant]
    variables, report = convert_state_dict(state, pose_rules(config), variables_shape(config), source=source)
    return variables, report.summary()


def convert_detector_state(state, *, source: str = 'state dict') -> tuple[dict, dict]:
    """A detector state dict in memory -> ``(variables, report summary)``."""
    variables, report = convert_state_dict(state, detector_rules(), detector_variables_shape(), source=source)
    return variables, report.summary()


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


def dlcrnet_config(state, source: str = 'checkpoint') -> pose_resnet.PoseResnetConfig:
    """The TF network a checkpoint holds, decided from its variable names and head shapes:
    DeepLabCut's PoseResnet-50 (what its factory builds for the SuperAnimal config) or the
    multi-stage DLCRNet_ms5 on resnet_v1_50, with the heads it has; anything else is a clear error."""
    names = set(state)
    nets = sorted({n.split('/', 1)[0] for n in names
                   if n.startswith(('resnet_v1_', 'mobilenet', 'efficientnet'))})
    multi = any(n.startswith(_MULTI_STAGE) for n in names)
    head = f'{_MULTI_HEAD if multi else _PART_PRED}/weights'
    kind = 'multi-stage DLCRNet_ms5' if multi else 'PoseResnet-50'
    if nets != ['resnet_v1_50'] or head not in names:
        raise ConversionError(f'{source}: not a DeepLabCut {kind} checkpoint on resnet_v1_50 (backbone '
                              f'scopes {nets}, {head} {"present" if head in names else "missing"})')
    num_joints = int(np.shape(state[head])[2])
    locref_name = f"pose/locref_pred/{'Conv2d_transpose' if multi else 'block4'}/weights"
    locref = locref_name in names
    if locref and np.shape(state[locref_name])[2] != 2 * num_joints:
        raise ConversionError(f'{source}: locref head of shape {np.shape(state[locref_name])} for '
                              f'{num_joints} joints (expected {2 * num_joints} channels)')
    fields = state.get('pose/pairwise_pred_s1/Conv2d_transpose/weights' if multi
                       else 'pose/pairwise_pred/block4/weights')
    num_limbs = int(np.shape(fields)[2]) // 2 if fields is not None else 0
    if multi and not num_limbs:
        raise ConversionError(f'{source}: a multi-stage network without part-affinity fields '
                              '(pose/pairwise_pred_s1) has no final part_pred: DeepLabCut cannot run it '
                              'either')
    return pose_resnet.PoseResnetConfig(num_joints=num_joints, locref=locref, num_limbs=num_limbs,
                                        multi_stage=multi)


def convert_dlcrnet_state(state, *, source: str = 'state') -> tuple[dict, pose_resnet.PoseResnetConfig, dict]:
    """TF variables in memory (name -> numpy array) -> ``(variables, config, report summary)``."""
    config = dlcrnet_config(state, source)
    table = pose_multinet_rules() if config.multi_stage else pose_resnet_rules()
    variables, report = convert_state_dict(state, table, pose_resnet.variables_shape(config), source=source)
    return variables, config, report.summary()


def convert_dlcrnet_file(path: str | os.PathLike, keypoints: tuple[str, ...] | None = None
                         ) -> tuple[dict, dict]:
    """Read and convert the DLCRNet TF checkpoint; returns (variables, metadata section)."""
    path = Path(path)
    state, info = read_tf_checkpoint(path)
    variables, config, report = convert_dlcrnet_state(state, source=str(path))
    fmt = 'TensorFlow checkpoint (archive)' if path.is_file() and not path.name.endswith('.index') \
        else 'TensorFlow checkpoint'
    digest_of = path if path.is_file() else Path(f'{path}.index')
    source = {'file': info['file'], 'sha256': sha256(digest_of), 'format': fmt, **report}
    return variables, dlcrnet_section(config, info['prefix'], keypoints, source)


def dlcrnet_section(config: pose_resnet.PoseResnetConfig, snapshot: str, keypoints=None,
                    source: dict | None = None) -> dict:
    """The model directory's ``dlcrnet`` metadata: the network's config, the snapshot name (which
    names the results, ``DLC_snapshot-N``), the keypoint names (default: SuperAnimal-TopViewMouse's
    27 for 27 joints) and where the weights came from."""
    names = list(keypoints or model_dir.default_joint_names(config.num_joints))
    if len(names) != config.num_joints:
        raise ValueError(f'{len(names)} keypoint names for a {config.num_joints}-joint model')
    architecture = 'dlcrnet_ms5' if config.multi_stage else 'pose_resnet_50'
    return {'architecture': architecture, 'num_joints': config.num_joints, 'locref': config.locref,
            'num_limbs': config.num_limbs, 'stride': config.stride, 'locref_stdev': config.locref_stdev,
            'snapshot': snapshot, 'keypoints': names, 'source': source or {}}


def convert(pose: str | os.PathLike | None = None, detector: str | os.PathLike | None = None,
            out: str | os.PathLike = 'superanimal_topviewmouse_jax', *,
            dlcrnet: str | os.PathLike | None = None, pose_variant: str = 'hrnet_w32',
            keypoints: tuple[str, ...] | None = None, overwrite: bool = False) -> Path:
    """Convert released weights (pose and/or detector PyTorch files, the DLCRNet TF checkpoint)
    into a model directory.

    ``keypoints`` defaults to the 27 SuperAnimal-TopViewMouse names for ``hrnet_w32`` and a
    27-joint DLCRNet.  Returns the directory's path.
    """
    if pose is None and detector is None and dlcrnet is None:
        raise ValueError('nothing to convert: give pose=, detector= and/or dlcrnet=')
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
    if dlcrnet is not None:
        names = keypoints if pose is None else None  # ``keypoints`` name the pose model's, when given.
        networks['dlcrnet'], sections['dlcrnet'] = convert_dlcrnet_file(dlcrnet, names)
    return model_dir.write(out, networks, sections, overwrite=overwrite)
