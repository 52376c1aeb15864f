"""A run's orbax checkpoints: the latest states (with the data iterator's position) and the best
parameters by ``test.mAP``."""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def _barriers(name: str) -> ocp.options.MultiprocessingOptions:
    # Both managers save at a step that is an evaluation and a checkpoint; their cross-process
    # barriers are named by step, so each gets its own prefix (else the second collides).
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f'superanimal_jax.{name}')


def _best_manager(path: Path, *, read_only: bool = False) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m['test.mAP'], best_mode='max', read_only=read_only,
        multiprocessing_options=_barriers('best')))


def _abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class RunCheckpoints:
    """``OUT/checkpoints`` (the latest ``keep`` states: params, optimiser state, step, rng and the
    iterator position) and ``OUT/best`` (the params with the best ``test.mAP``)."""

    def __init__(self, out: Path, keep: int):
        self.out = out
        self.latest = ocp.CheckpointManager(out / 'checkpoints', options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=1, multiprocessing_options=_barriers('latest')))
        self.best = _best_manager(out / 'best')

    def restore(self, state: dict) -> tuple[dict, dict | None]:
        """``(state, iterator state)`` of the latest checkpoint (onto ``state``'s shardings), or
        ``(state, None)`` for a new run."""
        step = self.latest.latest_step()
        if step is None:
            return state, None
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state)), data=ocp.args.JsonRestore()))
        return restored['state'], restored['data']

    def save(self, step: int, state: dict, data_state: dict) -> None:
        """The state and the iterator position after ``step`` steps."""
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      data=ocp.args.JsonSave(data_state)))

    def save_best(self, step: int, params, metrics: dict) -> None:
        """``params`` as a candidate for the best (by ``metrics['test.mAP']``), once per step."""
        if step not in self.best.all_steps():
            self.best.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                           metrics={'test.mAP': metrics['test.mAP']})

    def close(self) -> None:
        """Wait for pending writes and close both managers."""
        for manager in (self.latest, self.best):
            manager.wait_until_finished()
            manager.close()

    def best_params(self, like) -> tuple[int, dict] | None:
        """``(step, params)`` of the best checkpoint (restored like ``like``), or None."""
        best = _best_manager(self.out / 'best', read_only=True)
        try:
            step = best.best_step()
            if step is None:
                return None
            params = best.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(like))))['params']
            return step, params
        finally:
            best.close()
