"""Rival rare-token losses on aligned ``logits [..., V]`` and ``labels [...]`` (no causal shift here).

Every loss has the signature of :mod:`hf_selfish.ops.registry`::

    fn(logits, labels, *, ignore_index=-100, num_items_in_batch=None, token_counts=None, **params)

and the reduction of :func:`~hf_selfish.ops.loss.selfish_cross_entropy`: the per-position losses are
summed and divided by ``num_items_in_batch`` when given, else by the number of labelled positions; a
batch with no labelled position gives 0 with zero gradients. Inputs of any float dtype are computed in
float32. ``token_counts`` are the TRAIN split's count of every token id (a list or a ``[V]`` tensor);
the losses that do not use them ignore them. Below, ``p = softmax(z)`` of a position's logits ``z``,
``t`` is its target and ``nll = -log p_t``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .gathered import RowTerms, gathered_log_softmax_loss
from .loss import _reduce, compute_dtype, selfish_cross_entropy, upcast
from .params import aligned_rows, as_token_counts, check_params

__all__ = [
    "anti_focal_loss",
    "ce_loss",
    "focal_loss",
    "label_smoothing_loss",
    "log_prior",
    "logit_adjustment_loss",
    "selfish_loss",
    "tlat_loss",
    "tlat_weights",
    "unlikelihood_loss",
    "z_loss",
]

Counts = Sequence[int] | torch.Tensor | None
_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32: keeps 0 ** (gamma - 1) finite
# Welleck et al.'s code clamps 1 - p(c) here before the log, so a candidate at p = 1 stays finite
UNLIKELIHOOD_FLOOR = 1e-5


def _row_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``-log p_t`` per row in float32, 0 (with zero gradient) on ignored rows: ``[N, V]`` -> ``[N]``."""
    return F.cross_entropy(upcast(logits), labels, ignore_index=ignore_index, reduction="none")


def _softmax_cross_entropy(logits, safe, valid, *, eps=0.0, lam=0.0, shift=None) -> torch.Tensor:
    """Summed ``(1 - eps) nll + eps mean_v(-log p_v) + lam lse^2`` of ``log_softmax(logits + shift)`` over valid rows."""
    vocab_size = logits.shape[-1]

    def rows(log_probs, target_logit):  # [N, V], [N]
        v = valid.to(log_probs.dtype)  # [N]
        log_p_target = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)  # [N]
        loss, row_coef, const = -(1 - eps) * log_p_target, v, None
        if eps:
            loss = loss - eps * log_probs.mean(dim=1)
            const = -eps / vocab_size * v
        if lam:
            log_z = target_logit - log_p_target  # [N] = logsumexp of the row
            loss = loss + lam * log_z.square()
            row_coef = v * (1 + 2 * lam * log_z)
        loss_sum = torch.where(valid, loss, torch.zeros_like(loss)).sum()
        return RowTerms(loss_sum, row_coef, safe.unsqueeze(1), (-(1 - eps) * v).unsqueeze(1), const)

    return gathered_log_softmax_loss(logits, safe, rows, shift)


def ce_loss(logits, labels, *, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None):
    """Plain cross-entropy, ``-log p_t``: the baseline every rival is measured against."""
    logits, labels, _, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    loss_sum = F.cross_entropy(upcast(logits), labels, ignore_index=ignore_index, reduction="sum")
    return _reduce(loss_sum, valid.sum(), num_items_in_batch)


def selfish_loss(
    logits, labels, *, margin=2.0, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None
):
    """Selfish cross-entropy (Turumtaev, "Stop Jostling", LoResLM 2025), margin 2 by default.

    ``z_v < z_t - margin`` leave the softmax: ``-z_t + log sum_{v: z_v >= z_t - margin} exp z_v``; see
    :func:`~hf_selfish.ops.loss.selfish_cross_entropy`. ``margin=None`` is plain cross-entropy.
    """
    margin = check_params("selfish", margin=margin)["margin"]
    return selfish_cross_entropy(
        logits, labels, margin, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch
    )


def label_smoothing_loss(
    logits, labels, *, eps=0.1, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None
):
    """Label smoothing as transformers' ``Trainer`` applies ``label_smoothing_factor`` (its ``LabelSmoother``).

    ``(1 - eps) * nll + eps * mean_v(-log p_v)`` per position (Szegedy et al., CVPR 2016), eps 0.1
    (the value of Vaswani et al., 2017); ``eps=0`` is plain cross-entropy.
    """
    eps = check_params("label_smoothing", eps=eps)["eps"]
    logits, _, safe, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    return _reduce(_softmax_cross_entropy(logits, safe, valid, eps=eps), valid.sum(), num_items_in_batch)


def z_loss(logits, labels, *, lam=1e-4, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None):
    """Cross-entropy plus PaLM's auxiliary z-loss (Chowdhery et al., JMLR 2023, section 5): ``nll + lam * log(Z)^2``.

    ``log Z = logsumexp(z)`` of the position's logits; the term pulls ``log Z`` towards 0 (self-normalised
    logits). ``lam`` is 1e-4 as in PaLM; ``lam=0`` is plain cross-entropy. ``log Z`` is read off the
    cross-entropy itself (``z_t + nll``), so no second pass over the vocabulary is made.
    """
    lam = check_params("z_loss", lam=lam)["lam"]
    logits, _, safe, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    return _reduce(_softmax_cross_entropy(logits, safe, valid, lam=lam), valid.sum(), num_items_in_batch)


def focal_loss(logits, labels, *, gamma=2.0, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None):
    """Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017): ``-(1 - p_t)^gamma log p_t``.

    ``gamma`` 2 as in the paper; ``gamma=0`` is plain cross-entropy. The gradient flows through the
    factor ``(1 - p_t)^gamma`` too, as in the paper; ``1 - p_t`` is computed as ``-expm1(-nll)``
    (exact for confident positions) and floored at the smallest normal float32, so ``gamma < 1`` keeps a
    finite gradient at ``p_t = 1``.
    """
    gamma = check_params("focal", gamma=gamma)["gamma"]
    logits, labels, _, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    nll = _row_nll(logits, labels, ignore_index)  # [N]
    one_minus_p = torch.expm1(-nll).neg().clamp_min(_TINY)  # [N] = 1 - p_t
    return _reduce((one_minus_p.pow(gamma) * nll).sum(), valid.sum(), num_items_in_batch)


def anti_focal_loss(
    logits, labels, *, gamma=1.0, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None
):
    """Anti-focal loss (Raunak et al., "On Long-Tailed Phenomena in NMT", Findings of EMNLP 2020): ``-(1 + p_t)^gamma log p_t``.

    ``p_t`` is detached, as in the authors' code (``Variable(lprobs.data.exp())``): the factor rescales
    each position's cross-entropy gradient by up to ``2^gamma``, favouring positions the model already
    predicts well. ``gamma`` 1; ``gamma=0`` is plain cross-entropy.
    """
    gamma = check_params("anti_focal", gamma=gamma)["gamma"]
    logits, labels, _, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    nll = _row_nll(logits, labels, ignore_index)  # [N]
    factor = (1.0 + torch.exp(-nll.detach())).pow(gamma)  # [N], no gradient
    return _reduce((factor * nll).sum(), valid.sum(), num_items_in_batch)


def tlat_weights(
    token_counts: Counts,
    vocab_size: int,
    *,
    form: str = "exponential",
    T: float = 1.0,
    A: float | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """TLAT's weight of every token id, float64 ``[vocab_size]`` (see :func:`tlat_loss`).

    ``c = count / median(count)`` over the ids that occur; ``f(c) = exp(-T c)`` (``exponential``) or
    ``c^2 exp(-T c)`` (``chi_square``); ``w = A f(c) + 1``. ``A=None`` picks ``A = (e - 1) / max f`` so
    the weights span ``[1, e]`` as in the authors' code (ictnlp/TLAT-NMT).
    """
    params = check_params("tlat", form=form, T=T, A=A)
    counts = as_token_counts(token_counts, vocab_size, torch.device(device), "tlat")  # [V] float64
    seen = counts[counts > 0]
    if seen.numel() == 0:
        raise ValueError("tlat: token_counts are all 0; pass the train split's counts per token id")
    c = counts / seen.median()  # [V]
    f = torch.exp(-params["T"] * c)
    if params["form"] == "chi_square":
        f = c.square() * f
    amplitude = params["A"]
    if amplitude is None:
        if float(f.max()) <= 0:
            raise ValueError(f"tlat: every weight underflows to 1 with T={T!r}; use a smaller T (the authors' is 1)")
        amplitude = (math.e - 1) / float(f.max())
    return amplitude * f + 1.0


def tlat_loss(
    logits,
    labels,
    *,
    form="exponential",
    T=1.0,
    A=None,
    weight_drop=0.0,
    ignore_index=-100,
    num_items_in_batch=None,
    token_counts: Counts = None,
):
    """Token-level adaptive training (Gu et al., "Token-level Adaptive Training for NMT", EMNLP 2020).

    Cross-entropy weighted by the target's train-split frequency, ``w(t) * -log p_t`` with
    ``w(t) = A * exp(-T * Count(t)) + 1`` (``form="exponential"``) or ``A * Count(t)^2 * exp(-T * Count(t)) + 1``
    (``form="chi_square"``), counts divided by their median and ``A`` scaled so the largest weight is ``e``
    (:func:`tlat_weights`), ``T=1``: the defaults of the authors' code. Rare targets weigh up to ``e``
    times a frequent one; the chi-square form gives the largest weights to tokens of middling frequency
    and 1 to ids that never occur. ``weight_drop`` resets each position's weight to 1 with that
    probability, a trick of the authors' code (0.1 there) outside the paper's formula: 0 here, so the
    loss is deterministic. Needs ``token_counts``.
    """
    drop = check_params("tlat", weight_drop=weight_drop)["weight_drop"]
    logits, labels, safe, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    weights = tlat_weights(token_counts, logits.shape[-1], form=form, T=T, A=A, device=logits.device)  # [V]
    weight = weights.to(compute_dtype(logits.dtype))[safe]  # [N]
    if drop > 0:
        weight = torch.where(torch.rand(weight.shape, device=weight.device) < drop, 1.0, weight)
    nll = _row_nll(logits, labels, ignore_index)  # [N]
    return _reduce((weight * nll).sum(), valid.sum(), num_items_in_batch)


def log_prior(token_counts: Counts, vocab_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``log pi`` of the train split's unigram prior, add-one smoothed: ``pi_v = (n_v + 1) / (N + V)``, float64 ``[V]``.

    Add-one (Laplace) smoothing keeps ``log pi`` finite for ids that never occur in training (a BPE
    vocabulary has many), at ``log(1 / (N + V))``, just below a token seen once.
    """
    counts = as_token_counts(token_counts, vocab_size, torch.device(device), "logit_adjustment")  # [V]
    return torch.log((counts + 1.0) / (counts.sum() + vocab_size))


def logit_adjustment_loss(
    logits, labels, *, tau=1.0, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None
):
    """Logit-adjusted cross-entropy (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

    Training loss ``-log softmax(z + tau * log pi)_t`` with ``pi`` the train split's unigram prior
    (:func:`log_prior`, add-one smoothed), ``tau=1`` as in the paper. Frequent tokens get a head start
    in the softmax, so the model's own logits ``z`` (used unadjusted at evaluation) learn less of the
    prior and the rare tokens keep their probability. ``tau=0`` is plain cross-entropy. Needs
    ``token_counts``.
    """
    tau = check_params("logit_adjustment", tau=tau)["tau"]
    logits, _, safe, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    shift = None
    if tau != 0:
        shift = (tau * log_prior(token_counts, logits.shape[-1], logits.device)).to(compute_dtype(logits.dtype))  # [V]
    return _reduce(_softmax_cross_entropy(logits, safe, valid, shift=shift), valid.sum(), num_items_in_batch)


def unlikelihood_loss(
    logits, labels, *, alpha=1.0, ignore_index=-100, num_items_in_batch=None, token_counts: Counts = None
):
    """Token-level unlikelihood training (Welleck et al., "Neural Text Generation with Unlikelihood Training", ICLR 2020).

    Per position ``t``: ``nll - alpha * sum_{c in C_t} log(1 - p(c))`` with the candidates
    ``C_t = {labels[s] : s < t} - {labels[t]}``, each id once, ``alpha=1`` as in the paper. With
    aligned labels the "previous context" of position ``t`` is the previous *targets* of the same
    row: for a causal LM (labels shifted by one) that is the input tokens ``1..t``, i.e. the context
    without its first token, which is never a target. Ignored positions are neither scored nor
    candidates. ``1 - p(c)`` is floored at 1e-5 before the log, as in the authors' code.

    Needs the sequence structure: ``logits [B, T, V]`` and ``labels [B, T]``. Costs one gather of
    ``[B, T, T]`` log-probabilities beyond the cross-entropy.
    """
    alpha = check_params("unlikelihood", alpha=alpha)["alpha"]
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"unlikelihood needs logits [B, T, V] and labels [B, T] (its candidates are the previous targets "
            f"of each row), got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    batch, length, vocab = logits.shape
    flat, _, safe, valid = aligned_rows(logits, labels, ignore_index)  # [N, V], [N]
    candidate = _earlier_targets(safe.view(batch, length), valid.view(batch, length), vocab)  # [B, T, T]
    index = torch.cat([safe.view(batch, length, 1), safe.view(batch, 1, length).expand(batch, length, length)], -1)
    index = index.view(batch * length, 1 + length)  # [N, 1+T]: the target, then labels[s] of the row
    candidate = candidate.view(batch * length, length)  # [N, T]

    def rows(log_probs, target_logit):  # [N, V], [N]
        picked = log_probs.gather(1, index)  # [N, 1+T] log-probabilities
        one_minus_p = torch.expm1(picked[:, 1:]).neg_()  # [N, T] = 1 - p(c), exact for small p(c)
        floored = one_minus_p.clamp_min(UNLIKELIHOOD_FLOOR)
        penalty = torch.where(candidate, floored.log().neg_(), 0.0).sum(1)  # [N]
        loss = torch.where(valid, alpha * penalty - picked[:, 0], 0.0)  # [N]
        # d/d log p(c) of -log(1 - p(c)) is p(c) / (1 - p(c)), 0 below the floor; of -log p_t it is -1
        kept = candidate & (one_minus_p >= UNLIKELIHOOD_FLOOR)
        coef = torch.where(kept, alpha * picked[:, 1:].exp() / floored, 0.0)  # [N, T]; 0 unless t is labelled
        v = valid.to(one_minus_p.dtype).unsqueeze(1)  # [N, 1]
        return RowTerms(loss.sum(), (v - coef.sum(1, keepdim=True)).squeeze(1), index, torch.cat([-v, coef], 1), None)

    loss_sum = gathered_log_softmax_loss(flat, safe, rows)
    return _reduce(loss_sum, valid.sum(), num_items_in_batch)


def _earlier_targets(safe: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, T, T]`` bool: ``labels[s]`` is a candidate of position ``t`` (unlikelihood's ``C_t``).

    ``s < t``, ``s`` is the first valid position of its id in the row (each id counts once), and the id
    differs from ``labels[t]``; ``t`` itself is labelled.
    """
    batch, length = safe.shape
    position = torch.arange(length, device=safe.device).expand(batch, length)  # [B, T]
    first = torch.full((batch, vocab_size), length, device=safe.device, dtype=torch.long)  # [B, V]
    first.scatter_reduce_(1, safe, torch.where(valid, position, length), reduce="amin")
    is_first = valid & (first.gather(1, safe) == position)  # [B, T]
    before = torch.ones(length, length, dtype=torch.bool, device=safe.device).tril(-1)  # [t, s]: s < t
    candidate = before & is_first.unsqueeze(1)  # [B, t, s]
    candidate &= safe.unsqueeze(1) != safe.unsqueeze(2)
    return candidate & valid.unsqueeze(2)
