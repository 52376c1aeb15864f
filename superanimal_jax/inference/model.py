"""Loaded models: compiled inference entry points around the Flax networks."""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax import parallel
from superanimal_jax.checkpoints import model_dir
from superanimal_jax.models.detector import Detector
from superanimal_jax.models.detector import variables_shape as detector_variables_shape
from superanimal_jax.inference.topdown import TopDownPipeline
from superanimal_jax.models.pose import (POSE_VARIANTS, PoseConfig, PoseNetwork, decode_heatmaps,
                                  normalize_crops, variables_shape)


class PoseEstimator:
    """The pose network with its weights.

    ``crops``: float32 ``(N, H, W, 3)`` RGB, normalised as DeepLabCut normalises crops
    (:func:`superanimal_jax.normalize_crops` on uint8), H and W multiples of 32 (256x256 for
    SuperAnimal). Each input shape compiles once; repeated shapes reuse the compiled code.

    Batches are split across ``mesh`` (default: every device of this process), the weights
    replicated on each; a batch that does not split evenly is padded (the padding's outputs are
    dropped).  ``dtype`` is the compute dtype (``float32`` or ``bfloat16``); weights stay float32.
    """

    def __init__(self, config: PoseConfig, variables, *, keypoint_names=None, dtype=jnp.float32, mesh=None):
        self.config = config
        self.keypoint_names = tuple(keypoint_names or ())
        self.dtype = parallel.compute_dtype(dtype)
        self.network = PoseNetwork(config, dtype=self.dtype)
        self.mesh = parallel.check_local(mesh or parallel.local_mesh())
        self.variables = parallel.put_replicated(variables, self.mesh)
        self._taps = jax.jit(self.network.apply)
        self._heatmaps = jax.jit(lambda v, x: self.network.apply(v, x)['heatmaps'])
        self._keypoints = jax.jit(
            lambda v, x: decode_heatmaps(self.network.apply(v, x)['heatmaps'], config.stride))
        self._keypoints_uint8 = jax.jit(lambda v, x: decode_heatmaps(
            self.network.apply(v, normalize_crops(x))['heatmaps'], config.stride))

    def _check(self, crops):
        shape, dtype = np.shape(crops), getattr(crops, 'dtype', None)
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f'crops must be (N, H, W, 3) RGB, got shape {shape}')
        if shape[1] % 32 or shape[2] % 32:
            raise ValueError(f'crop height and width must be multiples of 32, got {shape[1:3]}')
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f'crops must be normalised floats, got {dtype}: pass uint8 crops through '
                             'superanimal_jax.normalize_crops first')
        return crops

    def _run(self, fn, crops):
        return parallel.run_split(fn, self.variables, crops, self.mesh)

    def heatmaps(self, crops) -> jax.Array:
        """Raw heatmaps ``(N, H/4, W/4, K)``, in the compute dtype."""
        return self._run(self._heatmaps, self._check(crops))

    def keypoints(self, crops) -> jax.Array:
        """``(N, K, 3)``: x, y in crop pixels (cell centres ``4k + 2``) and score in [0, 1]."""
        return self._run(self._keypoints, self._check(crops))

    def keypoints_uint8(self, crops) -> jax.Array:
        """:meth:`keypoints` of uint8 RGB crops, normalised on the device as DeepLabCut does."""
        shape, dtype = np.shape(crops), getattr(crops, 'dtype', None)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f'crops must be uint8 RGB (N, H, W, 3), got {dtype} {shape}')
        return self._run(self._keypoints_uint8, crops)

    def taps(self, crops) -> dict:
        """Every named intermediate output (stem, layer1, stage branches, features, heatmaps)."""
        return self._run(self._taps, self._check(crops))


@dataclasses.dataclass
class SuperAnimalModel:
    """A converted model directory, loaded: ``model.pose`` and/or ``model.detector``."""

    pose: PoseEstimator | None
    metadata: dict
    detector: Detector | None = None
    _pipelines: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self.pose.keypoint_names if self.pose else ()

    def pipeline(self, max_individuals: int = 10, **options) -> TopDownPipeline:
        """The top-down pipeline (detector, crops, pose) of this model."""
        return TopDownPipeline(self.detector, self.pose, max_individuals=max_individuals, **options)

    def predict(self, frames, *, max_individuals: int = 10, batch_size: int = 8) -> dict[str, np.ndarray]:
        """SuperAnimal top-down inference on uint8 RGB frames ``(N, H, W, 3)`` in memory.

        Returns numpy arrays: ``keypoints`` ``(N, max_individuals, 27, 3)`` (x, y in frame pixels,
        likelihood), ``boxes`` ``(N, max_individuals, 4)`` COCO x, y, w, h and ``box_scores``
        ``(N, max_individuals)``; individuals in descending detector score, -1 where absent.
        """
        if max_individuals not in self._pipelines:
            self._pipelines[max_individuals] = self.pipeline(max_individuals)
        return self._pipelines[max_individuals].predict(frames, batch_size=batch_size)


def load(path: str | os.PathLike, *, dtype=jnp.float32, mesh=None) -> SuperAnimalModel:
    """Load a directory written by :func:`superanimal_jax.convert`.

    ``dtype``: the compute dtype of both networks (``'float32'`` or ``'bfloat16'``; weights and
    BatchNorm statistics stay float32).  ``mesh``: the devices that share each batch (default:
    every device of this process; see :mod:`superanimal_jax.parallel`)."""
    metadata = model_dir.read_metadata(path)
    pose = None
    if 'pose' in metadata:
        section = metadata['pose']
        variant = section.get('variant')
        if variant not in POSE_VARIANTS:
            raise model_dir.ModelDirError(f'{path}: unknown pose variant {variant!r}')
        config = POSE_VARIANTS[variant]
        if 'num_keypoints' in section:  # A fine-tuned model predicts its project's keypoints.
            config = dataclasses.replace(config, num_keypoints=int(section['num_keypoints']))
        variables = model_dir.read_variables(path, 'pose', variables_shape(config))
        pose = PoseEstimator(config, variables, keypoint_names=section.get('keypoints'), dtype=dtype,
                             mesh=mesh)
    detector = None
    if 'detector' in metadata:
        variables = model_dir.read_variables(path, 'detector', detector_variables_shape())
        detector = Detector(variables, dtype=dtype, mesh=mesh)
    return SuperAnimalModel(pose=pose, metadata=metadata, detector=detector)
