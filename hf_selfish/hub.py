"""Publishing to the Hugging Face Hub: the model card of a run, a preflight check, and a comparison's report.

Three pieces:

- `write_model_card(output_dir, log_history, loss=...)`: turns ``output_dir/README.md`` into hf_selfish's
  model card. It keeps the metadata of the card already there (the one `Trainer.create_model_card` writes:
  ``library_name``, ``base_model``, ``license``, tags) and writes the body: the training loss (selfish loss
  and its margin, or plain cross-entropy) and the per-group table of the last evaluation in
  ``log_history`` (the ``eval_{group}_{stat}`` metrics). `SelfishTrainer.create_model_card` calls it, so
  ``--push_to_hub true`` pushes this card through the Trainer's own `push_to_hub`.
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

logger = logging.getLogger(__name__)

__all__ = [
    "HUB_ERRORS",
    "MODEL_CARD_NAME",
    "check_can_push",
    "describe_loss",
    "last_eval_entry",
    "eval_groups",
    "render_model_card",
    "write_model_card",
    "push_failed_error",
    "push_report",
]

MODEL_CARD_NAME = "README.md"
CARD_TAGS = ("hf_selfish", "selfish-loss")
# What a failed Hub call raises: offline mode / missing token are OSErrors, HTTP and connection errors httpx errors.
HUB_ERRORS = (OSError, httpx.HTTPError)
# Files of a comparison's run directory that `push_report` uploads (report.md goes up as README.md).
REPORT_FILE = "report.md"
REPORT_UPLOADS = ("results.json", "token_frequency.json")
PLOTS_DIR = "plots"

# The table's columns: (stat, header); `eval_{group}_{stat}` are the logged keys.
CARD_COLUMNS = (
    ("tokens", "tokens"),
    ("types", "types"),
    ("nll", "NLL (mean over types)"),
    ("nll_weighted", "NLL (mean over tokens)"),
    ("accuracy", "accuracy"),
    ("recall_at_5", "recall@5"),
    ("mrr", "MRR"),
)


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


def describe_loss(margin: float | None, *, setting: float | str | None = None, end: float | None = None,
                  schedule: str = "constant", top_p: float | None = None) -> str:
    """The training loss in words: ``"selfish loss (margin 2)"`` or ``"plain cross-entropy"``.

    Args:
        margin: the resolved (start) margin; None for plain cross-entropy.
        setting: the margin as configured, when it was ``"auto"`` (the rule is named too).
        end, schedule: the end margin of a ``linear``/``cosine`` schedule.
        top_p: the nucleus of the ``"auto"`` rule.
    """
    if margin is None:
        return "plain cross-entropy"
    text = f"selfish loss (margin {_number(margin)}"
    if setting == "auto":
        text += f", auto: ln V - ln(1 - {top_p})"
    if schedule != "constant" and end is not None:
        text += f", {schedule} schedule to {_number(end)}"
    return text + ")"


def last_eval_entry(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last evaluation of a Trainer's log history (the entry with ``eval_loss``), or None."""
    entry = _last_entry_with(log_history, "eval_loss")
    return dict(entry) if entry is not None else None


def eval_groups(entry: Mapping[str, Any], prefix: str = "eval") -> list[str]:
    """The token groups of one evaluation entry, in logged order (every group logs ``{prefix}_{group}_tokens``)."""
    head, tail = f"{prefix}_", "_tokens"
    return [key[len(head) : -len(tail)] for key in entry if key.startswith(head) and key.endswith(tail)]


def render_model_card(
    log_history: Sequence[Mapping[str, Any]],
    *,
    loss: str,
    model_name: str,
    metadata: ModelCardData | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
) -> str:
    """The text of the model card: metadata header, the training loss, the per-group eval table.

    Raises ValueError when ``log_history`` holds no evaluation (train with evaluation, or call evaluate()).
    """
    entry = last_eval_entry(log_history)
    if entry is None:
        raise ValueError(
            "the model card needs an evaluation, but the log history holds no eval_loss; run trainer.evaluate() "
            "before pushing"
        )
    data = metadata if metadata is not None else ModelCardData(library_name="transformers")
    data.tags = _merged_tags(data.tags, CARD_TAGS)
    lines = [f"# {model_name}", "", _intro(data, loss), "", "## Training loss", "", f"**{loss}**.", "",
             _loss_explanation(loss), ""]
    last_train = _last_entry_with(log_history, "loss")
    if last_train is not None:
        lines += [f"Training loss at the last log (step {last_train.get('step', '?')}): {_cell(last_train['loss'])}.", ""]
    lines += ["## Evaluation", "", *_eval_section(entry), ""]
    if hyperparameters:
        lines += ["## Training hyperparameters", "", *(f"- {k}: {v}" for k, v in hyperparameters.items()), ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def write_model_card(
    output_dir: str | os.PathLike,
    log_history: Sequence[Mapping[str, Any]],
    *,
    loss: str,
    model_name: str | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/README.md`` (`render_model_card`), keeping the metadata of the card already there."""
    path = Path(output_dir) / MODEL_CARD_NAME
    metadata = ModelCard.load(path).data if path.is_file() else None
    text = render_model_card(
        log_history,
        loss=loss,
        model_name=model_name or Path(output_dir).resolve().name,
        metadata=metadata,
        hyperparameters=hyperparameters,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    logger.info("model card written to %s", path)
    return path


def _intro(data: ModelCardData, loss: str) -> str:
    base = getattr(data, "base_model", None)
    origin = f"fine-tuned from [{base}](https://huggingface.co/{base})" if base else "trained from scratch"
    return f"A causal language model {origin} with the {loss}, using `hf_selfish.SelfishTrainer` (a `transformers.Trainer`)."


def _loss_explanation(loss: str) -> str:
    if loss.startswith("plain"):
        return ("Standard cross-entropy over the full vocabulary: this is the baseline arm of a selfish-loss "
                "comparison (`selfish_margin: null`).")
    return ("At every position, the logits more than `margin` below the target's logit are set to -inf before "
            "the cross-entropy (the target is never masked), so negatives already far below the target stop "
            "receiving gradient. Evaluation always uses plain cross-entropy over the full vocabulary.")


def _eval_section(entry: Mapping[str, Any]) -> list[str]:
    lines = [f"At step {entry.get('step', '?')}: `eval_loss` {_cell(entry['eval_loss'])} "
             "(full-vocabulary cross-entropy, the same metric for every arm)."]
    groups = eval_groups(entry)
    if not groups:
        return lines
    lines += [
        "",
        "Per token group (frequency-rank buckets of the training split: `rank_1-10` holds the 10 most frequent "
        "tokens). NLL (mean over types) averages each present token's mean NLL; tokens absent from the eval data "
        "are left out, and a group without eval tokens shows only its count.",
        "",
        "| group | " + " | ".join(header for _, header in CARD_COLUMNS) + " |",
        "|---|" + "---:|" * len(CARD_COLUMNS),
    ]
    for group in groups:
        cells = [_cell(entry.get(f"eval_{group}_{stat}")) for stat, _ in CARD_COLUMNS]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.4f}"


def _number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _last_entry_with(log_history: Sequence[Mapping[str, Any]], key: str) -> Mapping[str, Any] | None:
    for entry in reversed(log_history):
        if key in entry:
            return entry
    return None


def _merged_tags(existing: Sequence[str] | str | None, extra: Sequence[str]) -> list[str]:
    tags = [existing] if isinstance(existing, str) else list(existing or [])
    return tags + [tag for tag in extra if tag not in tags]


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
