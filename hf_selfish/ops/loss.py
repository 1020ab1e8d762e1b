"""Selfish cross-entropy: cross-entropy that ignores negatives already far below the target.

Per position, with ``t`` the target id and ``m`` the margin::

    threshold = logits[t] - m
    logits[logits < threshold] = -inf        # the target itself is never masked
    loss = cross_entropy(logits, t)

so every probability below ``P(t) * exp(-m)`` leaves the softmax and stops receiving gradient as a
non-target ("scenario 2.2" of Turumtaev, "Stop Jostling: Adaptive Negative Sampling Reduces the
Marginalization of Low-Resource Language Tokens by Cross-Entropy Loss", LoResLM 2025).

``margin=None`` (or ``inf``) is plain cross-entropy and goes through ``F.cross_entropy`` itself, so
both arms of an experiment share one code path. The reduction follows transformers'
``fixed_cross_entropy``: ``sum / num_items_in_batch`` when given (exact gradient accumulation),
else the mean over non-ignored positions; a batch with no labelled position gives 0, never NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "KEEP_ABOVE",
    "compute_dtype",
    "upcast",
    "keep_above",
    "mask_below_threshold",
    "softmax_nll",
    "take_saved",
    "selfish_cross_entropy",
    "selfish_causal_lm_loss",
    "validate_margin",
    "shift_causal_labels",
    "check_label_dtype",
    "check_label_range",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the losses compute in: float32 for float32 and half-precision inputs, float64 for float64.

    float64 is kept so that exactness tests (fused vs unfused, patched vs reference) can run the whole model in
    double and compare tightly: in float32 the CPU's vector width changes the order of the sums.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in :func:`compute_dtype` (no copy when it already is)."""
    return tensor.to(compute_dtype(tensor.dtype))


def validate_margin(margin: float | None) -> float | None:
    """Return ``margin`` as a float (``None`` for plain CE) or raise a ``ValueError`` naming it.

    ``None`` and ``+inf`` mean "no masking". Negative, NaN, non-numeric and boolean margins are refused: a
    negative margin would mask the target's own neighbourhood and change what the loss means, and
    ``float(False)`` is a margin of 0.
    """
    if margin is None:
        return None
    if isinstance(margin, bool):  # float(True) is 1.0: a yes/no value would silently train margin 0 or 1
        raise ValueError(
            f"selfish margin must be a non-negative number or None, got {margin!r}, a yes/no value (YAML reads "
            "off/no/false/on/yes/true as one); write null for plain cross-entropy, or a number such as 2.0"
        )
    if not isinstance(margin, (int, float)):
        try:
            margin = float(margin)
        except (TypeError, ValueError):
            raise ValueError(f"selfish margin must be a non-negative number or None, got {margin!r}") from None
    margin = float(margin)
    if math.isnan(margin) or margin < 0:
        raise ValueError(f"selfish margin must be a non-negative number or None, got {margin!r}")
    if math.isinf(margin):
        return None
    return margin


# Largest float32 below zero that is not a denormal: ``z > KEEP_ABOVE`` is ``z >= 0`` for every
# normal float, and stays so when the CPU flushes denormals to zero.
KEEP_ABOVE = -torch.finfo(torch.float32).tiny


# Stand-in of the masked entries while they are counted: a power of two so far below every kept
# entry (>= 0) that a row's sum is exactly -n_masked * 2**100, the kept entries rounding away. The
# count then costs one read-only sum instead of a [N, V] boolean. It goes back to -inf before any
# exp(): exp() of -inf is 0 as of -2**100, but the CPU's vectorised exp() is ~2x slower on the latter.
_COUNT_STAND_IN = -(2.0**100)


# Margins above this mask nothing a float32 softmax can tell apart (e**-2**90 underflows a billion times over);
# capping them keeps the masking threshold far above the count's stand-in value.
MAX_EFFECTIVE_MARGIN = 2.0**90


def keep_above(margin: float) -> float:
    """What `F.threshold` keeps entries strictly above so that ``z >= -margin`` stays: the float32 just below
    ``-margin`` (at most ``KEEP_ABOVE``, so a margin of 0 keeps ``z = 0``, the target, on CPUs that flush
    denormals)."""
    bound = torch.tensor(-min(float(margin), MAX_EFFECTIVE_MARGIN), dtype=torch.float32)
    return min(torch.nextafter(bound, torch.tensor(float("-inf"))).item(), KEEP_ABOVE)


def mask_below_threshold(shifted: torch.Tensor, count: bool = False, above: float = KEEP_ABOVE) -> torch.Tensor | None:
    """Set the entries of ``shifted [N, V]`` (float32) not above ``above`` to ``-inf``, in place.

    The callers pass ``logits - logits[target]`` and ``above = keep_above(margin)``, so ``z >= -margin`` stays:
    shifting by the target alone keeps the logits' own scale, where a shift by ``target - margin`` would round
    every value away for a huge margin (1e8: loss 9.49 where cross-entropy is 9.36). The default ``above``
    keeps ``z >= 0`` for every normal float. NaN entries stay NaN (and are not counted).
    With ``count``, return the ``[N]`` int64 count of masked entries of each row, exact while the kept
    entries of a row sum to less than ``2**75`` in size (logits of a real model are many orders below;
    float32 holds the multiples of ``2**100`` exactly below 2**24 entries a row, wider rows sum in
    float64); a row holding ``+inf`` counts 0.
    """
    if not count:
        F.threshold(shifted, above, float("-inf"), inplace=True)
        return None
    F.threshold(shifted, above, _COUNT_STAND_IN, inplace=True)
    narrow = shifted.shape[-1] < 2**24 and shifted.dtype != torch.float64
    sum_dtype = torch.float32 if narrow else torch.float64
    sums = torch.nansum(shifted, dim=-1, dtype=sum_dtype)  # [N] = -n * 2**100 (+ kept, rounded away)
    F.threshold(shifted, _COUNT_STAND_IN, float("-inf"), inplace=True)  # NaN stays NaN
    return sums.div_(_COUNT_STAND_IN).round_().nan_to_num_(0.0, 0.0, 0.0).long()


def take_saved(ctx, attribute: str, op_name: str):
    """``ctx.<attribute>``, cleared: the buffer is handed to autograd, so a second backward raises."""
    value = getattr(ctx, attribute)
    if value is None:
        raise RuntimeError(
            f"{op_name} hands its saved buffers to autograd, so it allows one backward per forward; "
            "recompute the loss instead of calling backward twice (retain_graph)"
        )
    setattr(ctx, attribute, None)
    return value


def softmax_nll(
    masked: torch.Tensor, target: torch.Tensor, grad_scale: float | None, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NLL of each row of ``masked [r, k]`` (float32, masked entries ``-inf``; consumed) at column ``target [r]``.

    Returns ``nll [r]`` and, unless ``grad_scale`` is ``None``, the logit gradient ``(p - onehot) *
    grad_scale`` written over ``masked`` (exactly 0 on masked entries); with ``out`` (``[r, k]``) written
    there instead, ``masked`` left intact.
    """
    rows = torch.arange(masked.shape[0], device=masked.device)  # [r]
    target_logit = masked[rows, target]  # [r]
    row_max = masked.amax(dim=1, keepdim=True)  # [r, 1]; finite: the target is kept
    shifted = masked.sub_(row_max) if out is None else torch.sub(masked, row_max, out=out)  # [r, k]
    probs = shifted.exp_()  # [r, k] unnormalised, 0 on masked entries
    row_sum = probs.sum(dim=1, keepdim=True)  # [r, 1]
    nll = row_max.squeeze(1) + row_sum.log().squeeze(1) - target_logit  # [r] = logsumexp - target
    if grad_scale is None:
        return nll, None
    grad = probs.mul_(grad_scale / row_sum)  # [r, k] = p_kept * scale
    grad[rows, target] -= grad_scale  # minus the target's one-hot
    return nll, grad


class _SelfishCrossEntropySum(torch.autograd.Function):
    """Sum over rows of the selfish NLL, with a hand-written backward ``p_kept - onehot``.

    The forward shifts each row by its target's logit (``z = x - x_t``, so kept entries are exactly those
    with ``z >= -margin``; a shift by the threshold would round every value away for a huge margin),
    sends the rest to ``-inf`` in place (:func:`mask_below_threshold`,
    which also counts them) and takes the native ``log_softmax`` in place. It keeps only that
    ``[N, V]`` float32 log-probability tensor, the same footprint as ``F.cross_entropy``; masked
    entries are ``-inf`` there, so their gradient ``exp(-inf) = 0`` is exactly zero. No ``[N, V]``
    boolean mask is made, and the backward turns the log-probabilities into the gradient in place.
    """

    @staticmethod
    def forward(ctx, logits, labels, valid, margin: float, count: bool):
        # logits [N, V] (any float dtype), labels [N] (ignored rows replaced by 0), valid [N] bool
        target = upcast(logits.gather(1, labels.unsqueeze(1)))  # [N, 1]
        shifted = torch.sub(logits, target)  # [N, V] new float32 (float64 for double); kept <=> >= -margin
        n_masked = mask_below_threshold(shifted, count, keep_above(margin))  # [N] or None
        if n_masked is None:
            n_masked = torch.zeros_like(labels)
        # in place: a second [N, V] allocation costs more (page faults) than the softmax itself
        log_probs = torch.log_softmax(shifted, dim=1, out=shifted)  # [N, V]; a row shift leaves it unchanged
        nll = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)  # [N]
        nll = torch.where(valid, nll, torch.zeros_like(nll))  # ignored rows give 0, never NaN
        ctx.log_probs = log_probs  # consumed by backward: its buffer becomes the gradient
        ctx.save_for_backward(labels, valid)
        ctx.input_dtype = logits.dtype
        ctx.mark_non_differentiable(n_masked)
        return nll.sum(), n_masked

    @staticmethod
    def backward(ctx, grad_loss, _grad_masked):
        grad = take_saved(ctx, "log_probs", "selfish_cross_entropy")  # [N, V], becomes the gradient
        labels, valid = ctx.saved_tensors
        row_scale = valid.to(grad.dtype) * grad_loss  # [N]; 0 on ignored rows
        grad.exp_().mul_(row_scale.unsqueeze(1))  # [N, V] = p_kept * scale, in place
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, labels] -= row_scale  # minus the target's one-hot
        return grad.to(ctx.input_dtype), None, None, None, None


def _reduce(loss_sum: torch.Tensor, n_valid: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """``sum / num_items_in_batch`` when given, else ``sum / #valid`` (0 when nothing is valid).

    A count of 0 (the Trainer's count for a batch whose labels are all ``ignore_index``) divides by 1:
    the sum is 0 there, and ``0 / 0`` would put NaN into the loss and the gradient.
    """
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device).clamp(min=1)
        else:
            num_items_in_batch = max(num_items_in_batch, 1)
        return loss_sum / num_items_in_batch
    return loss_sum / n_valid.clamp(min=1).to(loss_sum.dtype)


def selfish_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float | None = 2.0,
    *,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    return_masked_fraction: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selfish cross-entropy on aligned ``logits [..., V]`` and ``labels [...]``.

    Args:
        logits: unnormalised scores, any float dtype; computed in float32 (float64 stays float64).
        labels: target ids with ``ignore_index`` on positions that carry no loss.
        margin: keep logits ``>= logit[target] - margin``; ``None``/``inf`` is plain cross-entropy.
        ignore_index: label value that marks positions without loss.
        num_items_in_batch: divide the summed loss by this (gradient accumulation); else take the
            mean over non-ignored positions.
        return_masked_fraction: also return the fraction of (valid position, vocab) entries that the
            margin removed from the softmax (a detached scalar; 0 for plain cross-entropy).

    Returns:
        The scalar float32 loss, or ``(loss, masked_fraction)``.
    """
    margin = validate_margin(margin)
    logits, labels = flatten_aligned(logits, labels)  # [N, V], [N]
    vocab_size = logits.shape[-1]
    valid = labels != ignore_index  # [N]
    check_label_range(labels, vocab_size, valid)

    if margin is None:
        loss_sum = F.cross_entropy(upcast(logits), labels, ignore_index=ignore_index, reduction="sum")
        loss = _reduce(loss_sum, valid.sum(), num_items_in_batch)
        masked_fraction = torch.zeros((), device=logits.device)
    else:
        safe_labels = torch.where(valid, labels, torch.zeros_like(labels))  # never gather at -100
        loss_sum, n_masked = _SelfishCrossEntropySum.apply(logits, safe_labels, valid, margin, return_masked_fraction)
        loss = _reduce(loss_sum, valid.sum(), num_items_in_batch)
        masked_fraction = (n_masked * valid).sum() / (valid.sum().clamp(min=1) * vocab_size)
    if return_masked_fraction:
        return loss, masked_fraction.detach().float()
    return loss


def flatten_aligned(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits [..., V]`` and ``labels [...]`` as ``[N, V]`` and ``[N]`` (labels on the logits' device).

    Raises a ``ValueError`` when the shapes do not align (labels must already be shifted).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not align: "
            "logits must be labels.shape + (vocab,); pass aligned (already shifted) labels"
        )
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device)


def resolve_shift_labels(
    labels: torch.Tensor | None, shift_labels: torch.Tensor | None, ignore_index: int, caller: str
) -> torch.Tensor:
    """``shift_labels`` when given, else ``labels`` shifted like ``ForCausalLMLoss``; neither is an error."""
    if shift_labels is not None:
        check_label_dtype(shift_labels, caller, "shift_labels")
        return shift_labels
    if labels is None:
        raise ValueError(f"{caller} needs `labels` or `shift_labels`, got neither")
    check_label_dtype(labels, caller)
    return shift_causal_labels(labels, ignore_index)


def check_label_dtype(labels: torch.Tensor, caller: str = "the selfish loss", name: str = "labels") -> None:
    """Raise a ``ValueError`` unless ``labels`` hold integer token ids (torch would fail deep inside a gather)."""
    dtype = labels.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(
            f"{caller}: {name} must be integer token ids, got a {str(dtype).removeprefix('torch.')} tensor; "
            f"pass {name}.long() (or labels=input_ids.clone())"
        )


def check_label_range(labels: torch.Tensor, vocab_size: int, valid: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError`` naming the first (``valid``) label outside ``[0, vocab_size)``, or a non-integer one."""
    check_label_dtype(labels)
    bad = (labels < 0) | (labels >= vocab_size)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"label id {value} is outside the vocabulary of the logits/weight (size {vocab_size}); "
            "does the tokenizer's vocabulary match the model's embeddings?"
        )


def shift_causal_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Labels aligned with causal-LM logits: ``shift[:, t] = labels[:, t + 1]``, last = ignore."""
    labels = F.pad(labels, (0, 1), value=ignore_index)  # [B, T + 1]
    return labels[..., 1:].contiguous()  # [B, T]


def selfish_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    margin: float | None = 2.0,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    return_masked_fraction: bool = False,
    **kwargs,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selfish loss for a causal LM, shifting exactly like ``transformers``' ``ForCausalLMLoss``.

    ``logits [B, T, V]`` at position ``t`` predict ``labels[:, t + 1]``; pass ``shift_labels`` when
    the collator already aligned them (padding-free batches). Extra ``kwargs`` are accepted and
    ignored, like transformers' loss functions.
    """
    shift_labels = resolve_shift_labels(labels, shift_labels, ignore_index, "selfish_causal_lm_loss")
    return selfish_cross_entropy(
        logits,
        shift_labels.to(logits.device),
        margin,
        ignore_index=ignore_index,
        num_items_in_batch=num_items_in_batch,
        return_masked_fraction=return_masked_fraction,
    )
