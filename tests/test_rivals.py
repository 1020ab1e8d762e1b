"""The rival rare-token losses against independent per-row references (python loops over positions)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from hf_selfish.ops.registry import LOSSES, check_loss_params, get_loss, loss_params, needs_hidden, needs_token_counts
from hf_selfish.ops.rivals import log_prior, tlat_weights

from .test_loss import masked_reference
from .tolerances import assert_exact

VOCAB = 13
COUNTS = [0, 1, 3, 7, 20, 50, 120, 300, 800, 2000, 0, 5, 9000]  # train-split counts, two ids never seen
LOGIT_LOSSES = [name for name in LOSSES if not needs_hidden(name)]


# --- the references: one position at a time, float64, from each paper's formula ------------------------


def _tlat_weight_table(form="exponential", T=1.0, A=None):
    """TLAT weights from the formula, in plain python: counts / median of the seen counts."""
    median = statistics.median_low([c for c in COUNTS if c > 0])
    c = [n / median for n in COUNTS]
    f = [math.exp(-T * x) * (x * x if form == "chi_square" else 1.0) for x in c]
    amplitude = (math.e - 1) / max(f) if A is None else A
    return [amplitude * v + 1 for v in f]


def _row_terms(name, params, x, t, previous):
    """Loss of one position: logits ``x`` [V] float64, target ``t``, earlier valid targets of its row."""
    logp = x - torch.logsumexp(x, 0)
    nll = -logp[t]
    if name == "ce":
        return nll
    if name == "label_smoothing":
        eps = params.get("eps", 0.1)
        return (1 - eps) * nll + eps * (-logp).mean()
    if name == "z_loss":
        return nll + params.get("lam", 1e-4) * torch.logsumexp(x, 0) ** 2
    if name == "focal":
        return (1 - logp[t].exp()) ** params.get("gamma", 2.0) * nll
    if name == "anti_focal":
        return (1 + logp[t].exp().detach()) ** params.get("gamma", 1.0) * nll
    if name == "tlat":
        return _tlat_weight_table(**params)[t] * nll
    if name == "logit_adjustment":
        prior = torch.tensor([(n + 1) / (sum(COUNTS) + VOCAB) for n in COUNTS], dtype=torch.float64)
        adjusted = x + params.get("tau", 1.0) * prior.log()
        return -(adjusted - torch.logsumexp(adjusted, 0))[t]
    if name == "selfish_rare":  # the frequent ids by mass of COUNTS (total 12306): 12, 9, 8 at 0.9; 12 at 0.5
        frequent = {0.9: {8, 9, 12}, 0.5: {12}}[params.get("frequent_mass", 0.9)]
        margin = params.get("margin", 2.0)
        kept = torch.tensor([v == t or x[v] >= x[t] - margin or v in frequent for v in range(VOCAB)])
        masked = torch.where(kept, x, float("-inf"))
        return -(masked - torch.logsumexp(masked, 0))[t]
    if name == "unlikelihood":
        penalty = sum(-torch.log(torch.clamp(1 - logp[c].exp(), min=1e-5)) for c in set(previous) - {t})
        return nll + params.get("alpha", 1.0) * penalty
    raise AssertionError(name)


def reference(name, logits, labels, params=None, ignore_index=-100, num_items_in_batch=None):
    params = params or {}
    if name == "selfish":
        margin = params.get("margin", 2.0)
        if num_items_in_batch is None:
            return masked_reference(logits, labels, margin)
        return masked_reference(logits, labels, margin, num_items_in_batch=num_items_in_batch)
    x = logits.double()
    total, count = x.sum() * 0, 0
    for b in range(labels.shape[0]):
        previous = []
        for t in range(labels.shape[1]):
            target = int(labels[b, t])
            if target == ignore_index:
                continue
            total = total + _row_terms(name, params, x[b, t], target, previous)
            previous.append(target)
            count += 1
    return total / (num_items_in_batch if num_items_in_batch is not None else max(count, 1))


def case(dtype=torch.float32, seed=0, shape=(3, 9), scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, VOCAB, generator=gen) * scale).to(dtype).requires_grad_(True)
    labels = torch.randint(0, VOCAB, shape, generator=gen)
    labels[0, 3] = labels[0, 1]  # a repeated target: unlikelihood counts each candidate once
    labels[1, ::4] = -100
    labels[2, 0] = -100
    return logits, labels


def run(name, logits, labels, **kwargs):
    return get_loss(name)(logits, labels, token_counts=COUNTS, **kwargs)


# --- value and gradient --------------------------------------------------------------------------------

NON_DEFAULT = {
    "ce": {},
    "selfish": {"margin": 1.0},
    "label_smoothing": {"eps": 0.3},
    "z_loss": {"lam": 0.05},
    "focal": {"gamma": 0.5},
    "anti_focal": {"gamma": 2.0},
    "tlat": {"form": "chi_square", "T": 0.5},
    "logit_adjustment": {"tau": 0.5},
    "unlikelihood": {"alpha": 0.5},
    "selfish_rare": {"margin": 1.0, "frequent_mass": 0.5},
}


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@pytest.mark.parametrize("params", ["default", "other"])
@pytest.mark.parametrize("num_items_in_batch", [None, 40])
def test_value_and_gradient_match_the_reference(name, params, num_items_in_batch):
    params = {} if params == "default" else NON_DEFAULT[name]
    logits, labels = case(dtype=torch.float64, seed=len(name))  # float64 in, float64 computed: exact
    loss = run(name, logits, labels, num_items_in_batch=num_items_in_batch, **params)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = reference(name, logits, labels, params, num_items_in_batch=num_items_in_batch)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    assert_exact(loss, expected)
    assert_exact(grad, expected_grad)
    assert grad[1, ::4].abs().sum() == 0  # ignored positions get no gradient


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_an_ignored_batch_is_zero_with_zero_gradient(name):
    logits, _ = case()
    labels = torch.full((3, 9), -100)
    loss = run(name, logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    loss = run(name, logits, labels, num_items_in_batch=torch.tensor(0))  # the Trainer's count of such a batch
    assert loss.item() == 0.0


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(name, dtype):
    logits, labels = case(dtype=dtype, scale=30.0)  # large logits: p_t of 0 and 1 both occur
    loss = run(name, logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    expected = reference(name, logits, labels)  # the same half-precision values, upcast
    torch.testing.assert_close(loss.double(), expected.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, neutral",
    [
        ("focal", {"gamma": 0.0}),
        ("label_smoothing", {"eps": 0.0}),
        ("logit_adjustment", {"tau": 0.0}),
        ("selfish", {"margin": None}),
        ("z_loss", {"lam": 0.0}),
        ("anti_focal", {"gamma": 0.0}),
        ("unlikelihood", {"alpha": 0.0}),
        ("selfish_rare", {"frequent_mass": 1.0}),
    ],
)
def test_neutral_parameter_is_plain_cross_entropy(name, neutral):
    logits, labels = case(dtype=torch.float64, seed=3)
    ce = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
    (ce_grad,) = torch.autograd.grad(ce, logits)
    loss = run(name, logits, labels, **neutral)
    (grad,) = torch.autograd.grad(loss, logits)
    assert_exact(loss, ce)
    assert_exact(grad, ce_grad)
    assert abs(run(name, logits, labels).item() - ce.item()) > 1e-5  # the default does change the loss


def test_focal_gradient_stays_finite_when_the_target_is_certain():
    logits = torch.tensor([[80.0, 0.0, -5.0], [0.0, 1.0, 2.0]], requires_grad=True)  # row 0: p_t == 1 in float32
    for gamma in (0.5, 2.0):
        loss = get_loss("focal")(logits, torch.tensor([0, 1]), gamma=gamma)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad[0].abs().max() < 1e-6


# --- the frequency-based weights ----------------------------------------------------------------------


@pytest.mark.parametrize("form", ["exponential", "chi_square"])
@pytest.mark.parametrize("A", [None, 3.0])
def test_tlat_weights_follow_the_formula(form, A):
    weights = tlat_weights(COUNTS, VOCAB, form=form, T=1.0, A=A)
    torch.testing.assert_close(weights, torch.tensor(_tlat_weight_table(form, 1.0, A), dtype=torch.float64))
    assert weights.min() >= 1.0
    if A is None:
        assert weights.max().item() == pytest.approx(math.e)
    if form == "exponential":  # never-seen ids weigh most, the most frequent one least
        assert weights[0] == weights.max() and weights[12] == weights.min()
    else:  # chi-square: never-seen ids weigh 1, tokens around the median count most
        assert weights[0] == 1.0 and weights.argmax() in (5, 6, 7)


def test_tlat_weight_drop_resets_weights_to_one():
    logits, labels = case()
    torch.manual_seed(0)
    dropped = run("tlat", logits, labels, weight_drop=0.999999)
    assert dropped.item() == pytest.approx(run("ce", logits, labels).item(), rel=1e-6)


def test_tlat_counts_shorter_than_the_vocabulary_are_padded_with_zeros():
    short = tlat_weights(COUNTS[:-1], VOCAB + 1)
    assert short.shape == (VOCAB + 1,) and short[-1] == short.max()  # the padded ids never occur


def test_log_prior_is_add_one_smoothed_and_finite():
    prior = log_prior(COUNTS, VOCAB)
    total = sum(COUNTS) + VOCAB
    assert torch.isfinite(prior).all()
    assert prior[0].item() == pytest.approx(math.log(1 / total)) and prior[12].item() == pytest.approx(
        math.log(9001 / total)
    )
    assert prior.exp().sum().item() == pytest.approx(1.0)


def test_unlikelihood_candidates_are_the_earlier_targets_of_the_same_row():
    logits = torch.randn(2, 6, VOCAB, requires_grad=True)
    labels = torch.tensor([[5, 3, 5, -100, 3, 7], [7, 7, 7, 7, 7, 7]])
    loss = get_loss("unlikelihood")(logits, labels, alpha=1.0, num_items_in_batch=1)
    logp = torch.log_softmax(logits.detach().double(), -1)
    ce = -sum(logp[b, t, labels[b, t]] for b in range(2) for t in range(6) if labels[b, t] >= 0)

    def ul(b, t, c):
        return -torch.log(1 - logp[b, t, c].exp())

    # row 0: t=1 {5}; t=2 {3} (5 is the target); t=4 {5} (3 is the target, -100 no candidate); t=5 {5, 3}
    # row 1: every candidate is the target itself
    expected = ce + ul(0, 1, 5) + ul(0, 2, 3) + ul(0, 4, 5) + ul(0, 5, 5) + ul(0, 5, 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("focal", {"gamma": -1.0}, "focal: gamma must be a finite number >= 0, got -1.0"),
        ("anti_focal", {"gamma": float("nan")}, "anti_focal: gamma must be"),
        ("label_smoothing", {"eps": 1.0}, r"label_smoothing: eps must be a number in \[0, 1\), got 1.0"),
        ("label_smoothing", {"eps": -0.1}, "eps must be a number in"),
        ("z_loss", {"lam": -1e-4}, "z_loss: lam must be a finite number >= 0"),
        ("logit_adjustment", {"tau": -1}, "logit_adjustment: tau must be"),
        ("unlikelihood", {"alpha": -0.5}, "unlikelihood: alpha must be"),
        ("tlat", {"form": "cubic"}, "tlat: form must be 'exponential' or 'chi_square', got 'cubic'"),
        ("tlat", {"T": -1.0}, "tlat: T must be"),
        ("tlat", {"weight_drop": 1.0}, "tlat: weight_drop must be a number in"),
        ("selfish", {"margin": -2.0}, "selfish margin must be a non-negative number or None, got -2.0"),
        ("focal", {"gamma": "two"}, "got 'two'"),
    ],
)
def test_bad_parameters_are_named(name, params, match):
    logits, labels = case()
    with pytest.raises(ValueError, match=match):
        run(name, logits, labels, **params)
    with pytest.raises(ValueError, match=match):  # the same check before training (loss_kwargs)
        check_loss_params(name, params)


@pytest.mark.parametrize("name", [n for n in LOGIT_LOSSES if needs_token_counts(n)])
def test_missing_token_counts_are_named(name):
    logits, labels = case()
    with pytest.raises(ValueError, match=f"{name} needs token_counts"):
        get_loss(name)(logits, labels)
    with pytest.raises(ValueError, match="token_counts has 14 entries but the logits have 13 ids"):
        get_loss(name)(logits, labels, token_counts=COUNTS + [1])


def test_registry_errors_list_what_to_do():
    with pytest.raises(ValueError, match="unknown loss 'focall'; choose one of ce, selfish, .*agg"):
        get_loss("focall")
    with pytest.raises(ValueError, match=r"loss 'focal' takes no parameter 'gama'; its parameters: gamma=2.0"):
        check_loss_params("focal", {"gama": 1})
    with pytest.raises(ValueError, match="unlikelihood needs logits \\[B, T, V\\]"):
        get_loss("unlikelihood")(torch.zeros(4, VOCAB), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="label id 13 is outside the vocabulary"):
        get_loss("focal")(torch.zeros(2, VOCAB), torch.tensor([1, 13]))


def test_the_defaults_are_the_papers():
    assert {name: loss_params(name) for name in LOSSES} == {
        "ce": {},
        "selfish": {"margin": 2.0},
        "label_smoothing": {"eps": 0.1},
        "z_loss": {"lam": 1e-4},
        "focal": {"gamma": 2.0},
        "anti_focal": {"gamma": 1.0},
        "tlat": {"form": "exponential", "T": 1.0, "A": None, "weight_drop": 0.0},
        "logit_adjustment": {"tau": 1.0},
        "unlikelihood": {"alpha": 1.0},
        "agg": {"alpha": 0.03, "steps": None},
        "selfish_head": {"margin": 2.0},
        "selfish_hidden": {"margin": 2.0},
        "selfish_rare": {"margin": 2.0, "frequent_mass": 0.9},
    }
    assert [n for n in LOSSES if needs_token_counts(n)] == ["tlat", "logit_adjustment", "agg", "selfish_rare"]
    assert [n for n in LOSSES if needs_hidden(n)] == ["agg", "selfish_head", "selfish_hidden"]


def test_unlikelihood_floor_stops_the_gradient_of_a_certain_candidate():
    logits = torch.zeros(1, 3, VOCAB, dtype=torch.float64)
    logits[0, 2, 4] = 40.0  # position 2 puts p = 1 on id 4, an earlier target: 1 - p(4) is floored at 1e-5
    logits.requires_grad_(True)
    labels = torch.tensor([[4, 7, 9]])
    loss = get_loss("unlikelihood")(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = reference("unlikelihood", logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert_exact(loss, expected)
    assert expected.item() > -math.log(1e-5) / 3  # the floor is in the loss
    assert_exact(grad, expected_grad)


def test_label_smoothing_equals_the_trainers_label_smoother():
    from transformers.trainer_pt_utils import LabelSmoother

    logits, labels = case(seed=5)
    for eps in (0.1, 0.35):
        expected = LabelSmoother(epsilon=eps)({"logits": logits}, labels)
        assert run("label_smoothing", logits, labels, eps=eps).item() == pytest.approx(expected.item(), rel=1e-6)
