"""Deterministic synthetic weights in the released file layouts, for parity testing.

The real SuperAnimal weights cannot be downloaded on our machines, so parity is proven with
weights generated here from a seed, written in both released formats and run through the real
DeepLabCut code (``tests/reference/make_pose_fixtures.py``).  Every tensor is drawn from its own stream
(seed, crc32 of its key), so the result does not depend on key order and any subset can be
regenerated.  BatchNorm statistics and the head's scale are calibrated on real frames in the
reference environment and passed in (they are small and committed as fixtures).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

# The head's key prefix in the seed's pose_model.pth and in DeepLabCut 3 (see converter.py for the
# evidence of the seed layout).
SEED_HEAD = 'heads.bodypart.heatmap_head.model.'
DLC3_HEAD = 'heads.bodypart.heatmap_head.deconv_layers.0.'
# timm's classification-head modules the seed file carries (not ``incre_modules``).
SEED_TIMM_HEAD = ('downsamp_modules', 'final_layer', 'classifier')


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def synthetic_tensor(key: str, shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """One well-conditioned tensor, chosen by what the key names."""
    rng = _rng(seed, key)
    leaf = key.rsplit('.', 1)[-1]
    if dtype == 'int64':
        return np.zeros(shape, np.int64)  # num_batches_tracked
    if leaf == 'running_mean':
        return np.zeros(shape, np.float32)
    if leaf == 'running_var':
        return np.ones(shape, np.float32)
    if 'heatmap_head' in key:
        scale = 0.05 if leaf == 'weight' else 0.02
        return (scale * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 4:  # Conv kernels: He (fan-in) scaling.
        fan_in = int(np.prod(shape[1:]))
        return (np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 2:  # Linear (timm classifier, seed file only).
        return (0.01 * rng.standard_normal(shape)).astype(np.float32)
    if leaf == 'weight':  # BatchNorm scale.
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.2 * rng.standard_normal(shape)).astype(np.float32)  # Biases.


def synthetic_state_dict(manifest: Iterable[tuple[str, tuple[int, ...], str]], *, seed: int = 0,
                         overrides: Mapping[str, np.ndarray] | None = None,
                         head_gain: float = 1.0) -> dict[str, np.ndarray]:
    """A state dict for ``manifest`` entries (key, shape, dtype), in manifest order.

    ``overrides`` replaces tensors by key (calibrated BatchNorm statistics); ``head_gain``
    multiplies the head kernel (float32), calibrated so heatmap maxima spread over [0, 1].
    """
    overrides = overrides or {}
    state = {}
    for key, shape, dtype in manifest:
        value = overrides.get(key)
        if value is None:
            value = synthetic_tensor(key, tuple(shape), dtype, seed)
            if 'heatmap_head' in key and key.endswith('.weight'):
                value = value * np.float32(head_gain)
        state[key] = np.asarray(value).reshape(shape)
    return state


FIXTURE_OVERRIDES = {'pose': 'pose_bn_stats.npz', 'detector': 'detector_overrides.npz'}


def fixture_state(fixtures: str | Path, network: str) -> dict[str, np.ndarray]:
    """The test suite's synthetic ``network`` ('pose' or 'detector') weights, regenerated from
    the committed fixtures (``<network>_manifest.json`` and its calibrated overrides) and checked
    bit for bit against the manifest's sha256."""
    import hashlib
    import json

    fixtures = Path(fixtures)
    manifest = json.loads((fixtures / f'{network}_manifest.json').read_text())
    with np.load(fixtures / FIXTURE_OVERRIDES[network]) as overrides:
        state = synthetic_state_dict(manifest['manifest'], seed=manifest['seed'], overrides=dict(overrides),
                                     head_gain=manifest.get('head_gain', 1.0))
    digest = hashlib.sha256(b''.join(v.tobytes() for v in state.values())).hexdigest()
    if digest != manifest['state_sha256']:
        raise ValueError(f'synthetic {network} weights no longer regenerate exactly (sha256 {digest})')
    return state


def random_crops(shape: tuple[int, int], index: int, seed: int = 0) -> np.ndarray:
    """A reproducible standard-normal input batch ``(1, H, W, 3)`` float32."""
    return np.random.default_rng([seed, 7, index]).standard_normal((1, *shape, 3)).astype(np.float32)


def nearest_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``frame`` (H, W, C) at another size by nearest-neighbour integer indexing (exact anywhere):
    real content for testing other frame sizes without storing more frames."""
    rows = np.arange(height) * frame.shape[0] // height
    cols = np.arange(width) * frame.shape[1] // width
    return frame[rows][:, cols]


def to_seed_layout(state: Mapping[str, np.ndarray],
                   extra: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """DeepLabCut 3 keys -> the seed's ``pose_model.pth`` layout: the backbone, then ``extra`` (timm's
    ``downsamp_modules``/``final_layer``/``classifier`` tensors, as the released file holds), then
    the head renamed ``heatmap_head.deconv_layers.0.*`` -> ``heatmap_head.model.*``."""
    extra = dict(extra or {})
    stray = [k for k in extra if k.split('.')[2] not in SEED_TIMM_HEAD]
    if stray:
        raise ValueError(f'the seed file holds only timm {SEED_TIMM_HEAD} beside the model: {stray[:3]}')
    backbone = {k: v for k, v in state.items() if not k.startswith(DLC3_HEAD)}
    head = {SEED_HEAD + k[len(DLC3_HEAD):]: v for k, v in state.items() if k.startswith(DLC3_HEAD)}
    return {**backbone, **extra, **head}


def write_checkpoints(state: Mapping[str, np.ndarray], seed_path: str | Path, dlc3_path: str | Path, *,
                      seed_state: Mapping[str, np.ndarray] | None = None) -> dict[str, Path]:
    """Write weights with ``torch.save`` in the seed layout (``{'model_state_dict': seed_state or
    state}``) and the DeepLabCut 3 snapshot layout (``{'model': state, 'metadata': ...}``)."""
    import collections

    import torch

    def tensors(d):
        return collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in d.items())

    paths = {'seed': Path(seed_path), 'dlc3': Path(dlc3_path)}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'model_state_dict': tensors(seed_state if seed_state is not None else state)},
               paths['seed'])
    # Epoch 0, as the released files: DeepLabCut names adapted snapshots ``epoch + adaptation epochs``
    # (``get_checkpoint_epoch`` in modelzoo/video_inference.py), and users' adapted TopViewMouse results
    # are named ``..._snapshot-hrnet_w32-004_snapshot-fasterrcnn_resnet50_fpn_v2-004`` after the default 4
    # epochs (public analysis scripts reading them); its runner also starts its lr schedule there.
    torch.save({'model': tensors(state), 'metadata': {'epoch': 0, 'metrics': {}, 'losses': {}}},
               paths['dlc3'])
    return paths


def write_pose_checkpoints(state: Mapping[str, np.ndarray], directory: str | Path, *,
                           seed_extra: Mapping[str, np.ndarray] | None = None) -> dict[str, Path]:
    """``pose_model.pth`` (the seed layout, :func:`to_seed_layout`) and
    ``superanimal_topviewmouse_hrnet_w32.pt`` in ``directory``."""
    directory = Path(directory)
    return write_checkpoints(state, directory / 'pose_model.pth',
                             directory / 'superanimal_topviewmouse_hrnet_w32.pt',
                             seed_state=to_seed_layout(state, seed_extra))


def write_detector_checkpoints(state: Mapping[str, np.ndarray], directory: str | Path) -> dict[str, Path]:
    """``detector.pt`` and ``superanimal_topviewmouse_fasterrcnn_resnet50_fpn_v2.pt`` in ``directory``."""
    directory = Path(directory)
    return write_checkpoints(state, directory / 'detector.pt',
                             directory / 'superanimal_topviewmouse_fasterrcnn_resnet50_fpn_v2.pt')


def synthetic_tf_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One well-conditioned float32 tensor for a TensorFlow (tf_slim) variable, by what it names."""
    rng = _rng(seed, name)
    leaf = name.rsplit('/', 1)[-1]
    if leaf == 'moving_mean':
        return np.zeros(shape, np.float32)
    if leaf == 'moving_variance':
        return np.ones(shape, np.float32)
    if leaf == 'gamma':
        return rng.uniform(0.2, 0.6, shape).astype(np.float32)  # Keeps 16 residual units in range.
    if leaf in ('beta', 'biases'):
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    # Kernels are HWIO; the transposed heads' kernels [h, w, out, in] (PoseResnet's pose/*/block4,
    # the multi-stage net's pose/**/Conv2d_transpose).
    transposed = name.startswith('pose/') and ('/block4/' in name or '/Conv2d_transpose/' in name)
    fan_in = int(np.prod(shape[:2])) * (shape[3] if transposed else shape[2])
    return (np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)).astype(np.float32)


def synthetic_tf_state(manifest: Iterable[tuple[str, tuple[int, ...]]], *, seed: int = 0
                       ) -> dict[str, np.ndarray]:
    """``{name: tensor}`` for TensorFlow variable ``(name, shape)`` entries, in manifest order."""
    return {name: synthetic_tf_tensor(name, tuple(shape), seed) for name, shape in manifest}


def apply_tf_overrides(state: Mapping[str, np.ndarray], overrides: Mapping[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
    """``state`` with the calibration of ``tests/reference/make_dlcrnet_fixtures.py`` applied:
    BatchNorm moving statistics by variable name, the part_pred kernel times ``part_pred/gain``
    with its biases set to ``part_pred/bias`` (one a joint), the locref head times
    ``locref_pred/gain`` (float32).  Override names ``state`` lacks are skipped (the multi-stage
    network takes the backbone's statistics only)."""
    state = dict(state)
    heads = {'part_pred/gain', 'part_pred/bias', 'locref_pred/gain'}
    for name, value in overrides.items():
        if name not in heads and name in state:
            state[name] = np.asarray(value, np.float32)
    part, locref = 'pose/part_pred/block4', 'pose/locref_pred/block4'
    if f'{part}/weights' not in state:  # Another network (the multi-stage one): BatchNorm only.
        return state
    state[f'{part}/weights'] = state[f'{part}/weights'] * np.float32(overrides['part_pred/gain'])
    state[f'{part}/biases'] = np.broadcast_to(
        np.asarray(overrides['part_pred/bias'], np.float32), state[f'{part}/biases'].shape).copy()
    for leaf in ('weights', 'biases'):
        state[f'{locref}/{leaf}'] = state[f'{locref}/{leaf}'] * np.float32(overrides['locref_pred/gain'])
    return state


def tf_fixture_state(fixtures: str | Path, network: str = 'dlcrnet') -> dict[str, np.ndarray]:
    """The test suite's TF variables of ``network`` (``'dlcrnet'``: PoseResnet; ``'dlcrnet_ms5'``:
    the multi-stage net), regenerated from the committed fixtures (``<network>_manifest.json``:
    names, shapes, seed; ``dlcrnet_overrides.npz``: the calibration, of which the multi-stage net
    takes the backbone's statistics), checked bit for bit against the manifest's sha256 when it
    records one."""
    import json

    fixtures = Path(fixtures)
    manifest = json.loads((fixtures / f'{network}_manifest.json').read_text())
    with np.load(fixtures / 'dlcrnet_overrides.npz') as overrides:
        state = apply_tf_overrides(synthetic_tf_state(manifest['manifest'], seed=manifest['seed']),
                                   dict(overrides))
    digest = tf_state_sha256(state)
    if manifest.get('state_sha256', digest) != digest:
        raise ValueError(f'synthetic {network} weights no longer regenerate exactly (sha256 {digest})')
    return state


def tf_state_sha256(state: Mapping[str, np.ndarray]) -> str:
    """sha256 of the tensors' bytes, in name order."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(np.ascontiguousarray(state[name]).tobytes())
    return digest.hexdigest()
