"""Fine-tuning the SuperAnimal pose model on a DeepLabCut project, as DeepLabCut 3.0.2 does it.

    superanimal-jax train --project DIR --model DIR --out DIR [--mode convert|replay|transfer]

Modes (DeepLabCut's ``superanimal_transfer_learning`` and its options):

* ``convert`` (default; DeepLabCut's fine-tuning ``with_decoder=True``): the 27-channel head is
  sliced to the project bodyparts of the config's ``SuperAnimalConversionTables``, in project
  order (``HeatmapHead.convert_weights``), so the model predicts those bodyparts only;
* ``replay`` (``memory_replay=True``): all 27 outputs are kept; labelled bodyparts go to their
  SuperAnimal channels and every other keypoint is filled from the model's own prediction on the
  labelled box: ``v = 2`` where its score is >= ``replay_threshold`` (0.1), else masked (``v =
  -1``); an individual whose predicted keypoint box has IoU < 0.7 with its labelled box keeps only
  its labels (the rest masked).  Metrics use the converted bodyparts;
* ``transfer`` (``with_decoder=False``): the SuperAnimal backbone with a new 1x1 heatmap head for
  all project bodyparts (DeepLabCut's head init: weights N(0, 0.001^2), biases 0).  DeepLabCut's
  transfer recipe also adds a location-refinement head; ours has none.

The step (``make_train_step``) is pure and jitted with the state donated: ``state = {params,
opt_state, step, rng}``; BatchNorm statistics are frozen (DeepLabCut's ``freeze_bn_stats``)
and passed in as constants, their scale and bias trained; the loss is the weighted MSE of
:mod:`superanimal_jax.training.targets`; AdamW with torch's defaults (lr 1e-5, betas 0.9/0.999, eps 1e-8,
weight decay 0.01 on every trained parameter, decoupled and scaled by the learning rate) and
DeepLabCut's epoch milestones ([160, 190] -> 1e-6, 1e-7).  DeepLabCut's AdamW skips parameters
that get no gradient: the only such parameters in DeepLabCut's HRNet are the discarded fuse
outputs of its last module, which our network does not have (see :mod:`superanimal_jax.nn.hrnet`),
so every parameter we hold is trained and decayed; ``frozen`` patterns freeze more (no update,
no decay).

Checkpoints (orbax ``CheckpointManager``): ``OUT/checkpoints`` keeps the latest states (params,
optimiser state, step, rng and the data iterator's position) and ``OUT/best`` the best by
``test.mAP``; a killed run restarts from the latest and ends bit-identical to an uninterrupted one.
At the end ``OUT/model`` (and ``OUT/model-best``) are model directories
:func:`superanimal_jax.load` reads, ``OUT/log.jsonl`` has every logged step and evaluation and
``OUT/training.png`` plots them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from superanimal_jax.transforms import crops as crops_lib
from superanimal_jax.training import metrics as metrics_lib
from superanimal_jax import parallel
from superanimal_jax.checkpoints import model_dir
from superanimal_jax.transforms.augment import TrainAugmentation
from superanimal_jax.models.pose import PoseConfig, PoseNetwork, decode_heatmaps, normalize_crops
from superanimal_jax.training.project import Project, ProjectError, Split, read_project, write_split
from superanimal_jax.training.targets import weighted_mse
from superanimal_jax.training.data import DataConfig, Item, TrainData, bbox_from_keypoints, load_rgb

MODES = ('convert', 'replay', 'transfer')


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite; the message names the step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """DeepLabCut's SuperAnimal fine-tuning recipe (``hrnet_w32.yaml``), overridable."""

    mode: str = 'convert'
    epochs: int = 200
    steps: int | None = None  # If set, overrides epochs.
    batch_size: int = 1
    learning_rate: float = 1e-5
    weight_decay: float = 0.01
    milestones: tuple[int, ...] = (160, 190)  # Epochs after which ...
    milestone_lrs: tuple[float, ...] = (1e-6, 1e-7)  # ... these learning rates apply.
    frozen: tuple[str, ...] = ()  # Regexes over 'a/b/kernel' parameter paths: not trained.
    seed: int = 42
    split_seed: int = 1
    train_fraction: float | None = None  # Default: the project's TrainingFraction.
    bbox_margin: int = 25
    augmentation: TrainAugmentation = TrainAugmentation()
    eval_interval: int = 10  # Epochs.
    save_interval: int = 25  # Epochs; also at the end.
    save_interval_steps: int | None = None  # Overrides save_interval if set.
    log_interval: int = 25  # Steps.
    pcutoff: float = 0.6
    replay_threshold: float = 0.1
    replay_iou: float = 0.7
    workers: int = 2
    keep_checkpoints: int = 2
    compute_dtype: str = 'float32'  # Or 'bfloat16'; parameters and optimiser state stay float32.

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        parallel.compute_dtype(self.compute_dtype)
        if len(self.milestones) != len(self.milestone_lrs):
            raise ValueError('milestones and milestone_lrs must have the same length')
        for name in ('batch_size', 'epochs', 'eval_interval', 'save_interval', 'log_interval', 'keep_checkpoints',
                     'workers'):
            if getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('steps', 'save_interval_steps'):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')


# ----------------------------------------------------------------------------- Model and modes

def _path(keys) -> str:
    return '/'.join(str(getattr(k, 'key', k)) for k in keys)


def init_variables(mode: str, variables: dict, channels: np.ndarray | None, num_keypoints: int,
                   seed: int = 0) -> dict:
    """The starting variables for ``mode`` from the SuperAnimal ones (see the module docstring)."""
    params = jax.tree_util.tree_map(np.asarray, variables['params'])
    head = dict(params['head']['deconv'])
    if mode == 'convert':
        head = {'kernel': head['kernel'][..., channels], 'bias': head['bias'][channels]}
    elif mode == 'transfer':
        rng = np.random.default_rng([seed, 3])
        in_features = head['kernel'].shape[2]
        head = {'kernel': (0.001 * rng.standard_normal((1, 1, in_features, num_keypoints))).astype(np.float32),
                'bias': np.zeros(num_keypoints, np.float32)}
    params = {**params, 'head': {'deconv': head}}
    return {'params': params, 'batch_stats': jax.tree_util.tree_map(np.asarray, variables['batch_stats'])}


def lr_schedule(config: TrainConfig, steps_per_epoch: int) -> Callable:
    """DeepLabCut's ``LRListScheduler``, stepped once per epoch: epoch ``e`` (0-based) uses the
    last milestone learning rate whose milestone is <= ``e``."""
    def schedule(step):
        epoch = step // steps_per_epoch
        lr = jnp.asarray(config.learning_rate, jnp.float32)
        for milestone, value in zip(config.milestones, config.milestone_lrs):
            lr = jnp.where(epoch >= milestone, jnp.float32(value), lr)
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


def make_train_step(network: PoseNetwork, optimizer: optax.GradientTransformation, *, with_grads: bool = False,
                    mesh=None):
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


# ----------------------------------------------------------------------------- Labels per mode

@dataclasses.dataclass(frozen=True)
class Task:
    """What a run trains: model keypoint names, and which project bodyparts feed which channel."""

    mode: str
    keypoint_names: tuple[str, ...]
    bodyparts: tuple[str, ...]  # The project bodyparts that are evaluated (in project order).
    project_columns: np.ndarray  # For each evaluated bodypart, its column in project.keypoints.
    channels: np.ndarray  # For each evaluated bodypart, its model channel.
    source_channels: np.ndarray | None  # convert: SuperAnimal channels kept by the head.


def make_task(mode: str, project: Project, model_keypoints: tuple[str, ...]) -> Task:
    if mode == 'transfer':
        k = np.arange(len(project.bodyparts))
        return Task(mode, project.bodyparts, project.bodyparts, k, k, None)
    bodyparts, sa_channels = project.conversion_array(model_keypoints)
    columns = np.asarray([project.bodyparts.index(b) for b in bodyparts])
    if mode == 'convert':
        return Task(mode, bodyparts, bodyparts, columns, np.arange(len(bodyparts)), sa_channels)
    return Task(mode, tuple(model_keypoints), bodyparts, columns, sa_channels, None)


def labelled_keypoints(project: Project, frame: int, individual: int, height: int, width: int) -> np.ndarray:
    """One individual's project labels ``(bodyparts, 3)``: ``v = 2`` where labelled strictly inside
    the frame (DeepLabCut's loader), else 0; unlabelled points at (0, 0)."""
    xy = project.keypoints[frame, individual]
    inside = (~np.isnan(xy).any(axis=1) & (xy[:, 0] > 0) & (xy[:, 0] < width) & (xy[:, 1] > 0)
              & (xy[:, 1] < height))
    return np.concatenate([np.nan_to_num(xy), np.where(inside, 2.0, 0.0)[:, None]], axis=1)


def labelled_individuals(project: Project, frame: int, task: Task, height: int, width: int
                         ) -> list[tuple[int, np.ndarray]]:
    """``(individual, labels)`` for each individual of ``frame`` with a visible label; ``labels``
    ``(bodyparts, 3)`` over the task's evaluated bodyparts (:func:`labelled_keypoints`)."""
    out = []
    for i in range(len(project.individuals)):
        labels = labelled_keypoints(project, frame, i, height, width)[task.project_columns]
        if (labels[:, 2] > 0).any():
            out.append((i, labels))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two COCO xywh boxes."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def make_items(project: Project, frames: Sequence[int], task: Task, *, sizes: dict[int, tuple[int, int]],
               pseudo: dict | None = None, replay_threshold: float = 0.1, replay_iou: float = 0.7,
               bbox_margin: int = 25) -> list[Item]:
    """Training items (one per individual with a visible label) in the model's channel space."""
    k_model = len(task.keypoint_names)
    items = []
    for f in frames:
        height, width = sizes[f]
        for i, labels in labelled_individuals(project, f, task, height, width):
            keypoints = np.zeros((k_model, 3))
            keypoints[task.channels] = labels
            if task.mode == 'replay':
                predicted = pseudo[(f, i)]
                fill = np.ones(k_model, bool)
                fill[task.channels[labels[:, 2] > 0]] = False
                confident = predicted[:, 2] >= replay_threshold
                keypoints[fill] = np.where(confident[fill, None],
                                           np.concatenate([predicted[fill, :2], np.full((fill.sum(), 1), 2.0)], 1),
                                           np.array([0.0, 0.0, -1.0]))
                truth = bbox_from_keypoints(labels, height, width, bbox_margin)
                guess = bbox_from_keypoints(np.concatenate([predicted[:, :2], confident[:, None] * 2.0], 1),
                                            height, width, bbox_margin)
                if box_iou(truth, guess) < replay_iou:
                    keypoints[fill] = np.array([0.0, 0.0, -1.0])
            items.append(Item(str(project.image_path(f)), keypoints))
    return items


# ----------------------------------------------------------------------------- Evaluation

def make_predict_fn(network: PoseNetwork):
    """``(variables, uint8 crops) -> (N, K, 3)`` keypoints in crop pixels."""
    stride = network.config.stride
    return jax.jit(lambda v, x: decode_heatmaps(network.apply(v, normalize_crops(x))['heatmaps'], stride))


def predict_on_boxes(predict, variables, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray], *,
                     chunk: int = 8, crop_size=(256, 256)) -> list[np.ndarray]:
    """Keypoints in frame pixels for each frame's COCO ``boxes (M, 4)``: DeepLabCut's top-down
    inference (black-padded uint8 crops with context, normalised on the device)."""
    crops, owners, scales, offsets = [], [], [], []
    for j, (frame, b) in enumerate(zip(frames, boxes)):
        windows = crops_lib.crop_windows(np.asarray(b, np.float32).reshape(-1, 4), crop_size)
        s, o = crops_lib.scales_and_offsets(windows, crop_size)
        for w in windows:
            crops.append(crops_lib.crop(frame, w, crop_size))
        owners += [j] * len(windows)
        scales.append(s)
        offsets.append(o)
    if not crops:
        return [np.zeros((0, 0, 3), np.float32) for _ in frames]
    crops = np.stack(crops)
    out = []
    for start in range(0, len(crops), chunk):
        part = crops[start:start + chunk]
        padded = np.concatenate([part, np.zeros((chunk - len(part),) + part.shape[1:], part.dtype)])
        out.append(np.asarray(predict(variables, padded))[:len(part)])
    keypoints = crops_lib.to_frame(np.concatenate(out), np.concatenate(scales), np.concatenate(offsets))
    owners = np.asarray(owners)
    return [keypoints[owners == j] for j in range(len(frames))]


def evaluate_frames(predict, variables, project: Project, frames: Sequence[int], task: Task, *,
                    bbox_margin: int = 25, pcutoff: float = 0.6, single_animal: bool = False,
                    read_image=load_rgb, cache: dict | None = None) -> dict[str, float]:
    """DeepLabCut's top-down evaluation with ground-truth boxes: RMSE (mean pixel distance),
    RMSE over predictions with score >= pcutoff, mAP and mAR (OKS, sigma 0.1)."""
    cache = {} if cache is None else cache
    ground_truth, images, boxes, names = {}, [], [], []
    for f in frames:
        if f not in cache:
            cache[f] = read_image(project.image_path(f))
        image = cache[f]
        h, w = image.shape[:2]
        labels = [lab for _, lab in labelled_individuals(project, f, task, h, w)]
        if not labels:
            continue
        names.append(project.images[f])
        ground_truth[project.images[f]] = np.stack(labels)
        images.append(image)
        boxes.append(np.stack([bbox_from_keypoints(lab, h, w, bbox_margin) for lab in labels]))
    if not names:
        raise ProjectError('no labelled frames to evaluate')
    predicted = predict_on_boxes(predict, variables, images, boxes)
    predictions = {n: p[:, task.channels] for n, p in zip(names, predicted)}
    return metrics_lib.compute_metrics(ground_truth, predictions, single_animal=single_animal, pcutoff=pcutoff)


# ----------------------------------------------------------------------------- Training run

def _frame_sizes(project: Project, frames, read_image) -> dict[int, tuple[int, int]]:
    import cv2

    sizes = {}
    for f in frames:
        path = project.image_path(f)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if read_image is load_rgb else read_image(path)
        if image is None:
            raise ProjectError(f'{path}: cannot read the image')
        sizes[f] = image.shape[:2]
    return sizes


def pseudo_labels(sa_predict, sa_variables, project: Project, frames, task: Task, *, bbox_margin: int,
                  read_image=load_rgb) -> dict:
    """Memory replay: the SuperAnimal model's keypoints ``(27, 3)`` on each labelled box."""
    out = {}
    for f in frames:
        image = read_image(project.image_path(f))
        h, w = image.shape[:2]
        found = labelled_individuals(project, f, task, h, w)
        keys = [(f, i) for i, _ in found]
        boxes = [bbox_from_keypoints(labels, h, w, bbox_margin) for _, labels in found]
        if keys:
            for key, kp in zip(keys, predict_on_boxes(sa_predict, sa_variables, [image], [np.stack(boxes)])[0]):
                out[key] = kp
    return out


class _Log:
    """``log.jsonl``: one JSON object per logged step / evaluation; on resume, truncated to the
    checkpoint's step so that the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int, *, write: bool = True):
        self.path, self.enabled = path, write
        if not write:  # Another process writes the log.
            return
        kept = []
        if path.exists() and resume_step > 0:
            kept = [line for line in path.read_text().splitlines()
                    if (record := _parse(line)) is not None and record['step'] <= resume_step]
        path.write_text(''.join(line + '\n' for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def records(self) -> list[dict]:
        return [r for line in self.path.read_text().splitlines() if (r := _parse(line)) is not None]


def _parse(line: str) -> dict | None:
    try:  # A line torn by a kill or a full disk is dropped.
        return json.loads(line)
    except json.JSONDecodeError:
        return None


RUN_KEYS = ('mode', 'batch_size', 'seed', 'split_seed', 'train_fraction', 'bbox_margin', 'augmentation',
            'learning_rate', 'weight_decay', 'milestones', 'milestone_lrs', 'frozen', 'replay_threshold',
            'replay_iou', 'compute_dtype')


def _check_run(out: Path, config: TrainConfig, model, items: int) -> None:
    """``OUT/run.json`` records what a run's checkpoints depend on; resuming with other settings
    would silently mix two experiments, so it is refused."""
    record = {'source_model': str(Path(model).absolute()), 'items': items,
              **json.loads(json.dumps({k: dataclasses.asdict(config)[k] for k in RUN_KEYS}))}
    path = out / 'run.json'
    if path.exists():
        previous = json.loads(path.read_text())
        changed = {k: (previous.get(k), v) for k, v in record.items() if previous.get(k) != v}
        if changed:
            details = ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())
            raise ValueError(f'{out} holds a run made with other settings ({details}); resume it with '
                             f'the same settings (only --steps/--epochs may grow) or use another --out')
    else:
        path.write_text(json.dumps(record, indent=1) + '\n')


def train(project: str | Path | Project, model: str | Path, out: str | Path, config: TrainConfig = TrainConfig(),
          *, callbacks: Sequence[Callable[[int, dict], None]] = (), progress: bool = True, mesh=None) -> dict:
    """Fine-tune the pose model of the model directory ``model`` on ``project``; see the module
    docstring.  Resumes from ``out/checkpoints`` if present.  ``callbacks(step, metrics)`` run after
    every step.  Returns the final metrics and the paths written.

    Data parallel over ``mesh`` (default: every device of every process,
    :func:`superanimal_jax.parallel.global_mesh`); the batch size must be a multiple of its
    device count.  With several processes every process calls ``train`` alike, each prepares its
    block of every batch, and process 0 writes the files (orbax writes the checkpoints from
    all); ``out`` must be a folder every process sees.  A run may resume on another number of
    devices."""
    from jax.experimental import multihost_utils
    from tqdm.auto import tqdm

    from superanimal_jax.inference.model import load

    mesh = mesh or parallel.global_mesh()
    if config.batch_size % mesh.size:
        raise ValueError(f'batch size {config.batch_size} does not split over the {mesh.size} devices of the '
                         f'mesh: use a multiple of {mesh.size}')
    processes = sorted({d.process_index for d in mesh.devices.flat})
    if processes != list(range(jax.process_count())):
        raise ValueError(f'the training mesh must span every process (it spans processes {processes} of '
                         f'{jax.process_count()})')
    primary = jax.process_index() == 0
    out = Path(out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    project = project if isinstance(project, Project) else read_project(project)
    sa = load(model)
    if sa.pose is None:
        raise model_dir.ModelDirError(f'{model} has no pose network to fine-tune')
    task = make_task(config.mode, project, sa.pose.keypoint_names)

    split_path = out / 'split.json'
    if primary and not split_path.exists():
        write_split(split_path, project.split(config.train_fraction, config.split_seed), project)
    multihost_utils.sync_global_devices('superanimal_jax.training.loop: split written')
    split = Split.from_json(json.loads(split_path.read_text()), project)
    sizes = _frame_sizes(project, split.train, load_rgb)
    pseudo = None
    if config.mode == 'replay':
        sa_predict = lambda variables, crops: sa.pose.keypoints_uint8(crops)  # noqa: E731  Split over the devices.
        pseudo = pseudo_labels(sa_predict, sa.pose.variables, project, split.train, task,
                               bbox_margin=config.bbox_margin)
    items = make_items(project, split.train, task, sizes=sizes, pseudo=pseudo, bbox_margin=config.bbox_margin,
                       replay_threshold=config.replay_threshold, replay_iou=config.replay_iou)
    data = TrainData(items, DataConfig(batch_size=config.batch_size, bbox_margin=config.bbox_margin,
                                       augmentation=config.augmentation, workers=config.workers,
                                       stride=sa.pose.config.stride), seed=config.seed,
                     process_index=jax.process_index(), process_count=jax.process_count())
    total_steps = config.steps or config.epochs * data.steps_per_epoch
    num_epochs = math.ceil(total_steps / data.steps_per_epoch)
    if primary:
        _check_run(out, config, model, len(items))

    pose_config = dataclasses.replace(sa.pose.config, num_keypoints=len(task.keypoint_names))
    network = PoseNetwork(pose_config, dtype=parallel.compute_dtype(config.compute_dtype))
    variables = init_variables(config.mode, sa.pose.variables, task.source_channels, len(task.keypoint_names),
                               config.seed)
    batch_stats = parallel.put_replicated(variables['batch_stats'], mesh)
    optimizer = make_optimizer(config, variables['params'], data.steps_per_epoch)
    state = init_state(variables['params'], optimizer, config.seed, mesh)
    step_fn = make_train_step(network, optimizer, mesh=mesh)
    predict = make_predict_fn(network)
    local_batch_stats = parallel.local_copy(batch_stats)

    save_every = config.save_interval_steps or config.save_interval * data.steps_per_epoch
    # Both managers save at a step that is an evaluation and a checkpoint; their cross-process
    # barriers are named by step, so each gets its own prefix (else the second collides with the first).
    latest = ocp.CheckpointManager(out / 'checkpoints', options=ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, save_interval_steps=1, multiprocessing_options=_barriers('latest')))
    best = ocp.CheckpointManager(out / 'best', options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m['test.mAP'], best_mode='max', multiprocessing_options=_barriers('best')))
    data_state = None
    if latest.latest_step() is not None:
        restored = latest.restore(latest.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)),
            data=ocp.args.JsonRestore()))
        state, data_state = restored['state'], restored['data']
    start = int(state['step'])
    if start > total_steps:
        raise ValueError(f'{out} already holds a checkpoint at step {start}, past the {total_steps} steps asked for')
    log = _Log(out / 'log.jsonl', start, write=primary)
    iterator = data.iterator(data_state, num_epochs=num_epochs)
    eval_cache: dict = {}

    def evaluate_now(step: int, epoch: int) -> dict:
        # Every process evaluates on its own first device (the same numbers; no collectives).
        v = {'params': parallel.local_copy(state['params']), 'batch_stats': local_batch_stats}
        record = {'step': step, 'epoch': epoch}
        for name, frames in (('train', split.train), ('test', split.test)):
            if frames:
                m = evaluate_frames(predict, v, project, frames, task, bbox_margin=config.bbox_margin,
                                    pcutoff=config.pcutoff, cache=eval_cache)
                record.update({f'{name}.{k}': float(val) for k, val in m.items()})
        log.write(record)
        return record

    if start == 0:  # The starting point, for the plot and for comparison.
        evaluate_now(0, 0)
    bar = tqdm(total=total_steps, initial=start, desc='train', unit='step', disable=not (progress and primary))
    previous = None
    record = {}
    try:
        for step in range(start, total_steps):
            batch = next(iterator)
            epoch, epoch_step = batch.pop('epoch'), batch.pop('epoch_step')
            state, metrics = step_fn(state, batch_stats, parallel.global_batch(batch, mesh))
            if previous is not None:  # Checked one step late: the host never waits for the device.
                _check_and_log(previous, log, config.log_interval, total_steps, bar, callbacks)
            previous = (step, epoch, metrics)
            end_of_epoch = epoch_step == data.steps_per_epoch - 1
            done = step + 1 == total_steps
            if end_of_epoch or done:
                _check_and_log(previous, log, config.log_interval, total_steps, bar, callbacks)
                previous = None
            if (end_of_epoch and (epoch + 1) % config.eval_interval == 0) or done:
                record = evaluate_now(step + 1, epoch + 1)
                if split.test and step + 1 not in best.all_steps():
                    best.save(step + 1, args=ocp.args.Composite(params=ocp.args.StandardSave(state['params'])),
                              metrics={'test.mAP': record['test.mAP']})
            if (step + 1) % save_every == 0 or done:
                if previous is not None:  # Never checkpoint a state whose loss is unchecked.
                    _check_and_log(previous, log, config.log_interval, total_steps, bar, callbacks)
                    previous = None
                latest.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             data=ocp.args.JsonSave(iterator.get_state())))
    finally:
        bar.close()
        iterator.close()
        data.close()
        latest.wait_until_finished()
        best.wait_until_finished()
        latest.close()
        best.close()
    if not record:  # Resumed a finished run: report its last evaluation.
        record = next((r for r in reversed(log.records()) if 'epoch' in r and any('.rmse' in k for k in r)), {})

    paths = {'log': out / 'log.jsonl', 'split': split_path, 'checkpoints': out / 'checkpoints',
             'model': out / 'model', 'plot': out / 'training.png'}
    metadata = {'mode': config.mode, 'project': str(project.path), 'source_model': str(Path(model).absolute()),
                'config': json.loads(json.dumps(dataclasses.asdict(config))), 'steps': total_steps}
    final = {'params': parallel.local_copy(state['params']), 'batch_stats': local_batch_stats}
    if primary:
        export_model(paths['model'], sa, pose_config, final, task, metadata)
    best = ocp.CheckpointManager(out / 'best', options=ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda m: m['test.mAP'], best_mode='max', read_only=True,
        multiprocessing_options=_barriers('best')))
    if split.test and best.best_step() is not None:  # Every process restores (orbax syncs them).
        best_params = best.restore(best.best_step(), args=ocp.args.Composite(params=ocp.args.StandardRestore(
            jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state['params']))))['params']
        paths['model_best'] = out / 'model-best'
        if primary:
            export_model(paths['model_best'], sa, pose_config,
                         {'params': parallel.local_copy(best_params), 'batch_stats': local_batch_stats}, task,
                         {**metadata, 'best_step': best.best_step()})
    best.close()
    if primary:
        from superanimal_jax.analysis.plotting import plot_training

        plot_training(log.records(), paths['plot'])
    multihost_utils.sync_global_devices('superanimal_jax.training.loop: done')
    return {'metrics': record, 'state': state, 'paths': paths, 'task': task, 'split': split}


def _barriers(name: str) -> ocp.options.MultiprocessingOptions:
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f'superanimal_jax.{name}')


def _check_and_log(previous, log: _Log, interval: int, total: int, bar, callbacks) -> None:
    step, epoch, metrics = previous
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(values['loss']):
        raise NonFiniteLossError(f'the loss is {values["loss"]} at step {step + 1} (epoch {epoch + 1}); '
                                 'stopping (lower the learning rate, or check the labels)')
    if (step + 1) % interval == 0 or step + 1 == total or step == 0:
        log.write({'step': step + 1, 'epoch': epoch + 1, **values})
    bar.update(1)
    bar.set_postfix(loss=f'{values["loss"]:.3g}')
    for callback in callbacks:
        callback(step + 1, values)


def export_model(path: Path, source, pose_config: PoseConfig, variables: dict, task: Task, training: dict) -> Path:
    """A model directory with the fine-tuned pose network (and the source's detector, if any)."""
    pose_section = dict(source.metadata['pose'])
    pose_section.update({'num_keypoints': pose_config.num_keypoints, 'keypoints': list(task.keypoint_names),
                         'fine_tuned': training})
    networks = {'pose': jax.tree_util.tree_map(np.asarray, variables)}
    sections = {'pose': pose_section}
    if source.detector is not None:
        networks['detector'] = jax.tree_util.tree_map(np.asarray, source.detector.variables)
        sections['detector'] = source.metadata['detector']
    return model_dir.write(path, networks, sections, overwrite=True)


def evaluation_task(project: Project, names: tuple[str, ...]) -> Task:
    """Which model channel answers for which project bodypart: by name for a model fine-tuned on
    the project (the bodyparts it predicts), else through the project's conversion table."""
    shared = [b for b in project.bodyparts if b in names]
    if shared:
        return Task('direct', names, tuple(shared), np.asarray([project.bodyparts.index(b) for b in shared]),
                    np.asarray([names.index(b) for b in shared]), None)
    return make_task('replay', project, names)


def evaluate(project: str | Path | Project, model: str | Path, *, frames: str | Sequence[int] = 'all',
             split: str | Path | None = None, bbox_margin: int = 25, pcutoff: float | None = None,
             single_animal: bool | None = None) -> dict:
    """DeepLabCut's evaluation of a model directory on a project's labelled frames.

    The model's keypoints are matched to project bodyparts by name, or through the project's
    conversion table for a SuperAnimal model.  ``frames``: 'all', or indices; with ``split`` (a
    ``split.json`` written by :func:`train`) the train and test sets are reported apart.
    ``pcutoff`` defaults to the project's.  Single-animal projects pair predictions directly
    (``single_animal`` defaults to that, as in DeepLabCut's ``evaluate_network``); the training
    loop always matches by OKS, as DeepLabCut's does.
    """
    from superanimal_jax.inference.model import load

    project = project if isinstance(project, Project) else read_project(project)
    loaded = load(model)
    if loaded.pose is None:
        raise model_dir.ModelDirError(f'{model} has no pose network')
    task = evaluation_task(project, loaded.pose.keypoint_names)
    if pcutoff is None:
        pcutoff = project.config.get('pcutoff', 0.6)
        pcutoff = [float(p) for p in pcutoff] if isinstance(pcutoff, (list, tuple)) else float(pcutoff)
    predict = lambda variables, crops: loaded.pose.keypoints_uint8(crops)  # noqa: E731  Split over the devices.
    if single_animal is None:
        single_animal = not project.multi_animal
    options = dict(bbox_margin=bbox_margin, pcutoff=pcutoff, single_animal=single_animal, cache={})
    if split is not None:
        s = Split.from_json(json.loads(Path(split).read_text()), project)
        sets = {'train': s.train, 'test': s.test}
    else:
        sets = {'all': tuple(range(len(project.images))) if frames == 'all' else tuple(frames)}
    results = {}
    for name, indices in sets.items():
        if indices:
            m = evaluate_frames(predict, loaded.pose.variables, project, indices, task, **options)
            results.update({f'{name}.{k}': float(v) for k, v in m.items()})
    return results
