"""superanimal-jax: DeepLabCut's SuperAnimal-TopViewMouse pose model and detector in JAX/Flax.

The public API.  The package is laid out by concern (``docs/architecture.md``): ``nn`` and
``models`` (networks), ``ops`` (box operations), ``transforms``, ``inference``, ``checkpoints``,
``io``, ``analysis``, ``training``, ``adaptation``, plus ``parallel``, ``compilation`` and ``cli``.

Importing the package turns on JAX's persistent compilation cache
(:func:`superanimal_jax.compilation.use_compilation_cache`: ``SUPERANIMAL_JAX_CACHE=off`` to not).
"""

import warnings as _warnings

from superanimal_jax import compilation, parallel
from superanimal_jax.adaptation.adapt import AdaptConfig, adapt_video
from superanimal_jax.analysis.analyze import analyze_images, analyze_video, analyze_videos
from superanimal_jax.checkpoints import hub, synthetic
from superanimal_jax.checkpoints.convert import convert
from superanimal_jax.constants import TOPVIEWMOUSE_KEYPOINTS
from superanimal_jax.errors import (
                                    AdaptationError,
                                    CheckpointError,
                                    ConversionError,
                                    HubError,
                                    ModelDirError,
                                    NonFiniteLossError,
                                    ProjectError,
                                    SuperAnimalError,
                                    TruncatedVideoWarning,
                                    UnsafeCheckpointError,
                                    VideoError,
)
from superanimal_jax.inference.detector import Detector
from superanimal_jax.inference.dlcrnet import DLCRNetEstimator
from superanimal_jax.inference.model import SuperAnimalModel, from_state_dicts, load
from superanimal_jax.inference.pose import PoseEstimator
from superanimal_jax.models.pose import decode_heatmaps
from superanimal_jax.training.config import TrainConfig
from superanimal_jax.training.detector_loop import DetectorTrainConfig, fine_tune_detector
from superanimal_jax.training.evaluation import evaluate
from superanimal_jax.training.loop import train as fine_tune
from superanimal_jax.training.project import read_project
from superanimal_jax.transforms.augment import TrainAugmentation
from superanimal_jax.transforms.detector_augment import DetectorAugmentation
from superanimal_jax.transforms.normalize import normalize_crops
from superanimal_jax.version import __version__

try:
    compilation.use_compilation_cache()
except ValueError as _error:  # An unwritable cache folder slows start-up; it must not stop an import.
    _warnings.warn(f'{_error}; compiling without a persistent cache', stacklevel=2)

__all__ = [
    'AdaptConfig', 'AdaptationError', 'CheckpointError', 'ConversionError', 'DLCRNetEstimator', 'Detector',
    'DetectorAugmentation', 'DetectorTrainConfig', 'HubError', 'ModelDirError',
    'NonFiniteLossError', 'PoseEstimator', 'ProjectError', 'SuperAnimalError', 'SuperAnimalModel',
    'TOPVIEWMOUSE_KEYPOINTS',
    'TrainAugmentation', 'TrainConfig', 'TruncatedVideoWarning', 'UnsafeCheckpointError', 'VideoError',
    '__version__', 'adapt_video', 'analyze_images', 'analyze_video', 'analyze_videos', 'compilation',
    'convert', 'decode_heatmaps', 'evaluate', 'fine_tune', 'fine_tune_detector', 'from_state_dicts', 'hub',
    'load', 'normalize_crops', 'parallel', 'read_project', 'synthetic',
]
