"""Training text: tinyshakespeare, a character tokenizer, text -> blocks, a simulated low-resource language.

The pieces, in the order a run uses them (`prepare_lm_data` chains them):

1. `load_raw_datasets`: a `DatasetDict` with ``train`` and ``validation`` splits and one ``text``
   column, from the built-in tinyshakespeare (nanoGPT's split: first 90% of the characters train,
   last 10% validation), a `datasets` name/config, or local .txt/.json/.jsonl/.parquet files.
2. `load_tokenizer`: the character tokenizer built from the data (``tokenizer_name="char"``, also the
   default when no model or tokenizer is named), else `AutoTokenizer.from_pretrained`.
3. `build_lm_datasets`: optional language assignment (`assign_languages`), tokenization
   (`tokenize_datasets`) and blocks of ``block_size`` tokens (`group_datasets`, like run_clm.py's
   ``group_texts``): columns ``input_ids`` and ``labels`` (a copy; the model shifts).

The character tokenizer is a `tokenizers` WordLevel model over single characters (ids in sorted
character order, as nanoGPT's ``sorted(set(text))``), pre-tokenized with ``Split("", "isolated")``
(every character, spaces and newlines included, is its own token) and decoded with ``Fuse`` (plain
concatenation), wrapped as a `PreTrainedTokenizerFast`. It has no special tokens, so the model
vocabulary is exactly the character set (65 for tinyshakespeare); blocks all have the same length, so
no padding is needed (`transformers.default_data_collator` batches them). A character outside the
vocabulary is an error, never an unknown token.

Low-resource simulation: whole text units (blank-line separated paragraphs, or lines), drawn at random
(seeded) until they hold ``low_resource_fraction`` of each split's characters, are moved into a second,
"small" language that shares no token with the first: its token ids are shifted by ``+V``,
so the vocabulary is ``2V``. For the character tokenizer the small language is also real text: each
character with id ``i`` is written as the private-use character ``chr(0xF0000 + i)``
(`to_small_language`), and `build_low_resource_char_tokenizer` gives a ``2V`` tokenizer that encodes,
decodes, saves and loads like the plain one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset
from huggingface_hub import constants as hub_constants
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .arguments import DataArguments, ModelArguments
from .files import atomic_path
from .pretrained import resolve_model_path

logger = logging.getLogger(__name__)

TINYSHAKESPEARE = "tinyshakespeare"
TINYSHAKESPEARE_ENV = "HF_SELFISH_TINYSHAKESPEARE"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_FILE_NAME = "tinyshakespeare.txt"

CHAR_TOKENIZER = "char"
TEXT_COLUMN = "text"
LANGUAGE_COLUMN = "language"
MAIN_LANGUAGE = "lang_main"
SMALL_LANGUAGE = "lang_small"
SMALL_LANGUAGE_CODEPOINT = 0xF0000  # Supplementary Private Use Area-A: 65,534 code points, never in real text
TEXT_UNITS = ("paragraph", "line")

_SPLIT_SEED_STREAM = {"train": 0, "validation": 1}  # each split draws its own language assignment
_FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_PARAGRAPH_SEPARATOR = re.compile(r"(\n[ \t]*\n(?:[ \t]*\n)*)")  # a newline, then one or more blank lines
_LINE_END = re.compile(r"(?<=\n)")


class DataNotFoundError(ValueError, FileNotFoundError):
    """The training text could not be found (or downloaded); the message says how to point at a local copy."""


# ------------------------------------------------------------------------------------------------
# tinyshakespeare source
# ------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where the downloaded tinyshakespeare is kept: ``$HF_HOME/hf_selfish`` (next to the Hub cache)."""
    return Path(hub_constants.HF_HOME) / "hf_selfish"


def resolve_tinyshakespeare(
    path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool | None = None,
) -> Path:
    """Find the tinyshakespeare text file, downloading it into the cache as a last resort.

    Looks, in order, at: ``path``; ``$HF_SELFISH_TINYSHAKESPEARE``; ``<cache_dir>/tinyshakespeare.txt``
    (default cache dir: `default_cache_dir`); else downloads the char-rnn copy there (checked against
    its sha256, written to a temp file and renamed, so an interrupted download leaves no half file).

    Args:
        download: allow the download; None allows it unless the Hub offline mode (``HF_HUB_OFFLINE``) is on.

    Raises:
        DataNotFoundError: ``path`` or the environment variable names a missing or empty file, or
            nothing was found and the download was not allowed or failed.
    """
    if path is not None:
        return _check_text_file(path, what="tinyshakespeare path")
    env_path = os.environ.get(TINYSHAKESPEARE_ENV)
    if env_path:
        return _check_text_file(env_path, what=f"${TINYSHAKESPEARE_ENV}")
    cached = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cached / TINYSHAKESPEARE_FILE_NAME
    if cached.is_file() and cached.stat().st_size > 0:
        logger.info("tinyshakespeare from the cache: %s", cached)
        return cached

    how_to_fix = (
        f"Point at a local copy with the `data_file` argument (--data_file PATH) or the environment variable "
        f"{TINYSHAKESPEARE_ENV}=PATH, or place it at {cached}."
    )
    if download is None:
        download = not hub_constants.is_offline_mode()
    if not download:
        raise DataNotFoundError(f"tinyshakespeare not found, and downloads are off (offline mode). {how_to_fix}")
    try:
        download_file(TINYSHAKESPEARE_URL, cached, sha256=TINYSHAKESPEARE_SHA256)
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        raise DataNotFoundError(
            f"tinyshakespeare not found, and downloading {TINYSHAKESPEARE_URL} failed ({err}). {how_to_fix}"
        ) from err
    logger.info("tinyshakespeare downloaded to %s", cached)
    return cached


def download_file(
    url: str, destination: str | os.PathLike, *, sha256: str | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` to ``destination`` atomically (temp file in the same folder + ``os.replace``).

    Raises:
        ValueError: the content does not match ``sha256``.
        OSError: the download failed (``urllib.error.URLError`` included).
    """
    destination = Path(destination)
    with atomic_path(destination, suffix=".part") as tmp:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                digest.update(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ValueError(f"downloaded {url} has sha256 {digest.hexdigest()}, expected {sha256}")
    return destination


def _check_text_file(path: str | os.PathLike, *, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"{what} {str(path)!r} does not exist or is not a file; give the path of a text file.")
    if path.stat().st_size == 0:
        raise DataNotFoundError(f"{what} {str(path)!r} is empty; give a file that holds the training text.")
    return path


def nanogpt_split(text: str, validation_percentage: float = 10.0) -> tuple[str, str]:
    """nanoGPT's split of one text: the first ``int(n * (100 - p) / 100)`` characters train, the rest validation."""
    _check_percentage(validation_percentage)
    n_train = int(len(text) * (100 - validation_percentage) / 100)
    return text[:n_train], text[n_train:]


def _check_percentage(percentage: float) -> None:
    if not 0 < percentage < 100:
        raise ValueError(f"validation_split_percentage must be in (0, 100), got {percentage!r}.")


# ------------------------------------------------------------------------------------------------
# character tokenizer
# ------------------------------------------------------------------------------------------------


def build_char_tokenizer(text: str | None = None, *, chars: Sequence[str] | None = None) -> PreTrainedTokenizerFast:
    """A character-level `PreTrainedTokenizerFast` with no special tokens.

    Args:
        text: build the vocabulary from this text: ids in sorted character order (nanoGPT's ``sorted(set(text))``).
        chars: or give the vocabulary itself: distinct single characters, id ``i`` = ``chars[i]``.
    """
    if (text is None) == (chars is None):
        raise ValueError("give exactly one of `text` (to collect its characters) or `chars` (the vocabulary).")
    chars = sorted(set(text)) if text is not None else list(chars)
    if not chars:
        raise ValueError("the character vocabulary is empty: the text holds no characters.")
    bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
    if bad:
        raise ValueError(f"a character vocabulary holds single characters, got {bad[:10]!r}.")
    if len(set(chars)) != len(chars):
        duplicates = sorted({c for c in chars if chars.count(c) > 1})
        raise ValueError(f"the character vocabulary repeats {duplicates!r}.")

    backend = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # concatenate, no spaces added
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False)


def char_vocabulary(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The characters of a character tokenizer, in id order; ValueError for a tokenizer of multi-character tokens."""
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in by_id] != list(range(len(by_id))) or any(len(t) != 1 for t in by_id):
        raise ValueError(
            f"{type(tokenizer).__name__} is not a character tokenizer (its vocabulary holds multi-character "
            "tokens or gaps in its ids); build one with build_char_tokenizer."
        )
    return by_id


def is_char_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether every token of ``tokenizer`` is one character (ids 0..V-1 without gaps)."""
    try:
        char_vocabulary(tokenizer)
    except ValueError:
        return False
    return True


def unknown_characters(texts: str | Iterable[str], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Characters of ``texts`` that are not tokens of the (character) tokenizer, sorted."""
    seen = _characters(texts)
    return sorted(seen - tokenizer.get_vocab().keys())


def check_characters(texts: str | Iterable[str], tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a ValueError listing the characters of ``texts`` outside the tokenizer's vocabulary."""
    missing = unknown_characters(texts, tokenizer)
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ValueError(
            f"{len(missing)} character(s) outside the tokenizer's vocabulary of {len(tokenizer)}: {shown}. "
            "Build the character tokenizer from text that includes them (train and validation), or clean the text."
        )


def _characters(texts: str | Iterable[str]) -> set[str]:
    if isinstance(texts, str):
        return set(texts)
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    return seen


def token_labels(tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None) -> list[str]:
    """A readable label for every token id (plot axes, reports): ``vocab_size`` labels (default ``len(tokenizer)``).

    Character tokenizers: whitespace is spelled out (``\\n``, ``␣``) and a small-language character is
    shown as its main-language character with a ``₂`` suffix. Other tokenizers: their token strings.
    Ids past the tokenizer (a model vocabulary of ``2 * len(tokenizer)`` under the simulation, or
    padding rows of an embedding) are labelled ``<token>₂`` and ``<id N>``.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if not is_char_tokenizer(tokenizer):
        labels = [str(t) for t in tokens]
    else:
        labels = []
        for token in tokens:
            offset = ord(token) - SMALL_LANGUAGE_CODEPOINT
            labels.append(_char_label(tokens[offset]) + "₂" if 0 <= offset < len(tokens) // 2 else _char_label(token))
    vocab_size = len(labels) if vocab_size is None else vocab_size
    if vocab_size == 2 * len(labels):  # the simulation with a tokenizer of the main language only
        return labels + [label + "₂" for label in labels]
    return labels[:vocab_size] + [f"<id {i}>" for i in range(len(labels), vocab_size)]


def _char_label(char: str) -> str:
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"}.get(char, char)


# ------------------------------------------------------------------------------------------------
# low-resource language simulation
# ------------------------------------------------------------------------------------------------


def split_text_units(text: str, unit: str = "paragraph") -> list[str]:
    """Cut ``text`` into units that concatenate back to it exactly.

    "paragraph": each blank-line separated paragraph with the blank lines after it; "line": each line
    with its newline.
    """
    if unit == "paragraph":
        parts = _PARAGRAPH_SEPARATOR.split(text)  # [p0, sep0, p1, sep1, ..., pn]
        units = [body + sep for body, sep in zip(parts[0::2], parts[1::2] + [""])]
    elif unit == "line":
        units = _LINE_END.split(text)
    else:
        raise ValueError(f"low_resource_unit must be one of {TEXT_UNITS}, got {unit!r}.")
    return [u for u in units if u]


def choose_small_units(
    lengths: Sequence[int] | np.ndarray, fraction: float, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Which text units belong to the small language, so that they hold ``fraction`` of the text.

    Walks the units in a random order (seeded) and takes each one that still fits in the budget
    ``fraction * sum(lengths)``: whole units, chosen at random, holding the fraction up to less than one
    short unit (not only on average: the validation split keeps the share too). A unit longer than the
    whole budget is never chosen, and short units are a little more likely than long ones.

    Args:
        lengths: ``[num_units]`` the size of each unit (characters, or tokens).
        seed: an int or a sequence of ints (`numpy.random.default_rng`); same seed, same choice.

    Returns:
        bool array ``[num_units]``: True for the small language.
    """
    _check_fraction(fraction)
    lengths = np.asarray(lengths, dtype=np.int64)  # [num_units]
    small = np.zeros(lengths.size, dtype=bool)  # [num_units]
    budget = fraction * int(lengths.sum())
    for i in np.random.default_rng(seed).permutation(lengths.size).tolist():
        if lengths[i] <= budget:
            small[i] = True
            budget -= lengths[i]
    if fraction > 0 and not small.any():
        logger.warning("low_resource_fraction=%s selects none of %d text units (all longer than the budget)",
                       fraction, lengths.size)
    return small


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise ValueError(f"low_resource_fraction must be in [0, 1), got {fraction!r}.")


def language_groups(vocab_size: int) -> dict[str, list[int]]:
    """Token groups of the simulation for a base vocabulary of ``V = vocab_size``: main ``0..V-1``,
    small ``V..2V-1``."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size!r}.")
    return {MAIN_LANGUAGE: list(range(vocab_size)), SMALL_LANGUAGE: list(range(vocab_size, 2 * vocab_size))}


def small_language_char(token_id: int) -> str:
    """The character that writes main-language token ``token_id`` in the small language."""
    return chr(SMALL_LANGUAGE_CODEPOINT + token_id)


def to_small_language(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Rewrite ``text`` in the small language of a character tokenizer: the character of id ``i`` becomes
    ``chr(0xF0000 + i)``."""
    check_characters(text, tokenizer)
    table = {ord(c): small_language_char(i) for i, c in enumerate(char_vocabulary(tokenizer))}
    return text.translate(table)


def from_small_language(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Inverse of `to_small_language` (``tokenizer`` is the base, ``V``-token one); other characters pass through."""
    table = {ord(small_language_char(i)): c for i, c in enumerate(char_vocabulary(tokenizer))}
    return text.translate(table)


def build_low_resource_char_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """The ``2V`` character tokenizer of the simulation: ids ``0..V-1`` as ``tokenizer``, id ``V + i`` the
    small-language character ``chr(0xF0000 + i)``."""
    chars = char_vocabulary(tokenizer)
    clash = [c for c in chars if 0 <= ord(c) - SMALL_LANGUAGE_CODEPOINT < len(chars)]
    if clash:
        raise ValueError(
            f"the text already uses the private-use characters {clash[:10]!r} that write the small language."
        )
    return build_char_tokenizer(chars=chars + [small_language_char(i) for i in range(len(chars))])


def simulate_low_resource_text(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    fraction: float,
    unit: str = "paragraph",
    seed: int | Sequence[int] = 0,
) -> str:
    """``text`` with a ``fraction`` of its units rewritten in the small language (see `to_small_language`).

    Same units and draw as `assign_languages` for one split: the built-in train split with
    ``seed=(s, 0)`` and the validation split with ``seed=(s, 1)`` match a pipeline run with seed ``s``.
    """
    units = split_text_units(text, unit)
    small = choose_small_units([len(u) for u in units], fraction, seed)
    return "".join(to_small_language(u, tokenizer) if s else u for u, s in zip(units, small))


def assign_languages(raw_datasets: DatasetDict, fraction: float, unit: str = "paragraph", seed: int = 0) -> DatasetDict:
    """Re-cut every split into text units (rows) and add a ``language`` column: 1 = small language, 0 = main.

    Units are found in the concatenated text of each 1000-row batch (a unit never spans two batches).
    Each split draws its own small units holding ``fraction`` of its characters (`choose_small_units`),
    so validation keeps the fraction too.
    """
    _check_fraction(fraction)
    if unit not in TEXT_UNITS:
        raise ValueError(f"low_resource_unit must be one of {TEXT_UNITS}, got {unit!r}.")
    assigned = {}
    for split, dataset in raw_datasets.items():
        units = dataset.map(
            _split_units_batch,
            batched=True,
            remove_columns=dataset.column_names,
            fn_kwargs={"unit": unit},
            desc=f"Splitting {split} into {unit}s",
        )
        lengths = pc.utf8_length(units.with_format("arrow")[:][TEXT_COLUMN]).to_numpy(zero_copy_only=False)
        small = choose_small_units(lengths, fraction, seed=(seed, _SPLIT_SEED_STREAM.get(split, 2)))
        assigned[split] = units.add_column(LANGUAGE_COLUMN, small.astype(np.int8).tolist())
        logger.info("%s: %d of %d %ss in the small language", split, int(small.sum()), len(units), unit)
    return DatasetDict(assigned)


def _split_units_batch(batch: dict[str, list], unit: str) -> dict[str, list[str]]:
    return {TEXT_COLUMN: split_text_units("".join(batch[TEXT_COLUMN]), unit)}


# ------------------------------------------------------------------------------------------------
# raw text datasets
# ------------------------------------------------------------------------------------------------


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
        if dataset.features[TEXT_COLUMN].dtype not in ("string", "large_string"):
            raise ValueError(f"text_column={text_column!r} holds {dataset.features[TEXT_COLUMN]}, not text.")
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


# ------------------------------------------------------------------------------------------------
# tokenizer + blocks
# ------------------------------------------------------------------------------------------------


def load_tokenizer(model_args: ModelArguments, raw_datasets: DatasetDict | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a run.

    ``tokenizer_name="char"`` (or no tokenizer and no model named): the character tokenizer of
    ``raw_datasets`` (all splits). Otherwise `AutoTokenizer.from_pretrained` of ``tokenizer_name``, else
    of ``model_name_or_path`` (with its ``gguf_file``).
    """
    name = model_args.tokenizer_name
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
        raise ValueError(f"cannot load a tokenizer from {name!r}: give a local folder or a Hub id that holds one ({err})") from None


def tokenize_datasets(
    raw_datasets: DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
) -> DatasetDict:
    """``text`` -> ``input_ids`` (batched `datasets.map`, cached for file-backed data).

    Rows with ``language == 1`` (see `assign_languages`) get their ids shifted by ``len(tokenizer)``.
    """
    return raw_datasets.map(
        _tokenize_batch,
        batched=True,
        num_proc=num_proc,
        remove_columns=raw_datasets["train"].column_names,
        load_from_cache_file=not overwrite_cache,
        fn_kwargs={"tokenizer": tokenizer},
        desc="Tokenizing",
    )


def _tokenize_batch(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    texts = batch[TEXT_COLUMN]
    try:
        ids = tokenizer(texts, return_attention_mask=False)["input_ids"]
    except Exception:  # the char tokenizer has no unknown token: name the characters it lacks
        if is_char_tokenizer(tokenizer):
            check_characters(texts, tokenizer)
        raise
    if LANGUAGE_COLUMN in batch:
        shift = len(tokenizer)
        ids = [[i + shift for i in row] if small else row for row, small in zip(ids, batch[LANGUAGE_COLUMN])]
    return {"input_ids": ids}


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate a batch of token lists and cut it into blocks of ``block_size`` (run_clm.py's ``group_texts``).

    The remainder shorter than a block is dropped; ``labels`` is a copy of ``input_ids`` (the model shifts).
    """
    concatenated = [i for row in examples["input_ids"] for i in row]
    total = (len(concatenated) // block_size) * block_size
    blocks = [concatenated[i : i + block_size] for i in range(0, total, block_size)]
    return {"input_ids": blocks, "labels": [list(block) for block in blocks]}


def group_datasets(
    tokenized: DatasetDict,
    block_size: int,
    *,
    num_proc: int | None = None,
    overwrite_cache: bool = False,
) -> DatasetDict:
    """Blocks of ``block_size`` tokens for every split; ValueError when a split has less than one block."""
    _check_block_size(block_size)
    grouped = tokenized.map(
        group_texts,
        batched=True,
        num_proc=num_proc,
        remove_columns=tokenized["train"].column_names,
        load_from_cache_file=not overwrite_cache,
        fn_kwargs={"block_size": block_size},
        desc=f"Grouping texts in blocks of {block_size}",
    )
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
    _check_block_arguments(data_args)
    raw = raw_datasets if raw_datasets is not None else load_raw_datasets(data_args, cache_dir=cache_dir)
    if data_args.low_resource_fraction > 0:
        raw = assign_languages(
            raw, data_args.low_resource_fraction, data_args.low_resource_unit, data_args.low_resource_seed
        )
        if train_language is not None:
            raw["train"] = _keep_language(raw["train"], train_language)
    elif train_language is not None:
        raise ValueError(f"train_language={train_language!r} needs the simulation (low_resource_fraction > 0).")

    tokenized = tokenize_datasets(
        raw, tokenizer, num_proc=data_args.preprocessing_num_workers, overwrite_cache=data_args.overwrite_cache
    )
    blocks = group_datasets(
        tokenized,
        data_args.block_size,
        num_proc=data_args.preprocessing_num_workers,
        overwrite_cache=data_args.overwrite_cache,
    )
    blocks["train"] = _truncate(blocks["train"], data_args.max_train_samples)
    blocks["validation"] = _truncate(blocks["validation"], data_args.max_eval_samples)
    return blocks


def _check_block_arguments(data_args: DataArguments) -> None:
    """Fail before any processing on arguments that would only be read at the end."""
    _check_block_size(data_args.block_size)
    for name in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be a positive number of blocks, got {value!r}.")
    _check_fraction(data_args.low_resource_fraction)
    if data_args.low_resource_unit not in TEXT_UNITS:
        raise ValueError(f"low_resource_unit must be one of {TEXT_UNITS}, got {data_args.low_resource_unit!r}.")


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


def prepare_lm_data(
    model_args: ModelArguments,
    data_args: DataArguments,
    *,
    cache_dir: str | os.PathLike | None = None,
    train_language: str | None = None,
) -> LMData:
    """`load_raw_datasets` -> `load_tokenizer` -> `build_lm_datasets`, plus the simulation's tokenizer and groups."""
    raw = load_raw_datasets(data_args, cache_dir=cache_dir)
    tokenizer = load_tokenizer(model_args, raw)
    datasets = build_lm_datasets(data_args, tokenizer, raw, train_language=train_language)
    if data_args.low_resource_fraction == 0:
        return LMData(datasets=datasets, tokenizer=tokenizer, vocab_size=len(tokenizer))
    base_size = len(tokenizer)
    if is_char_tokenizer(tokenizer):
        tokenizer = build_low_resource_char_tokenizer(tokenizer)
    else:
        logger.warning(
            "low-resource simulation with a %s: small-language ids %d..%d cannot be decoded by the saved tokenizer",
            type(tokenizer).__name__,
            base_size,
            2 * base_size - 1,
        )
    return LMData(datasets=datasets, tokenizer=tokenizer, vocab_size=2 * base_size, groups=language_groups(base_size))
