"""Every error the package raises on bad input or a failed run, under one base class.

Each also derives from the built-in type it used to be (``ValueError`` or ``OSError``), so
``except ValueError`` keeps working; ``except SuperAnimalError`` catches them all.
"""

from __future__ import annotations


class SuperAnimalError(Exception):
    """Base class of this package's errors."""


class CheckpointError(SuperAnimalError, ValueError):
    """The file is not a readable PyTorch zip checkpoint; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asks for a global that is not on the allow-list."""


class ConversionError(SuperAnimalError, ValueError):
    """The checkpoint does not fit the model; the message lists every offending key."""


class ModelDirError(SuperAnimalError, ValueError):
    """A model directory is missing, incomplete or of an unknown format."""


class HubError(SuperAnimalError, OSError):
    """The released weights are neither cached nor downloadable here."""


class VideoError(SuperAnimalError, ValueError):
    """The file is missing, is not a video OpenCV can decode, or has no frames."""


class ProjectError(SuperAnimalError, ValueError):
    """A DeepLabCut project is missing, malformed or inconsistent."""


class AdaptationError(SuperAnimalError, ValueError):
    """Video adaptation cannot go on: no frame of the first pass yields a pseudo-label."""


class NonFiniteLossError(SuperAnimalError, ValueError):
    """The loss became NaN or infinite; the message names the step."""


class TruncatedVideoWarning(UserWarning):
    """Fewer frames could be decoded than the video's header promises."""
