"""The tuning rule (reporting/tuning.py) on a hand-made tuning comparison."""

from __future__ import annotations

import pytest

from hf_selfish.reporting.tuning import choose_values, language_keys, method_of, tuning_table


def _arm(name, loss=None, margin=None, **kwargs):
    arm = {"name": name, "selfish_margin": margin}
    if loss is not None:
        arm.update(loss_name=loss, loss_kwargs=kwargs)
    return arm


def _results(table):
    """``table``: arm dict -> (eval_loss, rare NLL)."""
    runs = [
        {
            "arm": arm["name"],
            "seed": 1,
            "status": "finished",
            "output_dir": f"{arm['name']}-seed1",
            "final": {"eval_loss": loss, "eval_rank_41-50_nll": nll, "eval_rank_41-50_tokens": 100},
            "history": [],
        }
        for arm, (loss, nll) in table
    ]
    return {"format": 1, "name": "tune", "arms": [arm for arm, _ in table], "runs": runs, "groups": {}}


TABLE = [
    (_arm("baseline", "ce"), (2.00, 4.0)),
    (_arm("selfish_m1", margin=1.0), (2.50, 3.0)),  # best rare NLL, but 25% worse overall: not eligible
    (_arm("selfish_m2", margin=2.0), (2.09, 3.5)),  # eligible (limit 2.10), lower NLL than m4: chosen
    (_arm("selfish_m4", margin=4.0), (2.02, 3.8)),
    (_arm("focal_g1", "focal", gamma=1.0), (2.30, 3.9)),  # none of focal's values is eligible:
    (_arm("focal_g2", "focal", gamma=2.0), (2.20, 3.95)),  # the lowest eval loss is chosen
    (_arm("tlat_c", "tlat", form="chi_square", T=1.0), (2.00, 3.9)),
    (_arm("tlat_e", "tlat", form="exponential", T=1.0), (2.00, 3.7)),  # another method than tlat_c
]


def test_rule_picks_the_rare_nll_within_the_loss_limit():
    base, candidates = choose_values(_results(TABLE), "rank_41-50", max_loss_increase=0.05)
    assert base == 2.0
    chosen = {c.method: c.arm for c in candidates if c.chosen}
    assert chosen == {
        "selfish": "selfish_m2",
        "focal": "focal_g2",
        "tlat_chi_square": "tlat_c",
        "tlat_exponential": "tlat_e",
    }
    assert [c.eligible for c in candidates if c.method == "selfish"] == [False, True, True]
    # a looser limit admits margin 1
    _, loose = choose_values(_results(TABLE), "rank_41-50", max_loss_increase=0.30)
    assert {c.method: c.arm for c in loose if c.chosen}["selfish"] == "selfish_m1"


def test_method_of_reads_the_knob():
    assert method_of(_arm("s", margin=2.0)) == ("selfish", "selfish_margin", 2.0)
    assert method_of(_arm("f", "focal", gamma=0.5)) == ("focal", "gamma", 0.5)
    assert method_of(_arm("t", "tlat", form="chi_square", T=2.0)) == ("tlat_chi_square", "T", 2.0)
    assert method_of(_arm("b", "ce")) is None
    head = {"name": "h", "loss_name": "selfish_head", "loss_kwargs": {"margin": 4.0}}
    assert method_of(head) == ("selfish_head", "margin", 4.0)
    annealed = {"name": "a", "selfish_margin": 1.0, "selfish_margin_schedule": "linear", "selfish_margin_end": "inf"}
    assert method_of(annealed) == ("selfish_annealed", "selfish_margin", 1.0)
    rare = {"name": "r", "loss_name": "selfish_rare", "loss_kwargs": {"margin": 1.0, "frequent_mass": 0.9}}
    assert method_of(rare) == ("selfish_rare", "margin", 1.0)
    rare["loss_kwargs"] = {"margin": 2.0, "frequent_mass": 0.5}
    assert method_of(rare) == ("selfish_rare_frequent_mass", "frequent_mass", 0.5)


def test_table_marks_the_choice_and_refuses_a_missing_baseline():
    text = tuning_table(_results(TABLE), "rank_41-50")
    assert "at most 5% above the baseline's (2.0000 → limit 2.1000)" in text
    assert "| plain CE (baseline) | — | — | 2.0000 | 4.0000 |  |" in text
    assert "| selfish | selfish_margin | **2.0** | 2.0900 | **3.5000** | yes |" in text
    assert "| selfish | selfish_margin | 1.0 | 2.5000 (over the limit) | 3.0000 |  |" in text
    results = _results(TABLE)
    results["runs"] = [r for r in results["runs"] if r["arm"] != "baseline"]
    with pytest.raises(ValueError, match="baseline"):
        choose_values(results, "rank_41-50")


def test_on_a_language_mix_the_small_language_is_minimised_within_the_main_languages_limit():
    # (English eval loss, Chichewa eval loss) per margin; the overall eval loss is set to mislead
    table = {"baseline": (2.00, 3.0), "margin_1": (2.20, 2.5), "margin_2": (2.08, 2.7), "margin_4": (2.01, 2.9)}
    results = _results(
        [(_arm(name, margin=float(name[-1]) if name != "baseline" else None), (9.0, 9.0)) for name in table]
    )
    for run in results["runs"]:
        run["final"].update(eval_eng_loss=table[run["arm"]][0], eval_nya_loss=table[run["arm"]][1])
    keys = language_keys("eng", "nya")
    assert keys == {"loss_key": "eval_eng_loss", "target_key": "eval_nya_loss"}
    base, candidates = choose_values(results, "nya", 0.05, **keys)
    assert base == 2.0 and [c.arm for c in candidates if c.chosen] == ["margin_2"]  # margin 1 is 10% over
    assert [c.arm for c in choose_values(results, "nya", 0.15, **keys)[1] if c.chosen] == ["margin_1"]
    assert "Rule: the lowest eval_nya_loss among the values whose eval_eng_loss is at most 5%" in tuning_table(
        results, "nya", 0.05, **keys
    )


RECIPES = __import__("pathlib").Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize(("tune", "final"), [("rivals_tune_cpu.yaml", "rivals_cpu.yaml")])
def test_tuning_recipes_give_every_method_three_values_on_the_tuning_split(tune, final):
    import dataclasses

    from hf_selfish.lab.recipe import load_recipe

    tuning, finals = load_recipe(RECIPES / tune), load_recipe(RECIPES / final)
    values = {}
    for arm in tuning.arms:
        training = tuning.arguments(arm).training
        described = method_of(
            {
                "loss_name": training.loss_name,
                "loss_kwargs": training.loss_kwargs,
                "selfish_margin": training.selfish_margin,
            }
        )
        if training.loss_name != "ce":
            values.setdefault(described[0], set()).add(described[2])
    methods = set()
    for arm in finals.arms:
        training = finals.arguments(arm).training
        if training.loss_name != "ce":
            methods.add(method_of({"loss_name": training.loss_name, "loss_kwargs": training.loss_kwargs})[0])
    assert set(values) == methods and all(len(v) == 3 for v in values.values())
    tuned, reported = tuning.arguments(), finals.arguments()
    assert tuned.data.eval_split == "tune" and reported.data.eval_split == "validation"
    assert dataclasses.replace(tuned.data, eval_split="validation") == reported.data  # same data otherwise
    assert tuned.model == reported.model


def test_an_annealed_arm_is_recorded_with_its_schedule_and_tuned_as_its_own_method():
    import json

    from hf_selfish.lab.compare import _arm_summary
    from hf_selfish.lab.recipe import load_recipe

    recipe = load_recipe(RECIPES / "variants_tune_cpu.yaml")
    summaries = [_arm_summary(arm, recipe.arguments(arm), []) for arm in recipe.arms]
    annealed = next(s for s in summaries if s["name"] == "selfish_annealed_margin2.0")
    assert annealed == {
        "name": "selfish_annealed_margin2.0",
        "selfish_margin": 2.0,
        "selfish_margin_setting": 2.0,
        "selfish_margin_schedule": "linear",
        "selfish_margin_end": "inf",
    }
    json.dumps(annealed, allow_nan=False)  # results.json stays strict JSON
    methods = {}
    for summary in summaries:
        described = method_of(summary)
        if described is not None:
            methods.setdefault(described[0], []).append(described[2])
    assert methods == {
        "selfish": [1.0, 2.0, 4.0],
        "selfish_head": [1.0, 2.0, 4.0],
        "selfish_hidden": [1.0, 2.0, 4.0],
        "selfish_rare": [1.0, 2.0, 4.0],
        "selfish_rare_frequent_mass": [0.5, 0.99],  # its default 0.9 is the margin sweep's arm at margin 2
        "selfish_annealed": [1.0, 2.0, 4.0],
    }


def test_a_learning_rate_sweep_is_limited_against_the_loss_before_training():
    # a pretrained model fine-tuned on Chichewa at three rates: (English, Chichewa) eval loss before training
    # (step 0, the same model for every arm) and after; English may rise at most 10% above 1.00 (limit 1.10)
    finals = {"lr_1e-5": (1.02, 2.60), "lr_3e-5": (1.08, 2.20), "lr_1e-4": (1.30, 1.90)}
    results = _results([(_arm(name, "ce"), (9.0, 9.0)) for name in finals])
    results["recipe"] = {"arms": [{"name": n, "loss_name": "ce", "learning_rate": float(n[3:])} for n in finals]}
    for run in results["runs"]:
        run["final"].update(eval_eng_loss=finals[run["arm"]][0], eval_nya_loss=finals[run["arm"]][1])
        run["history"] = [{"step": 0, "eval_eng_loss": 1.00, "eval_nya_loss": 3.00}, {"step": 100, **run["final"]}]
    keys = language_keys("eng", "nya")
    start, candidates = choose_values(results, "nya", 0.10, **keys, limit_against="start")
    # every arm is a candidate (none is a baseline); 1e-4 forgets English by 30%: 3e-5 is chosen
    assert start == 1.00
    assert [(c.method, c.knob, c.value, c.eligible) for c in candidates] == [
        ("ce", "learning_rate", 1e-5, True),
        ("ce", "learning_rate", 3e-5, True),
        ("ce", "learning_rate", 1e-4, False),
    ]
    assert [c.arm for c in candidates if c.chosen] == ["lr_3e-5"]
    # against the first arm's final English (1.02 -> limit 1.122) the first arm is the reference, not a candidate
    _, against_first = choose_values(results, "nya", 0.10, **keys)
    assert [c.arm for c in against_first] == ["lr_3e-5", "lr_1e-4"]
    text = tuning_table(results, "nya", 0.10, **keys, limit_against="start")
    assert "at most 10% above its value before training (1.0000 → limit 1.1000)" in text
    assert "| before training | — | — | 1.0000 | 3.0000 |  |" in text
    assert "| ce | learning_rate | **3e-05** | 1.0800 | **2.2000** | yes |" in text


def test_the_limit_before_training_needs_an_evaluation_at_step_0():
    results = _results([(_arm("a", "ce"), (2.0, 3.0)), (_arm("b", margin=2.0), (2.1, 2.9))])
    with pytest.raises(ValueError, match="eval_on_start: true"):
        choose_values(results, "rank_41-50", limit_against="start")
    with pytest.raises(ValueError, match="limit_against must be one of baseline, start, got 'end'"):
        choose_values(results, "rank_41-50", limit_against="end")
    # an arm written as `selfish_margin: null` with its own rate is plain CE's rate
    assert method_of({"name": "b", "selfish_margin": None, "learning_rate": 1e-4}) == ("ce", "learning_rate", 1e-4)
