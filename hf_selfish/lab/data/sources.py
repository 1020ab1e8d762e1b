"""Where training text comes from: tinyshakespeare (argument, environment, cache, download) and nanoGPT's split."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants as hub_constants

from ...files import atomic_path

logger = logging.getLogger(__name__)

TINYSHAKESPEARE = "tinyshakespeare"
TINYSHAKESPEARE_ENV = "HF_SELFISH_TINYSHAKESPEARE"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_FILE_NAME = "tinyshakespeare.txt"


class DataNotFoundError(ValueError, FileNotFoundError):
    """The training text could not be found (or downloaded); the message says how to point at a local copy."""


def default_cache_dir() -> Path:
    """Where the downloaded tinyshakespeare is kept: ``$HF_HOME/hf_selfish`` (next to the Hub cache)."""
    return Path(hub_constants.HF_HOME) / "hf_selfish"


def resolve_tinyshakespeare(
    path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None, download: bool | None = None
) -> Path:
    """Find the tinyshakespeare text file, downloading it into the cache as a last resort.

    Looks, in order, at: ``path``; ``$HF_SELFISH_TINYSHAKESPEARE``; ``<cache_dir>/tinyshakespeare.txt``
    (default cache dir: `default_cache_dir`); else downloads the char-rnn copy there (checked against
    its sha256, written to a temp file and renamed, so an interrupted download leaves no half file).

    Args:
        download: allow the download; None allows it unless the Hub offline mode (``HF_HUB_OFFLINE``) is on.

    Raises:
        DataNotFoundError: ``path`` or the environment variable names a missing or empty file, or
            nothing was found and the download was not allowed or failed.
    """
    if path is not None:
        return _check_text_file(path, what="tinyshakespeare path")
    env_path = os.environ.get(TINYSHAKESPEARE_ENV)
    if env_path:
        return _check_text_file(env_path, what=f"${TINYSHAKESPEARE_ENV}")
    cached = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cached / TINYSHAKESPEARE_FILE_NAME
    if cached.is_file() and cached.stat().st_size > 0:
        logger.info("tinyshakespeare from the cache: %s", cached)
        return cached

    how_to_fix = (
        f"Point at a local copy with the `data_file` argument (--data_file PATH) or the environment variable "
        f"{TINYSHAKESPEARE_ENV}=PATH, or place it at {cached}."
    )
    if download is None:
        download = not hub_constants.is_offline_mode()
    if not download:
        raise DataNotFoundError(f"tinyshakespeare not found, and downloads are off (offline mode). {how_to_fix}")
    try:
        download_file(TINYSHAKESPEARE_URL, cached, sha256=TINYSHAKESPEARE_SHA256)
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise DataNotFoundError(
            f"tinyshakespeare not found, and downloading {TINYSHAKESPEARE_URL} failed ({err}). {how_to_fix}"
        ) from err
    logger.info("tinyshakespeare downloaded to %s", cached)
    return cached


def download_file(
    url: str, destination: str | os.PathLike, *, sha256: str | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``destination`` atomically (temp file in the same folder + ``os.replace``).

    Raises:
        ValueError: the content does not match ``sha256``.
        OSError: the download failed (``urllib.error.URLError`` included).
    """
    destination = Path(destination)
    with atomic_path(destination, suffix=".part") as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"downloaded {url} has sha256 {digest.hexdigest()}, expected {sha256}")
    return destination


def _check_text_file(path: str | os.PathLike, *, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"{what} {str(path)!r} does not exist or is not a file; give the path of a text file.")
    if path.stat().st_size == 0:
        raise DataNotFoundError(f"{what} {str(path)!r} is empty; give a file that holds the training text.")
    return path


def nanogpt_split(text: str, validation_percentage: float = 10.0) -> tuple[str, str]:
    """nanoGPT's split of one text: the first ``int(n * (100 - p) / 100)`` characters train, the rest validation."""
    _check_percentage(validation_percentage)
    n_train = int(len(text) * (100 - validation_percentage) / 100)
    return text[:n_train], text[n_train:]


def _check_percentage(percentage: float) -> None:
    if not 0 < percentage < 100:
        raise ValueError(f"validation_split_percentage must be in (0, 100), got {percentage!r}.")
