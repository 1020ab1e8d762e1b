"""Crash-safe file writes: write a temporary file beside the target, then `os.replace` it.

A run interrupted mid-write leaves either the old file or the new one, never half of one. Every file
hf-selfish writes, the model weights included, gets the permissions ``open()`` gives under the umask
(`umask_mode`).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "read_json", "umask_mode", "umask_permissions"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` if the block succeeds.

    On any exception (a kill included, as ``KeyboardInterrupt``) the temporary file is removed and
    ``path`` keeps its old content. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())  # mkstemp (and some writers) make 0600; give the file what open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)  # reading the umask means setting it: put it back at once
    os.umask(current)
    return current


def umask_mode() -> int:
    """The permissions ``open()`` gives a new file under the current umask (``0o644`` under ``022``)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def umask_permissions(folder: str | os.PathLike) -> Iterator[None]:
    """Files written below ``folder`` inside the block get `umask_mode` (the one place that sets it).

    Some writers create their files ``0600`` whatever the umask (safetensors, as ``save_pretrained`` calls it,
    ``tempfile.mkstemp``); a file created or changed inside the block is set to what ``open()`` would give.
    """
    before = _stamps(folder)
    yield
    mode = umask_mode()
    for path, stamp in _stamps(folder).items():
        if before.get(path) != stamp:
            with contextlib.suppress(FileNotFoundError):  # replaced meanwhile
                os.chmod(path, mode)


def _stamps(folder: str | os.PathLike) -> dict[Path, tuple[int, int, int]]:
    """``{file: (inode, size, mtime_ns)}`` of the plain files below ``folder`` ({} when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    stamps = {}
    for path in folder.rglob("*"):
        try:
            info = path.lstat()
        except FileNotFoundError:  # removed meanwhile (a checkpoint rotated out)
            continue
        if stat.S_ISREG(info.st_mode):
            stamps[path] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return stamps


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parents are created)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1) -> Path:
    """JSON-encode ``data`` and write it atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "file") -> Any:
    """Read JSON, turning a missing or corrupt file into a ``ValueError`` that names it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({err})") from None
