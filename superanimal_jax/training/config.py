"""The fine-tuning recipe: DeepLabCut 3.0.2's SuperAnimal settings as one frozen config."""

from __future__ import annotations

import dataclasses

import jax

from superanimal_jax import parallel
from superanimal_jax.training.data import DataConfig

MODES = ('convert', 'replay', 'transfer')


@dataclasses.dataclass(frozen=True)
class TrainConfig(DataConfig):
    """DeepLabCut's SuperAnimal fine-tuning recipe (``hrnet_w32.yaml``), overridable.

    The data settings (``batch_size``, ``bbox_margin``, ``augmentation``, ``workers`` ...) are
    :class:`~superanimal_jax.training.data.DataConfig`'s, inherited."""

    mode: str = 'convert'
    epochs: int = 200
    steps: int | None = None  # If set, overrides epochs.
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    milestones: tuple[int, ...] = (160, 190)  # Epochs after which ...
    milestone_lrs: tuple[float, ...] = (1e-6, 1e-7)  # ... these learning rates apply.
    frozen: tuple[str, ...] = ()  # Regexes over 'a/b/kernel' parameter paths: not trained.
    seed: int = 42
    split_seed: int = 1
    train_fraction: float | None = None  # Default: the project's TrainingFraction.
    eval_interval: int = 10  # Epochs.
    save_interval: int = 25  # Epochs; also at the end.
    save_interval_steps: int | None = None  # Overrides save_interval if set.
    log_interval: int = 25  # Steps.
    pcutoff: float = 0.6
    replay_threshold: float = 0.1
    replay_iou: float = 0.7
    keep_checkpoints: int = 2
    compute_dtype: str = 'float32'  # Or 'bfloat16'; parameters and optimiser state stay float32.

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        parallel.compute_dtype(self.compute_dtype)
        check_run_settings(self)
        for name in ('crop_margin', 'prefetch'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} must be >= 0, got {getattr(self, name)}')
        if len(self.crop_size) != 2 or any(s < 32 or s % 32 for s in self.crop_size):
            raise ValueError(f'crop_size must be (width, height), multiples of 32, got {self.crop_size}')


def check_run_settings(config) -> None:
    """The settings every training run has (pose or detector): counts >= 1, one learning rate per
    milestone."""
    if len(config.milestones) != len(config.milestone_lrs):
        raise ValueError('milestones and milestone_lrs must have the same length')
    for name in ('batch_size', 'epochs', 'eval_interval', 'save_interval', 'log_interval', 'keep_checkpoints',
                 'workers'):
        if getattr(config, name) < 1:
            raise ValueError(f'{name} must be >= 1, got {getattr(config, name)}')
    for name in ('steps', 'save_interval_steps'):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f'{name} must be >= 1, got {getattr(config, name)}')


def training_mesh(batch_size: int, mesh=None):
    """The mesh a training run uses (default: every device of every process), refused before
    anything is written when ``batch_size`` does not split over its devices or it leaves out a
    process (every process must take part in every step)."""
    mesh = mesh or parallel.global_mesh()
    if batch_size % mesh.size:
        raise ValueError(f'batch size {batch_size} does not split over the {mesh.size} devices of the mesh: '
                         f'use a multiple of {mesh.size}')
    processes = sorted({d.process_index for d in mesh.devices.flat})
    if processes != list(range(jax.process_count())):
        raise ValueError(f'the training mesh must span every process (it spans processes {processes} of '
                         f'{jax.process_count()})')
    return mesh
