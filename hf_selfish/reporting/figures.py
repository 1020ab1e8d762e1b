"""The figures of a comparison: one name each, its file under plots/ and its caption in report.md.

Kept apart from the plotting code so report.md can be written without importing matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from ..lab.results import PLOTS_DIR

__all__ = ["FIGURES", "figure_caption", "figure_file", "order_figures"]

# name -> caption, in the order the report shows them; per-arm scenario figures are `scenarios_<arm>`.
FIGURES = {
    "token_distribution": "Train-split token counts by frequency rank",
    "eval_loss": "Overall eval loss along training",
    "eval_nll_by_group": "Per-token-mean eval NLL per group along training",
    "eval_nll_delta_by_group": "Δ per-token-mean eval NLL against the baseline along training (below 0: lower NLL)",
    "eval_nll_weighted_by_group": "Occurrence-weighted eval NLL per group along training",
    "eval_accuracy_by_group": "Top-1 accuracy per group along training",
    "eval_recall_at_5_by_group": "Recall@5 per group along training",
    "eval_mrr_by_group": "MRR per group along training",
    "bits_per_char_by_language": "Bits per character on each language's held-out text per arm (and before "
    "training), and each arm's change against the baseline with its 95% interval over seeds",
    "language_metrics": "Per-language NLL, accuracy, recall@5 and MRR along training",
    "token_nll_final": "Final eval NLL of each token, by frequency rank",
    "training_curves": "Training loss and fraction of logits masked",
    "scenarios_non_target_comparison": "Gradient scenario 2.2 (token as non-target) per arm",
    "scenarios_head_share": "Share of scenario 2.2 in each token's output-embedding update, 2.2 / (2.1 + 2.2) of "
    "the summed norms, per arm (the selfish variants differ there)",
    "margin_sweep": "Headline-group metrics against the margin",
    "pareto": "Frequent vs rare tokens: Δ NLL of the most frequent bucket (x) against rare groups (y), per arm "
    "(mean over seeds, 95% intervals; dashed: the Pareto frontier, lower-left is better)",
    "pareto_languages": "Main vs small languages: Δ bits per character of the main language (x) against each other "
    "language's (y), per arm (mean over seeds, 95% intervals; dashed: the Pareto frontier, lower-left is better)",
}
SCENARIOS_PREFIX = "scenarios_"


def figure_file(run_dir: str | Path, name: str) -> Path:
    """Where figure ``name`` is written: ``run_dir/plots/<name>.png`` (a known name or a per-arm scenario)."""
    if name not in FIGURES and not name.startswith(SCENARIOS_PREFIX):
        raise ValueError(f"unknown figure {name!r}; known figures: {', '.join(FIGURES)}")
    return Path(run_dir) / PLOTS_DIR / f"{name}.png"


def order_figures(paths) -> list[str]:
    """Known figures in the report's order (per-arm scenario figures before their comparison), others after."""
    paths = sorted(str(p) for p in paths)
    known = list(FIGURES)

    def key(path: str) -> tuple[int, int, str]:
        stem = Path(path).stem
        if stem in FIGURES:
            return known.index(stem), 1, path
        if stem.startswith(SCENARIOS_PREFIX):
            return known.index("scenarios_non_target_comparison"), 0, path
        return len(known), 0, path

    return sorted(paths, key=key)


def figure_caption(path: str | Path) -> str:
    stem = Path(path).stem
    if stem in FIGURES:
        return FIGURES[stem]
    if stem.startswith(SCENARIOS_PREFIX):
        return f"Gradient scenarios of arm {stem.removeprefix(SCENARIOS_PREFIX)}: summed norm per token"
    return stem.replace("_", " ")
