"""Files written atomically (under a hidden temporary name, moved into place only when complete) and
file digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` (same suffix, so writers that go by the
    extension work); on success it replaces ``path``, on an exception it is deleted and ``path``
    is left as it was."""
    path = Path(path)
    temp = hidden_temporary(path)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def hidden_temporary(path: str | os.PathLike) -> Path:
    """The hidden temporary name beside ``path`` that the writers here use (same suffix)."""
    path = Path(path)
    return path.with_name(f'.{path.stem}.partial{path.suffix}')


def replace_directory(staging: Path, target: Path) -> None:
    """Move the finished directory ``staging`` to ``target``, replacing a directory there (the old
    one is moved aside first and removed only once the new one is in place)."""
    if target.exists():
        old = target.with_name(f'.{target.name}.old-{os.getpid()}')
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


def sha256(path: str | os.PathLike) -> str:
    """The file's sha256, hex."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
