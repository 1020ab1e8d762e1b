"""TokenFrequency: counts, ranks (ties by id), rank/log buckets, unseen tokens, JSON round trip."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from hf_selfish.frequency import FREQUENCY_FILE_NAME, UNSEEN_GROUP, TokenFrequency


def reference_ranks(counts: list[int]) -> list[int]:
    """1-based ranks by sorting (count desc, id asc) — a second way to the same answer."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    ranks = [0] * len(counts)
    for r, i in enumerate(order, start=1):
        ranks[i] = r
    return ranks


def test_ranks_on_hand_made_corpus_with_ties():
    #        ids: 0  1  2  3  4  5
    corpus = [1, 1, 1, 0, 0, 4, 4, 3, 2, 2]  # counts 2, 3, 2, 1, 2, 0: ids 0, 2, 4 tie at 2
    frequency = TokenFrequency.from_ids(corpus, vocab_size=6)
    assert frequency.counts == [2, 3, 2, 1, 2, 0]
    assert frequency.ranks == [2, 1, 3, 5, 4, 6]  # tie 0 < 2 < 4 broken by id; unseen id 5 last
    assert frequency.ids_by_rank() == [1, 0, 2, 4, 3, 5]
    assert frequency.num_seen == 5 and frequency.total == 10 and frequency.vocab_size == 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_sort_reference(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 5, size=200).tolist()  # many ties and zeros
    frequency = TokenFrequency(counts=counts)
    assert frequency.ranks == reference_ranks(counts)
    assert sorted(frequency.ranks) == list(range(1, 201))


def test_from_dataset_matches_counter_and_respects_select():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 50, size=(37, 16)).tolist()
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    frequency = TokenFrequency.from_dataset(dataset, vocab_size=64, batch_size=5)  # several batches
    expected = Counter(i for row in rows for i in row)
    assert frequency.counts == [expected.get(i, 0) for i in range(64)]

    subset = dataset.select([3, 1, 30])  # an indices mapping, not a contiguous slice
    sub_expected = Counter(i for k in (3, 1, 30) for i in rows[k])
    assert TokenFrequency.from_dataset(subset, vocab_size=64).counts == [sub_expected.get(i, 0) for i in range(64)]


def test_from_dataset_ragged_rows():
    rows = [[0, 1, 1], [2], [], [2, 2, 2, 2]]
    frequency = TokenFrequency.from_dataset(Dataset.from_dict({"input_ids": rows}), vocab_size=4)
    assert frequency.counts == [1, 2, 5, 0]


def test_ids_outside_vocabulary_are_errors():
    with pytest.raises(ValueError, match="token id 70.*vocab_size"):
        TokenFrequency.from_ids([1, 2, 70], vocab_size=65)
    with pytest.raises(ValueError, match="token id 70"):
        TokenFrequency.from_counts({1: 3, 70: 1}, vocab_size=65)
    with pytest.raises(ValueError, match="token id 99"):
        TokenFrequency.from_dataset(Dataset.from_dict({"input_ids": [[1, 99]]}), vocab_size=65)
    with pytest.raises(ValueError, match="-100"):
        TokenFrequency.from_ids([1, -100], vocab_size=65)
    with pytest.raises(ValueError, match="66 entries.*vocab_size=65"):
        TokenFrequency.from_counts([1] * 66, vocab_size=65)
    with pytest.raises(ValueError, match="'labelz'"):
        TokenFrequency.from_dataset(Dataset.from_dict({"input_ids": [[1]]}), vocab_size=65, column="labelz")


def test_bad_counts_and_tokens():
    with pytest.raises(ValueError, match="token id 1 has count -2"):
        TokenFrequency(counts=[3, -2])
    with pytest.raises(ValueError, match="integers"):
        TokenFrequency(counts=[1.5, 2.0])
    with pytest.raises(ValueError, match="2 entries but counts has 3"):
        TokenFrequency(counts=[1, 2, 3], tokens=["a", "b"])
    with pytest.raises(ValueError, match="vocab_size"):
        TokenFrequency.from_ids([0], vocab_size=0)


def test_from_counts_pads_to_vocab_size():
    frequency = TokenFrequency.from_counts({2: 5, 0: 1}, vocab_size=4)
    assert frequency.counts == [1, 0, 5, 0]
    assert TokenFrequency.from_counts([4, 1], vocab_size=3).counts == [4, 1, 0]


def test_rank_buckets_of_65_tokens():
    counts = list(range(100, 35, -1))  # 65 distinct counts: rank of id i is i + 1
    buckets = TokenFrequency(counts=counts).rank_buckets()
    assert list(buckets) == [f"rank_{lo}-{lo + 9}" for lo in range(1, 60, 10)] + ["rank_61-65"]
    assert [len(ids) for ids in buckets.values()] == [10] * 6 + [5]
    assert buckets["rank_41-50"] == list(range(40, 50))
    assert buckets["rank_61-65"] == [60, 61, 62, 63, 64]


def test_rank_buckets_other_size_and_order_by_rank():
    counts = [5, 9, 1, 7, 3, 8, 2]  # ids by rank: 1, 5, 3, 0, 4, 6, 2
    buckets = TokenFrequency(counts=counts).rank_buckets(size=3)
    assert buckets == {"rank_1-3": [1, 5, 3], "rank_4-6": [0, 4, 6], "rank_7-7": [2]}
    with pytest.raises(ValueError, match="positive integer, got 0"):
        TokenFrequency(counts=counts).rank_buckets(size=0)


def test_unseen_tokens_form_their_own_group():
    counts = [4, 0, 2, 0, 7, 1]
    frequency = TokenFrequency(counts=counts)
    buckets = frequency.rank_buckets(size=2)
    assert buckets == {"rank_1-2": [4, 0], "rank_3-4": [2, 5], UNSEEN_GROUP: [1, 3]}
    assert frequency.ranks[1] == 5 and frequency.ranks[3] == 6  # unseen still ranked, after the seen ones
    all_ids = [i for ids in buckets.values() for i in ids]
    assert sorted(all_ids) == list(range(6))  # a partition of the vocabulary
    assert UNSEEN_GROUP not in TokenFrequency(counts=[1, 2]).rank_buckets()


def test_log_buckets_decades_and_doubling():
    counts = list(range(5000, 0, -1))  # 5000 seen tokens, rank of id i is i + 1
    frequency = TokenFrequency(counts=counts)
    decades = frequency.log_buckets()
    assert {k: len(v) for k, v in decades.items()} == {
        "rank_1-10": 10,
        "rank_11-100": 90,
        "rank_101-1000": 900,
        "rank_1001-5000": 4000,
    }
    doubling = TokenFrequency(counts=counts[:20]).log_buckets(base=2, first=1)
    assert list(doubling) == ["rank_1-1", "rank_2-2", "rank_3-4", "rank_5-8", "rank_9-16", "rank_17-20"]
    assert doubling["rank_3-4"] == [2, 3]
    with pytest.raises(ValueError, match="base must be > 1"):
        frequency.log_buckets(base=1)


def test_groups_scheme_choice():
    small = TokenFrequency(counts=list(range(65, 0, -1)))
    assert small.groups() == small.rank_buckets(10)
    assert small.groups(size=20) == small.rank_buckets(20)
    big = TokenFrequency(counts=list(range(2000, 0, -1)))
    assert big.groups() == big.log_buckets()
    assert list(big.groups(scheme="linear"))[:2] == ["rank_1-10", "rank_11-20"]
    assert big.groups(size=500) == big.rank_buckets(500)
    with pytest.raises(ValueError, match="only applies to linear"):
        big.groups(scheme="log", size=10)
    with pytest.raises(ValueError, match="'quadratic'"):
        big.groups(scheme="quadratic")


def test_save_load_round_trip(tmp_path):
    tokens = ["\n", " ", "a", "\U000f0000", "é"]
    frequency = TokenFrequency(counts=[3, 9, 0, 1, 3], tokens=tokens)
    path = frequency.save(tmp_path)  # a directory gets token_frequency.json
    assert path == tmp_path / FREQUENCY_FILE_NAME
    assert [p.name for p in tmp_path.iterdir()] == [FREQUENCY_FILE_NAME]  # no temp file left behind
    loaded = TokenFrequency.load(tmp_path)
    assert loaded == frequency and loaded.ranks == [2, 1, 5, 4, 3] and loaded.tokens == tokens
    assert TokenFrequency.load(path) == frequency

    other = tmp_path / "sub" / "freq.json"
    TokenFrequency(counts=[1, 2]).save(other)
    assert TokenFrequency.load(other).counts == [1, 2] and TokenFrequency.load(other).tokens is None


def test_load_rejects_edited_or_foreign_files(tmp_path):
    path = TokenFrequency(counts=[3, 1, 2]).save(tmp_path / "f.json")
    record = json.loads(path.read_text())
    record["ranks"] = [1, 2, 3]
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not follow from its counts"):
        TokenFrequency.load(path)
    (tmp_path / "g.json").write_text(json.dumps({"counts": [1]}))
    with pytest.raises(ValueError, match="not a token frequency record"):
        TokenFrequency.load(tmp_path / "g.json")
    with pytest.raises(ValueError, match="no token frequency file"):
        TokenFrequency.load(tmp_path / "missing.json")
