"""`RankBucketMetrics`: the per-group evaluation of `hf_selfish.evaluation` as the Trainer's metric hooks."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .evaluation import (
    IGNORE_INDEX,
    MAX_FLOAT32_EXACT_INT,
    TokenStats,
    causal_nll_and_rank,
    group_metrics,
    validate_groups,
)
from .ops.loss import shift_causal_labels

__all__ = ["RankBucketMetrics", "rank_bucket_metric_path"]


class RankBucketMetrics:
    """Group metrics as the Trainer's metric hooks; pass both methods to `Trainer(...)`.

    - `preprocess_logits_for_metrics(logits [B, T, V], labels [B, T]) -> [B, T, 2]` float32 runs on each
      process before the Trainer gathers predictions: channel 0 is the target's NLL, channel 1 its rank, at
      the logits' positions (`[:, t]` scores `labels[:, t + 1]`; the last position is (0, 0)). Only these
      `B x T x 2` numbers are gathered and kept, never the `[B, T, V]` logits.
    - `compute_metrics(eval_pred, compute_result=True)` accumulates them into `TokenStats` (O(V)) and, when
      `compute_result` is true, returns the group metrics (the Trainer prefixes `eval_`) and starts afresh.
      With `TrainingArguments(batch_eval_metrics=True)` it is called once per batch (nothing accumulates
      in the Trainer); without, once with all `[N, T, 2]` predictions. Both give the same numbers.

    Multi-process: the Trainer gathers the `[B, T, 2]` predictions from every process (dropping the
    duplicated tail samples) before `compute_metrics`, so each process accumulates the whole eval set and
    logs the same, complete metrics.

    After each finished evaluation, `last_stats` holds its `TokenStats` (per-token arrays for plots).
    """

    def __init__(self, groups: Mapping[str, Sequence[int]], vocab_size: int, *, ignore_index: int = IGNORE_INDEX):
        if not isinstance(vocab_size, (int, np.integer)) or not 1 <= vocab_size <= MAX_FLOAT32_EXACT_INT:
            raise ValueError(
                f"vocab_size must be an int in [1, {MAX_FLOAT32_EXACT_INT}] (ranks travel as float32), "
                f"got {vocab_size!r}."
            )
        self.vocab_size = int(vocab_size)
        self.groups = {name: ids.tolist() for name, ids in validate_groups(groups, self.vocab_size).items()}
        self.ignore_index = ignore_index
        self.last_stats: TokenStats | None = None
        self._stats = TokenStats.zeros(self.vocab_size)

    @property
    def pending(self) -> bool:
        """True while positions are accumulated but no result was computed (an unfinished evaluation)."""
        return self._stats.total > 0

    def reset(self) -> None:
        """Drop the positions accumulated since the last result."""
        self._stats = TokenStats.zeros(self.vocab_size)

    def preprocess_logits_for_metrics(self, logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
        """`[B, T, V]` logits (or a model-output tuple whose first item they are) -> `[B, T, 2]` (nll, rank)."""
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if labels is None:
            raise ValueError(
                "rank-bucket metrics need labels: the eval dataset has no `labels` column (or the Trainer's "
                "label_names do not match it)."
            )
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(
                f"logits have {logits.shape[-1]} entries in their last dimension but vocab_size is "
                f"{self.vocab_size}; pass the model's output vocabulary size."
            )
        _, nll, rank = causal_nll_and_rank(logits, labels, ignore_index=self.ignore_index)  # [B, T] each
        return torch.stack([nll, rank.float()], dim=-1)  # [B, T, 2]

    def compute_metrics(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float | int]:
        """Accumulate one `EvalPrediction` of `[B, T, 2]` predictions and `[B, T]` labels.

        Returns the group metrics when `compute_result` is true (and resets the accumulator), else `{}`.
        """
        predictions = _to_cpu_tensor(eval_pred.predictions)  # [B, T, 2]
        labels = _to_cpu_tensor(eval_pred.label_ids)  # [B, T]
        if predictions.dim() != 3 or predictions.shape[-1] != 2 or predictions.shape[:2] != labels.shape:
            raise ValueError(
                f"expected predictions [B, T, 2] from preprocess_logits_for_metrics and labels [B, T]; got "
                f"{tuple(predictions.shape)} and {tuple(labels.shape)}. Pass this object's "
                "preprocess_logits_for_metrics to the Trainer too."
            )
        targets = shift_causal_labels(labels, self.ignore_index)  # [B, T]
        nll, rank = predictions[..., 0], predictions[..., 1].round().long()  # [B, T] each
        self._stats.update(targets, nll, rank, ignore_index=self.ignore_index)
        if not compute_result:
            return {}
        return self.finish()

    def finish(self) -> dict[str, float | int]:
        """Group metrics of everything accumulated; stores it as `last_stats` and starts afresh."""
        self.last_stats = self._stats
        self.reset()
        return group_metrics(self.last_stats, self.groups)


def _to_cpu_tensor(value: Any) -> torch.Tensor:
    """A tensor / numpy array / (single-item) tuple of them -> CPU tensor."""
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(f"expected a single array of predictions, got a sequence of {len(value)}.")
        value = value[0]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.as_tensor(np.asarray(value))


def rank_bucket_metric_path() -> str:
    """Folder of the `evaluate` module shipped with the package: `evaluate.load(rank_bucket_metric_path())`."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "rank_bucket_nll")
