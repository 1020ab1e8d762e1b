"""plots.py: every figure is written, opens as a PNG, and bad input fails with a clear ValueError."""

import json

import numpy as np
import pytest
from PIL import Image

from hf_selfish.reporting.plots import (
    display_token,
    frequency_order,
    head_non_target_share,
    load_scenarios,
    plot_group_delta,
    plot_head_share_comparison,
    plot_language_metrics,
    plot_margin_sweep,
    plot_scenarios,
    plot_scenarios_comparison,
    plot_token_distribution,
    write_plots,
)

from .test_report import EVAL_LOSS, FINAL_ACCURACY, FINAL_NLL, TOKENS, TRAIN_COUNTS, make_results, make_run_dir

EXPECTED = {
    "token_distribution.png",
    "eval_loss.png",
    "eval_nll_by_group.png",
    "eval_nll_delta_by_group.png",
    "eval_accuracy_by_group.png",
    "eval_recall_at_5_by_group.png",
    "eval_mrr_by_group.png",
    "training_curves.png",
    "token_nll_final.png",
    "scenarios_baseline.png",
    "scenarios_selfish.png",
    "scenarios_non_target_comparison.png",
    "scenarios_head_share.png",
}


def assert_png(path, min_width=200):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= min_width and height >= 100
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5, f"{path.name} looks blank"


def no_temp_files(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")] == []


def test_display_token():
    assert display_token("\n") == "\\n"
    assert display_token(" ") == "space"
    assert display_token("\t") == "\\t"
    assert display_token("$") == r"\$"  # a bare '$' would start matplotlib mathtext
    assert display_token("a") == "a"
    assert display_token("\x0b") == "\\x0b"
    assert display_token(None) == "?"


def test_frequency_order_ties_by_lower_id():
    assert frequency_order([3, 7, 7, 0, 3]).tolist() == [1, 2, 0, 4, 3]
    with pytest.raises(ValueError, match="non-empty 1-D"):
        frequency_order([])


def test_write_plots_writes_every_png(tmp_path):
    make_run_dir(tmp_path)
    paths = write_plots(tmp_path)
    assert {p.name for p in paths} == EXPECTED
    assert {p.name for p in (tmp_path / "plots").iterdir()} == EXPECTED
    for path in paths:
        assert path.parent == tmp_path / "plots"
        assert_png(path)
    assert no_temp_files(tmp_path / "plots")


def test_write_plots_skips_what_was_not_recorded(tmp_path):
    """No scenarios, per-token arrays of the wrong length, counts only in token_frequency.json."""
    results = make_results(scenarios=False)
    del results["train_counts"], results["tokens"]
    make_run_dir(tmp_path, results, scenarios=False)
    for path in tmp_path.glob("*/rank_buckets.json"):
        record = json.loads(path.read_text())
        record["per_token"]["nll"] = record["per_token"]["nll"][:3]
        path.write_text(json.dumps(record))
    names = {p.name for p in write_plots(tmp_path)}
    assert names == EXPECTED - {
        "token_nll_final.png",
        "scenarios_baseline.png",
        "scenarios_selfish.png",
        "scenarios_non_target_comparison.png",
        "scenarios_head_share.png",
    }


def test_three_arms_with_language_groups(tmp_path):
    groups = {"lang_main": list(range(20)), "lang_small": list(range(20, 25))}

    def by_language(table, extra):
        out = {arm: {"lang_main": v["rank_1-10"], "lang_small": v["rank_11-20"]} for arm, v in table.items()}
        return {**out, "small_only": out[extra]}

    tables = (
        by_language(FINAL_NLL, "baseline"),
        by_language(FINAL_ACCURACY, "selfish"),
        {**EVAL_LOSS, "small_only": (2.0, 2.1)},
    )
    results = make_results(
        arms=("baseline", "selfish", "small_only"),
        margins=(None, 2.0, None),
        scenarios=False,
        tables=tables,
        groups=groups,
        eval_tokens={"lang_main": (9800, 20), "lang_small": (200, 5)},
    )
    assert_png(plot_language_metrics(results, tmp_path / "language_metrics.png", groups=list(groups)))
    assert_png(plot_group_delta(results, tmp_path / "delta.png"))  # two delta lines per panel
    with pytest.raises(ValueError, match="two arms"):
        plot_group_delta(make_results(arms=("baseline",), margins=(None,)), tmp_path / "one_arm.png")


def test_token_distribution_big_vocabulary_without_labels(tmp_path):
    counts = (1e6 / np.arange(1, 3001) ** 1.1).astype(int)
    counts[-5:] = 0  # unseen tokens: gaps on the log axis
    path = plot_token_distribution(counts, tmp_path / "big.png")
    assert_png(path)
    with pytest.raises(ValueError, match="one per token id"):
        plot_token_distribution([3, 2, 1], tmp_path / "bad.png", tokens=["a", "b"])


def test_scenarios_plots_and_loading(tmp_path):
    from safetensors.numpy import save_file

    v = len(TOKENS)
    norms = {
        "input": np.linspace(100, 1, v).astype(np.float32),
        "target": np.linspace(50, 0.5, v).astype(np.float32),
        "non_target": np.full(v, 5.0, dtype=np.float32),
    }
    save_file(norms, str(tmp_path / "scenarios.safetensors"))
    loaded = load_scenarios(tmp_path / "scenarios.safetensors")
    np.testing.assert_array_equal(loaded["target"], norms["target"].astype(np.float64))
    order = frequency_order(TRAIN_COUNTS)
    assert_png(plot_scenarios(loaded, tmp_path / "one.png", tokens=TOKENS, order=order, title="seed figure"))
    other = {k: v * 0.1 for k, v in loaded.items()}
    assert_png(
        plot_scenarios_comparison(
            {"baseline": loaded, "selfish": other}, tmp_path / "cmp.png", tokens=TOKENS, order=order
        )
    )
    assert no_temp_files(tmp_path)


def test_head_share_is_non_target_over_the_output_embeddings_total(tmp_path):
    norms = {"input": np.array([9.0, 1.0, 0.0]), "target": np.array([3.0, 0.0, 0.0]), "non_target": [1.0, 2.0, 0.0]}
    share = head_non_target_share(norms)
    np.testing.assert_allclose(share[:2], [0.25, 1.0])  # the input role (scenario 1) is left out
    assert np.isnan(share[2])  # no head gradient: no share
    per_arm = {"selfish": norms, "selfish_head": {k: np.asarray(v) * 2 for k, v in norms.items()}}
    assert_png(plot_head_share_comparison(per_arm, tmp_path / "share.png", tokens=["a", "b", "c"]))
    with pytest.raises(ValueError, match="at least one arm"):
        plot_head_share_comparison({}, tmp_path / "none.png")


def test_scenarios_bad_input(tmp_path):
    from safetensors.numpy import save_file

    save_file({"input": np.ones(4, dtype=np.float32)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="non_target"):
        load_scenarios(tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="no scenarios file"):
        load_scenarios(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        load_scenarios(tmp_path / "junk.safetensors")
    norms = {"input": np.ones(4), "target": np.ones(4), "non_target": np.ones(3)}
    with pytest.raises(ValueError, match="different lengths"):
        plot_scenarios(norms, tmp_path / "x.png")
    with pytest.raises(ValueError, match="permutation"):
        plot_scenarios(
            {k: np.ones(4) for k in ("input", "target", "non_target")}, tmp_path / "x.png", order=[0, 0, 1, 2]
        )
    with pytest.raises(ValueError, match="scenario key"):
        plot_scenarios_comparison({"a": {}}, tmp_path / "x.png", key="nope")


def test_margin_sweep(tmp_path):
    rows = []
    for margin, value in ((1.0, 1.0), (2.0, 2.0), (4.0, 4.0), (8.0, 8.0), ("auto", 12.2)):
        for seed in (0, 1):
            for group, base in (("rank_41-50", 3.0), ("lang_small", 4.0)):
                rows.append(
                    {
                        "margin": margin,
                        "margin_value": value,
                        "group": group,
                        "seed": seed,
                        "nll": base - 0.05 * value + 0.01 * seed,
                        "accuracy": 0.2 + 0.01 * value,
                        "mrr": 0.3,
                    }
                )
    rows += [
        {"margin": None, "group": "rank_41-50", "nll": 3.1, "accuracy": 0.21},
        {"margin": None, "group": "lang_small", "nll": 4.2, "accuracy": 0.15},
    ]
    path = plot_margin_sweep(rows, tmp_path / "sweep.png")
    assert_png(path, min_width=600)
    with pytest.raises(ValueError, match="margin_value"):
        plot_margin_sweep([{"margin": "auto", "group": "g", "nll": 1.0}], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one row"):
        plot_margin_sweep([], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="requested statistics"):
        plot_margin_sweep([{"margin": 1.0, "group": "g"}], tmp_path / "bad.png")


def test_language_metrics_needs_groups(tmp_path):
    with pytest.raises(ValueError, match="lang_main"):
        plot_language_metrics(make_results(), tmp_path / "x.png", groups=[])


def test_write_plots_missing_results(tmp_path):
    with pytest.raises(ValueError, match="results.json"):
        write_plots(tmp_path)
