"""Choosing each rival loss's main knob from tuning runs (``eval_split: tune``), by one stated rule.

Every arm of a tuning comparison is one method (its ``loss_name``; TLAT's two forms are two methods) at one
value of its main knob (`KNOBS`; the selfish loss annealed to CE is a method of its own, and so is
``selfish_rare``'s ``frequent_mass`` away from its default 0.9; an arm that sets its own ``learning_rate``
tunes that). The rule (`choose_values`): among a method's values whose overall eval loss is at most
``max_loss_increase`` (relative) above the baseline arm's, the one with the lowest per-token-mean NLL of the
target group (the rare group the method is meant to help); when no value qualifies, the one with the lowest
overall eval loss. Values are means over the tuning runs' seeds. On a language mix the two numbers can be
languages' eval losses instead (`language_keys`: the main language's loss is limited, the small language's is
minimised). When fine-tuning a pretrained model, the limit can be the loss *before training* instead of a
baseline arm's (``limit_against="start"``: the step-0 evaluation of ``eval_on_start``), so that even plain CE
is held to "forget the main language by at most this much", and every arm is a candidate.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..lab.results import finished_runs
from ..metric_names import MAIN_STAT, finite_or_none, group_label, metric_key, split_metric_key, subset_prefix
from ..model_card import fmt, markdown_table
from .pareto import pareto_groups
from .summary import stat_at_start

__all__ = [
    "KNOBS",
    "Candidate",
    "choose_values",
    "default_target_group",
    "language_keys",
    "method_of",
    "tuning_summary",
    "tuning_table",
]

# loss_name -> its main knob: a key of loss_kwargs, or "selfish_margin"
KNOBS = {
    "selfish": "selfish_margin",
    "label_smoothing": "eps",
    "z_loss": "lam",
    "focal": "gamma",
    "anti_focal": "gamma",
    "tlat": "T",
    "logit_adjustment": "tau",
    "unlikelihood": "alpha",
    "agg": "alpha",
    "selfish_head": "margin",
    "selfish_hidden": "margin",
    "selfish_rare": "margin",
}
# selfish_rare's second knob, tuned at its default margin as a method of its own
RARE_MASS = "frequent_mass"
RARE_DEFAULT_MASS = 0.9
DEFAULT_MAX_LOSS_INCREASE = 0.05
LEARNING_RATE = "learning_rate"
# what the loss limit is relative to: the first (baseline) arm's final loss, or every run's loss before training
LIMITS = ("baseline", "start")


def method_of(arm: Mapping[str, Any]) -> tuple[str, str, Any] | None:
    """``(method, knob, value)`` of a recipe arm as results.json records it; None for plain CE (no knob).

    An arm that sets its own ``learning_rate`` (a recipe override) tunes it: ``(loss, "learning_rate", lr)``."""
    loss = arm.get("loss_name") or "selfish"
    if LEARNING_RATE in arm:
        plain = loss == "selfish" and arm.get("selfish_margin") is None  # `selfish_margin: null` is plain CE
        return "ce" if plain else loss, LEARNING_RATE, arm[LEARNING_RATE]
    if loss not in KNOBS:
        return None
    knob = KNOBS[loss]
    kwargs = arm.get("loss_kwargs") or {}
    method = f"tlat_{kwargs.get('form', 'exponential')}" if loss == "tlat" else loss
    if loss == "selfish" and arm.get("selfish_margin_schedule", "constant") != "constant":
        method = "selfish_annealed"  # its knob: the start margin
    if loss == "selfish_rare" and kwargs.get(RARE_MASS, RARE_DEFAULT_MASS) != RARE_DEFAULT_MASS:
        return f"selfish_rare_{RARE_MASS}", RARE_MASS, kwargs[RARE_MASS]  # the margin sweep holds the default mass
    value = arm.get("selfish_margin") if knob == "selfish_margin" else kwargs.get(knob)
    return method, knob, value


@dataclass
class Candidate:
    """One arm of a tuning comparison: its method and knob value, and the two numbers the rule reads."""

    arm: str
    method: str
    knob: str
    value: Any
    eval_loss: float | None
    target_nll: float | None
    eligible: bool = False
    chosen: bool = False


def _mean(runs, key: str) -> float | None:
    values = [v for v in (finite_or_none((r.get("final") or {}).get(key)) for r in runs) if v is not None]
    return statistics.fmean(values) if values else None


def language_keys(main: str, small: str) -> dict[str, str]:
    """The rule's keys on a language mix: limit the main language's eval loss, minimise the small one's (per
    token; with one tokenizer per comparison its order is that of bits per character)."""
    return {"loss_key": f"{subset_prefix(main)}_loss", "target_key": f"{subset_prefix(small)}_loss"}


def _target_key(target_group: str, target_key: str | None) -> str:
    """The key the rule minimises: ``target_key``, else ``target_group``'s per-token-mean NLL."""
    return target_key or metric_key(target_group, MAIN_STAT)


def _check_max_loss_increase(value: float) -> None:
    """A relative limit: a finite number >= 0 (NaN would compare False everywhere and still choose a value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"max_loss_increase must be a finite number >= 0 (0.05 is 5%), got {value!r}")


def _recorded_keys(runs: Mapping[str, list[dict[str, Any]]]) -> set[str]:
    """Every final metric with a finite value in any finished run."""
    return {
        k
        for arm_runs in runs.values()
        for r in arm_runs
        for k, v in (r.get("final") or {}).items()
        if finite_or_none(v) is not None
    }


def _loss_keys(keys: set[str]) -> str:
    """The eval-loss keys a comparison recorded, for a message: ``eval_loss, eval_eng_web_loss, ...``."""
    found = sorted(k for k in keys if k.startswith("eval_") and k.endswith("_loss"))
    return ", ".join(found) or "none"


def _with_learning_rate(results: Mapping[str, Any], arm: Mapping[str, Any]) -> dict[str, Any]:
    """``arm`` with the ``learning_rate`` its recipe arm sets, if any (results.json's arm summary omits it)."""
    recipe_arms = (results.get("recipe") or {}).get("arms") or []
    own = next((a for a in recipe_arms if isinstance(a, dict) and a.get("name") == arm["name"]), {})
    return {**arm, LEARNING_RATE: own[LEARNING_RATE]} if LEARNING_RATE in own else dict(arm)


def _start_loss(runs: Mapping[str, list[dict[str, Any]]], loss_key: str) -> float:
    """``loss_key`` before training (`stat_at_start`: the step-0 evaluation, mean over seeds); a ValueError when
    no run evaluated before training."""
    value = stat_at_start(runs, loss_key).mean
    if value is None:
        raise ValueError(
            f"no finished run recorded {loss_key!r} before training: the limit 'start' needs eval_on_start: true "
            "in the recipe (or use the baseline arm's loss as the limit)"
        )
    return value


def _baseline_loss(results: Mapping[str, Any], runs: Mapping[str, list[dict[str, Any]]], loss_key: str) -> float:
    """The baseline arm's mean ``loss_key``; a ValueError that says whether its runs are missing or the key."""
    baseline = results["arms"][0]["name"]
    if not runs.get(baseline):
        raise ValueError(f"the baseline arm {baseline!r} has no finished run: nothing to compare the losses with")
    base_loss = _mean(runs[baseline], loss_key)
    if base_loss is None:
        raise ValueError(
            f"the baseline arm {baseline!r}'s finished runs record no {loss_key!r} (recorded losses: "
            f"{_loss_keys(_recorded_keys({baseline: runs[baseline]}))}); check --main / --language against them"
        )
    return base_loss


def _check_recorded(runs: Mapping[str, list[dict[str, Any]]], key: str, what: str) -> None:
    """Refuse a target no finished run recorded (a misspelt group or language), naming what was recorded."""
    keys = _recorded_keys(runs)
    if key not in keys:
        parsed = [split_metric_key(k) for k in keys]
        groups = sorted({group for group, stat in filter(None, parsed) if stat == MAIN_STAT})
        raise ValueError(
            f"{what}: no finished run records {key!r}; groups recorded: {', '.join(groups) or 'none'}; "
            f"losses recorded: {_loss_keys(keys)}"
        )


def default_target_group(results: Mapping[str, Any]) -> str:
    """The group the rule helps by default: the simulation's small language, else the rare headline bucket."""
    _, y_groups = pareto_groups(results)
    languages = [g for g in y_groups if g.startswith("lang_")]
    if not (languages or y_groups):
        raise ValueError(
            "no finished run records a rare group's eval tokens yet (is the comparison unfinished?); "
            "finish it, or name the target with --group or --language"
        )
    return (languages or y_groups)[0]


def tuning_summary(
    results: Mapping[str, Any],
    group: str | None = None,
    max_loss_increase: float = DEFAULT_MAX_LOSS_INCREASE,
    *,
    language: str | None = None,
    main: str | None = None,
    limit_against: str = "baseline",
) -> str:
    """What `hf-selfish tune` prints: the tuning table, then ``method: knob = value`` for each chosen value.

    ``language`` with ``main``: a language mix (`language_keys`); else ``group`` (default
    `default_target_group`). ``limit_against``: see `choose_values`."""
    if (language is None) != (main is None):
        raise ValueError("--language and --main go together: the small language to help and the main one to limit")
    _check_max_loss_increase(max_loss_increase)
    keys = {**(language_keys(main, language) if language else {}), "limit_against": limit_against}
    target = language or group or default_target_group(results)
    table = tuning_table(results, target, max_loss_increase, **keys)
    chosen = [
        f"{c.method}: {c.knob} = {c.value}"
        for c in choose_values(results, target, max_loss_increase, **keys)[1]
        if c.chosen
    ]
    return table + "\n\n" + "\n".join(chosen)


def _check_limit(limit_against: str) -> None:
    if limit_against not in LIMITS:
        raise ValueError(f"limit_against must be one of {', '.join(LIMITS)}, got {limit_against!r}")


def choose_values(
    results: Mapping[str, Any],
    target_group: str,
    max_loss_increase: float = DEFAULT_MAX_LOSS_INCREASE,
    *,
    loss_key: str = "eval_loss",
    target_key: str | None = None,
    limit_against: str = "baseline",
) -> tuple[float | None, list[Candidate]]:
    """The reference loss (``loss_key``) and every knob arm as a `Candidate`, one chosen per method and knob.

    The reference is the baseline (first) arm's final loss, or with ``limit_against="start"`` the loss before
    training, and then the first arm is a candidate too. ``target_key`` defaults to ``target_group``'s
    per-token-mean NLL."""
    _check_max_loss_increase(max_loss_increase)
    _check_limit(limit_against)
    target_key = _target_key(target_group, target_key)
    runs = finished_runs(results)
    if limit_against == "start":
        base_loss, arms = _start_loss(runs, loss_key), results["arms"]
    else:
        base_loss, arms = _baseline_loss(results, runs, loss_key), results["arms"][1:]
    _check_recorded(runs, target_key, f"target group {target_group!r}")
    candidates = []
    for arm in arms:
        described = method_of(_with_learning_rate(results, arm))
        if described is None or not runs.get(arm["name"]):
            continue
        arm_runs = runs[arm["name"]]
        loss, target = _mean(arm_runs, loss_key), _mean(arm_runs, target_key)
        eligible = loss is not None and target is not None and loss <= base_loss * (1 + max_loss_increase)
        candidates.append(Candidate(arm["name"], *described, loss, target, eligible))
    for method in dict.fromkeys((c.method, c.knob) for c in candidates):  # a learning-rate sweep is its own
        own = [c for c in candidates if (c.method, c.knob) == method]
        eligible = [c for c in own if c.eligible]
        if eligible:
            min(eligible, key=lambda c: c.target_nll).chosen = True
        elif any(c.eval_loss is not None for c in own):
            min((c for c in own if c.eval_loss is not None), key=lambda c: c.eval_loss).chosen = True
    return base_loss, candidates


def _cell(value: float | None) -> str:
    """A table number, or a dash where a run recorded none."""
    return "—" if value is None else fmt(value)


def tuning_table(
    results: Mapping[str, Any],
    target_group: str,
    max_loss_increase: float = DEFAULT_MAX_LOSS_INCREASE,
    *,
    loss_key: str = "eval_loss",
    target_key: str | None = None,
    limit_against: str = "baseline",
) -> str:
    """Markdown: every candidate with its tuning-split loss and target value; the chosen values in bold."""
    keys = {"loss_key": loss_key, "target_key": _target_key(target_group, target_key), "limit_against": limit_against}
    base_loss, candidates = choose_values(results, target_group, max_loss_increase, **keys)
    limit = base_loss * (1 + max_loss_increase)
    loss_name = "eval loss" if loss_key == "eval_loss" else loss_key
    target_name = f"{group_label(target_group)} NLL" if target_key is None else target_key
    header = ["method", "knob", "value", loss_name, target_name, "chosen"]
    runs = finished_runs(results)
    if limit_against == "start":
        reference = "its value before training"
        rows = [["before training", "—", "—", fmt(base_loss), _cell(stat_at_start(runs, keys["target_key"]).mean), ""]]
    else:
        reference = "the baseline's"
        base_nll = _mean(runs.get(results["arms"][0]["name"], []), keys["target_key"])
        rows = [["plain CE (baseline)", "—", "—", fmt(base_loss), _cell(base_nll), ""]]
    for c in candidates:
        bold = (lambda s: f"**{s}**") if c.chosen else (lambda s: s)
        loss = _cell(c.eval_loss) + ("" if c.eligible else " (over the limit)")
        rows.append([c.method, c.knob, bold(str(c.value)), loss, bold(_cell(c.target_nll)), "yes" if c.chosen else ""])
    note = (
        f"Rule: the lowest {target_name} among the values whose {loss_name} is at most "
        f"{max_loss_increase:.0%} above {reference} ({fmt(base_loss)} → limit {fmt(limit)}); if none is, "
        f"the lowest {loss_name}."
    )
    return note + "\n\n" + markdown_table(header, rows, ["l", "l", "r", "r", "r", "l"])
