"""Text -> token blocks for a causal LM, like run_clm.py: tokenize with `datasets.map`, then `group_texts`.

`prepare_lm_data` chains the pieces: `load_raw_datasets` -> `load_tokenizer` -> optional language
assignment (`assign_languages`) -> `tokenize_datasets` -> `group_datasets`; columns ``input_ids`` and
``labels`` (a copy; the model shifts). Blocks all have the same length, so no padding is needed
(`transformers.default_data_collator` batches them).

Special tokens follow the documents, not the rows: text is tokenized without special tokens, every
document ends with the tokenizer's EOS (when it has one; a document is a file, a row or a paragraph, see
``document_unit``), and every block starts with BOS when the tokenizer puts one before its input; a BOS
position carries no label. So a model is never asked to predict a BOS in the middle of a block, and an
evaluation scores what a plain loop over the same blocks scores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from ...metric_names import ALL_GROUP, language_only_group_name
from ..arguments import DataArguments, ModelArguments
from . import lowres
from .bible import BIBLE, CODE_COLUMN
from .char_tokenizer import check_characters, is_char_tokenizer
from .loading import load_raw_datasets, load_tokenizer, tune_split
from .lowres import LANGUAGE_COLUMN, MAIN_LANGUAGE, SMALL_LANGUAGE, TEXT_COLUMN
from .sources import TINYSHAKESPEARE

logger = logging.getLogger(__name__)


def tokenize_datasets(
    raw_datasets: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    rows_are_documents: bool = False,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
) -> DatasetDict:
    """``text`` -> ``input_ids`` without special tokens (batched `datasets.map`, cached for file-backed data).

    With ``rows_are_documents`` every row ends with the tokenizer's EOS (when it has one). Rows with
    ``language == 1`` (see `assign_languages`) get their ids shifted by ``len(tokenizer)`` (the EOS is not).
    """
    eos_id = tokenizer.eos_token_id if rows_are_documents else None
    kwargs = {"tokenizer": tokenizer, "eos_id": eos_id}
    return _map(raw_datasets, _tokenize_batch, kwargs, "Tokenizing", num_proc, overwrite_cache)


def leading_bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id when the tokenizer puts one before its input (Llama, Gemma), else None (GPT-2, characters)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def _map(datasets: DatasetDict, fn, fn_kwargs: dict, desc: str, num_proc: int | None, overwrite_cache: bool):
    """A batched `datasets.map` over every split that replaces the columns (cached for file-backed data)."""
    return datasets.map(
        fn,
        batched=True,
        num_proc=num_proc,
        remove_columns=next(iter(datasets.values())).column_names,
        load_from_cache_file=not overwrite_cache,
        fn_kwargs=fn_kwargs,
        desc=desc,
    )


def _tokenize_batch(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, eos_id: int | None
) -> dict[str, list[list[int]]]:
    texts = batch[TEXT_COLUMN]
    try:
        ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    except Exception:  # the char tokenizer has no unknown token: name the characters it lacks
        if is_char_tokenizer(tokenizer):
            check_characters(texts, tokenizer)
        raise
    if LANGUAGE_COLUMN in batch:
        shift = len(tokenizer)
        ids = [[i + shift for i in row] if small else row for row, small in zip(ids, batch[LANGUAGE_COLUMN])]
    if eos_id is not None:
        ids = [row + [eos_id] for row in ids]
    return {"input_ids": ids}


def group_texts(
    examples: dict[str, list[list[int]]], block_size: int, bos_id: int | None = None
) -> dict[str, list[list[int]]]:
    """Concatenate a batch of token lists and cut it into blocks of ``block_size`` (run_clm.py's ``group_texts``).

    The remainder shorter than a block is dropped; ``labels`` is a copy of ``input_ids`` (the model shifts).
    With ``bos_id`` every block is that BOS and ``block_size - 1`` tokens of text, and the BOS position's label
    is ``-100`` (a BOS is never a target).
    """
    concatenated = [i for row in examples["input_ids"] for i in row]
    step = block_size if bos_id is None else block_size - 1
    total = (len(concatenated) // step) * step
    chunks = [concatenated[i : i + step] for i in range(0, total, step)]
    if bos_id is None:
        return {"input_ids": chunks, "labels": [list(chunk) for chunk in chunks]}
    return {"input_ids": [[bos_id, *chunk] for chunk in chunks], "labels": [[-100, *chunk] for chunk in chunks]}


def group_datasets(
    tokenized: DatasetDict,
    block_size: int,
    *,
    bos_id: int | None = None,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
) -> DatasetDict:
    """Blocks of ``block_size`` tokens (BOS first, with ``bos_id``) for every split; ValueError when a split has
    less than one block."""
    _check_block_size(block_size)
    desc = f"Grouping texts in blocks of {block_size}"
    kwargs = {"block_size": block_size, "bos_id": bos_id}
    grouped = _map(tokenized, group_texts, kwargs, desc, num_proc, overwrite_cache)
    for split, dataset in grouped.items():
        if len(dataset) == 0:
            n_tokens = _num_tokens(tokenized[split])
            raise ValueError(
                f"the {split} split has {n_tokens} tokens, fewer than one block of block_size={block_size}; "
                "lower block_size or give more text."
            )
    return grouped


def _num_tokens(dataset: Dataset) -> int:
    if len(dataset) == 0:
        return 0
    column = dataset.with_format("arrow")[:]["input_ids"]
    return int(pc.sum(pc.list_value_length(column)).as_py() or 0)


def build_lm_datasets(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    raw_datasets: DatasetDict | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    train_language: str | None = None,
) -> DatasetDict:
    """Train/validation blocks with ``input_ids`` and ``labels`` for a causal LM.

    Args:
        tokenizer: the base tokenizer (``V`` tokens); under the simulation small-language ids are ``V..2V-1``.
        raw_datasets: the output of `load_raw_datasets` (loaded from ``data_args`` when None).
        train_language: with the simulation, keep only this language's units in TRAIN ("lang_small" for
            the small-language-only reference arm); validation keeps both.
    """
    data_args.__post_init__()  # arguments changed after construction are checked again
    raw = raw_datasets if raw_datasets is not None else load_raw_datasets(data_args, cache_dir=cache_dir)
    if data_args.low_resource_fraction > 0:
        raw = lowres.assign_languages(
            raw, data_args.low_resource_fraction, data_args.low_resource_unit, data_args.low_resource_seed
        )
    elif train_language is not None:
        raise ValueError(f"train_language={train_language!r} needs the simulation (low_resource_fraction > 0).")
    if data_args.eval_split == "tune":  # after the simulation: the train rows keep their languages
        raw = tuning_datasets(raw, data_args)
    if train_language is not None:
        raw["train"] = _keep_language(raw["train"], train_language)

    unit = document_unit(data_args)
    if unit == "paragraph":  # each paragraph of the text becomes a document (a row)
        raw = raw.map(lowres.split_units_batch, batched=True, fn_kwargs={"unit": "paragraph"}, desc="Paragraphs")
    options = {"num_proc": data_args.preprocessing_num_workers, "overwrite_cache": data_args.overwrite_cache}
    tokenized = tokenize_datasets(raw, tokenizer, rows_are_documents=unit != "file", **options)
    blocks = group_datasets(tokenized, data_args.block_size, bos_id=leading_bos_id(tokenizer), **options)
    blocks["train"] = _truncate(blocks["train"], data_args.max_train_samples)
    blocks["validation"] = _truncate(blocks["validation"], data_args.max_eval_samples)
    return blocks


def tuning_datasets(raw: DatasetDict, data_args: DataArguments) -> DatasetDict:
    """`tune_split` per language, then the train rows of the ``bible_eval_only`` languages dropped: they are there
    (`bible_datasets`) only so that each is evaluated on its own last verses, never trained on."""
    raw = tune_split(raw, data_args.tune_split_percentage, group_column=CODE_COLUMN)
    eval_only = set(data_args.bible_eval_only or []) if data_args.dataset_name == BIBLE else set()
    if eval_only:
        raw["train"] = raw["train"].filter(lambda code: code not in eval_only, input_columns=CODE_COLUMN)
    return raw


def language_subsets(
    validation: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments
) -> tuple[dict[str, Dataset], dict[str, float]]:
    """Each language's validation blocks, built alone, and the characters per token of its text."""
    subsets, chars_per_token = {}, {}
    for code in dict.fromkeys(validation[CODE_COLUMN]):
        rows = validation.filter(lambda batch, code=code: [c == code for c in batch[CODE_COLUMN]], batched=True)
        tokenized = tokenize_datasets(
            DatasetDict(validation=rows), tokenizer, rows_are_documents=document_unit(data_args) != "file"
        )
        chars = sum(len(text) for text in rows[TEXT_COLUMN])
        chars_per_token[code] = chars / max(1, _num_tokens(tokenized["validation"]))
        blocks = group_datasets(tokenized, data_args.block_size, bos_id=leading_bos_id(tokenizer))["validation"]
        subsets[code] = _truncate(blocks, data_args.max_eval_samples)
    return subsets, chars_per_token


def language_shares(train: Dataset) -> dict[str, float]:
    """Each language's share of the training characters, in the order the languages first appear.

    Characters of the verses, as ``bible_share`` counts them: each row's closing newline is left out.
    """
    chars: dict[str, int] = {}
    for batch in train.select_columns([TEXT_COLUMN, CODE_COLUMN]).iter(batch_size=1000):
        for text, code in zip(batch[TEXT_COLUMN], batch[CODE_COLUMN]):
            chars[code] = chars.get(code, 0) + len(text.removesuffix("\n"))
    total = sum(chars.values())
    return {code: n / total for code, n in chars.items()} if total else {}


def language_only_groups(train: Dataset, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """``lang_{code}_only``: the token ids of each language's training text that no other language's text holds
    (none when one language is trained on: its group would be every token seen in training)."""
    seen: dict[str, set[int]] = {}
    for batch in train.select_columns([TEXT_COLUMN, CODE_COLUMN]).iter(batch_size=1000):
        ids = tokenizer(batch[TEXT_COLUMN], add_special_tokens=False)["input_ids"]
        for row, code in zip(ids, batch[CODE_COLUMN]):
            seen.setdefault(code, set()).update(row)
    if len(seen) < 2:
        return {}
    groups = {}
    for code, ids in seen.items():
        others = set().union(*(s for c, s in seen.items() if c != code))
        groups[language_only_group_name(code)] = sorted(ids - others)
    return groups


def document_unit(data_args: DataArguments) -> str:
    """What one document is: ``file`` (the rows are pieces of one text), ``row`` or ``paragraph``."""
    if data_args.document_unit != "auto":
        return data_args.document_unit
    if data_args.train_file is not None:
        return "file" if Path(data_args.train_file).suffix.lower() in (".txt", ".text") else "row"
    return "file" if (data_args.dataset_name or "").lower() in (TINYSHAKESPEARE, BIBLE) else "row"


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")


def _keep_language(dataset: Dataset, language: str) -> Dataset:
    codes = {MAIN_LANGUAGE: 0, SMALL_LANGUAGE: 1}
    if language not in codes:
        raise ValueError(f"train_language must be one of {list(codes)}, got {language!r}.")
    code = codes[language]
    return dataset.filter(lambda batch: [x == code for x in batch[LANGUAGE_COLUMN]], batched=True)


def _truncate(dataset: Dataset, max_samples: int | None) -> Dataset:
    if max_samples is None:
        return dataset
    return dataset.select(range(min(max_samples, len(dataset))))


@dataclass
class LMData:
    """Everything the model and trainer need from the data side of a run."""

    datasets: DatasetDict  # train / validation blocks: input_ids, labels
    tokenizer: PreTrainedTokenizerBase  # the one to save with the model (2V tokens for a simulated char corpus)
    vocab_size: int  # the model's vocabulary: len(base tokenizer), doubled by the simulation
    groups: dict[str, list[int]] = field(default_factory=dict)  # language groups of the simulation, else {}
    eval_subsets: dict[str, Dataset] = field(default_factory=dict)  # per-language validation blocks (Bible)
    chars_per_token: dict[str, float] = field(default_factory=dict)  # of each subset's text (bits per character)
    train_shares: dict[str, float] = field(default_factory=dict)  # each language's share of the train characters


def prepare_lm_data(
    model_args: ModelArguments,
    data_args: DataArguments,
    *,
    cache_dir: str | os.PathLike | None = None,
    train_language: str | None = None,
) -> LMData:
    """`load_raw_datasets` -> `load_tokenizer` -> `build_lm_datasets`, plus the simulation's tokenizer and groups."""
    raw = load_raw_datasets(data_args, cache_dir=cache_dir)
    # the tokenizer sees every split (same vocabulary as the validation runs); frequencies come from the train rows
    tokenizer = load_tokenizer(model_args, raw, bpe_vocab_size=data_args.bpe_vocab_size)
    datasets = build_lm_datasets(data_args, tokenizer, raw, train_language=train_language)
    if data_args.low_resource_fraction == 0 and CODE_COLUMN in raw["train"].column_names:
        if data_args.eval_split == "tune":  # the same cut as build_lm_datasets: each language's last verses
            raw = tuning_datasets(raw, data_args)
        subsets, chars_per_token = language_subsets(raw["validation"], tokenizer, data_args)
        groups = {**language_only_groups(raw["train"], tokenizer), ALL_GROUP: list(range(len(tokenizer)))}
        shares = language_shares(raw["train"])
        return LMData(datasets, tokenizer, len(tokenizer), groups, subsets, chars_per_token, shares)
    if data_args.low_resource_fraction == 0:
        return LMData(datasets=datasets, tokenizer=tokenizer, vocab_size=len(tokenizer))
    base_size = len(tokenizer)
    if is_char_tokenizer(tokenizer):
        tokenizer = lowres.build_low_resource_char_tokenizer(tokenizer)
    else:
        logger.warning(
            "low-resource simulation with a %s: small-language ids %d..%d cannot be decoded by the saved tokenizer",
            type(tokenizer).__name__,
            base_size,
            2 * base_size - 1,
        )
    return LMData(
        datasets=datasets, tokenizer=tokenizer, vocab_size=2 * base_size, groups=lowres.language_groups(base_size)
    )
