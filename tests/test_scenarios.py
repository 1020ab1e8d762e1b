"""Gradient scenarios: the three vectors against autograd's embedding gradients, on tiny random models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_selfish.ops.loss import selfish_cross_entropy
from hf_selfish.scenario_recorder import GradientScenarioRecorder
from hf_selfish.scenarios import (
    ScenarioNorms,
    compute_scenario_norms,
    compute_scenario_vectors,
    load_scenario_norms,
    non_target_share,
    output_embedding_gradients,
    save_scenario_norms,
    scenario_vectors,
    targets_from_grad_logits,
)

from .tolerances import assert_close_scaled, assert_exact, close_scaled

VOCAB = 50


def reference_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    """The selfish causal-LM loss written out: shift, mask logits below target - margin, F.cross_entropy."""
    logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # [N, V]
    labels = labels[:, 1:].reshape(-1)  # [N]
    if margin is not None:
        target_logit = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1))  # [N, 1]
        logits = logits.masked_fill(logits < target_logit - margin, float("-inf"))
    return F.cross_entropy(logits, labels, ignore_index=-100)


def loss_grad(logits: torch.Tensor, targets: torch.Tensor, margin: float | None) -> torch.Tensor:
    """G = dLoss/dlogits of the package's selfish loss on aligned `logits [N, V]`, by autograd."""
    leaf = logits.detach().clone().requires_grad_(True)
    selfish_cross_entropy(leaf, targets, margin).backward()
    return leaf.grad


def masked_fraction(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    labels = labels[:, 1:].reshape(-1)
    rows = labels != -100
    target_logit = logits[rows].gather(-1, labels[rows].unsqueeze(-1))
    return float((logits[rows] < target_logit - margin).float().mean())


def tiny_llama(pad_token_id: int | None = 0) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=pad_token_id,
        initializer_range=0.5,  # spread logits so that margin 2 masks a real share of them
    )
    return LlamaForCausalLM(config).double().eval()  # float64: the split vectors equal autograd's tightly


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        initializer_range=0.5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).double().eval()


def batch(seed: int = 1, shape: tuple[int, int] = (3, 12)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, shape, generator=generator)
    input_ids[0, :3] = 0  # the pad id of tiny_llama: nn.Embedding(padding_idx=0) gives that row no gradient
    labels = input_ids.clone()
    labels[1, 5:8] = -100
    attention_mask = torch.ones_like(input_ids)
    return input_ids, labels, attention_mask


def autograd_grads(model, input_ids, labels, attention_mask, margin) -> None:
    model.zero_grad()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    reference_loss(logits, labels, margin).backward()
    return logits.detach()


# --------------------------------------------------------------------------------------------------------
# The target read off G
# --------------------------------------------------------------------------------------------------------


def test_targets_from_grad_logits_recovers_labels_and_refuses_label_smoothing():
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20, 6, generator=generator)
    targets = torch.randint(0, 6, (20,), generator=generator)
    targets[[3, 7]] = -100
    grad = loss_grad(logits, targets, 2.0)
    alone = targets.ne(-100) & (grad == 0).all(dim=-1)  # margin masked every other logit: q[y] == 1, G row 0
    assert alone.any()
    assert torch.equal(targets_from_grad_logits(grad), targets.masked_fill(alone, -100))
    assert torch.equal(targets_from_grad_logits(loss_grad(logits, targets, None)), targets)

    smoothed = logits.clone().requires_grad_(True)
    F.cross_entropy(smoothed, targets, ignore_index=-100, label_smoothing=0.1).backward()
    with pytest.raises(ValueError, match="label smoothing"):
        targets_from_grad_logits(smoothed.grad)


# --------------------------------------------------------------------------------------------------------
# Exactness on real models
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [None, 2.0])
def test_untied_llama_vectors_equal_autograd_grads(margin):
    model = tiny_llama()
    input_ids, labels, attention_mask = batch()
    logits = autograd_grads(model, input_ids, labels, attention_mask, margin)
    if margin is not None:
        assert masked_fraction(logits, labels, margin) > 0.05  # the margin really changes the loss here

    vectors = compute_scenario_vectors(model, input_ids, labels, attention_mask, margin)

    head_grad = model.lm_head.weight.grad
    embed_grad = model.model.embed_tokens.weight.grad
    assert_exact(vectors.target + vectors.non_target, head_grad)
    assert_exact(vectors.input, embed_grad)
    assert torch.all(vectors.input[0] == 0)  # padding_idx row
    assert vectors.target.abs().sum() > 0 and vectors.non_target.abs().sum() > 0
    # .grad is left as autograd made it: compute_scenario_vectors does not accumulate into it
    assert torch.equal(model.lm_head.weight.grad, head_grad)


@pytest.mark.parametrize("margin", [-1.0, float("nan"), "two"])
def test_bad_margin_raises(margin):
    input_ids, labels, attention_mask = batch()
    with pytest.raises(ValueError, match="margin"):
        compute_scenario_vectors(tiny_llama(), input_ids, labels, attention_mask, margin)


def test_num_items_in_batch_scales_the_vectors():
    model = tiny_llama()
    input_ids, labels, attention_mask = batch()
    mean = compute_scenario_norms(model, input_ids, labels, attention_mask, 2.0)
    items = int(labels[:, 1:].ne(-100).sum())
    over_double = compute_scenario_norms(model, input_ids, labels, attention_mask, 2.0, num_items_in_batch=2 * items)
    assert_exact(over_double.stacked() * 2, mean.stacked())


def test_untied_llama_ce_and_selfish_give_different_non_target_vectors():
    model = tiny_llama()
    input_ids, labels, attention_mask = batch()
    ce = compute_scenario_norms(model, input_ids, labels, attention_mask, None)
    selfish = compute_scenario_norms(model, input_ids, labels, attention_mask, 2.0)
    assert not torch.allclose(ce.non_target, selfish.non_target)
    assert torch.isfinite(ce.stacked()).all() and torch.isfinite(selfish.stacked()).all()


@pytest.mark.parametrize("margin", [None, 2.0])
def test_tied_gpt2_three_vectors_sum_to_shared_weight_grad(margin):
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    input_ids, labels, attention_mask = batch(seed=2)
    autograd_grads(model, input_ids, labels, attention_mask, margin)

    vectors = compute_scenario_vectors(model, input_ids, labels, attention_mask, margin)

    total = vectors.input + vectors.target + vectors.non_target
    assert_exact(total, model.transformer.wte.weight.grad)
    # each part alone is not the shared grad: the split is informative
    assert not torch.allclose(vectors.input, model.transformer.wte.weight.grad, atol=1e-3)


# --------------------------------------------------------------------------------------------------------
# Masked entries and the per-group summary, by hand
# --------------------------------------------------------------------------------------------------------


def test_masked_token_gets_no_non_target_gradient_under_margin_but_does_under_ce():
    hidden = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-2.0, 1.0]])  # [N=3, d=2]
    logits = torch.tensor(
        [
            [2.0, 1.5, 0.0, -9.0],  # target 0: token 3 is 11 below it
            [1.0, 3.0, 2.5, -8.0],  # target 1
            [0.0, 0.5, 1.0, -7.0],  # target 2
        ]
    )  # [N, V=4]
    targets = torch.tensor([0, 1, 2])

    _, non_target_selfish = output_embedding_gradients(hidden, loss_grad(logits, targets, 2.0), targets)
    _, non_target_ce = output_embedding_gradients(hidden, loss_grad(logits, targets, None), targets)

    assert torch.equal(non_target_selfish[3], torch.zeros(2))  # masked at every position: exactly nothing
    assert non_target_ce[3].abs().sum() > 0
    # row 0 at position 2: logit 0.0 < 1.0 - 2 is false, so token 0 stays kept there and is pushed down
    assert non_target_selfish[0].abs().sum() > 0
    # by hand for token 0 under margin 2: only position 1 (logit 1.0 >= 3.0-2) and 2 contribute
    q1 = torch.softmax(torch.tensor([1.0, 3.0, 2.5]), 0)[0]  # token 3 masked at position 1
    q2 = torch.softmax(torch.tensor([0.0, 0.5, 1.0]), 0)[0]
    expected = (q1 * hidden[1] + q2 * hidden[2]) / 3
    assert close_scaled(non_target_selfish[0], expected)


def test_target_vector_by_hand():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    grad = torch.tensor([[-0.5, 0.2, 0.3], [0.1, -0.4, 0.3], [-0.2, 0.1, 0.1]])
    targets = torch.tensor([0, 1, -100])
    target, non_target = output_embedding_gradients(hidden, grad, targets)
    assert torch.allclose(target, torch.tensor([[-0.5, 0.0], [0.0, -0.8], [0.0, 0.0]]))
    assert torch.allclose(target + non_target, grad.t() @ hidden)


def test_non_target_share_by_hand():
    norms = ScenarioNorms(
        input=torch.tensor([1.0, 0.0, 2.0, 0.0]),
        target=torch.tensor([1.0, 0.0, 0.0, 0.0]),
        non_target=torch.tensor([2.0, 5.0, 2.0, 0.0]),
    )
    shares = non_target_share(norms, {"a": [0, 1], "b": [2], "empty": [], "silent": [3]})
    assert shares == pytest.approx({"a": 7 / 9, "b": 0.5})
    assert list(shares) == ["a", "b"]  # groups without gradient are absent, never NaN


def test_non_target_share_rejects_ids_outside_vocabulary():
    norms = ScenarioNorms(torch.ones(3), torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="group 'bad'"):
        non_target_share(norms, {"bad": [1, 3]})


def test_scenario_vectors_rejects_out_of_range_input_ids():
    with pytest.raises(ValueError, match="input_ids"):
        scenario_vectors(
            torch.ones(2, 2), torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor([0, 3]), torch.ones(2, 2)
        )


def test_model_without_lm_head_is_refused():
    with pytest.raises(ValueError, match="LM head"):
        GradientScenarioRecorder(torch.nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------------------
# The recorder: hooks on the training backward
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [None, 2.0])
def test_recorder_sums_two_micro_batches_to_the_tied_grad(margin):
    model = tiny_gpt2()
    batches = [batch(seed=3), batch(seed=4)]
    recorder = GradientScenarioRecorder(model)
    model.zero_grad()
    with recorder:
        for input_ids, labels, attention_mask in batches:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            (reference_loss(logits, labels, margin) / 2).backward()
        with torch.no_grad():  # evaluation-style forwards are not recorded
            model(input_ids=batches[0][0])
    vectors = recorder.pop_vectors()

    total = vectors.input + vectors.target + vectors.non_target
    assert_exact(total, model.transformer.wte.weight.grad)
    # same split as the label-based standalone computation (which uses labels, not the sign of G)
    parts = [compute_scenario_vectors(model, *b, margin=margin) for b in batches]
    for name in ("input", "target", "non_target"):
        expected = (getattr(parts[0], name) + getattr(parts[1], name)) / 2
        assert_exact(getattr(vectors, name), expected)
    assert recorder.pop_vectors() is None  # popped


def test_detached_recorder_records_nothing():
    model = tiny_llama()
    recorder = GradientScenarioRecorder(model)
    with recorder:
        pass
    input_ids, labels, attention_mask = batch()
    model(input_ids=input_ids, labels=labels).loss.backward()
    assert recorder.pop_vectors() is None
    assert not recorder.attached


def test_recorder_on_model_loss_matches_standalone_ce():
    """The model's own loss (transformers' ForCausalLMLoss) gives the same split as the labels do."""
    model = tiny_llama()
    input_ids, labels, attention_mask = batch(seed=5)
    with GradientScenarioRecorder(model) as recorder:
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    recorded = recorder.pop_vectors().norms()
    expected = compute_scenario_norms(model, input_ids, labels, attention_mask, None)
    # transformers' ForCausalLMLoss upcasts the logits to float32 even in a float64 model
    assert_close_scaled(recorded.stacked(), expected.stacked())


def test_save_and_load_round_trip(tmp_path):
    norms = ScenarioNorms(torch.rand(5, dtype=torch.float64), torch.rand(5), torch.rand(5))
    save_scenario_norms(norms, tmp_path / "scenarios.safetensors", {"recorded_steps": "3"})
    loaded, metadata = load_scenario_norms(tmp_path / "scenarios.safetensors")
    assert torch.equal(loaded.input, norms.input)
    assert torch.equal(loaded.target, norms.target.double())
    assert metadata == {"recorded_steps": "3"}
