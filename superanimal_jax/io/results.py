"""Result files in DeepLabCut's SuperAnimal conventions (h5, optional csv, ``_before_adapt.json``),
streamed and committed atomically.  Formats and guarantees: ``docs/parity/results.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from superanimal_jax.io.files import hidden_temporary

SUPERANIMAL_SCORER = 'superanimal_topviewmouse_hrnet_w32_fasterrcnn_resnet50_fpn_v2'
STAGES = ('before_adapt', 'after_adapt')  # DeepLabCut's suffixes: first pass, after video adaptation.


def output_folder(path: str | os.PathLike) -> Path:
    """Make the output folder ``path`` (with its parents) if missing, as DeepLabCut's
    ``video_inference_superanimal`` does; a file standing in its way is a clear error."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotADirectoryError(f'output folder {path}: {blocker} is a file, not a folder')
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f'cannot make the output folder {path}: {err.strerror or err}') from err
    return path


def result_paths(out_dir: str | os.PathLike, stem: str, scorer: str = SUPERANIMAL_SCORER, *,
                 csv: bool = False, json_file: bool = True, separator: str = '_',
                 stage: str = 'before_adapt') -> dict[str, Path]:
    """Final paths of the results for ``stem`` (``h5``, and ``csv`` / ``json`` when asked):
    ``<stem><separator><scorer>.h5`` (DeepLabCut's TF engine puts no separator), the json
    ``..._<stage>.json`` (``stage``: one of :data:`STAGES`)."""
    if stage not in STAGES:
        raise ValueError(f'stage must be one of {STAGES}, not {stage!r}')
    base = Path(out_dir) / f'{stem}{separator}{scorer}'
    paths = {'h5': base.with_name(base.name + '.h5')}
    if csv:
        paths['csv'] = base.with_name(base.name + '.csv')
    if json_file:
        paths['json'] = base.with_name(f'{base.name}_{stage}.json')
    return paths


def columns(scorer: str, bodyparts, max_individuals: int | None):
    """DeepLabCut's column MultiIndex (scorer, individuals, bodyparts, coords); without
    ``max_individuals``, its single-animal layout (scorer, bodyparts, coords)."""
    import pandas as pd

    if max_individuals is None:
        return pd.MultiIndex.from_product([[scorer], list(bodyparts), ['x', 'y', 'likelihood']],
                                          names=['scorer', 'bodyparts', 'coords'])
    individuals = [f'animal{i}' for i in range(max_individuals)]
    return pd.MultiIndex.from_product([[scorer], individuals, list(bodyparts), ['x', 'y', 'likelihood']],
                                      names=['scorer', 'individuals', 'bodyparts', 'coords'])


# What pandas 2.x writes as its format version (its ``pytables._version``).  pandas 3 stopped
# writing the attribute, and pandas 2 then reads the file as a pre-0.10.1 layout and fails
# (``AttributeError`` in ``_dtype_to_kind``): DeepLabCut 3.0.2 pins ``pandas<3``.
_PANDAS2_FORMAT_VERSION = '0.15.2'
_PANDAS3_ONLY_ATTRS = ('data_col_nan_rep', 'mi_level_nan_rep')  # Group attributes pandas 2 never writes.


def pandas2_layout(path: str | os.PathLike, key: str = 'df_with_missing') -> None:
    """Give a table-format h5 the node attributes pandas 2.x writes (and DeepLabCut's own h5 has),
    so DeepLabCut's environment (pandas 2.2/2.3) reads it; pandas 3 reads that layout too.

    A no-op on a file pandas 2 wrote.  Only attributes change; the data are untouched.
    """
    import tables

    with tables.open_file(str(path), mode='r+') as h5:
        if f'/{key}' not in h5:
            raise ValueError(f'{path}: no table {key!r} to give the pandas 2 layout (nothing was written)')
        group = h5.get_node(f'/{key}')
        attrs = group._v_attrs
        if 'pandas_version' not in attrs._v_attrnames:
            attrs.pandas_version = _PANDAS2_FORMAT_VERSION
        if getattr(attrs, 'nan_rep', None) is None:
            attrs.nan_rep = 'nan'  # pandas 2's table-wide default.
        for name in _PANDAS3_ONLY_ATTRS:
            if name in attrs._v_attrnames:
                delattr(attrs, name)
        table = group.table._v_attrs
        for name in [n for n in table._v_attrnames if n.endswith('_nan_rep')]:
            delattr(table, name)  # pandas 3's per-column string sentinels ('' for the index).


def write_h5(frame, path: str | os.PathLike, key: str = 'df_with_missing') -> None:
    """``frame`` as a table-format h5 at ``path`` in pandas 2's layout (:func:`pandas2_layout`)."""
    frame.to_hdf(path, key=key, format='table', mode='w')
    pandas2_layout(path, key)


class ResultWriter:
    """Stream predictions (``keypoints (n, M, K, 3)``, ``boxes (n, M, 4)``, ``box_scores (n, M)``)
    for consecutive frames into the result files; ``close()`` commits, ``abort()`` discards.

    Use as a context manager: leaving it by an exception aborts.  With ``max_individuals=None``
    the single-animal layout of DeepLabCut's TF engine: ``keypoints (n, K, 3)``, no json.
    ``row_names(start, count)`` names the rows (default: frame numbers); ``dtype`` is the values'.
    """

    def __init__(self, out_dir: str | os.PathLike, stem: str, bodyparts, max_individuals: int | None, *,
                 scorer: str = SUPERANIMAL_SCORER, csv: bool = False, json_file: bool = True,
                 chunk_rows: int = 1000, separator: str = '_', row_names=None, dtype=np.float32,
                 stage: str = 'before_adapt'):
        out_dir = Path(out_dir)
        if not out_dir.is_dir():
            raise OSError(f'output folder {out_dir} does not exist')
        json_file = json_file and max_individuals is not None
        self.paths = result_paths(out_dir, stem, scorer, csv=csv, json_file=json_file, separator=separator,
                                  stage=stage)
        self.temps = {k: hidden_temporary(p) for k, p in self.paths.items()}
        self.columns = columns(scorer, bodyparts, max_individuals)
        self.shape = (len(bodyparts),) if max_individuals is None else (max_individuals, len(bodyparts))
        self.row_names = row_names or (lambda start, count: range(start, start + count))
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.rows = 0  # Frames written so far (the next frame's index).
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._store = None
        self._json = None
        self._json_count = 0
        self._closed = False
        try:
            for temp in self.temps.values():
                temp.unlink(missing_ok=True)
                temp.touch()
        except OSError as err:
            self._remove_temps()
            raise OSError(f'cannot write results in {out_dir}: {err.strerror or err}') from err
        if 'json' in self.temps:
            self._json = open(self.temps['json'], 'w')  # noqa: SIM115 (closed in close/abort)
            self._json.write('[')

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, predictions: dict[str, np.ndarray]) -> None:
        """Append the next frames' ``keypoints``, ``boxes`` and ``box_scores``: h5/csv rows of
        keypoints and, when the json is written, one json entry per frame."""
        keypoints = np.asarray(predictions['keypoints'], self.dtype)
        n = len(keypoints)
        if keypoints.shape[1:] != self.shape + (3,):
            raise ValueError(f'keypoints must be (n, {", ".join(map(str, self.shape))}, 3), '
                             f'got {keypoints.shape}')
        self._rows(keypoints.reshape(n, -1))
        if self._json is not None:
            for i in range(n):
                item = {'bodyparts': keypoints[i].tolist(),
                        'bboxes': np.asarray(predictions['boxes'][i], np.float32).tolist(),
                        'bbox_scores': np.asarray(predictions['box_scores'][i], np.float32).tolist()}
                self._json_item(item)

    def write_missing(self, n: int) -> None:
        """``n`` frames that could not be decoded: NaN rows, ``null`` json entries."""
        self._rows(np.full((n, len(self.columns)), np.nan, self.dtype))
        for _ in range(n if self._json is not None else 0):
            self._json_item(None)

    def _json_item(self, item) -> None:
        self._json.write((', ' if self._json_count else '') + json.dumps(item))
        self._json_count += 1

    def _rows(self, values: np.ndarray) -> None:
        while len(values):
            take = min(len(values), self.chunk_rows - self._buffered)
            self._buffer.append(values[:take])
            self._buffered += take
            values = values[take:]
            if self._buffered == self.chunk_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        import pandas as pd

        values = np.concatenate(self._buffer)
        frame = pd.DataFrame(values, columns=self.columns, index=self.row_names(self.rows, len(values)))
        if self._store is None:
            self._store = pd.HDFStore(self.temps['h5'], mode='w')
            # No creation times and no PyTables query index (whose nodes carry times): the same
            # results give the same bytes.  Readers (pandas.read_hdf, DeepLabCut) do not need it.
            self._store.put('df_with_missing', frame, format='table', track_times=False, index=False,
                            min_itemsize=self._min_itemsize(frame))
        else:
            self._store.append('df_with_missing', frame, format='table', index=False,
                               min_itemsize=self._min_itemsize(frame))
        if 'csv' in self.temps:
            frame.to_csv(self.temps['csv'], mode='a', header=self.rows == 0)
        self.rows += len(values)
        self._buffer, self._buffered = [], 0

    @staticmethod
    def _min_itemsize(frame):
        """Room for row names up to 32 characters (table columns are sized by their first rows)."""
        return {'index': 32} if frame.index.dtype == object or frame.index.dtype.kind in 'OSU' else None

    def close(self) -> dict[str, Path]:
        """Write what is buffered and move every file into place; returns the final paths."""
        if self._closed:
            return self.paths
        try:
            self._flush()
            if self._store is None:  # pandas cannot write an empty table-format frame.
                raise ValueError('no frames were written: nothing to commit (an empty frame range?)')
            self._store.close()
            self._store = None
            pandas2_layout(self.temps['h5'])
            if self._json is not None:
                self._json.write(']')
                self._json.close()
                self._json = None
            for key, temp in self.temps.items():
                os.replace(temp, self.paths[key])
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.paths

    def abort(self) -> None:
        """Discard everything written (no result file is created or replaced)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._json is not None:
            self._json.close()
            self._json = None
        self._remove_temps()
        self._closed = True

    def _remove_temps(self) -> None:
        for temp in self.temps.values():
            temp.unlink(missing_ok=True)
