"""Token frequencies of the TRAIN split, their ranks, and groups of token ids by rank.

Rank 1 is the most frequent token; ties are broken by the lower token id, so ranks are a total order
and do not depend on how the counts were gathered. Tokens that never occur in the training data
(count 0) still get ranks (after every seen token) but are kept out of the rank buckets: they form
their own group, ``"unseen"``, because "how rare" is undefined for them.

Groups are plain ordered ``dict[str, list[int]]`` (group name -> token ids), the shared interface of
the evaluation code:

- linear buckets ``rank_1-10, rank_11-20, ..., rank_61-65`` (the last one truncated), the default for
  vocabularies of at most 1000 tokens;
- log buckets ``rank_1-10, rank_11-100, rank_101-1000, ...`` (upper edges ``first * base**k``), the
  default above 1000 tokens, where ten-token buckets would be thousands of groups.

Saved as ``token_frequency.json`` next to a run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_json
from .metric_names import FREQUENCY_FILE, UNSEEN_GROUP, rank_group_name

__all__ = ["FREQUENCY_FILE_NAME", "UNSEEN_GROUP", "TokenFrequency", "display_token", "frequency_order"]

FREQUENCY_FILE_NAME = FREQUENCY_FILE
_FORMAT = "hf_selfish.token_frequency"
_FORMAT_VERSION = 1


def _check_vocab_size(vocab_size: Any) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}.")
    return int(vocab_size)


@dataclass
class TokenFrequency:
    """Occurrence count of every token id of a vocabulary in the training data.

    Args:
        counts: ``counts[i]`` is how often token id ``i`` occurs; its length is the vocabulary size.
        tokens: optional string of each token id (plot labels); same length as ``counts``.

    Attributes:
        ranks: ``ranks[i]`` is the 1-based frequency rank of token id ``i`` (1 = most frequent, ties by
            lower id; unseen tokens rank after all seen ones).
    """

    counts: list[int]
    tokens: list[str] | None = None
    ranks: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"counts must be a non-empty 1-D list of integers, got shape {counts.shape}.")
        if not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(f"counts must be integers, got dtype {counts.dtype}.")
        if (counts < 0).any():
            bad = int(np.flatnonzero(counts < 0)[0])
            raise ValueError(f"counts must be >= 0, but token id {bad} has count {int(counts[bad])}.")
        self.counts = [int(c) for c in counts]
        if self.tokens is not None:
            if len(self.tokens) != len(self.counts):
                raise ValueError(
                    f"tokens has {len(self.tokens)} entries but counts has {len(self.counts)}: give one string per id."
                )
            self.tokens = [str(t) for t in self.tokens]
        self.ranks = _ranks_from_counts(counts)

    # ----------------------------------------------------------------------------------------- build

    @classmethod
    def from_counts(
        cls,
        counts: Sequence[int] | Mapping[int, int],
        vocab_size: int | None = None,
        tokens: Sequence[str] | None = None,
    ) -> TokenFrequency:
        """From a per-id list of counts, or a ``{token_id: count}`` mapping (missing ids count 0).

        Raises:
            ValueError: a token id ``>= vocab_size`` (or negative), or a list longer than ``vocab_size``.
        """
        if isinstance(counts, Mapping):
            if vocab_size is None:
                raise ValueError("vocab_size is required when counts is a {token_id: count} mapping.")
            vocab_size = _check_vocab_size(vocab_size)
            dense = [0] * vocab_size
            for token_id, count in counts.items():
                if not 0 <= int(token_id) < vocab_size:
                    raise ValueError(
                        f"counts holds token id {token_id}, outside the vocabulary [0, {vocab_size}); "
                        "pass the vocab_size of the model that produced the ids."
                    )
                dense[int(token_id)] = count
            return cls(counts=dense, tokens=list(tokens) if tokens is not None else None)
        counts = list(counts)
        if vocab_size is not None:
            vocab_size = _check_vocab_size(vocab_size)
            if len(counts) > vocab_size:
                raise ValueError(
                    f"counts has {len(counts)} entries (token ids up to {len(counts) - 1}) "
                    f"but vocab_size={vocab_size}; "
                    "pass the vocab_size of the model that produced the ids."
                )
            counts = counts + [0] * (vocab_size - len(counts))
        return cls(counts=counts, tokens=list(tokens) if tokens is not None else None)

    @classmethod
    def from_ids(cls, ids: Any, vocab_size: int, tokens: Sequence[str] | None = None) -> TokenFrequency:
        """From an array-like of token ids of any shape (e.g. ``[N, T]`` blocks)."""
        return cls(counts=_bincount(np.asarray(ids), _check_vocab_size(vocab_size)).tolist(), tokens=tokens)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        vocab_size: int,
        column: str = "input_ids",
        batch_size: int = 1000,
        tokens: Sequence[str] | None = None,
    ) -> TokenFrequency:
        """Count the ids of a `datasets.Dataset` column (lists of ids), batch by batch with ``np.bincount``.

        Pass the TRAIN split: ranks are meant to describe what the model was trained on.
        """
        vocab_size = _check_vocab_size(vocab_size)
        if column not in dataset.column_names:
            raise ValueError(f"column {column!r} not in the dataset; it has {dataset.column_names}.")
        counts = np.zeros(vocab_size, dtype=np.int64)  # [V]
        for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=batch_size):
            values = batch.column(column).combine_chunks()
            while hasattr(values, "flatten") and hasattr(values, "offsets"):  # list<int> (or nested) -> int
                values = values.flatten()
            counts += _bincount(values.to_numpy(zero_copy_only=False), vocab_size)
        return cls(counts=counts.tolist(), tokens=tokens)

    # ---------------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        return len(self.counts)

    @property
    def num_seen(self) -> int:
        """How many token ids occur at least once (they hold ranks ``1..num_seen``)."""
        return sum(1 for c in self.counts if c > 0)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def ids_by_rank(self) -> list[int]:
        """Token ids ordered by rank: element ``r - 1`` is the id of rank ``r``."""
        order = [0] * self.vocab_size
        for token_id, rank in enumerate(self.ranks):
            order[rank - 1] = token_id
        return order

    def unseen_ids(self) -> list[int]:
        """Ids with count 0, in id order."""
        return [i for i, c in enumerate(self.counts) if c == 0]

    # -------------------------------------------------------------------------------------- groups

    def rank_buckets(self, size: int = 10) -> dict[str, list[int]]:
        """Seen tokens in buckets of ``size`` consecutive ranks; the last bucket may be smaller.

        ``{"rank_1-10": [...], ..., "rank_61-65": [...]}`` for 65 seen tokens, ids in rank order;
        plus ``"unseen"`` when some ids have count 0.
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"bucket size must be a positive integer, got {size!r}.")
        n = self.num_seen
        edges = list(range(int(size), n, int(size))) + [n]
        return self._buckets(edges)

    def log_buckets(self, base: float = 10.0, first: int = 10) -> dict[str, list[int]]:
        """Seen tokens in log-spaced rank buckets: upper edges ``first * base**k`` (rounded), k = 0, 1, ...

        The defaults give ``rank_1-10, rank_11-100, rank_101-1000, ...``; ``base=2, first=1`` gives
        ``rank_1-1, rank_2-2, rank_3-4, rank_5-8, ...``. The last bucket ends at the last seen rank.
        """
        if not base > 1:
            raise ValueError(f"log bucket base must be > 1, got {base!r}.")
        if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first <= 0:
            raise ValueError(f"first bucket size must be a positive integer, got {first!r}.")
        n = self.num_seen
        edges: list[int] = []
        hi, k = 0, 0
        while hi < n:
            hi = min(n, max(hi + 1, round(first * base**k)))
            edges.append(hi)
            k += 1
        return self._buckets(edges)

    def groups(self, scheme: str = "auto", size: int | None = None) -> dict[str, list[int]]:
        """The token groups of an evaluation: ``scheme`` is "linear", "log" or "auto".

        "auto": linear buckets of ``size`` when a size is given, else linear buckets of 10 for
        vocabularies of at most 1000 ids and log buckets above.
        """
        if scheme == "auto":
            scheme = "linear" if size is not None or self.vocab_size <= 1000 else "log"
        if scheme == "linear":
            return self.rank_buckets(10 if size is None else size)
        if scheme == "log":
            if size is not None:
                raise ValueError(
                    f"a bucket size ({size}) only applies to linear buckets; drop it or use scheme='linear'."
                )
            return self.log_buckets()
        raise ValueError(f"bucket scheme must be 'linear', 'log' or 'auto', got {scheme!r}.")

    def _buckets(self, edges: list[int]) -> dict[str, list[int]]:
        """Buckets of ranks ``(previous edge, edge]``, plus the unseen group."""
        order = self.ids_by_rank()
        buckets: dict[str, list[int]] = {}
        lo = 1
        for hi in edges:
            if hi >= lo:
                buckets[rank_group_name(lo, hi)] = order[lo - 1 : hi]
            lo = hi + 1
        unseen = self.unseen_ids()
        if unseen:
            buckets[UNSEEN_GROUP] = unseen
        return buckets

    # ------------------------------------------------------------------------------------- storage

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "counts": self.counts,
            "ranks": self.ranks,
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenFrequency:
        if data.get("format") != _FORMAT or "counts" not in data:
            raise ValueError(f"not a token frequency record (format={data.get('format')!r}).")
        frequency = cls(counts=list(data["counts"]), tokens=data.get("tokens"))
        if data.get("vocab_size", frequency.vocab_size) != frequency.vocab_size:
            raise ValueError(
                f"token frequency record says vocab_size={data['vocab_size']} but holds {frequency.vocab_size} counts."
            )
        if "ranks" in data and list(data["ranks"]) != frequency.ranks:
            raise ValueError("token frequency record holds ranks that do not follow from its counts; was it edited?")
        return frequency

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file + ``os.replace``); a directory gets ``token_frequency.json``."""
        return atomic_write_json(_frequency_path(path), self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenFrequency:
        """Read what `save` wrote (a file, or a directory holding ``token_frequency.json``)."""
        path = _frequency_path(path)
        if not path.is_file():
            raise ValueError(f"no token frequency file at {path}.")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _frequency_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / FREQUENCY_FILE_NAME if path.is_dir() else path


def frequency_order(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Token ids by frequency rank: most frequent first, ties by lower id. ``[V]``."""
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    return np.lexsort((np.arange(counts.size), -counts.astype(np.int64)))  # last key is primary


def _ranks_from_counts(counts: np.ndarray) -> list[int]:
    """1-based ranks: by count descending, ties by lower id."""
    ranks = np.empty(counts.size, dtype=np.int64)
    ranks[frequency_order(counts)] = np.arange(1, counts.size + 1)
    return ranks.tolist()


def display_token(token: str | None, *, space: str = "space") -> str:
    """A readable token: ``"\\n"`` -> ``\\n``, ``" "`` -> ``space``, other non-printables escaped; None -> ``?``."""
    if token is None:
        return "?"
    named = {" ": space, "\n": "\\n", "\t": "\\t", "\r": "\\r", "": "''"}
    if token in named:
        return named[token]
    if token.isspace() or not token.isprintable():
        return repr(token)[1:-1]
    return token


def _bincount(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Counts of each id in ``[0, vocab_size)``; ids outside the vocabulary are an error."""
    ids = ids.reshape(-1)
    if ids.size == 0:
        return np.zeros(vocab_size, dtype=np.int64)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}.")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise ValueError(f"token ids must be >= 0, found {lo} (padding/ignore labels do not belong in input_ids).")
    if hi >= vocab_size:
        raise ValueError(
            f"the data holds token id {hi}, outside the vocabulary [0, {vocab_size}); "
            "pass the vocab_size of the model that produced the ids."
        )
    return np.bincount(ids, minlength=vocab_size).astype(np.int64)
