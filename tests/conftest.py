"""Shared test fixtures: the local tinyshakespeare copy, and no network access to the Hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Nothing in the test suite may download from the Hub; set before any test module imports HF libraries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Portability check (tests/tolerances.py): HF_SELFISH_TEST_FLUSH_DENORMAL=1 runs the suite with denormals flushed
# to zero, as some CPUs and libraries set it; with ATEN_CPU_CAPABILITY=default/avx2/avx512 and OMP_NUM_THREADS=1/2
# it shows that no test depends on the CPU it was written on.
if os.environ.get("HF_SELFISH_TEST_FLUSH_DENORMAL") == "1":
    torch.set_flush_denormal(True)


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


@pytest.fixture(scope="session")
def small_text(tmp_path_factory, tinyshakespeare_text) -> Path:
    """The first 60k characters of tinyshakespeare (tokenizing it takes a fraction of a second)."""
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(tinyshakespeare_text[:60_000], encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """One torch thread, like the subprocesses (OMP_NUM_THREADS=1): fast on a busy machine, same sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
