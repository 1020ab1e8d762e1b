"""A comparison: every arm of a recipe x seeds, resumable, recorded in ``results.json``.

Run directory::

    <output_dir>/results.json, token_frequency.json, report.md, summary.json, plots/
    <output_dir>/<arm>-seed<seed>/      one Trainer output_dir per run (checkpoints, trainer_state.json,
                                        rank_buckets.json, scenarios.safetensors, run_result.json)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..metric_names import FREQUENCY_FILE, RESULTS_FILE, RUN_RESULT_FILE, run_dir_name
from ..ops.margin import margin_label
from .guards import RunDirLock, check_output_dir, remove_inside
from .recipe import Arm, Recipe, RunArguments
from .results import comparison_results, read_results_file, write_results
from .run import PreparedData, preflight, prepare_data, train_run

logger = logging.getLogger(__name__)

__all__ = ["check_run_dir", "compare", "comparison_dir", "comparison_runs"]


def run_name(recipe: Recipe) -> str:
    return Path(recipe.source).stem if recipe.source else "hf_selfish"


def comparison_dir(recipe: Recipe) -> Path:
    """Where a comparison writes: the recipe's ``output_dir``, else ``runs/<recipe name>``."""
    return Path(recipe.arguments().training.output_dir or f"runs/{run_name(recipe)}")


def comparison_runs(recipe: Recipe) -> list[tuple[Arm, int, RunArguments]]:
    """Every (arm, seed) of a recipe with its parsed arguments, each in ``<output_dir>/<arm>-seed<s>``."""
    base = recipe.arguments()
    if base.experiment.seeds < 1:
        raise ValueError(f"seeds={base.experiment.seeds} runs nothing; set seeds to 1 or more")
    run_dir = comparison_dir(recipe)
    runs = []
    for offset in range(base.experiment.seeds):
        seed = base.training.seed + offset
        for arm in recipe.arms:
            out = run_dir / run_dir_name(arm.name, seed)
            runs.append((arm, seed, recipe.arguments(arm, seed=seed, output_dir=str(out))))
    return runs


def _data_key(args: RunArguments) -> str:
    return json.dumps([dataclasses.asdict(args.data), dataclasses.asdict(args.model)], sort_keys=True, default=str)


def check_run_dir(run_dir: Path, recipe: Recipe, overwrite: bool) -> bool:
    """Whether ``run_dir`` holds another recipe's runs, which only ``overwrite`` may replace (else ValueError).

    `compare` records its recipe in ``results.json`` before the first run trains, so an interrupted
    comparison is recognised too: its checkpoints are never resumed under another recipe. The
    `RUN_NEUTRAL_KEYS` are not part of the recipe compared: re-running the same command, with or
    without ``overwrite``, resumes, and ``--seeds 3`` after ``--seeds 1`` adds two seeds.
    """
    recorded = read_results_file(run_dir)
    if recorded is None:
        return False
    previous = _comparable_recipe(recorded.get("recipe"))
    current = _comparable_recipe(recipe.to_dict())
    if previous == current:
        return False
    if overwrite or not _holds_runs(run_dir, recorded):  # nothing trained yet (it failed before): replace
        return True
    keys = sorted(k for k in {*previous, *current} if previous.get(k) != current.get(k))
    raise ValueError(
        f"{run_dir} holds the runs of a different recipe (differing in {', '.join(keys)}); pass --overwrite "
        "to replace them, or choose another --output_dir"
    )


def _holds_runs(run_dir: Path, results: dict[str, Any]) -> bool:
    """Whether a comparison directory holds finished runs or checkpoints."""
    return (
        bool(results.get("runs"))
        or any(run_dir.glob(f"*/{PREFIX_CHECKPOINT_DIR}-*"))
        or any(run_dir.glob(f"*/{RUN_RESULT_FILE}"))
    )


# Settings that do not change what a run computes: more seeds only add runs beside the existing ones.
RUN_NEUTRAL_KEYS = ("overwrite", "seeds", "disable_tqdm")


def _comparable_recipe(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """A recipe as JSON data, without `RUN_NEUTRAL_KEYS` (shared, or copied into arms by overrides)."""
    data = json.loads(json.dumps(recipe or {}, default=str))
    for values in [data, *(arm for arm in data.get("arms", []) if isinstance(arm, dict))]:
        for key in RUN_NEUTRAL_KEYS:
            values.pop(key, None)
    return data


def compare(recipe: Recipe, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every arm (x seeds) of ``recipe`` and write ``results.json``; returns its content.

    Re-running the same command skips finished runs and resumes an interrupted one.
    """
    say = progress or logger.info
    check_no_conflicts(recipe)
    runs = comparison_runs(recipe)
    base = recipe.arguments()
    if base.training.push_to_hub and base.training.hub_model_id and len(runs) > 1:
        raise ValueError(
            f"hub_model_id={base.training.hub_model_id!r} names one Hub repository for {len(runs)} runs; leave it "
            "unset (each run pushes to its own <user>/<arm>-seed<seed>) or push one arm with `hf-selfish train --arm`"
        )
    for _, _, args in runs:  # every run's settings, before anything is written
        preflight(args)
    run_dir = check_output_dir(comparison_dir(recipe))
    with RunDirLock(run_dir):
        if check_run_dir(run_dir, recipe, base.experiment.overwrite):
            _clear_finished(run_dir, runs)
        return _train_all(recipe, runs, run_dir, say)


def check_no_conflicts(recipe: Recipe) -> None:
    """Refuse command-line overrides of what arms set themselves: they would erase the difference between arms."""
    for arm in recipe.arms:
        for key, (own, used) in arm.conflicts.items():
            raise ValueError(
                f"--{key} {used} would replace arm {arm.name!r}'s own {key}={own!r}, and a comparison keeps each arm's "
                f"settings; drop the override, or train that arm alone: hf-selfish train RECIPE --arm {arm.name} "
                f"--{key} {used}"
            )


def _train_all(recipe: Recipe, runs, run_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    prepared: dict[str, PreparedData] = {}
    reference: PreparedData | None = None  # the first arm's data: its frequencies define the groups
    records = []
    for index, (arm, seed, args) in enumerate(runs, start=1):
        key = _data_key(args)
        if key not in prepared:
            prepared[key] = prepare_data(args.model, args.data)
        data = prepared[key]
        if reference is None:
            reference = data
            run_dir.mkdir(parents=True, exist_ok=True)
            reference.frequency.save(run_dir / FREQUENCY_FILE)  # the comparison's frequencies, once
        if not (run_dir / RESULTS_FILE).is_file():  # record the recipe before anything trains (check_run_dir)
            write_results(run_dir, _results(recipe, run_dir, reference, runs, records))
        say(f"[{index}/{len(runs)}] {arm.name} ({_loss_label(args)}) seed {seed} -> {args.training.output_dir}")
        record = train_run(args, data, arm=arm.name, groups=reference.groups)
        record["output_dir"] = str(Path(record["output_dir"]).relative_to(run_dir))
        if record.get("scenarios"):
            record["scenarios"] = str(Path(record["scenarios"]).relative_to(run_dir))
        records.append(record)
        final = record["final"]
        say(
            f"[{index}/{len(runs)}] {arm.name} seed {seed}: eval_loss {final['eval_loss']:.4f} "
            f"in {record['train_seconds']:.0f} s"
        )
        results = _results(recipe, run_dir, reference, runs, records)
        write_results(run_dir, results)  # after every run: partial results survive
    return results


def _clear_finished(run_dir: Path, runs) -> None:
    """``--overwrite``: remove this comparison's own run folders and results.json, nothing else."""
    for _, _, args in runs:
        remove_inside(run_dir, args.training.output_dir)
    (run_dir / RESULTS_FILE).unlink(missing_ok=True)


def _loss_label(args: RunArguments) -> str:
    """``margin 2``, ``margin none (plain CE)`` or ``focal {'gamma': 1.0}``: what an arm trains with."""
    training = args.training
    if training.loss_name == "selfish":
        return f"margin {margin_label(training.selfish_margin)}"
    return f"{training.loss_name} {training.loss_kwargs}" if training.loss_kwargs else training.loss_name


def _arm_summary(arm: Arm, args: RunArguments, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Name and margin of an arm (the resolved number once one of its runs has trained); its loss if not selfish."""
    training = args.training
    if training.loss_name != "selfish":
        return {
            "name": arm.name,
            "selfish_margin": None,
            "selfish_margin_setting": None,
            "loss_name": training.loss_name,
            "loss_kwargs": dict(training.loss_kwargs or {}),
        }
    resolved = [r["selfish_margin"] for r in records if r["arm"] == arm.name]
    margin = resolved[0] if resolved else training.selfish_margin
    summary = {"name": arm.name, "selfish_margin": margin, "selfish_margin_setting": training.selfish_margin}
    if training.selfish_margin_schedule != "constant":  # a margin schedule (the tuning table's own method)
        end = training.selfish_margin_end
        summary["selfish_margin_schedule"] = training.selfish_margin_schedule
        summary["selfish_margin_end"] = "inf" if end == math.inf else end  # inf: annealed to plain CE (strict JSON)
    return summary


def _results(recipe: Recipe, run_dir: Path, data: PreparedData, runs, records) -> dict[str, Any]:
    """The content of ``results.json`` for the runs recorded so far."""
    return comparison_results(
        name=run_dir.name,
        recipe=recipe.to_dict(),
        vocab_size=data.vocab_size,
        tokens=data.frequency.tokens,
        train_counts=data.frequency.counts,
        groups=data.groups,
        arms=[_arm_summary(arm, args, records) for arm, seed, args in runs if seed == runs[0][1]],
        runs=records,
        chars_per_token=data.lm.chars_per_token,
    )
