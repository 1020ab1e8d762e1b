"""The Pareto frontier (reporting/pareto.py) on hand examples and against a brute-force sweep; the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_selfish.reporting.pareto import pareto_front, pareto_groups, pareto_points
from hf_selfish.reporting.plots import write_plots
from hf_selfish.reporting.summary import summarize

from .test_report import make_results, make_run_dir


def test_pareto_front_hand_example():
    points = [(0.0, 0.0), (0.2, -0.5), (0.1, -0.1), (0.3, -0.4), (-0.1, 0.2), (0.2, -0.5), (0.0, 0.1), (0.5, -0.5)]
    # (0.3, -0.4) and (0.5, -0.5) are dominated by (0.2, -0.5); (0.0, 0.1) by (0.0, 0.0); the two (0.2, -0.5) tie
    assert pareto_front(points) == [4, 0, 2, 1, 5]


def test_pareto_front_single_and_empty():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 1.0)]) == [0]
    assert pareto_front([(1.0, 1.0), (0.0, 0.0)]) == [1]  # one point dominates all


def _sweep_front(points):
    """Independent: sort by (x, y); a point is on the front when its y is below every y seen at smaller x."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], np.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_matches_a_sweep_on_random_points(seed):
    rng = np.random.default_rng(seed)
    points = [tuple(p) for p in rng.normal(size=(int(rng.integers(1, 30)), 2)).round(1)]  # ties in x and y happen
    unique = list(dict.fromkeys(points))  # the sweep keeps one of identical points
    assert sorted(set(points[i] for i in pareto_front(points))) == sorted(unique[i] for i in _sweep_front(unique))


THREE_ARMS = (
    {
        "baseline": {"rank_1-10": (1.0, 1.2), "rank_11-20": (3.0, 3.4)},
        "selfish": {"rank_1-10": (1.1, 1.5), "rank_11-20": (2.9, 3.1)},  # Δ x 0.2, Δ y -0.2
        "focal": {"rank_1-10": (1.3, 1.7), "rank_11-20": (3.0, 3.2)},  # Δ x 0.4, Δ y -0.1: dominated by selfish
    },
    {arm: {"rank_1-10": (0.5, 0.5), "rank_11-20": (0.2, 0.2)} for arm in ("baseline", "selfish", "focal")},
    {"baseline": (1.5, 1.5), "selfish": (1.6, 1.6), "focal": (1.7, 1.7)},
)


def test_pareto_points_and_groups():
    results = make_results(arms=("baseline", "selfish", "focal"), margins=(None, 2.0, None), tables=THREE_ARMS)
    x_group, y_groups = pareto_groups(results)
    assert x_group == "rank_1-10" and y_groups == ["rank_11-20"]  # ranks 21-25 has no eval tokens
    points = pareto_points(summarize(results), x_group, "rank_11-20")
    assert [p.arm for p in points] == ["baseline", "selfish", "focal"]
    assert (points[0].x, points[0].y, points[0].x_ci) == (0.0, 0.0, None)
    assert points[1].x == pytest.approx(0.2) and points[1].y == pytest.approx(-0.2)
    assert points[2].x == pytest.approx(0.4) and points[2].y == pytest.approx(-0.1)
    # deltas 0.1, 0.3: 0.2 ± t(0.975, 1) * 0.1 = 0.2 ± 1.2706
    assert points[1].x_ci.low == pytest.approx(0.2 - 1.27062, abs=1e-4)
    assert pareto_front([(p.x, p.y) for p in points]) == [0, 1]
    with pytest.raises(ValueError, match="no group"):
        pareto_points(summarize(results), "rank_1-10", "lang_small")


def test_pareto_groups_add_the_small_language():
    results = make_results()
    results["group_info"] = {
        "rank_1-10": {"kind": "rank"},
        "rank_11-20": {"kind": "rank"},
        "rank_21-25": {"kind": "rank"},
        "lang_main": {"kind": "language"},
        "lang_small": {"kind": "language"},
    }
    results["groups"] = {**results["groups"], "lang_main": [0], "lang_small": [1]}
    for run in results["runs"]:
        run["final"].update(eval_lang_main_tokens=9000, eval_lang_small_tokens=200)
    assert pareto_groups(results) == ("rank_1-10", ["rank_11-20", "lang_small"])


def test_write_plots_draws_the_pareto_figure_for_three_arms(tmp_path):
    results = make_results(arms=("baseline", "selfish", "focal"), margins=(None, 2.0, None), tables=THREE_ARMS)
    make_run_dir(tmp_path / "three", results)
    paths = write_plots(tmp_path / "three")
    pareto = [p for p in paths if p.name == "pareto.png"]
    assert pareto and Image.open(pareto[0]).size[0] > 300
    make_run_dir(tmp_path / "two")  # two arms: no trade-off figure
    assert "pareto.png" not in {p.name for p in write_plots(tmp_path / "two")}


def test_report_has_the_compact_contrast_table_for_three_arms():
    from hf_selfish.reporting.report import render_report

    results = make_results(arms=("baseline", "selfish", "focal"), margins=(None, 2.0, None), tables=THREE_ARMS)
    text = render_report(results)
    table = text.split("## Every arm against the baseline")[1].split("##")[0]
    assert "| arm | Δ eval loss | Δ ranks 1-10 | Δ ranks 11-20 |" in table
    # focal: eval loss +0.2 on both seeds (a point interval: significant); ranks 1-10 deltas 0.3, 0.5
    # -> 0.4 ± 12.7062 * 0.1414 / 1.4142 = 0.4 ± 1.2706
    assert "| focal | +0.2000 [+0.2000, +0.2000] * | +0.4000 [-0.8706, +1.6706] |" in table
    assert "## Every arm against the baseline" not in render_report(make_results())  # two arms: not needed


def test_pareto_groups_prefer_ranks_41_to_60():
    results = make_results()
    names = ["rank_1-10", "rank_11-20", "rank_41-50", "rank_51-60"]
    results["groups"] = {g: [i] for i, g in enumerate(names)}
    for run in results["runs"]:
        run["final"].update({f"eval_{g}_tokens": 100 for g in names})
    assert pareto_groups(results) == ("rank_1-10", ["rank_41-50", "rank_51-60"])
    for run in results["runs"]:
        run["final"]["eval_rank_51-60_tokens"] = 0  # absent: back to the headline rule
    assert pareto_groups(results)[1] == ["rank_41-50"]


def test_language_pareto_points_are_the_paired_bits_per_char_changes(tmp_path):
    """x = the main language's Δ bits per character, y = the small language's, each the mean of the per-seed
    differences of loss / ln 2 / characters per token, computed here from the runs' final metrics."""
    import math

    from hf_selfish.lab.results import load_results
    from hf_selfish.reporting.pareto import language_pareto_points, main_language
    from hf_selfish.reporting.subsets import subset_rows

    from .test_report import MIX_LANGUAGES, make_mix_run_dir
    from .tolerances import assert_exact

    arms, seeds = ("baseline", "selfish", "selfish_m4"), (1, 2, 3)
    make_mix_run_dir(tmp_path, arms=arms, seeds=seeds)
    results = load_results(tmp_path)
    results["recipe"]["bible_main"] = "eng"
    rows = subset_rows(results)
    assert main_language(results, rows) == "eng"
    points = language_pareto_points(rows, "eng", "nya")
    assert [p.arm for p in points] == list(arms) and (points[0].x, points[0].y) == (0.0, 0.0)

    def bpc(arm, code):
        final = {r["seed"]: r["final"] for r in results["runs"] if r["arm"] == arm}
        return [final[s][f"eval_{code}_loss"] / math.log(2) / MIX_LANGUAGES[code] for s in seeds]

    for point in points[1:]:
        for value, code in ((point.x, "eng"), (point.y, "nya")):
            diffs = [a - b for a, b in zip(bpc(point.arm, code), bpc("baseline", code))]
            assert_exact(torch.tensor(value, dtype=torch.float64), torch.tensor(sum(diffs) / 3, dtype=torch.float64))
        assert point.x_ci is not None and point.x_ci.low < point.x < point.x_ci.high
    with pytest.raises(ValueError, match="no language 'fra'"):
        language_pareto_points(rows, "eng", "fra")


def test_write_plots_draws_the_language_pareto_for_a_mix_of_three_arms(tmp_path):
    from .test_report import make_mix_run_dir

    make_mix_run_dir(tmp_path / "three", arms=("baseline", "selfish", "selfish_m4"), seeds=(1, 2))
    assert "pareto_languages.png" in {p.name for p in write_plots(tmp_path / "three")}
    make_mix_run_dir(tmp_path / "two", arms=("baseline", "selfish"), seeds=(1, 2))
    assert "pareto_languages.png" not in {p.name for p in write_plots(tmp_path / "two")}
