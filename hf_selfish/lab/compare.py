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

from ..config import MAX_SEED
from ..metric_names import FREQUENCY_FILE, RESULTS_FILE, RUN_RESULT_FILE, run_dir_name
from ..ops.margin import margin_label
from .guards import RunDirLock, check_folder_kind, check_output_dir, remove_inside
from .recipe import Arm, Recipe, RunArguments
from .results import FINISHED, comparison_results, read_results_file, write_results
from .run import RUN_NEUTRAL_ARGUMENTS, PreparedData, preflight, prepare_data, run_settings, train_run

logger = logging.getLogger(__name__)

__all__ = ["check_run_dir", "compare", "comparison_dir", "comparison_runs"]


def run_name(recipe: Recipe) -> str:
    return Path(recipe.source).stem if recipe.source else "hf_selfish"


def comparison_dir(recipe: Recipe) -> Path:
    """Where a comparison writes: the recipe's ``output_dir``, else ``runs/<recipe name>``."""
    return Path(recipe.shared_arguments().training.output_dir or f"runs/{run_name(recipe)}")


def comparison_runs(recipe: Recipe, kept_seeds: tuple[int, ...] = ()) -> list[tuple[Arm, int, RunArguments]]:
    """Every (arm, seed) of a recipe with its parsed arguments, each in ``<output_dir>/<arm>-seed<s>``.

    ``kept_seeds``: seeds finished earlier that the recipe's ``seeds`` no longer reach; they stay part of the
    comparison (its seeds only grow), in seed order.
    """
    base = recipe.shared_arguments()
    if base.experiment.seeds < 1:
        raise ValueError(f"seeds={base.experiment.seeds} runs nothing; set seeds to 1 or more")
    check_seed_range(base.training.seed, base.experiment.seeds)
    run_dir = comparison_dir(recipe)
    runs = []
    seeds = {base.training.seed + offset for offset in range(base.experiment.seeds)} | set(kept_seeds)
    for seed in sorted(seeds):
        for arm in recipe.arms:
            out = run_dir / run_dir_name(arm.name, seed)
            runs.append((arm, seed, recipe.arguments(arm, seed=seed, output_dir=str(out))))
    return runs


def check_seed_range(first: int, seeds: int) -> None:
    """Refuse a comparison whose last seed (``first + seeds - 1``) is beyond the largest seed, before any run trains."""
    last = first + seeds - 1
    if last > MAX_SEED:
        raise ValueError(
            f"seeds={seeds} starting at seed={first} run up to seed {last}, above the largest seed {MAX_SEED}; "
            f"give --seed {MAX_SEED - seeds + 1} or lower"
        )


def _data_key(args: RunArguments) -> str:
    return json.dumps([dataclasses.asdict(args.data), dataclasses.asdict(args.model)], sort_keys=True, default=str)


def check_run_dir(run_dir: Path, recipe: Recipe, overwrite: bool) -> bool:
    """Whether ``run_dir`` holds another recipe's runs, which only ``overwrite`` may replace (else ValueError).

    `compare` records its recipe in ``results.json`` before the first run trains, so an interrupted
    comparison is recognised too: its checkpoints are never resumed under another recipe. The
    `RUN_NEUTRAL_ARGUMENTS` (where the folder is, how it reports, the seed count) are not part of the recipe
    compared: re-running the same command, with or without ``overwrite``, resumes, ``--seeds 3`` after
    ``--seeds 1`` adds two seeds, and a copied folder (``cp -a runs/a runs/b``) is the same comparison. A recipe
    that only adds arms (every recorded arm kept, unchanged) extends it: the new arms train, the others are kept.
    """
    recorded = read_results_file(run_dir)
    if recorded is None:
        return False
    previous = _comparable_recipe(recorded.get("recipe"))
    current = _comparable_recipe(recipe.to_dict())
    if previous == current or (not overwrite and _adds_arms(previous, current)):
        return False
    if overwrite or not _holds_runs(run_dir, recorded):  # nothing trained yet (it failed before): replace
        return True
    keys = _differing_keys(previous, current)
    kept = _kept_runs(run_dir, recorded)
    raise ValueError(
        f"{run_dir} holds the runs of a different recipe (differing in {', '.join(keys)}): choose another "
        f"--output_dir, or pass --overwrite to DELETE them ({kept})"
    )


def _adds_arms(previous: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether ``current`` is ``previous`` with more arms: the same settings, every recorded arm unchanged."""
    if {k: v for k, v in previous.items() if k != "arms"} != {k: v for k, v in current.items() if k != "arms"}:
        return False
    kept = current.get("arms") or []
    return all(arm in kept for arm in previous.get("arms") or [])


def _differing_keys(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The recipe keys two recipes differ in; inside arms ``arm NAME: key`` (a command-line override, copied into
    every arm, is named once)."""
    shared = sorted(k for k in {*previous, *current} - {"arms"} if previous.get(k) != current.get(k))
    before, after = previous.get("arms") or [], current.get("arms") or []
    names = [[arm.get("name") for arm in arms if isinstance(arm, dict)] for arms in (before, after)]
    if names[0] != names[1]:
        return shared + ["arms"]
    inside = []
    for old, new in zip(before, after):
        inside += [
            f"arm {new['name']}: {key}"
            for key in sorted({*old, *new})
            if old.get(key) != new.get(key) and key not in shared
        ]
    return shared + inside


def _kept_runs(run_dir: Path, results: dict[str, Any]) -> str:
    """What ``--overwrite`` would delete, in words: the finished runs by name, or the unfinished ones."""
    finished = sorted(path.parent.name for path in run_dir.glob(f"*/{RUN_RESULT_FILE}"))
    if finished:
        shown = ", ".join(finished[:6]) + (f" and {len(finished) - 6} more" if len(finished) > 6 else "")
        return f"{len(finished)} finished run{'s' if len(finished) != 1 else ''}: {shown}"
    return "interrupted runs and their checkpoints"


def _holds_runs(run_dir: Path, results: dict[str, Any]) -> bool:
    """Whether a comparison directory holds finished runs or checkpoints."""
    return (
        bool(results.get("runs"))
        or any(run_dir.glob(f"*/{PREFIX_CHECKPOINT_DIR}-*"))
        or any(run_dir.glob(f"*/{RUN_RESULT_FILE}"))
    )


def _comparable_recipe(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """A recipe as JSON data, without `RUN_NEUTRAL_ARGUMENTS` (shared, or copied into arms by overrides): the
    same settings `check_same_run` leaves out of a single run's identity, ``output_dir`` among them."""
    data = json.loads(json.dumps(recipe or {}, default=str))
    for values in [data, *(arm for arm in data.get("arms", []) if isinstance(arm, dict))]:
        for key in RUN_NEUTRAL_ARGUMENTS:
            values.pop(key, None)
    return data


def compare(recipe: Recipe, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every arm (x seeds) of ``recipe`` and write ``results.json``; returns its content.

    Re-running the same command skips finished runs and resumes an interrupted one.
    """
    say = progress or logger.info
    check_no_conflicts(recipe)
    runs = comparison_runs(recipe)
    check_distinct_arms(runs)
    base = recipe.shared_arguments()
    if base.training.push_to_hub and base.training.hub_model_id and len(runs) > 1:
        raise ValueError(
            f"hub_model_id={base.training.hub_model_id!r} names one Hub repository for {len(runs)} runs; leave it "
            "unset (each run pushes to its own <user>/<arm>-seed<seed>) or push one arm with `hf-selfish train --arm`"
        )
    for _, _, args in runs:  # every run's settings, before anything is written
        preflight(args)
    run_dir = check_output_dir(comparison_dir(recipe))
    check_folder_kind(run_dir, "comparison")
    with RunDirLock(run_dir):
        if check_run_dir(run_dir, recipe, base.experiment.overwrite):
            _clear_finished(run_dir, runs)
        kept = _finished_seeds_beyond(run_dir, runs)
        if kept:
            say(
                f"keeping the finished seed{'s' if len(kept) > 1 else ''} {', '.join(map(str, kept))} of {run_dir} "
                "(a comparison's seeds only grow; choose another --output_dir for fewer)"
            )
            runs = comparison_runs(recipe, kept)
        return _train_all(recipe, runs, run_dir, say)


def _finished_seeds_beyond(run_dir: Path, runs) -> tuple[int, ...]:
    """Seeds that ``results.json`` holds finished runs of but ``runs`` does not reach (a smaller ``seeds``)."""
    recorded = read_results_file(run_dir) or {}
    planned = {seed for _, seed, _ in runs}
    finished = {r.get("seed") for r in recorded.get("runs") or [] if r.get("status") == FINISHED}
    return tuple(sorted(s for s in finished if isinstance(s, int) and s not in planned))


def check_distinct_arms(runs) -> None:
    """Refuse two arms that train the same settings (``selfish_margin: 2`` and ``2.0``, ``null`` and ``inf``): their
    difference would be noise between two copies of one arm, reported as an effect."""
    seen: dict[str, str] = {}
    for arm, seed, args in runs:
        if seed != runs[0][1]:
            break
        key = json.dumps(run_settings(args), sort_keys=True)
        if key in seen:
            raise ValueError(
                f"arms {seen[key]!r} and {arm.name!r} train the same settings (the same loss and margin once read as "
                "numbers): the comparison would compare an arm with itself; drop one or change its settings"
            )
        seen[key] = arm.name


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
        # relative to the comparison, from where the run is now (a copied folder's record names the original)
        folder = Path(args.training.output_dir)
        record["output_dir"] = str(folder.relative_to(run_dir))
        if record.get("scenarios"):
            record["scenarios"] = str((folder / Path(record["scenarios"]).name).relative_to(run_dir))
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
    """``--overwrite``: remove the run folders of this comparison and of the one recorded in results.json (its
    seeds may be more), and results.json; nothing else."""
    recorded = read_results_file(run_dir) or {}
    folders = {Path(args.training.output_dir) for _, _, args in runs}
    for run in [*(recorded.get("runs") or []), *(recorded.get("planned") or [])]:
        if isinstance(run, dict) and run.get("arm") is not None and run.get("seed") is not None:
            folders.add(run_dir / run_dir_name(str(run["arm"]), run["seed"]))
    for folder in sorted(folders):
        remove_inside(run_dir, folder)
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
        planned=[(arm.name, seed) for arm, seed, _ in runs],
        train_shares=data.lm.train_shares,
    )
