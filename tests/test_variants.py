"""The selfish variants (selfish_head, selfish_hidden, selfish_rare) against a float64 loop over positions.

The reference writes both gradients out one position at a time: with ``G_sel`` the masked softmax's
``p - onehot`` and ``G_ce`` the full one's, ``dW += outer(G_head_side, h)``, ``db += G_head_side``,
``dh[n] = G_hidden_side @ W``. The unfused losses (from logits), the fused loss (dense and sparse
backward) and the reference must agree at 1e-10 in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_selfish.ops import fused as fused_module
from hf_selfish.ops.fused import linear_selfish_cross_entropy
from hf_selfish.ops.loss import selfish_cross_entropy
from hf_selfish.ops.registry import check_loss_params, get_loss
from hf_selfish.ops.variants import frequent_tokens, fused_variant

from .test_fused import split_plan

N, D, V = 23, 6, 13
IGNORE = -100
# train-split counts, total 12306: the frequent ids are 12 at mass 0.5 (9000 >= 6153), 12, 9, 8 at mass 0.9
# (9000 + 2000 < 11075.4 <= 9000 + 2000 + 800)
COUNTS = [0, 1, 3, 7, 20, 50, 120, 300, 800, 2000, 0, 5, 9000]
TIGHT = dict(rtol=1e-10, atol=1e-10)
SPLIT = {"selfish_head": "head", "selfish_hidden": "hidden"}


def case(dtype=torch.float64, seed=0, bias=True, n=N):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, D, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)
    weight = torch.randn(V, D, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(True)  # logits ~ N(0, 6)
    b = (torch.randn(V, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True) if bias else None
    labels = torch.randint(0, V, (n,), generator=gen)
    labels[::5] = IGNORE
    return hidden, weight, b, labels


def loop_reference(hidden, weight, bias, labels, name, margin=2.0, frequent=None, num_items_in_batch=None):
    """``(loss, dh, dW, db)`` of loss ``name``, one position at a time in float64."""
    h, w = hidden.detach().double(), weight.detach().double()
    vocab = w.shape[0]
    b = bias.detach().double() if bias is not None else torch.zeros(vocab, dtype=torch.float64)
    loss, dh = 0.0, torch.zeros_like(h)
    dw, db = torch.zeros_like(w), torch.zeros(vocab, dtype=torch.float64)
    n_valid = 0
    for n in range(h.shape[0]):
        t = int(labels[n])
        if t == IGNORE:
            continue
        n_valid += 1
        z = w @ h[n] + b  # [V]
        kept = [
            margin is None or v == t or z[v] >= z[t] - margin or (frequent is not None and bool(frequent[v]))
            for v in range(vocab)
        ]
        z_kept = torch.where(torch.tensor(kept), z, torch.tensor(float("-inf"), dtype=torch.float64))
        g_full, g_sel = torch.softmax(z, 0), torch.softmax(z_kept, 0)
        g_full[t] -= 1
        g_sel[t] -= 1
        if name == "selfish_head":
            g_head, g_hidden, value = g_sel, g_full, -torch.log_softmax(z, 0)[t]
        elif name == "selfish_hidden":
            g_head, g_hidden, value = g_full, g_sel, -torch.log_softmax(z, 0)[t]
        else:  # selfish / selfish_rare / ce (margin None): one gradient
            g_head, g_hidden, value = g_sel, g_sel, -torch.log_softmax(z_kept, 0)[t]
        loss += float(value)
        dw += torch.outer(g_head, h[n])
        db += g_head
        dh[n] = g_hidden @ w
    denom = num_items_in_batch if num_items_in_batch is not None else max(n_valid, 1)
    return torch.tensor(loss / denom, dtype=torch.float64), dh / denom, dw / denom, db / denom


def grads_of(loss, hidden, weight, bias):
    params = [hidden, weight] + ([bias] if bias is not None else [])
    return (loss.detach(), *torch.autograd.grad(loss, params))


def unfused(name, hidden, weight, bias, labels, **kwargs):
    """The registry's loss: the split variants from (hidden, weight), selfish_rare from the logits."""
    fn = get_loss(name)
    if name in SPLIT:
        return fn(hidden, weight, labels, bias=bias, **kwargs)
    return fn(F.linear(hidden, weight, bias), labels, token_counts=COUNTS, **kwargs)


def fused(name, hidden, weight, bias, labels, sparse, chunk_size=4, params=None, **kwargs):
    variant = fused_variant(name, params or {}, COUNTS, V)
    return linear_selfish_cross_entropy(
        hidden,
        weight,
        labels,
        variant.margin,
        bias=bias,
        chunk_size=chunk_size,
        sparse_backward=sparse,
        split=variant.split,
        always_kept=variant.always_kept,
        **kwargs,
    )


def assert_all_close(got, want, what, **tolerance):
    for part, g, w in zip(("loss", "hidden", "weight", "bias"), got, want):
        torch.testing.assert_close(g, w, **(tolerance or TIGHT), msg=lambda m, part=part: f"{what}, {part}: {m}")


@pytest.fixture
def every_chunk_split(monkeypatch):
    """The fused sparse backward on every chunk, with narrow and wide rows (as in test_fused.py)."""
    monkeypatch.setattr(fused_module, "plan_sparse_backward", split_plan)


# --- value and both gradients: unfused, fused dense, fused sparse, float64 loop --------------------------


@pytest.mark.parametrize("name", ["selfish_head", "selfish_hidden", "selfish_rare"])
@pytest.mark.parametrize("margin", [2.0, 0.5])
@pytest.mark.parametrize("num_items_in_batch", [None, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_value_and_both_gradients_match_the_loop_reference(every_chunk_split, name, margin, num_items_in_batch, bias):
    hidden, weight, b, labels = case(bias=bias, seed=int(margin * 2))
    params = {"margin": margin}
    frequent = frequent_tokens(COUNTS, V, 0.9) if name == "selfish_rare" else None
    want = loop_reference(hidden, weight, b, labels, name, margin, frequent, num_items_in_batch)
    got = grads_of(
        unfused(name, hidden, weight, b, labels, num_items_in_batch=num_items_in_batch, **params), hidden, weight, b
    )
    assert_all_close(got, want, f"unfused {name}")
    for sparse in (False, True):
        loss = fused(name, hidden, weight, b, labels, sparse, params=params, num_items_in_batch=num_items_in_batch)
        assert_all_close(grads_of(loss, hidden, weight, b), want, f"fused {name}, sparse={sparse}")
    # the test can fail: the variant's gradients differ from both plain CE's and the selfish loss's
    for other in ("ce", "selfish"):
        reference = loop_reference(hidden, weight, b, labels, other, None if other == "ce" else margin)
        differs = [not torch.allclose(g, r, rtol=1e-6, atol=1e-8) for g, r in zip(got[1:3], reference[1:3])]
        assert any(differs), f"{name} equals {other} here"


@pytest.mark.parametrize("name", ["selfish_head", "selfish_hidden"])
def test_split_sides_are_the_two_losses_gradients(name):
    """The head side is exactly the masked (resp. full) softmax's, the hidden side the other's."""
    hidden, weight, b, labels = case(seed=4)
    loss = get_loss(name)(hidden, weight, labels, bias=b)
    _, dh, dw, db = grads_of(loss, hidden, weight, b)
    selfish = grads_of(selfish_cross_entropy(F.linear(hidden, weight, b), labels, 2.0), hidden, weight, b)
    ce_loss = F.cross_entropy(F.linear(hidden, weight, b), labels, ignore_index=IGNORE)
    ce = grads_of(ce_loss, hidden, weight, b)
    head_from, hidden_from = (selfish, ce) if name == "selfish_head" else (ce, selfish)
    torch.testing.assert_close(dw, head_from[2], **TIGHT)
    torch.testing.assert_close(db, head_from[3], **TIGHT)
    torch.testing.assert_close(dh, hidden_from[1], **TIGHT)
    torch.testing.assert_close(loss.detach(), ce[0], **TIGHT)  # the logged value is plain CE


def test_selfish_rare_frequent_mass_zero_is_selfish_and_one_is_ce(every_chunk_split):
    hidden, weight, b, labels = case(seed=5)
    references = {
        0.0: lambda: selfish_cross_entropy(F.linear(hidden, weight, b), labels, 2.0),
        1.0: lambda: F.cross_entropy(F.linear(hidden, weight, b), labels),
    }
    for mass, reference in references.items():
        want = grads_of(reference(), hidden, weight, b)
        got = grads_of(unfused("selfish_rare", hidden, weight, b, labels, frequent_mass=mass), hidden, weight, b)
        assert_all_close(got, want, f"unfused, frequent_mass={mass}")
        for sparse in (False, True):
            loss = fused("selfish_rare", hidden, weight, b, labels, sparse, params={"frequent_mass": mass})
            assert_all_close(grads_of(loss, hidden, weight, b), want, f"fused sparse={sparse}, frequent_mass={mass}")
    assert abs(references[0.0]().item() - references[1.0]().item()) > 1e-3  # the two ends differ: it can fail


def test_split_variants_with_margin_none_are_plain_ce(every_chunk_split):
    hidden, weight, b, labels = case(seed=6)
    want = grads_of(F.cross_entropy(F.linear(hidden, weight, b), labels), hidden, weight, b)
    for name in SPLIT:
        assert_all_close(grads_of(unfused(name, hidden, weight, b, labels, margin=None), hidden, weight, b), want, name)
        for sparse in (False, True):
            loss = fused(name, hidden, weight, b, labels, sparse, params={"margin": math.inf})
            assert_all_close(grads_of(loss, hidden, weight, b), want, f"fused {name}")


def test_fused_masked_fraction_counts_only_really_masked_entries():
    hidden, weight, b, labels = case(seed=7)
    logits = F.linear(hidden, weight, b).detach()
    valid = labels != IGNORE
    z, t = logits[valid], labels[valid]
    below = z < z.gather(1, t.unsqueeze(1)) - 2.0  # [n, V]
    frequent = frequent_tokens(COUNTS, V, 0.9)
    for name, masked in (("selfish_head", below), ("selfish_rare", below & ~frequent)):
        _, fraction = fused(name, hidden, weight, b, labels, True, return_masked_fraction=True)
        assert fraction.item() == pytest.approx(masked.sum().item() / masked.numel(), rel=1e-6)  # a float32 share
    assert (below & frequent).any()  # frequent ids below the threshold exist: the count can tell


# --- ignore_index, half precision, bad input ---------------------------------------------------------


@pytest.mark.parametrize("name", ["selfish_head", "selfish_hidden", "selfish_rare"])
def test_an_ignored_batch_is_zero_with_zero_gradients(name):
    hidden, weight, b, _ = case()
    labels = torch.full((N,), IGNORE)
    for loss in (
        unfused(name, hidden, weight, b, labels),
        unfused(name, hidden, weight, b, labels, num_items_in_batch=torch.tensor(0)),
        fused(name, hidden, weight, b, labels, True),
    ):
        result = grads_of(loss, hidden, weight, b)
        assert result[0].item() == 0.0
        assert all(torch.equal(g, torch.zeros_like(g)) for g in result[1:])


@pytest.mark.parametrize("name", ["selfish_head", "selfish_hidden", "selfish_rare"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(name, dtype):
    hidden, weight, b, labels = case(dtype=dtype, seed=8)
    as32 = [x.detach().float().requires_grad_(True) for x in (hidden, weight, b)]
    want = grads_of(unfused(name, *as32, labels), *as32)
    for got in (
        grads_of(unfused(name, hidden, weight, b, labels), hidden, weight, b),
        grads_of(fused(name, hidden, weight, b, labels, True), hidden, weight, b),
    ):
        assert got[0].dtype == torch.float32 and all(g.dtype == dtype for g in got[1:])
        assert all(torch.isfinite(g).all() for g in got)
        for g, w in zip(got, want):  # the logits are rounded to half precision: loose
            torch.testing.assert_close(g.float(), w, rtol=5e-2, atol=5e-2 * float(w.abs().max()))


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("selfish_head", {"margin": -1.0}, "selfish margin must be a non-negative number or None, got -1.0"),
        ("selfish_hidden", {"margin": "wide"}, "got 'wide'"),
        ("selfish_rare", {"frequent_mass": 1.5}, r"selfish_rare: frequent_mass must be a number in \[0, 1\], got 1.5"),
        ("selfish_rare", {"frequent_mass": "most"}, "frequent_mass must be a number"),
        ("selfish_rare", {"margin": float("nan")}, "selfish margin must be"),
    ],
)
def test_bad_parameters_are_one_value_error(name, params, match):
    hidden, weight, b, labels = case()
    with pytest.raises(ValueError, match=match):
        unfused(name, hidden, weight, b, labels, **params)
    with pytest.raises(ValueError, match=match):  # the same check before training (loss_kwargs)
        check_loss_params(name, params)
    with pytest.raises(ValueError, match=match):  # and before a fused run
        fused_variant(name, params, COUNTS, V)


def test_bad_fused_variant_arguments_are_named():
    hidden, weight, b, labels = case()
    with pytest.raises(ValueError, match="split must be None, 'head' or 'hidden', got 'both'"):
        linear_selfish_cross_entropy(hidden, weight, labels, split="both")
    with pytest.raises(ValueError, match=r"always_kept must be a \[vocab\] = \(13,\) bool tensor"):
        linear_selfish_cross_entropy(hidden, weight, labels, always_kept=torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="selfish_rare needs token_counts"):
        get_loss("selfish_rare")(F.linear(hidden, weight), labels)
    with pytest.raises(ValueError, match="selfish_head needs hidden"):
        get_loss("selfish_head")(hidden, weight, labels[:-1])


def test_frequent_tokens_is_the_shortest_prefix_reaching_the_mass():
    ids = lambda mask: sorted(mask.nonzero().squeeze(1).tolist())  # noqa: E731
    assert ids(frequent_tokens(COUNTS, V, 0.0)) == []
    assert ids(frequent_tokens(COUNTS, V, 0.5)) == [12]
    assert ids(frequent_tokens(COUNTS, V, 9000 / 12306)) == [12]  # exactly reached: the prefix stops there
    assert ids(frequent_tokens(COUNTS, V, 0.9)) == [8, 9, 12]
    assert ids(frequent_tokens(COUNTS, V, 12305 / 12306)) == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12]  # not id 1
    assert ids(frequent_tokens(COUNTS, V, 1.0)) == list(range(V))  # ids never seen too: plain CE
    assert ids(frequent_tokens(COUNTS[:10], V, 0.9)) == [7, 8, 9]  # padded with zeros: 2800 < 0.9 * 3301 <= 3100


@pytest.mark.parametrize("split", ["head", "hidden"])
def test_fused_split_applies_the_logit_transform_on_both_sides(every_chunk_split, split):
    """Scaled and soft-capped logits (Cohere, Gemma): each side's chain rule runs through the transform."""
    hidden, weight, b, labels = case(seed=9)
    scale, cap = 0.7, 3.0

    def transformed(h, w, bias):
        return cap * torch.tanh(scale * F.linear(h, w, bias) / cap)

    def reference():
        head_side = transformed(hidden.detach(), weight, b)  # gradient to weight and bias only
        hidden_side = transformed(hidden, weight.detach(), b.detach())  # gradient to hidden only
        masked_side, full_side = (head_side, hidden_side) if split == "head" else (hidden_side, head_side)
        masked = selfish_cross_entropy(masked_side, labels, 1.0)
        return F.cross_entropy(full_side, labels) + masked - masked.detach()

    want = grads_of(reference(), hidden, weight, b)
    for sparse in (False, True):
        loss = linear_selfish_cross_entropy(
            hidden, weight, labels, 1.0, bias=b, chunk_size=4, sparse_backward=sparse, split=split,
            logit_scale=scale, softcap=cap,
        )  # fmt: skip
        assert_all_close(grads_of(loss, hidden, weight, b), want, f"split={split}, sparse={sparse}")
