"""Property-based tests of `selfish_cross_entropy` against the masked reference, over random cases.

Shapes, margins, dtypes (fp32/bf16/fp16), logit scales up to 1e4, entries of ±1e4, entries tied with
the target and ignored rows are drawn by hypothesis; the values come from a seeded torch generator.
Reference: ``masked_fill(-inf)`` below ``logit[target] - margin`` (in float32, from the same low-precision
values), then ``F.cross_entropy``; its gradient comes from autograd.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_selfish.ops.loss import selfish_cross_entropy

from .tolerances import close_scaled

IGNORE = -100
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EXTREME = 1e4
# Gradient entries are p - onehot, divided by the number of labelled rows, then cast to the logits' dtype.
EPS = {torch.float32: 2e-7, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SUBNORMAL = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 2.0**-24}  # fp16 flushes tiny gradients

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    logits: torch.Tensor  # [N, V] in `dtype`
    labels: torch.Tensor  # [N], IGNORE on ignored rows (at least one row is labelled)
    margin: float | None

    @property
    def valid(self) -> torch.Tensor:
        return self.labels != IGNORE  # [N]

    def masked(self) -> torch.Tensor:
        """[N, V] bool: entries the selfish softmax drops, on labelled rows (none for plain CE)."""
        if self.margin is None:
            return torch.zeros(self.logits.shape, dtype=torch.bool)
        x = self.logits.float()
        target = x.gather(1, self.labels.clamp(min=0).unsqueeze(1))  # [N, 1]
        return (x < target - self.margin) & self.valid.unsqueeze(1)


# Under flush-to-zero (HF_SELFISH_TEST_FLUSH_DENORMAL=1) hypothesis cannot draw subnormal floats and refuses to try
SUBNORMALS = {"allow_subnormal": False} if sys.float_info.min / 2 == 0 else {}


@st.composite
def cases(draw) -> Case:
    n = draw(st.integers(1, 12))
    v = draw(st.integers(2, 48))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([0.01, 1.0, 10.0, EXTREME]))
    margin = draw(
        st.one_of(st.none(), st.sampled_from([0.0, 2.0]), st.floats(0.0, 50.0, allow_nan=False, **SUBNORMALS))
    )
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    logits = (torch.randn(n, v, generator=gen) * scale).to(dtype)  # [N, V]
    labels = torch.randint(0, v, (n,), generator=gen)  # [N]
    rows = torch.arange(n)
    if draw(st.booleans()):  # entries at +-1e4
        extreme = torch.rand(n, v, generator=gen) < 0.3
        signs = torch.where(torch.rand(n, v, generator=gen) < 0.5, -EXTREME, EXTREME)
        logits = torch.where(extreme, signs.to(dtype), logits)
    if draw(st.booleans()):  # entries tied with the target, exactly (in the logits' dtype)
        ties = torch.rand(n, v, generator=gen) < 0.4
        logits = torch.where(ties, logits[rows, labels].unsqueeze(1), logits)
    if draw(st.booleans()):  # some rows carry no loss
        ignored = torch.rand(n, generator=gen) < 0.4
        ignored[draw(st.integers(0, n - 1))] = False
        labels = torch.where(ignored, torch.full_like(labels, IGNORE), labels)
    return Case(logits=logits, labels=labels, margin=margin)


def reference(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and gradient of ``masked_fill(-inf)`` + ``F.cross_entropy`` (mean over labelled rows)."""
    x = case.logits.detach().float().requires_grad_(True)  # [N, V]
    masked_x = x.masked_fill(case.masked(), float("-inf"))
    loss = F.cross_entropy(masked_x, case.labels, ignore_index=IGNORE)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad  # grad [N, V] float32


def selfish(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = case.logits.detach().clone().requires_grad_(True)
    loss, fraction = selfish_cross_entropy(logits, case.labels, case.margin, return_masked_fraction=True)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad, fraction


@SETTINGS
@given(cases())
def test_loss_is_finite_and_equals_the_masked_reference(case):
    loss, _, fraction = selfish(case)
    expected, _ = reference(case)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # float32 rounding of logsumexp over logits up to 1e4 in size
    torch.testing.assert_close(loss, expected, rtol=2e-6, atol=1e-5)
    n_valid = int(case.valid.sum())
    expected_fraction = case.masked().sum().item() / (n_valid * case.logits.shape[1])
    assert math.isclose(fraction.item(), expected_fraction, rel_tol=1e-6, abs_tol=0.0)


@SETTINGS
@given(cases())
def test_gradient_is_zero_where_masked_and_rows_sum_to_zero(case):
    _, grad, _ = selfish(case)
    assert grad.dtype == case.logits.dtype and torch.isfinite(grad).all()
    grad = grad.float()  # [N, V]
    masked, valid = case.masked(), case.valid
    assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))  # exactly zero: they left the softmax
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))  # ignored rows carry no gradient

    n_valid, vocab = int(valid.sum()), case.logits.shape[1]
    eps, subnormal = EPS[case.logits.dtype], SUBNORMAL[case.logits.dtype]
    tolerance = (4 * eps + vocab * 2e-7) / n_valid + vocab * subnormal
    row_sums = grad[valid].sum(dim=1)  # [n_valid]: sum(p_kept) - 1, divided by n_valid
    assert row_sums.abs().max().item() <= tolerance, (row_sums, tolerance)

    # signs: the target is pulled up, every kept negative is pushed down (or not at all once it underflows)
    rows = torch.arange(len(case.labels))[valid]
    targets = case.labels[valid]
    assert (grad[rows, targets] <= 0).all()
    negatives = grad[valid].clone()
    negatives[torch.arange(n_valid), targets] = 0.0
    assert (negatives >= 0).all()


def shift_spread(case: Case) -> float:
    """Largest ``|x - (x_t - margin)|`` over kept entries of labelled rows (0 for plain cross-entropy).

    The loss shifts each row by its threshold (so the mask is exact), the reference by its max: a kept
    logit then differs by up to float32's ``eps * spread`` between the two, and ``p = exp(...)`` relatively
    by as much. It matters only for logits of size ~1e4 (1e-3 there; 2e-6 for logits of size 10).
    """
    if case.margin is None:
        return 0.0
    x = case.logits.float()
    threshold = x.gather(1, case.labels.clamp(min=0).unsqueeze(1)) - case.margin  # [N, 1]
    spread = (x - threshold).abs().masked_fill(case.masked() | ~case.valid.unsqueeze(1), 0.0)
    return spread.max().item()


@SETTINGS
@given(cases())
def test_gradient_equals_the_reference_gradient(case):
    _, grad, _ = selfish(case)
    _, expected = reference(case)
    eps, subnormal = EPS[case.logits.dtype], SUBNORMAL[case.logits.dtype]
    n_valid = int(case.valid.sum())
    shift = 4 * torch.finfo(torch.float32).eps * shift_spread(case)
    # both are rounded to the logits' dtype: at most a unit in the last place apart, plus float32 noise
    torch.testing.assert_close(
        grad.float(), expected, rtol=max(2 * eps, 1e-5) + shift, atol=(1e-6 + shift) / n_valid + 2 * subnormal
    )


def test_ties_with_the_target_are_kept_at_margin_zero():
    """Closed form: a row [a, a, a - 1] with target 0 and margin 0 keeps the tie: loss ln 2, grads -1/2, 1/2, 0."""
    for dtype in DTYPES:
        for a in (0.0, EXTREME, -EXTREME):
            logits = torch.tensor([[a, a, a - 1.0]], dtype=dtype)  # a - 1 rounds to a at 1e4 in bf16/fp16
            case = Case(logits=logits, labels=torch.tensor([0]), margin=0.0)
            loss, grad, _ = selfish(case)
            kept = int((~case.masked()).sum())
            torch.testing.assert_close(loss, torch.log(torch.tensor(float(kept))), rtol=1e-6, atol=1e-6)
            expected = torch.tensor([[1 / kept - 1, 1 / kept, 1 / kept if kept == 3 else 0.0]])
            torch.testing.assert_close(grad.float(), expected, rtol=0, atol=EPS[dtype])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    exponent=st.floats(min_value=2.0, max_value=30.0),
    seed=st.integers(min_value=0, max_value=2**16),
    vocab=st.integers(min_value=2, max_value=300),
    fused=st.booleans(),
)
def test_a_margin_too_large_to_mask_anything_is_cross_entropy(exponent, seed, vocab, fused):
    """Margins from 100 to 1e30 (logit range < 40 here) give cross-entropy, values and gradients.

    The shift by ``target - margin`` rounded every logit away in float32: margin 1e8 gave 9.49 for a 9.36 CE.
    """
    from hf_selfish.ops.fused import linear_selfish_cross_entropy

    margin = 10.0**exponent
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(24, 8, generator=gen)
    weight = torch.randn(vocab, 8, generator=gen)
    labels = torch.randint(0, vocab, (24,), generator=gen)
    logits = (hidden @ weight.T).clamp(-20, 20).detach().requires_grad_(True)  # range < 40 < margin
    reference = logits.detach().clone().requires_grad_(True)
    expected = F.cross_entropy(reference, labels)
    expected.backward()
    if fused:
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        loss = linear_selfish_cross_entropy(h, w, labels, margin)
        plain_h, plain_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        plain = F.cross_entropy(plain_h @ plain_w.T, labels)
        plain.backward()
        loss.backward()
        assert close_scaled(loss, plain)
        assert close_scaled(h.grad, plain_h.grad) and close_scaled(w.grad, plain_w.grad)
        return
    loss, masked = selfish_cross_entropy(logits, labels, margin, return_masked_fraction=True)
    loss.backward()
    assert float(masked) == 0.0
    assert close_scaled(loss, expected)
    assert close_scaled(logits.grad, reference.grad)


def test_the_issues_example_margin_1e8():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 10_000, generator=gen) * 3, torch.randint(0, 10_000, (64,), generator=gen)
    assert selfish_cross_entropy(logits, labels, 1e8).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
