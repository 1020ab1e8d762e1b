"""Trainer callbacks: thin hooks into Trainer events; the math lives in `evaluation` and `scenarios`.

`GradientScenarioCallback` lives beside its recorder in `scenario_recorder` and is re-exported here.

- `RankBucketEvalCallback`: per-group eval metrics through the Trainer's metric hooks.
- `GradientScenarioCallback`: per-token gradient norms of the three scenarios during training.
- `CompactProgressCallback`: the Trainer's progress bars with one short line per log instead of its raw dict.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from .evaluation import IGNORE_INDEX
from .files import atomic_write_json
from .metric_names import (
    EVAL_PREFIX,
    describe_group,
    group_label,
    groups_in_metrics,
    metric_key,
    metric_key_prefix,
    metric_value,
    rank_buckets_file,
    subset_prefix,
)
from .rank_buckets import RankBucketMetrics
from .scenario_recorder import GradientScenarioCallback

logger = logging.getLogger(__name__)

__all__ = [
    "CompactProgressCallback",
    "GradientScenarioCallback",
    "StopOnNonFiniteLossCallback",
    "SubsetEvalCallback",
    "TrainingDivergedError",
    "RankBucketEvalCallback",
    "attach_rank_bucket_eval",
    "compact_log_line",
]


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
            prefix = metric_key_prefix(metrics or {})
            self._write_per_token(args.output_dir, prefix, state)

    def _write_per_token(self, output_dir: str, prefix: str, state: TrainerState) -> None:
        """Write `rank_buckets.json` (`rank_buckets_{name}.json` for the eval dataset `name`)."""
        filename = rank_buckets_file(prefix)
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


# -------------------------------------------------------------------------------------- eval subsets


class SubsetEvalCallback(TrainerCallback):
    """After every evaluation of the eval set, evaluate named subsets too (e.g. one per language).

    Each subset is evaluated by the Trainer itself with ``metric_key_prefix="eval_{name}"``, so its metrics
    (``eval_{name}_loss``, ``eval_{name}_{group}_{stat}``, ``rank_buckets_{name}.json``) go through the Trainer's
    log like ``eval_loss`` does. Bind it to its trainer once built: ``trainer.add_callback(callback.bind(trainer))``.
    """

    def __init__(self, subsets: Mapping[str, Any]):
        self.subsets = dict(subsets)
        self.trainer: Trainer | None = None
        self._running = False

    def bind(self, trainer: Trainer) -> SubsetEvalCallback:
        self.trainer = trainer
        return self

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._running or self.trainer is None or metric_key_prefix(metrics or {}) != EVAL_PREFIX:
            return
        self._running = True  # the subsets' own evaluations come back here
        try:
            for name, dataset in self.subsets.items():
                self.trainer.evaluate(eval_dataset=dataset, metric_key_prefix=subset_prefix(name))
        finally:
            self._running = False


# ------------------------------------------------------------------------------------------- divergence


class TrainingDivergedError(ValueError):
    """The training or eval loss became NaN or infinite; the run stops instead of being scored."""


class StopOnNonFiniteLossCallback(TrainerCallback):
    """Stop a run whose logged training or eval loss is not finite; `raise_if_diverged` then says what to do.

    A diverged model's metrics mean nothing, so they must never reach a report. The training loop is stopped
    (no further evaluation or checkpoint), so the Trainer ends cleanly (its progress bars closed) before the
    caller raises. Pair it with ``logging_nan_inf_filter=False``: the Trainer's default filter would log the
    mean of the finite steps instead of the NaN.
    """

    def __init__(self):
        self.error: TrainingDivergedError | None = None

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            value = (logs or {}).get(key)
            if value is not None and metric_value(logs, key) is None and self.error is None:
                self.error = TrainingDivergedError(
                    f"training diverged: {key} is {value} at step {state.global_step} (learning_rate "
                    f"{args.learning_rate:g}); lower learning_rate or raise warmup_steps, then run again in a new "
                    f"--output_dir (checkpoints so far are kept in {args.output_dir})"
                )
        if self.error is not None:
            control.should_training_stop = True
            control.should_evaluate = control.should_save = False

    def raise_if_diverged(self) -> None:
        if self.error is not None:
            raise self.error


# --------------------------------------------------------------------------------------------- console


def compact_log_line(logs: Mapping[str, Any], step: int, elapsed: float | None = None) -> str | None:
    """One short line for a Trainer log: an evaluation (eval loss, the most frequent and the rarest present
    rank groups, the languages), a training log (loss, masked fraction, learning rate) or the run's end."""
    took = "" if elapsed is None else f" | {elapsed:.0f} s"
    if "eval_loss" in logs:
        parts = [f"step {step} eval: loss {logs['eval_loss']:.4f}"]
        groups = [g for g in groups_in_metrics(logs) if metric_value(logs, metric_key(g, "nll")) is not None]
        ranks = [g for g in groups if describe_group(g).kind == "rank"]
        shown = ranks[:1] + ranks[-1:] if len(ranks) > 1 else ranks
        shown += [g for g in groups if describe_group(g).kind in ("language", "language_only")]
        parts += [f"{group_label(g)} NLL {logs[metric_key(g, 'nll')]:.3f}" for g in shown]
        return " | ".join(parts) + took
    if "loss" in logs:
        text = f"step {step}: loss {logs['loss']:.4f}"
        if "selfish_masked_fraction" in logs:
            text += f", masked {logs['selfish_masked_fraction']:.2f}"
        if "learning_rate" in logs:
            text += f", lr {logs['learning_rate']:.2e}"
        return text + took
    if "train_runtime" in logs:
        return f"training done after {step} steps in {logs['train_runtime']:.0f} s"
    return None


class CompactProgressCallback(ProgressCallback):
    """`ProgressCallback` (tqdm bars) that prints `compact_log_line` instead of each raw log dict.

    Only the console changes: every metric still reaches ``Trainer.log``, trainer_state.json and report_to.
    Install with ``trainer.pop_callback(ProgressCallback); trainer.add_callback(CompactProgressCallback())``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self._started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        elapsed = None if self._started is None else time.perf_counter() - self._started
        line = compact_log_line(logs, state.global_step, elapsed)
        if line:
            self.training_bar.write(line)
