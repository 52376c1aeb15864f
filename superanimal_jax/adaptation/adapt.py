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
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from superanimal_jax.adaptation.data import VideoFrames, detector_items, pose_items
from superanimal_jax.adaptation.pseudo_labels import pseudo_labels, read_predictions
from superanimal_jax.analysis.analyze import analyze_video
from superanimal_jax.errors import AdaptationError
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
    source = load(model)
    if source.detector is None or source.pose is None:
        raise AdaptationError(f'{model}: video adaptation needs a model with a detector and a pose network')
    before = analyze_video(video, source, out_dir, max_individuals=max_individuals, batch_size=batch_size,
                           pcutoff=pcutoff, bbox_threshold=config.bbox_threshold, labeled_video=labeled_video,
                           csv=csv, progress=progress)
    labels = pseudo_labels(read_predictions(before['json']), (reader.height, reader.width),
                           source.keypoint_names, num_frames=len(reader) or None,
                           pose_threshold=config.pseudo_threshold, bbox_threshold=config.bbox_threshold,
                           order=config.order)
    if not labels.num_annotations:
        raise AdaptationError(f'no frame of {video} yields a pseudo-label (no box scores >= '
                              f'{config.bbox_threshold}): nothing to adapt to; check the video, or lower '
                              '--bbox-threshold')
    folder = out_dir / f'pseudo_{video.stem}'
    json_paths = labels.write(folder)
    frames = VideoFrames(video, labels.frames)
    metadata = {'video': str(video.absolute()), 'pseudo_labels': str(json_paths['train'])}
    adapted = Path(model)
    if config.detector_epochs:
        detector_config = DetectorTrainConfig(
            epochs=config.detector_epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
            milestones=(), milestone_lrs=(), eval_interval=NEVER, save_interval=1, seed=config.seed,
            workers=config.workers)
        run = train_detector(detector_items(labels), adapted, folder / 'detector', detector_config,
                             read_image=frames, progress=progress, mesh=mesh, metadata=metadata,
                             desc='adapt detector')
        adapted = run['paths']['model']
    if config.pose_epochs:
        pose_config = TrainConfig(
            epochs=config.pose_epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
            milestones=(), milestone_lrs=(), eval_interval=NEVER, save_interval=1, seed=config.seed,
            workers=config.workers)
        run = train_items(pose_items(labels), adapted, folder / 'pose', pose_config, read_image=frames,
                          progress=progress, mesh=mesh, metadata=metadata, desc='adapt pose')
        adapted = run['paths']['model']
    after = analyze_video(video, load(adapted), out_dir, max_individuals=max_individuals,
                          batch_size=batch_size, pcutoff=pcutoff, bbox_threshold=config.bbox_threshold,
                          labeled_video=labeled_video, csv=csv, progress=progress,
                          scorer=adapted_scorer(config), stage='after_adapt')
    return {'before': before, 'after': after, 'pseudo_labels': json_paths, 'model': Path(adapted)}
