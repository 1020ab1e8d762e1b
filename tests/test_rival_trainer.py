"""SelfishTrainer with a rival loss (loss_name / loss_kwargs): the logged loss, evaluation, AGG, errors."""

import pytest
import torch

from hf_selfish import SelfishTrainer

from .test_rivals import reference
from .test_trainer import SGD_ACCUMULATED, VOCAB, make_args, padded_dataset
from .tiny_models import tiny_model
from .tolerances import assert_exact


def model_logits(model, dataset):
    batch = {k: torch.tensor(dataset[k]) for k in ("input_ids", "attention_mask", "labels")}
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[:, :-1], batch["labels"][:, 1:]  # aligned like ForCausalLMLoss


def test_focal_step_logs_the_focal_loss_and_evaluates_plain_ce(tmp_path):
    model = tiny_model("gpt2", VOCAB)
    data = padded_dataset(4)
    logits, labels = model_logits(model, data)
    expected = reference("focal", logits, labels, {"gamma": 1.5}).item()
    ce = reference("ce", logits, labels).item()
    assert abs(expected - ce) > 1e-2  # focal really differs from CE here: the test can fail
    args = make_args(tmp_path, loss_name="focal", loss_kwargs='{"gamma": 1.5}', eval_on_start=True)
    trainer = SelfishTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    first_eval, train_log = trainer.state.log_history[0], trainer.state.log_history[1]
    assert first_eval["eval_loss"] == pytest.approx(ce, rel=1e-5)  # before the step: the same weights
    assert train_log["loss"] == pytest.approx(expected, rel=1e-5)
    assert "selfish_margin" not in train_log and "selfish_masked_fraction" not in train_log
    logits_after, labels_after = model_logits(model, data)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(
        reference("ce", logits_after, labels_after).item(), rel=1e-5
    )


def _params_after_one_update(tmp_path, loss_name, loss_kwargs=None, counts=None):
    model = tiny_model("gpt2", VOCAB, seed=2, dtype=torch.float64)  # float64: CE and AGG steps compared exactly
    args = make_args(tmp_path / loss_name, loss_name=loss_name, loss_kwargs=loss_kwargs, **SGD_ACCUMULATED)
    trainer = SelfishTrainer(model=model, args=args, train_dataset=padded_dataset(4, seed=7), token_counts=counts)
    trainer.train()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), model, trainer.state.log_history[0]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_agg_step_matches_ce_except_rare_rows_of_the_head(tmp_path, alpha):
    counts = [0] * 20 + [1000] * (VOCAB - 20)  # ids 0-19 never occur in "training": rare for any alpha > 0
    ce_params, ce_model, ce_log = _params_after_one_update(tmp_path / "ce", "ce")
    agg_params, agg_model, agg_log = _params_after_one_update(tmp_path / "agg", "agg", {"alpha": alpha}, counts)
    assert agg_log["loss"] == pytest.approx(ce_log["loss"], rel=1e-10)  # the value is plain CE
    if alpha == 0:  # nothing is rare: the same update as CE
        assert_exact(agg_params, ce_params)
        return
    # GPT-2 ties the head to the input embedding: only the rows of the rare ids 0-19 get another update
    # (their push as negatives is gated); the transformer blocks see the ungated gradient of the hidden
    # states and move exactly as under CE
    ce_wte, agg_wte = ce_model.transformer.wte.weight.detach(), agg_model.transformer.wte.weight.detach()
    assert not torch.allclose(agg_wte[:20], ce_wte[:20], rtol=1e-4, atol=1e-5)
    assert_exact(agg_wte[20:], ce_wte[20:])
    for (name, p_ce), p_agg in zip(ce_model.transformer.h.named_parameters(), agg_model.transformer.h.parameters()):
        assert_exact(p_agg, p_ce, msg=name)


def test_losses_needing_counts_refuse_to_start_without_them(tmp_path):
    with pytest.raises(ValueError, match="loss_name='tlat' needs token_counts"):
        SelfishTrainer(
            model=tiny_model("gpt2", VOCAB), args=make_args(tmp_path, loss_name="tlat"), train_dataset=padded_dataset(4)
        )


def test_agg_refuses_a_model_that_transforms_its_logits(tmp_path):
    model = tiny_model("gpt2", VOCAB)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="agg \\(adaptive gradient gating\\) computes hidden @ weight.T only"):
        SelfishTrainer(
            model=model,
            args=make_args(tmp_path, loss_name="agg"),
            train_dataset=padded_dataset(4),
            token_counts=[1] * VOCAB,
        )


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"loss_name": "focall"}, "loss_name must be one of ce, selfish, .*agg, selfish_head, .*got 'focall'"),
        ({"loss_name": "focal", "loss_kwargs": '{"gamma": -1}'}, "focal: gamma must be a finite number >= 0"),
        ({"loss_name": "focal", "loss_kwargs": "{gamma: 1}"}, "loss_kwargs must be a mapping"),
        ({"loss_name": "z_loss", "loss_kwargs": {"gamma": 1}}, "loss 'z_loss' takes no parameter 'gamma'"),
        ({"loss_kwargs": {"margin": 1.0}}, "takes its margin from selfish_margin"),
        ({"loss_name": "tlat", "selfish_fused": True}, "selfish_fused computes selfish, selfish_head, .* only"),
        ({"loss_name": "agg", "selfish_log_scenarios_every": 5}, "needs the gradient of the model's logits, which agg"),
    ],
)
def test_bad_loss_settings_are_named(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        make_args(tmp_path, **settings)


def test_loss_kwargs_from_the_command_line_and_defaults(tmp_path):
    assert make_args(tmp_path, loss_name="focal", loss_kwargs='{"gamma": 1}').loss_kwargs == {"gamma": 1}
    assert make_args(tmp_path, loss_name="focal", loss_kwargs="null").loss_kwargs == {}
    args = make_args(tmp_path)
    assert args.loss_name == "selfish" and args.loss_kwargs == {} and args.to_dict()["loss_kwargs"] == {}
