"""Data: tinyshakespeare source, char tokenizer, nanoGPT split, blocks, local files, low-resource simulation."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_selfish.frequency import TokenFrequency
from hf_selfish.lab.arguments import DataArguments, ModelArguments
from hf_selfish.lab.data import (
    LANGUAGE_COLUMN,
    TINYSHAKESPEARE_ENV,
    DataNotFoundError,
    assign_languages,
    build_char_tokenizer,
    build_lm_datasets,
    build_low_resource_char_tokenizer,
    char_vocabulary,
    check_characters,
    choose_small_units,
    from_small_language,
    group_texts,
    language_groups,
    load_raw_datasets,
    load_tokenizer,
    nanogpt_split,
    prepare_lm_data,
    resolve_tinyshakespeare,
    simulate_low_resource_text,
    split_text_units,
    tinyshakespeare_datasets,
    to_small_language,
    token_labels,
    tokenize_datasets,
    unknown_characters,
)
from hf_selfish.lab.data import sources as data_module

N_CHARS = 1_115_394
N_TRAIN, N_VAL = 1_003_854, 111_540
V = 65


def char_ids(text: str, chars: list[str]) -> np.ndarray:
    """Reference encoding without the tokenizer: a code point -> id lookup table over UTF-32."""
    lookup = np.full(0x110000, -1, dtype=np.int64)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars))
    return lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]


@pytest.fixture(scope="session")
def tokenizer(tinyshakespeare_text):
    return build_char_tokenizer(tinyshakespeare_text)


@pytest.fixture(scope="session")
def splits(tinyshakespeare_text):
    return nanogpt_split(tinyshakespeare_text)


@pytest.fixture(scope="session")
def shakespeare_args(tinyshakespeare_file) -> DataArguments:
    return DataArguments(data_file=str(tinyshakespeare_file), block_size=64)


@pytest.fixture(scope="session")
def simulated(shakespeare_args):
    """The simulation pipeline on tinyshakespeare: 2% of the characters, by paragraphs, seed 0."""
    args = DataArguments(**{**vars(shakespeare_args), "low_resource_fraction": 0.02})
    raw = load_raw_datasets(args)
    base = load_tokenizer(ModelArguments(tokenizer_name="char"), raw)
    units = assign_languages(raw, 0.02, "paragraph", seed=0)
    return {"args": args, "raw": raw, "base": base, "units": units, "tokenized": tokenize_datasets(units, base)}


def write_text(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------ corpus


def test_corpus_size_and_vocabulary(tinyshakespeare_text, tokenizer):
    assert len(tinyshakespeare_text) == N_CHARS
    chars = char_vocabulary(tokenizer)
    assert len(tokenizer) == V and chars == sorted(set(tinyshakespeare_text))
    assert chars[:3] == ["\n", " ", "!"] and chars[-1] == "z"
    assert tokenizer.all_special_ids == [] and tokenizer.pad_token is None  # vocabulary stays 65


def test_nanogpt_split_sizes(tinyshakespeare_text, splits):
    train, val = splits
    assert (len(train), len(val)) == (N_TRAIN, N_VAL)
    assert len(train) == int(N_CHARS * 0.9) and train + val == tinyshakespeare_text


def test_validation_split_lacks_rare_characters(splits, tokenizer):
    """`$ & 3 X` never occur in nanoGPT's val split, and of train ranks 61-65 only `Z` does."""
    train, val = splits
    frequency = TokenFrequency.from_ids(char_ids(train, char_vocabulary(tokenizer)), vocab_size=V)
    chars = char_vocabulary(tokenizer)
    in_val = set(val)
    assert {"$", "&", "3", "X"}.isdisjoint(in_val)
    last_bucket = [chars[i] for i in frequency.rank_buckets()["rank_61-65"]]
    assert sorted(last_bucket) == sorted(["$", "&", "3", "X", "Z"])
    assert [c for c in last_bucket if c in in_val] == ["Z"]
    counter = Counter(train)
    assert frequency.counts == [counter[c] for c in chars]  # bincount agrees with a Counter


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_whole_corpus(tinyshakespeare_text, tokenizer):
    paragraphs = split_text_units(tinyshakespeare_text)
    assert "".join(paragraphs) == tinyshakespeare_text
    encoded = tokenizer(paragraphs, return_attention_mask=False)["input_ids"]
    ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in encoded])
    np.testing.assert_array_equal(ids, char_ids(tinyshakespeare_text, char_vocabulary(tokenizer)))
    assert tokenizer.decode(ids.tolist()) == tinyshakespeare_text


def test_every_character_is_a_token(tokenizer):
    text = "To be,  or\n\n\nnot? 'Tis\n "
    encoding = tokenizer(text)
    assert tokenizer.convert_ids_to_tokens(encoding["input_ids"]) == list(text)
    assert tokenizer.decode(encoding["input_ids"]) == text  # no spaces cleaned up or added


def test_save_pretrained_autotokenizer_round_trip(tmp_path, tokenizer, tinyshakespeare_text):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = tinyshakespeare_text[:5000]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert loaded.decode(loaded(sample)["input_ids"]) == sample
    via_load_tokenizer = load_tokenizer(ModelArguments(tokenizer_name=str(tmp_path)))
    assert via_load_tokenizer.get_vocab() == tokenizer.get_vocab()


def test_characters_outside_vocabulary(tokenizer, tmp_path):
    assert unknown_characters("Héllo€ wörld", tokenizer) == sorted("é€ö")
    with pytest.raises(ValueError, match=r"3 character\(s\).*'é', 'ö', '€'"):
        check_characters(["fine", "Héllo€ wörld"], tokenizer)
    # through the dataset pipeline: a ValueError naming the character, not a silent unknown id
    args = DataArguments(train_file=write_text(tmp_path / "t.txt", "abc\n" * 50 + "naïve\n"), block_size=4)
    raw = load_raw_datasets(args)
    with pytest.raises(ValueError, match="'ï'"):
        build_lm_datasets(args, build_char_tokenizer("abcnve\n"), raw)


def test_build_char_tokenizer_arguments():
    assert char_vocabulary(build_char_tokenizer(chars=["b", "a"])) == ["b", "a"]  # explicit order kept
    with pytest.raises(ValueError, match="exactly one"):
        build_char_tokenizer("ab", chars=["a"])
    with pytest.raises(ValueError, match="'ab'"):
        build_char_tokenizer(chars=["ab", "c"])
    with pytest.raises(ValueError, match="repeats"):
        build_char_tokenizer(chars=["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        build_char_tokenizer("")


def test_load_tokenizer_defaults_to_char(tmp_path):
    raw = load_raw_datasets(DataArguments(train_file=write_text(tmp_path / "t.txt", "hello\nworld\n" * 20)))
    assert char_vocabulary(load_tokenizer(ModelArguments(), raw)) == sorted(set("helowrd\n"))
    with pytest.raises(ValueError, match="raw_datasets"):
        load_tokenizer(ModelArguments(tokenizer_name="char"))


# ------------------------------------------------------------------------------------------ data source


def test_resolve_explicit_env_and_cache(tmp_path, monkeypatch, tinyshakespeare_file):
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)
    assert resolve_tinyshakespeare(tinyshakespeare_file) == tinyshakespeare_file
    monkeypatch.setenv(TINYSHAKESPEARE_ENV, str(tinyshakespeare_file))
    assert resolve_tinyshakespeare(cache_dir=tmp_path, download=False) == tinyshakespeare_file
    monkeypatch.delenv(TINYSHAKESPEARE_ENV)
    cached = write_text(tmp_path / "tinyshakespeare.txt", "cached text")
    assert str(resolve_tinyshakespeare(cache_dir=tmp_path, download=False)) == cached


def test_resolve_missing_and_empty_paths(tmp_path, monkeypatch):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataNotFoundError, match="nope.txt.*does not exist"):
        resolve_tinyshakespeare(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        resolve_tinyshakespeare(empty)
    monkeypatch.setenv(TINYSHAKESPEARE_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=rf"\${TINYSHAKESPEARE_ENV}.*nope.txt"):
        resolve_tinyshakespeare()


def test_resolve_offline_error_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)
    with pytest.raises(DataNotFoundError) as info:
        resolve_tinyshakespeare(cache_dir=tmp_path)  # the test session is offline (HF_HUB_OFFLINE=1)
    message = str(info.value)
    assert "offline" in message and "--data_file" in message and TINYSHAKESPEARE_ENV in message
    assert not list(tmp_path.iterdir())


def test_resolve_downloads_into_cache_atomically(tmp_path, monkeypatch, tinyshakespeare_file):
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)
    payload = tinyshakespeare_file.read_bytes()
    monkeypatch.setattr(data_module.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    path = resolve_tinyshakespeare(cache_dir=tmp_path, download=True)
    assert path == tmp_path / "tinyshakespeare.txt" and path.read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == ["tinyshakespeare.txt"]  # no .part file left


def test_resolve_rejects_corrupt_or_failed_download(tmp_path, monkeypatch):
    monkeypatch.delenv(TINYSHAKESPEARE_ENV, raising=False)
    monkeypatch.setattr(data_module.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not shakespeare"))
    with pytest.raises(DataNotFoundError, match="sha256"):
        resolve_tinyshakespeare(cache_dir=tmp_path, download=True)
    assert not list(tmp_path.iterdir())

    def unreachable(url, timeout):
        raise data_module.urllib.error.URLError("no network")

    monkeypatch.setattr(data_module.urllib.request, "urlopen", unreachable)
    with pytest.raises(DataNotFoundError, match="no network.*HF_SELFISH_TINYSHAKESPEARE"):
        resolve_tinyshakespeare(cache_dir=tmp_path, download=True)


# ---------------------------------------------------------------------------------------------- blocks


def test_group_texts_like_run_clm():
    out = group_texts({"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]]}, block_size=4)
    assert out == {"input_ids": [[1, 2, 3, 4], [5, 6, 7, 8]], "labels": [[1, 2, 3, 4], [5, 6, 7, 8]]}


def test_tinyshakespeare_blocks(shakespeare_args, splits, tokenizer):
    raw = load_raw_datasets(shakespeare_args)
    assert ["".join(raw[s]["text"]) for s in ("train", "validation")] == list(splits)
    blocks = build_lm_datasets(shakespeare_args, tokenizer, raw)
    train, val = blocks["train"], blocks["validation"]
    assert train.column_names == ["input_ids", "labels"]
    # reference: run_clm drops the remainder of every 1000-row batch of paragraphs
    rows = raw["train"]["text"]
    expected_train = sum(sum(map(len, rows[i : i + 1000])) // 64 for i in range(0, len(rows), 1000))
    assert (len(train), len(val)) == (expected_train, N_VAL // 64) == (15_681, 1_742)
    first = np.asarray(train[0]["input_ids"])
    np.testing.assert_array_equal(first, char_ids(splits[0][:64], char_vocabulary(tokenizer)))
    assert train[0]["labels"] == train[0]["input_ids"]
    np.testing.assert_array_equal(
        np.asarray(val["input_ids"]).reshape(-1), char_ids(splits[1][: N_VAL // 64 * 64], char_vocabulary(tokenizer))
    )


def test_max_samples_and_block_size_checks(tmp_path, tinyshakespeare_text, tokenizer):
    text_file = write_text(tmp_path / "t.txt", tinyshakespeare_text[:40_000])
    args = DataArguments(train_file=text_file, block_size=256, max_train_samples=7, max_eval_samples=3)
    blocks = build_lm_datasets(args, tokenizer, load_raw_datasets(args, cache_dir=tmp_path / "cache"))
    assert (len(blocks["train"]), len(blocks["validation"])) == (7, 3)
    assert len(blocks["train"][0]["input_ids"]) == 256
    with pytest.raises(ValueError, match="max_eval_samples must be a positive"):
        build_lm_datasets(DataArguments(**{**vars(args), "max_eval_samples": 0}), tokenizer)
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        build_lm_datasets(DataArguments(**{**vars(args), "block_size": 0}), tokenizer)


def test_eval_split_too_small_for_one_block(tmp_path):
    args = DataArguments(
        train_file=write_text(tmp_path / "train.txt", "some training text\n" * 40),
        validation_file=write_text(tmp_path / "val.txt", "tiny\n"),
        block_size=16,
    )
    raw = load_raw_datasets(args, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="validation split has 5 tokens, fewer than one block of block_size=16"):
        build_lm_datasets(args, load_tokenizer(ModelArguments(), raw), raw)


# ----------------------------------------------------------------------------------------- local files


def test_local_txt_files(tmp_path):
    train_text = "".join(f"line {i} of the train text.\n" + ("\n" if i % 5 == 4 else "") for i in range(60))
    val_text = "line of validation text.\n" * 8
    args = DataArguments(
        train_file=write_text(tmp_path / "train.txt", train_text),
        validation_file=write_text(tmp_path / "val.txt", val_text),
        block_size=32,
    )
    raw = load_raw_datasets(args, cache_dir=tmp_path / "cache")
    assert "".join(raw["train"]["text"]) == train_text  # line breaks kept
    tokenizer = load_tokenizer(ModelArguments(tokenizer_name="char"), raw)
    blocks = build_lm_datasets(args, tokenizer, raw)
    assert len(blocks["train"]) == len(train_text) // 32 and len(blocks["validation"]) == len(val_text) // 32
    assert tokenizer.decode(blocks["train"][0]["input_ids"]) == train_text[:32]
    # file-backed data is cached by `datasets`, in the given cache dir
    assert all(str(tmp_path / "cache") in f["filename"] for f in blocks["train"].cache_files)


def test_local_jsonl_and_parquet_with_text_column(tmp_path):
    docs = [{"id": i, "content": f"document {i}: to be or not to be.\n"} for i in range(40)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    args = DataArguments(train_file=str(jsonl), text_column="content", block_size=16, validation_split_percentage=25)
    raw = load_raw_datasets(args, cache_dir=tmp_path / "cache")
    assert (len(raw["train"]), len(raw["validation"])) == (30, 10)  # the last 25% of rows held out
    assert raw["validation"][0]["text"] == docs[30]["content"] and raw["train"].column_names == ["text"]
    tokenizer = load_tokenizer(ModelArguments(), raw)
    blocks = build_lm_datasets(args, tokenizer, raw)
    expected = "".join(d["content"] for d in docs[:30])
    decoded = tokenizer.decode([i for row in blocks["train"]["input_ids"] for i in row])
    assert decoded == expected[: len(expected) // 16 * 16]

    parquet = tmp_path / "docs.parquet"
    Dataset.from_list(docs).to_parquet(str(parquet))
    parquet_args = DataArguments(**{**vars(args), "train_file": str(parquet)})
    raw_parquet = load_raw_datasets(parquet_args, cache_dir=tmp_path / "cache")
    assert raw_parquet["train"]["text"] == raw["train"]["text"]


def test_dataset_name_as_local_folder(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"row {i}\n"}) + "\n" for i in range(20)))
    raw = load_raw_datasets(DataArguments(dataset_name=str(folder)), cache_dir=tmp_path / "cache")
    assert (len(raw["train"]), len(raw["validation"])) == (18, 2)


def test_local_file_errors(tmp_path):
    with pytest.raises(ValueError, match="train_file '.*missing.txt' does not exist"):
        load_raw_datasets(DataArguments(train_file=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="extension '.csv'"):
        load_raw_datasets(DataArguments(train_file=write_text(tmp_path / "a.csv", "text\nhi\n")))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="text_column='text' not in the train split.*'body'"):
        load_raw_datasets(DataArguments(train_file=str(jsonl), validation_file=str(jsonl)), cache_dir=tmp_path / "c")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(20)))
    with pytest.raises(ValueError, match="holds no text"):
        load_raw_datasets(DataArguments(train_file=str(empty)), cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="without a train_file"):
        load_raw_datasets(DataArguments(validation_file=str(jsonl)))
    with pytest.raises(ValueError, match="validation_split_percentage must be in"):
        load_raw_datasets(DataArguments(validation_split_percentage=0))
    with pytest.raises(ValueError, match="leaves an empty split"):
        one_line = DataArguments(train_file=write_text(tmp_path / "one.txt", "one line\n"))
        load_raw_datasets(one_line, cache_dir=tmp_path / "c")


def test_tinyshakespeare_rows_are_paragraphs(tinyshakespeare_file, splits):
    raw = tinyshakespeare_datasets(tinyshakespeare_file)
    assert raw["train"][1]["text"] == "All:\nSpeak, speak.\n\n"
    assert len(raw["train"]) + len(raw["validation"]) == 7223  # one paragraph cut by the split boundary


# ---------------------------------------------------------------------------------- low-resource language


def test_text_units_round_trip():
    text = "A\nb\n\nC\n \n\nd\ne\n\n\nF"
    assert split_text_units(text) == ["A\nb\n\n", "C\n \n\n", "d\ne\n\n\n", "F"]
    assert split_text_units(text, "line") == ["A\n", "b\n", "\n", "C\n", " \n", "\n", "d\n", "e\n", "\n", "\n", "F"]
    assert "".join(split_text_units(text, "line")) == text
    with pytest.raises(ValueError, match="'sentence'"):
        split_text_units(text, "sentence")


def test_choose_small_units_budget_and_seeds():
    lengths = np.random.default_rng(0).integers(1, 300, size=5000)
    small = choose_small_units(lengths, 0.02, seed=3)
    assert abs(lengths[small].sum() / lengths.sum() - 0.02) < 300 / lengths.sum()  # within one unit
    np.testing.assert_array_equal(small, choose_small_units(lengths, 0.02, seed=3))
    assert not np.array_equal(small, choose_small_units(lengths, 0.02, seed=4))
    assert not choose_small_units(lengths, 0.0).any()
    with pytest.raises(ValueError, match="low_resource_fraction must be in \\[0, 1\\), got 1.5"):
        choose_small_units(lengths, 1.5)


def test_language_groups():
    groups = language_groups(V)
    assert list(groups) == ["lang_main", "lang_small"]
    assert groups["lang_main"] == list(range(65)) and groups["lang_small"] == list(range(65, 130))


def test_simulation_fraction_and_disjoint_ids(simulated):
    """Whole paragraphs: every row is all-main (ids < 65) or all-small (65 <= id < 130); 2% of each split."""
    for split in ("train", "validation"):
        units, tokenized = simulated["units"][split], simulated["tokenized"][split]
        language = np.asarray(units[LANGUAGE_COLUMN], dtype=bool)
        lengths = np.asarray([len(r) for r in tokenized["input_ids"]])
        ids = np.concatenate([np.asarray(r) for r in tokenized["input_ids"]])
        row_of_token = np.repeat(np.arange(len(lengths)), lengths)
        small_token = language[row_of_token]
        assert ids[~small_token].max() < V and ids[small_token].min() >= V and ids.max() < 2 * V
        token_fraction = small_token.mean()
        paragraph_fraction = language.mean()
        assert abs(token_fraction - 0.02) < 0.001, token_fraction  # seed 0: 0.02000 train, 0.01995 val
        assert abs(paragraph_fraction - 0.02) < 0.01, paragraph_fraction  # seed 0: 143/6283, 20/940 paragraphs


def test_simulation_shifted_tokenizer_round_trip(simulated, splits, tmp_path):
    base = simulated["base"]
    shifted = build_low_resource_char_tokenizer(base)
    assert len(shifted) == 2 * V and char_vocabulary(shifted)[:V] == char_vocabulary(base)
    train_text = splits[0]
    simulated_text = simulate_low_resource_text(train_text, base, 0.02, "paragraph", seed=(0, 0))
    assert from_small_language(simulated_text, base) == train_text
    ids = [i for row in shifted(split_text_units(simulated_text))["input_ids"] for i in row]
    pipeline_ids = [i for row in simulated["tokenized"]["train"]["input_ids"] for i in row]
    assert ids == pipeline_ids  # text transformation + 2V tokenizer == id shift of the pipeline
    assert shifted.decode(ids) == simulated_text
    assert to_small_language("To be", base) == "".join(chr(0xF0000 + base.convert_tokens_to_ids(c)) for c in "To be")

    shifted.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = simulated_text[:20_000]
    assert len(loaded) == 130 and loaded(sample)["input_ids"] == ids[:20_000]
    assert loaded.decode(ids[:20_000]) == sample
    labels = token_labels(shifted)
    assert labels[0] == "\\n" and labels[1] == "␣" and labels[V] == "\\n₂" and labels[V + 39] == "a₂"


def test_simulation_is_deterministic_per_seed(simulated):
    raw = simulated["raw"]
    again = assign_languages(raw, 0.02, "paragraph", seed=0)
    other = assign_languages(raw, 0.02, "paragraph", seed=1)
    assert again["train"][LANGUAGE_COLUMN] == simulated["units"]["train"][LANGUAGE_COLUMN]
    assert other["train"][LANGUAGE_COLUMN] != simulated["units"]["train"][LANGUAGE_COLUMN]
    lines = assign_languages(raw, 0.02, "line", seed=0)["validation"]
    assert all(text.count("\n") <= 1 for text in lines["text"][:200])


def test_prepare_lm_data_with_simulation(simulated):
    data = prepare_lm_data(ModelArguments(), simulated["args"])
    assert data.vocab_size == 130 and len(data.tokenizer) == 130 and data.groups == language_groups(V)
    labels = token_labels(data.tokenizer)
    frequency = TokenFrequency.from_dataset(data.datasets["train"], data.vocab_size, tokens=labels)
    small_share = sum(frequency.counts[V:]) / frequency.total
    assert abs(small_share - 0.02) < 0.001  # blocks keep the share (measured 0.0200)


def test_prepare_lm_data_without_simulation(tmp_path):
    args = DataArguments(train_file=write_text(tmp_path / "t.txt", "abcd efgh\n" * 40), block_size=8)
    data = prepare_lm_data(ModelArguments(), args, cache_dir=tmp_path / "cache")
    assert data.vocab_size == len(data.tokenizer) == 10 and data.groups == {}
    assert (len(data.datasets["train"]), len(data.datasets["validation"])) == (360 // 8, 40 // 8)


def test_small_language_only_train_split(simulated):
    blocks = build_lm_datasets(simulated["args"], simulated["base"], simulated["raw"], train_language="lang_small")
    train_ids = np.asarray(blocks["train"]["input_ids"])
    val_ids = np.asarray(blocks["validation"]["input_ids"])
    units = simulated["units"]["train"]
    small_chars = sum(len(t) for t, small in zip(units["text"], units[LANGUAGE_COLUMN]) if small)
    assert train_ids.min() >= V and len(blocks["train"]) == small_chars // 64 == 313  # 143 paragraphs, one batch
    assert val_ids.min() < V <= val_ids.max()  # validation keeps both languages
    with pytest.raises(ValueError, match="needs the simulation"):
        build_lm_datasets(DataArguments(), simulated["base"], simulated["raw"], train_language="lang_small")


def test_simulation_with_a_word_tokenizer(tmp_path):
    """Any tokenizer: small-language rows get ids shifted by V; the model vocabulary is 2V."""
    words = ["alpha", "beta", "gamma", "delta"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(0)
    paragraphs = [" ".join(rng.choice(words, size=rng.integers(3, 9))) + "\n\n" for _ in range(300)]
    args = DataArguments(
        train_file=write_text(tmp_path / "t.txt", "".join(paragraphs)),
        block_size=8,
        low_resource_fraction=0.1,
        validation_split_percentage=20,
    )
    data = prepare_lm_data(ModelArguments(tokenizer_name=str(tmp_path / "tok")), args, cache_dir=tmp_path / "c")
    assert data.vocab_size == 8 and len(data.tokenizer) == 4 and data.groups == language_groups(4)
    counts = TokenFrequency.from_dataset(data.datasets["train"], data.vocab_size).counts
    assert min(counts) > 0  # both languages present
    assert 0.05 < sum(counts[4:]) / sum(counts) < 0.15  # ~10% of characters ~ 10% of words here
    assert token_labels(data.tokenizer, data.vocab_size) == words + [w + "₂" for w in words]
    assert token_labels(data.tokenizer, 6) == words + ["<id 4>", "<id 5>"]
