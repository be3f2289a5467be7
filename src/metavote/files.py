"""Small file helpers shared by every module that writes: atomic replace and hashing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    A crash or an exception inside the block leaves whatever was at ``path`` untouched,
    so checkpoints, caches and zoo records are never half-written. The file gets the mode any
    new file gets (0666 less the umask: 0644 by default), whatever wrote it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would survive the rename: follow the umask like open() does
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_output(path: str | os.PathLike, what: str = "output", folder: bool = False) -> Path:
    """Refuse in one line, before any work, an output ``path`` that cannot be written: a folder where
    a file goes (with ``folder``: anything that exists, as a new folder goes there), or a parent that
    is a file or not writable. Missing parent folders are fine: :func:`atomic_path` creates them."""
    path = Path(path)
    if folder and path.exists():
        raise ConfigError(f"{what} {path} exists; choose a new folder")
    if not folder and path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give the path of the file to write, not a folder")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} cannot be written: no permission to write in {parent}")
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it
    os.umask(mask)
    return mask


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
