"""Talking to the Hugging Face Hub: a preflight check, the error of a failed push, a comparison's upload.

The model card itself is made by `hf_selfish.model_card`.

- `check_can_push(token)`: raises a one-line `ValueError` that says what to do when the Hub cannot be
  written (offline mode, no token, Hub unreachable or token refused). Call it before training.
- `push_report(run_dir, repo_id)`: uploads a comparison's ``report.md`` (as ``README.md`` under a card
  header), ``results.json``, ``token_frequency.json`` and ``plots/`` to a Hub repository in one commit.

Nothing here deletes or rewrites a file of the run directory except ``README.md`` (the model card).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.utils import httpx

from .metric_names import FREQUENCY_FILE, PLOTS_DIR, REPORT_FILE, RESULTS_FILE
from .model_card import MODEL_CARD_FILE, report_card

logger = logging.getLogger(__name__)

__all__ = ["HUB_ERRORS", "check_can_push", "push_failed_error", "push_report"]

# What a failed Hub call raises: offline mode / missing token are OSErrors, HTTP and connection errors httpx errors.
HUB_ERRORS = (OSError, httpx.HTTPError)
# Files of a comparison's run directory that `push_report` uploads (report.md goes up as README.md).
REPORT_UPLOADS = (RESULTS_FILE, FREQUENCY_FILE)


# ------------------------------------------------------------------------------------------------
# preflight
# ------------------------------------------------------------------------------------------------


def check_can_push(token: str | None = None, *, what: str = "push to the Hub") -> str:
    """Fail early, with one line that says what to do, unless the Hub can be written; returns the user name.

    Checks, in order: offline mode (``HF_HUB_OFFLINE``), a token (``token``, else ``HF_TOKEN`` or the one
    saved by ``hf auth login``), and a ``whoami`` call to ``HF_ENDPOINT`` (reachable, token accepted).
    """
    if constants.is_offline_mode():
        raise ValueError(
            f"cannot {what}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE on a "
            "machine with network access, or leave out --push_to_hub / --push (every local file is kept)"
        )
    token = token or get_token()
    if not token:
        raise ValueError(
            f"cannot {what}: no Hugging Face token; run `hf auth login` or set HF_TOKEN (or pass --hub_token), "
            "or leave out --push_to_hub / --push"
        )
    try:
        user = _hub_api().whoami(token=token)
    except HUB_ERRORS as err:
        raise ValueError(
            f"cannot {what}: the Hub at {constants.ENDPOINT} did not accept the request ({_one_line(err)}); "
            "check the network, HF_ENDPOINT and the token (`hf auth whoami`)"
        ) from None
    return str(user.get("name", "")) if isinstance(user, Mapping) else ""


def push_failed_error(output_dir: str | os.PathLike, repo_id: str | None, err: BaseException) -> ValueError:
    """The error of a training run whose final push failed: what happened and how to upload it later."""
    repo = repo_id or "USER/NAME"
    return ValueError(
        f"training finished and every file is kept in {output_dir} (model card included), but pushing it to "
        f"{repo} failed ({_one_line(err)}); upload it later with `hf upload {repo} {output_dir} . "
        "--exclude 'checkpoint-*'`"
    )


def _hub_api() -> HfApi:
    """A fresh client (reads ``HF_ENDPOINT`` now): the one place this module talks to the Hub from."""
    return HfApi(library_name="hf_selfish")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


# ------------------------------------------------------------------------------------------------
# comparison report
# ------------------------------------------------------------------------------------------------


def push_report(run_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Upload a comparison's report and plots to the Hub repository ``repo_id``; returns the commit URL.

    Uploaded in one commit: ``report.md`` as ``README.md`` (with a card header), ``results.json``,
    ``token_frequency.json`` and ``plots/``. The run directory is only read.

    Raises:
        ValueError: ``run_dir`` has no ``report.md`` (run ``hf-selfish report RUN_DIR`` first), ``repo_id`` is
            malformed, or the Hub cannot be written (see `check_can_push`).
    """
    run_dir = Path(run_dir)
    report = run_dir / REPORT_FILE
    if not report.is_file():
        raise ValueError(f"{report} does not exist; write it with `hf-selfish report {run_dir}` first")
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"repo id {repo_id!r} is not USER/NAME (or NAME); give the Hub repository to push to")
    check_can_push(token, what=f"push {run_dir} to {repo_id}")
    api = _hub_api()
    with tempfile.TemporaryDirectory(prefix="hf_selfish_report_") as staging:
        _stage_report(run_dir, Path(staging))
        try:
            api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=staging, token=token, commit_message=f"hf_selfish report of {run_dir.name}"
            )
        except HUB_ERRORS as err:
            raise ValueError(
                f"pushing {run_dir} to {repo_id} failed ({_one_line(err)}); every local file is kept, "
                "re-run the same command to retry"
            ) from None
    return str(getattr(commit, "commit_url", commit))


def _stage_report(run_dir: Path, staging: Path) -> None:
    """Copy what `push_report` uploads into ``staging``: README.md (card header + report), results, plots."""
    card = report_card((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    (staging / MODEL_CARD_FILE).write_text(card, encoding="utf-8")
    for name in REPORT_UPLOADS:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, staging / name)
    if (run_dir / PLOTS_DIR).is_dir():
        shutil.copytree(run_dir / PLOTS_DIR, staging / PLOTS_DIR)
