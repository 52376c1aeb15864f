"""The converted model directory: one orbax checkpoint per network plus ``metadata.json``, written
atomically and read back.

Parity with DeepLabCut: docs/parity/model_dir.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from superanimal_jax.constants import TOPVIEWMOUSE_KEYPOINTS
from superanimal_jax.errors import ModelDirError
from superanimal_jax.io.files import replace_directory
from superanimal_jax.models.pose import PoseConfig
from superanimal_jax.version import __version__

FORMAT_VERSION = 1
METADATA = 'metadata.json'

LICENCE_NOTICE = (
    'Converted from the SuperAnimal-TopViewMouse weights released by the DeepLabCut team. '
    'The weights keep their original licence: non-commercial use only, no use intended to harm '
    'animals, and cite Ye et al., "SuperAnimal pretrained pose estimation models for behavioral '
    'analysis", Nature Communications (2024). The superanimal-jax code licence does not apply '
    'to them.')


def default_keypoints(config: PoseConfig) -> tuple[str, ...]:
    """The 27 SuperAnimal-TopViewMouse names for a 27-keypoint model, else ``keypoint0``,
    ``keypoint1``, ..."""
    return default_joint_names(config.num_keypoints)


def default_joint_names(count: int) -> tuple[str, ...]:
    """The 27 SuperAnimal-TopViewMouse names for 27 keypoints, else ``keypoint0``, ``keypoint1``, ..."""
    if count == len(TOPVIEWMOUSE_KEYPOINTS):
        return TOPVIEWMOUSE_KEYPOINTS
    return tuple(f'keypoint{i}' for i in range(count))


def _checkpointer() -> ocp.StandardCheckpointer:
    """A checkpointer of this process alone: model directories are read by every process on its
    own and written by one (in a multi-process run, process 0), without cross-process barriers."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def write(out: str | os.PathLike, networks: dict[str, dict], sections: dict[str, dict], *,
          overwrite: bool = False) -> Path:
    """Write ``networks`` (name -> variable tree) and their metadata sections to ``out``."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f'{out} already exists; pass overwrite=True (--overwrite) to replace it')
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.partial-', dir=out.parent))
    try:
        checkpointer = _checkpointer()
        for name, variables in networks.items():
            checkpointer.save(staging / name, jax.tree_util.tree_map(np.asarray, variables))
        checkpointer.wait_until_finished()
        metadata = {'format_version': FORMAT_VERSION, 'converter_version': __version__,
                    'licence': LICENCE_NOTICE, **sections}
        (staging / METADATA).write_text(json.dumps(metadata, indent=2) + '\n')
        replace_directory(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``metadata.json`` of the model directory ``path``, checked to be of this format version."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f'{path} is not a converted model directory (no such directory); '
                            f'make one with `superanimal-jax convert`')
    try:
        metadata = json.loads((path / METADATA).read_text())
    except FileNotFoundError:
        raise ModelDirError(f'{path} has no {METADATA}: not a converted model directory') from None
    except json.JSONDecodeError as err:
        raise ModelDirError(f'{path / METADATA} is not valid JSON: {err}') from None
    version = metadata.get('format_version')
    if version != FORMAT_VERSION:
        raise ModelDirError(f'{path}: model directory format {version!r}, this superanimal-jax '
                            f'reads format {FORMAT_VERSION}')
    return metadata


def read_variables(path: str | os.PathLike, name: str, abstract) -> dict:
    """Restore network ``name`` into the structure of ``abstract`` (shape/dtype structs)."""
    directory = Path(path).absolute() / name
    if not directory.is_dir():
        raise ModelDirError(f'{Path(path)} has no {name!r} network')
    return _checkpointer().restore(directory, abstract)
