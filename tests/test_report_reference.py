"""A report read against any arm (``baseline=ARM``): the re-based Δ and its 95% t interval against a hand
computation from the per-seed differences, the default output unchanged, report_vs_<arm>.md, bad names."""

import math
import statistics

import pytest
import torch

from hf_selfish.cli import main
from hf_selfish.lab.results import load_results
from hf_selfish.reporting.report import render_report, write_report
from hf_selfish.reporting.subsets import subset_rows
from hf_selfish.reporting.summary import summarize
from tests.test_bad_input import cli_error
from tests.test_report import MIX_LANGUAGES, make_mix_run_dir, make_results
from tests.tolerances import assert_exact

ARMS = ("baseline", "selfish", "selfish_m4")
SEEDS = (1, 2, 3)
REFERENCE = "selfish"
T_975_DF2 = 4.302652729749464  # Student's t, 0.975 quantile, 2 degrees of freedom (3 seeds)


@pytest.fixture
def mix(tmp_path):
    """3 arms x 3 seeds of a two-language Bible mix (random final metrics, written as `compare` writes them)."""
    return tmp_path, make_mix_run_dir(tmp_path, arms=ARMS, seeds=SEEDS)


def _final(results, arm, key):
    """``final[key]`` of ``arm``'s runs, in seed order."""
    runs = {run["seed"]: run for run in results["runs"] if run["arm"] == arm}
    return [runs[seed]["final"][key] for seed in SEEDS]


def _hand_interval(arm_values, reference_values):
    """(mean, low, high) of the paired differences: mean ± t_{0.975,2} · sd / √3, sd with n - 1 by hand."""
    d = [a - b for a, b in zip(arm_values, reference_values)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    half = T_975_DF2 * sd / math.sqrt(len(d))
    return mean, mean - half, mean + half


def _assert_delta(stat, hand):
    assert stat.n == len(SEEDS)
    ci = stat.ci
    got = torch.tensor([stat.mean, ci.low, ci.high], dtype=torch.float64)
    assert_exact(got, torch.tensor(hand, dtype=torch.float64))


def _delta_text(hand):
    """A Δ cell as report.md writes it: mean [low, high], * when the interval excludes 0."""
    mean, low, high = hand
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]" + (" *" if low > 0 or high < 0 else "")


@pytest.mark.parametrize("arm", ["baseline", "selfish_m4"])
def test_eval_loss_delta_against_another_arm_is_the_paired_t_interval(mix, arm):
    _, results = mix
    summary = summarize(results, baseline=REFERENCE)
    hand = _hand_interval(_final(results, arm, "eval_loss"), _final(results, REFERENCE, "eval_loss"))
    _assert_delta(summary.eval_loss[arm].delta["eval_loss"], hand)
    assert summary.eval_loss[REFERENCE].delta == {}  # the reference has no Δ against itself
    assert summary.baseline == REFERENCE and summary.others == ["baseline", "selfish_m4"]
    # the contrast table's row of the arm shows the same numbers
    contrasts = render_report(results, baseline=REFERENCE).split("## Every arm against the baseline")[1]
    row = next(line for line in contrasts.splitlines() if line.startswith(f"| {arm} "))
    assert _delta_text(hand) in row


def test_frequency_group_delta_against_another_arm(mix):
    _, results = mix
    summary = summarize(results, baseline=REFERENCE)
    row = next(r for r in summary.groups if r.group == "rank_11-20")
    key = "eval_rank_11-20_nll"
    hand = _hand_interval(_final(results, "selfish_m4", key), _final(results, REFERENCE, key))
    _assert_delta(row.arms["selfish_m4"].delta["nll"], hand)
    # the same group on one language evaluated alone (the per-language frequency-group table)
    alone = summarize(results, "nya", baseline=REFERENCE)
    key = "eval_nya_lang_nya_nll"
    hand = _hand_interval(_final(results, "baseline", key), _final(results, REFERENCE, key))
    _assert_delta(next(r for r in alone.groups if r.group == "lang_nya").arms["baseline"].delta["nll"], hand)


def test_bits_per_char_delta_against_another_arm(mix):
    _, results = mix
    rows = {row.name: row for row in subset_rows(results, baseline=REFERENCE)}
    for code, chars_per_token in MIX_LANGUAGES.items():
        bits = {
            arm: [v / math.log(2) / chars_per_token for v in _final(results, arm, f"eval_{code}_loss")] for arm in ARMS
        }
        assert list(rows[code].arms) == [REFERENCE, "baseline", "selfish_m4"]
        assert set(rows[code].delta) == {"baseline", "selfish_m4"}
        for arm in ("baseline", "selfish_m4"):
            _assert_delta(rows[code].delta[arm]["bits_per_char"], _hand_interval(bits[arm], bits[REFERENCE]))
        assert statistics.fmean(bits[REFERENCE]) == pytest.approx(rows[code].arms[REFERENCE]["bits_per_char"].mean)


def test_reference_arm_takes_the_baseline_column(mix):
    _, results = mix
    text = render_report(results, baseline=REFERENCE)
    header = next(line for line in text.splitlines() if line.startswith("| bucket | eval tokens"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[-5:] == ["selfish", "baseline", "selfish_m4", "Δ baseline-selfish", "Δ selfish_m4-selfish"]
    assert "every Δ below is an arm minus `selfish`" in text
    assert "selfish_m4 lower than selfish" in text or "selfish_m4 higher than selfish" in text  # the verdict
    assert "Δ selfish-baseline" not in text


def test_the_papers_pattern_is_judged_only_against_the_first_arm():
    """'worse on frequent, better on rare' is the paper's claim about the method against CE: a report read against
    another arm (CE minus selfish here) does not judge it."""
    results = make_results(seeds=(1,))
    results["groups"] = {f"rank_{10 * i + 1}-{10 * i + 10}": [] for i in range(4)}
    deltas = [0.1, -0.05, -0.2, -0.3]  # selfish: worse on the head, better on the rare half
    for run in results["runs"]:
        for i, group in enumerate(results["groups"]):
            nll = 2.0 + (deltas[i] if run["arm"] == "selfish" else 0)
            run["final"].update({f"eval_{group}_tokens": 100, f"eval_{group}_types": 10, f"eval_{group}_nll": nll})
    sentence = "The pattern the selfish-loss paper predicts"
    assert sentence in render_report(results)
    assert sentence not in render_report(results, baseline="selfish")


def test_default_baseline_output_is_unchanged(mix):
    _, results = mix
    default = render_report(results, ["plots/eval_loss.png"])
    assert render_report(results, ["plots/eval_loss.png"], baseline="baseline") == default
    assert "Read against" not in default and "Δ selfish-baseline" in default


def test_write_report_against_another_arm_leaves_report_md(mix):
    run_dir, _ = mix
    report = write_report(run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("report.md", "summary.json")}
    written = write_report(run_dir, baseline=REFERENCE)
    assert written == run_dir / "report_vs_selfish.md"
    assert written.read_text() == render_report(load_results(run_dir), baseline=REFERENCE)
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert write_report(run_dir, baseline="baseline") == report  # the first arm: report.md as without it
    assert sorted(p.name for p in run_dir.glob("report*.md")) == ["report.md", "report_vs_selfish.md"]


def test_unknown_arm_is_one_value_error(mix):
    run_dir, results = mix
    message = "baseline arm 'selfsh' is not an arm of this comparison; pick one of: baseline, selfish, selfish_m4"
    for call in (summarize, subset_rows, render_report):
        with pytest.raises(ValueError) as err:
            call(results, baseline="selfsh")
        assert str(err.value) == message
    with pytest.raises(ValueError, match="pick one of"):
        write_report(run_dir, baseline="selfsh")
    assert not list(run_dir.glob("report*.md"))  # refused before writing anything


def test_cli_report_baseline(mix, capsys):
    run_dir, _ = mix
    capsys.readouterr()
    assert main(["report", str(run_dir), "--baseline", REFERENCE]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(run_dir / "report_vs_selfish.md")
    assert not (run_dir / "report.md").exists()
    assert cli_error(capsys, "report", str(run_dir), "--baseline", "nope") == (
        "hf-selfish report: error: baseline arm 'nope' is not an arm of this comparison; "
        "pick one of: baseline, selfish, selfish_m4"
    )
    assert cli_error(capsys, "report", str(run_dir), "--baseline", REFERENCE, "--push", "me/repo").startswith(
        "hf-selfish report: error: --push uploads report.md"
    )
