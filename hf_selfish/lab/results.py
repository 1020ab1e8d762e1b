"""The run-directory contract: typed records, file names, and the only reader and writer of results.json.

A comparison directory holds ``results.json`` (`ComparisonResults`), one Trainer output folder per run
(`run_dir_name`) with its ``run_result.json`` (`RunRecord`), and what reporting derives from them
(report.md, summary.json, plots/). Everything reporting reads goes through this module; file names
come from `hf_selfish.metric_names`, the one place they are built.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from ..files import atomic_write_json, read_json
from ..metric_names import FREQUENCY_FILE as FREQUENCY_FILE
from ..metric_names import PLOTS_DIR as PLOTS_DIR
from ..metric_names import RANK_BUCKETS_FILE as RANK_BUCKETS_FILE
from ..metric_names import REPORT_FILE as REPORT_FILE
from ..metric_names import RESULTS_FILE as RESULTS_FILE
from ..metric_names import RUN_ARGS_FILE as RUN_ARGS_FILE
from ..metric_names import RUN_RESULT_FILE as RUN_RESULT_FILE
from ..metric_names import SCENARIOS_FILE as SCENARIOS_FILE
from ..metric_names import SUMMARY_FILE as SUMMARY_FILE
from ..metric_names import describe_group, group_info_map, groups_in_metrics, is_eval_entry, run_dir_name

logger = logging.getLogger(__name__)

# The file names are re-exported from metric_names (they are built there): reporting imports them from here.
__all__ = [
    "FINISHED",
    "FORMAT",
    "ComparisonResults",
    "RunRecord",
    "arm_names",
    "check_results",
    "comparison_results",
    "eval_history",
    "finished_runs",
    "group_info",
    "group_names",
    "incomplete_reason",
    "load_results",
    "missing_runs",
    "per_token_final_nll",
    "scenarios_path",
    "train_counts",
    "read_results_file",
    "read_run_record",
    "check_same_run",
    "write_run_settings",
    "run_dir_name",
    "train_history",
    "write_results",
    "write_run_record",
]

FORMAT = 1
FINISHED = "finished"


class RunRecord(TypedDict):
    """One finished run (``run_result.json``; one entry of ``results.json``'s ``runs``)."""

    arm: str
    seed: int
    selfish_margin: float | None  # the margin trained with ("auto" resolved against V; None for another loss)
    selfish_margin_setting: float | str | None  # as the recipe wrote it
    output_dir: str  # relative to the comparison directory inside results.json
    status: str  # FINISHED
    resumed_from: str | None
    train_seconds: float
    global_step: int
    final: dict[str, Any]  # the last evaluation's log entry (eval_loss, eval_{group}_{stat}, step)
    history: list[dict[str, Any]]  # every evaluation's log entry
    train_history: list[dict[str, Any]]  # every training log entry (loss, selfish_masked_fraction, ...)
    scenarios: str | None  # the run's scenarios.safetensors, when recorded


class ComparisonResults(TypedDict):
    """``results.json`` of a comparison."""

    format: int
    name: str
    recipe: dict[str, Any]
    vocab_size: int
    tokens: list[str] | None  # a readable label per token id
    train_counts: list[int]  # train-split count per token id
    groups: dict[str, list[int]]  # group name -> token ids, in report order
    group_info: dict[str, dict[str, Any]]  # group name -> kind, rank range, language (metric_names.describe_group)
    eval_subsets: dict[str, dict[str, Any]]  # eval subset (a language) -> {"chars_per_token": float}
    arms: list[dict[str, Any]]  # name, selfish_margin, selfish_margin_setting (+ loss_name, loss_kwargs if not selfish)
    runs: list[RunRecord]
    planned: list[dict[str, Any]]  # every run the comparison trains: {"arm", "seed"} (absent in older files)
    train_shares: dict[str, float]  # each language's share of the training characters (Bible mixes; else {})


# ------------------------------------------------------------------------------------------ run records


def eval_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations of a Trainer's log history: each ``eval_loss`` entry, with the entries of the eval
    subsets (``eval_{name}_*``) the Trainer logged right after it at the same step merged in."""
    history: list[dict[str, Any]] = []
    for entry in log_history:
        if "eval_loss" in entry:
            history.append(dict(entry))
        elif is_eval_entry(entry) and history and history[-1].get("step") == entry.get("step"):
            history[-1].update(entry)
    return history


def train_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The training-loss entries of a Trainer's log history."""
    return [dict(entry) for entry in log_history if "loss" in entry and "eval_loss" not in entry]


def write_run_settings(output_dir: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Write ``output_dir/run_args.json``: what the run computes (see `check_same_run`)."""
    return atomic_write_json(Path(output_dir) / RUN_ARGS_FILE, settings)


def check_same_run(output_dir: str | os.PathLike, settings: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Refuse to reuse ``output_dir`` when it holds a run of other settings (a ValueError naming them).

    ``ignore``: keys that may differ (an interrupted run may be resumed with a larger ``max_steps``).
    """
    path = Path(output_dir) / RUN_ARGS_FILE
    if not path.is_file():
        return
    recorded = read_json(path, what="run arguments file")
    differing = []
    for part in sorted({*recorded, *settings}):
        mine, theirs = recorded.get(part) or {}, settings.get(part) or {}
        differing += [
            f"{key}: {mine.get(key)!r} there, {theirs.get(key)!r} now"
            for key in sorted({*mine, *theirs})
            if mine.get(key) != theirs.get(key) and key not in ignore
        ]
    if differing:
        shown = "; ".join(differing[:4]) + (f"; and {len(differing) - 4} more" if len(differing) > 4 else "")
        raise ValueError(
            f"{output_dir} holds a run with other settings ({shown}); choose another --output_dir, or delete it to "
            "start over"
        )


def write_run_record(output_dir: str | os.PathLike, record: RunRecord) -> Path:
    """Write ``output_dir/run_result.json`` (atomically): the run is finished."""
    return atomic_write_json(Path(output_dir) / RUN_RESULT_FILE, record)


def read_run_record(output_dir: str | os.PathLike) -> RunRecord | None:
    """The record of a finished run, or None when ``output_dir`` holds no ``run_result.json``."""
    path = Path(output_dir) / RUN_RESULT_FILE
    return read_json(path, what="run result") if path.is_file() else None


# -------------------------------------------------------------------------------------- results.json


def comparison_results(
    *,
    name: str,
    recipe: Mapping[str, Any],
    vocab_size: int,
    tokens: list[str] | None,
    train_counts: list[int],
    groups: Mapping[str, list[int]],
    arms: list[dict[str, Any]],
    runs: list[RunRecord],
    chars_per_token: Mapping[str, float] | None = None,
    planned: Sequence[tuple[str, int]] = (),
    train_shares: Mapping[str, float] | None = None,
) -> ComparisonResults:
    """The content of ``results.json``; group metadata is derived from the group names here, once."""
    return ComparisonResults(
        format=FORMAT,
        name=name,
        recipe=json.loads(json.dumps(recipe, default=str)),
        vocab_size=vocab_size,
        tokens=tokens,
        train_counts=train_counts,
        groups=dict(groups),
        group_info=group_info_map(groups),
        eval_subsets={name: {"chars_per_token": value} for name, value in (chars_per_token or {}).items()},
        arms=arms,
        runs=runs,
        planned=[{"arm": arm, "seed": seed} for arm, seed in planned],
        train_shares=dict(train_shares or {}),
    )


def write_results(run_dir: str | os.PathLike, results: ComparisonResults) -> Path:
    """Write ``run_dir/results.json`` atomically."""
    return atomic_write_json(Path(run_dir) / RESULTS_FILE, results)


def read_results_file(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run_dir/results.json`` as written (unchecked), or None when there is none."""
    path = Path(run_dir) / RESULTS_FILE
    return read_json(path, what="results file") if path.is_file() else None


def load_results(run_dir: str | os.PathLike) -> ComparisonResults:
    """Read ``run_dir/results.json`` (or the given ``results.json`` path) and check its shape.

    Raises ValueError naming the path when the file is missing, not JSON, or lacks the ``arms`` /
    ``runs`` lists every report needs.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ValueError(
            f"no results file at {str(path)!r}: pass the folder `hf-selfish compare` wrote (it holds results.json)"
        )
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"results file {str(path)!r} is not valid JSON ({err}); re-run the comparison") from None
    check_results(results, str(path))
    return results


def check_results(results: Any, where: str) -> None:
    """Raise a ValueError naming ``where`` unless ``results`` has the shape of ``results.json``."""
    if not isinstance(results, dict):
        raise ValueError(f"results {where!r} must be a JSON object, got {type(results).__name__}")
    fmt = results.get("format", 1)
    if fmt != FORMAT:
        raise ValueError(f"results {where!r} has format {fmt!r}; this version of hf_selfish reads format {FORMAT}")
    for key in ("arms", "runs"):
        if not isinstance(results.get(key), list):
            raise ValueError(f"results {where!r} has no {key!r} list; it was not written by `hf-selfish compare`")
    if not results["arms"]:
        raise ValueError(f"results {where!r} lists no arms")
    for i, arm in enumerate(results["arms"]):
        if not isinstance(arm, dict) or "name" not in arm:
            raise ValueError(f"arm #{i + 1} of results {where!r} must be an object with a 'name', got {arm!r}")


# --------------------------------------------------------------------------------------------- queries


def arm_names(results: Mapping[str, Any]) -> list[str]:
    return [str(arm["name"]) for arm in results["arms"]]


def group_names(results: Mapping[str, Any]) -> list[str]:
    """The groups of a comparison in order: ``results["groups"]`` if given, else those in the metrics."""
    if results.get("groups"):
        return list(results["groups"])
    names: dict[str, None] = {}
    for run in results.get("runs", []):
        for name in groups_in_metrics(run.get("final") or {}):
            names.setdefault(name, None)
    return list(names)


def group_info(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Kind and details of every group: as saved with the run, else parsed from the names (older files)."""
    saved = results.get("group_info") or {}
    return {name: saved.get(name) or describe_group(name).to_json() for name in group_names(results)}


def finished_runs(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The finished runs (with final metrics) of each arm, arms in order, runs sorted by seed."""
    by_arm: dict[str, list[dict[str, Any]]] = {name: [] for name in arm_names(results)}
    for run in results["runs"]:
        if run.get("status") == FINISHED and run.get("final") and run.get("arm") in by_arm:
            by_arm[run["arm"]].append(run)
    for runs in by_arm.values():
        runs.sort(key=lambda r: (r.get("seed") is None, r.get("seed")))
    return by_arm


def missing_runs(results: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The ``(arm, seed)`` runs a comparison has not finished, in plan order.

    The plan is ``results["planned"]``; older files without it plan every arm on every seed any run finished
    (no run finished: each arm's seed is unknown, ``None``).
    """
    done = {(arm, run.get("seed")) for arm, runs in finished_runs(results).items() for run in runs}
    planned = [(str(p["arm"]), p.get("seed")) for p in results.get("planned") or []]
    if not planned:
        seeds = sorted({seed for _, seed in done if seed is not None}) or [None]
        planned = [(arm, seed) for seed in seeds for arm in arm_names(results)]
    return [run for run in planned if run not in done]


def incomplete_reason(results: Mapping[str, Any]) -> str | None:
    """Why a comparison gives no verdict yet (runs missing, or arms on different seeds), or None when complete."""
    missing = missing_runs(results)
    by_arm = finished_runs(results)
    if missing:
        total = len(missing) + sum(len(runs) for runs in by_arm.values())
        names = ", ".join(arm if seed is None else run_dir_name(arm, seed) for arm, seed in missing)
        return f"{len(missing)} of {total} runs have not finished: {names}"
    seeds = {arm: tuple(run.get("seed") for run in runs) for arm, runs in by_arm.items()}
    if len(set(seeds.values())) > 1:
        shown = "; ".join(f"{arm}: {', '.join(map(str, s)) or 'none'}" for arm, s in seeds.items())
        return f"the arms finished different seeds ({shown})"
    return None


def train_counts(run_dir: str | os.PathLike, results: Mapping[str, Any]) -> tuple[list[int] | None, list[str] | None]:
    """Train counts and token strings of a comparison: from results.json, else token_frequency.json."""
    counts, tokens = results.get("train_counts"), results.get("tokens")
    path = Path(run_dir) / FREQUENCY_FILE
    if counts is None and path.is_file():
        record = read_json(path, what="token frequency file")
        counts, tokens = record.get("counts"), tokens or record.get("tokens")
    if tokens is not None and counts is not None and len(tokens) != len(counts):
        logger.warning("results.json holds %d token strings for %d counts; using no labels", len(tokens), len(counts))
        tokens = None
    return counts, tokens


def per_token_final_nll(run_dir: str | os.PathLike, run: Mapping[str, Any], vocab_size: int) -> list[float] | None:
    """Each token's final eval NLL of one run (``rank_buckets.json``; NaN: absent), or None when not recorded."""
    if not run.get("output_dir"):
        return None
    path = Path(run_dir) / str(run["output_dir"]) / RANK_BUCKETS_FILE
    if not path.is_file():
        return None
    try:
        nll = read_json(path, what="rank buckets file")["per_token"]["nll"]
    except (ValueError, KeyError, TypeError) as err:
        logger.warning("skipping %s: no per_token.nll (%s)", path, err)
        return None
    if len(nll) != vocab_size:
        logger.warning("skipping %s: %d per-token values for %d tokens", path, len(nll), vocab_size)
        return None
    return [float("nan") if v is None else float(v) for v in nll]


def scenarios_path(run_dir: str | os.PathLike, run: Mapping[str, Any]) -> Path | None:
    """The run's ``scenarios.safetensors`` when it recorded one and the file is there."""
    relative = run.get("scenarios")
    if not relative:
        return None
    path = Path(run_dir) / relative
    if not path.is_file():
        logger.warning(
            "run %s-seed%s lists scenarios at %s but the file is missing", run.get("arm"), run.get("seed"), path
        )
        return None
    return path
