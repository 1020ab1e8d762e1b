"""Silent wrong results and data loss: inputs that trained something else than asked, or lost finished runs.

Each test fails on the code before the fix. CLI errors are one line (``cli_error``) and come before training.
Comparisons are the tiny char-level GPT-2 of ``write_recipe`` (one step per run, no checkpoints).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import default_data_collator

from hf_selfish import SelfishTrainer, SelfishTrainingArguments, apply_selfish_loss
from hf_selfish.cli import main
from hf_selfish.lab.arguments import DataArguments
from hf_selfish.lab.compare import compare
from hf_selfish.lab.data.bible import bible_datasets
from hf_selfish.lab.recipe import load_recipe
from hf_selfish.lab.results import load_results, write_results
from hf_selfish.metric_names import FREQUENCY_FILE, REPORT_FILE, RESULTS_FILE, SUMMARY_FILE
from hf_selfish.ops.loss import validate_margin
from hf_selfish.reporting.report import write_report

from .test_bad_input import cli_error, write_recipe
from .tiny_models import tiny_model

YES_NO = "yes/no value"
ARMS = "arms:\n  - {name: baseline, selfish_margin: null}\n  - {name: selfish, selfish_margin: 2.0}\n"
QUIET = "save_strategy: 'no'\ndisable_tqdm: true\n"


def finished_runs_of(results: dict) -> list[tuple[str, int]]:
    return sorted((run["arm"], run["seed"]) for run in results["runs"] if run["status"] == "finished")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished comparison: baseline and selfish on seeds 42 and 43 (four one-step runs)."""
    root = tmp_path_factory.mktemp("finished")
    recipe = write_recipe(root, ARMS + QUIET + "seeds: 2\n")
    compare(load_recipe(recipe))
    return root


def copy_of(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``cp -a`` of the finished comparison: (its recipe, the copied run folder)."""
    shutil.copytree(finished, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy" / "recipe.yaml", tmp_path / "copy" / "run"


# ------------------------------------------------------------------- 1. a boolean is not a number


@pytest.mark.parametrize("word", ["off", "no", "false", "yes", "true"])
def test_a_yes_no_margin_in_a_recipe_is_refused_not_read_as_0_or_1(tmp_path, capsys, word):
    recipe = write_recipe(tmp_path, f"arms:\n  - {{name: baseline, selfish_margin: {word}}}\n  - {{name: selfish}}\n")
    error = cli_error(capsys, "compare", str(recipe))
    assert "recipe key 'selfish_margin'" in error and YES_NO in error
    assert not (tmp_path / "run").exists()


def test_a_boolean_margin_or_flag_in_python_is_refused():
    for value in (False, True):
        with pytest.raises(ValueError, match=YES_NO):
            validate_margin(value)
        with pytest.raises(ValueError, match=YES_NO):
            SelfishTrainingArguments("out", selfish_margin=value, report_to="none")
    with pytest.raises(ValueError, match=YES_NO):
        SelfishTrainingArguments(
            "out", selfish_margin=4.0, selfish_margin_end=False, selfish_margin_schedule="linear", report_to="none"
        )
    with pytest.raises(ValueError, match="selfish_fused must be True or False, got 'false'"):
        SelfishTrainingArguments("out", selfish_fused="false", report_to="none")
    model = tiny_model("llama", 32, seed=0, num_hidden_layers=1)
    with pytest.raises(ValueError, match=YES_NO):
        apply_selfish_loss(model, True)
    with pytest.raises(ValueError, match="fused must be True or False, got 'false'"):
        apply_selfish_loss(model, 2.0, fused="false")
    assert "forward" not in vars(model)  # nothing was patched
    assert validate_margin(0) == 0.0 and validate_margin(2) == 2.0  # numbers still are numbers


def test_a_boolean_margin_in_the_sft_config_is_refused():
    pytest.importorskip("trl")
    from hf_selfish.integrations.trl import SelfishSFTConfig

    with pytest.raises(ValueError, match=YES_NO):
        SelfishSFTConfig("out", selfish_margin=False, report_to="none", use_cpu=True, bf16=False)


# ------------------------------------------------------------------------ 2. a share no verse fits


def write_corpus(folder: Path, verses: dict[str, tuple[int, int]]) -> Path:
    """A Bible folder: per language, ``(count, length)`` verses of book 1 (training) and the same in book 8
    (validation)."""
    folder.mkdir(parents=True, exist_ok=True)
    for code, (count, length) in verses.items():
        lines = [
            json.dumps({"book": book, "chapter": 1, "verse": i + 1, "text": (code[0] * length)})
            for book in (1, 8)
            for i in range(count)
        ]
        (folder / f"{code}.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return folder


def bible_recipe(tmp_path: Path, corpus: Path, small: str, share: float) -> Path:
    path = tmp_path / "bible.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'run'}\ndataset_name: bible\nbible_dir: {corpus}\nbible_main: eng\n"
        f"bible_small: {small}\nbible_share: {share}\ntokenizer_name: char\nblock_size: 16\nmodel_type: gpt2\n"
        "config_overrides: n_layer=1,n_head=2,n_embd=16,n_positions=16\nmax_steps: 1\nuse_cpu: true\n"
        "report_to: none\n" + QUIET
    )
    return path


def test_a_share_that_no_verse_fits_is_one_error_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "bible", {"eng": (400, 50), "nya": (400, 30)})
    error = cli_error(capsys, "compare", str(bible_recipe(tmp_path, corpus, "nya", 1e-9)))
    assert "bible_share=1e-09 gives nya a budget of" in error and "the run would train no nya" in error
    assert not (tmp_path / "run").exists()


def test_a_share_beyond_the_small_language_is_refused(tmp_path):
    corpus = write_corpus(tmp_path / "bible", {"eng": (400, 50), "rus": (100, 50)})
    values = dict(dataset_name="bible", bible_dir=str(corpus), bible_main="eng", bible_small=["rus"])
    with pytest.raises(ValueError) as info:  # rus has 100 x 51 characters: 20% of the mix, not 50%
        bible_datasets(DataArguments(**values, bible_share=0.5))
    assert str(info.value).startswith("rus would hold 20.00% of the training characters, not the bible_share=0.5")
    train = bible_datasets(DataArguments(**values, bible_share=0.2))["train"]  # what it can hold: accepted
    assert sum(code == "rus" for code in train["language_code"]) == 100


def test_the_share_reached_is_logged_and_in_the_report(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "bible", {"eng": (400, 50), "nya": (400, 10)})
    caplog.set_level(logging.INFO, logger="hf_selfish")
    compare(load_recipe(bible_recipe(tmp_path, corpus, "nya", 0.02)))
    # by hand: 400 English verses of 50 characters; nya verses of 10 fill 2% of the mix, up to one verse
    nya = 0.02 * 400 * 50 / 0.98 // 10  # whole verses in nya's budget: share x (English + nya) characters
    share = nya * 10 / (nya * 10 + 400 * 50)
    assert f"training mix (share of the training characters; bible_share=0.02): eng {1 - share:.2%}, " in caplog.text
    assert f"nya {share:.2%}" in caplog.text
    report = (Path(write_report(tmp_path / "run"))).read_text()
    line = f"- training mix, share of the training characters: eng {1 - share:.2%}, nya {share:.2%}"
    assert line + " (bible_share asked: 0.02)" in report


# ------------------------------------------------------------------------ 3. an empty language file


def test_an_empty_language_file_is_one_error_line(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "bible", {"eng": (400, 50), "nya": (0, 0)})
    assert (corpus / "nya.jsonl").read_text() == ""
    error = cli_error(capsys, "compare", str(bible_recipe(tmp_path, corpus, "nya", 0.02)))
    assert error.endswith(
        f"language 'nya' has no verses: {corpus / 'nya.jsonl'} is empty; each line must be a JSON "
        "object with book, chapter, verse, text"
    )
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ 4. seeds only grow


def test_rerunning_with_fewer_seeds_keeps_every_finished_seed(finished, tmp_path):
    recipe, run_dir = copy_of(finished, tmp_path)
    before = load_results(run_dir)
    assert finished_runs_of(before) == [("baseline", 42), ("baseline", 43), ("selfish", 42), ("selfish", 43)]
    for argv in (["--seeds", "1"], []):  # the recipe says 2; the command line 1, then a recipe that says 1
        if not argv:
            recipe.write_text(recipe.read_text().replace("seeds: 2\n", "seeds: 1\n"))
        overrides = {"output_dir": str(run_dir), **({"seeds": "1"} if argv else {})}
        said = []
        compare(load_recipe(recipe, overrides), progress=said.append)  # `hf-selfish compare` without the plots
        assert (
            said[0]
            == f"keeping the finished seed 43 of {run_dir} (a comparison's seeds only grow; choose another --output_dir for fewer)"
        )
        write_report(run_dir)
        after = load_results(run_dir)
        assert finished_runs_of(after) == finished_runs_of(before)
        assert [r["train_seconds"] for r in after["runs"]] == [r["train_seconds"] for r in before["runs"]]
        assert "- seeds: 42, 43" in (run_dir / REPORT_FILE).read_text()
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        assert summary["verdict"] and summary["incomplete"] is None


# ------------------------------------------------------------- 5. train never writes into a comparison


def test_train_refuses_a_comparison_folder(finished, tmp_path, capsys):
    recipe, run_dir = copy_of(finished, tmp_path)
    frequencies = (run_dir / FREQUENCY_FILE).read_bytes()
    error = cli_error(capsys, "train", str(recipe), "--arm", "selfish", "--output_dir", str(run_dir))
    assert error.endswith(
        f"{run_dir} holds a comparison of `hf-selfish compare` (results.json); `hf-selfish train` would write its "
        "own files over it: give another --output_dir"
    )
    assert (run_dir / FREQUENCY_FILE).read_bytes() == frequencies
    assert not (run_dir / "trainer_state.json").exists() and not (run_dir / "model.safetensors").exists()


def test_compare_refuses_a_single_run_folder(tmp_path, capsys):
    recipe = write_recipe(tmp_path, QUIET)
    assert main(["train", str(recipe)]) == 0
    state = (tmp_path / "run" / "trainer_state.json").read_bytes()
    error = cli_error(capsys, "compare", str(recipe))
    assert f"{tmp_path / 'run'} holds a run of `hf-selfish train` (trainer_state.json)" in error
    assert not (tmp_path / "run" / RESULTS_FILE).exists()
    assert (tmp_path / "run" / "trainer_state.json").read_bytes() == state


# ----------------------------------------------------------- 6. no verdict for an unfinished comparison


def test_an_unfinished_comparison_names_its_missing_runs_and_gives_no_verdict(finished, tmp_path, capsys):
    _, run_dir = copy_of(finished, tmp_path)
    results = load_results(run_dir)
    complete = write_report(run_dir).read_text()
    assert "Incomplete" not in complete and "No verdict" not in complete
    for kept, missing in (
        ([42], "2 of 4 runs have not finished: baseline-seed43, selfish-seed43"),
        ([], "4 of 4 runs have not finished: baseline-seed42, selfish-seed42, baseline-seed43, selfish-seed43"),
    ):
        write_results(run_dir, {**results, "runs": [r for r in results["runs"] if r["seed"] in kept]})
        for command in ("report", "plot") if kept else ("report",):  # plots once: matplotlib is slow
            capsys.readouterr()
            assert main([command, str(run_dir)]) == 0
            assert f"incomplete comparison: {missing}." in capsys.readouterr().out
            report = (run_dir / REPORT_FILE).read_text()
            assert report.splitlines()[2].startswith(f"> **Incomplete comparison**: {missing}.")
            assert f"## Verdict\n\nNo verdict: {missing}." in report
            summary = json.loads((run_dir / SUMMARY_FILE).read_text())
            assert summary["verdict"] is None and summary["incomplete"] == missing


def test_arms_on_different_seeds_give_no_verdict_without_a_plan(finished, tmp_path):
    from hf_selfish.lab.results import missing_runs

    _, run_dir = copy_of(finished, tmp_path)
    results = load_results(run_dir)
    del results["planned"]  # a results.json of an older version: the plan is every arm on every finished seed
    runs = [r for r in results["runs"] if (r["arm"], r["seed"]) != ("selfish", 43)]
    assert missing_runs({**results, "runs": runs}) == [("selfish", 43)]
    write_results(run_dir, {**results, "runs": runs})
    report = write_report(run_dir).read_text()
    assert "> **Incomplete comparison**: 1 of 4 runs have not finished: selfish-seed43." in report


# ----------------------------------------------------------------- 7. a copied folder is the same recipe


def test_a_copied_comparison_folder_is_the_same_comparison(finished, tmp_path):
    recipe, run_dir = copy_of(finished, tmp_path)
    before = load_results(run_dir)
    after = compare(load_recipe(recipe, {"output_dir": str(run_dir)}))
    assert finished_runs_of(after) == finished_runs_of(before)
    assert [r["train_seconds"] for r in after["runs"]] == [r["train_seconds"] for r in before["runs"]]
    assert [r["output_dir"] for r in after["runs"]] == [r["output_dir"] for r in before["runs"]]


def test_overwrite_advice_says_which_finished_runs_it_deletes(finished, tmp_path, capsys):
    recipe, run_dir = copy_of(finished, tmp_path)
    error = cli_error(capsys, "compare", str(recipe), "--output_dir", str(run_dir), "--learning_rate", "0.002")
    assert error.endswith(
        f"{run_dir} holds the runs of a different recipe (differing in learning_rate): choose another --output_dir, "
        "or pass --overwrite to DELETE them (4 finished runs: baseline-seed42, baseline-seed43, selfish-seed42, "
        "selfish-seed43)"
    )
    # --overwrite deletes what it said, the seeds the new command no longer reaches included
    replaced = compare(
        load_recipe(recipe, {"output_dir": str(run_dir), "learning_rate": "0.002", "overwrite": "true", "seeds": "1"})
    )
    assert finished_runs_of(replaced) == [("baseline", 42), ("selfish", 42)]
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["baseline-seed42", "selfish-seed42"]


# -------------------------------------------------------------------- 8. nothing to learn is refused


def test_a_train_split_without_a_labelled_token_is_refused_by_the_trainer(tmp_path):
    model = tiny_model("gpt2", 32, seed=0, n_layer=1)
    one_token_rows = Dataset.from_dict({"input_ids": [[5], [7]], "labels": [[5], [7]]})
    args = SelfishTrainingArguments(str(tmp_path / "out"), max_steps=2, report_to="none", use_cpu=True)
    trainer = SelfishTrainer(model, args, train_dataset=one_token_rows, data_collator=default_data_collator)
    with pytest.raises(ValueError, match=r"the train dataset has no labelled token \(2 rows"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_an_sft_dataset_of_empty_strings_is_refused(tmp_path):
    pytest.importorskip("trl")
    from hf_selfish.integrations.trl import SelfishSFTConfig, SelfishSFTTrainer

    from .test_trl import OFFLINE_CPU, char_tokenizer, sft_model

    tokenizer = char_tokenizer()
    args = SelfishSFTConfig(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, **OFFLINE_CPU)
    empty = Dataset.from_dict({"text": ["", "", ""]})
    trainer = SelfishSFTTrainer(sft_model(tokenizer), args=args, train_dataset=empty, processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"the train dataset has no labelled token \(3 rows"):
        trainer.train()
    assert trainer.state.global_step == 0


# ------------------------------------------------------------------- 9. train needs --arm with arms


def test_train_requires_arm_when_the_recipe_has_arms(tmp_path, capsys):
    for arms in (ARMS, "sweep_margins: [1, 4]\n"):
        error = cli_error(capsys, "train", str(write_recipe(tmp_path, arms)))
        assert "the recipe has arms " in error and "pick the one to train with --arm NAME" in error
        assert ("baseline, selfish" if arms == ARMS else "baseline, margin_1, margin_4") in error
        assert not (tmp_path / "run").exists()


# ----------------------------------------------------------- 10. a sweep lists each margin once


@pytest.mark.parametrize(
    "margins, message",
    [
        ("[2, 2.0]", "sweep_margins lists one margin twice ('2' and '2.0', both 2.0)"),
        ("[auto, AUTO]", "sweep_margins lists one margin twice ('auto' and 'AUTO', both auto)"),
        ("'1,4,1.0'", "sweep_margins lists one margin twice ('1' and '1.0', both 1.0)"),
        ("[inf]", "sweep_margins lists 'inf', which is plain cross-entropy: the baseline arm already trains it"),
        ("[off]", YES_NO),
    ],
)
def test_a_sweep_refuses_margins_equal_after_normalising(tmp_path, margins, message):
    with pytest.raises(ValueError) as info:
        load_recipe(write_recipe(tmp_path, f"sweep_margins: {margins}\n"))
    assert message in str(info.value)


def test_a_sweep_of_distinct_margins_gives_one_arm_each(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, "sweep_margins: [1, 2.5, auto]\n"))
    assert [arm.name for arm in recipe.arms] == ["baseline", "margin_1", "margin_2.5", "margin_auto"]
    margins = [recipe.arguments(arm).training.selfish_margin for arm in recipe.arms]
    assert margins == [None, 1.0, 2.5, "auto"]


@pytest.mark.parametrize("second", ["2.0", "'2'"])
def test_compare_refuses_two_arms_that_train_the_same_settings(tmp_path, capsys, second):
    arms = "arms:\n  - {name: base, selfish_margin: null}\n  - {name: two, selfish_margin: 2}\n"
    recipe = write_recipe(tmp_path, arms + f"  - {{name: also_two, selfish_margin: {second}}}\n")
    error = cli_error(capsys, "compare", str(recipe))
    assert "arms 'two' and 'also_two' train the same settings" in error
    assert not (tmp_path / "run").exists()
