"""Helpers shared by the fixture scripts that run inside the reference environment (``.ref/``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / 'shared' / 'data' / 'openfield'
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load_synthetic():
    """``superanimal_jax/checkpoints/synthetic.py`` on its own (it needs numpy only): the reference
    environment has no JAX, so the package itself cannot be imported there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        'superanimal_synthetic', ROOT / 'superanimal_jax' / 'checkpoints' / 'synthetic.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _load_synthetic()
# DeepLabCut's crop normalisation (albumentations' Normalize: x - mean * 255, times the float32
# reciprocal of std * 255), in numpy: the same float32 operations as ``normalize_crops``.
_MEAN = np.float32([0.485, 0.456, 0.406]) * np.float32(255)
_INV_STD = np.float32(1) / (np.float32([0.229, 0.224, 0.225]) * np.float32(255))


def normalize_crops(uint8) -> np.ndarray:
    """uint8 RGB -> float32 as ``superanimal_jax.normalize_crops`` (checked equal in its tests)."""
    return (np.asarray(uint8).astype(np.float32) - _MEAN) * _INV_STD


def superanimal_config() -> dict:
    """DeepLabCut's own SuperAnimal-TopViewMouse inference config (pose + detector)."""
    from deeplabcut.pose_estimation_pytorch.config.pose import PoseConfig

    return PoseConfig.build_for_superanimal_inference(
        super_animal='superanimal_topviewmouse', model_name='hrnet_w32',
        detector_name='fasterrcnn_resnet50_fpn_v2', max_individuals=3, device='cpu').model_dump()


def manifest_of(state) -> list:
    """(key, shape, dtype) of every state-dict entry, in order."""
    return [(k, tuple(v.shape), str(v.dtype).removeprefix('torch.')) for k, v in state.items()]


def calibrate(model, *inputs) -> None:
    """One pass with every BatchNorm in train mode and cumulative averaging: each BatchNorm's
    running statistics become the statistics of what reaches it."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        model(*inputs)
    model.eval()


def nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy().copy()
