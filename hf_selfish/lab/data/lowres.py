"""A simulated low-resource language: whole text units moved into a second vocabulary.

Text units (blank-line separated paragraphs, or lines), drawn at random (seeded) until they hold
``low_resource_fraction`` of each split's characters, become a second, "small" language that shares no
token with the first: its ids are shifted by ``+V``, so the vocabulary is ``2V``. For the character
tokenizer the small language is real text too: the character with id ``i`` is written as the
private-use character ``chr(0xF0000 + i)`` (`to_small_language`), and `build_low_resource_char_tokenizer`
gives a ``2V`` tokenizer that encodes, decodes, saves and loads like the plain one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc
from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ...metric_names import language_group_name
from ..arguments import TEXT_UNITS
from .char_tokenizer import SMALL_LANGUAGE_CODEPOINT, build_char_tokenizer, char_vocabulary, check_characters

logger = logging.getLogger(__name__)

TEXT_COLUMN = "text"
LANGUAGE_COLUMN = "language"
MAIN_LANGUAGE = language_group_name("main")
SMALL_LANGUAGE = language_group_name("small")

_SPLIT_SEED_STREAM = {"train": 0, "validation": 1}  # each split draws its own language assignment
_PARAGRAPH_SEPARATOR = re.compile(r"(\n[ \t]*\n(?:[ \t]*\n)*)")  # a newline, then one or more blank lines
_LINE_END = re.compile(r"(?<=\n)")


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
        logger.warning(
            "low_resource_fraction=%s selects none of %d text units (all longer than the budget)",
            fraction,
            lengths.size,
        )
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
            split_units_batch,
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


def split_units_batch(batch: dict[str, list], unit: str) -> dict[str, list[str]]:
    return {TEXT_COLUMN: split_text_units("".join(batch[TEXT_COLUMN]), unit)}
