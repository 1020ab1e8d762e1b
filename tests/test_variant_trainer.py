"""The selfish variants in a model: tied embeddings, SelfishTrainer (fused and unfused), gradient scenarios.

With tied embeddings (GPT-2) the shared matrix's gradient is its input role (what reaches the hidden
states, scenario 1) plus its output role (``G^T H``, scenarios 2.1 + 2.2). The split variants change
which softmax each role follows, and nothing else: the tests take each part from an independent run of
plain CE and of the selfish loss.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_selfish import SelfishTrainer
from hf_selfish.callbacks import GradientScenarioCallback
from hf_selfish.ops.registry import get_loss

from .test_trainer import SGD_ACCUMULATED, VOCAB, make_args, padded_dataset
from .test_variants import loop_reference
from .tiny_models import tiny_model

MARGIN = 0.2  # a tiny random GPT-2's logits span about 0.7 a row: this margin masks a good share
TIGHT = dict(rtol=1e-10, atol=1e-12)


def _float64_reference_loss(logits, labels, margin):
    """Plain CE (margin None) or the selfish loss, masked_fill + F.cross_entropy, in float64."""
    if margin is not None:
        target = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1))
        logits = logits.masked_fill(logits < target - margin, float("-inf"))
    return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)


def _gradients(model, input_ids, labels, loss_of):
    """Every parameter's gradient of ``loss_of(hidden [B, T-1, d], logits [B, T-1, V], labels)``."""
    model.zero_grad()
    outputs = model(input_ids=input_ids, output_hidden_states=True)
    hidden, logits = outputs.hidden_states[-1][:, :-1], outputs.logits[:, :-1]  # ln_f output: the head's input
    loss_of(hidden, logits, labels[:, 1:]).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, hidden.detach()


@pytest.mark.parametrize("name", ["selfish_head", "selfish_hidden"])
def test_tied_embedding_input_role_follows_the_hidden_side_output_role_the_head_side(name):
    model = tiny_model("gpt2", VOCAB, seed=3).double()
    gen = torch.Generator().manual_seed(3)
    input_ids = torch.randint(0, VOCAB, (2, 10), generator=gen)
    labels = input_ids.clone()
    labels[1, 6:] = -100
    head = model.lm_head
    ce, hidden = _gradients(model, input_ids, labels, lambda h, z, y: _float64_reference_loss(z, y, None))
    selfish, _ = _gradients(model, input_ids, labels, lambda h, z, y: _float64_reference_loss(z, y, MARGIN))
    variant, _ = _gradients(
        model, input_ids, labels, lambda h, z, y: get_loss(name)(h, head.weight, y, head=head, margin=MARGIN)
    )
    # the output role G^T H of each loss, position by position (the same hidden states: one set of weights)
    shifted = labels[:, 1:].reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    out_ce = loop_reference(flat, head.weight, None, shifted, "ce", None)[2]
    out_selfish = loop_reference(flat, head.weight, None, shifted, "selfish", MARGIN)[2]
    assert not torch.allclose(out_ce, out_selfish, rtol=1e-4, atol=1e-8)  # the margin masks: the test can fail
    hidden_side, head_out = (ce, out_selfish) if name == "selfish_head" else (selfish, out_ce)
    hidden_out = out_ce if name == "selfish_head" else out_selfish
    tied = "transformer.wte.weight"
    # input role (the hidden side's run minus its output role) plus the head side's output role
    torch.testing.assert_close(variant[tied], hidden_side[tied] - hidden_out + head_out, **TIGHT)
    for parameter, grad in variant.items():  # below the head, every parameter follows the hidden side exactly
        if parameter != tied:
            torch.testing.assert_close(grad, hidden_side[parameter], **TIGHT, msg=parameter)


def _one_step(tmp_path, loss_name, loss_kwargs=None, fused=False, callbacks=(), margin=MARGIN, seed=2):
    """Parameters after one SGD step (lr 1) of a tiny GPT-2 (tied), its first log, and the trainer."""
    model = tiny_model("gpt2", VOCAB, seed=seed)
    args = make_args(
        tmp_path / f"{loss_name}-{fused}",
        margin=margin,
        loss_name=loss_name,
        loss_kwargs=loss_kwargs,
        selfish_fused=fused,
        **SGD_ACCUMULATED,
    )
    counts = list(range(VOCAB))  # id v occurs v times: the frequent ids are the high ones
    trainer = SelfishTrainer(
        model=model, args=args, train_dataset=padded_dataset(4, seed=7), token_counts=counts, callbacks=list(callbacks)
    )
    trainer.train()
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return params, trainer.state.log_history[0], trainer


def _close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("selfish_head", {"margin": MARGIN}),
        ("selfish_hidden", {"margin": MARGIN}),
        ("selfish_rare", {"margin": MARGIN, "frequent_mass": 0.5}),
    ],
)
def test_fused_and_unfused_variants_take_the_same_step(tmp_path, name, kwargs):
    unfused_params, unfused_log, _ = _one_step(tmp_path, name, kwargs)
    fused_params, fused_log, trainer = _one_step(tmp_path, name, kwargs, fused=True)
    torch.testing.assert_close(fused_params, unfused_params, rtol=1e-5, atol=1e-5 * float(unfused_params.abs().max()))
    assert fused_log["loss"] == pytest.approx(unfused_log["loss"], rel=1e-5)
    assert fused_log["selfish_margin"] == MARGIN and 0 < fused_log["selfish_masked_fraction"] < 1
    ce_params, ce_log, _ = _one_step(tmp_path, "ce")
    selfish_params, selfish_log, _ = _one_step(tmp_path, "selfish")
    assert not _close(unfused_params, ce_params) and not _close(unfused_params, selfish_params)  # it can fail
    if name != "selfish_rare":  # the split variants log plain cross-entropy
        assert unfused_log["loss"] == pytest.approx(ce_log["loss"], rel=1e-5)
    assert trainer.evaluate(padded_dataset(4))["eval_loss"] > 0  # evaluation: the unpatched forward, plain CE


def _scenario_norms(tmp_path, loss_name, loss_kwargs=None):
    callback = GradientScenarioCallback(every_k_steps=1)
    _one_step(tmp_path, loss_name, loss_kwargs, callbacks=[callback])
    assert callback.recorded_steps == 1
    return callback.norms


def test_scenario_recorder_sees_each_variants_head_side(tmp_path):
    """selfish_head's 2.1/2.2 head updates are the selfish loss's, its scenario 1 is CE's; selfish_hidden the reverse."""
    ce = _scenario_norms(tmp_path, "ce")
    selfish = _scenario_norms(tmp_path, "selfish")
    head = _scenario_norms(tmp_path, "selfish_head", {"margin": MARGIN})
    hidden = _scenario_norms(tmp_path, "selfish_hidden", {"margin": MARGIN})
    rare_none_frequent = _scenario_norms(tmp_path, "selfish_rare", {"margin": MARGIN, "frequent_mass": 0.0})
    assert not _close(selfish.non_target, ce.non_target) and not _close(selfish.input, ce.input)  # it can fail
    for got, want in (
        (head.non_target, selfish.non_target),
        (head.target, selfish.target),
        (head.input, ce.input),
        (hidden.non_target, ce.non_target),
        (hidden.target, ce.target),
        (hidden.input, selfish.input),
        (rare_none_frequent.non_target, selfish.non_target),
        (rare_none_frequent.input, selfish.input),
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_split_variants_accept_scenarios_agg_does_not(tmp_path):
    assert make_args(tmp_path, loss_name="selfish_head", selfish_log_scenarios_every=1).loss_name == "selfish_head"
    with pytest.raises(ValueError, match="which agg"):
        make_args(tmp_path, loss_name="agg", selfish_log_scenarios_every=1)
    with pytest.raises(ValueError, match="needs the full logits' gradient"):
        make_args(tmp_path, loss_name="selfish_head", selfish_fused=True, selfish_log_scenarios_every=1)


def test_patching_again_is_the_selfish_loss_not_a_leftover_variant(tmp_path):
    from hf_selfish import apply_selfish_loss
    from hf_selfish.loss_patch import selfish_loss_settings

    model = tiny_model("gpt2", VOCAB)
    _, _, trainer = _one_step(tmp_path, "selfish_rare", {"margin": MARGIN}, fused=True)
    settings = selfish_loss_settings(trainer.model)
    assert settings.margin == MARGIN and settings.always_kept is not None and settings.split is None
    apply_selfish_loss(model, 1.0)
    selfish_loss_settings(model).split = "head"  # as SelfishTrainer sets it for selfish_head
    apply_selfish_loss(model, 2.0)  # a later patch (a new trainer of the selfish loss) starts afresh
    settings = selfish_loss_settings(model)
    assert (settings.margin, settings.split, settings.always_kept) == (2.0, None, None)
