"""`hf-selfish`: train one run, compare arms, and rebuild plots/reports from saved runs.

    hf-selfish compare recipes/tinyshakespeare_cpu.yaml [--max_steps 50 --output_dir /tmp/x ...]
    hf-selfish train   recipes/tinyshakespeare_cpu.yaml [--arm selfish] [--key value ...]
    hf-selfish plot    runs/tinyshakespeare_cpu
    hf-selfish report  runs/tinyshakespeare_cpu [--push USER/REPO | --baseline ARM]
    hf-selfish tune    runs/rivals_tune_cpu [--group rank_41-50] [--max_loss_increase 0.05]
    hf-selfish tune    runs/bible_nya_sweep_cpu --language nya_chichewa --main eng_web
    hf-selfish tune    runs/gemma3_nya_lr_tune_cpu --language nya_chichewa --main eng_web --limit_against start
    hf-selfish recipes                        # the bundled recipes: `compare tinyshakespeare_cpu` runs one by name

Any recipe field can be overridden after the recipe path (``--key value``). Library errors
(`ValueError`) are printed as one line and exit with status 2. Ctrl-C and SIGTERM stop a run the same
way (exit status 130): finished runs are kept, and re-running the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time

from .lab.recipe import load_recipe, parse_overrides, valid_keys

logger = logging.getLogger("hf_selfish")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-selfish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("train", "train one run (one arm) of a recipe"),
        ("compare", "train every arm x seed of a recipe, then write report and plots"),
    ):
        # RECIPE is read off the unknown arguments (`_split_recipe`): an argparse positional would take the
        # value of the first override when the recipe is left out (`train --train_file corpus.txt`).
        usage = f"hf-selfish {name} [RECIPE]{' [--arm NAME]' if name == 'train' else ''} [--KEY VALUE ...]"
        cmd = sub.add_parser(
            name,
            help=text,
            usage=usage,
            description=f"{text}. RECIPE: a YAML recipe, or the name of a bundled one (`hf-selfish recipes`); "
            "omit it to use defaults and overrides only. "
            "Overrides: --KEY VALUE for any recipe key.",
            epilog="recipe keys: " + ", ".join(valid_keys()),
        )
        if name == "train":
            cmd.add_argument("--arm", help="the recipe arm to train (required when the recipe lists arms)")
    sub.add_parser("recipes", help="list the bundled recipes (RECIPE may be one of their names)")
    plot = sub.add_parser("plot", help="rebuild report.md and plots/ of a comparison run directory")
    plot.add_argument("run_dir")
    report = sub.add_parser("report", help="rebuild report.md; optionally push report + plots to the Hub")
    report.add_argument("run_dir")
    report.add_argument("--push", metavar="REPO_ID", help="Hub repository to upload the report and plots to")
    report.add_argument(
        "--baseline",
        metavar="ARM",
        help="take every Δ against this arm (default: the first); writes report_vs_ARM.md, report.md stays",
    )
    _add_tune_parser(sub)
    return parser


def _add_tune_parser(sub) -> None:
    from .reporting.tuning import LIMITS

    tune = sub.add_parser(
        "tune",
        help="print the tuning table of a tuning comparison and the value chosen per method",
        description="Print the tuning table of a rival-loss tuning comparison (eval_split: tune) and the knob value "
        "the rule chooses per method: among the values whose eval loss is at most max_loss_increase above the "
        "baseline's, the lowest target NLL. The target defaults to the simulation's small language, else the rare "
        "headline bucket; on a Bible mix, --language (with --main) minimises that language's eval loss among the "
        "values that keep the main language's within the limit.",
    )
    tune.add_argument("run_dir", help="the folder `hf-selfish compare` wrote (it holds results.json)")
    tune.add_argument("--group", help="target group (default: the small language, else the rare headline bucket)")
    tune.add_argument(
        "--max_loss_increase", type=float, default=None, help="relative eval-loss limit above the baseline (0.05: 5%%)"
    )
    tune.add_argument("--language", help="a Bible mix's small language: minimise its eval loss")
    tune.add_argument("--main", help="with --language: the main language, whose eval loss is limited")
    tune.add_argument(
        "--limit_against",
        choices=LIMITS,
        default=LIMITS[0],
        help="what the limit is above: the first arm's final loss (baseline), or the loss before training (start: "
        "needs eval_on_start; every arm is then a candidate, e.g. a learning-rate sweep of a pretrained model)",
    )


def _split_recipe(rest: list[str]) -> tuple[str | None, list[str]]:
    """The recipe path (the first argument, unless it is an override) and the overrides."""
    if rest and not rest[0].startswith("--"):
        return rest[0], rest[1:]
    return None, rest


def _cmd_train(ns, overrides) -> None:
    from .lab.run import preflight, prepare_data, train_run

    recipe = load_recipe(ns.recipe, overrides)
    arm = recipe.arm(ns.arm)
    args = recipe.arguments(arm)
    for key, (own, used) in (arm.conflicts if arm else {}).items():
        logger.info("arm %s: --%s %s replaces the arm's own %r", arm.name, key, used, own)
    preflight(args)  # fail before the data and the training
    data = prepare_data(args.model, args.data)
    record = train_run(args, data, arm=ns.arm or "run")
    final = record["final"]
    print(
        f"{record['arm']}: eval_loss {final['eval_loss']:.4f} after {record['global_step']} steps "
        f"({record['train_seconds']:.0f} s) -> {record['output_dir']}"
    )


def _cmd_compare(ns, overrides) -> None:
    from .lab.compare import compare, comparison_dir
    from .reporting.plots import write_plots
    from .reporting.report import write_report

    start = time.perf_counter()
    recipe = load_recipe(ns.recipe, overrides)
    compare(recipe, progress=print)
    run_dir = comparison_dir(recipe)
    write_plots(run_dir)
    report = write_report(run_dir)
    print(f"report: {report}")
    print(f"compare took {time.perf_counter() - start:.0f} s")


def _say_if_incomplete(run_dir) -> None:
    """One line on stdout when a comparison has runs to finish: its report gives no verdict."""
    from .lab.results import incomplete_reason, load_results
    from .reporting.report import NO_VERDICT

    reason = incomplete_reason(load_results(run_dir))
    if reason:
        print(f"incomplete comparison: {reason}. {NO_VERDICT}")


def _cmd_plot(ns) -> None:
    from .reporting.plots import write_plots
    from .reporting.report import write_report

    for path in write_plots(ns.run_dir):
        print(path)
    print(write_report(ns.run_dir))
    _say_if_incomplete(ns.run_dir)


def _cmd_recipes(ns) -> None:
    from .lab.bundled import bundled_recipes, describe_recipe, recipes_dir

    recipes = bundled_recipes()
    if not recipes:
        raise ValueError("no bundled recipes found: this installation of hf_selfish lacks its recipes folder")
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {describe_recipe(path)}")
    example = "tinyshakespeare_cpu" if "tinyshakespeare_cpu" in recipes else next(iter(recipes))
    print(f"\n{len(recipes)} recipes in {recipes_dir()}; run one by name: hf-selfish compare {example}")
    if (recipes_dir() / "accelerate").is_dir():
        print(f"accelerate configs (accelerate launch --config_file ...): {recipes_dir() / 'accelerate'}")


def _cmd_report(ns) -> None:
    from .reporting.report import write_report

    if ns.push and ns.baseline is not None:  # the Hub card is report.md, read against the first arm
        raise ValueError("--push uploads report.md (against the first arm); run --baseline and --push separately")
    print(write_report(ns.run_dir, baseline=ns.baseline))
    _say_if_incomplete(ns.run_dir)
    if ns.push:
        from .hub import push_report

        print(push_report(ns.run_dir, ns.push))


def _cmd_tune(ns) -> None:
    from .lab.results import load_results
    from .reporting.tuning import DEFAULT_MAX_LOSS_INCREASE, tuning_summary

    limit = DEFAULT_MAX_LOSS_INCREASE if ns.max_loss_increase is None else ns.max_loss_increase
    results = load_results(ns.run_dir)
    print(tuning_summary(results, ns.group, limit, language=ns.language, main=ns.main, limit_against=ns.limit_against))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ns, rest = _build_parser().parse_known_args(argv)
    interrupted = False
    try:
        with _sigterm_as_keyboard_interrupt():
            if ns.command in ("train", "compare"):
                ns.recipe, rest = _split_recipe(rest)
                overrides = parse_overrides(rest)
                (_cmd_train if ns.command == "train" else _cmd_compare)(ns, overrides)
            else:
                if rest:
                    raise ValueError(f"unexpected arguments {rest}")
                {"plot": _cmd_plot, "report": _cmd_report, "tune": _cmd_tune, "recipes": _cmd_recipes}[ns.command](ns)
    except (ValueError, FileNotFoundError) as err:
        print(f"hf-selfish {ns.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupted = True
        print(f"hf-selfish {ns.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        _tear_down_process_group(barrier=not interrupted)
    return 0


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt():
    """Turn SIGTERM (``kill``, schedulers, torchrun) into a KeyboardInterrupt, like Ctrl-C, while inside."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tear_down_process_group(barrier: bool = True) -> None:
    """Destroy the torch.distributed group (gloo aborts ~1 exit in 5 without it).

    No barrier after an interrupt: the other processes may be gone, and a barrier would wait for them.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
