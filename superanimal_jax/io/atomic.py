"""Write a file under a hidden temporary name and move it into place only when complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that go by the
    extension work); on success it replaces ``path``, on an exception it is deleted and ``path``
    is left as it was."""
    path = Path(path)
    temp = path.with_name(f'.{path.stem}.partial{path.suffix}')
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
