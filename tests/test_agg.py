"""AGG (adaptive gradient gating) against its gradient written out position by position."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_selfish.ops.agg import agg_loss, token_appearance
from hf_selfish.ops.registry import check_loss_params

from .tolerances import assert_exact

VOCAB, DIM = 11, 6
# train-split counts: ids 0-3 are rare at alpha 0.3 with 25 labelled tokens a step (a = count / 400 * 25)
COUNTS = [0, 1, 2, 4, 40, 50, 60, 60, 60, 60, 63]


def case(dtype=torch.float64, seed=0, bias=True):
    """Random inputs, float64 by default: AGG's gradients against the explicit loop, exactly."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(4, 7, DIM, generator=gen).to(dtype).requires_grad_(True)
    weight = torch.randn(VOCAB, DIM, generator=gen).to(dtype).requires_grad_(True)
    b = (torch.randn(VOCAB, generator=gen) * 0.1).to(dtype).requires_grad_(True) if bias else None
    labels = torch.randint(0, VOCAB, (4, 7), generator=gen)
    labels[0, :3] = torch.tensor([1, 2, 3])  # rare targets
    labels[3, 4:] = -100
    return hidden, weight, b, labels


def explicit_gradients(hidden, weight, bias, labels, appearance, alpha, denominator):
    """dL/dW and dL/db summed position by position with the authors' gates (float64)."""
    h, w = hidden.detach().double().reshape(-1, DIM), weight.detach().double()
    b = bias.detach().double() if bias is not None else torch.zeros(VOCAB, dtype=torch.float64)
    y = labels.reshape(-1)
    rare = [a < alpha for a in appearance]
    rare_values = [a for a, r in zip(appearance, rare) if r]
    mean_rare = sum(rare_values) / len(rare_values)
    grad_w, grad_b = torch.zeros_like(w), torch.zeros_like(b)
    for i in range(h.shape[0]):
        t = int(y[i])
        if t == -100:
            continue
        p = torch.softmax(h[i] @ w.T + b, 0)
        for v in range(VOCAB):
            g = (p[v] - (1.0 if v == t else 0.0)) / denominator
            if v != t and rare[v]:
                g = g * (min(appearance[v] / mean_rare, 1.0) if rare[t] else appearance[v])
            grad_w[v] += g * h[i]
            grad_b[v] += g
    return grad_w, grad_b


@pytest.mark.parametrize("num_items_in_batch", [None, 30])
@pytest.mark.parametrize("steps", [None, 8.0])
def test_value_is_ce_and_only_rare_head_rows_are_gated(num_items_in_batch, steps):
    hidden, weight, bias, labels = case()
    alpha = 0.3
    loss = agg_loss(
        hidden, weight, labels, bias=bias, alpha=alpha, steps=steps, token_counts=COUNTS,
        num_items_in_batch=num_items_in_batch,
    )  # fmt: skip
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    logits = hidden.reshape(-1, DIM) @ weight.T + bias
    per_step = num_items_in_batch or int((labels != -100).sum())  # 25 labelled positions
    ce = F.cross_entropy(logits, labels.reshape(-1), reduction="sum") / per_step
    ce_grads = torch.autograd.grad(ce, (hidden, weight, bias))
    assert_exact(loss, ce)
    assert_exact(grads[0], ce_grads[0])  # hidden: ungated
    appearance = [c / steps if steps else c / sum(COUNTS) * per_step for c in COUNTS]
    expected_w, expected_b = explicit_gradients(hidden, weight, bias, labels, appearance, alpha, per_step)
    assert_exact(grads[1], expected_w)
    assert_exact(grads[2], expected_b)
    rare_rows = [v for v, a in enumerate(appearance) if a < alpha]
    assert rare_rows and not torch.allclose(grads[1][rare_rows], ce_grads[1][rare_rows])  # the gate bites
    common = [v for v in range(VOCAB) if v not in rare_rows]
    assert_exact(grads[1][common], ce_grads[1][common])


def test_alpha_zero_is_plain_cross_entropy_everywhere():
    hidden, weight, bias, labels = case(seed=1)
    loss = agg_loss(hidden, weight, labels, bias=bias, alpha=0.0, token_counts=COUNTS)
    ce = F.cross_entropy(hidden.reshape(-1, DIM) @ weight.T + bias, labels.reshape(-1))
    for got, want in zip(
        torch.autograd.grad(loss, (hidden, weight, bias)), torch.autograd.grad(ce, (hidden, weight, bias))
    ):
        assert_exact(got, want)


def test_an_ignored_batch_is_zero_with_zero_gradient():
    hidden, weight, _, labels = case(bias=False)
    loss = agg_loss(hidden, weight, torch.full_like(labels, -100), alpha=0.3, token_counts=COUNTS)
    grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.item() == 0.0 and all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite(dtype):
    hidden, weight, bias, labels = case(dtype=dtype)
    loss = agg_loss(hidden, weight, labels, bias=bias, alpha=0.3, token_counts=COUNTS)
    grads = torch.autograd.grad(loss, (hidden, weight, bias))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


def test_token_appearance_per_step():
    per_step = token_appearance(COUNTS, VOCAB, 24)
    assert per_step.sum().item() == pytest.approx(24.0)  # a one-epoch memory's targets per step
    assert token_appearance(COUNTS, VOCAB, 24, steps=4)[10].item() == pytest.approx(63 / 4)


def test_bad_inputs_are_named():
    hidden, weight, bias, labels = case()
    with pytest.raises(ValueError, match="agg needs token_counts"):
        agg_loss(hidden, weight, labels)
    with pytest.raises(ValueError, match="agg: alpha must be a finite number >= 0, got -0.1"):
        agg_loss(hidden, weight, labels, alpha=-0.1, token_counts=COUNTS)
    with pytest.raises(ValueError, match="agg: steps must be a number > 0 or None, got 0"):
        check_loss_params("agg", {"steps": 0})
    with pytest.raises(ValueError, match="agg needs hidden"):
        agg_loss(hidden, weight.T, labels, token_counts=COUNTS)
