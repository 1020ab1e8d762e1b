"""`linear_selfish_cross_entropy` against the unfused loss (the patched models: tests/test_apply_patch.py).

The reference materialises the logits, masks them explicitly with ``masked_fill`` and takes
``F.cross_entropy``; autograd gives its gradients. The fused loss must match value and gradients,
with the sparse backward (the default: gradient matmuls over the kept columns only) and the dense
one, and the two must match each other. On tiny GPT-2 (tied embeddings) and Llama (untied) models,
the reference is ``selfish_causal_lm_loss(model(**inputs).logits, ...)`` and every parameter's
gradient must match.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_selfish.ops import fused as fused_module
from hf_selfish.ops.fused import default_chunk_size, linear_selfish_cross_entropy
from hf_selfish.ops.sparse_backward import SparsePlan

from .tolerances import assert_exact

N, D, V = 37, 16, 50  # N prime: no chunk size above 1 divides it
IGNORE = -100


def split_plan(masked_logits, n_masked):
    """Every chunk split: even rows over the columns they keep, odd rows densely (both code paths, any shape)."""
    rows = torch.arange(masked_logits.shape[0])
    narrow, wide = rows[0::2], rows[1::2]
    columns = (masked_logits[narrow] != float("-inf")).any(dim=0).nonzero().squeeze(1)
    return SparsePlan(narrow, columns, wide)


@pytest.fixture(autouse=True)
def every_chunk_split(monkeypatch):
    """The sparse backward on every chunk, whatever it keeps, with narrow and wide rows.

    (The planner that picks the split, or dense, has its own tests in test_sparse_backward.py.)
    """
    monkeypatch.setattr(fused_module, "plan_sparse_backward", split_plan)


def reference_loss(hidden, weight, labels, margin, bias=None, num_items_in_batch=None):
    """linear -> explicit selfish mask -> F.cross_entropy (sum / num_items or mean over valid)."""
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32  # the ops' compute dtype
    logits = hidden.to(dtype) @ weight.to(dtype).T  # [N, V]
    if bias is not None:
        logits = logits + bias.to(dtype)
    if margin is not None:
        safe = torch.where(labels == IGNORE, 0, labels)  # never index with -100
        threshold = logits.gather(1, safe.unsqueeze(1)) - margin  # [N, 1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if num_items_in_batch is None:
        if (labels == IGNORE).all():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=IGNORE)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / num_items_in_batch


def make_inputs(n=N, d=D, v=V, seed=0, ignore_every=None, bias=False, dtype=torch.float64):
    """Random inputs, float64 by default: fused and unfused are the same sums in another order, compared tightly."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=generator, dtype=dtype, requires_grad=True)
    weight = (torch.randn(v, d, generator=generator, dtype=dtype) / 2).requires_grad_()  # logits ~ N(0, 4): many masked
    labels = torch.randint(0, v, (n,), generator=generator)
    if ignore_every:
        labels[::ignore_every] = IGNORE
    b = torch.randn(v, generator=generator, dtype=dtype, requires_grad=True) if bias else None
    return hidden, weight, labels, b


def loss_and_grads(loss_fn, hidden, weight, bias):
    params = [hidden, weight] + ([bias] if bias is not None else [])
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


def assert_close_with_grads(got, want, what):
    """``(loss, grads)`` pairs equal in float64 (reordered sums only), naming what differs."""
    assert_exact(got[0], want[0], msg=lambda m: f"{what}, loss: {m}")
    for name, g, w in zip(("hidden", "weight", "bias"), got[1], want[1]):
        assert_exact(g, w, msg=lambda m, name=name: f"{what}, grad {name}: {m}")


def assert_matches_reference(hidden, weight, labels, margin, bias=None, chunk_size=None, **kwargs):
    """Sparse fused, dense fused and the unfused reference agree in value and every gradient."""
    ref = loss_and_grads(
        lambda: reference_loss(hidden, weight, labels, margin, bias=bias, **kwargs), hidden, weight, bias
    )
    results = {}
    for sparse in (True, False):
        results[sparse] = loss_and_grads(
            lambda sparse=sparse: linear_selfish_cross_entropy(
                hidden, weight, labels, margin, bias=bias, chunk_size=chunk_size, sparse_backward=sparse, **kwargs
            ),
            hidden,
            weight,
            bias,
        )
        assert_close_with_grads(results[sparse], ref, f"sparse_backward={sparse} vs unfused")
    assert_close_with_grads(results[True], results[False], "sparse vs dense")
    return results[True][0]


@pytest.mark.parametrize("chunk_size", [1, 4, 10, 36, 37, 64, None])
@pytest.mark.parametrize("margin", [2.0, 0.5, None])
def test_matches_reference_for_chunk_sizes(chunk_size, margin):
    hidden, weight, labels, _ = make_inputs()
    assert_matches_reference(hidden, weight, labels, margin, chunk_size=chunk_size)


def test_margin_actually_masks():
    """The inputs make the margin matter, far beyond the 1e-5 tolerance of the comparisons."""
    hidden, weight, labels, _ = make_inputs()
    selfish, fraction = linear_selfish_cross_entropy(hidden, weight, labels, 2.0, return_masked_fraction=True)
    plain = linear_selfish_cross_entropy(hidden, weight, labels, None)
    assert plain - selfish > 1e-2  # masking removes probability mass from the softmax
    assert 0.2 < fraction < 1.0
    (selfish_grad,) = torch.autograd.grad(selfish, [weight])
    (plain_grad,) = torch.autograd.grad(plain, [weight])
    assert (selfish_grad - plain_grad).norm() > 1e-2 * plain_grad.norm()


@pytest.mark.parametrize("chunk_size", [3, 8, 100])
def test_bias(chunk_size):
    hidden, weight, labels, bias = make_inputs(bias=True, ignore_every=4)
    assert_matches_reference(hidden, weight, labels, 2.0, bias=bias, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [4, 5, 16])
def test_ignore_index_and_all_ignored_chunks(chunk_size):
    hidden, weight, labels, bias = make_inputs(ignore_every=3, bias=True)
    labels[8:24] = IGNORE  # whole chunks of rows without a label
    fused = assert_matches_reference(hidden, weight, labels, 2.0, bias=bias, chunk_size=chunk_size)
    assert torch.isfinite(fused)


def test_ignored_rows_get_zero_hidden_grad():
    hidden, weight, labels, _ = make_inputs(ignore_every=3)
    linear_selfish_cross_entropy(hidden, weight, labels, 2.0, chunk_size=5).backward()
    ignored = labels == IGNORE
    assert torch.equal(hidden.grad[ignored], torch.zeros_like(hidden.grad[ignored]))
    assert hidden.grad[~ignored].abs().sum(dim=1).min() > 0


@pytest.mark.parametrize("num_items_in_batch", [None, 100, torch.tensor(100)])
def test_all_ignored_batch_gives_zero_loss_and_zero_grads(num_items_in_batch):
    hidden, weight, labels, bias = make_inputs(bias=True)
    labels[:] = IGNORE
    loss, fraction = linear_selfish_cross_entropy(
        hidden, weight, labels, 2.0, bias=bias, num_items_in_batch=num_items_in_batch, return_masked_fraction=True
    )
    loss.backward()
    assert loss.item() == 0.0 and fraction.item() == 0.0
    for param in (hidden, weight, bias):
        assert param.grad is not None
        assert torch.equal(param.grad, torch.zeros_like(param))


def test_margin_none_equals_linear_cross_entropy():
    hidden, weight, labels, bias = make_inputs(ignore_every=5, bias=True)
    fused, fused_grads = loss_and_grads(
        lambda: linear_selfish_cross_entropy(hidden, weight, labels, None, bias=bias, chunk_size=7),
        hidden,
        weight,
        bias,
    )
    ref, ref_grads = loss_and_grads(
        lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels, ignore_index=IGNORE), hidden, weight, bias
    )
    assert_exact(fused, ref)
    for got, want in zip(fused_grads, ref_grads):
        assert_exact(got, want)


def test_infinite_margin_is_plain_cross_entropy():
    hidden, weight, labels, _ = make_inputs()
    infinite = linear_selfish_cross_entropy(hidden, weight, labels, math.inf)
    plain = F.cross_entropy(hidden @ weight.T, labels)
    assert_exact(infinite, plain)


@pytest.mark.parametrize("num_items_in_batch", [57, torch.tensor(57)])
def test_num_items_in_batch_divides_the_sum(num_items_in_batch):
    hidden, weight, labels, _ = make_inputs(ignore_every=4)
    fused = assert_matches_reference(hidden, weight, labels, 2.0, chunk_size=6, num_items_in_batch=num_items_in_batch)
    mean = linear_selfish_cross_entropy(hidden, weight, labels, 2.0)
    n_valid = int((labels != IGNORE).sum())
    assert_exact(fused, mean * n_valid / 57)


@pytest.mark.parametrize("sparse", [True, False])
def test_grad_output_scaling(sparse):
    """The loss multiplied after the fact (GA scaling, loss weights) scales every gradient."""
    hidden, weight, labels, bias = make_inputs(bias=True)
    loss = linear_selfish_cross_entropy(hidden, weight, labels, 2.0, bias=bias, chunk_size=8, sparse_backward=sparse)
    (loss * -2.5).backward()
    fused = [p.grad.clone() for p in (hidden, weight, bias)]
    for p in (hidden, weight, bias):
        p.grad = None
    (reference_loss(hidden, weight, labels, 2.0, bias=bias) * -2.5).backward()
    for got, param in zip(fused, (hidden, weight, bias)):
        assert_exact(got, param.grad)


def test_leading_dimensions_are_flattened():
    hidden, weight, labels, _ = make_inputs(n=36)
    flat = linear_selfish_cross_entropy(hidden, weight, labels, 2.0)
    batched = linear_selfish_cross_entropy(hidden.reshape(4, 9, D), weight, labels.reshape(4, 9), 2.0)
    assert_exact(batched, flat)


@pytest.mark.parametrize("sparse", [True, False])
def test_frozen_weight_and_no_grad(sparse):
    hidden, weight, labels, _ = make_inputs()
    weight = weight.detach()
    fused = linear_selfish_cross_entropy(hidden, weight, labels, 2.0, chunk_size=8, sparse_backward=sparse)
    (grad_hidden,) = torch.autograd.grad(fused, [hidden])
    ref = reference_loss(hidden, weight, labels, 2.0)
    (ref_grad,) = torch.autograd.grad(ref, [hidden])
    assert_exact(grad_hidden, ref_grad)
    with torch.no_grad():
        no_grad = linear_selfish_cross_entropy(hidden, weight, labels, 2.0)
    assert not no_grad.requires_grad
    assert_exact(no_grad, ref.detach())


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32(dtype, sparse):
    hidden, weight, labels, bias = make_inputs(ignore_every=6, bias=True)
    low = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    loss = linear_selfish_cross_entropy(low[0], low[1], labels, 2.0, bias=low[2], chunk_size=8, sparse_backward=sparse)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Reference on the same (rounded) inputs, in float32.
    ref_inputs = [t.detach().float().requires_grad_() for t in low]
    ref = reference_loss(ref_inputs[0], ref_inputs[1], labels, 2.0, bias=ref_inputs[2])
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=2e-2, atol=2e-2)
    for got, want in zip(low, ref_inputs):
        assert got.grad.dtype == dtype and torch.isfinite(got.grad).all()
        # Half-precision logits may flip a few borderline mask decisions: compare in norm.
        error = (got.grad.float() - want.grad).norm() / want.grad.norm()
        assert error < 0.1, f"relative gradient error {error:.3f}"


def test_masked_fraction_equals_hand_count():
    hidden, weight, labels, _ = make_inputs(ignore_every=4)
    _, fraction = linear_selfish_cross_entropy(hidden, weight, labels, 1.5, chunk_size=5, return_masked_fraction=True)
    logits = (hidden @ weight.T).detach()
    n_masked, n_valid = 0, 0
    for row, label in zip(logits.tolist(), labels.tolist()):
        if label == IGNORE:
            continue
        n_valid += 1
        n_masked += sum(value < row[label] - 1.5 for value in row)
    assert n_masked > 0
    assert fraction.item() == pytest.approx(n_masked / (n_valid * V), abs=1e-6)
    _, plain_fraction = linear_selfish_cross_entropy(hidden, weight, labels, None, return_masked_fraction=True)
    assert plain_fraction.item() == 0.0


def test_margin_zero_keeps_only_logits_at_least_the_target():
    """margin=0: the loss is the CE over logits >= the target's — closed form on one row."""
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])  # logits 3, 2, 1, 0
    loss = linear_selfish_cross_entropy(hidden, weight, torch.tensor([1]), 0.0)
    expected = math.log(math.exp(3) + math.exp(2)) - 2.0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("margin", [-1.0, float("nan"), -math.inf])
def test_bad_margin_raises_naming_value(margin):
    hidden, weight, labels, _ = make_inputs()
    with pytest.raises(ValueError, match=str(margin)):
        linear_selfish_cross_entropy(hidden, weight, labels, margin)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(labels=torch.full((N,), V)), f"label id {V}"),
        (dict(weight=torch.randn(V, D + 1)), "do not fit"),
        (dict(labels=torch.zeros(N + 1, dtype=torch.long)), "do not align"),
        (dict(weight=torch.randn(V, D, dtype=torch.float32)), "one floating dtype"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_inputs_raise(change, match):
    hidden, weight, labels, _ = make_inputs()
    kwargs = dict(hidden=hidden, weight=weight, labels=labels, margin=2.0) | change
    with pytest.raises(ValueError, match=match):
        linear_selfish_cross_entropy(**kwargs)


def test_second_backward_raises():
    hidden, weight, labels, _ = make_inputs()
    loss = linear_selfish_cross_entropy(hidden, weight, labels, 2.0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()


def test_default_chunk_size():
    assert default_chunk_size(128256, 8192) == 523  # 256 MiB of float32 logits
    assert default_chunk_size(32000, 8192) == 2097
    assert default_chunk_size(65, 100) == 100  # never more than N


# ---- logit scaling and soft-capping inside the chunks ----


def transformed_reference(hidden, weight, labels, margin, bias, scale, softcap):
    """linear -> * scale -> softcap * tanh(. / softcap) -> explicit selfish mask on that -> F.cross_entropy."""
    logits = hidden @ weight.T + bias  # [N, V]
    if scale is not None:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    if margin is not None:
        safe = torch.where(labels == IGNORE, 0, labels)
        threshold = logits.gather(1, safe.unsqueeze(1)) - margin  # the transformed target's logit
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("chunk_size", [4, None])
@pytest.mark.parametrize("margin", [2.0, None])
@pytest.mark.parametrize("scale, softcap", [(None, 3.0), (0.0625, None), (4.0, None), (0.5, 2.0)])
def test_logit_transform_matches_reference(scale, softcap, margin, chunk_size, sparse):
    hidden, weight, labels, bias = make_inputs(ignore_every=5, bias=True)
    with torch.no_grad():
        weight.mul_(4.0)  # logits ~ N(0, 64): the cap's tanh is far from linear
    params = (hidden, weight, bias)
    ref = loss_and_grads(lambda: transformed_reference(hidden, weight, labels, margin, bias, scale, softcap), *params)
    got = loss_and_grads(
        lambda: linear_selfish_cross_entropy(
            hidden,
            weight,
            labels,
            margin,
            bias=bias,
            chunk_size=chunk_size,
            sparse_backward=sparse,
            logit_scale=scale,
            softcap=softcap,
        ),
        *params,
    )
    assert_close_with_grads(got, ref, f"scale={scale}, softcap={softcap}")
    untransformed = transformed_reference(hidden, weight, labels, margin, bias, None, None)
    assert (got[0] - untransformed).abs() > 1e-2  # the transform changes the loss: the test can fail


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(softcap=0.0), "softcap"),
        (dict(softcap=-1.0), "softcap"),
        (dict(softcap=float("nan")), "softcap"),
        (dict(logit_scale=0.0), "logit_scale"),
        (dict(logit_scale=float("inf")), "logit_scale"),
    ],
)
def test_bad_logit_transform_is_refused(kwargs, name):
    hidden, weight, labels, _ = make_inputs()
    with pytest.raises(ValueError, match=name):
        linear_selfish_cross_entropy(hidden, weight, labels, 2.0, **kwargs)
