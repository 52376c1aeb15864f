"""The fine-tuning run: prepare, initialise, loop, finalise; resumable, data parallel over a mesh.

``superanimal-jax train`` and :func:`superanimal_jax.fine_tune`.  What each part reproduces of
DeepLabCut 3.0.2 is in ``docs/parity/fine_tuning.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np

from superanimal_jax import parallel
from superanimal_jax.errors import ModelDirError, NonFiniteLossError
from superanimal_jax.inference.pose import PoseEstimator
from superanimal_jax.io.images import read_image
from superanimal_jax.models.pose import PoseNetwork
from superanimal_jax.training.checkpoints import RunCheckpoints
from superanimal_jax.training.config import TrainConfig, training_mesh
from superanimal_jax.training.data import Item, TrainData
from superanimal_jax.training.evaluation import evaluate_frames, pseudo_labels
from superanimal_jax.training.export import export_model
from superanimal_jax.training.modes import Task, init_variables, make_items, make_task
from superanimal_jax.training.optim import make_optimizer
from superanimal_jax.training.project import Project, Split, read_project, run_split
from superanimal_jax.training.run_log import RunLog, check_run
from superanimal_jax.training.step import init_state, make_train_step


@dataclasses.dataclass
class _Run:
    """What :func:`train` (a project) or :func:`train_items` (items alone) prepares before the
    first step."""

    project: Project | None  # None: no evaluation, nothing selected by project frames.
    source: object  # The loaded source model (a SuperAnimalModel).
    task: object
    split: Split | None
    data: TrainData
    total_steps: int
    num_epochs: int
    metadata: dict  # Recorded with the exported model.


def train(project: str | Path | Project, model: str | Path, out: str | Path,
          config: TrainConfig = TrainConfig(), *, callbacks: Sequence[Callable[[int, dict], None]] = (),
          progress: bool = True, mesh=None) -> dict:
    """Fine-tune the pose model of the model directory ``model`` on ``project``, writing to ``out``.

    Resumes from ``out/checkpoints`` if present (bit-identical to an uninterrupted run);
    ``callbacks(step, metrics)`` run after every step.  Returns the final metrics, the state, the
    paths written, the task and the split.

    Data parallel over ``mesh`` (default: every device of every process,
    :func:`superanimal_jax.parallel.global_mesh`); the batch size must be a multiple of its
    device count.  With several processes every process calls ``train`` alike, each prepares its
    block of every batch, and process 0 writes the files (orbax writes the checkpoints from
    all); ``out`` must be a folder every process sees.  A run may resume on another number of
    devices."""
    mesh = training_mesh(config.batch_size, mesh)
    primary = jax.process_index() == 0
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    run = _prepare(project, model, out, config, primary)
    return _fit(run, model, out, config, callbacks=callbacks, progress=progress, mesh=mesh)


def train_items(items: Sequence[Item], model: str | Path, out: str | Path,
                config: TrainConfig = TrainConfig(), *, read_image: Callable[[str], np.ndarray] = read_image,
                callbacks: Sequence[Callable[[int, dict], None]] = (), progress: bool = True, mesh=None,
                metadata: dict | None = None, desc: str = 'train') -> dict:
    """Train the pose model of the model directory ``model`` on ``items`` (frames read by
    ``read_image``; each item's keypoints in the model's own keypoint order), writing to ``out``
    as :func:`train` does, without evaluation (video adaptation: DeepLabCut's 4 epochs evaluate
    nothing).  The head is kept as it is (every model keypoint trains)."""
    from superanimal_jax.inference.model import load

    mesh = training_mesh(config.batch_size, mesh)
    primary = jax.process_index() == 0
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    source = load(model)
    if source.pose is None:
        raise ModelDirError(f'{model} has no pose network to fine-tune')
    names = tuple(source.pose.keypoint_names)
    wrong = [item.image for item in items if item.keypoints.shape != (len(names), 3)]
    if wrong:
        raise ValueError(f'items must hold ({len(names)}, 3) keypoints, the model\'s; {wrong[:3]} do not')
    empty = np.zeros(0, np.int64)
    task = Task('adapt', names, (), empty, empty, None)
    data = TrainData(list(items), config, seed=config.seed, stride=source.pose.config.stride,
                     read_image=read_image, process_index=jax.process_index(),
                     process_count=jax.process_count())
    total_steps = config.steps or config.epochs * data.steps_per_epoch
    if primary:
        check_run(out, config, model, len(items))
    run = _Run(None, source, task, None, data, total_steps, math.ceil(total_steps / data.steps_per_epoch),
               metadata or {})
    return _fit(run, model, out, config, callbacks=callbacks, progress=progress, mesh=mesh, desc=desc)


def _fit(run: _Run, model, out: Path, config: TrainConfig, *, callbacks, progress: bool, mesh,
         desc: str = 'train') -> dict:
    """The training loop of a prepared run: checkpoints, evaluation, export."""
    from jax.experimental import multihost_utils

    primary = jax.process_index() == 0
    pose_config = dataclasses.replace(run.source.pose.config, num_keypoints=len(run.task.keypoint_names))
    dtype = parallel.compute_dtype(config.compute_dtype)
    variables = init_variables(run.task.mode, run.source.pose.variables, run.task.source_channels,
                               len(run.task.keypoint_names), config.seed)
    batch_stats = parallel.put_replicated(variables['batch_stats'], mesh)
    optimizer = make_optimizer(config, variables['params'], run.data.steps_per_epoch)
    step_fn = make_train_step(PoseNetwork(pose_config, dtype=dtype), optimizer, mesh=mesh)
    # Evaluation runs the inference runtime on each process's first device (no collectives).
    local_batch_stats = parallel.local_copy(batch_stats)
    evaluator = PoseEstimator(pose_config, {'params': variables['params'], 'batch_stats': local_batch_stats},
                              dtype=dtype, mesh=parallel.data_mesh(jax.local_devices()[:1]))

    checkpoints = RunCheckpoints(out, config.keep_checkpoints)
    state, data_state = checkpoints.restore(init_state(variables['params'], optimizer, config.seed, mesh))
    start = int(state['step'])
    if start > run.total_steps:
        raise ValueError(f'{out} already holds a checkpoint at step {start}, past the {run.total_steps} '
                         f'steps asked for')
    log = RunLog(out / 'log.jsonl', start, write=primary)
    eval_cache: dict = {}

    def evaluate_now(step: int, epoch: int) -> dict:
        record = {'step': step, 'epoch': epoch}
        if run.project is None:
            return record
        pose = evaluator.with_variables({'params': parallel.local_copy(state['params']),
                                         'batch_stats': local_batch_stats})
        for name, frames in (('train', run.split.train), ('test', run.split.test)):
            if frames:
                m = evaluate_frames(pose, run.project, frames, run.task, bbox_margin=config.bbox_margin,
                                    pcutoff=config.pcutoff, cache=eval_cache, crop_size=config.crop_size)
                record.update({f'{name}.{k}': float(val) for k, val in m.items()})
        log.write(record)
        return record

    if start == 0 and run.project is not None:  # The starting point, for the plot and for comparison.
        evaluate_now(0, 0)
    record = {}
    iterator = run.data.iterator(data_state, num_epochs=run.num_epochs)
    logger = _StepLogger(log, config.log_interval, run.total_steps, callbacks, start,
                         progress=progress and primary, desc=desc)
    save_every = config.save_interval_steps or config.save_interval * run.data.steps_per_epoch
    try:
        for step in range(start, run.total_steps):
            batch = next(iterator)
            epoch, epoch_step = batch.pop('epoch'), batch.pop('epoch_step')
            state, metrics = step_fn(state, batch_stats, parallel.global_batch(batch, mesh))
            logger.push(step, epoch, metrics)  # Checked one step late: the host never waits.
            end_of_epoch = epoch_step == run.data.steps_per_epoch - 1
            done = step + 1 == run.total_steps
            if end_of_epoch or done:
                logger.flush()
            if (end_of_epoch and (epoch + 1) % config.eval_interval == 0) or done:
                record = evaluate_now(step + 1, epoch + 1)
                if run.split is not None and run.split.test:
                    checkpoints.save_best(step + 1, state['params'], record)
            if (step + 1) % save_every == 0 or done:
                logger.flush()  # Never checkpoint a state whose loss is unchecked.
                checkpoints.save(step + 1, state, iterator.get_state())
    finally:
        logger.close()
        iterator.close()
        run.data.close()
        checkpoints.close()
    if not record:  # Resumed a finished run: report its last evaluation.
        record = next((r for r in reversed(log.records())
                       if 'epoch' in r and any('.rmse' in k for k in r)), {})
    paths = _finalise(out, run, config, model, pose_config, state, local_batch_stats, checkpoints, log,
                      primary)
    multihost_utils.sync_global_devices('superanimal_jax.train: done')
    return {'metrics': record, 'state': state, 'paths': paths, 'task': run.task, 'split': run.split}


def _prepare(project, model, out: Path, config: TrainConfig, primary: bool) -> _Run:
    """Project, source model, task, split (written once, reused on resume), items and batches."""
    from superanimal_jax.inference.model import load  # The top of the inference layer, loaded at run time.

    project = project if isinstance(project, Project) else read_project(project)
    source = load(model)
    if source.pose is None:
        raise ModelDirError(f'{model} has no pose network to fine-tune')
    task = make_task(config.mode, project, source.pose.keypoint_names)
    split = run_split(out / 'split.json', project, config.train_fraction, config.split_seed, primary)
    sizes = {f: read_image(project.image_path(f)).shape[:2] for f in split.train}
    pseudo = None
    if config.mode == 'replay':
        pseudo = pseudo_labels(source.pose, project, split.train, task, bbox_margin=config.bbox_margin)
    items = make_items(project, split.train, task, sizes=sizes, pseudo=pseudo, bbox_margin=config.bbox_margin,
                       replay_threshold=config.replay_threshold, replay_iou=config.replay_iou)
    data = TrainData(items, config, seed=config.seed, stride=source.pose.config.stride,
                     process_index=jax.process_index(), process_count=jax.process_count())
    total_steps = config.steps or config.epochs * data.steps_per_epoch
    if primary:
        check_run(out, config, model, len(items))
    return _Run(project, source, task, split, data, total_steps,
                math.ceil(total_steps / data.steps_per_epoch), {'project': str(project.path)})


def _finalise(out: Path, run: _Run, config: TrainConfig, model, pose_config, state, batch_stats,
              checkpoints: RunCheckpoints, log: RunLog, primary: bool) -> dict:
    """``OUT/model`` (and ``OUT/model-best``) model directories and ``OUT/training.png``."""
    paths = {'log': out / 'log.jsonl', 'checkpoints': out / 'checkpoints',
             'model': out / 'model', 'plot': out / 'training.png'}
    if run.split is not None:
        paths['split'] = out / 'split.json'
    metadata = {**run.metadata, 'mode': run.task.mode,
                'source_model': str(Path(model).absolute()),
                'config': json.loads(json.dumps(dataclasses.asdict(config))), 'steps': run.total_steps}
    if primary:
        export_model(paths['model'], run.source, pose_config,
                     {'params': parallel.local_copy(state['params']), 'batch_stats': batch_stats}, run.task,
                     metadata)
    tested = run.split is not None and run.split.test
    best = checkpoints.best_params(state['params']) if tested else None  # Every process restores.
    if best is not None:
        best_step, best_params = best
        paths['model_best'] = out / 'model-best'
        if primary:
            export_model(paths['model_best'], run.source, pose_config,
                         {'params': parallel.local_copy(best_params), 'batch_stats': batch_stats}, run.task,
                         {**metadata, 'best_step': best_step})
    if primary:
        from superanimal_jax.analysis.plotting import plot_training  # Plotting is above training.

        plot_training(log.records(), paths['plot'])
    return paths


class _StepLogger:
    """Checks each step's loss one step late (so the host never waits for the device), logs every
    ``interval`` steps, runs the callbacks and drives the progress bar."""

    def __init__(self, log: RunLog, interval: int, total: int, callbacks, start: int, *, progress: bool,
                 desc: str = 'train'):
        from tqdm.auto import tqdm

        self.log, self.interval, self.total, self.callbacks = log, interval, total, callbacks
        self.bar = tqdm(total=total, initial=start, desc=desc, unit='step', disable=not progress)
        self.pending = None

    def push(self, step: int, epoch: int, metrics) -> None:
        """Queue this step's metrics and check the previous step's."""
        self.flush()
        self.pending = (step, epoch, metrics)

    def flush(self) -> None:
        """Check and log the queued step now."""
        if self.pending is None:
            return
        step, epoch, metrics = self.pending
        self.pending = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values['loss']):
            raise NonFiniteLossError(f'the loss is {values["loss"]} at step {step + 1} (epoch {epoch + 1}); '
                                     'stopping (lower the learning rate, or check the labels)')
        if (step + 1) % self.interval == 0 or step + 1 == self.total or step == 0:
            self.log.write({'step': step + 1, 'epoch': epoch + 1, **values})
        self.bar.update(1)
        self.bar.set_postfix(loss=f'{values["loss"]:.3g}')
        for callback in self.callbacks:
            callback(step + 1, values)

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
