"""``analyze --video-adapt``: DeepLabCut's ``video_inference_superanimal(..., video_adapt=True)``
(``deeplabcut/modelzoo/video_inference.py`` in 3.0.2), with the frames kept in memory.

1. A first pass writes the ``before_adapt`` results (h5, json, optionally the labeled video).
2. Pseudo-labels from every 10th frame of that json (:mod:`.pseudo_labels`), written as
   DeepLabCut's COCO ``pseudo_<stem>/annotations/{train,test}.json`` for inspection.
3. The detector is adapted first, then the pose model: DeepLabCut's recipe (batch 8, 4 epochs
   each, AdamW at a constant 1e-5 with fresh moments, frozen BatchNorm statistics, the pose
   items cropped from the detector's box with no margin), the frames decoded from the video
   (:mod:`.data`) instead of DeepLabCut's PNG per frame.  Checkpoints each epoch: an interrupted
   adaptation resumes exactly.
4. A second pass with the adapted model writes DeepLabCut's ``after_adapt`` files under the
   adapted scorer (:func:`adapted_scorer`), ``superanimal_topviewmouse_snapshot-hrnet_w32-004_``
   ``snapshot-fasterrcnn_resnet50_fpn_v2-004`` with the default epochs.

The adapted model directory is ``pseudo_<stem>/pose/model`` (``pseudo_<stem>/detector/model``:
the adapted detector with the source pose network).

Resuming: ``pseudo_<stem>/adaptation.json`` records the settings and the first pass's files
(with their digests) and the finished training stages.  Run again after an interruption, with
the same settings, an adaptation reuses a complete first pass, rebuilds the same pseudo-labels,
reuses a finished stage's model directory, resumes an unfinished stage from its last checkpoint
(each stage keeps only its latest, and drops it once finished) and redoes the second pass: the
results are those of an uninterrupted run.  With other settings it stops with an
:class:`AdaptationError` instead of mixing two adaptations (DeepLabCut silently reuses its
pseudo-labels and checkpoints when thresholds change).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax

from superanimal_jax import parallel
from superanimal_jax.adaptation.data import VideoFrames, detector_items, pose_items
from superanimal_jax.adaptation.pseudo_labels import pseudo_labels, read_predictions
from superanimal_jax.analysis.analyze import analyze_video
from superanimal_jax.errors import AdaptationError
from superanimal_jax.io.files import atomic_path, sha256
from superanimal_jax.io.results import SUPERANIMAL_SCORER, output_folder
from superanimal_jax.io.video import VideoReader
from superanimal_jax.training.config import TrainConfig
from superanimal_jax.training.detector_loop import DetectorTrainConfig, train_detector
from superanimal_jax.training.loop import train_items

SUPER_ANIMAL = 'superanimal_topviewmouse'
POSE_SNAPSHOT = 'snapshot-hrnet_w32'
DETECTOR_SNAPSHOT = 'snapshot-fasterrcnn_resnet50_fpn_v2'
NEVER = 10 ** 9  # An evaluation interval no adaptation reaches (DeepLabCut's 4 epochs evaluate nothing).


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """DeepLabCut's video adaptation settings (``video_inference_superanimal`` defaults)."""

    pseudo_threshold: float = 0.1  # Keypoints scoring below become (0, 0), "visible".
    bbox_threshold: float = 0.9  # Individuals whose box scores below are left out.
    detector_epochs: int = 4
    pose_epochs: int = 4
    batch_size: int = 8
    learning_rate: float = 1e-5
    seed: int = 42
    order: str = 'deeplabcut'  # Every 10th frame by name as DeepLabCut sorts them; 'frames': by time.
    workers: int = 2

    def __post_init__(self):
        if self.detector_epochs < 0 or self.pose_epochs < 0:
            raise ValueError('detector_epochs and pose_epochs must be >= 0')
        if self.batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')


def adapted_scorer(config: AdaptConfig) -> str:
    """DeepLabCut's scorer after adaptation: the adapted snapshots' names (the released models
    are at epoch 0, so the snapshots are those of epochs ``pose_epochs`` and ``detector_epochs``)."""
    detector = (f'{DETECTOR_SNAPSHOT}-{config.detector_epochs:03d}' if config.detector_epochs
                else SUPERANIMAL_SCORER.split('_hrnet_w32_')[1])
    return f'{SUPER_ANIMAL}_{POSE_SNAPSHOT}-{config.pose_epochs:03d}_{detector}'


def detector_train_config(config: AdaptConfig) -> DetectorTrainConfig:
    """The detector's adaptation training: DeepLabCut's detector recipe with ``adaptation_train``'s
    changes (batch and epochs from ``config``, a checkpoint each epoch, no evaluation) and a
    constant learning rate (the released files are at epoch 0, far from the milestone at 90).
    Only the latest checkpoint is kept: it is all a resume needs."""
    return DetectorTrainConfig(
        epochs=config.detector_epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        milestones=(), milestone_lrs=(), eval_interval=NEVER, save_interval=1, keep_checkpoints=1,
        seed=config.seed, workers=config.workers)


def pose_train_config(config: AdaptConfig) -> TrainConfig:
    """The pose model's adaptation training (as :func:`detector_train_config`; its milestones are at
    160 and 190)."""
    return TrainConfig(
        epochs=config.pose_epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        milestones=(), milestone_lrs=(), eval_interval=NEVER, save_interval=1, keep_checkpoints=1,
        seed=config.seed, workers=config.workers)


def stage_batch_size(batch_size: int, num_items: int, devices: int = 1) -> int:
    """A training stage's batch: ``batch_size``, but never more than its ``num_items`` (DeepLabCut's
    DataLoader makes a batch of 3 from 3 pseudo-labelled frames; padding them to 8 would cost the
    compute and memory of 8 for the same result), rounded up to a multiple of ``devices``."""
    size = max(1, min(batch_size, num_items))
    return -(-size // devices) * devices


def adapt_video(video: str | os.PathLike, model: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                config: AdaptConfig = AdaptConfig(), *, max_individuals: int = 10, batch_size: int = 8,
                pcutoff: float = 0.1, labeled_video: bool = False, csv: bool = False, progress: bool = True,
                mesh=None) -> dict:
    """Video adaptation of the model directory ``model`` to ``video`` (module docstring).

    Returns ``before`` and ``after``: the paths each pass wrote, ``pseudo_labels``: the
    train/test json, ``model``: the adapted model directory.  Raises :class:`AdaptationError`
    (after the first pass, with nothing written as if adapted) when no frame yields a
    pseudo-label.
    """
    from superanimal_jax.inference.model import load

    video = Path(video)
    reader = VideoReader(video)
    out_dir = output_folder(out_dir) if out_dir is not None else video.parent
    folder = out_dir / f'pseudo_{video.stem}'
    record = _Record(folder / 'adaptation.json')
    source = load(model)
    if source.detector is None or source.pose is None:
        raise AdaptationError(f'{model}: video adaptation needs a model with a detector and a pose network')
    inputs = {'model': str(Path(model).absolute()), 'video': str(video.absolute()),
              'video_bytes': video.stat().st_size, 'max_individuals': max_individuals}
    first_pass = {**inputs, 'pcutoff': pcutoff, 'bbox_threshold': config.bbox_threshold,
                  'labeled_video': labeled_video, 'csv': csv}
    before = record.first_pass(first_pass)
    if before is None:
        before = analyze_video(video, source, out_dir, max_individuals=max_individuals, batch_size=batch_size,
                               pcutoff=pcutoff, bbox_threshold=config.bbox_threshold,
                               labeled_video=labeled_video, csv=csv, progress=progress)
        record.save_first_pass(first_pass, before)
    labels = pseudo_labels(read_predictions(before['json']), (reader.height, reader.width),
                           source.keypoint_names, num_frames=len(reader) or None,
                           pose_threshold=config.pseudo_threshold, bbox_threshold=config.bbox_threshold,
                           order=config.order)
    if not labels.num_annotations:
        raise AdaptationError(f'no frame of {video} yields a pseudo-label (no box scores >= '
                              f'{config.bbox_threshold}): nothing to adapt to; check the video, or lower '
                              '--bbox-threshold')
    record.start_training({**inputs, **dataclasses.asdict(config), 'workers': None})
    json_paths = labels.write(folder)
    frames = VideoFrames(video, labels.frames)
    metadata = {'video': str(video.absolute()), 'pseudo_labels': str(json_paths['train'])}
    adapted = Path(model)
    devices = (mesh or parallel.global_mesh()).size
    if config.detector_epochs:
        done = record.finished('detector')
        if done is None:
            items = detector_items(labels)
            stage = dataclasses.replace(detector_train_config(config),
                                        batch_size=stage_batch_size(config.batch_size, len(items), devices))
            done = train_detector(items, adapted, folder / 'detector', stage, read_image=frames,
                                  progress=progress, mesh=mesh, metadata=metadata,
                                  desc='adapt detector')['paths']['model']
            record.finish('detector', done)
        adapted = done
    if config.pose_epochs:
        done = record.finished('pose')
        if done is None:
            items = pose_items(labels)
            stage = dataclasses.replace(pose_train_config(config),
                                        batch_size=stage_batch_size(config.batch_size, len(items), devices))
            done = train_items(items, adapted, folder / 'pose', stage, read_image=frames, progress=progress,
                               mesh=mesh, metadata=metadata, desc='adapt pose')['paths']['model']
            record.finish('pose', done)
        adapted = done
    after = analyze_video(video, load(adapted), out_dir, max_individuals=max_individuals,
                          batch_size=batch_size, pcutoff=pcutoff, bbox_threshold=config.bbox_threshold,
                          labeled_video=labeled_video, csv=csv, progress=progress,
                          scorer=adapted_scorer(config), stage='after_adapt')
    return {'before': before, 'after': after, 'pseudo_labels': json_paths, 'model': Path(adapted)}


class _Record:
    """``pseudo_<stem>/adaptation.json``: an adaptation's finished first pass and the settings its
    training runs with, so that a rerun resumes it (module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def first_pass(self, options: dict) -> dict[str, Path] | None:
        """The recorded first pass's files if it ran with ``options`` and they are unchanged."""
        done = self.data.get('first_pass')
        if not done or done['options'] != options:
            return None
        paths = {kind: Path(p) for kind, p in done['files'].items()}
        if all(p.is_file() and sha256(p) == done['sha256'][kind] for kind, p in paths.items()):
            return paths
        return None

    def save_first_pass(self, options: dict, paths: dict[str, Path]) -> None:
        files = {kind: str(Path(p).absolute()) for kind, p in paths.items()}
        self.data['first_pass'] = {'options': options, 'files': files,
                                   'sha256': {kind: sha256(p) for kind, p in files.items()}}
        self._save()

    def start_training(self, settings: dict) -> None:
        """Record ``settings``; refuse if training with other settings already began here."""
        old = self.data.get('training')
        began = [name for name in ('detector', 'pose') if (self.path.parent / name).exists()]
        if old is not None and old != settings and began:
            changed = sorted(k for k in {*settings, *old} if settings.get(k) != old.get(k))
            raise AdaptationError(
                f'{self.path.parent} holds an adaptation trained with other settings ({", ".join(changed)}); '
                'delete that folder to adapt again, or write to another --out folder')
        if old != settings:
            self.data.pop('finished', None)
        self.data['training'] = settings
        self._save()

    def finished(self, stage: str) -> Path | None:
        """The adapted model directory of a stage that finished with the recorded settings."""
        path = self.data.get('finished', {}).get(stage)
        return Path(path) if path is not None and (Path(path) / 'metadata.json').is_file() else None

    def finish(self, stage: str, model: Path) -> None:
        """Record a finished stage, then drop its training checkpoints (parameters and Adam moments:
        about 0.5 GB for the detector); a rerun uses the model directory."""
        self.data.setdefault('finished', {})[stage] = str(Path(model).absolute())
        self._save()
        if jax.process_index() == 0:
            shutil.rmtree(self.path.parent / stage / 'checkpoints', ignore_errors=True)

    def _save(self) -> None:
        if jax.process_index():  # One writer: process 0.
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as temp:
            temp.write_text(json.dumps(self.data, indent=1) + '\n')
