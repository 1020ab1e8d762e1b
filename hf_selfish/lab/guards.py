"""What keeps a run directory safe: a usable output_dir, one process per directory, deletes only inside it.

- `check_output_dir(path)`: refuse an output_dir that is a file, the filesystem root, or not writable, before
  anything is prepared.
- `RunDirLock(path)`: one hf-selfish process per run directory at a time (a lock file holding the owner's pid
  and host; a lock whose process is gone is stale and taken over, with a warning).
- `remove_inside(root, path)`: the only way hf-selfish deletes a folder: ``path`` must lie inside ``root``.
- `check_folder_kind(path, kind)`: a single run never writes into a comparison's folder, nor a comparison into a
  single run's (their files share names: token_frequency.json, the model, checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME

from ..metric_names import LOCK_FILE, RESULTS_FILE, RUN_ARGS_FILE, RUN_RESULT_FILE

logger = logging.getLogger(__name__)

__all__ = ["RunDirLock", "check_folder_kind", "check_output_dir", "is_main_process", "remove_inside"]

# The files that mark a folder as one kind of run directory (whichever of them is there).
KIND_MARKERS = {"comparison": (RESULTS_FILE,), "run": (TRAINER_STATE_NAME, RUN_RESULT_FILE, RUN_ARGS_FILE)}
KIND_COMMANDS = {"comparison": "hf-selfish compare", "run": "hf-selfish train"}


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a `Path`, or a ValueError when it cannot hold a run: a file, ``/``, or not writable."""
    path = Path(path).expanduser()
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        raise ValueError(f"output_dir {str(path)!r} is the filesystem root; give a folder for this run")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir {str(path)!r} is a file, not a folder; give another --output_dir")
    existing = next(p for p in (resolved, *resolved.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"output_dir {str(path)!r} cannot be written ({existing} is read-only); give another --output_dir"
        )
    return path


def check_folder_kind(path: str | os.PathLike, kind: str) -> None:
    """Refuse to write a ``kind`` ("run" or "comparison") into a folder that holds the other kind (a ValueError).

    A single run writes its model, checkpoints, trainer_state.json and token_frequency.json into its output_dir:
    in a comparison's folder it would replace the comparison's frequencies (which the report and the Hub copy
    read) and mix two kinds of results in one folder.
    """
    other = "comparison" if kind == "run" else "run"
    found = [name for name in KIND_MARKERS[other] if (Path(path) / name).is_file()]
    if found:
        raise ValueError(
            f"{path} holds a {other} of `{KIND_COMMANDS[other]}` ({found[0]}); `{KIND_COMMANDS[kind]}` would write "
            f"its own files over it: give another --output_dir"
        )


def is_main_process() -> bool:
    """Rank 0 of a torchrun / accelerate launch (or a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunDirLock:
    """``with RunDirLock(run_dir):`` -- refuse a second hf-selfish process on the same run directory.

    Only the main process of a multi-process launch takes the lock (all ranks share the directory).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}
        self.held = False
        self._created: list[Path] = []  # folders the lock made, removed again if the run left them empty

    def __enter__(self) -> RunDirLock:
        if is_main_process():
            folder = self.path.parent
            self._created = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            self._acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        for folder in self._created:  # innermost first: a run that failed before writing leaves nothing behind
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote there
                break

    def _acquire(self) -> None:
        for _ in range(2):  # a stale lock is removed once, then taken
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self.held = True
            return
        raise ValueError(f"could not take the lock {self.path}; remove it if no hf-selfish runs there")

    def _refuse_or_clear(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = None, None, None
        if pid is not None and (host != self.owner["host"] or _process_alive(pid)):
            raise ValueError(
                f"{self.path.parent} is in use by another hf-selfish process (pid {pid} on {host}); wait for it to "
                f"finish or stop it, or choose another --output_dir (if it is gone, delete {self.path})"
            )
        logger.warning("removing the stale lock %s (its process %s is gone)", self.path, pid)
        self.path.unlink(missing_ok=True)


def remove_inside(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Delete the folder ``path``, which must lie strictly inside ``root`` (else ValueError, nothing deleted)."""
    root, target = Path(root).resolve(), Path(path).resolve()
    if target == root or root not in target.parents:
        raise ValueError(f"refusing to delete {path}: it is not inside the run directory {root}")
    shutil.rmtree(target, ignore_errors=True)
