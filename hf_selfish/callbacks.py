"""Trainer callbacks: thin hooks into Trainer events; the math lives in `evaluation` (and `scenarios`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .evaluation import IGNORE_INDEX, RankBucketMetrics
from .files import atomic_write_json


logger = logging.getLogger(__name__)

RANK_BUCKETS_FILENAME = "rank_buckets.json"


class RankBucketEvalCallback(TrainerCallback):
    """Per-group eval NLL, accuracy, recall@5 and MRR (`eval_{group}_{stat}`) through the Trainer's own log.

    The metrics are computed by the Trainer's metric hooks, which run inside `evaluation_loop`, so they are
    part of the metrics `Trainer.evaluate` passes to `Trainer.log` (and so reach `trainer_state.json`'s
    `log_history`, checkpoints, and every `report_to` integration). A callback alone could not: `evaluate`
    logs before `on_evaluate`. This callback holds the hooks (`preprocess_logits_for_metrics`,
    `compute_metrics`) and, on `on_evaluate`, keeps the per-token arrays of that evaluation (`per_token`)
    and writes them to `output_dir/rank_buckets.json` for plots.

    Wire it with `attach_rank_bucket_eval(trainer, groups, vocab_size)`, or at construction:

        callback = RankBucketEvalCallback(groups, vocab_size)
        trainer = Trainer(..., args=TrainingArguments(..., batch_eval_metrics=True), **callback.trainer_kwargs())

    `batch_eval_metrics=True` is recommended (per-batch accumulation, nothing kept by the Trainer); without
    it the Trainer keeps `[N, T, 2]` float32 predictions until the end of evaluation (small, but O(eval set)).
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[int]],
        vocab_size: int,
        *,
        ignore_index: int = IGNORE_INDEX,
        save_per_token: bool = True,
    ):
        self.metrics = RankBucketMetrics(groups, vocab_size, ignore_index=ignore_index)
        self.save_per_token = save_per_token
        self.per_token: dict[str, list[Any]] | None = None

    @property
    def groups(self) -> dict[str, list[int]]:
        return self.metrics.groups

    def preprocess_logits_for_metrics(self, logits, labels):
        """See `RankBucketMetrics.preprocess_logits_for_metrics`."""
        return self.metrics.preprocess_logits_for_metrics(logits, labels)

    def compute_metrics(self, eval_pred, compute_result: bool = True) -> dict[str, float | int]:
        """See `RankBucketMetrics.compute_metrics`."""
        return self.metrics.compute_metrics(eval_pred, compute_result=compute_result)

    def trainer_kwargs(self) -> dict[str, Any]:
        """`Trainer(**...)` keyword arguments that install this callback and its metric hooks."""
        return {
            "compute_metrics": self.compute_metrics,
            "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics,
            "callbacks": [self],
        }

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs,
    ):
        if self.metrics.pending:
            logger.warning(
                "rank-bucket metrics: the evaluation ended without a final compute_metrics call "
                "(end of dataloader not detected); its partial sums are dropped."
            )
            self.metrics.reset()
        stats = self.metrics.last_stats
        if stats is None:
            return
        self.metrics.last_stats = None
        self.per_token = stats.per_token_json()
        if self.save_per_token and state.is_world_process_zero:
            prefix = _metric_key_prefix(metrics or {})
            self._write_per_token(args.output_dir, prefix, state)

    def _write_per_token(self, output_dir: str, prefix: str, state: TrainerState) -> None:
        """Write `rank_buckets.json` (`rank_buckets_{name}.json` for the eval dataset `name`)."""
        suffix = prefix[len("eval_") :] if prefix.startswith("eval_") else ("" if prefix == "eval" else prefix)
        filename = RANK_BUCKETS_FILENAME if not suffix else f"rank_buckets_{suffix}.json"
        record = {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "metric_key_prefix": prefix,
            "vocab_size": self.metrics.vocab_size,
            "groups": self.groups,
            "per_token": self.per_token,
        }
        path = os.path.join(output_dir, filename)
        atomic_write_json(path, record, indent=None)
        logger.info("rank-bucket per-token statistics written to %s", path)


def _metric_key_prefix(metrics: Mapping[str, Any]) -> str:
    """The `metric_key_prefix` of an `evaluate()` result, read off its `{prefix}_runtime` key."""
    for key in metrics:
        if key.endswith("_runtime"):
            return key[: -len("_runtime")]
    return "eval"


def attach_rank_bucket_eval(
    trainer: Trainer,
    groups: Mapping[str, Sequence[int]],
    vocab_size: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    save_per_token: bool = True,
) -> RankBucketEvalCallback:
    """Install rank-bucket evaluation on an existing Trainer (any `Trainer` subclass) and return the callback.

    Sets `trainer.compute_metrics` and `trainer.preprocess_logits_for_metrics` and adds the callback.
    Raises ValueError if the trainer already has either hook (they would be silently replaced).
    """
    if trainer.compute_metrics is not None or trainer.preprocess_logits_for_metrics is not None:
        raise ValueError(
            "this Trainer already has compute_metrics or preprocess_logits_for_metrics; rank-bucket evaluation "
            "needs both hooks. Build the Trainer without them, or combine them yourself."
        )
    callback = RankBucketEvalCallback(groups, vocab_size, ignore_index=ignore_index, save_per_token=save_per_token)
    trainer.compute_metrics = callback.compute_metrics
    trainer.preprocess_logits_for_metrics = callback.preprocess_logits_for_metrics
    trainer.add_callback(callback)
    if not trainer.args.batch_eval_metrics:
        logger.info(
            "batch_eval_metrics is off: the Trainer keeps [N, T, 2] per-position statistics until the end of each "
            "evaluation; set batch_eval_metrics=True to accumulate batch by batch."
        )
    return callback
