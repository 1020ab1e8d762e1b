"""Three variants of the selfish loss that separate what its mask does to the two gradients.

The selfish loss (:mod:`hf_selfish.ops.loss`) drops far negatives (``z_v < z_t - margin``) from the
whole softmax, so it changes two gradients at once. With ``G = softmax - onehot`` of a position's
logits, ``h`` its hidden state and ``W`` the output embedding (``z = h W^T + b``):

- the head side, ``dW = G^T h`` (and ``db = G``): a masked negative's output embedding gets no update --
  the push-down of rare tokens as non-targets ("scenario 2.2" of the paper) stops;
- the hidden side, ``dh = G W``: the hidden state is no longer pushed away from far negatives.

``G_sel`` is the selfish (masked) softmax's, ``G_ce`` plain cross-entropy's:

- ``selfish_head``: ``dW, db`` from ``G_sel``, ``dh`` from ``G_ce`` -- the paper's hypothesis alone;
- ``selfish_hidden``: ``dW, db`` from ``G_ce``, ``dh`` from ``G_sel`` -- the control arm;
- ``selfish_rare``: the selfish loss whose mask spares the frequent tokens: the most frequent ids that
  make up ``frequent_mass`` of the train split's tokens are never masked (always pushed down as
  negatives), far negatives outside them are. ``frequent_mass=0`` is the selfish loss, ``1`` plain
  cross-entropy.

The two split variants need the hidden state and the head (``needs_hidden``, as AGG). Their value is
**plain cross-entropy**: no scalar has their gradient (it is a different softmax on each side), and
of the two sides' losses cross-entropy is the one every arm shares -- evaluation's ``eval_loss`` is
plain cross-entropy, so the training curve of a split arm reads on the same scale as the CE arm's and
as its own evaluation. It is also the loss one side really follows: for ``selfish_head`` the hidden
state and every weight below the head, for ``selfish_hidden`` the output embedding. (The selfish
loss's value would be the other side's, and is lower than cross-entropy by construction, so a split
arm's curve would not read against either the CE arm's or the selfish arm's.) How much is masked is
logged separately (``selfish_masked_fraction``, fused path). ``selfish_rare`` is a loss of the
logits like the selfish loss; its value is its own (masked) loss.

Each has two implementations with the same results: here, from ``[N, V]`` logits (the trainer's
unfused path: each side's logits are made once, the head side's from ``hidden.detach()`` so only
``W`` and ``b`` get its gradient, the hidden side's from ``W.detach()``); and fused, without the
logits (:func:`hf_selfish.ops.fused.linear_selfish_cross_entropy` with ``split`` / ``always_kept``).
With tied embeddings only the output role of the shared matrix follows the head side; its input role
gets what reaches the hidden states, as for any loss.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .loss import _reduce, compute_dtype, keep_above
from .params import aligned_hidden_rows, aligned_rows, as_token_counts, check_params

__all__ = [
    "FusedChunkVariant",
    "FUSED_VARIANTS",
    "FusedVariant",
    "check_fused_variant",
    "SPLIT_OF",
    "frequent_tokens",
    "fused_variant",
    "selfish_head_loss",
    "selfish_hidden_loss",
    "selfish_rare_loss",
]

Counts = Sequence[int] | torch.Tensor | None
# loss name -> the side of the gradient that gets the masked softmax
SPLIT_OF = {"selfish_head": "head", "selfish_hidden": "hidden"}
# the variants the fused loss computes (`fused_variant`)
FUSED_VARIANTS = (*SPLIT_OF, "selfish_rare")


def frequent_tokens(
    token_counts: Counts, vocab_size: int, frequent_mass: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[V]`` bool: the most frequent ids that together make up ``frequent_mass`` of the train split's tokens.

    Ids sorted by count (most frequent first, ties by id); the shortest prefix whose counts reach
    ``frequent_mass * total`` is frequent: an id is in it when the ids before it hold less than that.
    ``frequent_mass=0`` gives no id; ``1`` gives the whole vocabulary (ids never seen too), so that
    :func:`selfish_rare_loss` is plain cross-entropy there.
    """
    mass = check_params("selfish_rare", frequent_mass=frequent_mass)["frequent_mass"]
    counts = as_token_counts(token_counts, vocab_size, torch.device(device), "selfish_rare")  # [V] float64
    if mass >= 1.0:
        return torch.ones(vocab_size, dtype=torch.bool, device=counts.device)
    total = counts.sum()
    if float(total) <= 0:
        raise ValueError("selfish_rare: token_counts are all 0; pass the train split's counts per token id")
    sorted_counts, order = torch.sort(counts, descending=True, stable=True)  # [V]
    before = sorted_counts.cumsum(0) - sorted_counts  # [V]: mass of the more frequent ids (exact: integers)
    frequent = torch.zeros(vocab_size, dtype=torch.bool, device=counts.device)
    frequent[order] = before < mass * total
    return frequent


def _masked_nll_sum(
    logits: torch.Tensor,
    safe: torch.Tensor,
    valid: torch.Tensor,
    margin: float | None,
    always_kept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed NLL of ``logits [N, V]`` (float32/64) over valid rows, ``z_v < z_t - margin`` masked unless
    ``always_kept [V]``; ``margin=None`` masks nothing. Masked entries get exactly zero gradient."""
    if margin is not None:
        with torch.no_grad():  # the mask is a comparison: no gradient of its own
            shifted = logits - logits.gather(1, safe.unsqueeze(1))  # [N, V]; the target's is 0: always kept
            drop = shifted <= keep_above(margin)  # [N, V]: the selfish loss's own threshold
            if always_kept is not None:
                drop &= ~always_kept
        logits = logits.masked_fill(drop, float("-inf"))
    nll = -torch.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)  # [N]
    return torch.where(valid, nll, torch.zeros_like(nll)).sum()


def selfish_rare_loss(
    logits,
    labels,
    *,
    margin=2.0,
    frequent_mass=0.9,
    ignore_index=-100,
    num_items_in_batch=None,
    token_counts: Counts = None,
):
    """The selfish loss whose mask never drops the frequent tokens (see the module docstring).

    Per position: ``z_v < z_t - margin`` leave the softmax unless ``v`` is among the most frequent ids that
    make up ``frequent_mass`` of the train split's tokens (:func:`frequent_tokens`): far *rare* negatives are
    masked, frequent ones are always pushed down. ``margin`` 2 (the paper's), ``frequent_mass`` 0.9;
    ``frequent_mass=0`` is the selfish loss, ``1`` (or ``margin=None``) plain cross-entropy. Needs
    ``token_counts``.
    """
    params = check_params("selfish_rare", margin=margin, frequent_mass=frequent_mass)
    logits, _, safe, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    frequent = frequent_tokens(token_counts, logits.shape[-1], params["frequent_mass"], logits.device)  # [V]
    logits = logits.to(compute_dtype(logits.dtype))
    loss_sum = _masked_nll_sum(logits, safe, valid, params["margin"], frequent)
    return _reduce(loss_sum, valid.sum(), num_items_in_batch)


def _split_loss(hidden, weight, labels, bias, margin, split, ignore_index, num_items_in_batch, head, name):
    """Plain cross-entropy's value; the ``split`` side's gradient from the masked softmax, the other's from CE."""
    margin = check_params(name, margin=margin)["margin"]
    hidden, safe, valid = aligned_hidden_rows(hidden, weight, labels, ignore_index, name)  # [N, d], [N], [N]
    dtype = compute_dtype(hidden.dtype)
    # the head side: gradient to weight and bias only; through `head` (the model's output-embedding module)
    # when given, so that hooks on it (the gradient-scenario recorder) see the head's own logit gradient
    detached = hidden.detach()
    head_logits = (head(detached) if head is not None else F.linear(detached, weight, bias)).to(dtype)  # [N, V]
    # the hidden side: gradient to hidden only
    hidden_logits = F.linear(hidden, weight.detach(), None if bias is None else bias.detach()).to(dtype)  # [N, V]
    masked_side, full_side = (head_logits, hidden_logits) if split == "head" else (hidden_logits, head_logits)
    full = _masked_nll_sum(full_side, safe, valid, None)
    masked = _masked_nll_sum(masked_side, safe, valid, margin)
    loss_sum = full + (masked - masked.detach())  # the value of `full`, the gradients of both sides
    return _reduce(loss_sum, valid.sum(), num_items_in_batch)


def selfish_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    head=None,
    margin=2.0,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    token_counts: Counts = None,
) -> torch.Tensor:
    """The selfish mask on the head's gradient only: ``dW, db`` from the masked softmax, ``dh`` from the full one.

    ``hidden [..., d] @ weight[V, d].T (+ bias)`` against aligned ``labels [...]``; ``head`` (optional) is
    the module computing that (the model's output embedding), called on ``hidden.detach()`` for the head
    side. The value is plain cross-entropy (module docstring); ``margin=None`` is plain cross-entropy.
    """
    return _split_loss(
        hidden, weight, labels, bias, margin, "head", ignore_index, num_items_in_batch, head, "selfish_head"
    )


def selfish_hidden_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    head=None,
    margin=2.0,
    ignore_index: int = -100,
    num_items_in_batch: torch.Tensor | int | None = None,
    token_counts: Counts = None,
) -> torch.Tensor:
    """The control arm of :func:`selfish_head_loss`: ``dW, db`` from the full softmax, ``dh`` from the masked one.

    Same arguments; the value is plain cross-entropy (module docstring).
    """
    return _split_loss(
        hidden, weight, labels, bias, margin, "hidden", ignore_index, num_items_in_batch, head, "selfish_hidden"
    )


for _fn in (selfish_head_loss, selfish_hidden_loss):
    _fn.needs_hidden = True
    _fn.takes_head = True  # calls the model's output-embedding module: the scenario recorder sees the head side


class FusedChunkVariant(NamedTuple):
    """Which selfish variant the fused loss computes per chunk (see :func:`linear_selfish_cross_entropy`)."""

    split: str | None = None  # None: one gradient; "head" / "hidden": the side that gets the masked softmax
    always_kept: torch.Tensor | None = None  # [F] ids the margin never masks; None: none


# the sides a split gradient can mask: the head's (output embedding, bias) or the hidden state's
SPLITS = tuple(SPLIT_OF.values())


def check_fused_variant(
    split: str | None, always_kept: torch.Tensor | None, vocab_size: int, margin: float | None
) -> tuple[torch.Tensor | None, float | None]:
    """The fused loss's ``split`` checked, ``always_kept [V]`` bool as sorted ids ``[F]`` (``None`` when empty),
    and the margin (``None`` -- plain cross-entropy -- when every id is kept: nothing could be masked)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None, 'head' or 'hidden', got {split!r}")
    if always_kept is None:
        return None, margin
    if always_kept.dtype != torch.bool or always_kept.shape != (vocab_size,):
        raise ValueError(
            f"always_kept must be a [vocab] = ({vocab_size},) bool tensor, got {always_kept.dtype} "
            f"{tuple(always_kept.shape)}"
        )
    ids = always_kept.nonzero().squeeze(1)  # [F]
    if ids.numel() == vocab_size:
        return None, None
    return (ids if ids.numel() else None), margin


class FusedVariant(NamedTuple):
    """What the fused loss needs for a selfish variant (:func:`linear_selfish_cross_entropy`'s arguments)."""

    margin: float | None
    split: str | None  # "head" / "hidden" / None
    always_kept: torch.Tensor | None  # [V] bool (selfish_rare's frequent tokens) or None


def fused_variant(name: str, params: dict, token_counts: Counts, vocab_size: int) -> FusedVariant:
    """The fused loss's settings for ``selfish_head``, ``selfish_hidden`` or ``selfish_rare`` with ``params``."""
    if name not in FUSED_VARIANTS:
        raise ValueError(
            f"the fused loss computes selfish, selfish_head, selfish_hidden and selfish_rare, not {name!r}"
        )
    loss = selfish_rare_loss if name == "selfish_rare" else selfish_head_loss
    defaults = {p.name: p.default for p in inspect.signature(loss).parameters.values()}
    margin = check_params(name, margin=params.get("margin", defaults["margin"]))["margin"]
    if name in SPLIT_OF:
        return FusedVariant(margin, SPLIT_OF[name], None)
    mass = params.get("frequent_mass", defaults["frequent_mass"])
    return FusedVariant(margin, None, frequent_tokens(token_counts, vocab_size, mass))
