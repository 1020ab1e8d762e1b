"""The sparse backward of the fused loss: the planner against an explicit search, the sparse matmuls
against the dense ones for any row split, and, end to end, that the fused loss really skips columns."""

from __future__ import annotations

import math

import pytest
import torch

from hf_selfish.ops import fused as fused_module
from hf_selfish.ops.fused import linear_selfish_cross_entropy
from hf_selfish.ops.logit_transform import LogitTransform
from hf_selfish.ops.loss import mask_below_threshold, softmax_nll
from hf_selfish.ops.sparse_backward import (
    SPARSE_MAX_COST,
    LinearGrads,
    SparseGrad,
    SparsePlan,
    accumulate_sparse,
    plan_sparse_backward,
    sparse_softmax_nll,
)

from .test_fused import IGNORE, V, assert_matches_reference, make_inputs
from .tolerances import assert_exact


def masked_chunk(n_rows=24, vocab=64, seed=0, wide_every=5):
    """Shifted-and-masked logits like a trained model's: most rows keep a few entries, every
    ``wide_every``-th row (an uncertain position: its target ranks low) keeps many. Returns them and
    the masked count of each row."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_rows, vocab, generator=generator) * 4
    order = logits.argsort(dim=1, descending=True)  # [c, V]
    rank = torch.where(torch.arange(n_rows) % wide_every == 0, vocab // 2, 0)  # the target's rank in its row
    labels = order[torch.arange(n_rows), rank]
    shifted = logits - (logits.gather(1, labels.unsqueeze(1)) - 1.0)
    n_masked = mask_below_threshold(shifted, count=True)
    return shifted, n_masked


def explicit_plan(masked):
    """The planner's rule, by loops: split rows at ceil(log2(kept)) <= q, the q of least matmul size."""
    n_rows, vocab = masked.shape
    kept = [[j for j in range(vocab) if masked[i, j] != float("-inf")] for i in range(n_rows)]
    n_classes = vocab.bit_length() + 1
    classes = [min(n_classes - 1, max(0, math.ceil(math.log2(len(k))))) for k in kept]
    best = None
    for q in range(n_classes):
        narrow = [i for i in range(n_rows) if classes[i] <= q]
        columns = sorted({j for i in narrow for j in kept[i]})
        cost = (n_rows - len(narrow)) * vocab + len(narrow) * len(columns)
        if best is None or cost < best[0]:
            best = (cost, narrow, columns)
    cost, narrow, columns = best
    if cost > SPARSE_MAX_COST * n_rows * vocab:
        return None
    return narrow, columns, [i for i in range(n_rows) if i not in narrow]


@pytest.mark.parametrize(
    "seed, vocab, wide_every, planned",
    [(0, 1024, 12, True), (1, 1024, 1000, True), (2, 64, 5, None), (3, 64, 3, None), (4, 64, 1, False)],
)
def test_plan_equals_an_explicit_search(seed, vocab, wide_every, planned):
    masked, n_masked = masked_chunk(n_rows=48, vocab=vocab, seed=seed, wide_every=wide_every)
    assert n_masked.tolist() == [int((row == float("-inf")).sum()) for row in masked]
    plan = plan_sparse_backward(masked, n_masked)
    expected = explicit_plan(masked)
    if planned is not None:  # None: either way
        assert (expected is not None) == planned
    if expected is None:
        assert plan is None
        return
    assert (plan.narrow_rows.tolist(), plan.columns.tolist(), plan.wide_rows.tolist()) == expected
    assert plan.cost(masked.shape[1]) <= SPARSE_MAX_COST * masked.numel()


def test_plan_splits_wide_rows_off_and_refuses_when_nothing_pays():
    plan = plan_sparse_backward(*masked_chunk(n_rows=48, vocab=1024, wide_every=12))
    assert plan is not None and set(range(0, 48, 12)) <= set(plan.wide_rows.tolist())  # the uncertain rows
    assert plan.narrow_rows.numel() > 36 and plan.columns.numel() < 300
    everything_kept = torch.zeros(8, 64)  # every row keeps every entry: no column to skip
    assert plan_sparse_backward(everything_kept, torch.zeros(8, dtype=torch.long)) is None


def accumulators(hidden, weight, with_bias=True):
    """Where the gradients go: ``[c, d]`` in the input dtype, ``[V, d]`` and ``[V]`` in the ops' compute dtype."""
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    bias = torch.zeros(weight.shape[0], dtype=dtype) if with_bias else None
    return [torch.empty_like(hidden), torch.zeros(weight.shape, dtype=dtype), bias]


def dense_grads(grad_logits, hidden, weight, with_bias):
    grads = accumulators(hidden, weight, with_bias)
    fused_module._accumulate_chunk_grads(grad_logits, None, hidden, weight, LinearGrads(*grads))
    return grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("split", ["all narrow", "alternate", "one narrow row"])
def test_accumulate_sparse_equals_dense_for_any_row_split(split, dtype):
    masked, _ = masked_chunk(n_rows=12, vocab=40, seed=5)
    generator = torch.Generator().manual_seed(6)
    grad_logits = torch.where(masked != float("-inf"), torch.randn(12, 40, generator=generator), 0.0)  # [c, V]
    if dtype == torch.float64:
        grad_logits = grad_logits.double()
    hidden = torch.randn(12, 8, generator=generator).to(dtype)
    weight = torch.randn(40, 8, generator=generator).to(dtype)
    rows = torch.arange(12)
    narrow = {"all narrow": rows, "alternate": rows[0::2], "one narrow row": rows[3:4]}[split]
    wide = rows[~torch.isin(rows, narrow)]
    columns = (grad_logits[narrow] != 0).any(dim=0).nonzero().squeeze(1)
    assert columns.numel() < 40  # the plan skips columns
    sparse = accumulators(hidden, weight)
    blocks = SparseGrad(
        SparsePlan(narrow, columns, wide), grad_logits[narrow][:, columns], grad_logits[wide] if wide.numel() else None
    )
    accumulate_sparse(blocks, hidden, weight, LinearGrads(*sparse))
    for got, want in zip(sparse, dense_grads(grad_logits, hidden, weight, with_bias=True)):
        if dtype == torch.float64:
            assert_exact(got, want)
        else:  # bfloat16: each matmul rounds its product, so the split rounds in other places than the dense one
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=2e-2)


def kept_by_hand(hidden, weight, bias, labels, margin):
    """Per valid row, the ids it keeps (logit >= target logit - margin), in float64."""
    logits = (hidden.double() @ weight.double().T + bias.double()).detach()
    rows = [(row, label) for row, label in zip(logits.tolist(), labels.tolist()) if label != IGNORE]
    gaps = [abs(x - (row[label] - margin)) for row, label in rows for x in row]
    assert min(gaps) > 1e-3  # no entry so close to the threshold that float32 rounding could flip it
    return [{j for j, x in enumerate(row) if x >= row[label] - margin} for row, label in rows]


@pytest.mark.parametrize(
    "margin, sparse, targets_on_top, expect_sparse",
    [(2.0, True, True, True), (2.0, False, True, False), (None, True, True, False), (2.0, True, False, False)],
)
def test_the_fused_loss_skips_the_masked_columns(monkeypatch, margin, sparse, targets_on_top, expect_sparse):
    """Fails if the sparse path silently falls back to dense: each chunk's narrow rows run over exactly
    the columns they keep. Targets on top of their row (a trained model) keep few; random targets keep
    about half the vocabulary in every row, where no split pays and the chunk takes the dense matmuls."""
    hidden, weight, labels, bias = make_inputs(ignore_every=4, bias=True)
    with torch.no_grad():
        weight.mul_(4.0)
        top = torch.addmm(bias, hidden, weight.T).argmax(dim=1)
    if targets_on_top:
        labels = torch.where(labels == IGNORE, labels, top)
    plans = []
    accumulate = fused_module._accumulate_chunk_grads

    def spy(grad_logits, sparse, *args):
        plans.append(None if sparse is None else sparse.plan)
        return accumulate(grad_logits, sparse, *args)

    monkeypatch.setattr(fused_module, "_accumulate_chunk_grads", spy)
    assert_matches_reference(hidden, weight, labels, margin, bias=bias, chunk_size=5)
    plans.clear()
    loss = linear_selfish_cross_entropy(hidden, weight, labels, margin, bias=bias, chunk_size=5, sparse_backward=sparse)
    loss.backward()
    assert len(plans) == math.ceil(int((labels != IGNORE).sum()) / 5)
    assert all(plan is not None for plan in plans) == expect_sparse
    assert any(plan is not None for plan in plans) == expect_sparse
    if not expect_sparse:
        return
    kept = kept_by_hand(hidden, weight, bias, labels, margin)
    for start, plan in zip(range(0, len(kept), 5), plans):
        chunk = kept[start : start + 5]
        assert sorted(plan.narrow_rows.tolist() + plan.wide_rows.tolist()) == list(range(len(chunk)))
        assert plan.columns.tolist() == sorted(set().union(*(chunk[i] for i in plan.narrow_rows.tolist())))
        assert plan.cost(V) <= SPARSE_MAX_COST * len(chunk) * V  # at most half the dense matmul size
        wide_union = sorted(set().union(*(chunk[i] for i in plan.wide_rows.tolist())))
        if plan.wide_columns is not None:
            assert plan.wide_columns.tolist() == wide_union


def test_wide_rows_run_over_their_own_columns_when_few():
    """Two uncertain rows keeping the same 300 of 1024 ids: their block is those 300 columns, and the
    loss and gradients equal the dense path's."""
    masked, n_masked = masked_chunk(n_rows=48, vocab=1024, wide_every=24)  # rows 0 and 24 keep half
    masked = masked.double()  # float64: sparse and dense are the same sums in another order
    shared = torch.arange(100, 400)
    for row in (0, 24):
        kept = masked[row].clone()
        masked[row] = float("-inf")
        masked[row, shared] = kept[shared].clamp(min=0.0)  # the target (shift 0 -> value 1.0) stays kept
        n_masked[row] = 1024 - 300
    plan = plan_sparse_backward(masked, n_masked)
    assert plan is not None and plan.wide_rows.tolist() == [0, 24]
    assert plan.wide_columns.tolist() == shared.tolist()
    assert plan.cost(1024) == plan.narrow_rows.numel() * plan.columns.numel() + 2 * 300
    labels = masked.argmax(dim=1)  # a kept column of each row
    labels[[0, 24]] = shared[5]
    nll, blocks = sparse_softmax_nll(masked.clone(), labels, plan, grad_scale=0.5)
    want_nll, want_grad = softmax_nll(masked.clone(), labels, 0.5)
    order = torch.cat([plan.narrow_rows, plan.wide_rows])
    assert_exact(nll, want_nll[order])
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(48, 8, generator=generator, dtype=torch.float64)
    weight = torch.randn(1024, 8, generator=generator, dtype=torch.float64)
    sparse = accumulators(hidden, weight)  # float64: the same sums of the same blocks in another order
    accumulate_sparse(blocks, hidden, weight, LinearGrads(*sparse))
    for got, want in zip(sparse, dense_grads(want_grad, hidden, weight, with_bias=True)):
        assert_exact(got, want)


def test_a_nan_logit_takes_the_dense_matmuls(monkeypatch):
    """A NaN must reach every gradient it touches, as in the dense matmuls: such a chunk is not planned."""
    hidden, weight, labels, _ = make_inputs()
    with torch.no_grad():
        weight.mul_(4.0)
        labels = (hidden @ weight.T).argmax(dim=1)
        weight[7, 0] = float("nan")
    plans = []
    accumulate = fused_module._accumulate_chunk_grads
    monkeypatch.setattr(
        fused_module, "_accumulate_chunk_grads", lambda g, sparse, *a: (plans.append(sparse), accumulate(g, sparse, *a))
    )
    linear_selfish_cross_entropy(hidden, weight, labels, 2.0, chunk_size=5).backward()
    assert plans and all(plan is None for plan in plans)
    assert torch.isnan(hidden.grad).all(dim=1).all()  # the NaN column reaches every row, as dense gives


@pytest.mark.parametrize("wide", ["none", "all columns", "own columns"])
def test_the_softcap_derivative_reaches_every_sparse_block(wide):
    """``1 - tanh^2`` multiplies each block of a sparse gradient at its own rows and columns, as it
    multiplies the dense gradient (the wide block over its own columns included)."""
    generator = torch.Generator().manual_seed(11)
    grad = torch.randn(6, 30, generator=generator)  # [c, V] a dense logit gradient
    derivative = torch.rand(6, 30, generator=generator)  # [c, V] 1 - tanh^2
    rows = torch.arange(6)
    narrow_rows, wide_rows = (rows, rows[:0]) if wide == "none" else (rows[1::2], rows[0::2])
    columns, wide_columns = torch.tensor([2, 5, 7, 19]), torch.tensor([0, 3, 5, 11, 29])
    plan = SparsePlan(narrow_rows, columns, wide_rows, wide_columns if wide == "own columns" else None)
    wide_block = grad[wide_rows] if plan.wide_columns is None else grad[wide_rows][:, wide_columns]
    blocks = SparseGrad(plan, grad[narrow_rows][:, columns].clone(), None if wide == "none" else wide_block.clone())
    result = fused_module._ChunkResult(torch.zeros(()), torch.zeros((), dtype=torch.long), None, blocks)
    fused_module._chain_softcap(LogitTransform(softcap=3.0), derivative, result)
    want = grad * derivative
    torch.testing.assert_close(blocks.narrow, want[narrow_rows][:, columns])
    if wide != "none":
        want_wide = want[wide_rows] if plan.wide_columns is None else want[wide_rows][:, wide_columns]
        torch.testing.assert_close(blocks.wide, want_wide)
