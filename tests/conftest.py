"""Shared test fixtures: the local tinyshakespeare copy, and no network access to the Hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the test suite may download from the Hub; set before any test module imports HF libraries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


def tinyshakespeare_path() -> Path:
    """$HF_SELFISH_TINYSHAKESPEARE if set, else `../shared/data/tinyshakespeare.txt` next to the repo root."""
    env = os.environ.get("HF_SELFISH_TINYSHAKESPEARE")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


# Pipeline tests (and the subprocesses they start) find the text the way users do: the env variable.
if tinyshakespeare_path().is_file():
    os.environ.setdefault("HF_SELFISH_TINYSHAKESPEARE", str(tinyshakespeare_path()))


@pytest.fixture(scope="session")
def tinyshakespeare_file() -> Path:
    """Path of the local tinyshakespeare text; skips the test when the file is not there."""
    path = tinyshakespeare_path()
    if not path.is_file():
        pytest.skip(f"tinyshakespeare not found at {path}; set HF_SELFISH_TINYSHAKESPEARE to a local copy")
    return path


@pytest.fixture(scope="session")
def tinyshakespeare_text(tinyshakespeare_file: Path) -> str:
    """The whole tinyshakespeare corpus as one string (1,115,394 characters)."""
    return tinyshakespeare_file.read_text(encoding="utf-8")
