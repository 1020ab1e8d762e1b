"""Every metric key, group name and run-directory file name hf_selfish uses, built and parsed here only.

    group_metric_name("rank_1-10", "nll")  == "rank_1-10_nll"          # what compute_metrics returns
    metric_key("rank_1-10", "nll")         == "eval_rank_1-10_nll"     # what the Trainer logs
    split_metric_key("eval_rank_1-10_nll") == ("rank_1-10", "nll")
    scenario_share_key("rank_1-10")        == "scenario_rank_1-10_non_target_share"

Groups are named sets of token ids. Their names carry their kind, so a report can derive its columns
from the names saved with a run (`describe_group`): frequency-rank buckets ``rank_{lo}-{hi}`` (linear or
log-spaced alike), ``unseen`` (ids that never occur in training), languages ``lang_{code}``, the tokens
only one language's training text holds ``lang_{code}_only``, and any other name (kind ``other``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ALL_GROUP",
    "ALL_STATS",
    "FREQUENCY_FILE",
    "PLOTS_DIR",
    "RANK_BUCKETS_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "RUN_ARGS_FILE",
    "RUN_RESULT_FILE",
    "SCENARIOS_FILE",
    "SUMMARY_FILE",
    "plot_file",
    "rank_buckets_file",
    "run_dir_name",
    "COUNT_STATS",
    "EVAL_PREFIX",
    "finite_or_none",
    "GroupInfo",
    "HEADLINE_STATS",
    "LOWER_IS_BETTER",
    "MAIN_STAT",
    "MEAN_STATS",
    "RANKING_STATS",
    "STAT_TITLES",
    "UNSEEN_GROUP",
    "describe_group",
    "group_info_map",
    "group_label",
    "group_metric_name",
    "groups_in_metrics",
    "language_group_name",
    "language_only_group_name",
    "metric_key",
    "metric_key_prefix",
    "metric_value",
    "rank_group_name",
    "scenario_share_key",
    "split_metric_key",
    "subset_prefix",
    "is_eval_entry",
]

# Files of a run directory. A Trainer output_dir holds the Trainer's own files plus RANK_BUCKETS_FILE,
# SCENARIOS_FILE, FREQUENCY_FILE and RUN_RESULT_FILE; a comparison directory holds one such folder per
# run (`run_dir_name`) plus RESULTS_FILE, FREQUENCY_FILE, REPORT_FILE, SUMMARY_FILE and PLOTS_DIR.
RESULTS_FILE = "results.json"
RUN_RESULT_FILE = "run_result.json"
RUN_ARGS_FILE = "run_args.json"  # what a run computes, written when its training starts
FREQUENCY_FILE = "token_frequency.json"
RANK_BUCKETS_FILE = "rank_buckets.json"
SCENARIOS_FILE = "scenarios.safetensors"
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
PLOTS_DIR = "plots"
LOCK_FILE = ".hf_selfish.lock"

EVAL_PREFIX = "eval"
UNSEEN_GROUP = "unseen"
ALL_GROUP = "all"  # every token id: a subset's overall per-token statistics
LANGUAGE_PREFIX = "lang_"
ONLY_SUFFIX = "_only"

# Per-group statistics of an evaluation (see hf_selfish.evaluation for their definitions).
MAIN_STAT = "nll"
MEAN_STATS = ("nll", "nll_weighted", "accuracy", "recall_at_5", "mrr")
COUNT_STATS = ("tokens", "types")
ALL_STATS = MEAN_STATS + COUNT_STATS
RANKING_STATS = ("accuracy", "recall_at_5", "mrr")
HEADLINE_STATS = (MAIN_STAT, *RANKING_STATS)  # what compact views (languages, sweeps) show per group
STAT_TITLES = {
    "nll": "per-token-mean NLL",
    "nll_weighted": "occurrence-weighted NLL",
    "accuracy": "top-1 accuracy",
    "recall_at_5": "recall@5",
    "mrr": "MRR",
    "tokens": "eval tokens",
    "types": "eval types",
    "eval_loss": "overall eval loss",
}
LOWER_IS_BETTER = {
    "nll": True,
    "nll_weighted": True,
    "eval_loss": True,
    "accuracy": False,
    "recall_at_5": False,
    "mrr": False,
}

# Suffixes tried longest first, so `eval_x_nll_weighted` is never read as group `x_nll`, stat `weighted`.
_STATS_BY_LENGTH = sorted(ALL_STATS, key=len, reverse=True)
_RANK_GROUP = re.compile(r"^rank_(\d+)-(\d+)$")
_SCENARIO_SHARE = ("scenario_", "_non_target_share")


# ---------------------------------------------------------------------------------------------- groups


def rank_group_name(lo: int, hi: int) -> str:
    """Name of the group of 1-based inclusive ranks ``lo..hi``: ``rank_{lo}-{hi}``."""
    return f"rank_{lo}-{hi}"


def language_group_name(language: str) -> str:
    """Name of a language's group: ``lang_{language}``."""
    return f"{LANGUAGE_PREFIX}{language}"


def language_only_group_name(language: str) -> str:
    """Name of the tokens that occur in a language's training text and in no other: ``lang_{language}_only``."""
    return f"{LANGUAGE_PREFIX}{language}{ONLY_SUFFIX}"


@dataclass(frozen=True)
class GroupInfo:
    """What a group name says: its kind (``rank``, ``unseen``, ``language``, ``other``) and details."""

    name: str
    kind: str
    rank_lo: int | None = None
    rank_hi: int | None = None
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def describe_group(name: str) -> GroupInfo:
    """Parse a group name built by this module (anything else is kind ``other``)."""
    match = _RANK_GROUP.match(name)
    if match:
        return GroupInfo(name, "rank", rank_lo=int(match.group(1)), rank_hi=int(match.group(2)))
    if name == UNSEEN_GROUP:
        return GroupInfo(name, "unseen")
    if name == ALL_GROUP:
        return GroupInfo(name, "all")
    if (
        name.startswith(LANGUAGE_PREFIX)
        and name.endswith(ONLY_SUFFIX)
        and len(name) > len(LANGUAGE_PREFIX + ONLY_SUFFIX)
    ):
        return GroupInfo(name, "language_only", language=name[len(LANGUAGE_PREFIX) : -len(ONLY_SUFFIX)])
    if name.startswith(LANGUAGE_PREFIX) and len(name) > len(LANGUAGE_PREFIX):
        return GroupInfo(name, "language", language=name[len(LANGUAGE_PREFIX) :])
    return GroupInfo(name, "other")


def group_info_map(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: GroupInfo.to_json()}`` of every group, the metadata a run directory records."""
    return {name: describe_group(name).to_json() for name in names}


def group_label(group: str) -> str:
    """A readable name: ``rank_41-50`` -> ``ranks 41-50``; other names unchanged."""
    info = describe_group(group)
    return f"ranks {info.rank_lo}-{info.rank_hi}" if info.kind == "rank" else group


# --------------------------------------------------------------------------------------------- metrics


def group_metric_name(group: str, stat: str) -> str:
    """The name a group statistic has before the Trainer adds its prefix: ``{group}_{stat}``."""
    return f"{group}_{stat}"


def metric_key(group: str, stat: str, prefix: str = EVAL_PREFIX) -> str:
    """The logged key of a group statistic: ``metric_key("rank_1-10", "nll") == "eval_rank_1-10_nll"``."""
    return f"{prefix}_{group_metric_name(group, stat)}"


def split_metric_key(key: str, prefix: str = EVAL_PREFIX) -> tuple[str, str] | None:
    """``"eval_rank_1-10_nll_weighted"`` -> ``("rank_1-10", "nll_weighted")``; None for other keys."""
    head = prefix + "_"
    if not key.startswith(head):
        return None
    for stat in _STATS_BY_LENGTH:
        suffix = "_" + stat
        if key.endswith(suffix) and len(key) > len(head) + len(suffix):
            return key[len(head) : -len(suffix)], stat
    return None


def metric_value(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]`` as a float when it is a finite number; None when absent, NaN, infinite or not a number."""
    return finite_or_none(metrics.get(key))


def finite_or_none(value: Any) -> float | None:
    """A finite number as a float; None for anything else (None, NaN, inf, bools, strings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def groups_in_metrics(metrics: Mapping[str, Any]) -> list[str]:
    """Group names found in ``eval_{group}_{stat}`` keys, in order of first appearance."""
    names: dict[str, None] = {}
    for key in metrics:
        parsed = split_metric_key(key)
        if parsed is not None:
            names.setdefault(parsed[0], None)
    return list(names)


def metric_key_prefix(metrics: Mapping[str, Any]) -> str:
    """The ``metric_key_prefix`` of an ``evaluate()`` result, read off its ``{prefix}_runtime`` key."""
    for key in metrics:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return EVAL_PREFIX


def subset_prefix(subset: str) -> str:
    """The metric prefix of an eval subset (e.g. a language): ``eval_{subset}``."""
    return f"{EVAL_PREFIX}_{subset}"


def is_eval_entry(entry: Mapping[str, Any]) -> bool:
    """Whether a log entry is an evaluation's: it holds ``eval_loss`` or an eval subset's ``eval_{name}_loss``."""
    return any(key.startswith(EVAL_PREFIX + "_") and key.endswith("_loss") for key in entry)


def scenario_share_key(group: str) -> str:
    """The logged share of gradient scenario 2.2 in a group: ``scenario_{group}_non_target_share``."""
    return f"{_SCENARIO_SHARE[0]}{group}{_SCENARIO_SHARE[1]}"


def split_scenario_share_key(key: str) -> str | None:
    """The group of a `scenario_share_key`, or None for other keys."""
    head, tail = _SCENARIO_SHARE
    if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
        return key[len(head) : -len(tail)]
    return None


# ----------------------------------------------------------------------------------------------- files


def run_dir_name(arm: str, seed: int) -> str:
    """The folder of one run of a comparison: ``{arm}-seed{seed}``."""
    return f"{arm}-seed{seed}"


def rank_buckets_file(metric_prefix: str = EVAL_PREFIX) -> str:
    """Per-token statistics of an evaluation: ``rank_buckets.json``, or ``rank_buckets_{name}.json`` for the
    eval dataset ``name`` (``metric_key_prefix="eval_name"``)."""
    if metric_prefix == EVAL_PREFIX:
        return RANK_BUCKETS_FILE
    suffix = metric_prefix[len(EVAL_PREFIX) + 1 :] if metric_prefix.startswith(EVAL_PREFIX + "_") else metric_prefix
    return f"rank_buckets_{suffix}.json"


def plot_file(name: str) -> str:
    """A figure's path inside a comparison directory: ``plots/{name}.png``."""
    return f"{PLOTS_DIR}/{name}.png"
