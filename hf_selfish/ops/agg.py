"""Adaptive gradient gating, AGG (Yu et al., "Rare Tokens Degenerate All Tokens: Improving Neural Text
Generation via Adaptive Gradient Gating for Rare Token Embeddings", ACL 2022).

The cross-entropy gradient of an output embedding ``w_v`` is ``sum_positions (p_v - [v = t]) h``: at
every position whose target is another token, ``w_v`` is pushed along ``-h``. Rare tokens are almost
never targets, so that push is nearly all they learn, and it drags every embedding into a narrow
cone. AGG keeps the loss and the gradient of the hidden states, and scales the part of the gradient
that rare tokens' output embeddings receive as negatives:

* token appearance ``a_v``: how often ``v`` is a target per training step; rare tokens: ``a_v < alpha``
  (``alpha`` 0.03, the authors' language-modelling setting);
* at a position whose target is not rare, a rare ``v``'s gradient is scaled by ``a_v`` (gate 1);
* at a position whose target is rare, a rare ``v``'s gradient is scaled by ``min(a_v / mean_rare(a), 1)``
  (gate 2, which gates only the rarest of the rare);
* the target's own gradient and every non-rare token's are never gated.

The gates follow the authors' code (ysw1021/AGG, ``criterions/cross_entropy_agg.py``). It counts
appearances over the last K steps (K = one epoch) and divides by K. Here ``token_counts`` and
``steps`` give ``a = token_counts / steps``, so such a memory can be passed. The default, ``steps=None``,
reads ``token_counts`` as train-split counts and sets ``a = count / total * tokens_per_step``. That is
what a one-epoch memory holds once it is full: one epoch of steps sees each token ``count`` times.
Here ``tokens_per_step`` is ``num_items_in_batch`` (the labelled tokens of an optimizer step), or the
batch's own count.

The loss cannot be a function of the logits alone: it needs the hidden states and the head's weight
to split the gradient. ``SelfishTrainer`` (``loss_name="agg"``) runs the model with
``output_hidden_states=True`` and ``logits_to_keep=1`` (see
:func:`hf_selfish.patching.causal_lm_head_inputs`). It then passes the last hidden state (positions
shifted like the labels) and ``model.get_output_embeddings()``'s ``weight`` and ``bias``. Models that
transform their logits after the head are refused.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .loss import _reduce, compute_dtype, upcast
from .params import aligned_hidden_rows, as_token_counts, check_params

__all__ = ["agg_gates", "agg_loss", "token_appearance"]


def token_appearance(
    token_counts: Sequence[int] | torch.Tensor | None,
    vocab_size: int,
    tokens_per_step: float | torch.Tensor,
    *,
    steps: float | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Targets per training step of every token id, ``[V]`` in ``dtype`` (the loss's compute dtype):
    ``counts / steps``, or with ``steps=None`` ``counts / sum(counts) * tokens_per_step`` (train-split counts)."""
    counts = as_token_counts(token_counts, vocab_size, torch.device(device), "agg")  # [V] float64
    if steps is not None:
        return (counts / steps).to(dtype)
    total = counts.sum()
    if float(total) <= 0:
        raise ValueError("agg: token_counts are all 0; pass the train split's counts per token id")
    per_step = torch.as_tensor(tokens_per_step, dtype=torch.float64, device=counts.device)
    return (counts / total * per_step).to(dtype)


def agg_gates(appearance: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate 1 (targets not rare) and gate 2 (rare targets) of every id, float32 ``[V]`` each; 1 = not gated."""
    rare = appearance < alpha  # [V]
    ones = torch.ones_like(appearance)
    gate_common = torch.where(rare, appearance, ones)  # [V]
    mean_rare = appearance[rare].mean() if bool(rare.any()) else appearance.new_ones(())
    relative = (appearance / mean_rare.clamp_min(torch.finfo(torch.float32).tiny)).clamp(max=1.0)
    gate_rare = torch.where(rare, relative, ones)  # [V]
    return gate_common, gate_rare


class _GatedLinearCrossEntropySum(torch.autograd.Function):
    """Sum of ``-log softmax(h W^T + b)_t`` whose backward gates the head's gradient per (row, token).

    Forward: the plain cross-entropy (the value does not change). Backward: ``G = p - onehot(t)`` per
    row; ``hidden`` gets ``G W`` (ungated); ``weight`` gets ``(gate * G)^T h`` and ``bias`` ``sum(gate * G)``,
    where a row's gate is ``gate_rare`` if its target is rare else ``gate_common``, and 1 at its target.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, valid, gate_common, gate_rare, rare_target):
        # hidden [N, d], weight [V, d], bias [V] or None, labels [N] (ignored -> 0), valid [N] bool,
        # gate_common / gate_rare [V] float32, rare_target [N] bool
        logits = upcast(F.linear(hidden, weight, bias))  # [N, V], the head's matmul in the input dtype; ours
        log_probs = torch.log_softmax(logits, dim=1, out=logits)  # in place: one [N, V] float32 tensor
        nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # [N]
        nll = torch.where(valid, nll, torch.zeros_like(nll))
        ctx.save_for_backward(hidden, weight, log_probs, labels, valid, gate_common, gate_rare, rare_target)
        ctx.has_bias = bias is not None
        return nll.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, log_probs, labels, valid, gate_common, gate_rare, rare_target = ctx.saved_tensors
        scale = valid.to(log_probs.dtype) * grad_loss  # [N]; 0 on ignored rows
        rows = torch.arange(labels.shape[0], device=labels.device)
        grad = log_probs.exp().mul_(scale.unsqueeze(1))  # [N, V] = p * scale
        grad[rows, labels] -= scale  # dL/dlogits = (p - onehot) * scale
        grad_hidden = grad.to(hidden.dtype) @ weight  # [N, d], ungated
        at_target = grad[rows, labels]  # [N], kept ungated
        gates = torch.stack([gate_common, gate_rare])[rare_target.long()]  # [N, V]
        grad.mul_(gates)
        grad[rows, labels] = at_target
        grad_weight = grad.t().to(weight.dtype) @ hidden.to(weight.dtype)  # [V, d]
        grad_bias = grad.sum(0).to(weight.dtype) if ctx.has_bias else None  # [V]
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def agg_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    alpha: float = 0.03,
    steps: float | None = None,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    token_counts: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """AGG loss of ``hidden [..., d] @ weight[V, d].T (+ bias)`` against aligned ``labels [...]``.

    The value is the plain cross-entropy (reduced like every loss of :mod:`hf_selfish.ops.registry`);
    only the gradient of ``weight``'s (and ``bias``'s) rare rows is gated, see the module docstring.
    ``alpha`` 0.03 is the authors' language-modelling setting (0.08 for translation); ``alpha=0`` makes
    no token rare, i.e. plain cross-entropy gradients. Needs ``token_counts`` (train-split counts, or
    the counts of the last ``steps`` steps).
    """
    params = check_params("agg", alpha=alpha, steps=steps)
    hidden, safe, valid = aligned_hidden_rows(hidden, weight, labels, ignore_index, "agg")  # [N, d], [N], [N]
    vocab_size = weight.shape[0]
    per_step = num_items_in_batch if num_items_in_batch is not None else valid.sum()
    appearance = token_appearance(
        token_counts,
        vocab_size,
        per_step,
        steps=params["steps"],
        device=hidden.device,
        dtype=compute_dtype(hidden.dtype),
    )  # [V]
    gate_common, gate_rare = agg_gates(appearance, params["alpha"])
    rare_target = (appearance < params["alpha"])[safe] & valid  # [N]
    loss_sum = _GatedLinearCrossEntropySum.apply(hidden, weight, bias, safe, valid, gate_common, gate_rare, rare_target)
    return _reduce(loss_sum, valid.sum(), num_items_in_batch)


agg_loss.needs_hidden = True
