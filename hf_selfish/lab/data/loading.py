"""Raw text as a `DatasetDict` (``train``/``validation``, one ``text`` column) and the run's tokenizer.

Sources: the built-in tinyshakespeare (nanoGPT's split), a `datasets` name/config, or local
.txt/.json/.jsonl/.parquet files. The tokenizer: the character tokenizer built from the data
(``tokenizer_name="char"``, also the default when no model or tokenizer is named), else
`AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..arguments import DataArguments, ModelArguments
from ..models import resolve_model_path
from .bible import BIBLE, bible_datasets
from .bpe import BPE_TOKENIZER, build_bpe_tokenizer
from .char_tokenizer import CHAR_TOKENIZER, build_char_tokenizer
from .lowres import TEXT_COLUMN, split_text_units
from .sources import TINYSHAKESPEARE, _check_percentage, _check_text_file, nanogpt_split, resolve_tinyshakespeare

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_raw_datasets(data_args: DataArguments, *, cache_dir: str | os.PathLike | None = None) -> DatasetDict:
    """The text of a run as a `DatasetDict` with ``train`` and ``validation`` splits and one ``text`` column.

    Sources, by priority: ``train_file`` (+ ``validation_file``) local files; ``dataset_name ==
    "tinyshakespeare"`` (nanoGPT split, one row per paragraph); any other ``datasets`` name/config.
    Without a validation split, the last ``validation_split_percentage`` percent of the train rows
    become validation (nanoGPT's convention: the end of the data is held out).

    Args:
        cache_dir: the `datasets` cache for loaded files (default: ``$HF_DATASETS_CACHE``).
    """
    _check_percentage(data_args.validation_split_percentage)
    if data_args.train_file is not None:
        raw, source = _load_local_files(data_args, cache_dir), data_args.train_file
    elif data_args.validation_file is not None:
        raise ValueError(
            f"validation_file={data_args.validation_file!r} was given without a train_file; give both, or neither."
        )
    elif data_args.dataset_name is None:
        raise ValueError("no data: set dataset_name ('tinyshakespeare' or a `datasets` name) or train_file.")
    elif data_args.dataset_name.lower() == BIBLE:
        return _check_not_empty(bible_datasets(data_args), "the Bible corpus")
    elif data_args.dataset_name.lower() == TINYSHAKESPEARE:
        path = resolve_tinyshakespeare(data_args.data_file)
        return _check_not_empty(tinyshakespeare_datasets(path, data_args.validation_split_percentage), str(path))
    else:
        source = data_args.dataset_name
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    raw = _with_validation_split(raw, data_args.validation_split_percentage)
    return _check_not_empty(_select_text_column(raw, data_args.text_column), source)


def tinyshakespeare_datasets(path: str | os.PathLike, validation_percentage: float = 10.0) -> DatasetDict:
    """The nanoGPT split of a tinyshakespeare file, one row per paragraph (rows concatenate to the split's text)."""
    text = _check_text_file(path, what="tinyshakespeare path").read_text(encoding="utf-8")
    train, validation = nanogpt_split(text, validation_percentage)
    return DatasetDict(
        train=Dataset.from_dict({TEXT_COLUMN: split_text_units(train, "paragraph")}),
        validation=Dataset.from_dict({TEXT_COLUMN: split_text_units(validation, "paragraph")}),
    )


def tune_split(raw: DatasetDict, percentage: float = 10.0, *, group_column: str | None = None) -> DatasetDict:
    """The tuning split: the last ``percentage`` of the train split's characters (whole rows) become the
    ``validation`` split, the rows before them ``train``; the original validation split is dropped.

    The cut is the first row boundary at or after ``(100 - percentage)`` percent of the train characters (the
    end of the data is held out, as in nanoGPT's split). With ``group_column`` (a Bible mix's language code)
    each group's rows are cut alone, so every language keeps the same share in both parts. Other columns
    (e.g. ``language``) travel with the rows.
    """
    if not 0 < percentage < 100:
        raise ValueError(f"tune_split_percentage must be in (0, 100), got {percentage!r}.")
    train = raw["train"]
    groups = train[group_column] if group_column in train.column_names else [None] * len(train)
    lengths = pc.utf8_length(train.with_format("arrow")[:][TEXT_COLUMN]).to_numpy(zero_copy_only=False)
    keep, held = [], []
    for group in dict.fromkeys(groups):
        rows = [i for i, g in enumerate(groups) if g == group]  # in their order
        n_train = _rows_before_cut(lengths[rows], percentage)
        if not 0 < n_train < len(rows):
            where = "" if group is None else f" ({group_column}={group!r})"
            raise ValueError(
                f"tune_split_percentage={percentage} of a train split of {len(rows)} rows{where} "
                f"({int(lengths[rows].sum())} characters) leaves an empty part; give more text (rows) or change "
                "the percentage."
            )
        keep += rows[:n_train]
        held += rows[n_train:]
    logger.info("eval_split=tune: training on %d rows, evaluating on %d held-out train rows", len(keep), len(held))
    return DatasetDict(train=train.select(sorted(keep)), validation=train.select(sorted(held)))  # data order


def _rows_before_cut(lengths, percentage: float) -> int:
    """How many leading rows (of these character ``lengths``) come before the cut at ``100 - percentage`` %."""
    cumulative = lengths.cumsum()  # [rows]: characters up to and including each row
    total = int(cumulative[-1]) if len(cumulative) else 0
    return int((cumulative < total * (100 - percentage) / 100).sum()) + 1 if total else 0


def _load_local_files(data_args: DataArguments, cache_dir: str | os.PathLike | None) -> DatasetDict:
    data_files = {"train": data_args.train_file}
    if data_args.validation_file is not None:
        data_files["validation"] = data_args.validation_file
    builders = set()
    for split, file in data_files.items():
        path = Path(file)
        if not path.is_file():
            raise ValueError(
                f"{split}_file {file!r} does not exist; give the path of a .txt, .json/.jsonl or .parquet file."
            )
        if path.stat().st_size == 0:  # `datasets` fails on it with a SchemaInferenceError traceback
            raise ValueError(f"{split}_file {file!r} is empty; give a file that holds the text.")
        if path.suffix.lower() not in _FILE_BUILDERS:
            raise ValueError(
                f"{split}_file {file!r} has the extension {path.suffix!r}; supported: {sorted(_FILE_BUILDERS)}."
            )
        builders.add(_FILE_BUILDERS[path.suffix.lower()])
    if len(builders) > 1:
        raise ValueError(f"train_file and validation_file must have the same format, got {data_files}.")
    builder = builders.pop()
    kwargs = {"keep_linebreaks": True} if builder == "text" else {}  # rows concatenate back to the file's text
    return load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kwargs)


def _with_validation_split(raw: DatasetDict, percentage: float) -> DatasetDict:
    if "train" not in raw:
        raise ValueError(f"the dataset has no 'train' split, only {list(raw)}.")
    if "validation" in raw:
        return DatasetDict(train=raw["train"], validation=raw["validation"])
    train = raw["train"]
    n_train = int(len(train) * (100 - percentage) / 100)
    if n_train == len(train) or n_train == 0:
        raise ValueError(
            f"validation_split_percentage={percentage} of {len(train)} rows leaves an empty split; "
            "give a validation_file or more data, or change the percentage."
        )
    logger.info("no validation split: holding out the last %d of %d rows", len(train) - n_train, len(train))
    return DatasetDict(train=train.select(range(n_train)), validation=train.select(range(n_train, len(train))))


def _select_text_column(raw: DatasetDict, text_column: str) -> DatasetDict:
    selected = {}
    for split, dataset in raw.items():
        if text_column not in dataset.column_names:
            raise ValueError(
                f"text_column={text_column!r} not in the {split} split; its columns are {dataset.column_names}."
            )
        dataset = dataset.select_columns([text_column])
        if text_column != TEXT_COLUMN:
            dataset = dataset.rename_column(text_column, TEXT_COLUMN)
        feature = dataset.features[TEXT_COLUMN]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):  # lists and mixed types have none
            raise ValueError(
                f"text_column={text_column!r} of the {split} split holds {type(feature).__name__} values, not text "
                "(every row must be one string); fix the file or choose another text_column"
            )
        selected[split] = dataset
    return DatasetDict(selected)


def _check_not_empty(raw: DatasetDict, source: str) -> DatasetDict:
    for split, dataset in raw.items():
        if _num_characters(dataset) == 0:
            raise ValueError(f"the {split} split of {source!r} holds no text ({len(dataset)} rows, 0 characters).")
    return raw


def _num_characters(dataset: Dataset) -> int:
    if len(dataset) == 0:
        return 0
    column = dataset.with_format("arrow")[:][TEXT_COLUMN]
    return int(pc.sum(pc.utf8_length(column)).as_py() or 0)


def corpus_characters(raw_datasets: DatasetDict, batch_size: int = 1000) -> list[str]:
    """The sorted characters of every split's ``text`` (the character tokenizer's vocabulary)."""
    seen: set[str] = set()
    for dataset in raw_datasets.values():
        for batch in dataset.select_columns([TEXT_COLUMN]).iter(batch_size=batch_size):
            seen.update("".join(batch[TEXT_COLUMN]))
    return sorted(seen)


def load_tokenizer(
    model_args: ModelArguments, raw_datasets: DatasetDict | None = None, *, bpe_vocab_size: int = 4096
) -> PreTrainedTokenizerBase:
    """The tokenizer of a run.

    ``tokenizer_name="char"`` (or no tokenizer and no model named): the character tokenizer of
    ``raw_datasets`` (all splits). ``"bpe"``: a byte-level BPE of ``bpe_vocab_size`` tokens trained on the
    train split. Otherwise `AutoTokenizer.from_pretrained` of ``tokenizer_name``, else of
    ``model_name_or_path`` (with its ``gguf_file``).
    """
    name = model_args.tokenizer_name
    if name == BPE_TOKENIZER:
        if raw_datasets is None:
            raise ValueError("the BPE tokenizer is trained on the data: pass raw_datasets to load_tokenizer.")
        batches = raw_datasets["train"].select_columns([TEXT_COLUMN]).iter(batch_size=1000)
        return build_bpe_tokenizer((text for batch in batches for text in batch[TEXT_COLUMN]), bpe_vocab_size)
    if name == CHAR_TOKENIZER or (name is None and model_args.model_name_or_path is None):
        if raw_datasets is None:
            raise ValueError("the character tokenizer is built from the data: pass raw_datasets to load_tokenizer.")
        return build_char_tokenizer(chars=corpus_characters(raw_datasets))
    kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
    if name is None and model_args.gguf_file is not None:
        kwargs["gguf_file"] = model_args.gguf_file
    name = resolve_model_path(name or model_args.model_name_or_path)  # a model package -> its folder
    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as err:  # transformers' "not found" for folders and Hub ids alike
        raise ValueError(
            f"cannot load a tokenizer from {name!r}: give a local folder or a Hub id that holds one ({err})"
        ) from None
