"""Margin settings: the auto rule, schedules, and the masked fraction the trainer logs."""

import math

import pytest
import torch

from hf_selfish import SelfishTrainer, selfish_cross_entropy
from hf_selfish.ops.margin import MarginSchedule, auto_margin, parse_margin

from .test_trainer import make_args, padded_dataset
from .tiny_models import tiny_model


def test_auto_margin_is_the_formula():
    assert auto_margin(200_000, 0.99) == pytest.approx(math.log(200_000) - math.log(0.01))
    assert auto_margin(200_000, 0.99) == pytest.approx(16.81, abs=0.01)
    assert auto_margin(65, 0.99) == pytest.approx(8.779, abs=1e-3)


def test_auto_margin_masks_less_than_the_nucleus_tail():
    """Everything the auto margin masks holds < (1 - top_p) of the probability mass."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=gen) * 6
    labels = torch.randint(0, 1000, (64,), generator=gen)
    margin = auto_margin(1000, 0.9)
    probs = logits.softmax(-1)
    threshold = logits.gather(1, labels[:, None]) - margin
    masked_mass = (probs * (logits < threshold)).sum(-1)
    assert (masked_mass < 0.1).all()


@pytest.mark.parametrize("text,expected", [("2", 2.0), ("null", None), ("None", None), ("auto", "auto"), (0, 0.0)])
def test_parse_margin(text, expected):
    assert parse_margin(text) == expected


@pytest.mark.parametrize("bad", ["-2", "wide", float("nan")])
def test_parse_margin_refuses(bad):
    with pytest.raises(ValueError, match="selfish margin"):
        parse_margin(bad)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedules_hit_their_end_points(kind):
    schedule = MarginSchedule(start=8.0, end=1.0, kind=kind)
    assert schedule.at(0, 100) == 8.0
    assert schedule.at(100, 100) == pytest.approx(1.0)
    assert schedule.at(150, 100) == pytest.approx(1.0)
    middle = schedule.at(50, 100)
    assert middle == pytest.approx(4.5)  # linear and cosine both pass the midpoint halfway
    quarter = schedule.at(25, 100)
    assert quarter == pytest.approx(8 - 7 * (0.25 if kind == "linear" else 0.5 * (1 - math.cos(math.pi / 4))))


def test_schedule_without_end_is_refused(tmp_path):
    with pytest.raises(ValueError, match="selfish_margin_end"):
        make_args(tmp_path, margin=2.0, selfish_margin_schedule="linear")
    with pytest.raises(ValueError, match="'exponential'"):
        make_args(tmp_path, margin=2.0, selfish_margin_schedule="exponential")


def test_trainer_resolves_auto_against_the_model_vocabulary(tmp_path):
    model = tiny_model("gpt2", 67)
    trainer = SelfishTrainer(
        model=model, args=make_args(tmp_path, margin="auto", selfish_top_p=0.9), train_dataset=padded_dataset(4)
    )
    assert trainer.training_margin() == pytest.approx(math.log(67) - math.log(0.1))


def test_trainer_logs_margin_and_masked_fraction(tmp_path):
    """One step, one batch: the logged masked fraction equals a count from the same logits."""
    model = tiny_model("llama", 67)
    data = padded_dataset(4)
    batch = {k: torch.tensor(data[k]) for k in data.column_names}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = batch["labels"][:, 1:]
    threshold = logits[:, :-1].gather(-1, shifted.clamp(min=0)[..., None]) - 0.05
    valid = shifted != -100
    by_hand = ((logits[:, :-1] < threshold) & valid[..., None]).sum().item() / (valid.sum().item() * 67)
    assert by_hand > 0
    _, from_loss = selfish_cross_entropy(logits[:, :-1], shifted, 0.05, return_masked_fraction=True)
    assert from_loss.item() == pytest.approx(by_hand)
    trainer = SelfishTrainer(model=model, args=make_args(tmp_path, margin=0.05), train_dataset=data)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["selfish_margin"] == 0.05
    assert logged["selfish_masked_fraction"] == pytest.approx(by_hand, abs=1e-6)


def test_trainer_logs_schedule_margin(tmp_path):
    model = tiny_model("gpt2", 67)
    args = make_args(tmp_path, margin=4.0, selfish_margin_end=1.0, selfish_margin_schedule="linear", max_steps=4)
    trainer = SelfishTrainer(model=model, args=args, train_dataset=padded_dataset(16))
    trainer.train()
    margins = [e["selfish_margin"] for e in trainer.state.log_history if "selfish_margin" in e]
    assert margins == pytest.approx([4.0 - 3.0 * s / 4 for s in range(4)])  # logged after step s+1 ran with s


def test_baseline_logs_no_margin(tmp_path):
    trainer = SelfishTrainer(
        model=tiny_model("gpt2", 67), args=make_args(tmp_path, margin=None), train_dataset=padded_dataset(4)
    )
    trainer.train()
    assert "selfish_margin" not in trainer.state.log_history[0]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_can_anneal_to_no_masking(tmp_path, kind):
    """End margin inf: exp(-margin) goes from exp(-start) to 0 along the schedule; plain CE from the end on."""
    schedule = MarginSchedule(start=2.0, end=math.inf, kind=kind)
    assert schedule.at(0, 100) == 2.0
    for step in (10, 25, 50, 99):
        progress = step / 100 if kind == "linear" else 0.5 * (1 - math.cos(math.pi * step / 100))
        assert math.exp(-schedule.at(step, 100)) == pytest.approx(math.exp(-2.0) * (1 - progress), rel=1e-12)
    assert schedule.at(50, 100) == pytest.approx(2.0 + math.log(2.0))  # half the ratio: ln 2 more margin
    assert schedule.at(100, 100) is None and schedule.at(150, 100) is None
    for written in ("inf", ".inf", float("inf")):
        args = make_args(tmp_path, margin=2.0, selfish_margin_end=written, selfish_margin_schedule=kind)
        assert args.selfish_margin_end == math.inf
    with pytest.raises(ValueError, match="selfish_margin_end"):  # unset is still refused, not read as inf
        make_args(tmp_path, margin=2.0, selfish_margin_end=None, selfish_margin_schedule=kind)


def test_trainer_anneals_to_plain_ce(tmp_path):
    model = tiny_model("gpt2", 67)
    args = make_args(tmp_path, margin=2.0, selfish_margin_end="inf", selfish_margin_schedule="linear", max_steps=4)
    trainer = SelfishTrainer(model=model, args=args, train_dataset=padded_dataset(16))
    trainer.train()
    margins = [e["selfish_margin"] for e in trainer.state.log_history if "selfish_margin" in e]
    assert margins == pytest.approx([round(2.0 - math.log1p(-s / 4), 6) for s in range(4)])
    assert trainer.training_margin() is None  # at the end: no masking
