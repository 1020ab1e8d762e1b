"""Fused linear + selfish cross-entropy: the loss of ``hidden @ weight.T`` without ``[N, V]`` logits.

For a causal LM the logits ``[tokens, vocab]`` dominate training memory once the vocabulary is
large (32k-256k): float32 logits of 8192 tokens over 128256 ids are 4.2 GB, and the unfused loss
keeps several such tensors alive (the logits, the masked copy, the softmax saved for backward, the
gradient). :func:`linear_selfish_cross_entropy` computes the same loss and the gradients for
``hidden``, ``weight`` and ``bias`` chunk by chunk, so at any time only ``[chunk, V]`` values
exist: peak extra memory is ``O(chunk x V)``, never ``O(N x V)``.

Per row (see :mod:`hf_selfish.loss`), with ``t`` the target and ``m`` the margin::

    logits    = hidden @ weight.T (+ bias)          # [V]
    threshold = logits[t] - m
    logits[logits < threshold] = -inf               # the target itself is never masked
    loss      = logsumexp(logits) - logits[t]
    d loss / d logits = softmax(logits) - onehot(t) # 0 on masked entries

The mask is a comparison, so it carries no gradient: the gradient of a row is the softmax over the
kept entries minus the target's one-hot, exactly as autograd gives for the unfused
``masked_fill`` + ``F.cross_entropy``.

Design (measured on the project's shared 2-core CPU, float32, d=1024, forward + backward; the
machine was busy, so the figures are minima over 5 interleaved runs):

* **Chunk over tokens, compute the gradient in the forward** (Liger Kernel's fused linear
  cross-entropy). Each chunk of rows does three matmuls, ``logits = h_c @ W.T``,
  ``grad_h_c = g_c @ W`` and ``grad_W += g_c.T @ h_c``: the FLOPs of the unfused loss, and the
  selfish threshold needs nothing but the row's own logits. The gradients are kept until
  ``backward``, which only scales them by ``grad_output``.
* **Not chunked over the vocabulary** (Cut Cross-Entropy). A vocabulary chunk cannot finish a row:
  the softmax needs the log-sum-exp of the whole row, so the logits are computed twice (one pass
  for the log-sum-exp, one for the gradient), four matmuls instead of three. A vocabulary-chunked
  prototype at N=2048, V=32000 took 2.62 / 2.82 / 2.85 s with 1024 / 4096 / 16000 columns per
  chunk against 2.31 / 2.23 / 2.04 s for token chunks of 256 / 512 / 2048 rows: 1.2-1.4x slower,
  as the extra matmul predicts. Its advantage, memory independent of N, would matter only for
  chunks smaller than a few hundred rows, which are slow anyway (below).
* **Default chunk size**: as many rows as fit a float32 ``[chunk, V]`` block of
  :data:`DEFAULT_CHUNK_BYTES` (256 MiB), i.e. 523 rows at V=128256 and 2097 at V=32000, never
  more than N. Time was within 15% from 256 rows up (2.31 s at 256 rows, 2.04 s at 2048) and 1.5x
  slower at 128 rows (3.42 s): per-chunk overhead and smaller matmuls. Beyond that, larger chunks
  only add memory. The working set of a chunk is that block (float32 inputs; half precision
  inputs add their own ``[chunk, V]`` logits and gradient copies).
* **Padding rows are dropped before the loop**: rows whose label is ``ignore_index`` cost no
  matmul; their gradient is exactly zero.
* **Dtypes**: the matmuls run in the input dtype, as the model's own ``lm_head`` would (bf16
  logits on a bf16 model), the softmax and the loss in float32, and the gradients of ``weight`` and
  ``bias`` are summed over chunks in float32 buffers, then returned in the input dtype.

:func:`fused_causal_lm_loss` applies it to a causal LM: the model runs through its own forward
with ``logits_to_keep=1`` (its head computes one position) and ``output_hidden_states=True``, and
its last hidden state and output embedding feed the fused loss. Models that transform their logits
after the head are refused (known config attributes by name, anything else by comparing the
model's own last-position logits with the head's on every call).

Limitations: ``backward`` can run once per forward (the gradients are handed to autograd, not
kept); a second ``backward`` through the same graph raises a ``RuntimeError``. Higher-order
gradients are not supported. The output embedding's weight must be whole on the device (DDP is
fine; FSDP and DeepSpeed ZeRO-3 shard it outside the forward and are not supported).
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch

from .loss import check_label_range, shift_causal_labels, validate_margin

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "LOGIT_TRANSFORM_ATTRIBUTES",
    "check_fusable",
    "default_chunk_size",
    "fused_causal_lm_loss",
    "linear_selfish_cross_entropy",
]

# Budget of one chunk's float32 logits ``[chunk, V]``: the working set of a chunk, updated in place.
DEFAULT_CHUNK_BYTES = 256 * 2**20

# Largest float32 below zero that is not a denormal: ``z > _KEEP_ABOVE`` is ``z >= 0`` for every
# normal float, and stays so when the CPU flushes denormals to zero (same rule as hf_selfish.loss).
_KEEP_ABOVE = -torch.finfo(torch.float32).tiny


def default_chunk_size(vocab_size: int, n_rows: int) -> int:
    """Rows per chunk so that the chunk's float32 logits fit :data:`DEFAULT_CHUNK_BYTES`, at most N."""
    rows = max(1, DEFAULT_CHUNK_BYTES // (4 * max(1, vocab_size)))
    return max(1, min(rows, n_rows))


class _ChunkResult(NamedTuple):
    """Loss sum and masked count of one chunk, plus its logit gradient ``(p_kept - onehot) * scale``."""

    nll_sum: torch.Tensor  # [] float32
    n_masked: torch.Tensor  # [] int64
    grad_logits: torch.Tensor | None  # [c, V] float32, or None when no gradient is wanted


def _chunk_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None,
    grad_scale: float | None,
    count_masked: bool,
) -> _ChunkResult:
    """Selfish NLL of a chunk of valid rows, overwriting ``logits`` with its gradient.

    Args:
        logits: ``[c, V]`` float32, owned by the caller and consumed (modified in place).
        labels: ``[c]`` target ids, all valid.
        margin: the selfish margin, ``None`` for plain cross-entropy.
        grad_scale: factor of every row's gradient (``1 / denominator``); ``None`` skips the gradient.
        count_masked: count the masked entries (a pass over the chunk); else report 0.
    """
    rows = torch.arange(labels.shape[0], device=labels.device)  # [c]
    if margin is not None:
        threshold = logits[rows, labels].unsqueeze(1) - margin  # [c, 1]
        logits.sub_(threshold)  # row shift: the softmax is unchanged, kept <=> >= 0
        torch.nn.functional.threshold(logits, _KEEP_ABOVE, float("-inf"), inplace=True)  # masked -> -inf
    if margin is not None and count_masked:
        n_masked = torch.isneginf(logits).sum()
    else:
        n_masked = torch.zeros((), dtype=torch.long, device=logits.device)
    target = logits[rows, labels]  # [c]
    row_max = logits.amax(dim=1, keepdim=True)  # [c, 1]; finite: the target is kept
    probs = logits.sub_(row_max).exp_()  # [c, V] unnormalised, 0 on masked entries
    row_sum = probs.sum(dim=1, keepdim=True)  # [c, 1]
    nll = row_max.squeeze(1) + row_sum.log().squeeze(1) - target  # [c] = logsumexp - target
    if grad_scale is None:
        return _ChunkResult(nll.sum(), n_masked, None)
    grad = probs.mul_(grad_scale / row_sum)  # [c, V] = p_kept * scale
    grad[rows, labels] -= grad_scale  # minus the target's one-hot
    return _ChunkResult(nll.sum(), n_masked, grad)


class _LinearSelfishCrossEntropy(torch.autograd.Function):
    """Summed-then-scaled selfish NLL of ``hidden @ weight.T + bias``; gradients computed in forward.

    All rows passed in are valid (the caller drops ignored rows). ``grad_scale`` is ``1 / denom``,
    so the returned loss is already reduced; backward only multiplies by ``grad_output``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, margin, grad_scale, chunk_size, needs_grad, count_masked):
        # hidden [n, d], weight [V, d], bias [V] or None, labels [n]
        n_rows, vocab_size = hidden.shape[0], weight.shape[0]
        want_hidden, want_weight, want_bias = needs_grad
        compute_grad = want_hidden or want_weight or want_bias
        grad_hidden = torch.empty_like(hidden) if want_hidden else None  # [n, d]
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(vocab_size, dtype=torch.float32, device=weight.device) if want_bias else None
        nll_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        n_masked = torch.zeros((), dtype=torch.long, device=hidden.device)

        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            hidden_c = hidden[start:end]  # [c, d]
            logits = _chunk_logits(hidden_c, weight, bias)  # [c, V] float32, fresh
            result = _chunk_loss(
                logits, labels[start:end], margin, grad_scale if compute_grad else None, count_masked
            )
            nll_sum += result.nll_sum
            n_masked += result.n_masked
            if compute_grad:
                _accumulate_chunk_grads(
                    result.grad_logits, hidden_c, weight,
                    grad_hidden[start:end] if want_hidden else None, grad_weight, grad_bias,
                )
            del logits, result

        ctx.grads = (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
        )
        ctx.mark_non_differentiable(n_masked)
        return nll_sum * grad_scale, n_masked

    @staticmethod
    def backward(ctx, grad_loss, _grad_masked):
        if ctx.grads is None:
            raise RuntimeError(
                "linear_selfish_cross_entropy keeps its gradients for one backward only; "
                "recompute the loss instead of calling backward twice (retain_graph)"
            )
        grads, ctx.grads = ctx.grads, None  # hand the buffers to autograd, keep no copy
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):
            grads = tuple(None if g is None else g.mul_(grad_loss) for g in grads)
        grad_hidden, grad_weight, grad_bias = grads
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _chunk_logits(hidden_c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``hidden_c @ weight.T + bias`` in the input dtype, as a fresh float32 ``[c, V]`` tensor."""
    if bias is None:
        logits = hidden_c @ weight.T
    else:
        logits = torch.addmm(bias, hidden_c, weight.T)
    return logits.float()  # no copy for float32


def _accumulate_chunk_grads(
    grad_logits: torch.Tensor,
    hidden_c: torch.Tensor,
    weight: torch.Tensor,
    grad_hidden_c: torch.Tensor | None,
    grad_weight: torch.Tensor | None,
    grad_bias: torch.Tensor | None,
) -> None:
    """Backpropagate a chunk's ``grad_logits [c, V]`` through the linear layer into the buffers."""
    grad_lowp = grad_logits.to(hidden_c.dtype)  # [c, V]; no copy for float32
    if grad_hidden_c is not None:
        torch.mm(grad_lowp, weight, out=grad_hidden_c)  # [c, d]
    if grad_weight is not None:
        if grad_lowp.dtype == torch.float32:
            grad_weight.addmm_(grad_lowp.T, hidden_c)  # [V, d]
        else:
            grad_weight += grad_lowp.T @ hidden_c  # [V, d]: half-precision matmul, float32 sum
    if grad_bias is not None:
        grad_bias += grad_logits.sum(dim=0)  # [V]


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selfish cross-entropy of ``hidden @ weight.T + bias`` without materialising the logits.

    Same value and gradients as ``selfish_cross_entropy(hidden @ weight.T + bias, labels, margin)``
    (see the module docstring for how), in ``O(chunk_size x V)`` extra memory.

    Args:
        hidden: ``[..., d]`` last hidden states (float32, bfloat16 or float16).
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

    Returns:
        The float32 scalar loss, or ``(loss, masked_fraction)``.
    """
    margin = validate_margin(margin)
    _check_inputs(hidden, weight, bias, labels)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    vocab_size = weight.shape[0]
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, d]
    labels = labels.reshape(-1).to(hidden.device)  # [N]

    valid = labels != ignore_index  # [N]
    n_valid = int(valid.sum())
    all_valid = n_valid == labels.shape[0]
    hidden_v = hidden if all_valid else hidden[valid]  # [n, d]: ignored rows cost nothing
    labels_v = labels if all_valid else labels[valid]  # [n]
    check_label_range(labels_v, vocab_size)

    chunk = chunk_size or default_chunk_size(vocab_size, n_valid)
    loss, n_masked = _LinearSelfishCrossEntropy.apply(
        hidden_v, weight, bias, labels_v, margin, _grad_scale(n_valid, num_items_in_batch), chunk,
        _needs_grad(hidden, weight, bias), return_masked_fraction,
    )
    if return_masked_fraction:
        return loss, n_masked.float() / max(1, n_valid * vocab_size)
    return loss


def _needs_grad(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[bool, bool, bool]:
    """Which of hidden, weight, bias autograd will ask a gradient for (none under ``no_grad``)."""
    if not torch.is_grad_enabled():
        return False, False, False
    return hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad



# ---- causal LMs: the model's last hidden state and output embedding, fed to the fused loss ----

# Config attributes of models whose forward transforms the logits after the output embedding, with
# the values that mean "no transform". A model with any other value is refused: the fused loss
# computes ``hidden @ weight.T + bias`` and nothing else.
LOGIT_TRANSFORM_ATTRIBUTES: dict[str, tuple] = {
    "final_logit_softcapping": (None,),  # Gemma 2/3/3n, ...: cap * tanh(logits / cap)
    "logits_soft_cap": (None,),
    "logit_scale": (None, 1, 1.0),  # Cohere: logits * logit_scale
    "logits_scaling": (None, 1, 1.0),  # Granite: logits / logits_scaling
    "lm_head_multiplier": (None, 1, 1.0),  # Falcon-H1: lm_head(h) * multiplier
    "logits_mup_width_multiplier": (None, 1, 1.0),  # muP: lm_head(h / multiplier)
}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP/DataParallel (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def check_fusable(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's output embedding, if the fused loss reproduces its logits; else a ``ValueError``.

    Refused: models whose config transforms logits after the head (see
    :data:`LOGIT_TRANSFORM_ATTRIBUTES`, named in the error), models whose output embedding is not a
    plain ``nn.Linear``, and models whose ``forward`` has no ``logits_to_keep`` argument.
    """
    model = _unwrap(model)
    name = type(model).__name__
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    for config in configs:
        for attribute, neutral in LOGIT_TRANSFORM_ATTRIBUTES.items():
            value = getattr(config, attribute, None)
            if value not in neutral:
                raise ValueError(
                    f"{name} transforms its logits after the output embedding (config.{attribute}={value!r}); "
                    "the fused selfish loss computes hidden @ weight.T only. Train it unfused (selfish_fused=False)."
                )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{name}.get_output_embeddings() is {type(head).__name__}, not an nn.Linear; "
            "the fused selfish loss needs a linear LM head. Train it unfused (selfish_fused=False)."
        )
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"{name}.forward takes no `logits_to_keep`, so it would compute the full logits anyway; "
            "train it unfused (selfish_fused=False)."
        )
    return head


def fused_causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor | None,
    margin: float | None = 2.0,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
    return_masked_fraction: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selfish causal-LM loss of ``model`` on ``inputs`` without its ``[B, T, V]`` logits.

    Equals ``selfish_causal_lm_loss(model(**inputs).logits, labels, margin, ...)`` in value and in
    the gradient of every parameter. The model runs through its own ``forward`` (so DDP and other
    wrappers see a normal call) with ``logits_to_keep=1`` and ``output_hidden_states=True``: its head
    computes the logits of the last position only, and the last hidden state ``[B, T, d]`` and the
    output embedding go to :func:`linear_selfish_cross_entropy`. The last position's logits, which
    the model computed itself, are compared with ``head(last hidden state)`` on every call, so a
    model that transforms its logits in a way this module does not know of is refused, never
    silently trained on a different loss.

    Args:
        model: a causal LM (``...ForCausalLM``), possibly wrapped by DDP or ``torch.compile``.
        inputs: the batch without labels (``input_ids``, ``attention_mask``, ...).
        labels: ``[B, T]`` unshifted labels, shifted here like ``ForCausalLMLoss``; or pass
            ``shift_labels`` already aligned with the positions.
        margin, num_items_in_batch, ignore_index, chunk_size, return_masked_fraction: as in
            :func:`linear_selfish_cross_entropy`.
    """
    head = check_fusable(model)
    if shift_labels is None:
        if labels is None:
            raise ValueError("fused_causal_lm_loss needs `labels` or `shift_labels`, got neither")
        shift_labels = shift_causal_labels(labels, ignore_index)
    inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    outputs = model(**inputs, logits_to_keep=1, output_hidden_states=True)
    hidden = outputs.hidden_states[-1]  # [B, T, d]
    weight, bias = head.weight, head.bias  # [V, d], [V] or None
    _check_head_reproduces_logits(model, outputs.logits, hidden, weight, bias)
    hidden, weight, bias = _autocast_inputs(hidden, weight, bias)
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit from here on
        return linear_selfish_cross_entropy(
            hidden, weight, shift_labels.to(hidden.device), margin,
            bias=bias, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch,
            chunk_size=chunk_size, return_masked_fraction=return_masked_fraction,
        )


def _check_head_reproduces_logits(model, logits, hidden, weight, bias) -> None:
    """Raise a ``ValueError`` if the model's last-position logits are not ``F.linear(hidden, weight, bias)``."""
    with torch.no_grad():
        if logits.shape[-2] != 1:
            raise ValueError(
                f"{type(_unwrap(model)).__name__} ignored logits_to_keep=1 and computed logits {tuple(logits.shape)}; "
                "the fused loss would save nothing. Train it unfused (selfish_fused=False)."
            )
        expected = torch.nn.functional.linear(hidden[:, -1:], weight, bias).float()  # [B, 1, V]
        got = logits.float()
        tolerance = 1e-4 if logits.dtype == torch.float32 else 2e-2  # same matmul: equal up to rounding
        if not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
            error = (got - expected).abs().max().item()
            raise ValueError(
                f"{type(_unwrap(model)).__name__}'s logits differ from output_embeddings(last hidden state) by up to "
                f"{error:.3g}: the model transforms its logits after the head, which the fused selfish loss cannot "
                "reproduce. Train it unfused (selfish_fused=False)."
            )


def _autocast_inputs(hidden, weight, bias):
    """Cast to the autocast dtype when autocast is on, as the model's ``lm_head`` would run under it."""
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
