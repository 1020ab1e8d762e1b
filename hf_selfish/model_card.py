"""The Hugging Face Hub model card of a model trained with hf_selfish: the one place cards are made.

`write_run_card(output_dir, log_history, settings)` turns ``output_dir/README.md`` into hf_selfish's
card (`render_run_card`): the training loss (selfish cross-entropy of Turumtaev, "Stop Jostling",
LoResLM 2025, with its margin, or plain cross-entropy) and the per-group table of the run's last
evaluation, keeping the metadata of the card the Trainer wrote (``base_model``, ``license``, tags).
`SelfishTrainer.create_model_card` calls it, so ``push_to_hub`` uploads this card. `report_card`
wraps a comparison's report.md in the same front matter for `hf-selfish report --push`.

Front matter goes through `huggingface_hub.ModelCardData`, never hand-written YAML.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .files import atomic_write_text
from .metric_names import MEAN_STATS, STAT_TITLES, group_label, groups_in_metrics, metric_key, metric_value
from .ops.margin import AUTO, margin_label

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CARD_FILE",
    "CARD_TAGS",
    "last_eval_entry",
    "markdown_table",
    "render_run_card",
    "report_card",
    "run_group_table",
    "write_run_card",
]

MODEL_CARD_FILE = "README.md"
CARD_TAGS = ("hf_selfish", "selfish-loss", "causal-lm")
ABSENT = "absent"
MISSING = "n/a"
PAPER = (
    'Turumtaev, "Stop Jostling: Adaptive Negative Sampling Reduces the Marginalization of Low-Resource '
    'Language Tokens by Cross-Entropy Loss", LoResLM 2025'
)
SELFISH_FORMULA = (
    "Per position with target $t$ and logits $z$, only the logits at most $m$ below the target's logit "
    "stay in the softmax:\n\n"
    "$$K = \\{\\, j : z_j \\ge z_t - m \\,\\}, \\qquad "
    "\\mathcal{L} = -z_t + \\log \\sum_{j \\in K} e^{z_j}$$\n\n"
    "so every token whose probability is below $P(t)\\,e^{-m}$ is dropped from the normalizer and receives no "
    "gradient as a non-target (the target itself is never dropped)."
)
CE_FORMULA = "$$\\mathcal{L} = -z_t + \\log \\sum_{j=1}^{V} e^{z_j}$$"
_CARD_ARGS = (
    ("model_type", "model type"),
    ("config_overrides", "config"),
    ("block_size", "block size"),
    ("max_steps", "steps"),
    ("num_train_epochs", "epochs"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "schedule"),
    ("warmup_steps", "warmup steps"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation"),
    ("weight_decay", "weight decay"),
    ("seed", "seed"),
)


def fmt(value: float, digits: int = 4, signed: bool = False) -> str:
    """A number as the tables show it: 4 decimals, optionally signed."""
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; ``align`` holds 'l' or 'r' per column (default: first left, rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _card_data(
    *, license: str | None, datasets: Sequence[str] | None, base_model: str | None, tags: Sequence[str]
) -> ModelCardData:
    return ModelCardData(
        library_name="transformers",
        license=license or None,
        base_model=base_model or None,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*CARD_TAGS, *tags])),
    )


def _rival_section(loss_name: str | None, loss_kwargs: Mapping[str, Any] | None) -> str | None:
    """The training-loss sentence of a rival loss (None for the selfish loss, the default)."""
    if loss_name in (None, "selfish"):
        return None
    params = ", ".join(f"{k}={v!r}" for k, v in (loss_kwargs or {}).items()) or "the paper's defaults"
    return f"Training loss: **{loss_name}** (`hf_selfish.ops.registry.LOSSES`), parameters: {params}."


def _loss_section(setting: Any, resolved: float | None, schedule: str | None = None) -> str:
    if setting is None and resolved is None:
        return "Training loss: **plain cross-entropy** (the baseline arm of hf_selfish):\n\n" + CE_FORMULA
    label = margin_label(setting, resolved)
    if setting == AUTO:
        label += " (ln V - ln(1 - top_p))"
    text = f"Training loss: **selfish cross-entropy** with margin m = {label}"
    if schedule and schedule != "constant":
        text += f" (schedule: {schedule})"
    return text + f" ({PAPER}). " + SELFISH_FORMULA


def run_group_table(metrics: Mapping[str, Any], groups: Sequence[str] | None = None) -> str:
    """One run's per-group eval table: ``bucket | eval tokens (types) | NLL | weighted NLL | acc | recall@5 | MRR``."""
    groups = list(groups) if groups is not None else groups_in_metrics(metrics)
    header = ["bucket", "eval tokens (types)"] + [STAT_TITLES[s] for s in MEAN_STATS]
    rows = []
    for group in groups:
        tokens = metric_value(metrics, metric_key(group, "tokens"))
        types = metric_value(metrics, metric_key(group, "types"))
        count = MISSING if tokens is None else f"{int(tokens):,}" + (f" ({int(types)})" if types is not None else "")
        if tokens == 0:
            cells = [ABSENT] * len(MEAN_STATS)
        else:
            values = [metric_value(metrics, metric_key(group, s)) for s in MEAN_STATS]
            cells = [MISSING if v is None else fmt(v) for v in values]
        rows.append([group_label(group), count, *cells])
    return markdown_table(header, rows)


def _how_to_load(model_id: str) -> str:
    return (
        "## How to use\n\n"
        "```python\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{model_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")\n'
        "```\n\n"
        "The selfish loss changes only training; the model is a standard causal LM. To train your own:\n\n"
        "```python\n"
        "from hf_selfish import SelfishTrainer, SelfishTrainingArguments\n\n"
        'args = SelfishTrainingArguments(output_dir="out", selfish_margin=2.0)  # None: plain cross-entropy\n'
        "trainer = SelfishTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)\n"
        "```"
    )


def render_run_card(
    metrics: Mapping[str, Any],
    settings: Mapping[str, Any],
    *,
    model_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    datasets: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    tags: Sequence[str] = (),
) -> str:
    """The ``README.md`` of one trained model.

    Args:
        metrics: the run's final ``eval_*`` metrics.
        settings: its arguments (``TrainingArguments.to_dict()`` plus model/data fields); ``selfish_margin``
            is the setting (a number, ``"auto"`` or None) and ``selfish_margin_value`` the number it resolved to.
    """
    base_model = base_model or settings.get("model_name_or_path")
    dataset = settings.get("dataset_name")
    if datasets is None and dataset and dataset != "tinyshakespeare":
        datasets = [dataset]
    model_id = model_id or settings.get("hub_model_id") or "<repo_id>"
    origin = f"fine-tuned from `{base_model}`" if base_model else "trained from scratch"
    data_text = f" on `{dataset}`" if dataset else ""
    parts = [
        f"# {model_id if model_id != '<repo_id>' else 'Causal LM trained with hf_selfish'}",
        "",
        f"A causal language model {origin}{data_text} with hf_selfish — the Hugging Face "
        "`Trainer` with selfish-token hard-negative masking, which stops pushing down tokens that are already "
        "far below the target so rare tokens are not drowned by their role as negatives.",
        "",
        "## Training",
        "",
        _rival_section(settings.get("loss_name"), settings.get("loss_kwargs"))
        or _loss_section(
            settings.get("selfish_margin"),
            settings.get("selfish_margin_value"),
            settings.get("selfish_margin_schedule"),
        ),
        "",
    ]
    card_settings = [
        f"- {label}: `{settings[key]}`" for key, label in _CARD_ARGS if settings.get(key) not in (None, "")
    ]
    if card_settings:
        parts += ["\n".join(card_settings), ""]
    parts += ["Evaluation always uses plain cross-entropy over the full vocabulary, whatever the training loss.", ""]
    parts += ["## Evaluation per frequency group", ""]
    if metrics.get("eval_loss") is not None:
        parts += [f"Overall eval loss: {fmt(float(metrics['eval_loss']))}", ""]
    parts += [run_group_table(metrics, groups), ""]
    parts += [
        "Groups are token-frequency ranks in the training split (rank 1 = most frequent) or named id sets; "
        "'absent' marks a group with no tokens in the eval data.",
        "",
    ]
    parts += [_how_to_load(model_id), ""]
    data = _card_data(license=license, datasets=datasets, base_model=base_model, tags=tags)
    return _card(data, "\n".join(parts).rstrip() + "\n")


def report_card(report_markdown: str) -> str:
    """A comparison's report.md as a Hub README: the report under hf_selfish's front matter."""
    return _card(_card_data(license=None, datasets=None, base_model=None, tags=["report"]), report_markdown)


def _card(data: ModelCardData, body: str) -> str:
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def last_eval_entry(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The metrics of the last evaluation in a Trainer's log history (entries of that step merged), or None."""
    evals = [entry for entry in log_history if "eval_loss" in entry]
    if not evals:
        return None
    step = evals[-1].get("step")
    merged: dict[str, Any] = {}
    for entry in log_history:
        if entry.get("step") == step and any(k.startswith("eval_") for k in entry):
            merged.update(entry)
    return merged


def write_run_card(
    output_dir: str | os.PathLike,
    log_history: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    model_id: str | None = None,
) -> Path:
    """Write ``output_dir/README.md`` from the run's last evaluation, keeping the existing card's metadata.

    Raises ValueError when ``log_history`` holds no evaluation.
    """
    metrics = last_eval_entry(log_history)
    if metrics is None:
        raise ValueError(
            "the model card needs an evaluation, but the log history holds no eval_loss; run trainer.evaluate() "
            "before pushing"
        )
    path = Path(output_dir) / MODEL_CARD_FILE
    metadata = ModelCard.load(path).data if path.is_file() else ModelCardData()
    tags = metadata.tags or []
    text = render_run_card(
        metrics,
        settings,
        model_id=model_id,
        base_model=metadata.base_model if isinstance(metadata.base_model, str) else None,
        license=metadata.license,
        datasets=metadata.datasets,
        tags=[tags] if isinstance(tags, str) else list(tags),
    )
    atomic_write_text(path, text)
    logger.info("model card written to %s", path)
    return path
