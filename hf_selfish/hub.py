"""Publishing to the Hugging Face Hub: the model card of a run, a preflight check, and a comparison's report.

Three pieces:

- `write_run_card(output_dir, log_history, training_args)`: turns ``output_dir/README.md`` into the model
  card of `report.render_model_card` (training loss and margin, per-group table of the last evaluation),
  keeping the metadata of the card already there (the one `Trainer.create_model_card` writes: ``base_model``,
  ``license``, tags). `SelfishTrainer.create_model_card` calls it, so ``--push_to_hub true`` pushes this
  card through the Trainer's own `push_to_hub`.
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.utils import httpx

from .report import render_model_card

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_ERRORS",
    "MODEL_CARD_NAME",
    "check_can_push",
    "last_eval_entry",
    "margin_label",
    "push_failed_error",
    "push_report",
    "write_run_card",
]

MODEL_CARD_NAME = "README.md"
CARD_TAGS = ("hf_selfish", "selfish-loss")
# What a failed Hub call raises: offline mode / missing token are OSErrors, HTTP and connection errors httpx errors.
HUB_ERRORS = (OSError, httpx.HTTPError)
# Files of a comparison's run directory that `push_report` uploads (report.md goes up as README.md).
REPORT_FILE = "report.md"
REPORT_UPLOADS = ("results.json", "token_frequency.json")
PLOTS_DIR = "plots"


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
# model card of a run
# ------------------------------------------------------------------------------------------------


def margin_label(setting: float | str | None, resolved: float | None) -> float | str | None:
    """The margin a card shows: the setting, with the number an ``"auto"`` margin resolved to."""
    if setting == "auto" and resolved is not None:
        return f"auto = {resolved:.4g} (ln V - ln(1 - top_p))"
    return setting


def last_eval_entry(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last evaluation of a Trainer's log history (the entry with ``eval_loss``), or None."""
    for entry in reversed(log_history):
        if "eval_loss" in entry:
            return dict(entry)
    return None


def write_run_card(
    output_dir: str | os.PathLike,
    log_history: Sequence[Mapping[str, Any]],
    training_args: Mapping[str, Any],
    *,
    model_id: str | None = None,
) -> Path:
    """Write ``output_dir/README.md``: `report.render_model_card` of the run's last evaluation.

    The metadata of the card already there (the Trainer's: ``base_model``, ``license``, ``datasets``,
    tags) is carried over. Raises ValueError when ``log_history`` holds no evaluation.
    """
    metrics = last_eval_entry(log_history)
    if metrics is None:
        raise ValueError(
            "the model card needs an evaluation, but the log history holds no eval_loss; run trainer.evaluate() "
            "before pushing"
        )
    path = Path(output_dir) / MODEL_CARD_NAME
    metadata = ModelCard.load(path).data if path.is_file() else ModelCardData()
    tags = metadata.tags or []
    text = render_model_card(
        metrics=metrics,
        training_args=training_args,
        model_id=model_id,
        base_model=metadata.base_model if isinstance(metadata.base_model, str) else None,
        license=metadata.license,
        datasets=metadata.datasets,
        tags=[tags] if isinstance(tags, str) else list(tags),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    logger.info("model card written to %s", path)
    return path


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
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, token=token,
                                       commit_message=f"hf_selfish report of {run_dir.name}")
        except HUB_ERRORS as err:
            raise ValueError(
                f"pushing {run_dir} to {repo_id} failed ({_one_line(err)}); every local file is kept, "
                "re-run the same command to retry"
            ) from None
    return str(getattr(commit, "commit_url", commit))


def _stage_report(run_dir: Path, staging: Path) -> None:
    """Copy what `push_report` uploads into ``staging``: README.md (card header + report), results, plots."""
    card = ModelCard(f"---\n{ModelCardData(tags=list(CARD_TAGS) + ['report']).to_yaml()}\n---\n\n"
                     + (run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    (staging / MODEL_CARD_NAME).write_text(str(card), encoding="utf-8")
    for name in REPORT_UPLOADS:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, staging / name)
    if (run_dir / PLOTS_DIR).is_dir():
        shutil.copytree(run_dir / PLOTS_DIR, staging / PLOTS_DIR)
