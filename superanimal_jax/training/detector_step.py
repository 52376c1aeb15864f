"""The detector's train step: pure, jitted, state donated; torchvision's four losses on a
transformed batch, frozen BatchNorm statistics, samplers keyed by the step."""

from __future__ import annotations

import jax
import optax

from superanimal_jax import parallel
from superanimal_jax.models.detector import DetectorNetwork
from superanimal_jax.models.detector_training import LOSSES, detector_losses


def make_detector_train_step(network: DetectorNetwork, optimizer: optax.GradientTransformation, *,
                             nms_method: str = 'cpu', with_grads: bool = False, mesh=None):
    """``step(state, batch_stats, batch[, injected]) -> (state, metrics)``, jitted, ``state`` donated.

    ``batch``: torchvision's transform already applied (on the host by the data pipeline, or by
    :func:`~superanimal_jax.models.detector_training.training_inputs`): ``image`` (B, Hp, Wp, 3)
    normalised, resized and padded, ``image_size`` (B, 2) each resized ``(h, w)``, ``boxes``
    (B, G, 4) xyxy in resized pixels, ``box_valid`` (B, G), and optionally ``image_valid`` (B,)
    (False for the padding rows of a short last batch).  The samplers draw from
    ``fold_in(state['rng'], state['step'])``; ``injected`` (parity checks) replaces them
    (:func:`~superanimal_jax.models.detector_training.detector_losses`).  Metrics: the total loss
    and the four losses (before the update), global gradient and parameter norms, and with
    ``with_grads`` the gradients.  One compilation per padded size.

    With ``mesh`` the batch is split along ``'data'`` and everything else replicated; the loss
    normalisations count samples over the whole (global) batch, as one device would.
    """
    def loss_fn(params, batch_stats, batch, key, injected):
        losses = detector_losses(network, {'params': params, 'batch_stats': batch_stats}, batch['image'],
                                 batch['image_size'], batch['boxes'], batch['box_valid'], key,
                                 image_valid=batch.get('image_valid'), injected=injected,
                                 nms_method=nms_method)
        return losses['loss'], losses

    def step(state, batch_stats, batch, injected=None):
        key = jax.random.fold_in(state['rng'], state['step'])
        (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state['params'], batch_stats, batch, key, injected)
        updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
        params = optax.apply_updates(state['params'], updates)
        metrics = {'loss': losses['loss'], **{k: losses[k] for k in LOSSES},
                   'grad_norm': optax.tree.norm(grads), 'param_norm': optax.tree.norm(params)}
        if with_grads:
            metrics['grads'] = grads
        new_state = {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1, 'rng': state['rng']}
        return new_state, metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(lambda state, batch_stats, batch: step(state, batch_stats, batch),
                   in_shardings=(rep, rep, rows), out_shardings=(rep, rep), donate_argnums=0)
