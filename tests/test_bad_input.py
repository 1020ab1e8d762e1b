"""Bad input gets a one-line answer that says what to fix, before any training where possible.

Through the CLI: ``main([...])`` returns 2 and prints ``hf-selfish <command>: error: <message>`` to stderr.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import default_data_collator

from hf_selfish import SelfishTrainer, SelfishTrainingArguments, selfish_loss_func
from hf_selfish.callbacks import RankBucketEvalCallback
from hf_selfish.cli import main
from hf_selfish.lab.data import build_char_tokenizer
from hf_selfish.ops.loss import selfish_causal_lm_loss, selfish_cross_entropy

from .tiny_models import tiny_model

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
)  # 1,620 characters, 30 distinct
MARGIN_MESSAGE = "selfish margin must be a non-negative number or None, got {}"


def write_recipe(tmp_path: Path, extra: str = "", *, text: str = TEXT) -> Path:
    """A tiny char-level GPT-2 recipe on a 1.6k-character text (90% train / 10% validation)."""
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'run'}\n"
        f"data_file: {data}\n"
        "tokenizer_name: char\n"
        "block_size: 16\n"
        "model_type: gpt2\n"
        "config_overrides: n_layer=1,n_head=2,n_embd=16,n_positions=16\n"
        "max_steps: 1\n"
        "use_cpu: true\n"
        "report_to: none\n" + extra
    )
    return path


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI; it must fail with status 2 and one error line, the last on stderr. Returns that line.

    (Lines before it are `datasets` progress bars when the data was read before the error.)
    """
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("hf-selfish")] == err[-1:], err
    return err[-1]


# ------------------------------------------------------------------------------------------- margin


@pytest.mark.parametrize("value, shown", [("-1", "-1.0"), ("nan", "nan"), ("abc", "'abc'"), ("-inf", "-inf")])
def test_bad_margin_on_the_command_line(tmp_path, capsys, value, shown):
    error = cli_error(capsys, "compare", str(write_recipe(tmp_path)), "--selfish_margin", value)
    assert error == "hf-selfish compare: error: " + MARGIN_MESSAGE.format(shown)
    assert not (tmp_path / "run").exists()


def test_bad_margin_in_an_arm(tmp_path, capsys):
    recipe = write_recipe(
        tmp_path, "arms:\n  - {name: base, selfish_margin: null}\n  - {name: neg, selfish_margin: -0.5}\n"
    )
    assert cli_error(capsys, "compare", str(recipe)) == "hf-selfish compare: error: " + MARGIN_MESSAGE.format("-0.5")


@pytest.mark.parametrize("margin, shown", [(-1e-9, "-1e-09"), (float("nan"), "nan"), ("2x", "'2x'"), ([2.0], "[2.0]")])
def test_bad_margin_in_the_library(margin, shown, tmp_path):
    message = "^" + MARGIN_MESSAGE.format(shown).replace("[", r"\[").replace("]", r"\]").replace("(", r"\(") + "$"
    with pytest.raises(ValueError, match=message):
        selfish_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), margin)
    with pytest.raises(ValueError, match=message):
        selfish_loss_func(margin)
    if not isinstance(margin, list):  # HfArgumentParser types are scalars
        with pytest.raises(ValueError, match=message):
            SelfishTrainingArguments(output_dir=str(tmp_path), selfish_margin=margin, report_to="none")


# ------------------------------------------------------------------------------------------- recipe


def test_unknown_key_lists_the_valid_keys_and_suggests_close_ones(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    error = cli_error(capsys, "compare", str(recipe), "--learning_rat", "1e-3")
    head, _, keys = error.partition(" Valid keys: ")
    assert head == (
        "hf-selfish compare: error: unknown recipe key 'learning_rat' in command-line overrides. "
        "Did you mean learning_rate?"
    )
    keys = keys.split(", ")
    assert keys == sorted(keys) and {"learning_rate", "selfish_margin", "block_size", "seeds"} <= set(keys)


@pytest.mark.parametrize(
    "extra, where, hint",
    [
        (
            "selfish_margn: 1.0\n",
            "recipe {recipe}",
            " Did you mean selfish_margin, selfish_margin_end, selfish_margin_schedule?",
        ),
        ("arms:\n  - {name: a, max_step: 3}\n", "arm 'a'", " Did you mean max_steps, save_steps, eval_steps?"),
        ("zzzz: 1\n", "recipe {recipe}", ""),
    ],
)
def test_unknown_key_in_the_recipe_or_an_arm(tmp_path, capsys, extra, where, hint):
    recipe = write_recipe(tmp_path, extra)
    key = extra.split(":")[0] if not extra.startswith("arms") else "max_step"
    error = cli_error(capsys, "compare", str(recipe))
    assert error.startswith(
        f"hf-selfish compare: error: unknown recipe key {key!r} in {where.format(recipe=recipe)}.{hint} Valid keys: "
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            "max_steps: [1\n",
            "recipe '{recipe}' is not valid YAML at line 11, column 1: expected ',' or ']', but got '<stream end>'",
        ),
        ("max_steps: 1.5\n", "recipe key 'max_steps': expected an integer, got 1.5"),
        (
            "learning_rate: fast\n",
            "recipe key 'learning_rate': cannot read 'fast' (could not convert string to float: 'fast')",
        ),
        (
            "use_cpu: maybe\n",
            "recipe key 'use_cpu': cannot read 'maybe' (Truthy value expected: got maybe but expected "
            "one of yes/no, true/false, t/f, y/n, 1/0 (case insensitive).)",
        ),
        ("arms:\n  - {name: a}\n  - {name: a}\n", "arm names must be unique, got ['a', 'a']"),
        ("arms:\n  - {selfish_margin: 1}\n", "arm #1 must be a mapping with a 'name', got {'selfish_margin': 1}"),
        (
            "selfish_margin_schedule: cosine\n",
            "a cosine margin schedule needs a start margin (selfish_margin) and an "
            "end margin (selfish_margin_end), got start=2.0, end=None",
        ),
        ("selfish_margin: auto\nselfish_top_p: 1.5\n", "selfish_top_p must lie strictly between 0 and 1, got 1.5"),
    ],
)
def test_recipe_values_that_cannot_be_read(tmp_path, capsys, extra, message):
    recipe = write_recipe(tmp_path, extra)
    assert cli_error(capsys, "compare", str(recipe)) == "hf-selfish compare: error: " + message.replace(
        "{recipe}", str(recipe)
    )


def test_recipe_file_and_arguments(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert (
        cli_error(capsys, "compare", str(missing))
        == f"hf-selfish compare: error: recipe file '{missing}' does not exist; give the path of a YAML recipe or "
        "the name of a bundled one (`hf-selfish recipes` lists them)"
    )
    recipe = write_recipe(tmp_path)
    assert cli_error(capsys, "compare", str(recipe), "stray") == (
        "hf-selfish compare: error: unexpected argument 'stray': overrides look like --key value"
    )
    assert cli_error(capsys, "train", str(recipe), "--arm", "nope") == (
        "hf-selfish train: error: no arm 'nope' in the recipe; its arms are ['baseline', 'selfish']"
    )


# --------------------------------------------------------------------------------------------- data


def test_missing_or_empty_data_file(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    missing = tmp_path / "nope.txt"
    assert cli_error(capsys, "compare", str(recipe), "--data_file", str(missing)) == (
        f"hf-selfish compare: error: tinyshakespeare path '{missing}' does not exist or is not a file; "
        "give the path of a text file."
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert cli_error(capsys, "compare", str(recipe), "--data_file", str(empty)) == (
        f"hf-selfish compare: error: tinyshakespeare path '{empty}' is empty; give a file that holds the training text."
    )
    assert cli_error(capsys, "compare", str(recipe), "--train_file", str(missing)) == (
        f"hf-selfish compare: error: train_file '{missing}' does not exist; give the path of a .txt, .json/.jsonl "
        "or .parquet file."
    )
    assert cli_error(capsys, "compare", str(recipe), "--train_file", str(empty)) == (
        f"hf-selfish compare: error: train_file '{empty}' is empty; give a file that holds the text."
    )
    assert not (tmp_path / "run").exists()


def test_characters_outside_the_tokenizer_vocabulary(tmp_path, capsys):
    tokenizer_dir = tmp_path / "tokenizer"
    build_char_tokenizer(text=TEXT).save_pretrained(tokenizer_dir)  # 30 characters
    recipe = write_recipe(tmp_path, f"tokenizer_name: {tokenizer_dir}\n", text=TEXT + "Zoë: 50% €\n")
    assert cli_error(capsys, "compare", str(recipe), "--tokenizer_name", str(tokenizer_dir)) == (
        "hf-selfish compare: error: 6 character(s) outside the tokenizer's vocabulary of 30: '%', '0', '5', 'Z', 'ë', "
        "'€'. Build the character tokenizer from text that includes them (train and validation), or clean the text."
    )


def test_tokenizer_larger_than_the_model_embeddings(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_model("gpt2", vocab_size=10, n_positions=16).save_pretrained(model_dir)
    recipe = write_recipe(tmp_path)
    error = cli_error(
        capsys,
        "compare",
        str(recipe),
        "--model_name_or_path",
        str(model_dir),
        "--model_type",
        "null",
        "--config_overrides",
        "null",
    )
    assert error == (
        "hf-selfish compare: error: the tokenizer has 30 tokens but the model's embeddings hold 10; use the model's "
        "own tokenizer or resize the embeddings"
    )
    assert not list((tmp_path / "run").glob("*/checkpoint-*"))


def test_block_size_beyond_the_model_positions(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    assert cli_error(capsys, "compare", str(recipe), "--block_size", "32") == (
        "hf-selfish compare: error: block_size=32 exceeds the model's 16 positions; lower block_size"
    )
    assert cli_error(capsys, "compare", str(recipe), "--block_size", "0") == (
        "hf-selfish compare: error: block_size must be a positive integer, got 0."
    )


def test_eval_split_too_small_for_one_block(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    tokens = len(TEXT) - int(len(TEXT) * 99.5 / 100)  # nanoGPT's split: the validation text is the tail
    assert cli_error(capsys, "compare", str(recipe), "--validation_split_percentage", "0.5") == (
        f"hf-selfish compare: error: the validation split has {tokens} tokens, fewer than one block of "
        "block_size=16; lower block_size or give more text."
    )


def test_model_that_cannot_be_loaded(tmp_path, capsys):
    recipe = write_recipe(tmp_path)
    missing = tmp_path / "no_model"
    error = cli_error(capsys, "compare", str(recipe), "--model_name_or_path", str(missing), "--model_type", "null")
    assert error.startswith(
        f"hf-selfish compare: error: cannot load a model from model_name_or_path='{missing}': give a local folder or "
        "a Hub id that holds one ("
    )
    error = cli_error(capsys, "compare", str(recipe), "--tokenizer_name", str(missing))
    assert error.startswith(f"hf-selfish compare: error: cannot load a tokenizer from '{missing}': give a local folder")


# ------------------------------------------------------------------------------ labels and empty groups


VOCAB = 20


def test_all_ignored_labels_give_zero_loss_and_zero_gradient():
    logits = torch.randn(2, 5, VOCAB, requires_grad=True)
    labels = torch.full((2, 5), -100)
    for margin in (2.0, 0.0, None):
        for num_items in (None, 0, torch.tensor(0)):
            logits.grad = None
            loss, fraction = selfish_causal_lm_loss(
                logits, labels, margin, num_items_in_batch=num_items, return_masked_fraction=True
            )
            loss.backward()
            assert loss.item() == 0.0 and fraction.item() == 0.0, (margin, num_items)
            assert torch.equal(logits.grad, torch.zeros_like(logits)), (margin, num_items)


def trainer_args(tmp_path, **overrides) -> SelfishTrainingArguments:
    values = dict(
        output_dir=str(tmp_path),
        selfish_margin=0.5,
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return SelfishTrainingArguments(**values)


def test_training_on_batches_without_labels_stays_finite(tmp_path):
    model = tiny_model("gpt2", vocab_size=VOCAB)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # a plain list: `SelfishTrainer.train` refuses a `datasets.Dataset` without a labelled token (check_train_dataset),
    # and batches without labels must still give a finite loss (a split can have some)
    data = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100] * 6}] * 8
    trainer = SelfishTrainer(
        model=model,
        args=trainer_args(tmp_path, weight_decay=0.0),
        train_dataset=data,
        eval_dataset=data,
        data_collator=default_data_collator,
    )
    trainer.train()
    assert [e["loss"] for e in trainer.state.log_history if "loss" in e] == [0.0, 0.0]
    for name, p in model.named_parameters():  # zero gradient: Adam does not move a weight (no decay)
        assert torch.equal(p.detach(), before[name]), name
    assert trainer.evaluate()["eval_loss"] == 0.0


def test_a_group_without_eval_tokens_is_absent_not_nan(tmp_path):
    model = tiny_model("gpt2", vocab_size=VOCAB)
    rows = [[1, 2, 3, 1, 2, 3, 1, 4], [4, 3, 2, 1, 4, 3, 2, 1]]  # targets (positions 1..7): ids 1-4 only
    data = Dataset.from_dict({"input_ids": rows, "labels": rows})
    groups = {"seen": [1, 2], "half": [3, 15], "absent": [10, 11, 12]}
    callback = RankBucketEvalCallback(groups, VOCAB, save_per_token=False)
    trainer = SelfishTrainer(
        model=model,
        args=trainer_args(tmp_path, batch_eval_metrics=True),
        eval_dataset=data,
        data_collator=default_data_collator,
        **callback.trainer_kwargs(),
    )
    metrics = trainer.evaluate()
    assert metrics["eval_absent_tokens"] == 0
    assert sorted(k for k in metrics if k.startswith("eval_absent_")) == ["eval_absent_tokens"]
    json.dumps(trainer.state.log_history, allow_nan=False)  # no NaN anywhere in what is logged

    # token 15 never occurs: "half" is token 3's mean NLL alone, not averaged with a 0 for token 15
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(rows)).logits[:, :-1]  # [2, 7, V]
    targets = torch.tensor(rows)[:, 1:]  # [2, 7]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")  # [14]
    token_3 = nll[targets.reshape(-1) == 3]
    assert metrics["eval_half_types"] == 1 and metrics["eval_half_tokens"] == token_3.numel()
    assert math.isclose(metrics["eval_half_nll"], token_3.mean().item(), rel_tol=1e-5)
