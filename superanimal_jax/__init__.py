"""superanimal-jax: DeepLabCut's SuperAnimal-TopViewMouse pose model and detector in JAX/Flax."""

__version__ = '0.1.0'

from superanimal_jax import parallel
from superanimal_jax.checkpoints import hub
from superanimal_jax.analysis.analyze import analyze_images, analyze_video, analyze_videos
from superanimal_jax.checkpoints.rules import ConversionError
from superanimal_jax.checkpoints.convert import convert
from superanimal_jax.models.detector import Detector
from superanimal_jax.inference.model import PoseEstimator, SuperAnimalModel, load
from superanimal_jax.checkpoints.model_dir import ModelDirError
from superanimal_jax.models.pose import TOPVIEWMOUSE_KEYPOINTS, decode_heatmaps, normalize_crops
from superanimal_jax.training.project import ProjectError, read_project
from superanimal_jax.training.loop import TrainConfig, evaluate
from superanimal_jax.training.loop import train as fine_tune

__all__ = [
    'ConversionError', 'Detector', 'ModelDirError', 'PoseEstimator', 'ProjectError', 'SuperAnimalModel',
    'TOPVIEWMOUSE_KEYPOINTS', 'TrainConfig', '__version__', 'analyze_images', 'analyze_video', 'analyze_videos',
    'convert', 'decode_heatmaps', 'evaluate', 'fine_tune', 'hub', 'load', 'normalize_crops', 'parallel',
    'read_project',
]
