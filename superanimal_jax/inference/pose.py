"""The pose model at run time: jitted heatmaps, keypoints and taps, batches split over the mesh."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np

from superanimal_jax import compilation, parallel
from superanimal_jax.models.pose import PoseConfig, PoseNetwork, decode_heatmaps
from superanimal_jax.transforms.normalize import normalize_crops


class PoseEstimator:
    """The pose network with its weights.

    ``crops``: float32 ``(N, H, W, 3)`` RGB, normalised as DeepLabCut normalises crops
    (:func:`superanimal_jax.normalize_crops` on uint8), H and W multiples of 32 (256x256 for
    SuperAnimal). Each input shape compiles once; repeated shapes reuse the compiled code.

    Batches are split across ``mesh`` (default: every device of this process), the weights
    replicated on each; a batch that does not split evenly is padded (the padding's outputs are
    dropped).  ``dtype`` is the compute dtype (``float32`` or ``bfloat16``); weights stay float32.
    ``precision`` (``'highest'``, ``'high'`` or ``'default'``) is that of its matmuls and
    convolutions; the default is ``'highest'`` for float32, DeepLabCut's float32 results on any
    backend (:mod:`superanimal_jax.compilation`).
    """

    def __init__(self, config: PoseConfig, variables, *, keypoint_names=None, dtype=jnp.float32, mesh=None,
                 precision: str | None = None):
        self.config = config
        self.keypoint_names = tuple(keypoint_names or ())
        self.dtype = parallel.compute_dtype(dtype)
        self.precision = compilation.resolve_precision(precision, self.dtype)
        self.network = PoseNetwork(config, dtype=self.dtype)
        self.mesh = parallel.check_local(mesh or parallel.local_mesh())
        self.variables = parallel.put_replicated(variables, self.mesh)
        self._taps = self._jit(self.network.apply)
        self._heatmaps = self._jit(lambda v, x: self.network.apply(v, x)['heatmaps'])
        self._keypoints = self._jit(
            lambda v, x: decode_heatmaps(self.network.apply(v, x)['heatmaps'], config.stride))
        self._keypoints_uint8 = self._jit(lambda v, x: decode_heatmaps(
            self.network.apply(v, normalize_crops(x))['heatmaps'], config.stride))

    def _jit(self, fn):
        return compilation.jit(compilation.with_precision(fn, self.precision), 'pose', self.mesh.devices.flat)

    def with_variables(self, variables) -> PoseEstimator:
        """The same compiled model with other weights (e.g. while fine-tuning): nothing recompiles."""
        other = copy.copy(self)
        other.variables = parallel.put_replicated(variables, self.mesh)
        return other

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
