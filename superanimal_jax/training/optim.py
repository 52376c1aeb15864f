"""The optimiser: AdamW with torch's defaults, DeepLabCut's epoch milestones, frozen parameters masked."""

from __future__ import annotations

import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from superanimal_jax.training.config import TrainConfig


def _path(keys) -> str:
    """A parameter's key path as ``'a/b/kernel'``."""
    return '/'.join(str(getattr(k, 'key', k)) for k in keys)


def lr_schedule(config: TrainConfig, steps_per_epoch: int) -> Callable:
    """DeepLabCut's ``LRListScheduler``, stepped once per epoch: epoch ``e`` (0-based) uses the
    last milestone learning rate whose milestone is <= ``e``."""
    def schedule(step):
        # Weakly typed: the updates keep the parameters' dtype, and float64 runs (the parity
        # checks' exact reference) get the double learning rate, not its float32 rounding.
        epoch = step // steps_per_epoch
        lr = jnp.asarray(float(config.learning_rate))
        for milestone, value in zip(config.milestones, config.milestone_lrs):
            lr = jnp.where(epoch >= milestone, float(value), lr)
        return lr
    return schedule


def make_optimizer(config: TrainConfig, params, steps_per_epoch: int) -> optax.GradientTransformation:
    """AdamW as torch's defaults, the epoch-milestone learning rate, ``frozen`` patterns masked."""
    adamw = optax.adamw(lr_schedule(config, steps_per_epoch), b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=config.weight_decay)
    if not config.frozen:
        return adamw
    patterns = [re.compile(p) for p in config.frozen]
    paths = [_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    unused = [p.pattern for p in patterns if not any(p.search(path) for path in paths)]
    if unused:
        raise ValueError(f'frozen patterns match no parameter: {unused} (paths look like {paths[0]!r})')
    labels = jax.tree_util.tree_map_with_path(
        lambda kp, _: 'frozen' if any(p.search(_path(kp)) for p in patterns) else 'trained', params)
    return optax.multi_transform({'trained': adamw, 'frozen': optax.set_to_zero()}, labels)
