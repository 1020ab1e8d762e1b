"""The Recipe section of report.md: model, data and steps of the recipe, each arm's settings, the seeds and
every run with its train time and final eval loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..lab.results import FINISHED
from ..model_card import MISSING, markdown_table
from ..ops.margin import margin_label
from .summary import Summary

__all__ = ["recipe_summary"]

_RECIPE_KEYS = (
    ("dataset_name", "data"),
    ("model_name_or_path", "model"),
    ("model_type", "model type"),
    ("config_overrides", "config"),
    ("block_size", "block size"),
    ("per_device_train_batch_size", "batch size"),
    ("max_steps", "steps"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "schedule"),
    ("warmup_steps", "warmup steps"),
    ("eval_steps", "eval every"),
    ("low_resource_fraction", "small-language fraction"),
    ("eval_split", "eval split"),
    ("tune_split_percentage", "tuning split (% of train)"),
)


def _arm_settings(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for arm in results["arms"]:
        rival = arm.get("loss_name", "selfish") != "selfish"  # another loss: no margin
        skip = ("name", "selfish_margin") + (("selfish_margin_setting",) if rival else ())
        extra = ", ".join(f"{k}={v}" for k, v in arm.items() if k not in skip)
        rows.append([str(arm["name"]), "—" if rival else margin_label(arm.get("selfish_margin")), extra or "—"])
    return rows


def recipe_summary(results: Mapping[str, Any], summary: Summary) -> str:
    """Model, data, steps, margin per arm, seeds and train time per run, as markdown."""
    recipe = results.get("recipe") or {}
    lines = []
    settings = [f"{label}: `{recipe[key]}`" for key, label in _RECIPE_KEYS if recipe.get(key) is not None]
    if results.get("vocab_size"):
        settings.append(f"vocabulary: {results['vocab_size']} tokens")
    if settings:
        lines += ["- " + s for s in settings]
    shares = results.get("train_shares") or {}
    if len(shares) > 1:
        asked = f" (bible_share asked: {recipe['bible_share']})" if recipe.get("bible_share") is not None else ""
        mix = ", ".join(f"{code} {share:.2%}" for code, share in shares.items())
        lines.append(f"- training mix, share of the training characters: {mix}{asked}")
    seeds = sorted({r["seed"] for r in summary.runs if r["seed"] is not None})
    if seeds:
        lines.append(f"- seeds: {', '.join(map(str, seeds))}")
    lines += ["", markdown_table(["arm", "selfish margin", "other settings"], _arm_settings(results), ["l", "l", "l"])]
    run_rows = [
        [
            str(r["arm"]),
            str(r["seed"]),
            str(r["status"]),
            MISSING if r["train_seconds"] is None else f"{r['train_seconds']:.1f}",
            MISSING if r["eval_loss"] is None else f"{r['eval_loss']:.4f}",
        ]
        for r in summary.runs
    ]
    lines += [
        "",
        markdown_table(["arm", "seed", "status", "train time (s)", "final eval loss"], run_rows, list("lllrr")),
    ]
    unfinished = [r for r in summary.runs if r["status"] != FINISHED]
    if unfinished:
        lines.append(f"\n{len(unfinished)} run(s) did not finish and are left out of every mean below.")
    return "\n".join(lines)
