"""Reliability: bad input that ended in a traceback, or in a line that named the wrong cause.

Each test fails on the code before the fix. CLI errors are one line (``cli_error``) and come before training.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from datasets import Dataset

import hf_selfish
import hf_selfish.lab.run as run
from hf_selfish import SelfishTrainer, SelfishTrainingArguments, apply_selfish_loss, loss_patch
from hf_selfish.cli import main
from hf_selfish.lab.data.bible import read_bible
from hf_selfish.lab.recipe import load_recipe, parse_overrides
from hf_selfish.ops.loss import selfish_causal_lm_loss, selfish_cross_entropy
from hf_selfish.scenarios import ScenarioNorms, save_scenario_norms

from .test_bad_input import cli_error, write_recipe
from .test_tuning import TABLE, _results
from .tiny_models import tiny_model
from .tolerances import assert_exact

# ------------------------------------------------------------------------ the tuning rule as `hf-selfish tune`


def _tuning_dir(tmp_path: Path, results: dict) -> Path:
    run_dir = tmp_path / "tune"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def test_tune_prints_the_table_and_the_chosen_values(tmp_path, capsys):

    assert main(["tune", str(_tuning_dir(tmp_path, _results(TABLE))), "--group", "rank_41-50"]) == 0
    out = capsys.readouterr().out
    assert "| selfish | selfish_margin | **2.0** | 2.0900 | **3.5000** | yes |" in out
    assert out.strip().splitlines()[-4:] == [
        "selfish: selfish_margin = 2.0",
        "focal: gamma = 2.0",
        "tlat_chi_square: T = 1.0",
        "tlat_exponential: T = 1.0",
    ]


def test_tune_folders_without_results_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        assert "no results file at" in cli_error(capsys, "tune", str(folder))
    truncated = _tuning_dir(tmp_path, _results(TABLE))
    text = (truncated / "results.json").read_text()
    (truncated / "results.json").write_text(text[: len(text) // 2])
    assert "is not valid JSON" in cli_error(capsys, "tune", str(truncated))


def test_tune_on_an_unfinished_comparison_says_so(tmp_path, capsys):
    results = _results(TABLE)
    for record in results["runs"]:
        record["status"] = "running"
    error = cli_error(capsys, "tune", str(_tuning_dir(tmp_path, results)))
    assert "no finished run records a rare group" in error and "--group" in error


def test_tune_an_unknown_group_names_the_recorded_ones(tmp_path, capsys):
    error = cli_error(capsys, "tune", str(_tuning_dir(tmp_path, _results(TABLE))), "--group", "nosuch")
    assert "target group 'nosuch': no finished run records 'eval_nosuch_nll'" in error
    assert "groups recorded: rank_41-50" in error


@pytest.mark.parametrize("limit", ["-1", "nan", "inf"])
def test_tune_refuses_a_negative_or_non_finite_limit(tmp_path, capsys, limit):
    run_dir = _tuning_dir(tmp_path, _results(TABLE))
    error = cli_error(capsys, "tune", str(run_dir), "--group", "rank_41-50", "--max_loss_increase", limit)
    assert "max_loss_increase must be a finite number >= 0" in error and limit in error


def test_tune_a_language_the_runs_did_not_record_is_named(tmp_path, capsys):
    run_dir = _tuning_dir(tmp_path, _results(TABLE))
    error = cli_error(capsys, "tune", str(run_dir), "--language", "nya", "--main", "eng")
    assert "has no finished run" not in error
    assert "the baseline arm 'baseline''s finished runs record no 'eval_eng_loss'" in error
    assert "recorded losses: eval_loss" in error
    assert "--language and --main go together" in cli_error(capsys, "tune", str(run_dir), "--language", "nya")


def test_tune_against_the_loss_before_training_needs_a_step_0_evaluation(tmp_path, capsys):
    run_dir = _tuning_dir(tmp_path, _results(TABLE))  # its runs have no history: no evaluation at step 0
    error = cli_error(capsys, "tune", str(run_dir), "--group", "rank_41-50", "--limit_against", "start")
    assert "no finished run recorded 'eval_loss' before training" in error and "eval_on_start: true" in error
    results = _results(TABLE)
    for record in results["runs"]:
        record["history"] = [{"step": 0, "eval_loss": 2.0, "eval_rank_41-50_nll": 5.0}]
    (run_dir / "results.json").write_text(json.dumps(results))
    assert main(["tune", str(run_dir), "--group", "rank_41-50", "--limit_against", "start"]) == 0
    out = capsys.readouterr().out
    # the first arm (plain CE, eval loss 2.00) is now a candidate with no knob: only the knob arms are listed
    assert "at most 5% above its value before training (2.0000 → limit 2.1000)" in out
    assert "| before training | — | — | 2.0000 | 5.0000 |  |" in out
    assert out.strip().splitlines()[-4] == "selfish: selfish_margin = 2.0"


def test_the_tuning_script_is_the_tune_command(tmp_path):

    script = Path(__file__).resolve().parents[1] / "scripts" / "choose_rival_values.py"
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "missing")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("hf-selfish tune: error: no results file at")


# ------------------------------------------------------------------------------------ SelfishSFTTrainer inputs


def _sft(tmp_path, dataset, **config):
    """A SelfishSFTTrainer of the tiny Llama of test_trl on ``dataset`` (built, not trained)."""
    pytest.importorskip("trl")
    from hf_selfish.integrations.trl import SelfishSFTConfig, SelfishSFTTrainer

    from .test_trl import OFFLINE_CPU, char_tokenizer, sft_model

    tokenizer = char_tokenizer()
    args = SelfishSFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, **OFFLINE_CPU, **config)
    return SelfishSFTTrainer(sft_model(tokenizer), args=args, train_dataset=dataset, processing_class=tokenizer)


def test_sft_an_empty_dataset_is_refused_by_name(tmp_path):

    with pytest.raises(ValueError, match=r"train_dataset is empty \(0 rows\)"):
        _sft(tmp_path, Dataset.from_dict({"text": []}))


def test_sft_a_dataset_without_its_text_column_says_what_to_pass(tmp_path):

    dataset = Dataset.from_dict({"content": ["the cat sat.", "a dog ran."]})
    with pytest.raises(ValueError, match=r"has no 'text' column \(its columns: content\); pass .*dataset_text_field"):
        _sft(tmp_path, dataset)
    trainer = _sft(tmp_path, dataset, dataset_text_field="content")  # what the message says works
    assert len(trainer.train_dataset) == 2 and "input_ids" in trainer.train_dataset.column_names


def test_sft_assistant_only_loss_without_a_chat_template_says_what_to_pass(tmp_path):

    chat = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    with pytest.raises(ValueError, match=r"has no chat_template: set tokenizer.chat_template"):
        _sft(tmp_path, Dataset.from_dict({"messages": chat}), assistant_only_loss=True)


# --------------------------------------------------------------------------- the patched forward's conventions


def _patched(fused: bool):

    model = tiny_model("llama", 31, seed=0, num_hidden_layers=1).double()
    return apply_selfish_loss(model, 1.0, fused=fused).train()


@pytest.mark.parametrize("fused", [True, False])
def test_float_labels_are_one_clear_error_on_both_paths(fused):

    ids = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(0))  # [B, T]
    model = _patched(fused)
    with pytest.raises(ValueError, match=r"labels must be integer token ids, got a float32 tensor; pass labels.long"):
        model(input_ids=ids, labels=ids.float())
    with pytest.raises(ValueError, match=r"shift_labels must be integer token ids, got a bool tensor"):
        model(input_ids=ids, shift_labels=ids > 3)


def test_float_labels_to_the_loss_functions_are_one_clear_error():

    logits = torch.randn(2, 8, 31)  # [B, T, V]
    labels = torch.randint(0, 31, (2, 8)).float()
    with pytest.raises(ValueError, match="selfish_causal_lm_loss: labels must be integer token ids"):
        selfish_causal_lm_loss(logits, labels, 1.0)
    with pytest.raises(ValueError, match="labels must be integer token ids"):
        selfish_cross_entropy(logits.flatten(0, 1), labels.flatten(), 1.0)


def test_return_dict_false_gives_a_tuple_on_both_paths_as_the_model_does():

    ids = torch.randint(0, 31, (2, 8), generator=torch.Generator().manual_seed(1))  # [B, T]
    own = _patched(False).eval()(input_ids=ids, return_dict=False)  # the model's own convention: a tuple
    assert isinstance(own, tuple)
    losses = {}
    for fused in (True, False):
        model = _patched(fused)
        as_object = model(input_ids=ids, labels=ids)
        as_tuple = model(input_ids=ids, labels=ids, return_dict=False)
        assert isinstance(as_tuple, tuple) and not isinstance(as_object, tuple)
        assert all(torch.equal(a, b) for a, b in zip(as_tuple, as_object.to_tuple(), strict=True))
        losses[fused] = as_tuple[0]
    assert_exact(losses[True], losses[False])  # fused == unfused, both in float64
    torch.testing.assert_close(_patched(False)(input_ids=ids, labels=ids, return_dict=False)[1], own[0])  # logits


# --------------------------------------------------------------- why the fused loss refuses a model: the cause


def _llama():

    return tiny_model("llama", 31, seed=0, num_hidden_layers=1)


def _train_step_error(model) -> str:

    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])  # [B=1, T=6]
    with pytest.raises(ValueError) as info:
        apply_selfish_loss(model, 1.0, fused=True).train()(input_ids=ids, labels=ids)
    return str(info.value)


def test_a_nan_in_the_head_is_named_as_such():

    model = _llama()
    with torch.no_grad():
        model.lm_head.weight[3, 2] = float("nan")
        model.lm_head.weight[5, 0] = float("inf")
    error = _train_step_error(model)
    assert "output embedding weight holds 2 non-finite value(s)" in error and "cannot reach its head" not in error


def test_a_forward_another_library_replaced_is_named():

    library = types.ModuleType("otherlib.patching")  # a library that patches forward, as Liger or TRL do
    exec(
        "def forward(self, *args, **kwargs):\n"
        "    out = type(self).forward(self, *args, **kwargs)\n"
        "    out.logits = out.logits / 2.0\n"  # e.g. a temperature
        "    return out\n",
        library.__dict__,
    )
    model = _llama()
    model.forward = types.MethodType(functools.wraps(type(model).forward)(library.forward), model)
    error = _train_step_error(model)
    assert "LlamaForCausalLM.forward was replaced by another library (otherlib.patching)" in error
    assert "cannot reach its head" not in error


def test_a_head_out_of_reach_is_still_said():

    model = _llama()
    original = model.lm_head.forward
    model.lm_head.forward = lambda hidden: original(hidden) + torch.ones(31)  # a hook-like change of the head
    assert "the fused selfish loss cannot reach its head" in _train_step_error(model)


def test_trl_patched_forward_trains_the_same_selfish_steps(tmp_path):
    """TRL's SFTTrainer leaves its fused-head patch on ``model.forward``; SelfishSFTTrainer on that same model
    object trains exactly as on an unpatched copy (TRL's patch passes through without ``fused_lm_head``)."""
    trl = pytest.importorskip("trl")

    from hf_selfish.integrations.trl import SelfishSFTConfig, SelfishSFTTrainer

    from .test_trl import OFFLINE_CPU, TEXTS, char_tokenizer, sft_model

    tokenizer, dataset = char_tokenizer(), Dataset.from_dict({"text": TEXTS})
    losses = []
    for patched_by_trl in (False, True):
        model = sft_model(tokenizer)
        if patched_by_trl:
            trl_args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, **OFFLINE_CPU)
            trl.SFTTrainer(model, args=trl_args, train_dataset=dataset, processing_class=tokenizer)
            assert "forward" in vars(model)  # TRL's patch is on the instance
        args = SelfishSFTConfig(
            output_dir=str(tmp_path / f"s{int(patched_by_trl)}"),
            selfish_margin=1.0,
            selfish_fused=True,
            max_steps=2,
            logging_steps=1,
            **OFFLINE_CPU,
            seed=0,
        )
        trainer = SelfishSFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        losses.append(torch.tensor([e["loss"] for e in trainer.state.log_history if "loss" in e]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5 * losses[0].abs().max().item())


# ------------------------------------------------------------------------------------------ the public API


def test_every_public_name_imports_from_the_package_and_has_a_docstring():

    assert hf_selfish.__all__ == sorted(set(hf_selfish.__all__))
    for name in hf_selfish.__all__:
        exec(f"from hf_selfish import {name} as value", namespace := {})
        doc = (namespace["value"].__doc__ or "").strip()
        # a dataclass without a docstring gets its signature, "Name(field: type, ...)", as __doc__
        assert doc and not doc.startswith(f"{name}("), f"hf_selfish.{name} has no docstring"


def test_the_helpers_users_need_are_public():

    needed = {"selfish_loss_settings", "SelfishLossSettings", "apply_selfish_loss", "remove_selfish_loss"}
    needed |= {"SelfishTrainer", "SelfishTrainingArguments", "selfish_loss_func", "TokenFrequency"}
    needed |= {"RankBucketEvalCallback", "attach_rank_bucket_eval", "rank_bucket_metric_path"}
    assert needed <= set(hf_selfish.__all__), needed - set(hf_selfish.__all__)
    assert set(loss_patch.__all__) <= set(hf_selfish.__all__)  # the patch's whole API, from one place
    exec("from hf_selfish import selfish_loss_settings as f", namespace := {})
    assert namespace["f"] is loss_patch.selfish_loss_settings


# ------------------------------------------------------------------- the command line wins for loss_kwargs

RIVALS = (
    "arms:\n"
    "  - {name: baseline, loss_name: ce}\n"
    "  - {name: selfish, loss_name: selfish, selfish_margin: 4.0}\n"
    "  - {name: focal, loss_name: focal, loss_kwargs: {gamma: 0.5}}\n"
)


def _trained_arguments(monkeypatch, capsys, *argv):
    """``hf-selfish train ...`` up to training: the arguments it would train with (nothing is prepared)."""

    seen = []
    monkeypatch.setattr(run, "prepare_data", lambda *a: None)

    def fake_train_run(args, data, arm):
        seen.append(args)
        return {"arm": arm, "final": {"eval_loss": 1.0}, "global_step": 1, "train_seconds": 0, "output_dir": "x"}

    monkeypatch.setattr(run, "train_run", fake_train_run)
    code = main(list(argv))
    assert code == 0, capsys.readouterr().err
    return seen[0]


@pytest.mark.parametrize("loss_name", [[], ["--loss_name", "focal"]])
def test_train_an_arm_takes_loss_kwargs_from_the_command_line(tmp_path, capsys, monkeypatch, loss_name):

    recipe = str(write_recipe(tmp_path, RIVALS))
    args = _trained_arguments(
        monkeypatch, capsys, "train", recipe, "--arm", "focal", *loss_name, "--loss_kwargs", '{"gamma": 3}'
    )
    assert (args.training.loss_name, args.training.loss_kwargs) == ("focal", {"gamma": 3})


def test_compare_still_refuses_replacing_an_arms_own_loss_kwargs(tmp_path, capsys):

    error = cli_error(capsys, "compare", str(write_recipe(tmp_path, RIVALS)), "--loss_kwargs", '{"gamma": 3}')
    assert "would replace arm 'focal''s own loss_kwargs={'gamma': 0.5}" in error
    assert not (tmp_path / "run").exists()


def test_selfish_loss_kwargs_error_does_not_offer_the_margin():

    with pytest.raises(ValueError) as info:
        load_recipe(None, {"loss_kwargs": '{"gamma": 3}'}).arguments()
    assert "loss 'selfish' takes no parameter 'gamma' in loss_kwargs (its margin is set with selfish_margin)" in str(
        info.value
    )
    assert "margin=2.0" not in str(info.value)


# --------------------------------------------------------------------------- non-finite numeric settings


@pytest.mark.parametrize(
    "command, flag, value",
    [("compare", "--learning_rate", "nan"), ("train", "--weight_decay", "nan"), ("train", "--adam_beta2", "inf")],
)
def test_non_finite_settings_are_refused_at_load_naming_the_key(tmp_path, capsys, monkeypatch, command, flag, value):

    monkeypatch.setattr(run, "prepare_lm_data", lambda *a, **k: pytest.fail("data was prepared"))
    error = cli_error(capsys, command, str(write_recipe(tmp_path)), flag, value)
    assert f"recipe key {flag[2:]!r}: {value} is not a finite number" in error
    assert "would replace" not in error and not (tmp_path / "run").exists()


def test_a_non_finite_value_in_a_recipe_file_or_an_arm_is_refused(tmp_path):

    with pytest.raises(ValueError, match=r"recipe key 'learning_rate': nan is not a finite number"):
        load_recipe(write_recipe(tmp_path, "learning_rate: .nan\n"))
    arms = "arms:\n  - {name: a, max_grad_norm: .inf}\n"
    with pytest.raises(ValueError, match=r"recipe key 'max_grad_norm': inf is not a finite number"):
        load_recipe(write_recipe(tmp_path, arms))


# ------------------------------------------------------------------------ Bible files, list settings, seeds


def test_a_bible_file_that_is_not_utf8_names_the_file_and_line(tmp_path):

    good = json.dumps({"book": 1, "chapter": 1, "verse": 1, "text": "In the beginning"}) + "\n"
    bad = '{"book": 1, "chapter": 1, "verse": 2, "text": "caf\xe9"}\n'.encode("latin-1")  # é as one latin-1 byte
    (tmp_path / "fra.jsonl").write_bytes(good.encode() + bad)
    with pytest.raises(ValueError) as info:
        read_bible(tmp_path, "fra")
    message = str(info.value)
    assert f"{tmp_path / 'fra.jsonl'}, line 2: not UTF-8 text (byte 0xe9 at column {bad.index(0xE9) + 1})" in message


@pytest.mark.parametrize(
    "value, expected",
    [("[]", []), ("[rus_synodal, nya_chichewa]", ["rus_synodal", "nya_chichewa"]), ("a,b", ["a", "b"])],
)
def test_a_list_setting_reads_a_yaml_list_from_the_command_line(value, expected):

    recipe = load_recipe(None, parse_overrides(["--dataset_name", "bible", "--bible_small", value]))
    assert recipe.arguments().data.bible_small == expected


def test_a_seed_range_past_the_largest_seed_is_refused_before_training(tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(run, "prepare_lm_data", lambda *a, **k: pytest.fail("data was prepared"))
    recipe = str(write_recipe(tmp_path))
    error = cli_error(capsys, "compare", recipe, "--seed", "4294967295", "--seeds", "2")
    assert "seeds=2 starting at seed=4294967295 run up to seed 4294967296, above the largest seed 4294967295" in error
    assert "--seed 4294967294 or lower" in error and not (tmp_path / "run").exists()
    assert "seed must be at most 4294967295" in cli_error(capsys, "train", recipe, "--seed", "4294967296")


# ------------------------------------------------------------------------------ permissions of written files


@pytest.fixture
def umask_027():

    previous = os.umask(0o027)  # not the usual 022, so the test sees the umask at work
    yield 0o640
    os.umask(previous)


def test_saved_model_files_get_the_umasks_permissions(tmp_path, umask_027):

    ids = [[1, 2, 3, 4, 5, 6, 7, 8]] * 2
    args = SelfishTrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=1, save_steps=1, disable_tqdm=True
    )
    model = tiny_model("llama", 31, seed=0, num_hidden_layers=1)
    trainer = SelfishTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}))
    trainer.train()  # writes checkpoint-1: weights, optimizer, scheduler, trainer state
    trainer.save_model(str(tmp_path / "out" / "final"))
    for folder in ("checkpoint-1", "final"):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out" / folder).iterdir()}
        assert "model.safetensors" in modes and modes == dict.fromkeys(modes, umask_027), (folder, modes)


def test_safetensors_written_through_an_atomic_path_get_the_umasks_permissions(tmp_path, umask_027):

    norms = ScenarioNorms(*(torch.ones(5, dtype=torch.float64) for _ in range(3)))
    save_scenario_norms(norms, tmp_path / "scenarios.safetensors")
    assert stat.S_IMODE((tmp_path / "scenarios.safetensors").stat().st_mode) == umask_027
