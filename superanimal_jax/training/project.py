"""DeepLabCut projects: ``config.yaml``, labelled frames and SuperAnimal conversion tables, read,
checked and split into train and test frames.

Parity with DeepLabCut: docs/parity/project.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from superanimal_jax.errors import ProjectError

CONVERSION_TABLES = 'SuperAnimalConversionTables'


@dataclasses.dataclass(frozen=True)
class Split:
    """Frame indices of the training and test sets, and how they were drawn."""

    train: tuple[int, ...]
    test: tuple[int, ...]
    seed: int
    train_fraction: float

    def to_json(self, project: Project) -> dict:
        """The split as JSON, frames named by their paths in ``project`` (as ``split.json`` holds it)."""
        return {'seed': self.seed, 'train_fraction': self.train_fraction,
                'train': [project.images[i] for i in self.train],
                'test': [project.images[i] for i in self.test]}

    @classmethod
    def from_json(cls, data: dict, project: Project) -> Split:
        """The split recorded in ``data`` (:meth:`to_json`), its frame names looked up in ``project``."""
        index = {name: i for i, name in enumerate(project.images)}
        missing = [n for n in data['train'] + data['test'] if n not in index]
        if missing:
            raise ProjectError(f'the recorded split names frames the project does not have: {missing[:5]}')
        return cls(tuple(index[n] for n in data['train']), tuple(index[n] for n in data['test']),
                   int(data['seed']), float(data['train_fraction']))


@dataclasses.dataclass(frozen=True)
class Project:
    """A DeepLabCut project's labels.

    ``keypoints``: ``(frames, individuals, bodyparts, 2)`` float64 frame pixels, NaN where not
    labelled; ``images``: each frame's path relative to the project (``labeled-data/...``).
    """

    path: Path
    config: dict
    scorer: str
    bodyparts: tuple[str, ...]
    individuals: tuple[str, ...]
    images: tuple[str, ...]
    keypoints: np.ndarray

    @property
    def multi_animal(self) -> bool:
        return bool(self.config.get('multianimalproject'))

    def image_path(self, index: int) -> Path:
        """The path of frame ``index``'s image."""
        return self.path / self.images[index]

    def conversion_table(self, super_animal: str = 'superanimal_topviewmouse') -> dict[str, str]:
        """``{project bodypart: SuperAnimal keypoint}`` from ``config.yaml``, in project order."""
        tables = self.config.get(CONVERSION_TABLES) or {}
        if super_animal not in tables:
            raise ProjectError(f'{self.path / "config.yaml"} has no {CONVERSION_TABLES}.{super_animal}; '
                               f'add one (deeplabcut.modelzoo.create_conversion_table), or fine-tune in '
                               f"transfer mode")
        table = tables[super_animal] or {}
        unknown = [bp for bp in table if bp not in self.bodyparts]
        if unknown:
            raise ProjectError(f'{CONVERSION_TABLES}.{super_animal} maps bodyparts the project does not '
                               f'have: {unknown} (project bodyparts: {list(self.bodyparts)})')
        return {bp: str(table[bp]) for bp in self.bodyparts if bp in table}

    def conversion_array(self, super_animal_keypoints: tuple[str, ...],
                         super_animal: str = 'superanimal_topviewmouse'
                         ) -> tuple[tuple[str, ...], np.ndarray]:
        """The converted bodyparts (project order) and, for each, its SuperAnimal channel."""
        table = self.conversion_table(super_animal)
        unknown = sorted({v for v in table.values() if v not in super_animal_keypoints})
        if unknown:
            raise ProjectError(f'{CONVERSION_TABLES}.{super_animal} names keypoints {super_animal} does '
                               f'not have: {unknown}')
        if not table:
            raise ProjectError(f'{CONVERSION_TABLES}.{super_animal} is empty')
        channels = [super_animal_keypoints.index(v) for v in table.values()]
        if len(set(channels)) != len(channels):
            raise ProjectError(f'{CONVERSION_TABLES}.{super_animal} maps two bodyparts onto one keypoint: '
                               f'{table}')
        return tuple(table), np.asarray(channels, np.int64)

    def split(self, train_fraction: float | None = None, seed: int = 1) -> Split:
        """A seeded random split; ``train_fraction`` defaults to the config's first
        ``TrainingFraction`` (0.95 if absent).  The test set has ``round(n * (1 - fraction))``
        frames."""
        if train_fraction is None:
            fractions = self.config.get('TrainingFraction') or [0.95]
            train_fraction = float(fractions[0])
        if not 0 < train_fraction <= 1:
            raise ProjectError(f'train fraction must be in (0, 1], got {train_fraction}')
        n = len(self.images)
        order = np.random.default_rng(seed).permutation(n)
        n_test = int(round(n * (1 - train_fraction)))
        if n_test >= n:
            raise ProjectError(f'a train fraction of {train_fraction} leaves no frame of {n} to train on')
        return Split(tuple(sorted(int(i) for i in order[n_test:])),
                     tuple(sorted(int(i) for i in order[:n_test])), seed, train_fraction)


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProjectError(f'{path} is not valid YAML: {err}') from None
    if not isinstance(config, dict):
        raise ProjectError(f'{path} is not a DeepLabCut config (expected a mapping)')
    return config


def _read_labels(path: Path):
    import pandas as pd

    if path.suffix == '.h5':
        frame = pd.read_hdf(path)
    else:  # DeepLabCut's csv: one header row per column level, then rows named by 1 or 3 cells.
        with open(path) as f:
            header = [line.rstrip('\n').split(',') for line in f.readlines()[:4]]
        levels = sum(1 for row in header if row[0] in ('scorer', 'individuals', 'bodyparts', 'coords'))
        index_cols = 1 + next((i for i, v in enumerate(header[0][1:]) if v), 0)
        frame = pd.read_csv(path, header=list(range(levels)), index_col=list(range(index_cols)))
        if index_cols > 1:
            frame.index = pd.Index([tuple(map(str, ix)) for ix in frame.index], tupleize_cols=False)
    if frame.columns.nlevels not in (3, 4) or frame.columns.names[-1] != 'coords':
        raise ProjectError(f'{path}: expected columns scorer/[individuals/]bodyparts/coords, '
                           f'got {list(frame.columns.names)}')
    return frame


def _row_name(index) -> str:
    return '/'.join(map(str, index)) if isinstance(index, tuple) else str(index).replace('\\', '/')


def read_project(path: str | Path, *, drop_unlabeled: bool = False) -> Project:
    """Read a DeepLabCut project folder (or its ``config.yaml``)."""
    path = Path(path)
    config_path = path if path.name == 'config.yaml' else path / 'config.yaml'
    if not config_path.is_file():
        raise ProjectError(f'{path} is not a DeepLabCut project: no config.yaml')
    root, config = config_path.parent, _read_yaml(config_path)
    scorer = str(config.get('scorer') or '')
    multi = bool(config.get('multianimalproject'))
    if multi:
        bodyparts = tuple(config.get('multianimalbodyparts') or ())
        individuals = tuple(config.get('individuals') or ())
        if config.get('uniquebodyparts'):
            raise ProjectError(f'{config_path}: unique bodyparts are not supported for top-down training')
    else:
        bodyparts, individuals = tuple(config.get('bodyparts') or ()), ('single',)
    if not bodyparts:
        raise ProjectError(f'{config_path} lists no bodyparts')
    folders = sorted(p for p in (root / 'labeled-data').glob('*') if p.is_dir())
    files = []
    for folder in folders:
        h5, csv = folder / f'CollectedData_{scorer}.h5', folder / f'CollectedData_{scorer}.csv'
        if h5.is_file() or csv.is_file():
            files.append(h5 if h5.is_file() else csv)
    if not files:
        raise ProjectError(f'{root / "labeled-data"} has no CollectedData_{scorer}.h5 or .csv '
                           f'(scorer {scorer!r} from config.yaml)')
    images, rows = [], []
    for file in files:
        frame = _read_labels(file)
        names = frame.columns.names
        has_individuals = 'individuals' in names
        if has_individuals != multi:
            raise ProjectError(f'{file}: {"multi" if has_individuals else "single"}-animal labels in a '
                               f'{"multi" if multi else "single"}-animal project')
        labelled = {str(b) for b in frame.columns.get_level_values('bodyparts')}
        missing = [b for b in bodyparts if b not in labelled]
        if missing:
            raise ProjectError(f'{file} has no columns for bodyparts {missing}')
        values = np.full((len(frame), len(individuals), len(bodyparts), 2), np.nan)
        columns = {tuple(map(str, c)): j for j, c in enumerate(frame.columns)}
        data = frame.to_numpy(np.float64)
        for i, ind in enumerate(individuals):
            for k, bp in enumerate(bodyparts):
                for c, coord in enumerate('xy'):
                    key = (scorer, ind, bp, coord) if multi else (scorer, bp, coord)
                    j = columns.get(key)
                    if j is None:
                        key = tuple(key[1:])
                        j = next((jj for cc, jj in columns.items() if cc[1:] == key), None)
                    if j is None:
                        raise ProjectError(f'{file} has no column {key}')
                    values[:, i, k, c] = data[:, j]
        images += [_row_name(ix) for ix in frame.index]
        rows.append(values)
    keypoints = np.concatenate(rows)
    absent = [images[i] for i in range(len(images)) if not (root / images[i]).is_file()]
    if absent:
        raise ProjectError(f'{len(absent)} labelled images are missing from {root}: {absent[:5]}'
                           + (' ...' if len(absent) > 5 else ''))
    empty = np.all(np.isnan(keypoints).reshape(len(images), -1), axis=1)
    if empty.any():
        names = [images[i] for i in np.flatnonzero(empty)]
        if not drop_unlabeled:
            raise ProjectError(f'{len(names)} frames have no labelled keypoint at all: {names[:5]}'
                               + (' ...' if len(names) > 5 else '')
                               + '; label them or pass drop_unlabeled=True '
                               '(--drop-unlabeled) to leave them out')
        keep = np.flatnonzero(~empty)
        images, keypoints = [images[i] for i in keep], keypoints[keep]
    if len(set(images)) != len(images):
        raise ProjectError(f'{root}: a frame is labelled twice')
    return Project(root, config, scorer, bodyparts, individuals, tuple(images), keypoints)


def write_split(path: str | Path, split: Split, project: Project) -> None:
    """Write ``split`` to ``path`` as JSON (``split.json``, see :meth:`Split.to_json`)."""
    Path(path).write_text(json.dumps(split.to_json(project), indent=1) + '\n')


def run_split(path: str | Path, project: Project, train_fraction: float | None, seed: int,
              primary: bool) -> Split:
    """A run's split: drawn and written to ``path`` (``split.json``) by the primary process the
    first time, read back by every process (and on every resume)."""
    from jax.experimental import multihost_utils

    path = Path(path)
    if primary and not path.exists():
        write_split(path, project.split(train_fraction, seed), project)
    multihost_utils.sync_global_devices(f'superanimal_jax: split {path} written')
    return Split.from_json(json.loads(path.read_text()), project)
