"""Fused linear + selfish cross-entropy: the loss of ``hidden @ weight.T`` without ``[N, V]`` logits.

For a causal LM the logits ``[tokens, vocab]`` dominate training memory once the vocabulary is
large (32k-256k): float32 logits of 8192 tokens over 128256 ids are 4.2 GB, and the unfused loss
keeps several such tensors alive (the logits, the masked copy, the softmax saved for backward, the
gradient). :func:`linear_selfish_cross_entropy` computes the same loss and the gradients for
``hidden``, ``weight`` and ``bias`` chunk by chunk, so at any time only ``[chunk, V]`` values
exist: peak extra memory is ``O(chunk x V)``, never ``O(N x V)``.

Per row (see :mod:`hf_selfish.ops.loss`), with ``t`` the target and ``m`` the margin::

    logits    = hidden @ weight.T (+ bias)          # [V]
    threshold = logits[t] - m
    logits[logits < threshold] = -inf               # the target itself is never masked
    loss      = logsumexp(logits) - logits[t]
    d loss / d logits = softmax(logits) - onehot(t) # 0 on masked entries

The mask is a comparison, so it carries no gradient: the gradient of a row is the softmax over the
kept entries minus the target's one-hot, exactly as autograd gives for the unfused
``masked_fill`` + ``F.cross_entropy``.

``logit_scale`` and ``softcap`` transform each chunk's logits before the mask, as Cohere and Gemma 2/3
do after their head (:mod:`hf_selfish.ops.logit_transform`). ``split`` and ``always_kept`` compute the selfish
variants of :mod:`hf_selfish.ops.variants` (the mask on one side of the gradient; ids the mask never drops).

Design notes and measurements: ``docs/design.md``. Limitations: ``backward`` runs once per forward
(the gradients are handed to autograd, not kept); higher-order gradients are not supported.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .logit_transform import LogitTransform, make_logit_transform
from .loss import (
    check_label_range,
    compute_dtype,
    keep_above,
    mask_below_threshold,
    softmax_nll,
    take_saved,
    validate_margin,
)
from .sparse_backward import (
    LinearGrads,
    SparseGrad,
    accumulate_block,
    accumulate_sparse,
    plan_sparse_backward,
    sparse_softmax_nll,
)
from .variants import FusedChunkVariant, check_fused_variant

__all__ = ["DEFAULT_CHUNK_BYTES", "check_chunk_size", "default_chunk_size", "linear_selfish_cross_entropy"]

# Budget of one chunk's float32 logits ``[chunk, V]``: the working set of a chunk, updated in place.
DEFAULT_CHUNK_BYTES = 256 * 2**20


def check_chunk_size(value, name: str = "chunk_size", none: str = "None") -> int | None:
    """``value`` when it is a positive int or None (the default chunk), else a ``ValueError`` naming ``name``
    (``none``: how the caller's settings spell None, e.g. YAML's ``null``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or {none}, got {value!r}")
    return value


def default_chunk_size(vocab_size: int, n_rows: int, buffers: int = 1) -> int:
    """Rows per chunk so that ``buffers`` float32 ``[chunk, V]`` fit :data:`DEFAULT_CHUNK_BYTES`, at most N."""
    rows = max(1, DEFAULT_CHUNK_BYTES // (4 * buffers * max(1, vocab_size)))
    return max(1, min(rows, n_rows))


class _ChunkResult(NamedTuple):
    """Loss sum and masked count of one chunk, plus its logit gradient ``(p_kept - onehot) * scale``."""

    nll_sum: torch.Tensor  # [] float32
    n_masked: torch.Tensor  # [] int64
    grad_logits: torch.Tensor | None  # [c, V] float32 (dense), or None: sparse or no gradient wanted
    sparse: SparseGrad | None  # the gradient's blocks that can be non-zero (sparse backward)


def _chunk_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None,
    grad_scale: float | None,
    count: bool,
    sparse: bool = False,
    always_kept: torch.Tensor | None = None,
) -> _ChunkResult:
    """Selfish NLL of a chunk of valid rows, overwriting ``logits`` with its gradient (or its sparse blocks).

    Args:
        logits: ``[c, V]`` float32, owned by the caller and consumed (modified in place).
        labels: ``[c]`` target ids, all valid.
        margin: the selfish margin, ``None`` for plain cross-entropy.
        grad_scale: factor of every row's gradient (``1 / denominator``); ``None`` skips the gradient.
        count: count the masked entries (in the masking pass); else report 0.
        sparse: with a margin and a gradient, compute the softmax and the gradient only on the blocks
            that can be non-zero, where that pays (:mod:`hf_selfish.ops.sparse_backward`).
        always_kept: ``[F]`` ids the margin never masks (``selfish_rare``'s frequent tokens), or ``None``.
    """
    n_masked = torch.zeros((), dtype=torch.long, device=logits.device)
    if margin is not None:
        rows = torch.arange(labels.shape[0], device=labels.device)  # [c]
        logits.sub_(logits[rows, labels].unsqueeze(1))  # row shift by the target: softmax unchanged
        sparse = sparse and grad_scale is not None
        above = keep_above(margin)
        # the always-kept columns' values, put back after the mask: [c, F] (F is small next to V)
        saved = None if always_kept is None else logits.index_select(1, always_kept)
        row_masked = mask_below_threshold(logits, count or sparse, above)  # kept <=> >= -margin
        if saved is not None:
            logits.index_copy_(1, always_kept, saved)
            if row_masked is not None:  # they were counted as masked where below the threshold
                row_masked -= (saved <= above).sum(dim=1)
        if count:
            n_masked = row_masked.sum()
        plan = plan_sparse_backward(logits, row_masked) if sparse else None
        if plan is not None:
            nll, blocks = sparse_softmax_nll(logits, labels, plan, grad_scale)
            if bool(torch.isfinite(nll).all()):  # else a NaN/inf must reach every gradient: dense below
                return _ChunkResult(nll.sum(), n_masked, None, blocks)
    nll, grad = softmax_nll(logits, labels, grad_scale)
    return _ChunkResult(nll.sum(), n_masked, grad, None)


class _LinearSelfishCrossEntropy(torch.autograd.Function):
    """Summed-then-scaled selfish NLL of ``hidden @ weight.T + bias``; gradients computed in forward.

    All rows passed in are valid (the caller drops ignored rows). ``grad_scale`` is ``1 / denom``,
    so the returned loss is already reduced; backward only multiplies by ``grad_output``.
    """

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, margin, grad_scale, chunk_size, needs_grad, count, sparse, transform, variant
    ):
        # hidden [n, d], weight [V, d], bias [V] or None, labels [n]; transform: LogitTransform or None;
        # variant: FusedChunkVariant (which side of the gradient is masked, which ids are never masked)
        n_rows, vocab_size = hidden.shape[0], weight.shape[0]
        want_hidden, want_weight, want_bias = needs_grad
        compute_grad = want_hidden or want_weight or want_bias
        dtype = compute_dtype(hidden.dtype)  # float32 (float64 for double inputs)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None  # [n, d]
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(vocab_size, dtype=dtype, device=weight.device) if want_bias else None
        nll_sum = torch.zeros((), dtype=dtype, device=hidden.device)
        n_masked = torch.zeros((), dtype=torch.long, device=hidden.device)

        # one [chunk, V] buffer for every chunk's logits: a fresh one each chunk costs its page faults again
        buffer = torch.empty((min(chunk_size, n_rows), vocab_size), dtype=dtype, device=hidden.device)
        derivatives = _derivative_buffer(transform, buffer, compute_grad)  # [chunk, V] for a softcap, else None
        # a split gradient needs the chunk's logits twice: the masked softmax and the full one
        full_buffer = torch.empty_like(buffer) if variant.split is not None else None
        # dloss/dz = dloss/dL * transform's constant factor (* 1 - tanh^2, applied per chunk)
        chunk_grad_scale = grad_scale * (1.0 if transform is None else transform.gradient_factor)
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            hidden_c = hidden[start:end]  # [c, d]
            logits = _chunk_logits(hidden_c, weight, bias, buffer[: end - start])  # [c, V] float32
            derivative = None
            if transform is not None:  # mask and softmax on the transformed logits L
                derivative = transform.apply_(logits, None if derivatives is None else derivatives[: end - start])
            scale = chunk_grad_scale if compute_grad else None
            grad_hidden_c = grad_hidden[start:end] if want_hidden else None
            if variant.split is None:
                result = _chunk_loss(logits, labels[start:end], margin, scale, count, sparse, variant.always_kept)
                nll_sum += result.nll_sum
                n_masked += result.n_masked
                if compute_grad:
                    if derivative is not None:
                        _chain_softcap(transform, derivative, result)
                    out = LinearGrads(grad_hidden_c, grad_weight, grad_bias)
                    _accumulate_chunk_grads(result.grad_logits, result.sparse, hidden_c, weight, out)
                del logits, result  # the buffer is free again: the gradient is in the accumulators
                continue
            # the dense cross-entropy side first, written to the second buffer (the logits stay intact) ...
            nll, grad = softmax_nll(logits, labels[start:end], scale, out=full_buffer[: end - start])
            full = _ChunkResult(nll.sum(), n_masked.new_zeros(()), grad, None)
            # ... then the masked side on the logits themselves, in place
            kept = _chunk_loss(logits, labels[start:end], margin, scale, count, sparse, variant.always_kept)
            nll_sum += full.nll_sum  # the value of a split gradient is the cross-entropy (see the docstring)
            n_masked += kept.n_masked
            if compute_grad:
                if derivative is not None:
                    _chain_softcap(transform, derivative, full)
                    _chain_softcap(transform, derivative, kept)
                head_side, hidden_side = (kept, full) if variant.split == "head" else (full, kept)
                out = LinearGrads(None, grad_weight, grad_bias)
                _accumulate_chunk_grads(head_side.grad_logits, head_side.sparse, hidden_c, weight, out)
                out = LinearGrads(grad_hidden_c, None, None)
                _accumulate_chunk_grads(hidden_side.grad_logits, hidden_side.sparse, hidden_c, weight, out)
            del logits, full, kept

        ctx.grads = (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        ctx.mark_non_differentiable(n_masked)
        return nll_sum * grad_scale, n_masked

    @staticmethod
    def backward(ctx, grad_loss, _grad_masked):
        grads = take_saved(ctx, "grads", "linear_selfish_cross_entropy")  # handed to autograd, no copy kept
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):
            grads = tuple(None if g is None else g.mul_(grad_loss) for g in grads)
        grad_hidden, grad_weight, grad_bias = grads
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None, None, None


def _derivative_buffer(transform: LogitTransform | None, buffer: torch.Tensor, compute_grad: bool):
    """A second ``[chunk, V]`` float32 buffer for the softcap's ``1 - tanh^2``, when a gradient needs it."""
    if transform is None or transform.softcap is None or not compute_grad:
        return None
    return torch.empty_like(buffer)


def _chain_softcap(transform: LogitTransform, derivative: torch.Tensor, result: _ChunkResult) -> None:
    """Multiply a chunk's logit gradient (dense, or the sparse plan's blocks) by ``1 - tanh^2``."""
    if result.sparse is None:
        transform.chain_(result.grad_logits, derivative)
        return
    plan = result.sparse.plan
    if result.sparse.wide is None:  # every row narrow: all rows x plan.columns
        transform.chain_(result.sparse.narrow, derivative, columns=plan.columns)
        return
    transform.chain_(result.sparse.narrow, derivative, plan.narrow_rows, plan.columns)
    transform.chain_(result.sparse.wide, derivative, plan.wide_rows, plan.wide_columns)


def _chunk_logits(
    hidden_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> torch.Tensor:
    """``hidden_c @ weight.T + bias`` in the input dtype, written to the float32 (float64) ``out [c, V]``."""
    if hidden_c.dtype == out.dtype:
        if bias is None:
            return torch.mm(hidden_c, weight.T, out=out)
        return torch.addmm(bias, hidden_c, weight.T, out=out)
    logits = hidden_c @ weight.T if bias is None else torch.addmm(bias, hidden_c, weight.T)  # [c, V] half
    return out.copy_(logits)


def _accumulate_chunk_grads(
    grad_logits: torch.Tensor | None,
    sparse: SparseGrad | None,
    hidden_c: torch.Tensor,
    weight: torch.Tensor,
    out: LinearGrads,
) -> None:
    """Backpropagate a chunk's logit gradient through the linear layer into ``out``.

    Dense: ``grad_logits [c, V]``. Sparse: its blocks that can be non-zero; the matmuls skip the
    columns whose gradient is exactly zero (:mod:`hf_selfish.ops.sparse_backward`), the result is the
    dense one up to the order of the sums.
    """
    if sparse is not None:
        accumulate_sparse(sparse, hidden_c, weight, out)
    else:
        accumulate_block(grad_logits, hidden_c, weight, out)


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor):
    """Raise a ``ValueError`` naming the mismatch of shapes or dtypes."""
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} do not fit: "
            "weight must be [vocab, hidden.shape[-1]]"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} do not align: "
            "hidden must be labels.shape + (d,)"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias {tuple(bias.shape)} must be [vocab] = ({weight.shape[0]},)")
    dtypes = {hidden.dtype, weight.dtype} | ({bias.dtype} if bias is not None else set())
    if len(dtypes) != 1 or not hidden.is_floating_point():
        raise ValueError(
            f"hidden ({hidden.dtype}), weight ({weight.dtype}) and bias "
            f"({None if bias is None else bias.dtype}) must share one floating dtype; cast them first"
        )


def _grad_scale(n_valid: int, num_items_in_batch: torch.Tensor | int | None) -> float:
    """``1 / num_items_in_batch`` when given, else ``1 / #valid``; 0 when no row is labelled."""
    if n_valid == 0:
        return 0.0  # loss 0, zero gradients, whatever num_items_in_batch says
    if num_items_in_batch is None:
        return 1.0 / n_valid
    denom = float(num_items_in_batch)
    if not denom > 0:
        raise ValueError(f"num_items_in_batch must be positive when labels are present, got {denom}")
    return 1.0 / denom


def linear_selfish_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = 2.0,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_size: int | None = None,
    return_masked_fraction: bool = False,
    sparse_backward: bool = True,
    logit_scale: float | None = None,
    softcap: float | None = None,
    split: str | None = None,
    always_kept: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selfish cross-entropy of ``hidden @ weight.T + bias`` without materialising the logits.

    Same value and gradients as ``selfish_cross_entropy(hidden @ weight.T + bias, labels, margin)``
    (see the module docstring for how), in ``O(chunk_size x V)`` extra memory.

    Args:
        hidden: ``[..., d]`` last hidden states (float32, bfloat16 or float16; float64 computes in float64).
        weight: ``[V, d]`` output embedding (the LM head's weight), same dtype as ``hidden``.
        labels: ``[...]`` target ids aligned with ``hidden``; ``ignore_index`` marks rows without loss.
        margin: keep logits ``>= logit[target] - margin``; ``None``/``inf`` is plain cross-entropy.
        bias: optional ``[V]`` bias of the LM head.
        ignore_index: label value of rows without loss.
        num_items_in_batch: divide the summed loss by this (gradient accumulation); else take the
            mean over non-ignored rows. No labelled row gives a loss of 0 and zero gradients.
        chunk_size: rows per chunk; default :func:`default_chunk_size` (256 MiB of float32 logits).
        return_masked_fraction: also return the fraction of (valid row, vocab) entries the margin
            removed from the softmax (a detached float32 scalar; 0 for plain cross-entropy).
        sparse_backward: per chunk, skip the vocabulary columns whose gradient is exactly zero in
            the gradient matmuls: rows that keep few entries run over the columns they keep, the
            others densely (:mod:`hf_selfish.ops.sparse_backward`; dense where no split halves the
            work). Same result up to float rounding; no effect for plain cross-entropy (nothing masked).
        logit_scale: multiply the logits by this before the loss (Cohere's ``logit_scale``).
        softcap: then cap them, ``softcap * tanh(logits / softcap)`` (Gemma 2's ``final_logit_softcapping``).
            The margin applies to the transformed logits; the chain rule runs per chunk
            (:mod:`hf_selfish.ops.logit_transform`); a softcap halves the default chunk (a second buffer).
        split: ``None`` (the selfish loss), or the one side of the gradient that gets the masked softmax
            while the other gets plain cross-entropy's full one: ``"head"`` (``weight``/``bias`` selfish,
            ``hidden`` cross-entropy: the ``selfish_head`` loss) or ``"hidden"`` (the reverse:
            ``selfish_hidden``). The full side is dense, the masked side runs over the kept columns
            (``sparse_backward``); a second ``[chunk, V]`` buffer, so the default chunk halves. The
            returned value is then the plain cross-entropy (no single loss has this gradient;
            :mod:`hf_selfish.ops.variants` says why that value is logged).
        always_kept: ``[V]`` bool, ids the margin never masks (``selfish_rare``: the frequent tokens);
            ``None`` masks any id. Its masked fraction counts only the entries really masked.

    Returns:
        The float32 scalar loss, or ``(loss, masked_fraction)``.
    """
    margin = validate_margin(margin)
    transform = make_logit_transform(logit_scale, softcap)
    _check_inputs(hidden, weight, bias, labels)
    always_kept, margin = check_fused_variant(split, always_kept, weight.shape[0], margin)
    check_chunk_size(chunk_size)
    vocab_size = weight.shape[0]
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, d]
    labels = labels.reshape(-1).to(hidden.device)  # [N]

    valid = labels != ignore_index  # [N]
    n_valid = int(valid.sum())
    all_valid = n_valid == labels.shape[0]
    hidden_v = hidden if all_valid else hidden[valid]  # [n, d]: ignored rows cost nothing
    labels_v = labels if all_valid else labels[valid]  # [n]
    check_label_range(labels_v, vocab_size)

    buffers = 1 + (transform is not None and transform.softcap is not None) + (split is not None)
    chunk = chunk_size or default_chunk_size(vocab_size, n_valid, buffers=buffers)
    loss, n_masked = _LinearSelfishCrossEntropy.apply(
        hidden_v,
        weight,
        bias,
        labels_v,
        margin,
        _grad_scale(n_valid, num_items_in_batch),
        chunk,
        _needs_grad(hidden, weight, bias),
        return_masked_fraction,
        sparse_backward and margin is not None,
        transform,
        FusedChunkVariant(split, always_kept),
    )
    if return_masked_fraction:
        return loss, n_masked.float() / max(1, n_valid * vocab_size)
    return loss


def _needs_grad(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[bool, bool, bool]:
    """Which of hidden, weight, bias autograd will ask a gradient for (none under ``no_grad``)."""
    if not torch.is_grad_enabled():
        return False, False, False
    return hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad
