"""Exact sparse chunks of the fused loss: skip the vocabulary columns whose gradient is exactly zero.

A masked entry's logit gradient is exactly zero, so a chunk's gradient matmuls
(``grad_hidden = G @ W``, ``grad_weight += G.T @ hidden``) and the softmax that makes ``G`` need only
the entries some row keeps. In a trained model a row keeps few entries (98-99% are masked at margin 2),
but a few rows -- the uncertain positions -- keep thousands, so the columns kept by *some* row of a
chunk of a thousand rows are most of the vocabulary (SmolLM2-135M on tinyshakespeare: 71%).
:func:`plan_sparse_backward` therefore splits the chunk's rows by how many entries they keep: the
*narrow* rows run over the union of their kept columns only, the *wide* rows over the whole
vocabulary. The split is the one of least matmul size over log2 classes of the kept count, found in
one pass (the per-class column maxima); a chunk where no split cuts the matmul size to
:data:`SPARSE_MAX_COST` takes the dense path. Every variant gives the dense result up to the order of
the float sums. Measurements: ``docs/design.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .loss import softmax_nll

__all__ = [
    "SPARSE_MAX_COST",
    "WIDE_MAX_SHARE",
    "LinearGrads",
    "SparseGrad",
    "SparsePlan",
    "accumulate_block",
    "accumulate_sparse",
    "plan_sparse_backward",
    "sparse_softmax_nll",
]

# A plan must cut the matmul size to at most this share of the dense one: below it the gathers
# (about a pass over the chunk's gradient) cost less than the skipped columns save (docs/design.md).
SPARSE_MAX_COST = 0.35
# The wide rows run over their own kept columns when those are at most this share of the vocabulary
# (gathering columns paid below ~65% of them, docs/design.md).
WIDE_MAX_SHARE = 0.5


class SparsePlan(NamedTuple):
    """How one chunk's gradient matmuls skip zero columns."""

    narrow_rows: torch.Tensor  # [m] rows (of the chunk) taken over `columns` only
    columns: torch.Tensor  # [k] sorted ids some narrow row keeps
    wide_rows: torch.Tensor  # [c - m] rows taken over `wide_columns` (may be empty)
    wide_columns: torch.Tensor | None = None  # [kw] sorted ids some wide row keeps; None: the whole vocabulary

    def cost(self, vocab_size: int) -> int:
        """Entries of the gradient the matmuls read: ``m * k + (c - m) * kw`` (``kw = V`` without wide columns)."""
        wide_width = vocab_size if self.wide_columns is None else self.wide_columns.numel()
        return self.narrow_rows.numel() * self.columns.numel() + self.wide_rows.numel() * wide_width


def kept_class(n_kept: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``[c]`` class of each row: ``ceil(log2(kept entries))``, so class q holds rows keeping at most ``2**q``."""
    return torch.log2(n_kept.double()).ceil_().long().clamp_(0, n_classes - 1)


def plan_sparse_backward(masked_logits: torch.Tensor, n_masked: torch.Tensor) -> SparsePlan | None:
    """The cheapest row split of a chunk for :func:`accumulate_sparse`, or ``None`` when dense is cheaper.

    Args:
        masked_logits: ``[c, V]`` shifted logits after ``mask_below_threshold`` (masked entries are ``-inf``).
        n_masked: ``[c]`` masked entries of each row (``mask_below_threshold(..., count=True)``).
    """
    n_rows, vocab_size = masked_logits.shape
    classes = kept_class(vocab_size - n_masked, vocab_size.bit_length() + 1)  # [c]
    n_classes = int(classes.max()) + 1  # only the classes present: the [Q, V] passes below scale with Q
    column_max = masked_logits.new_full((n_classes, vocab_size), float("-inf"))
    index = classes.unsqueeze(1).expand(n_rows, vocab_size)
    column_max.scatter_reduce_(0, index, masked_logits, "amax")  # [Q, V]: one read-only pass
    running_max = column_max.clone()  # [Q, V]: max over the classes <= q (column_max stays per class)
    for q in range(1, n_classes):  # 8x faster than cummax on the CPU
        torch.maximum(running_max[q], running_max[q - 1], out=running_max[q])
    kept_up_to = running_max != float("-inf")  # [Q, V]: kept by a row of class <= q
    rows_up_to = torch.bincount(classes, minlength=n_classes).cumsum(0)  # [Q]
    cost = (n_rows - rows_up_to) * vocab_size + rows_up_to * torch.count_nonzero(kept_up_to, dim=1)  # [Q]
    best = int(cost.argmin())
    if int(cost[best]) > SPARSE_MAX_COST * n_rows * vocab_size:
        return None
    narrow = classes <= best  # [c]
    return SparsePlan(
        narrow.nonzero().squeeze(1),
        kept_up_to[best].nonzero().squeeze(1),
        (~narrow).nonzero().squeeze(1),
        wide_columns(column_max[best + 1 :], vocab_size),
    )


def wide_columns(wide_class_max: torch.Tensor, vocab_size: int) -> torch.Tensor | None:
    """Sorted ids some wide row keeps, from the column maxima of the wide classes ``[Q', V]`` (``-inf`` where
    no row of the class keeps the column), or ``None`` when they are most of the vocabulary.

    A few wide rows (1-2 of a 256-row chunk of gemma-3-270m) keep a few per cent of its 262k ids; over the
    whole vocabulary their two gradient matmuls read all of ``weight`` and write all of ``grad_weight`` --
    a quarter of the chunk's logits matmul for two rows.
    """
    if wide_class_max.shape[0] == 0:
        return None
    columns = (wide_class_max.amax(dim=0) != float("-inf")).nonzero().squeeze(1)  # [kw]
    return columns if columns.numel() <= WIDE_MAX_SHARE * vocab_size else None


class SparseGrad(NamedTuple):
    """A chunk's logit gradient as the blocks of a :class:`SparsePlan` (everything else is exactly 0)."""

    plan: SparsePlan
    narrow: torch.Tensor  # [m, k] float32: narrow rows x plan.columns
    wide: torch.Tensor | None  # [c - m, kw] float32: wide rows x plan.wide_columns (None: no wide rows)


def sparse_softmax_nll(
    masked_logits: torch.Tensor, labels: torch.Tensor, plan: SparsePlan, grad_scale: float
) -> tuple[torch.Tensor, SparseGrad]:
    """:func:`~hf_selfish.ops.loss.softmax_nll` of a chunk on the plan's blocks only: ``nll [c]`` (in
    the order narrow rows, then wide rows) and the gradient's blocks. ``masked_logits`` is left intact.

    A narrow row keeps nothing outside ``plan.columns``, so its softmax over those columns is its whole
    softmax (its target is among them: the target is always kept).
    """
    all_narrow = plan.wide_rows.numel() == 0
    narrow = masked_logits.index_select(1, plan.columns)  # [c, k]
    if not all_narrow:
        narrow = narrow[plan.narrow_rows]  # [m, k]
    narrow_labels = labels if all_narrow else labels[plan.narrow_rows]
    nll, narrow_grad = softmax_nll(narrow, torch.searchsorted(plan.columns, narrow_labels), grad_scale)
    if all_narrow:
        return nll, SparseGrad(plan, narrow_grad, None)
    # rows by advanced indexing: float `index_select` along rows can be 20x slower on the CPU (it reads
    # its uninitialised output, and denormal garbage there stalls it; docs/design.md)
    wide, wide_labels = masked_logits[plan.wide_rows], labels[plan.wide_rows]  # [c - m, V], [c - m]
    if plan.wide_columns is not None:
        wide = wide.index_select(1, plan.wide_columns)  # [c - m, kw]
        wide_labels = torch.searchsorted(plan.wide_columns, wide_labels)
    wide_nll, wide_grad = softmax_nll(wide, wide_labels, grad_scale)
    return torch.cat([nll, wide_nll]), SparseGrad(plan, narrow_grad, wide_grad)


class LinearGrads(NamedTuple):
    """Where a chunk's gradients go (``None``: not wanted)."""

    hidden: torch.Tensor | None  # [c, d] the chunk's rows of grad_hidden, input dtype
    weight: torch.Tensor | None  # [V, d] float32 sum over chunks (float64 for float64 inputs)
    bias: torch.Tensor | None  # [V] float32 sum over chunks (float64 for float64 inputs)


def accumulate_block(
    grad: torch.Tensor,
    hidden_c: torch.Tensor,
    weight: torch.Tensor,
    out: LinearGrads,
    rows: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> None:
    """Backpropagate a block of a chunk's logit gradient through the linear layer into ``out``.

    ``grad`` is ``[r, k]`` float32: the chunk's ``rows`` (``None``: all) by the vocabulary ``columns``
    (``None``: all); entries outside the block must be zero.
    """
    hidden_r = hidden_c if rows is None else hidden_c[rows]  # [r, d]
    grad_lowp = grad.to(hidden_c.dtype)  # no copy for float32
    if out.hidden is not None:
        weight_k = weight if columns is None else weight.index_select(0, columns)  # [k, d]
        if rows is None:
            torch.mm(grad_lowp, weight_k, out=out.hidden)  # [c, d]
        else:
            out.hidden.index_copy_(0, rows, grad_lowp @ weight_k)  # [r, d]
    if out.weight is not None:
        if columns is not None:
            out.weight.index_add_(0, columns, (grad_lowp.T @ hidden_r).to(out.weight.dtype))  # [k, d] into [V, d]
        elif grad_lowp.dtype == out.weight.dtype:
            out.weight.addmm_(grad_lowp.T, hidden_r)  # [V, d]
        else:
            out.weight.add_(grad_lowp.T @ hidden_r)  # [V, d]: half-precision matmul, float32 sum
    if out.bias is not None:
        sums = grad.sum(dim=0)  # float32 [k] or [V]
        if columns is None:
            out.bias.add_(sums)
        else:
            out.bias.index_add_(0, columns, sums)


def accumulate_sparse(sparse: SparseGrad, hidden_c: torch.Tensor, weight: torch.Tensor, out: LinearGrads) -> None:
    """Backpropagate a chunk's sparse logit gradient: narrow rows against ``weight[columns]``, wide rows
    against ``weight[wide_columns]`` (all of it when ``None``)."""
    plan = sparse.plan
    if sparse.wide is None:  # every row narrow
        accumulate_block(sparse.narrow, hidden_c, weight, out, columns=plan.columns)
        return
    accumulate_block(sparse.narrow, hidden_c, weight, out, plan.narrow_rows, plan.columns)
    accumulate_block(sparse.wide, hidden_c, weight, out, plan.wide_rows, plan.wide_columns)
