"""What the rival losses share: parameter rules, train-split token counts, aligned inputs.

Every rival loss checks its parameters with :func:`check_params`, so a bad value fails the same way
whether it comes from a direct call or from ``SelfishTrainingArguments.loss_kwargs`` (which
checks them before training starts).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .loss import check_label_range, flatten_aligned, validate_margin

__all__ = ["PARAM_RULES", "aligned_hidden_rows", "aligned_rows", "as_token_counts", "check_flag", "check_params"]


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_flag(name: str, value: Any) -> bool:
    """``value`` when it is a bool, else a ``ValueError``: ``bool("false")`` is True, so a flag is never cast."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _non_negative(loss: str, name: str, value: Any) -> float:
    number = _number(value)
    if number is None or number < 0:
        raise ValueError(f"{loss}: {name} must be a finite number >= 0, got {value!r}; pass e.g. {name}=1.0")
    return number


def _fraction(loss: str, name: str, value: Any) -> float:
    number = _number(value)
    if number is None or not 0 <= number < 1:
        raise ValueError(f"{loss}: {name} must be a number in [0, 1), got {value!r}; pass e.g. {name}=0.1")
    return number


def _unit_interval(loss: str, name: str, value: Any) -> float:
    number = _number(value)
    if number is None or not 0 <= number <= 1:
        raise ValueError(f"{loss}: {name} must be a number in [0, 1], got {value!r}; pass e.g. {name}=0.9")
    return number


def _optional_non_negative(loss: str, name: str, value: Any) -> float | None:
    return None if value is None else _non_negative(loss, name, value)


def _optional_positive(loss: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    number = _number(value)
    if number is None or number <= 0:
        raise ValueError(f"{loss}: {name} must be a number > 0 or None, got {value!r}")
    return number


def _tlat_form(loss: str, name: str, value: Any) -> str:
    if value not in ("exponential", "chi_square"):
        raise ValueError(f"{loss}: {name} must be 'exponential' or 'chi_square', got {value!r}")
    return value


def _margin(loss: str, name: str, value: Any) -> float | None:
    return validate_margin(value)


# parameter name -> its rule; the same name means the same rule in every loss
PARAM_RULES = {
    "margin": _margin,
    "eps": _fraction,
    "lam": _non_negative,
    "gamma": _non_negative,
    "alpha": _non_negative,
    "tau": _non_negative,
    "A": _optional_non_negative,
    "T": _non_negative,
    "form": _tlat_form,
    "weight_drop": _fraction,
    "steps": _optional_positive,
    "frequent_mass": _unit_interval,
}


def check_params(loss: str, **params: Any) -> dict[str, Any]:
    """The parameters of ``loss`` after their rules (numbers as floats); a ``ValueError`` names a bad one."""
    return {name: PARAM_RULES[name](loss, name, value) for name, value in params.items()}


def as_token_counts(
    token_counts: Sequence[int] | torch.Tensor | None, vocab_size: int, device: torch.device, loss: str
) -> torch.Tensor:
    """Train-split counts per token id as a float64 ``[vocab_size]`` tensor on ``device``.

    Counts shorter than the vocabulary are padded with zeros (a model's head may have more rows than
    the tokenizer has ids; those ids never occur). Missing, longer, negative or non-finite counts are
    a ``ValueError`` that says what to pass.
    """
    if token_counts is None:
        raise ValueError(
            f"{loss} needs token_counts, the train split's count of every token id; pass token_counts=... "
            "(SelfishTrainer(token_counts=...), which hf_selfish.lab.run passes from the train split)"
        )
    counts = torch.as_tensor(token_counts, dtype=torch.float64).to(device).reshape(-1)  # [n]
    if counts.numel() > vocab_size:
        raise ValueError(
            f"{loss}: token_counts has {counts.numel()} entries but the logits have {vocab_size} ids; "
            "count the train split with the model's tokenizer"
        )
    if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
        raise ValueError(f"{loss}: token_counts must be finite and >= 0 (train-split counts per token id)")
    if counts.numel() < vocab_size:
        counts = torch.cat([counts, counts.new_zeros(vocab_size - counts.numel())])
    return counts


def aligned_rows(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``logits [..., V]``, ``labels [...]`` -> ``[N, V]`` logits, ``[N]`` labels, safe labels, valid mask.

    Safe labels are the labels with ignored positions replaced by 0, for gathers that must not index
    with ``ignore_index``; ``valid`` marks the positions that carry loss.
    """
    logits, labels = flatten_aligned(logits, labels)  # [N, V], [N]
    valid = labels != ignore_index  # [N]
    check_label_range(labels, logits.shape[-1], valid)
    safe = torch.where(valid, labels, torch.zeros_like(labels))  # [N]
    return logits, labels, safe, valid


def aligned_hidden_rows(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, loss: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`aligned_rows` for the losses of the hidden state and the head (``needs_hidden``):
    ``hidden [..., d]``, ``weight [V, d]``, ``labels [...]`` -> ``[N, d]`` hidden, safe labels, valid mask.

    Raises a ``ValueError`` naming ``loss`` when the shapes do not fit.
    """
    if hidden.shape[:-1] != labels.shape or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"{loss} needs hidden [..., d], weight [V, d] and labels hidden.shape[:-1]; got hidden "
            f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}, labels {tuple(labels.shape)}"
        )
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, d]
    labels = labels.reshape(-1).to(hidden.device)  # [N]
    valid = labels != ignore_index  # [N]
    check_label_range(labels, weight.shape[0], valid)
    safe = torch.where(valid, labels, torch.zeros_like(labels))  # [N]
    return hidden, safe, valid
