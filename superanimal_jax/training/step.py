"""The train step: pure, jitted, state donated; weighted MSE on heatmaps, frozen BatchNorm statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from superanimal_jax import parallel
from superanimal_jax.models.pose import PoseNetwork
from superanimal_jax.training.targets import weighted_mse


def make_train_step(network: PoseNetwork, optimizer: optax.GradientTransformation, *,
                    with_grads: bool = False, mesh=None):
    """``step(state, batch_stats, batch) -> (state, metrics)``, jitted, ``state`` donated.

    ``batch``: ``image`` (B, H, W, 3) normalised crops, ``targets`` and ``weights``
    (B, H/4, W/4, K).  Metrics: loss (before the update), global gradient and parameter norms;
    with ``with_grads`` also the gradients themselves (for parity checks).

    With ``mesh``, the shardings are explicit: the batch split along ``'data'``
    (:func:`superanimal_jax.parallel.global_batch`), state, statistics and metrics replicated;
    XLA sums the per-device gradients, so the step is the same computation as on one device.
    """
    def loss_fn(params, batch_stats, batch):
        heatmaps = network.apply({'params': params, 'batch_stats': batch_stats}, batch['image'])['heatmaps']
        return weighted_mse(heatmaps, batch['targets'], batch['weights'])

    def step(state, batch_stats, batch):
        loss, grads = jax.value_and_grad(loss_fn)(state['params'], batch_stats, batch)
        updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params)}
        if with_grads:
            metrics['grads'] = grads
        new_state = {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1,
                     'rng': jax.random.fold_in(state['rng'], state['step'])}
        return new_state, metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, rep, batch), out_shardings=(rep, rep), donate_argnums=0)


def init_state(params, optimizer: optax.GradientTransformation, seed: int, mesh=None) -> dict:
    """The starting state; with ``mesh``, built on the host and replicated over the mesh (every
    process builds the same values)."""
    state = {'params': params, 'opt_state': optimizer.init(params), 'step': jnp.zeros((), jnp.int32),
             'rng': jax.random.PRNGKey(seed)}
    if mesh is None:
        return state
    return parallel.put_replicated(jax.tree_util.tree_map(np.asarray, state), mesh)
