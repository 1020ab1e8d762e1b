"""selfish_cross_entropy / selfish_causal_lm_loss against independent references."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from hf_selfish import selfish_causal_lm_loss, selfish_cross_entropy, validate_margin

from .tolerances import assert_close_scaled, assert_exact

MARGINS = [0.0, 0.5, 2.0, 10.0, None]


def masked_reference(logits, labels, margin, ignore_index=-100, num_items_in_batch=None):
    """The method's pseudocode, literally: masked_fill(-inf) below the threshold, then F.cross_entropy."""
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32).reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    if margin is not None:
        target = x.gather(1, y.clamp(min=0).unsqueeze(1))
        x = x.masked_fill(x < target - margin, float("-inf"))
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = F.cross_entropy(x, y, ignore_index=ignore_index, reduction=reduction)
    return loss / num_items_in_batch if num_items_in_batch is not None else loss


def random_case(n=37, v=29, dtype=torch.float32, ignore_every=5, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=gen) * scale).to(dtype).requires_grad_(True)
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::ignore_every] = -100
    return logits, labels


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("shape", [(37, 29), (3, 11, 65), (1, 1, 5)])
def test_matches_masked_reference_in_float64(margin, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    logits = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    labels.view(-1)[::4] = -100
    if labels.ne(-100).sum() == 0:
        labels.view(-1)[-1] = 1
    loss = selfish_cross_entropy(logits, labels, margin)
    (grad,) = torch.autograd.grad(loss, logits)
    ref = masked_reference(logits, labels, margin)
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert_exact(loss, ref)
    assert_exact(grad, ref_grad)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_upcast_reference(margin, dtype):
    logits, labels = random_case(dtype=dtype)
    loss = selfish_cross_entropy(logits, labels, margin)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    ref = masked_reference(logits, labels, margin)  # upcasts the same low-precision values
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert_close_scaled(loss, ref)
    torch.testing.assert_close(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_extreme_logits_stay_finite(dtype):
    big = 6e4 if dtype == torch.float16 else 1e4
    logits = torch.tensor([[big, -big, 0.0, big], [-big, -big, -big, -big]], dtype=dtype, requires_grad=True)
    labels = torch.tensor([1, 2])
    loss = selfish_cross_entropy(logits, labels, 2.0)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # row 0: target far below two logits that stay (they are above the threshold) -> loss ~ 2*big
    ref = masked_reference(logits, labels, 2.0)
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)


def test_masked_entries_get_exactly_zero_gradient_and_target_is_kept():
    logits = torch.tensor([[5.0, 4.0, 2.9, 3.0, -7.0]], requires_grad=True)
    labels = torch.tensor([0])
    loss = selfish_cross_entropy(logits, labels, margin=2.0)  # threshold 3.0: keeps ids 0, 1, 3
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[0, 2].item() == 0.0 and grad[0, 4].item() == 0.0
    assert grad[0, 1].item() > 0 and grad[0, 3].item() > 0 and grad[0, 0].item() < 0
    expected = -torch.log_softmax(torch.tensor([5.0, 4.0, 3.0]), 0)[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert grad.sum().item() == pytest.approx(0.0, abs=1e-6)


def test_margin_zero_keeps_only_target_and_higher():
    logits = torch.tensor([[1.0, 2.0, 0.5, 1.0]], requires_grad=True)
    loss = selfish_cross_entropy(logits, torch.tensor([0]), margin=0.0)  # keeps 1.0, 2.0, 1.0 (tie)
    expected = -torch.log_softmax(torch.tensor([1.0, 2.0, 1.0]), 0)[0]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_lowest_logit_target_is_never_masked():
    logits = torch.tensor([[10.0, 9.0, -20.0]], requires_grad=True)
    loss = selfish_cross_entropy(logits, torch.tensor([2]), margin=0.0)
    assert loss.item() == pytest.approx(-torch.log_softmax(logits.detach()[0], 0)[2].item(), rel=1e-6)


def test_margin_none_and_inf_are_bitwise_cross_entropy():
    logits, labels = random_case(n=64, v=50)
    ce = F.cross_entropy(logits.float(), labels, ignore_index=-100)
    for margin in (None, math.inf):
        loss = selfish_cross_entropy(logits, labels, margin)
        assert torch.equal(loss, ce)
    (g1,) = torch.autograd.grad(selfish_cross_entropy(logits, labels, None), logits)
    (g2,) = torch.autograd.grad(F.cross_entropy(logits, labels), logits)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("margin", [None, 2.0])
def test_all_ignored_is_zero_with_zero_grad(margin):
    logits = torch.randn(4, 7, requires_grad=True)
    labels = torch.full((4,), -100)
    loss = selfish_cross_entropy(logits, labels, margin)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("margin", [None, 1.0])
def test_num_items_in_batch_divides_the_sum(margin):
    logits, labels = random_case(dtype=torch.float64)
    n = 100
    loss = selfish_cross_entropy(logits, labels, margin, num_items_in_batch=torch.tensor(n))
    ref = masked_reference(logits, labels, margin, num_items_in_batch=n)
    assert_exact(loss, ref)


def test_grad_output_scaling_is_respected():
    logits, labels = random_case(dtype=torch.float64)
    (g1,) = torch.autograd.grad(3.5 * selfish_cross_entropy(logits, labels, 1.0), logits)
    (g2,) = torch.autograd.grad(3.5 * masked_reference(logits, labels, 1.0), logits)
    assert_exact(g1, g2)


def test_masked_fraction_equals_hand_count():
    logits = torch.tensor([[5.0, 4.0, 2.9, 3.0, -7.0], [0.0, 0.0, 0.0, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 3, -100])
    _, frac = selfish_cross_entropy(logits, labels, 2.0, return_masked_fraction=True)
    # row 0 masks ids 2 and 4; row 1 masks nothing; row 2 is ignored -> 2 / (2 rows * 5)
    assert frac.item() == pytest.approx(2 / 10)
    _, frac_ce = selfish_cross_entropy(logits, labels, None, return_masked_fraction=True)
    assert frac_ce.item() == 0.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "wide", -math.inf])
def test_bad_margin_is_named(bad):
    with pytest.raises(ValueError, match="selfish margin"):
        selfish_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), bad)
    with pytest.raises(ValueError, match=repr(bad) if isinstance(bad, str) else "margin"):
        validate_margin(bad)


def test_label_outside_vocab_is_named():
    with pytest.raises(ValueError, match="label id 9 is outside the vocabulary"):
        selfish_cross_entropy(torch.randn(2, 5), torch.tensor([0, 9]), 2.0)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="do not align"):
        selfish_cross_entropy(torch.randn(2, 3, 5), torch.tensor([0, 1]), 2.0)


@pytest.mark.parametrize("num_items", [None, 17])
def test_causal_lm_loss_equals_transformers_for_causal_lm_loss(num_items):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 9, 23, generator=gen, requires_grad=True)
    labels = torch.randint(0, 23, (3, 9), generator=gen)
    labels[0, 5:] = -100  # right padding
    ours = selfish_causal_lm_loss(logits, labels, None, num_items_in_batch=num_items)
    theirs = ForCausalLMLoss(logits, labels, vocab_size=23, num_items_in_batch=num_items)
    assert torch.equal(ours, theirs)
    (g1,) = torch.autograd.grad(ours, logits)
    (g2,) = torch.autograd.grad(theirs, logits)
    assert torch.equal(g1, g2)


def test_causal_lm_loss_shift_and_shift_labels():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (2, 6), generator=gen)
    ours = selfish_causal_lm_loss(logits, labels, 1.5)
    ref = masked_reference(logits[:, :-1], labels[:, 1:], 1.5)
    assert_exact(ours, ref)
    shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
    assert torch.equal(selfish_causal_lm_loss(logits, None, 1.5, shift_labels=shifted), ours)
