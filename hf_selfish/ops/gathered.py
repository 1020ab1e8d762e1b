"""Losses of a few log-probabilities per row, with a hand-written backward: one ``[N, V]`` float32 tensor.

Label smoothing, z-loss, logit adjustment and unlikelihood all depend on each row's softmax through
a handful of log-probabilities ``lp_k = log p_{i_k}`` (the target, the unlikelihood candidates), the
log-partition ``lse`` and the mean log-probability. Their gradient with respect to the logits is then

    d loss / d z = p * row_coef + scatter(index, index_coef) + const          # per row

so the backward is one ``exp`` of the saved log-probabilities, a row scaling and a sparse scatter,
like ``F.cross_entropy``'s, instead of autograd's chain of dense ``[N, V]`` temporaries. The forward
computes the log-softmax in place when it owns the float32 copy of the logits (half-precision inputs,
or a shift added to them), like :class:`~hf_selfish.ops.loss._SelfishCrossEntropySum`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .loss import upcast


class RowTerms(NamedTuple):
    """What a loss returns from the log-probabilities: its sum and the coefficients of its gradient."""

    loss_sum: torch.Tensor  # [] float32, over the valid rows
    row_coef: torch.Tensor  # [N] factor of p in the row's gradient
    index: torch.Tensor  # [N, K] ids whose one-hots enter the gradient
    index_coef: torch.Tensor  # [N, K] their factors
    const: torch.Tensor | None  # [N] added to every entry of the row's gradient, or None


RowsFn = Callable[[torch.Tensor, torch.Tensor], RowTerms]


class _GatheredLogSoftmaxLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, shift, target, rows_fn):
        # logits [N, V] any float dtype; shift [V] float32 or None; target [N] ids (ignored rows -> 0)
        x = upcast(logits)  # float32 (float64 stays float64)
        if shift is not None:
            x = x + shift.to(x.dtype)  # [N, V], a new tensor
        target_logit = x.gather(1, target.unsqueeze(1)).squeeze(1)  # [N], read before x is overwritten
        if x is logits:  # float32 (float64) without a shift: the caller's tensor, not ours to overwrite
            log_probs = torch.log_softmax(x, dim=1)
        else:  # in place: a second [N, V] allocation costs more (page faults) than the softmax itself
            log_probs = torch.log_softmax(x, dim=1, out=x)
        terms = rows_fn(log_probs, target_logit)
        ctx.save_for_backward(log_probs, terms.row_coef, terms.index, terms.index_coef, terms.const)
        ctx.input_dtype = logits.dtype
        return terms.loss_sum

    @staticmethod
    def backward(ctx, grad_loss):
        log_probs, row_coef, index, index_coef, const = ctx.saved_tensors
        grad = log_probs.exp().mul_((row_coef * grad_loss).unsqueeze(1))  # [N, V] = p * row_coef
        if const is not None:
            grad.add_((const * grad_loss).unsqueeze(1))
        grad.scatter_add_(1, index, index_coef * grad_loss)
        return grad.to(ctx.input_dtype), None, None, None


def gathered_log_softmax_loss(
    logits: torch.Tensor, target: torch.Tensor, rows_fn: RowsFn, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of a loss over the rows of ``log_softmax(logits + shift)``, as ``rows_fn`` defines it.

    Args:
        logits: ``[N, V]``, any float dtype (computed in float32).
        target: ``[N]`` target ids with ignored rows replaced by a valid id.
        rows_fn: ``(log_probs [N, V], target_logit [N]) -> RowTerms``, called without autograd; the
            target logit is that of the shifted logits (``lse = target_logit - log_probs[target]``).
        shift: a float32 ``[V]`` vector added to every row first (no gradient), or None.
    """
    return _GatheredLogSoftmaxLoss.apply(logits, shift, target, rows_fn)
