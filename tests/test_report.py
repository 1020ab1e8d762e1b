"""report.py against hand computations on a synthetic run directory that follows results_schema.md."""

import json
import math
import re
import statistics

import numpy as np
import pytest
import yaml

from hf_selfish.lab.results import load_results
from hf_selfish.metric_names import group_label, split_metric_key
from hf_selfish.model_card import render_run_card
from hf_selfish.reporting.report import group_table, render_report, verdict, write_report
from hf_selfish.reporting.summary import summarize

# ---------------------------------------------------------------------------------------------
# A synthetic comparison: 25 tokens, groups of ranks 1-10, 11-20 and 21-25 (the last absent from eval).
# ---------------------------------------------------------------------------------------------

TOKENS = ["\n", " ", "!", "$", "&"] + [chr(c) for c in range(ord("a"), ord("a") + 20)]
V = len(TOKENS)
TRAIN_COUNTS = [5000 - 150 * i if i < 20 else 3 for i in range(V)]  # id order == rank order; 5 ties at the end
GROUPS = {"rank_1-10": list(range(0, 10)), "rank_11-20": list(range(10, 20)), "rank_21-25": list(range(20, 25))}
SEEDS = (1, 2)
STEPS = (0, 10, 20)
# Final per-token-mean NLL per arm, group and seed (the numbers the hand computation uses).
FINAL_NLL = {
    "baseline": {"rank_1-10": (1.0, 1.2), "rank_11-20": (3.0, 3.4)},
    "selfish": {"rank_1-10": (1.1, 1.5), "rank_11-20": (2.9, 3.1)},
}
FINAL_ACCURACY = {
    "baseline": {"rank_1-10": (0.60, 0.64), "rank_11-20": (0.20, 0.22)},
    "selfish": {"rank_1-10": (0.58, 0.60), "rank_11-20": (0.25, 0.27)},
}
EVAL_LOSS = {"baseline": (1.50, 1.54), "selfish": (1.56, 1.58)}
EVAL_TOKENS = {"rank_1-10": (9000, 10), "rank_11-20": (700, 9), "rank_21-25": (0, 0)}


def _metrics(arm, seed_index, scale=1.0, tables=None, eval_tokens=None):
    """The eval metrics of one eval point; ``scale`` > 1 for earlier (worse) points."""
    nll_table, acc_table, loss_table = tables or (FINAL_NLL, FINAL_ACCURACY, EVAL_LOSS)
    out = {"eval_loss": loss_table[arm][seed_index] * scale}
    for group, (tokens, types) in (eval_tokens or EVAL_TOKENS).items():
        out[f"eval_{group}_tokens"] = tokens
        out[f"eval_{group}_types"] = types
        if tokens == 0:
            continue  # absent: no other keys
        nll = nll_table[arm][group][seed_index] * scale
        acc = acc_table[arm][group][seed_index] / scale
        out[f"eval_{group}_nll"] = nll
        out[f"eval_{group}_nll_weighted"] = nll * 0.9
        out[f"eval_{group}_accuracy"] = acc
        out[f"eval_{group}_recall_at_5"] = min(1.0, acc + 0.3)
        out[f"eval_{group}_mrr"] = acc + 0.1
    return out


def make_results(
    arms=("baseline", "selfish"),
    margins=(None, 2.0),
    seeds=SEEDS,
    scenarios=True,
    tables=None,
    groups=None,
    eval_tokens=None,
):
    """results.json content; ``tables`` = (nll, accuracy, eval_loss) per arm, ``eval_tokens`` = {group: (tokens, types)}."""
    runs = []
    for arm, margin in zip(arms, margins):
        for index, seed in enumerate(seeds):
            history = [
                dict(step=step, **_metrics(arm, index, 1.0 + (STEPS[-1] - step) / 10, tables, eval_tokens))
                for step in STEPS
            ]
            train_history = [
                {
                    "step": s,
                    "loss": 3.0 - 0.05 * s,
                    "learning_rate": 1e-3,
                    "selfish_margin": margin,
                    "selfish_masked_fraction": None if margin is None else 0.5 + 0.01 * s,
                }
                for s in (5, 10, 15, 20)
            ]
            output_dir = f"{arm}-seed{seed}"
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "output_dir": output_dir,
                    "status": "finished",
                    "train_seconds": 10.0 + index,
                    "final": dict(history[-1], step=STEPS[-1]),
                    "history": history,
                    "train_history": train_history,
                    "scenarios": f"{output_dir}/scenarios.safetensors" if scenarios else None,
                }
            )
    arm_list = [{"name": a, "selfish_margin": m} for a, m in zip(arms, margins)]
    return {
        "format": 1,
        "name": "synthetic",
        "recipe": {
            "model_type": "gpt2",
            "config_overrides": "n_layer=2",
            "max_steps": 20,
            "learning_rate": 1e-3,
            "block_size": 16,
            "arms": arm_list,
        },
        "vocab_size": V,
        "tokens": TOKENS,
        "train_counts": TRAIN_COUNTS,
        "groups": groups or GROUPS,
        "arms": arm_list,
        "runs": runs,
    }


def make_run_dir(path, results=None, *, per_token=True, scenarios=True):
    """Write results.json, token_frequency.json and each run's rank_buckets.json / scenarios.safetensors."""
    from safetensors.numpy import save_file

    results = results or make_results(scenarios=scenarios)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    (path / "token_frequency.json").write_text(
        json.dumps({"format": "hf_selfish.token_frequency", "counts": TRAIN_COUNTS, "tokens": TOKENS})
    )
    rng = np.random.default_rng(0)
    for run in results["runs"]:
        out = path / run["output_dir"]
        out.mkdir(exist_ok=True)
        if per_token:
            nll = [None if i >= 20 else float(1.0 + 0.1 * i + 0.01 * run["seed"]) for i in range(V)]
            record = {
                "global_step": 20,
                "vocab_size": V,
                "groups": GROUPS,
                "per_token": {"nll": nll, "count": [0 if i >= 20 else 50 for i in range(V)]},
            }
            (out / "rank_buckets.json").write_text(json.dumps(record))
        if run.get("scenarios"):
            ranks = np.arange(1, V + 1, dtype=np.float32)
            norms = {
                "input": (1000.0 / ranks).astype(np.float32),
                "target": (500.0 / ranks).astype(np.float32),
                "non_target": (5.0 + rng.random(V)).astype(np.float32),
            }
            norms["input"][-1] = 0.0  # a token never seen as input: a gap on the log axis, not an error
            save_file(norms, str(path / run["scenarios"]))
    return path


def _hand(values):
    """mean and sample std (ddof=1) computed with numpy: the reference for statistics.fmean/stdev."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size >= 2 else None)


def _no_nan(text):
    assert "nan" not in text.lower(), [line for line in text.splitlines() if "nan" in line.lower()]


# ---------------------------------------------------------------------------------------------
# load_results
# ---------------------------------------------------------------------------------------------


def test_load_results_reads_dir_and_file(tmp_path):
    make_run_dir(tmp_path)
    assert load_results(tmp_path)["name"] == "synthetic"
    assert load_results(tmp_path / "results.json")["vocab_size"] == V


def test_load_results_missing_names_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "results.json"))):
        load_results(tmp_path)


def test_load_results_corrupt_names_path(tmp_path):
    (tmp_path / "results.json").write_text('{"format": 1, "arms": [')
    with pytest.raises(ValueError, match="not valid JSON") as info:
        load_results(tmp_path)
    assert str(tmp_path / "results.json") in str(info.value)


@pytest.mark.parametrize(
    "payload, message",
    [
        ([1, 2], "JSON object"),
        ({"format": 2, "arms": [], "runs": []}, "format 2"),
        ({"format": 1, "runs": []}, "'arms'"),
        ({"arms": [{"margin": 1}], "runs": []}, "name"),
    ],
)
def test_load_results_bad_shape(tmp_path, payload, message):
    (tmp_path / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=message):
        load_results(tmp_path)


# ---------------------------------------------------------------------------------------------
# summarize: numbers against a hand computation
# ---------------------------------------------------------------------------------------------


def test_split_metric_key_and_labels():
    assert split_metric_key("eval_rank_1-10_nll_weighted") == ("rank_1-10", "nll_weighted")
    assert split_metric_key("eval_lang_small_recall_at_5") == ("lang_small", "recall_at_5")
    assert split_metric_key("eval_lang_small_nll") == ("lang_small", "nll")
    assert split_metric_key("eval_loss") is None
    assert split_metric_key("train_rank_1-10_nll") is None
    assert group_label("rank_41-50") == "ranks 41-50"
    assert group_label("lang_small") == "lang_small"


def test_summary_means_stds_and_paired_deltas():
    summary = summarize(make_results())
    assert summary.arms == ["baseline", "selfish"] and summary.baseline == "baseline"
    assert [row.group for row in summary.groups] == list(GROUPS)
    for row in summary.groups[:2]:
        group = row.group
        assert (row.tokens, row.types) == EVAL_TOKENS[group]
        for arm in ("baseline", "selfish"):
            mean, std = _hand(FINAL_NLL[arm][group])
            stat = row.arms[arm].stats["nll"]
            assert stat.n == 2
            assert stat.mean == pytest.approx(mean, abs=1e-12)
            assert stat.std == pytest.approx(std, abs=1e-12)
            acc_mean, acc_std = _hand(FINAL_ACCURACY[arm][group])
            assert row.arms[arm].stats["accuracy"].mean == pytest.approx(acc_mean, abs=1e-12)
            assert row.arms[arm].stats["accuracy"].std == pytest.approx(acc_std, abs=1e-12)
        paired = np.subtract(FINAL_NLL["selfish"][group], FINAL_NLL["baseline"][group])
        delta = row.arms["selfish"].delta["nll"]
        assert delta.mean == pytest.approx(paired.mean(), abs=1e-12)
        assert delta.std == pytest.approx(paired.std(ddof=1), abs=1e-12)
        assert row.arms["baseline"].delta == {}
    # the hand numbers: rank_1-10 selfish 1.3 vs 1.1 (delta +0.2), rank_11-20 3.0 vs 3.2 (delta -0.2)
    assert summary.groups[0].arms["selfish"].delta["nll"].mean == pytest.approx(0.2)
    assert summary.groups[1].arms["selfish"].delta["nll"].mean == pytest.approx(-0.2)
    loss_delta = summary.eval_loss["selfish"].delta["eval_loss"]
    assert loss_delta.mean == pytest.approx(np.mean(np.subtract(EVAL_LOSS["selfish"], EVAL_LOSS["baseline"])))


def test_absent_group_has_no_stats():
    row = summarize(make_results()).groups[2]
    assert row.absent and row.tokens == 0
    for arm in row.arms.values():
        assert arm.absent
        assert set(arm.stats) <= {"tokens", "types"} and arm.delta == {}


def test_single_seed_has_no_std_and_unpaired_delta():
    results = make_results(seeds=(7,))
    summary = summarize(results)
    stat = summary.groups[0].arms["selfish"].stats["nll"]
    assert stat.n == 1 and stat.std is None and stat.mean == pytest.approx(1.1)
    assert summary.groups[0].arms["selfish"].delta["nll"].std is None
    text = render_report(results)
    rows = [line for line in text.splitlines() if line.startswith("| ranks ") or line.startswith("| overall")]
    assert rows and not any("±" in line for line in rows)
    assert _table_row(text, "ranks 1-10").endswith("| 1.0000 | 1.1000 | +0.1000 |")


def test_unfinished_runs_are_left_out():
    results = make_results()
    failed = dict(results["runs"][3], status="failed", final={"eval_rank_1-10_nll": 100.0})
    results["runs"][3] = failed  # selfish, seed 2
    summary = summarize(results)
    stat = summary.groups[0].arms["selfish"].stats["nll"]
    assert stat.values == (1.1,)
    # seeds no longer match: the delta is the difference of means, without a spread
    delta = summary.groups[0].arms["selfish"].delta["nll"]
    assert delta.mean == pytest.approx(1.1 - 1.1) and delta.std is None
    assert "did not finish" in render_report(results)


def test_unpaired_seeds_delta_is_difference_of_means():
    results = make_results()
    for run in results["runs"]:
        if run["arm"] == "selfish":
            run["seed"] += 10
    delta = summarize(results).groups[1].arms["selfish"].delta["nll"]
    assert delta.mean == pytest.approx(
        np.mean(FINAL_NLL["selfish"]["rank_11-20"]) - np.mean(FINAL_NLL["baseline"]["rank_11-20"])
    )
    assert delta.std is None


# ---------------------------------------------------------------------------------------------
# render_report
# ---------------------------------------------------------------------------------------------


def _table_row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_report_main_table_cells():
    text = render_report(make_results())
    header = next(line for line in text.splitlines() if line.startswith("| bucket | eval tokens"))
    assert header == "| bucket | eval tokens (types) | baseline | selfish | Δ selfish-baseline |"
    row = _table_row(text, "ranks 1-10")
    cells = [c.strip() for c in row.strip("|").split("|")]
    std_b = np.std([1.0, 1.2], ddof=1)
    std_s = np.std([1.1, 1.5], ddof=1)
    # paired deltas 0.1, 0.3: mean 0.2, sd 0.1414, t(0.975, 1 df) = 12.7062 (t table): 0.2 ± 12.7062 * 0.1 = ±1.2706
    assert cells == [
        "ranks 1-10",
        "9,000 (10)",
        f"1.1000 ± {std_b:.4f}",
        f"1.3000 ± {std_s:.4f}",
        "+0.2000 [-1.0706, +1.4706]",
    ]
    assert _table_row(text, "ranks 11-20").split("|")[5].strip().startswith("-0.2000")


def test_report_absent_group_and_no_nan():
    text = render_report(make_results())
    row = _table_row(text, "ranks 21-25")
    assert [c.strip() for c in row.strip("|").split("|")] == ["ranks 21-25", "0 (0)", "absent", "absent", "absent"]
    assert "Absent from the eval data (no statistics): ranks 21-25." in text
    _no_nan(text)


def test_report_recipe_and_other_metrics():
    text = render_report(make_results())
    assert text.startswith("# hf_selfish comparison: synthetic\n")
    assert "| baseline | none (plain CE) |" in text and "| selfish | 2 |" in text
    assert "- steps: `20`" in text and "- seeds: 1, 2" in text
    assert "| selfish | 2 | finished | 11.0 | 1.5800 |" in text
    for title in ("occurrence-weighted NLL", "top-1 accuracy", "recall@5", "MRR"):
        assert f"### {title}" in text
    acc_table = text.split("### top-1 accuracy")[1].split("###")[0]
    acc_delta = np.subtract(FINAL_ACCURACY["selfish"]["rank_11-20"], FINAL_ACCURACY["baseline"]["rank_11-20"]).mean()
    assert f"{acc_delta:+.4f}" in _table_row(acc_table.strip(), "ranks 11-20")
    overall = _table_row(text, "overall eval loss")
    assert f"{np.mean(EVAL_LOSS['baseline']):.4f}" in overall


def test_verdict_names_directions():
    summary = summarize(make_results())
    text = verdict(summary)
    assert "ranks 1-10: selfish higher than baseline by 0.2000 (worse" in text
    assert "ranks 11-20: selfish lower than baseline by 0.2000 (better" in text
    assert "selfish is better on 1 of 2 groups present" in text
    assert "Overall eval loss: selfish higher than baseline by 0.0500 (worse" in text
    # two seeds: the interval 0.2 ± 12.7062 * 0.1 includes 0
    assert (
        "ranks 1-10: selfish higher than baseline by 0.2000 (worse, 95% CI [-1.0706, +1.4706], not significant)" in text
    )


def test_verdict_and_table_flag_significant_deltas():
    nll = {
        "baseline": {"rank_1-10": (1.0, 1.2, 1.1), "rank_11-20": (3.0, 3.4, 3.2)},
        "selfish": {"rank_1-10": (1.5, 1.6, 1.55), "rank_11-20": (2.9, 3.5, 3.1)},
    }
    acc = {arm: {g: (0.5, 0.5, 0.5) for g in groups} for arm, groups in nll.items()}
    loss = {"baseline": (1.5, 1.5, 1.5), "selfish": (1.6, 1.6, 1.6)}
    summary = summarize(make_results(seeds=(1, 2, 3), tables=(nll, acc, loss)))
    text = verdict(summary)
    # ranks 1-10: deltas 0.5, 0.4, 0.45 -> mean 0.45, sd 0.05; t(0.975, 2 df) = 4.3027 (t table):
    # half width 4.3027 * 0.05 / sqrt(3) = 0.1242 -> [0.3258, 0.5742], excludes 0
    assert "ranks 1-10: selfish higher than baseline by 0.4500 (worse, 95% CI [+0.3258, +0.5742])" in text
    # ranks 11-20: deltas -0.1, 0.1, -0.1 -> mean -0.0333, sd 0.1155: half width 0.2869 -> includes 0
    assert "(better, 95% CI [-0.3202, +0.2535], not significant)" in text
    ci = summary.groups[0].arms["selfish"].delta["nll"].ci
    assert ci.significant and ci.n == 3
    assert summary.groups[1].arms["selfish"].delta["nll"].ci.significant is False
    table = group_table(summary)
    assert "+0.4500 [+0.3258, +0.5742] *" in _table_row(table, "ranks 1-10")
    assert _table_row(table, "ranks 11-20").rstrip(" |").endswith("[-0.3202, +0.2535]")
    record = summary.to_json()["groups"][0]["arms"]["selfish"]["delta"]["nll"]["ci95"]
    assert record["significant"] is True and record["low"] == pytest.approx(0.3258, abs=1e-4)


def test_verdict_seed_pattern_over_rank_buckets():
    results = make_results(seeds=(1,))
    results["groups"] = {f"rank_{10 * i + 1}-{10 * i + 10}": [] for i in range(4)}
    final = results["runs"][0]["final"]
    deltas = [0.1, -0.05, -0.2, -0.3]  # worse on the head, better on the rare half
    for run in results["runs"]:
        for i, group in enumerate(results["groups"]):
            for stat, value in (
                ("tokens", 100),
                ("types", 10),
                ("nll", 2.0 + (deltas[i] if run["arm"] == "selfish" else 0)),
            ):
                run["final"][f"eval_{group}_{stat}"] = value
    assert final is results["runs"][0]["final"]
    text = verdict(summarize(results))
    assert (
        "The pattern the selfish-loss paper predicts (worse on the most frequent bucket, better on rare ones) holds"
        in text
    )
    assert "2 of the 2 rarer buckets (ranks 21-30 to 31-40) are better" in text


def test_three_arms_have_two_delta_columns():
    tables = (
        {**FINAL_NLL, "small_only": {"rank_1-10": (2.0, 2.2), "rank_11-20": (4.0, 4.0)}},
        {**FINAL_ACCURACY, "small_only": FINAL_ACCURACY["baseline"]},
        {**EVAL_LOSS, "small_only": (2.5, 2.5)},
    )
    results = make_results(arms=("baseline", "selfish", "small_only"), margins=(None, 2.0, None), tables=tables)
    text = render_report(results)
    assert "| Δ selfish-baseline | Δ small_only-baseline |" in text
    assert "+1.0000 [+1.0000, +1.0000] *" in _table_row(text, "ranks 1-10")  # no spread: significant
    assert "ranks 11-20: small_only higher than baseline by 0.8000 (worse, 95% CI [" in text


# ---------------------------------------------------------------------------------------------
# write_report
# ---------------------------------------------------------------------------------------------


def test_write_report_files_atomic_and_summary_json(tmp_path):
    make_run_dir(tmp_path)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "eval_loss.png").write_bytes(b"\x89PNG")
    (tmp_path / "plots" / "token_distribution.png").write_bytes(b"\x89PNG")
    path = write_report(tmp_path)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    _no_nan(text)
    assert text.index("plots/token_distribution.png") < text.index("plots/eval_loss.png")
    assert "![Overall eval loss along training](plots/eval_loss.png)" in text
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []
    record = json.loads((tmp_path / "summary.json").read_text())  # strict JSON: NaN would not parse back as null
    _no_nan((tmp_path / "summary.json").read_text())
    assert record["baseline"] == "baseline" and record["arms"] == ["baseline", "selfish"]
    first = record["groups"][0]
    assert first["group"] == "rank_1-10" and first["tokens"] == 9000
    assert first["arms"]["selfish"]["stats"]["nll"]["mean"] == pytest.approx(1.3)
    assert first["arms"]["selfish"]["delta"]["nll"]["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    absent = record["groups"][2]
    assert absent["absent"] is True and "nll" not in absent["arms"]["baseline"]["stats"]
    assert "ranks 1-10: selfish higher" in record["verdict"]


def test_write_report_rewrites_and_keeps_old_on_error(tmp_path, monkeypatch):
    make_run_dir(tmp_path)
    write_report(tmp_path)
    before = (tmp_path / "report.md").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("hf_selfish.reporting.report.os.replace", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path)
    assert (tmp_path / "report.md").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def _front_matter(text):
    assert text.startswith("---\n")
    block = text.split("---\n")[1]
    return yaml.safe_load(block)


def test_model_card_single_run_selfish():
    metrics = _metrics("selfish", 0)
    card = render_run_card(
        metrics,
        {"selfish_margin": 2.0, "max_steps": 20, "learning_rate": 1e-3, "seed": 1},
        model_id="me/tiny-selfish",
        license="mit",
        datasets=["karpathy/tiny_shakespeare"],
    )
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "mit" and meta["datasets"] == ["karpathy/tiny_shakespeare"]
    assert {"hf_selfish", "selfish-loss", "causal-lm"} <= set(meta["tags"])
    assert "selfish cross-entropy** with margin m = 2" in card
    assert "K = " in card and "z_t - m" in card
    assert "| bucket | eval tokens (types) | per-token-mean NLL |" in card
    row = _table_row(card, "ranks 1-10")
    assert "9,000 (10)" in row and f"{FINAL_NLL['selfish']['rank_1-10'][0]:.4f}" in row
    assert [c.strip() for c in _table_row(card, "ranks 21-25").strip("|").split("|")][2:] == ["absent"] * 5
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-selfish")' in card
    _no_nan(card)


def test_model_card_baseline_says_plain_ce():
    card = render_run_card(_metrics("baseline", 0), {"selfish_margin": None})
    assert "**plain cross-entropy**" in card and "margin m =" not in card
    meta = _front_matter(card)
    assert "license" not in meta and "datasets" not in meta


def test_stat_json_never_nan():
    summary = summarize(make_results(seeds=(3,)))
    text = json.dumps(summary.to_json(), allow_nan=False)
    assert math.isfinite(json.loads(text)["groups"][0]["arms"]["baseline"]["stats"]["nll"]["mean"])


def test_margin_sweep_rows_table_and_plot(tmp_path):
    from hf_selfish.reporting.report import sweep_table
    from hf_selfish.reporting.summary import is_sweep, sweep_rows

    nll = {**FINAL_NLL, "margin_2": FINAL_NLL["selfish"], "margin_auto": FINAL_NLL["baseline"]}
    acc = {**FINAL_ACCURACY, "margin_2": FINAL_ACCURACY["selfish"], "margin_auto": FINAL_ACCURACY["baseline"]}
    loss = {**EVAL_LOSS, "margin_2": EVAL_LOSS["selfish"], "margin_auto": EVAL_LOSS["baseline"]}
    results = make_results(
        arms=("baseline", "margin_2", "margin_auto"), margins=(None, 2.0, 4.17), tables=(nll, acc, loss)
    )
    results["arms"][2]["selfish_margin_setting"] = "auto"
    for run in results["runs"]:
        run["selfish_margin"] = {"baseline": None, "margin_2": 2.0, "margin_auto": 4.17}[run["arm"]]
    assert not is_sweep(results)
    results["recipe"]["sweep_margins"] = ["2", "auto"]
    assert is_sweep(results)
    rows = sweep_rows(results)
    rank_1 = [r for r in rows if r["group"] == "rank_1-10"]
    assert len(rank_1) == 3 * len(SEEDS)
    auto = [r for r in rank_1 if r["arm"] == "margin_auto"]
    assert all(r["margin"] == "auto" and r["margin_value"] == 4.17 for r in auto)
    expected = statistics.mean(r["final"]["eval_rank_1-10_nll"] for r in results["runs"] if r["arm"] == "margin_auto")
    assert statistics.mean(r["nll"] for r in auto) == pytest.approx(expected)
    table = sweep_table(results)
    assert "auto = 4.17" in table and "none (plain CE)" in table
    assert f"{expected:.4f}" in table
    make_run_dir(tmp_path, results)
    from hf_selfish.reporting.plots import write_plots
    from hf_selfish.reporting.report import write_report

    assert tmp_path / "plots" / "margin_sweep.png" in write_plots(tmp_path)
    assert "## Margin sweep" in write_report(tmp_path).read_text()


def test_headline_groups_follow_the_saved_group_metadata_with_log_buckets():
    """Log-spaced buckets and languages: the sweep's columns come from group_info, never from fixed names."""
    from hf_selfish.reporting.report import sweep_table
    from hf_selfish.reporting.summary import headline_groups

    log_groups = {
        "rank_1-10": (5000, 10),
        "rank_11-100": (3000, 90),
        "rank_101-1000": (120, 500),
        "rank_1001-1200": (20, 15),
        "unseen": (0, 0),
        "lang_small": (60, 40),
    }
    tables = tuple(
        {arm: {g: (1.0 + i, 1.1 + i) for i, g in enumerate(log_groups)} for arm in ("baseline", "selfish")}
        for _ in range(2)
    ) + (EVAL_LOSS,)
    results = make_results(tables=tables, eval_tokens=log_groups)
    results["groups"] = {g: [] for g in log_groups}
    results["group_info"] = {g: {"name": g, "kind": "other"} for g in log_groups}  # metadata wins over names
    assert headline_groups(results) == []
    del results["group_info"]  # an older results.json: parsed from the names
    # rare bucket: the rarest rank bucket with >= 1% of the rank buckets' eval tokens (120 of 8140; 20 is < 1%)
    assert headline_groups(results) == ["rank_1-10", "rank_101-1000", "lang_small"]
    results["recipe"]["sweep_margins"] = ["2"]
    headers = [line for line in sweep_table(results).splitlines() if line.startswith("| arm |")]
    assert len(headers) == 3  # one table per statistic: NLL (with the eval loss), accuracy, MRR
    assert "ranks 1-10 NLL" in headers[0] and "ranks 101-1000 NLL" in headers[0] and "lang_small MRR" in headers[2]


# ---------------------------------------------------------------------------------------------
# A language mix (English + Chichewa): report.md's tables are narrow, and every number is in summary.json
# ---------------------------------------------------------------------------------------------

MIX_GROUPS = {"rank_1-10": list(range(10)), "rank_11-20": list(range(10, 20)), "lang_nya": [3, 4], "lang_nya_only": [4]}
MIX_LANGUAGES = {"eng": 3.4, "nya": 2.9}  # characters per token
FIVE_ARMS = ("baseline", "selfish", "selfish_m4", "tlat_exponential", "logit_adjustment")


def _mix_metrics(rng, start=None):
    """One evaluation's entry: the whole eval set's groups and each language's own (``start``: step-0 values)."""
    out = {"eval_loss": float(rng.uniform(1, 3))}
    for prefix in ["eval"] + [f"eval_{code}" for code in MIX_LANGUAGES]:
        out[f"{prefix}_loss"] = float(rng.uniform(1, 3)) if start is None else start[f"{prefix}_loss"]
        for group in list(MIX_GROUPS) + ([] if prefix == "eval" else ["all"]):
            out[f"{prefix}_{group}_tokens"], out[f"{prefix}_{group}_types"] = 1234, 17
            for stat, (low, high) in {"nll": (1, 5), "nll_weighted": (1, 5), "accuracy": (0, 1), "mrr": (0, 1)}.items():
                out[f"{prefix}_{group}_{stat}"] = float(rng.uniform(low, high))
            out[f"{prefix}_{group}_recall_at_5"] = float(rng.uniform(0, 1))
            if start is not None:
                out[f"{prefix}_{group}_nll"] = start[f"{prefix}_{group}_nll"]
    return out


def make_mix_run_dir(path, arms=FIVE_ARMS, seeds=(1,), sweep=False):
    """A comparison folder written with the run-directory writers (`comparison_results`, `write_results`);
    ``sweep``: a margin sweep (report.md gets the sweep tables)."""
    from hf_selfish.lab.results import comparison_results, write_results

    rng = np.random.default_rng(7)
    starts = {seed: _mix_metrics(rng) for seed in seeds}  # the arms of a seed start from the same model
    runs = []
    for index, arm in enumerate(arms):
        for seed in seeds:
            final = dict(_mix_metrics(rng), step=20)
            record = {
                "arm": arm,
                "seed": seed,
                "selfish_margin": 4.17 if arm == "selfish_m4" else (None if index == 0 else 2.0),
                "output_dir": f"{arm}-seed{seed}",
                "status": "finished",
                "train_seconds": float(rng.uniform(5, 50)),
                "global_step": 20,
                "final": final,
                "history": [dict(_mix_metrics(rng, starts[seed]), step=0), final],
                "train_history": [],
                "scenarios": None,
            }
            runs.append(record)
    arm_list = [{"name": arm, "selfish_margin": None if i == 0 else 2.0} for i, arm in enumerate(arms)]
    results = comparison_results(
        name="mix",
        recipe={
            "dataset_name": "bible",
            "max_steps": 20,
            "arms": arm_list,
            "sweep_margins": ["2", "4"] if sweep else None,
        },
        vocab_size=20,
        tokens=None,
        train_counts=[100 - i for i in range(20)],
        groups=MIX_GROUPS,
        arms=arm_list,
        runs=runs,
        chars_per_token=MIX_LANGUAGES,
    )
    path.mkdir(parents=True, exist_ok=True)
    write_results(path, results)
    return results


def _markdown_tables(text):
    """Every table of a markdown text as a list of rows of cells (the header first, the rule row dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


_NUMBER = re.compile(r"[+-]?\d[\d,]*(?:\.\d+)?")


def _numbers_in_cell(cell):
    """The numbers of a numeric cell (``1.2000 ± 0.1000``, ``+0.2 [-1.0, +1.4] *``, ``9,000 (10)``) as
    (value, decimals); [] for a text cell."""
    if not _NUMBER.search(cell) or _NUMBER.sub("", cell).strip(" ±[],()*"):
        return []
    tokens = _NUMBER.findall(cell)
    return [(float(t.replace(",", "")), len(t.split(".")[1]) if "." in t else 0) for t in tokens]


def _json_numbers(value):
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [n for item in items for n in _json_numbers(item)]


def _not_in(cells, record):
    """The printed numbers that no number of ``record`` rounds to (at the printed precision)."""
    known = np.array(sorted(set(_json_numbers(record))))
    return [
        (value, decimals)
        for value, decimals in cells
        if not np.any(np.abs(known - value) <= 0.5 * 10.0**-decimals + 1e-9)
    ]


@pytest.mark.parametrize("arms, seeds, sweep", [(FIVE_ARMS, (1,), False), (FIVE_ARMS[:3], (1, 2, 3), True)])
def test_every_number_of_report_tables_is_in_summary_json(tmp_path, arms, seeds, sweep):
    make_mix_run_dir(tmp_path, arms, seeds, sweep)
    text = write_report(tmp_path).read_text()
    assert ("## Margin sweep" in text) == sweep
    record = json.loads((tmp_path / "summary.json").read_text())
    tables = _markdown_tables(text)
    cells = [n for table in tables for row in table[1:] for cell in row for n in _numbers_in_cell(cell)]
    assert len(cells) > 200  # the parser found the tables' numbers
    assert _not_in(cells, record) == []
    # the check can fail: without the per-language entries the language tables' numbers are missing
    assert _not_in(cells, {k: v for k, v in record.items() if k != "languages"})
    # the language entries hold the hand-computed numbers: bits per character = loss / ln 2 / characters per token
    nya = next(entry for entry in record["languages"] if entry["name"] == "nya")
    runs = load_results(tmp_path)["runs"]
    loss = [r["final"]["eval_nya_loss"] for r in runs if r["arm"] == arms[1]]
    bits = [r["final"]["eval_nya_loss"] / math.log(2) / MIX_LANGUAGES["nya"] for r in runs if r["arm"] == arms[0]]
    assert nya["arms"][arms[1]]["bits_per_char"]["values"] == pytest.approx([v / math.log(2) / 2.9 for v in loss])
    assert nya["arms"][arms[0]]["bits_per_char"]["mean"] == pytest.approx(statistics.fmean(bits))
    delta = nya["delta"][arms[1]]["bits_per_char"]
    assert delta["mean"] == pytest.approx(
        statistics.fmean(v / math.log(2) / 2.9 for v in loss) - statistics.fmean(bits)
    )
    assert (delta["ci95"] is None) == (len(seeds) == 1)
    assert nya["before"]["bits_per_char"]["n"] == len(seeds)  # one per seed, not one per run
    assert nya["chars_per_token"] == 2.9 and nya["groups"][0]["group"] == "rank_1-10"


def test_report_tables_are_narrow_and_single_seed_shows_no_spread(tmp_path):
    """Five arms, two languages, one seed: no table wider than 12 columns, no ``±`` in any table cell."""
    make_mix_run_dir(tmp_path)
    text = write_report(tmp_path).read_text()
    tables = _markdown_tables(text)
    assert max(len(row) for table in tables for row in table) <= 12
    assert not [cell for table in tables for row in table for cell in row if "±" in cell]
    section = text[text.index("## Per language") : text.index("### eng:")]
    # one table per statistic: languages as rows, the baseline then each arm's Δ
    for title in ("Bits per character", "Per-token-mean NLL", "Top-1 accuracy", "MRR"):
        assert f"**{title}**" in section
    header = _markdown_tables(section)[0][0]
    assert header == ["language", "eval tokens", "before training", "baseline"] + [f"Δ {a}" for a in FIVE_ARMS[1:]]
    assert [table[1][0] for table in _markdown_tables(section)] == ["eng"] * 4
    # eleven arms (the rival-loss recipes): the widest tables are cut into parts that repeat the row labels
    make_mix_run_dir(tmp_path / "eleven", arms=tuple(f"arm{i}" for i in range(11)))
    tables = _markdown_tables(write_report(tmp_path / "eleven").read_text())
    assert max(len(row) for table in tables for row in table) <= 12
    assert sum(table[0][:2] == ["bucket", "eval tokens (types)"] for table in tables) > 1 + 2  # main + 2 languages


def test_fitted_table_cuts_wide_tables_and_keeps_the_lead_columns():
    from hf_selfish.reporting.tables import column_chunks, fitted_table

    assert column_chunks(5, keep=2, max_columns=4) == [[0, 1, 2, 3], [0, 1, 4]]
    assert column_chunks(3, keep=1, max_columns=12) == [[0, 1, 2]]
    text = fitted_table(["a", "b", "c", "d", "e"], [["1", "2", "3", "4", "5"]], keep=2, max_columns=4)
    assert _markdown_tables(text) == [[["a", "b", "c", "d"], ["1", "2", "3", "4"]], [["a", "b", "e"], ["1", "2", "5"]]]
    with pytest.raises(ValueError, match="keep"):
        column_chunks(5, keep=4, max_columns=4)
