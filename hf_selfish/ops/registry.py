"""The training losses by name: ``LOSSES[name](logits, labels, *, ignore_index, num_items_in_batch, token_counts, **params)``.

All take ALIGNED ``logits [..., V]`` / ``labels [...]`` (no causal shift inside) and return a float32
scalar reduced like :func:`~hf_selfish.ops.loss.selfish_cross_entropy`. Two are special, and say so by
attributes the trainer reads:

- ``needs_hidden``: ``agg``, ``selfish_head`` and ``selfish_hidden`` take ``(hidden, weight, labels, *, bias, ...)``
  instead of logits.
- ``takes_head``: ``selfish_head`` and ``selfish_hidden`` also take ``head``, the model's output-embedding
  module, and call it for the head side's logits (so the gradient-scenario recorder sees that side).
- ``needs_token_counts``: ``tlat``, ``logit_adjustment``, ``agg`` and ``selfish_rare`` need the train split's counts.

``unlikelihood`` needs ``[B, T, V]`` / ``[B, T]`` (its candidates are each row's previous targets).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .agg import agg_loss
from .params import check_params
from .rivals import (
    anti_focal_loss,
    ce_loss,
    focal_loss,
    label_smoothing_loss,
    logit_adjustment_loss,
    selfish_loss,
    tlat_loss,
    unlikelihood_loss,
    z_loss,
)
from .variants import selfish_head_loss, selfish_hidden_loss, selfish_rare_loss

__all__ = ["LOSSES", "check_loss_params", "get_loss", "loss_params", "needs_hidden", "needs_token_counts", "takes_head"]

LOSSES: dict[str, Callable[..., Any]] = {
    "ce": ce_loss,
    "selfish": selfish_loss,
    "label_smoothing": label_smoothing_loss,
    "z_loss": z_loss,
    "focal": focal_loss,
    "anti_focal": anti_focal_loss,
    "tlat": tlat_loss,
    "logit_adjustment": logit_adjustment_loss,
    "unlikelihood": unlikelihood_loss,
    "agg": agg_loss,
    "selfish_head": selfish_head_loss,
    "selfish_hidden": selfish_hidden_loss,
    "selfish_rare": selfish_rare_loss,
}

for _fn in (tlat_loss, logit_adjustment_loss, agg_loss, selfish_rare_loss):
    _fn.needs_token_counts = True

# arguments every loss takes from its caller, not from the user's loss_kwargs
_CALLER_ARGUMENTS = frozenset(
    {"logits", "labels", "hidden", "weight", "bias", "head", "ignore_index", "num_items_in_batch", "token_counts"}
)


def get_loss(name: str) -> Callable[..., Any]:
    """The loss called ``name``; a ``ValueError`` lists the names when it is unknown."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


def needs_hidden(name: str) -> bool:
    return bool(getattr(get_loss(name), "needs_hidden", False))


def takes_head(name: str) -> bool:
    return bool(getattr(get_loss(name), "takes_head", False))


def needs_token_counts(name: str) -> bool:
    return bool(getattr(get_loss(name), "needs_token_counts", False))


def loss_params(name: str) -> dict[str, Any]:
    """The user parameters of loss ``name`` and their defaults, e.g. ``{"gamma": 2.0}`` for ``focal``."""
    signature = inspect.signature(get_loss(name))
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.name not in _CALLER_ARGUMENTS
    }


def check_loss_params(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` checked for loss ``name`` (before training starts): unknown names or bad values raise."""
    params = dict(params or {})
    accepted = loss_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "none"
        raise ValueError(f"loss {name!r} takes no parameter {', '.join(map(repr, unknown))}; its parameters: {listed}")
    check_params(name, **params)
    return params
