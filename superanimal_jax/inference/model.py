"""A converted model directory, loaded: :func:`load` and :class:`SuperAnimalModel`."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np

from superanimal_jax.checkpoints import model_dir
from superanimal_jax.errors import ModelDirError
from superanimal_jax.inference.detector import Detector
from superanimal_jax.inference.dlcrnet import DLCRNetEstimator
from superanimal_jax.inference.pose import PoseEstimator
from superanimal_jax.inference.topdown import TopDownPipeline
from superanimal_jax.models.detector import DETECTOR_VARIANTS
from superanimal_jax.models.detector import variables_shape as detector_variables_shape
from superanimal_jax.models.pose import POSE_VARIANTS, variables_shape
from superanimal_jax.models.pose_resnet import PoseResnetConfig
from superanimal_jax.models.pose_resnet import variables_shape as pose_resnet_variables_shape

NETWORKS = ('topdown', 'dlcrnet')


@dataclasses.dataclass
class SuperAnimalModel:
    """A converted model directory, loaded: ``model.pose`` and/or ``model.detector`` (the top-down
    SuperAnimal model), and/or ``model.dlcrnet`` (the TensorFlow release)."""

    pose: PoseEstimator | None
    metadata: dict
    detector: Detector | None = None
    dlcrnet: DLCRNetEstimator | None = None
    _pipelines: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        """The keypoints of the pose model, else of the DLCRNet."""
        if self.pose is not None:
            return self.pose.keypoint_names
        return self.dlcrnet.keypoint_names if self.dlcrnet is not None else ()

    def network(self, choice: str | None = None) -> str:
        """Which pipeline runs: ``choice`` (``'topdown'`` or ``'dlcrnet'``) checked against what the
        directory holds, or by default the top-down model when it holds pose and detector, else
        the DLCRNet."""
        if choice is not None and choice not in NETWORKS:
            raise ValueError(f'unknown network {choice!r}; choose one of {NETWORKS}')
        topdown = self.pose is not None and self.detector is not None
        if choice is None:
            choice = 'topdown' if topdown or self.dlcrnet is None else 'dlcrnet'
        if choice == 'dlcrnet' and self.dlcrnet is None:
            raise ModelDirError('this model directory holds no DLCRNet (convert it with --dlcrnet)')
        if choice == 'topdown' and not topdown:
            held = [n for n in ('pose', 'detector') if getattr(self, n) is not None]
            raise ModelDirError('the top-down pipeline needs a pose model and a detector; this model '
                                f'directory holds {held or "neither"}')
        return choice

    def pipeline(self, max_individuals: int = 10, **options) -> TopDownPipeline:
        """The top-down pipeline (detector, crops, pose) of this model."""
        return TopDownPipeline(self.detector, self.pose, max_individuals=max_individuals, **options)

    def predict(self, frames, *, max_individuals: int = 10, batch_size: int = 8, network: str | None = None,
                scales=None) -> dict[str, np.ndarray]:
        """SuperAnimal inference on uint8 RGB frames ``(N, H, W, 3)`` in memory.

        Top-down (the default when the directory holds pose and detector): numpy arrays
        ``keypoints`` ``(N, max_individuals, 27, 3)`` (x, y in frame pixels, likelihood), ``boxes``
        ``(N, max_individuals, 4)`` COCO x, y, w, h and ``box_scores`` ``(N, max_individuals)``;
        individuals in descending detector score, -1 where absent.

        DLCRNet (``network='dlcrnet'``, or the directory's only network): ``keypoints (N, 27, 3)``
        float64, one animal per frame as DeepLabCut's TF engine reports it (NaN where a keypoint
        has no prediction), at ``scales`` (frame heights; default ``[H - 50, H, H + 50]``).
        """
        if self.network(network) == 'dlcrnet':
            return {'keypoints': self.dlcrnet.predict(frames, scales=scales, batch_size=batch_size)}
        if max_individuals not in self._pipelines:
            self._pipelines[max_individuals] = self.pipeline(max_individuals)
        return self._pipelines[max_individuals].predict(frames, batch_size=batch_size)


def load(path: str | os.PathLike, *, dtype=jnp.float32, mesh=None, precision: str | None = None
         ) -> SuperAnimalModel:
    """Load a directory written by :func:`superanimal_jax.convert`.

    ``dtype``: the compute dtype of both networks (``'float32'`` or ``'bfloat16'``; weights and
    BatchNorm statistics stay float32).  ``mesh``: the devices that share each batch (default:
    every device of this process; see :mod:`superanimal_jax.parallel`).  ``precision``: that of
    the matmuls and convolutions, ``'highest'`` (the default for float32: full float32 on any
    backend, what the parity tests measure), ``'high'`` or ``'default'`` (the backend's own: TF32
    on recent NVIDIA GPUs, bfloat16 passes on TPUs; the default for bfloat16)."""
    options = dict(dtype=dtype, mesh=mesh, precision=precision)
    metadata = model_dir.read_metadata(path)
    pose = None
    if 'pose' in metadata:
        section = metadata['pose']
        variant = section.get('variant')
        if variant not in POSE_VARIANTS:
            raise ModelDirError(f'{path}: unknown pose variant {variant!r}')
        config = POSE_VARIANTS[variant]
        if 'num_keypoints' in section:  # A fine-tuned model predicts its project's keypoints.
            config = dataclasses.replace(config, num_keypoints=int(section['num_keypoints']))
        variables = model_dir.read_variables(path, 'pose', variables_shape(config))
        pose = PoseEstimator(config, variables, keypoint_names=section.get('keypoints'), **options)
    detector = None
    if 'detector' in metadata:
        section = metadata['detector']
        variant = section.get('variant', 'fasterrcnn_resnet50_fpn_v2')
        if variant not in DETECTOR_VARIANTS:
            raise ModelDirError(f'{path}: unknown detector variant {variant!r}; '
                                f'known: {sorted(DETECTOR_VARIANTS)}')
        num_classes = int(section.get('num_classes', DETECTOR_VARIANTS[variant]))
        variables = model_dir.read_variables(path, 'detector', detector_variables_shape(num_classes))
        detector = Detector(variables, num_classes=num_classes, **options)
    dlcrnet = _load_dlcrnet(path, metadata['dlcrnet'], options) if 'dlcrnet' in metadata else None
    if pose is None and detector is None and dlcrnet is None:
        raise ModelDirError(f'{path}: the model directory holds no network')
    return SuperAnimalModel(pose=pose, metadata=metadata, detector=detector, dlcrnet=dlcrnet)


def _load_dlcrnet(path, section: dict, options: dict) -> DLCRNetEstimator:
    architecture = section.get('architecture')
    if architecture not in ('pose_resnet_50', 'dlcrnet_ms5'):
        raise ModelDirError(f'{path}: unknown DLCRNet architecture {architecture!r}')
    try:
        config = PoseResnetConfig(num_joints=int(section['num_joints']), locref=bool(section['locref']),
                                  num_limbs=int(section['num_limbs']), stride=int(section['stride']),
                                  locref_stdev=float(section['locref_stdev']),
                                  multi_stage=architecture == 'dlcrnet_ms5')
        names, snapshot = section['keypoints'], section['snapshot']
    except (KeyError, TypeError, ValueError) as err:
        raise ModelDirError(f'{path}: the dlcrnet section of metadata.json is incomplete ({err!r})') from None
    variables = model_dir.read_variables(path, 'dlcrnet', pose_resnet_variables_shape(config))
    return DLCRNetEstimator(config, variables, keypoint_names=names, snapshot=snapshot, **options)


def from_state_dicts(pose=None, detector=None, *, dlcrnet=None, pose_variant: str = 'hrnet_w32',
                     keypoint_names=None, snapshot: str = 'snapshot-0', dtype=jnp.float32,
                     mesh=None, precision: str | None = None) -> SuperAnimalModel:
    """A model from state dicts already in memory (name -> numpy array), converted by the same rule
    tables as files: PyTorch ``pose`` / ``detector`` (either released key layout) and/or the
    DLCRNet's TensorFlow variables (``dlcrnet``, named as in its checkpoint; ``snapshot`` names its
    results as DeepLabCut would).  No model directory, nothing written.  ``dtype``, ``mesh`` and
    ``precision`` as for :func:`load`."""
    options = dict(dtype=dtype, mesh=mesh, precision=precision)
    from superanimal_jax.checkpoints.convert import (
        convert_detector_state,
        convert_dlcrnet_state,
        convert_pose_state,
    )

    if pose is None and detector is None and dlcrnet is None:
        raise ValueError('nothing to load: give pose=, detector= and/or dlcrnet= state dicts')
    estimator = found = network = None
    if pose is not None:
        if pose_variant not in POSE_VARIANTS:
            raise ValueError(f'unknown pose variant {pose_variant!r}; known: {sorted(POSE_VARIANTS)}')
        config = POSE_VARIANTS[pose_variant]
        names = tuple(keypoint_names or model_dir.default_keypoints(config))
        if len(names) != config.num_keypoints:
            raise ValueError(f'{len(names)} keypoint names for a {config.num_keypoints}-keypoint model')
        variables, _ = convert_pose_state(pose, pose_variant)
        estimator = PoseEstimator(config, variables, keypoint_names=names, **options)
    if detector is not None:
        found = Detector(convert_detector_state(detector)[0], **options)
    if dlcrnet is not None:
        variables, config, _ = convert_dlcrnet_state(dlcrnet)
        names = keypoint_names if pose is None and keypoint_names else model_dir.default_joint_names(
            config.num_joints)
        network = DLCRNetEstimator(config, variables, keypoint_names=names, snapshot=snapshot, **options)
    return SuperAnimalModel(pose=estimator, metadata={'source': 'state dicts in memory'}, detector=found,
                            dlcrnet=network)
