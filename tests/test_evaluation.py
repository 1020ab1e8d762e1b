"""Rank-bucket evaluation: per-position NLL/rank, per-token sums, group metrics, Trainer and `evaluate` wiring.

References are computed another way: numpy float64 log-softmax and explicit rank counting per position,
closed forms for constant logits, hand-counted ranks for ties, and the Trainer's own `eval_loss`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_selfish.callbacks import RankBucketEvalCallback, attach_rank_bucket_eval
from hf_selfish.evaluation import TokenStats, causal_nll_and_rank, group_metrics, target_nll_and_rank, validate_groups
from hf_selfish.metric_names import RANK_BUCKETS_FILE as RANK_BUCKETS_FILENAME
from hf_selfish.rank_buckets import RankBucketMetrics, rank_bucket_metric_path

from .tolerances import assert_close_scaled
from .torchrun import run_two_processes

REPO_ROOT = Path(__file__).resolve().parents[1]
STATS = ("nll", "nll_weighted", "tokens", "types", "accuracy", "recall_at_5", "mrr")


# ----------------------------------------------------------------------------------------------------------
# Reference implementation: numpy, float64, one position at a time.


def reference_group_metrics(logits: np.ndarray, targets: np.ndarray, groups: dict[str, list[int]]) -> dict:
    """Group metrics from aligned `[N, V]` logits and `[N]` targets (-100 skipped), straight from the definitions."""
    per_token: dict[int, list[tuple[float, int]]] = {}
    for row, target in zip(logits.astype(np.float64), targets):
        if target == -100:
            continue
        log_z = np.log(np.exp(row - row.max()).sum()) + row.max()
        rank = 1 + int((row > row[target]).sum())
        per_token.setdefault(int(target), []).append((log_z - row[target], rank))
    metrics = {}
    for name, ids in groups.items():
        occurrences = [occ for i in ids for occ in per_token.get(i, [])]
        if not occurrences:
            metrics[f"{name}_tokens"] = 0
            continue
        nlls = np.array([nll for nll, _ in occurrences])
        ranks = np.array([rank for _, rank in occurrences])
        metrics[f"{name}_nll"] = float(np.mean([np.mean([n for n, _ in per_token[i]]) for i in ids if i in per_token]))
        metrics[f"{name}_nll_weighted"] = float(nlls.mean())
        metrics[f"{name}_tokens"] = len(occurrences)
        metrics[f"{name}_types"] = sum(i in per_token for i in ids)
        metrics[f"{name}_accuracy"] = float((ranks == 1).mean())
        metrics[f"{name}_recall_at_5"] = float((ranks <= 5).mean())
        metrics[f"{name}_mrr"] = float((1.0 / ranks).mean())
    return metrics


def assert_metrics_close(actual: dict, expected: dict, rtol: float = 1e-5) -> None:
    assert set(actual) == set(expected), sorted(set(actual) ^ set(expected))
    for key, value in expected.items():
        if key.endswith(("_tokens", "_types")):
            assert actual[key] == value, key
        else:
            assert actual[key] == pytest.approx(value, rel=rtol, abs=1e-7), key


# ----------------------------------------------------------------------------------------------------------
# Per-position NLL and rank.


def test_target_nll_and_rank_match_cross_entropy_and_counting():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11) * 3
    targets = torch.randint(0, 11, (3, 7))
    targets[0, 2] = targets[2, 6] = -100
    nll, rank = target_nll_and_rank(logits, targets)
    expected_nll = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="none").view(3, 7)
    assert_close_scaled(nll, expected_nll)
    flat_logits, flat_targets = logits.reshape(-1, 11).numpy(), targets.reshape(-1).numpy()
    expected_rank = [0 if t == -100 else 1 + int((row > row[t]).sum()) for row, t in zip(flat_logits, flat_targets)]
    assert rank.reshape(-1).tolist() == expected_rank
    assert nll[0, 2] == 0 and rank[2, 6] == 0


def test_chunked_computation_equals_single_chunk():
    torch.manual_seed(1)
    logits = torch.randn(4, 9, 13, dtype=torch.bfloat16)
    targets = torch.randint(0, 13, (4, 9))
    whole = target_nll_and_rank(logits, targets)
    one_row_at_a_time = target_nll_and_rank(logits, targets, max_chunk_elements=1)
    torch.testing.assert_close(whole[0], one_row_at_a_time[0])
    assert torch.equal(whole[1], one_row_at_a_time[1])
    assert whole[0].dtype == torch.float32


def test_causal_shift_pairs_logits_t_with_label_t_plus_1():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = 5.0  # position 0 predicts token 2 strongly
    logits[0, 1, 1] = 5.0  # position 1 predicts token 1 strongly
    labels = torch.tensor([[3, 2, 0]])
    targets, nll, rank = causal_nll_and_rank(logits, labels)
    assert targets.tolist() == [[2, 0, -100]]
    assert rank.tolist() == [[1, 2, 0]] and nll[0, 2] == 0
    assert nll[0, 0].item() == pytest.approx(math.log(math.exp(5) + 3) - 5, abs=1e-6)
    assert nll[0, 1].item() == pytest.approx(math.log(math.exp(5) + 3), rel=1e-6)


def test_hand_made_ties_accuracy_recall_mrr():
    # rank = 1 + #logits strictly greater than the target's: ties count in the target's favour.
    logits = torch.tensor(
        [
            [1.0, 1.0, 1.0, 0.0, 0.0, 0.0],  # target 2, tied for max   -> rank 1
            [3.0, 2.0, 2.0, 2.0, 2.0, 1.0],  # target 5, below all      -> rank 6
            [0.0, 5.0, 5.0, 5.0, 5.0, 5.0],  # target 0                 -> rank 6
            [5.0, 4.0, 4.0, 4.0, 4.0, 0.0],  # target 1, tied with 2..4 -> rank 2
            [2.0, 2.0, 2.0, 2.0, 2.0, 2.0],  # target 3, all tied       -> rank 1
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 1                 -> rank 5
        ]
    )
    targets = torch.tensor([2, 5, 0, 1, 3, 1])
    nll, rank = target_nll_and_rank(logits, targets)
    assert rank.tolist() == [1, 6, 6, 2, 1, 5]
    stats = TokenStats.zeros(6)
    stats.update(targets, nll, rank)
    metrics = group_metrics(stats, {"all": list(range(6)), "one": [1]})
    assert metrics["all_tokens"] == 6 and metrics["all_types"] == 5
    assert metrics["all_accuracy"] == pytest.approx(2 / 6)
    assert metrics["all_recall_at_5"] == pytest.approx(4 / 6)
    assert metrics["all_mrr"] == pytest.approx((1 + 1 / 6 + 1 / 6 + 1 / 2 + 1 + 1 / 5) / 6)
    # token 1 occurs twice (ranks 2 and 5)
    assert metrics["one_accuracy"] == 0.0
    assert metrics["one_recall_at_5"] == 1.0
    assert metrics["one_mrr"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    assert metrics["all_nll"] == pytest.approx(
        np.mean([nll[targets == t].mean().item() for t in targets.unique()]), rel=1e-6
    )
    # all tied: NLL = log V exactly
    assert nll[4].item() == pytest.approx(math.log(6), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Group metrics.


def test_constant_logits_closed_form():
    # Every position has the same logits c, so a target i has NLL logsumexp(c) - c[i] and rank
    # 1 + #(c > c[i]) regardless of context: group metrics follow from token counts alone.
    vocab_size = 12
    c = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5])  # rank of i = i + 1
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 9, (5, 17), generator=generator)  # ids 9, 10, 11 never occur
    labels[1, 4:] = -100
    logits = c.expand(5, 17, vocab_size)
    groups = {"rank_1-4": [0, 1, 2, 3], "rank_5-8": [4, 5, 6, 7], "rank_9-12": [8, 9, 10, 11], "unseen": [10, 11]}

    metrics = RankBucketMetrics(groups, vocab_size)
    predictions = metrics.preprocess_logits_for_metrics(logits, labels)
    result = metrics.compute_metrics(_EvalPred(predictions, labels))

    targets = labels[:, 1:].reshape(-1)
    targets = targets[targets != -100]
    counts = torch.bincount(targets, minlength=vocab_size).double()
    token_nll = torch.logsumexp(c.double(), 0) - c.double()  # [V], closed form
    token_rank = torch.arange(1, vocab_size + 1, dtype=torch.float64)  # c is strictly decreasing
    for name, ids in groups.items():
        ids = torch.tensor(ids)
        n, present = counts[ids], counts[ids] > 0
        if not present.any():
            assert {k: v for k, v in result.items() if k.startswith(name + "_")} == {f"{name}_tokens": 0}
            continue
        assert result[f"{name}_tokens"] == int(n.sum())
        assert result[f"{name}_types"] == int(present.sum())
        assert result[f"{name}_nll"] == pytest.approx(token_nll[ids][present].mean().item(), rel=1e-6)
        assert result[f"{name}_nll_weighted"] == pytest.approx(
            (token_nll[ids] * n).sum().item() / n.sum().item(), rel=1e-6
        )
        assert result[f"{name}_accuracy"] == pytest.approx(((token_rank[ids] == 1) * n).sum().item() / n.sum().item())
        assert result[f"{name}_recall_at_5"] == pytest.approx(
            ((token_rank[ids] <= 5) * n).sum().item() / n.sum().item()
        )
        assert result[f"{name}_mrr"] == pytest.approx((n / token_rank[ids]).sum().item() / n.sum().item())
    assert result["rank_9-12_types"] == 1  # only id 8 occurs: 9, 10, 11 are excluded, not counted as 0


def test_absent_tokens_are_excluded_not_zero():
    stats = TokenStats.zeros(5)
    stats.update(torch.tensor([0, 0, 1]), torch.tensor([1.0, 3.0, 5.0]), torch.tensor([1, 2, 3]))
    metrics = group_metrics(stats, {"g": [0, 1, 2, 3]})
    assert metrics["g_nll"] == pytest.approx((2.0 + 5.0) / 2)  # mean of the per-token means of 0 and 1 only
    assert metrics["g_nll_weighted"] == pytest.approx(9.0 / 3)
    assert metrics["g_types"] == 2 and metrics["g_tokens"] == 3
    per_token = stats.per_token()
    assert per_token["nll"][:2].tolist() == [2.0, 5.0]
    assert torch.isnan(per_token["nll"][2:]).all()  # absent: NaN in the arrays, None in JSON
    assert stats.per_token_json()["nll"] == [2.0, 5.0, None, None, None]


def test_empty_group_reports_only_zero_tokens():
    stats = TokenStats.zeros(6)
    stats.update(torch.tensor([0, 1]), torch.tensor([0.5, 0.7]), torch.tensor([1, 1]))
    metrics = group_metrics(stats, {"seen": [0, 1], "unseen": [4, 5], "no_ids": []})
    assert {k: v for k, v in metrics.items() if not k.startswith("seen_")} == {"unseen_tokens": 0, "no_ids_tokens": 0}
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in metrics.values())
    assert [k[len("seen_") :] for k in metrics if k.startswith("seen_")] == list(STATS)


def test_ignored_positions_do_not_count():
    stats = TokenStats.zeros(4)
    targets = torch.tensor([[1, -100], [-100, 2]])
    stats.update(targets, torch.tensor([[1.0, 99.0], [99.0, 2.0]]), torch.tensor([[1, 0], [0, 3]]))
    assert stats.count.tolist() == [0, 1, 1, 0]
    assert stats.nll_sum.tolist() == [0.0, 1.0, 2.0, 0.0]


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"g": [0, 7]}, "outside the vocabulary"),
        ({"g": [-1]}, "outside the vocabulary"),
        ({"g": [1, 1]}, "more than once"),
        ({"a b": [1]}, "whitespace"),
        ({"": [1]}, "non-empty"),
        ({"g": [0.5]}, "integer token ids"),
        ([("g", [1])], "mapping"),
    ],
)
def test_bad_groups_raise(groups, message):
    with pytest.raises(ValueError, match=message):
        validate_groups(groups, 7)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="label id 9 is outside the vocabulary"):
        TokenStats.zeros(5).update(torch.tensor([9]), torch.tensor([1.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="ranks start at 1"):
        TokenStats.zeros(5).update(torch.tensor([2]), torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="vocab_size"):
        RankBucketMetrics({"g": [0]}, 5).preprocess_logits_for_metrics(torch.zeros(1, 3, 6), torch.zeros(1, 3).long())
    with pytest.raises(ValueError, match="preprocess_logits_for_metrics"):
        RankBucketMetrics({"g": [0]}, 5).compute_metrics(
            _EvalPred(torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long))
        )
    with pytest.raises(ValueError, match="aligned"):
        target_nll_and_rank(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        TokenStats.zeros(0)


# ----------------------------------------------------------------------------------------------------------
# Accumulation: batches, memory, processes.


class _EvalPred:
    """The two fields of `transformers.EvalPrediction` that the metrics read."""

    def __init__(self, predictions, label_ids):
        self.predictions, self.label_ids = predictions, label_ids


def test_batchwise_accumulation_equals_one_pass_and_memory_is_O_vocab():
    torch.manual_seed(4)
    vocab_size, groups = 9, {"low": [0, 1, 2, 3], "high": [4, 5, 6, 7, 8]}
    logits = torch.randn(40, 6, vocab_size)
    labels = torch.randint(0, vocab_size, (40, 6))
    labels[::7, -2:] = -100

    batched = RankBucketMetrics(groups, vocab_size)
    state_sizes = set()
    for start in range(0, 40, 3):
        rows = slice(start, start + 3)
        preds = batched.preprocess_logits_for_metrics(logits[rows], labels[rows])
        result = batched.compute_metrics(_EvalPred(preds, labels[rows]), compute_result=start + 3 >= 40)
        state_sizes.add(sum(t.numel() for t in batched._stats.tensors()))
        assert (result == {}) == (start + 3 < 40)
    assert state_sizes == {5 * vocab_size}  # five [V] sums, whatever the number of batches
    assert not batched.pending and batched.last_stats.total == int((labels[:, 1:] != -100).sum())

    whole = RankBucketMetrics(groups, vocab_size)
    preds = whole.preprocess_logits_for_metrics(logits, labels).numpy()  # the non-batched Trainer passes numpy
    assert_metrics_close(result, whole.compute_metrics(_EvalPred(preds, labels.numpy())), rtol=1e-9)

    expected = reference_group_metrics(
        logits[:, :-1].reshape(-1, vocab_size).numpy(), labels[:, 1:].reshape(-1).numpy(), groups
    )
    assert_metrics_close(result, expected)


def test_token_stats_add_equals_union():
    torch.manual_seed(5)
    targets, nll, rank = torch.randint(0, 6, (30,)), torch.rand(30), torch.randint(1, 7, (30,))
    whole, left, right = TokenStats.zeros(6), TokenStats.zeros(6), TokenStats.zeros(6)
    whole.update(targets, nll, rank)
    left.update(targets[:11], nll[:11], rank[:11])
    right.update(targets[11:], nll[11:], rank[11:])
    left.add_(right)
    for a, b in zip(whole.tensors(), left.tensors()):
        torch.testing.assert_close(a, b)
    left.all_reduce()  # no process group: a no-op
    torch.testing.assert_close(whole.nll_sum, left.nll_sum)


# ----------------------------------------------------------------------------------------------------------
# Trainer integration with a tiny GPT-2.

VOCAB = 20
GROUPS = {"rank_1-8": list(range(8)), "rank_9-16": list(range(8, 16)), "rank_17-20": list(range(16, 20))}


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    # GPT2LMHeadModel's class name does not match "ForCausalLM": tell the Trainer its loss shifts labels, so
    # `eval_loss` is normalised by the predicted positions (the SelfishTrainer does this itself).
    model.loss_type = "ForCausalLM"
    return model


def _ragged_eval_set(n: int = 11) -> list[dict]:
    """Variable-length examples over ids 0..15 (16..19 never occur), some labels -100."""
    generator = torch.Generator().manual_seed(7)
    examples = []
    for i in range(n):
        length = 6 + (5 * i) % 11
        ids = torch.randint(0, 16, (length,), generator=generator).tolist()
        labels = list(ids)
        if i % 3 == 0:
            labels[-2:] = [-100, -100]
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def _pad_collator(examples: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        pad = width - len(e["input_ids"])
        batch["input_ids"].append(e["input_ids"] + [0] * pad)
        batch["attention_mask"].append([1] * len(e["input_ids"]) + [0] * pad)
        batch["labels"].append(e["labels"] + [-100] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}


def _trainer(model, output_dir, eval_dataset, *, batch_size=4, batch_eval_metrics=True, **kwargs) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_eval_batch_size=batch_size,
        per_device_train_batch_size=4,
        batch_eval_metrics=batch_eval_metrics,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **kwargs,
    )
    return Trainer(
        model=model, args=args, eval_dataset=eval_dataset, train_dataset=eval_dataset, data_collator=_pad_collator
    )


@pytest.fixture(scope="module")
def model():
    return _tiny_gpt2()


@pytest.fixture(scope="module")
def direct_metrics(model):
    """Reference: each example run alone (no padding), numpy per-position NLL and rank."""
    logits, targets = [], []
    model.eval()  # no dropout, as in Trainer.evaluate
    with torch.no_grad():
        for example in _ragged_eval_set():
            out = model(input_ids=torch.tensor([example["input_ids"]]))
            logits.append(out.logits[0, :-1].numpy())
            targets.append(np.array(example["labels"][1:]))
    return reference_group_metrics(np.concatenate(logits), np.concatenate(targets), GROUPS)


def _eval_keys(metrics: dict) -> dict:
    return {k[len("eval_") :]: v for k, v in metrics.items() if k.startswith("eval_rank_")}


@pytest.mark.parametrize("batch_size", [3, 8])
def test_trainer_logs_group_metrics_equal_to_direct_computation(model, direct_metrics, tmp_path, batch_size):
    trainer = _trainer(model, tmp_path, _ragged_eval_set(), batch_size=batch_size)
    callback = attach_rank_bucket_eval(trainer, GROUPS, VOCAB)
    metrics = trainer.evaluate()
    assert_metrics_close(_eval_keys(metrics), direct_metrics, rtol=1e-5)
    logged = trainer.state.log_history[-1]
    assert _eval_keys(logged) == _eval_keys(metrics)  # went through Trainer.log
    assert metrics["eval_rank_17-20_tokens"] == 0 and "eval_rank_17-20_nll" not in logged
    assert callback.per_token is not None and not callback.metrics.pending


def test_eval_loss_unchanged_and_nothing_large_kept(model, tmp_path):
    plain = _trainer(model, tmp_path, _ragged_eval_set(), batch_size=3).evaluate()["eval_loss"]
    trainer = _trainer(model, tmp_path, _ragged_eval_set(), batch_size=3)
    attach_rank_bucket_eval(trainer, GROUPS, VOCAB)
    assert trainer.evaluate()["eval_loss"] == plain
    output = trainer.evaluation_loop(trainer.get_eval_dataloader(), description="Evaluation")
    assert output.predictions is None and output.label_ids is None  # batch_eval_metrics: the Trainer keeps nothing
    assert "eval_rank_1-8_nll" in output.metrics


def test_without_batch_eval_metrics_gives_the_same_numbers(model, direct_metrics, tmp_path):
    trainer = _trainer(model, tmp_path, _ragged_eval_set(), batch_size=3, batch_eval_metrics=False)
    callback = RankBucketEvalCallback(GROUPS, VOCAB)
    trainer.compute_metrics = callback.compute_metrics
    trainer.preprocess_logits_for_metrics = callback.preprocess_logits_for_metrics
    trainer.add_callback(callback)
    output = trainer.evaluation_loop(trainer.get_eval_dataloader(), description="Evaluation")
    assert output.predictions.shape[-1] == 2  # only [N, T, 2] statistics, never [N, T, V] logits
    assert_metrics_close(_eval_keys(output.metrics), direct_metrics, rtol=1e-5)


def test_all_tokens_group_weighted_nll_equals_eval_loss(tmp_path):
    # Independent path: the model's own loss. Fixed-length blocks, equal batches, no -100: the Trainer's
    # eval_loss is then the mean NLL over all predicted positions.
    generator = torch.Generator().manual_seed(11)
    rows = torch.randint(0, VOCAB, (8, 12), generator=generator).tolist()
    blocks = [{"input_ids": row, "labels": row} for row in rows]
    trainer = _trainer(_tiny_gpt2(), tmp_path, blocks, batch_size=4)
    attach_rank_bucket_eval(trainer, {"all": list(range(VOCAB))}, VOCAB)
    metrics = trainer.evaluate()
    assert metrics["eval_all_tokens"] == 8 * 11
    assert metrics["eval_all_nll_weighted"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


def test_callback_writes_per_token_json_and_history_reaches_checkpoints(tmp_path):
    trainer = _trainer(
        _tiny_gpt2(),
        tmp_path,
        _ragged_eval_set(),
        batch_size=4,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
    )
    attach_rank_bucket_eval(trainer, GROUPS, VOCAB)
    trainer.train()
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    evals = [entry for entry in state["log_history"] if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [1, 2]
    assert all(entry["eval_rank_1-8_tokens"] == evals[0]["eval_rank_1-8_tokens"] > 0 for entry in evals)
    assert evals[0]["eval_rank_1-8_nll"] != evals[1]["eval_rank_1-8_nll"]  # the model trained in between

    record = json.loads((tmp_path / RANK_BUCKETS_FILENAME).read_text())
    assert record["global_step"] == 2 and record["groups"] == GROUPS and record["vocab_size"] == VOCAB
    per_token = record["per_token"]
    assert per_token["nll"][16:] == [None] * 4 and per_token["count"][16:] == [0] * 4
    counts = np.array(per_token["count"][:16])
    nll = np.array(per_token["nll"][:8])
    assert np.mean(nll) == pytest.approx(evals[-1]["eval_rank_1-8_nll"], rel=1e-9)
    assert counts[:8].sum() == evals[-1]["eval_rank_1-8_tokens"]


def test_attach_refuses_to_replace_existing_hooks(model, tmp_path):
    trainer = _trainer(model, tmp_path, _ragged_eval_set())
    trainer.compute_metrics = lambda eval_pred, compute_result=True: {}
    with pytest.raises(ValueError, match="already has compute_metrics"):
        attach_rank_bucket_eval(trainer, GROUPS, VOCAB)


def test_trainer_kwargs_install_the_hooks(model, direct_metrics, tmp_path):
    callback = RankBucketEvalCallback(GROUPS, VOCAB, save_per_token=False)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=5,
        batch_eval_metrics=True,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=_ragged_eval_set(),
        data_collator=_pad_collator,
        **callback.trainer_kwargs(),
    )
    assert_metrics_close(_eval_keys(trainer.evaluate()), direct_metrics, rtol=1e-5)
    assert not (tmp_path / RANK_BUCKETS_FILENAME).exists()


# ----------------------------------------------------------------------------------------------------------
# The `evaluate` module, loaded from the package folder with the Hub switched off.

_EVALUATE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import evaluate
    from hf_selfish.rank_buckets import rank_bucket_metric_path
    inputs = json.loads(sys.stdin.read())
    metric = evaluate.load(rank_bucket_metric_path(), groups=inputs["groups"])
    for start in range(0, len(inputs["references"]), 7):
        metric.add_batch(predictions=inputs["pairs"][start:start + 7], references=inputs["references"][start:start + 7])
    with_ranks = metric.compute()
    nll_only = evaluate.load(rank_bucket_metric_path()).compute(
        predictions=[p[0] for p in inputs["pairs"]], references=inputs["references"], groups=inputs["groups"]
    )
    print(json.dumps({"with_ranks": with_ranks, "nll_only": nll_only}))
    """
)


def test_evaluate_module_loads_offline_from_the_package_and_matches(tmp_path):
    torch.manual_seed(8)
    logits = torch.randn(40, 10)
    targets = torch.randint(0, 8, (40,))
    targets[5] = -100
    nll, rank = target_nll_and_rank(logits, targets)
    groups = {"a": [0, 1, 2], "b": [3, 4, 5, 6, 7], "never": [8, 9]}
    pairs = torch.stack([nll.double(), rank.double()], -1).tolist()  # [N, 2]
    inputs = {"pairs": pairs, "references": targets.tolist(), "groups": groups}
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", _EVALUATE_SCRIPT],
        input=json.dumps(inputs),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])

    expected = reference_group_metrics(logits.numpy(), targets.numpy(), groups)
    assert_metrics_close(results["with_ranks"], expected)
    expected_nll_only = {
        k: v for k, v in expected.items() if k.endswith(("_nll", "_nll_weighted", "_tokens", "_types"))
    }
    assert_metrics_close(results["nll_only"], expected_nll_only)
    assert os.path.isfile(os.path.join(rank_bucket_metric_path(), "rank_bucket_nll.py"))


# ----------------------------------------------------------------------------------------------------------
# Two processes (gloo on CPU): the Trainer gathers the [B, T, 2] statistics, so each process logs the metrics
# of the whole eval set, with the sampler's duplicated tail samples dropped.

_DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    import torch.distributed as dist
    from tests.test_evaluation import GROUPS, VOCAB, _ragged_eval_set, _tiny_gpt2, _trainer
    from hf_selfish.callbacks import attach_rank_bucket_eval
    from tests.torchrun import exit_now
    trainer = _trainer(_tiny_gpt2(), sys.argv[2], _ragged_eval_set(), batch_size=2)
    attach_rank_bucket_eval(trainer, GROUPS, VOCAB)
    metrics = trainer.evaluate()
    world = dist.get_world_size()
    with open(os.path.join(sys.argv[2], f"metrics_{dist.get_rank()}.json"), "w") as f:
        json.dump({"world_size": world, "metrics": metrics}, f)
    dist.barrier()
    dist.destroy_process_group()  # an unclean gloo exit aborts about one run in five
    exit_now()  # and the interpreter's teardown can deadlock on gloo's thread (tests/torchrun.py)
    """
)


@pytest.mark.slow
def test_two_processes_log_the_metrics_of_the_whole_eval_set(direct_metrics, tmp_path):
    script = tmp_path / "run_eval.py"
    script.write_text(_DISTRIBUTED_SCRIPT)
    run_two_processes(script, str(Path(__file__).parent), str(tmp_path))
    results = [json.loads((tmp_path / f"metrics_{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    for result in results:
        assert_metrics_close(_eval_keys(result["metrics"]), direct_metrics, rtol=1e-5)
