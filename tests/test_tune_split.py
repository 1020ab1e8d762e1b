"""eval_split=tune: the tuning split is the end of the TRAIN split; the run trains on the rest, counts its
frequencies there, and never sees the validation split."""

from __future__ import annotations

from collections import Counter

import pytest
from datasets import Dataset, DatasetDict

from hf_selfish.lab.arguments import DataArguments, ModelArguments
from hf_selfish.lab.data import nanogpt_split, split_text_units, tune_split
from hf_selfish.lab.run import prepare_data


def _rows(lengths: list[int]) -> Dataset:
    texts = [chr(ord("a") + i) * n for i, n in enumerate(lengths)]
    return Dataset.from_dict({"text": texts, "language": [i % 2 for i in range(len(lengths))]})


def test_tune_split_holds_out_the_last_rows_by_characters():
    raw = DatasetDict(train=_rows([10] * 10), validation=_rows([5]))
    split = tune_split(raw, 10.0)
    assert split["train"]["text"] == raw["train"]["text"][:9]
    assert split["validation"]["text"] == raw["train"]["text"][9:]  # the original validation split is gone
    assert split["validation"]["language"] == [1]  # other columns travel with their rows


def test_tune_split_cuts_at_the_first_row_boundary_after_the_share():
    # 100 characters; 80% = 80 is reached inside the row ending at 90 (rows end at 50, 70, 90, 100)
    raw = DatasetDict(train=_rows([50, 20, 20, 10]), validation=_rows([5]))
    split = tune_split(raw, 20.0)
    assert [len(t) for t in split["train"]["text"]] == [50, 20, 20]
    assert [len(t) for t in split["validation"]["text"]] == [10]
    # exactly on a boundary: 70% of 100 ends the second row
    split = tune_split(raw, 30.0)
    assert [len(t) for t in split["train"]["text"]] == [50, 20]


def test_tune_split_cuts_each_language_alone():
    # a Bible mix lists the main language's rows, then the small language's: one cut at the end would hold out
    # most of the small language; per language, each keeps its first 80% of characters
    texts = ["e" * 10] * 8 + ["r" * 4] * 5 + ["e" * 10] * 2
    codes = ["eng"] * 8 + ["rus"] * 5 + ["eng"] * 2
    raw = DatasetDict(train=Dataset.from_dict({"text": texts, "language_code": codes}))
    split = tune_split(raw, 20.0, group_column="language_code")
    # eng: 10 rows of 10 -> 80 characters end row 8; rus: 5 rows of 4 -> 16 characters end row 4
    assert Counter(split["train"]["language_code"]) == {"eng": 8, "rus": 4}
    assert Counter(split["validation"]["language_code"]) == {"eng": 2, "rus": 1}
    assert split["validation"]["text"] == ["r" * 4, "e" * 10, "e" * 10]  # each language's last rows, in order
    # no column named: one cut at 96 of 120 characters, after row 12
    assert tune_split(raw, 20.0)["validation"]["language_code"] == ["rus", "eng", "eng"]


def test_tune_split_names_the_language_left_empty():
    raw = DatasetDict(train=Dataset.from_dict({"text": ["a" * 10] * 5 + ["b"], "language_code": ["x"] * 5 + ["y"]}))
    with pytest.raises(ValueError, match="language_code='y'"):
        tune_split(raw, 50.0, group_column="language_code")  # x: 5 rows, cut after 3; y: 1 row, nothing left


@pytest.mark.parametrize("percentage", [0, 100, -5, 150])
def test_tune_split_refuses_bad_percentages(percentage):
    with pytest.raises(ValueError, match="tune_split_percentage"):
        tune_split(DatasetDict(train=_rows([10] * 3)), percentage)
    with pytest.raises(ValueError, match="tune_split_percentage"):
        DataArguments(tune_split_percentage=percentage)


def test_tune_split_refuses_an_empty_part():
    with pytest.raises(ValueError, match="empty part"):
        tune_split(DatasetDict(train=_rows([10])), 10.0)


def test_eval_split_must_be_known():
    with pytest.raises(ValueError, match="eval_split"):
        DataArguments(eval_split="test")


def _decode(ids, tokenizer) -> str:
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def _expected_cut(train_text: str, percentage: float) -> tuple[str, str]:
    """The tuning cut computed by hand: paragraphs in order until (100 - p)% of the characters is reached."""
    rows = split_text_units(train_text, "paragraph")
    budget, seen = len(train_text) * (100 - percentage) / 100, 0
    for k, row in enumerate(rows):
        seen += len(row)
        if seen >= budget:
            return "".join(rows[: k + 1]), "".join(rows[k + 1 :])
    raise AssertionError("no cut")


def test_tune_run_trains_on_the_rest_and_counts_frequencies_there(tinyshakespeare_text):
    model_args = ModelArguments(tokenizer_name="char", model_type="gpt2")
    tune = prepare_data(model_args, DataArguments(block_size=64, eval_split="tune", tune_split_percentage=10.0))
    full = prepare_data(model_args, DataArguments(block_size=64))
    train_text, _ = nanogpt_split(tinyshakespeare_text, 10.0)
    rest, held_out = _expected_cut(train_text, 10.0)
    assert 0.095 * len(train_text) < len(held_out) <= 0.1 * len(train_text)
    tokenizer = tune.lm.tokenizer
    assert tune.vocab_size == full.vocab_size == 65  # the vocabulary does not change

    train_ids = tune.lm.datasets["train"]["input_ids"]
    eval_ids = tune.lm.datasets["validation"]["input_ids"]
    assert _decode(train_ids[0], tokenizer) == rest[:64]
    assert _decode(eval_ids[0], tokenizer) == held_out[:64]  # evaluation starts where training text stops
    assert _decode(eval_ids[-1], tokenizer) in held_out[-2000:]
    n_train_chars, n_eval_chars = 64 * len(train_ids), 64 * len(eval_ids)
    assert len(rest) - 64 * 10 < n_train_chars <= len(rest)  # up to one short block dropped per 1000-row batch
    assert len(held_out) - 64 * 10 < n_eval_chars <= len(held_out)

    # frequencies: counted over the blocks actually trained on (an independent count of their ids)
    expected = Counter(i for ids in train_ids for i in ids)
    assert tune.frequency.counts == [expected.get(i, 0) for i in range(65)]
    assert tune.frequency.counts != full.frequency.counts


def test_tune_split_under_the_simulation_keeps_the_train_languages():
    model_args = ModelArguments(tokenizer_name="char", model_type="gpt2")
    tune = prepare_data(model_args, DataArguments(block_size=64, low_resource_fraction=0.02, eval_split="tune"))
    full = prepare_data(model_args, DataArguments(block_size=64, low_resource_fraction=0.02))
    # the tuning run's first training blocks are the full run's (same rows, same language assignment)
    assert tune.lm.datasets["train"]["input_ids"][:3000] == full.lm.datasets["train"]["input_ids"][:3000]
    assert len(tune.lm.datasets["train"]) < len(full.lm.datasets["train"])
    small = sum(i >= 65 for ids in tune.lm.datasets["validation"]["input_ids"] for i in ids)
    total = 64 * len(tune.lm.datasets["validation"])
    assert 0 < small < 0.1 * total  # the held-out train rows hold some small-language text
