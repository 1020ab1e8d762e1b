"""Per-token evaluation statistics grouped by token id: NLL, top-1 accuracy, recall@5 and MRR per group.

A *group* is a named set of token ids: a frequency-rank bucket (`{"rank_1-10": [...], ...}` from
`TokenFrequency.rank_buckets`), a simulated language (`{"lang_main": [...], "lang_small": [...]}`), or any
other id set. Groups may overlap.

The pipeline has three stages, each usable on its own:

1. `target_nll_and_rank(logits, targets)`: per position, the full-vocabulary cross-entropy of the target
   (float32) and the target's rank among the logits.
2. `TokenStats`: per-token-id sums (`count`, `nll_sum`, `correct`, `in_top5`, `rr_sum`, each `[V]`), so memory
   is O(vocabulary) whatever the size of the eval set. Sums from several processes add up (`all_reduce`).
3. `group_metrics(stats, groups)`: the `{group}_{stat}` metrics.

`hf_selfish.rank_buckets.RankBucketMetrics` packages stages 1-3 as the Trainer's
`preprocess_logits_for_metrics` and `compute_metrics` hooks, so the metrics go through `Trainer.log`.

Rank and ties: `rank = 1 + (number of logits strictly greater than the target's logit)`, so a target tied
with other tokens gets the best rank of the tie (ties count in the target's favour). A position is top-1
correct iff `rank == 1`, in the top 5 iff `rank <= 5`, and its reciprocal rank is `1 / rank`.

Group statistics (tokens absent from the eval data are excluded, never counted as 0):

- `nll`: mean over the group's tokens present in the eval data of each token's mean NLL (every token
  type weighs the same, as in the selfish-loss paper's per-token plots).
- `nll_weighted`: mean NLL over all eval positions whose target is in the group (occurrence-weighted).
- `tokens`: number of such positions; `types`: number of distinct group tokens present.
- `accuracy`, `recall_at_5`, `mrr`: occurrence-weighted means over the same positions.

A group with no eval positions reports only `tokens = 0`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .metric_names import group_metric_name
from .ops.loss import check_label_range, flatten_aligned, shift_causal_labels

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TOP_K_RECALL = 5
# Ranks travel through the Trainer as float32 (see `RankBucketMetrics`); integers are exact up to 2**24.
MAX_FLOAT32_EXACT_INT = 2**24
# Positions per chunk in `target_nll_and_rank` are chosen so one chunk holds at most this many logits.
DEFAULT_MAX_CHUNK_ELEMENTS = 2**24


def target_nll_and_rank(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary NLL and rank of each position's target. Logits and targets are aligned (no shift).

    Args:
        logits: `[..., V]` scores, any float dtype (computed in float32).
        targets: `[...]` target ids in `[0, V)`, or `ignore_index`.
        ignore_index: target value of positions to skip; they get `nll = 0` and `rank = 0`.
        max_chunk_elements: positions are processed in chunks of at most this many logits, which bounds the
            extra memory to O(max_chunk_elements) instead of another copy of `logits`.

    Returns:
        `(nll, rank)`: `nll` `[...]` float32 (`logsumexp(logits) - logits[target]`), `rank` `[...]` int64
        (`1 + #logits strictly greater than logits[target]`; ties count in the target's favour).
    """
    flat_logits, flat_targets = flatten_aligned(logits, targets.long())  # [N, V], [N]
    vocab_size = flat_logits.shape[-1]
    keep = flat_targets != ignore_index  # [N]
    check_label_range(flat_targets, vocab_size, keep)
    safe_targets = torch.where(keep, flat_targets, torch.zeros_like(flat_targets))  # [N]

    nll = torch.empty(flat_targets.shape, dtype=torch.float32, device=logits.device)  # [N]
    rank = torch.empty(flat_targets.shape, dtype=torch.long, device=logits.device)  # [N]
    rows_per_chunk = max(1, max_chunk_elements // max(vocab_size, 1))
    for start in range(0, flat_targets.numel(), rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        chunk = flat_logits[rows].float()  # [n, V]
        # The same kernel as the models' own loss; ignored positions get 0.
        nll[rows] = F.cross_entropy(chunk, flat_targets[rows], ignore_index=ignore_index, reduction="none")
        target_logit = chunk.gather(-1, safe_targets[rows, None])  # [n, 1]
        rank[rows] = (chunk > target_logit).sum(dim=-1) + 1
        # NaN compares false with everything: a row with NaN logits (a diverged model) would rank its target
        # first. It ranks last instead, so it never counts as correct.
        broken = chunk.isnan().any(dim=-1) | ~target_logit.squeeze(-1).isfinite()  # [n]
        rank[rows] = torch.where(broken, vocab_size, rank[rows])
    rank = torch.where(keep, rank, torch.zeros_like(rank))
    return nll.view(targets.shape), rank.view(targets.shape)


def causal_nll_and_rank(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    max_chunk_elements: int = DEFAULT_MAX_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`target_nll_and_rank` for a causal LM: `logits[:, t]` predicts `labels[:, t + 1]`.

    Args:
        logits: `[B, T, V]`. labels: `[B, T]` unshifted, as given to the model (`ignore_index` skipped).

    Returns:
        `(targets, nll, rank)`, each `[B, T]` and aligned with `logits`: `targets = shift_causal_labels(labels)`,
        so the last position is `ignore_index` (with `nll = 0`, `rank = 0`).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits [B, T, V] and labels [B, T] with the same B and T; got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}."
        )
    targets = shift_causal_labels(labels, ignore_index)  # [B, T]
    nll, rank = target_nll_and_rank(logits, targets, ignore_index=ignore_index, max_chunk_elements=max_chunk_elements)
    return targets, nll, rank


@dataclass
class TokenStats:
    """Per-token-id sums over eval positions, each `[V]` on the CPU. Memory is O(V), never O(positions x V).

    Entry `i` of each tensor sums over the positions whose target is token `i`.
    """

    count: torch.Tensor  # [V] int64: positions
    nll_sum: torch.Tensor  # [V] float64: sum of NLL
    correct: torch.Tensor  # [V] int64: positions with rank == 1
    in_top5: torch.Tensor  # [V] int64: positions with rank <= 5
    rr_sum: torch.Tensor  # [V] float64: sum of 1 / rank

    @classmethod
    def zeros(cls, vocab_size: int) -> TokenStats:
        """Empty sums for a vocabulary of `vocab_size` ids."""
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}.")
        vocab_size = int(vocab_size)
        return cls(
            count=torch.zeros(vocab_size, dtype=torch.long),
            nll_sum=torch.zeros(vocab_size, dtype=torch.float64),
            correct=torch.zeros(vocab_size, dtype=torch.long),
            in_top5=torch.zeros(vocab_size, dtype=torch.long),
            rr_sum=torch.zeros(vocab_size, dtype=torch.float64),
        )

    @property
    def vocab_size(self) -> int:
        return self.count.numel()

    @property
    def total(self) -> int:
        """Number of positions accumulated so far."""
        return int(self.count.sum())

    def tensors(self) -> list[torch.Tensor]:
        """The `[V]` sums, in field order."""
        return [getattr(self, f.name) for f in fields(self)]

    def update(
        self, targets: torch.Tensor, nll: torch.Tensor, rank: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
    ) -> None:
        """Add positions (any matching shapes); positions whose target is `ignore_index` are skipped."""
        if not (targets.shape == nll.shape == rank.shape):
            raise ValueError(
                f"targets {tuple(targets.shape)}, nll {tuple(nll.shape)} and rank {tuple(rank.shape)} must have "
                "the same shape."
            )
        targets = targets.detach().reshape(-1).long().cpu()  # [N]
        nll = nll.detach().reshape(-1).cpu().double()  # [N]
        rank = rank.detach().reshape(-1).long().cpu()  # [N]
        keep = targets != ignore_index
        check_label_range(targets, self.vocab_size, keep)
        targets, nll, rank = targets[keep], nll[keep], rank[keep]
        if rank.numel() and int(rank.min()) < 1:
            raise ValueError(
                f"rank {int(rank.min())} found at a scored position; ranks start at 1. Were the predictions "
                "shifted against the labels?"
            )
        self.count.index_add_(0, targets, torch.ones_like(targets))
        self.nll_sum.index_add_(0, targets, nll)
        self.correct.index_add_(0, targets, (rank == 1).long())
        self.in_top5.index_add_(0, targets, (rank <= TOP_K_RECALL).long())
        self.rr_sum.index_add_(0, targets, rank.double().reciprocal())

    def add_(self, other: TokenStats) -> TokenStats:
        """Add another accumulator's sums into this one (in place); returns self."""
        if other.vocab_size != self.vocab_size:
            raise ValueError(f"cannot add TokenStats of vocab_size {other.vocab_size} to {self.vocab_size}.")
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine.add_(theirs)
        return self

    def all_reduce(self) -> None:
        """Sum the accumulators of all processes in place, if `torch.distributed` is initialized.

        Not needed under the Trainer: it gathers the per-position predictions before `compute_metrics`, so
        every process accumulates the whole eval set. Use it when you accumulate per process yourself.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        for tensor in self.tensors():
            on_device = tensor.to(device) if device is not None else tensor
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            if on_device is not tensor:
                tensor.copy_(on_device.cpu())

    def per_token(self) -> dict[str, torch.Tensor]:
        """Per-token means, `[V]` float64 each, NaN where the token has no eval positions (absent, not 0).

        Keys: `nll`, `accuracy`, `recall_at_5`, `mrr`; plus `count` (`[V]` int64).
        """
        count = self.count.double()
        absent = self.count == 0
        safe = count.clamp(min=1)
        means = {
            "nll": self.nll_sum / safe,
            "accuracy": self.correct.double() / safe,
            "recall_at_5": self.in_top5.double() / safe,
            "mrr": self.rr_sum / safe,
        }
        result = {name: value.masked_fill(absent, float("nan")) for name, value in means.items()}
        result["count"] = self.count.clone()
        return result

    def per_token_json(self) -> dict[str, list[Any]]:
        """`per_token()` as JSON-ready lists, with `None` for absent tokens."""
        out: dict[str, list[Any]] = {}
        for name, values in self.per_token().items():
            if values.dtype.is_floating_point:
                out[name] = [None if np.isnan(v) else v for v in values.tolist()]
            else:
                out[name] = values.tolist()
        return out


def validate_groups(groups: Mapping[str, Sequence[int]], vocab_size: int) -> dict[str, torch.Tensor]:
    """Check a `{name: token ids}` mapping and return it with the ids as int64 tensors (order kept).

    Raises ValueError for a non-string or empty name, a name containing whitespace, a non-integer id, an id
    outside `[0, vocab_size)` or an id listed twice in one group. An empty id list is allowed (the group then
    always reports `tokens = 0`).
    """
    if not isinstance(groups, Mapping):
        raise ValueError(f"groups must be a mapping from group name to token ids, got {type(groups).__name__}.")
    checked: dict[str, torch.Tensor] = {}
    for name, ids in groups.items():
        if not isinstance(name, str) or not name or any(ch.isspace() for ch in name):
            raise ValueError(f"group name {name!r} must be a non-empty string without whitespace (it is a metric key).")
        ids_array = np.asarray(list(ids))
        if ids_array.size and not np.issubdtype(ids_array.dtype, np.integer):
            raise ValueError(f"group {name!r} must list integer token ids, got dtype {ids_array.dtype}.")
        id_tensor = torch.as_tensor(ids_array.astype(np.int64).reshape(-1))  # [n]
        out_of_range = (id_tensor < 0) | (id_tensor >= vocab_size)
        if out_of_range.any():
            raise ValueError(
                f"group {name!r} holds token id {int(id_tensor[out_of_range][0])}, outside the vocabulary "
                f"[0, {vocab_size}); check vocab_size and the group ids."
            )
        if torch.unique(id_tensor).numel() != id_tensor.numel():
            raise ValueError(f"group {name!r} lists a token id more than once; list each id once.")
        checked[name] = id_tensor
    return checked


def group_metrics(
    stats: TokenStats, groups: Mapping[str, Sequence[int] | torch.Tensor], *, ranking: bool = True
) -> dict[str, float | int]:
    """The `{group}_{stat}` metrics (see the module docstring) of every group, in the groups' order.

    `ranking=False` leaves out `accuracy`, `recall_at_5` and `mrr` (for statistics accumulated without ranks).
    """
    checked = validate_groups({name: _as_id_list(ids) for name, ids in groups.items()}, stats.vocab_size)
    metrics: dict[str, float | int] = {}
    for name, ids in checked.items():
        for stat, value in _one_group_metrics(stats, ids, ranking=ranking).items():
            metrics[group_metric_name(name, stat)] = value
    return metrics


def _as_id_list(ids: Sequence[int] | torch.Tensor) -> Sequence[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else ids


def _one_group_metrics(stats: TokenStats, ids: torch.Tensor, *, ranking: bool = True) -> dict[str, float | int]:
    """Metrics of one group given its `[n]` ids; only `tokens = 0` when none of them occurs."""
    count = stats.count[ids]  # [n]
    tokens = int(count.sum())
    if tokens == 0:
        return {"tokens": 0}
    present = count > 0  # [n]
    token_mean_nll = stats.nll_sum[ids][present] / count[present]  # [types]
    metrics: dict[str, float | int] = {
        "nll": float(token_mean_nll.mean()),
        "nll_weighted": float(stats.nll_sum[ids].sum() / tokens),
        "tokens": tokens,
        "types": int(present.sum()),
    }
    if ranking:
        metrics["accuracy"] = float(stats.correct[ids].sum()) / tokens
        metrics["recall_at_5"] = float(stats.in_top5[ids].sum()) / tokens
        metrics["mrr"] = float(stats.rr_sum[ids].sum() / tokens)
    return metrics
