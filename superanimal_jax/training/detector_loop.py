"""Detector fine-tuning: DeepLabCut's ``DetectorTrainingRunner`` on a project, in JAX; resumable,
data parallel over a mesh.

``superanimal-jax train --detector-epochs N`` and :func:`superanimal_jax.fine_tune_detector`.
What each part reproduces of DeepLabCut 3.0.2 is in ``docs/parity/detector_training.md``.
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
from superanimal_jax.checkpoints import model_dir
from superanimal_jax.errors import ModelDirError, NonFiniteLossError
from superanimal_jax.inference.detector import Detector
from superanimal_jax.io.images import read_image
from superanimal_jax.models.detector import DetectorNetwork
from superanimal_jax.training.checkpoints import RunCheckpoints
from superanimal_jax.training.config import check_run_settings, training_mesh
from superanimal_jax.training.detector_data import (
    DetectorData,
    DetectorDataConfig,
    DetectorItem,
    detector_items,
)
from superanimal_jax.training.detector_evaluation import detector_ground_truth, evaluate_detector
from superanimal_jax.training.detector_step import make_detector_train_step
from superanimal_jax.training.optim import make_optimizer
from superanimal_jax.training.project import Project, read_project, run_split
from superanimal_jax.training.run_log import RunLog, check_run
from superanimal_jax.training.step import init_state


@dataclasses.dataclass(frozen=True)
class DetectorTrainConfig(DetectorDataConfig):
    """DeepLabCut's SuperAnimal detector fine-tuning recipe (``train_network`` with
    ``detector_epochs``), overridable; the data settings are :class:`DetectorDataConfig`'s."""

    epochs: int = 250
    steps: int | None = None  # If set, overrides epochs.
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    milestones: tuple[int, ...] = (90,)
    milestone_lrs: tuple[float, ...] = (1e-6,)
    frozen: tuple[str, ...] = ()
    seed: int = 42
    split_seed: int = 1
    train_fraction: float | None = None
    eval_interval: int = 10  # Epochs.
    save_interval: int = 25  # Epochs; also at the end.
    save_interval_steps: int | None = None
    log_interval: int = 25  # Steps.
    keep_checkpoints: int = 5
    score_threshold: float = 0.01  # DeepLabCut's detector evaluates with its box_score_thresh.
    nms_method: str = 'cpu'

    def __post_init__(self):
        check_run_settings(self)
        if self.prefetch < 0:
            raise ValueError(f'prefetch must be >= 0, got {self.prefetch}')


RUN_KEYS = ('batch_size', 'seed', 'split_seed', 'train_fraction', 'bbox_margin', 'augmentation', 'min_size',
            'max_size', 'learning_rate', 'weight_decay', 'milestones', 'milestone_lrs', 'frozen')


def fine_tune_detector(project: str | Path | Project, model: str | Path, out: str | Path,
                       config: DetectorTrainConfig = DetectorTrainConfig(), *,
                       callbacks: Sequence[Callable[[int, dict], None]] = (), progress: bool = True,
                       mesh=None) -> dict:
    """Fine-tune the detector of the model directory ``model`` on ``project``, writing to ``out``.

    ``out/checkpoints`` (resumed if present: bit-identical to an uninterrupted run), ``out/best``
    (the parameters with the best test box mAP@50:95), ``out/log.jsonl``, ``out/split.json``, and
    ``out/model``: the source model directory with the fine-tuned detector (what ``analyze``
    reads).  Data parallel over ``mesh`` (default: every device); the batch size must be a
    multiple of its device count.  Returns the last evaluation, the state and the paths.
    """
    mesh = training_mesh(config.batch_size, mesh)  # Settings refused before anything is written.
    primary = jax.process_index() == 0
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    project = project if isinstance(project, Project) else read_project(project)
    split_path = out / 'split.json'
    split = run_split(split_path, project, config.train_fraction, config.split_seed, primary)
    sizes = {f: read_image(project.image_path(f)).shape[:2] for f in split.train}
    items = detector_items(project, split.train, sizes=sizes, margin=config.bbox_margin)
    test_truth = detector_ground_truth(project, split.test, config.bbox_margin) if split.test else {}
    result = train_detector(items, model, out, config, test_truth=test_truth, callbacks=callbacks,
                            progress=progress, mesh=mesh, metadata={'project': str(project.path)})
    result['paths']['split'] = split_path
    return {**result, 'split': split}


def train_detector(items: Sequence[DetectorItem], model: str | Path, out: str | Path,
                   config: DetectorTrainConfig = DetectorTrainConfig(), *,
                   read_image: Callable[[str], np.ndarray] = read_image, test_truth: dict | None = None,
                   callbacks: Sequence[Callable[[int, dict], None]] = (), progress: bool = True, mesh=None,
                   metadata: dict | None = None, desc: str = 'train detector') -> dict:
    """Train the detector of the model directory ``model`` on ``items`` (frames read by
    ``read_image``), writing to ``out`` as :func:`fine_tune_detector` does; evaluated on
    ``test_truth`` (:func:`~superanimal_jax.training.detector_evaluation.detector_ground_truth`)
    when given.  ``metadata`` is recorded with the exported model."""
    from jax.experimental import multihost_utils

    from superanimal_jax.inference.model import load

    mesh = training_mesh(config.batch_size, mesh)
    primary = jax.process_index() == 0
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    source = load(model)
    if source.detector is None:
        raise ModelDirError(f'{model} has no detector to fine-tune')
    test_truth = test_truth or {}
    data = DetectorData(list(items), config, seed=config.seed, read_image=read_image,
                        process_index=jax.process_index(), process_count=jax.process_count())
    total_steps = config.steps or config.epochs * data.steps_per_epoch
    if primary:
        check_run(out, config, model, len(items), RUN_KEYS)

    variables = source.detector.variables
    batch_stats = parallel.put_replicated(jax.tree_util.tree_map(np.asarray, variables['batch_stats']), mesh)
    params = jax.tree_util.tree_map(np.asarray, variables['params'])
    optimizer = make_optimizer(config, params, data.steps_per_epoch)
    step_fn = make_detector_train_step(DetectorNetwork(), optimizer, nms_method=config.nms_method, mesh=mesh)
    checkpoints = RunCheckpoints(out, config.keep_checkpoints)
    state, data_state = checkpoints.restore(init_state(params, optimizer, config.seed, mesh))
    start = int(state['step'])
    if start > total_steps:
        raise ValueError(f'{out} already holds a checkpoint at step {start}, past the {total_steps} steps '
                         'asked for')
    log = RunLog(out / 'log.jsonl', start, write=primary)
    evaluator = Detector({'params': parallel.local_copy(state['params']),
                          'batch_stats': parallel.local_copy(batch_stats)},
                         score_threshold=config.score_threshold, nms_method=config.nms_method,
                         mesh=parallel.data_mesh(jax.local_devices()[:1]))

    def evaluate_now(step: int, epoch: int) -> dict:
        record = {'step': step, 'epoch': epoch}
        if test_truth:
            detector = evaluator.with_variables({'params': parallel.local_copy(state['params']),
                                                 'batch_stats': parallel.local_copy(batch_stats)})
            metrics = evaluate_detector(detector, test_truth)
            record.update({f'test.{k}': v for k, v in metrics.items()})
            record['test.mAP'] = metrics['mAP@50:95']  # The key metric, as DeepLabCut's test.mAP@50:95.
        log.write(record)
        return record

    if start == 0:
        evaluate_now(0, 0)
    record: dict = {}
    num_epochs = math.ceil(total_steps / data.steps_per_epoch)
    iterator = data.iterator(data_state, num_epochs=num_epochs)
    save_every = config.save_interval_steps or config.save_interval * data.steps_per_epoch
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start, desc=desc, unit='step',
               disable=not (progress and primary))
    try:
        for step in range(start, total_steps):
            batch = next(iterator)
            epoch, epoch_step = batch.pop('epoch'), batch.pop('epoch_step')
            state, metrics = step_fn(state, batch_stats, parallel.global_batch(batch, mesh))
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(values['loss']):
                raise NonFiniteLossError(f'the detector loss is {values["loss"]} at step {step + 1} '
                                         f'(epoch {epoch + 1}); stopping (lower the learning rate, or check '
                                         'the labels)')
            if (step + 1) % config.log_interval == 0 or step + 1 == total_steps or step == 0:
                log.write({'step': step + 1, 'epoch': epoch + 1, **values})
            bar.update(1)
            bar.set_postfix(loss=f'{values["loss"]:.3g}')
            for callback in callbacks:
                callback(step + 1, values)
            end_of_epoch = epoch_step == data.steps_per_epoch - 1
            done = step + 1 == total_steps
            if (end_of_epoch and (epoch + 1) % config.eval_interval == 0) or done:
                record = evaluate_now(step + 1, epoch + 1)
                if test_truth:
                    checkpoints.save_best(step + 1, state['params'], record)
            if (step + 1) % save_every == 0 or done:
                checkpoints.save(step + 1, state, iterator.get_state())
    finally:
        bar.close()
        iterator.close()
        data.close()
        checkpoints.close()
    if not record:
        record = next((r for r in reversed(log.records()) if 'epoch' in r and 'loss' not in r), {})
    paths = {'log': out / 'log.jsonl', 'checkpoints': out / 'checkpoints', 'model': out / 'model'}
    metadata = {**(metadata or {}), 'source_model': str(Path(model).absolute()), 'steps': total_steps,
                'config': json.loads(json.dumps(dataclasses.asdict(config)))}
    local_stats = parallel.local_copy(batch_stats)
    if primary:
        export_detector(paths['model'], source, {'params': parallel.local_copy(state['params']),
                                                 'batch_stats': local_stats}, metadata)
    best = checkpoints.best_params(state['params']) if test_truth else None
    if best is not None:
        paths['model_best'] = out / 'model-best'
        if primary:
            export_detector(paths['model_best'], source, {'params': parallel.local_copy(best[1]),
                                                          'batch_stats': local_stats},
                            {**metadata, 'best_step': best[0]})
    multihost_utils.sync_global_devices('superanimal_jax.fine_tune_detector: done')
    return {'metrics': record, 'state': state, 'paths': paths}


def export_detector(path: Path, source, variables: dict, training: dict) -> Path:
    """The source model directory (its pose network, if any) with the fine-tuned detector."""
    networks = {'detector': jax.tree_util.tree_map(np.asarray, variables)}
    sections = {'detector': {**source.metadata['detector'], 'fine_tuned': training}}
    if source.pose is not None:
        networks['pose'] = jax.tree_util.tree_map(np.asarray, source.pose.variables)
        sections['pose'] = source.metadata['pose']
    return model_dir.write(path, networks, sections, overwrite=True)
