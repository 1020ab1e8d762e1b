"""The parallel Bible corpus: verse-aligned translations, mixed into a main and small languages.

Each language is one JSONL file ``<code>.jsonl`` of ``{"book", "chapter", "verse", "text"}`` verses (books
1-66 in canonical order; see the corpus README). A run trains on the main language's verses plus, for each
small language, verses drawn at random (seeded), verse by verse, until the language holds ``bible_share`` of
the training characters. Validation holds the same held-out books in every language, so per-language numbers
compare like with like; the test books are held out from both.

The folder comes from ``bible_dir``, else ``$HF_SELFISH_BIBLE_DIR``; there is no download: offline or not,
one error line says how to point at a copy. The text is never stored with the runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

from ..arguments import DataArguments
from .lowres import TEXT_COLUMN

__all__ = [
    "BIBLE",
    "BIBLE_ENV",
    "TEST_BOOKS",
    "VALIDATION_BOOKS",
    "Verse",
    "bible_datasets",
    "bible_languages",
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


def resolve_bible_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$HF_SELFISH_BIBLE_DIR``: a folder of ``<language>.jsonl`` files (ValueError otherwise)."""
    source = path if path is not None else os.environ.get(BIBLE_ENV)
    how = f"point at a copy with --bible_dir PATH or {BIBLE_ENV}=PATH (a folder of <language>.jsonl files)"
    if source is None:
        raise ValueError(f"no Bible corpus folder given; {how}")
    folder = Path(source).expanduser()
    if not folder.is_dir() or not any(folder.glob("*.jsonl")):
        raise ValueError(f"Bible corpus folder {str(folder)!r} holds no <language>.jsonl files; {how}")
    return folder


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
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
                verses.append(Verse(int(row["book"]), int(row["chapter"]), int(row["verse"]), str(row["text"])))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}, line {number}: not a verse ({type(err).__name__}: {err}); each line must be a JSON "
                    f"object with {', '.join(VERSE_KEYS)}"
                ) from None
    return verses


def check_bible_arguments(data_args: DataArguments, languages: list[str]) -> None:
    """One clear line for a language not in the corpus, a small language equal to the main one, a bad share."""
    small = list(data_args.bible_small or [])
    for code in [data_args.bible_main, *small]:
        if code not in languages:
            raise ValueError(f"language {code!r} is not in the Bible corpus; its languages are {', '.join(languages)}")
    if data_args.bible_main in small:
        raise ValueError(f"bible_small lists the main language {data_args.bible_main!r}; choose other languages")
    if len(set(small)) != len(small):
        raise ValueError(f"bible_small lists a language twice: {small}")
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
    the `VALIDATION_BOOKS` in the main and every small language.
    """
    folder = resolve_bible_dir(data_args.bible_dir)
    check_bible_arguments(data_args, bible_languages(folder))
    held_out = set(VALIDATION_BOOKS) | set(TEST_BOOKS)
    languages = [data_args.bible_main, *(data_args.bible_small or [])]
    corpus = {code: read_bible(folder, code) for code in languages}
    main = [v for v in corpus[data_args.bible_main] if v.book not in held_out]
    main_chars = sum(len(v.text) for v in main)
    small = data_args.bible_small or []
    # each small language holds `share` of the mix: small = share * (main + all small)
    budget = data_args.bible_share * main_chars / (1 - len(small) * data_args.bible_share) if small else 0.0
    train = {TEXT_COLUMN: [], CODE_COLUMN: []}
    validation = {TEXT_COLUMN: [], CODE_COLUMN: []}
    for index, code in enumerate(languages):
        pool = [v for v in corpus[code] if v.book not in held_out]
        chosen = pool if code == data_args.bible_main else _take_share(pool, budget, (data_args.bible_seed, index))
        for rows, verses in ((train, chosen), (validation, [v for v in corpus[code] if v.book in VALIDATION_BOOKS])):
            for key, values in _rows(verses, code).items():
                rows[key] += values
    return DatasetDict(train=Dataset.from_dict(train), validation=Dataset.from_dict(validation))
