"""`SelfishSFTTrainer`: TRL's SFTTrainer training with the selfish loss in one forward per step.

The reference is written out here by hand: the model's full logits, every logit below
``logit[target] - margin`` set to -inf, cross-entropy summed over the labelled positions and divided by
their count, the same SGD steps. The trainer (fused loss inside the patched forward) must match it in
loss and parameters, run its model once per step, and log `SelfishTrainer`'s metrics.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_selfish.loss_patch import selfish_loss_settings

from .fused_steps_worker import INIT_STD
from .tiny_models import tiny_model
from .tolerances import assert_close_scaled

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from hf_selfish.integrations.trl import SelfishSFTConfig, SelfishSFTTrainer  # noqa: E402

MARGIN = 1.0
LR = 0.5
STEPS = 3
TEXTS = ["the cat sat on the mat.", "a dog ran, fast.", "birds fly high over the hills.", "hi."]


# the TrainingArguments every test here shares: CPU, fp32, no checkpoints, no reporting, no bars
OFFLINE_CPU = dict(
    gradient_checkpointing=False, bf16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True
)


def char_tokenizer():
    """A 31-token character tokenizer with <eos> and <pad> (SFTTrainer appends eos and pads batches)."""
    from hf_selfish.lab.data.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer("abcdefghijklmnopqrstuvwxyz .,")
    tokenizer.add_special_tokens({"eos_token": "<eos>", "pad_token": "<pad>"})
    return tokenizer


def sft_model(tokenizer):
    return tiny_model("llama", len(tokenizer), seed=0, num_hidden_layers=1, initializer_range=INIT_STD)


def hand_selfish_loss(logits, labels, margin):
    """Masked cross-entropy written out: shift, mask below logit[target] - margin, sum / labelled count."""
    logits, targets = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()  # [N, V], [N]
    valid = targets != -100
    logits, targets = logits[valid], targets[valid]
    threshold = logits.gather(1, targets[:, None]) - margin  # [n, 1]
    masked = logits < threshold
    nll = -torch.log_softmax(logits.masked_fill(masked, float("-inf")), dim=-1).gather(1, targets[:, None])
    return nll.sum() / valid.sum(), masked.float().mean()


class ForwardCounter:
    """Counts calls of the model (Trainer's view: one per step) and of its decoder inside each call."""

    def __init__(self, model):
        self.decoder_calls = 0
        self.calls: list[dict] = []  # per model call: its batch, its loss, decoder calls inside it
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after, with_kwargs=True)
        model.model.register_forward_pre_hook(self._decoder)

    def _decoder(self, module, args):
        self.decoder_calls += 1

    def _before(self, module, args, kwargs):
        self._start = self.decoder_calls
        batch = {k: kwargs[k].clone() for k in ("input_ids", "attention_mask", "labels") if k in kwargs}
        self.calls.append({"batch": batch, "training": module.training})

    def _after(self, module, args, kwargs, output):
        loss = None if output.loss is None else output.loss.detach().clone()
        self.calls[-1].update(loss=loss, decoder_calls=self.decoder_calls - self._start)


def sft_trainer(output_dir, batch_size: int = len(TEXTS), steps: int = STEPS, counter: list | None = None):
    """A SelfishSFTTrainer of the tiny Llama on the 4 texts: fused selfish loss, plain SGD, no clipping.

    ``counter`` (a list) receives the `ForwardCounter` of the model.
    """
    tokenizer = char_tokenizer()
    model = sft_model(tokenizer)
    if counter is not None:
        counter.append(ForwardCounter(model))
    args = SelfishSFTConfig(
        output_dir=str(output_dir),
        selfish_margin=MARGIN,
        selfish_fused=True,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=len(TEXTS),
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # no clipping: the reference takes plain SGD steps
        logging_steps=1,
        **OFFLINE_CPU,
        seed=0,
    )
    dataset = datasets.Dataset.from_dict({"text": TEXTS})
    return SelfishSFTTrainer(
        model,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        optimizers=(torch.optim.SGD(model.parameters(), lr=LR), None),
    )


@pytest.fixture
def trained(tmp_path, one_thread):
    """A SelfishSFTTrainer after STEPS SGD steps on the 4 texts (one batch of 4 per step)."""
    counters = []
    trainer = sft_trainer(tmp_path, counter=counters)
    trainer.train()
    return trainer, counters[0], trainer.processing_class


def test_selfish_sft_steps_equal_masked_cross_entropy_by_hand(trained):
    trainer, counter, tokenizer = trained
    steps = [call for call in counter.calls if call["training"]]
    assert len(steps) == STEPS  # one model forward per step: no second pass for metrics
    assert [call["decoder_calls"] for call in steps[1:]] == [1] * (STEPS - 1)
    assert steps[0]["decoder_calls"] <= 3  # the first call also checks the patch against the model's logits, once

    reference = sft_model(tokenizer)
    optimizer = torch.optim.SGD(reference.parameters(), lr=LR)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    for step, log in zip(steps, logs):
        batch = step["batch"]
        assert (batch["labels"] == -100).any()  # padded rows: the count must skip them
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, masked_fraction = hand_selfish_loss(logits, batch["labels"], MARGIN)
        assert_close_scaled(step["loss"], loss.detach())
        assert log["selfish_margin"] == MARGIN
        assert log["selfish_masked_fraction"] == pytest.approx(masked_fraction.item(), abs=1e-6)
        assert 0.1 < log["selfish_masked_fraction"] < 0.9  # the margin masks something, and not everything
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trained_params = dict(trainer.model.named_parameters())
    for name, expected in reference.named_parameters():
        assert_close_scaled(trained_params[name].detach(), expected.detach(), msg=name)
    tokens = int(steps[0]["batch"]["attention_mask"].sum())
    assert logs[-1]["num_tokens"] == STEPS * tokens  # TRL's count of input tokens, padding excluded


def test_trl_fused_head_is_not_installed_and_eval_is_plain_cross_entropy(trained):
    trainer, counter, _ = trained
    model = trainer.model
    patched = vars(model)["forward"]
    assert selfish_loss_settings(model) is patched.settings
    assert patched.previous is None  # our patch wraps the class's forward, not TRL's fused LM head
    model.eval()
    with torch.no_grad():  # TRL's fused head would answer this call with log-probabilities instead of logits
        output = model(input_ids=torch.tensor([[1, 2, 3]]), fused_lm_head=True)
    assert output.logits.shape == (1, 3, model.config.vocab_size) and not hasattr(output, "log_probs")

    before = len(counter.calls)
    metrics = trainer.evaluate()
    evals = counter.calls[before:]
    assert len(evals) == 1 and not evals[0]["training"]  # one forward for the one eval batch
    batch = next(iter(trainer.get_eval_dataloader()))  # the labels: SelfishTrainer keeps them out of eval forwards
    assert torch.equal(batch["input_ids"], evals[0]["batch"]["input_ids"]) and "labels" not in evals[0]["batch"]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce, _ = hand_selfish_loss(logits, batch["labels"], float("inf"))  # no margin: plain cross-entropy
    assert metrics["eval_loss"] == pytest.approx(ce.item(), rel=1e-5)


def test_the_config_refuses_what_would_bypass_the_selfish_loss(tmp_path):
    with pytest.raises(ValueError, match="loss_type='dft' would be ignored"):
        SelfishSFTConfig(output_dir=str(tmp_path), loss_type="dft", use_cpu=True)
    tokenizer = char_tokenizer()
    args = SelfishSFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    dataset = datasets.Dataset.from_dict({"text": TEXTS})
    with pytest.raises(ValueError, match="drop compute_loss_func"):
        SelfishSFTTrainer(sft_model(tokenizer), args=args, train_dataset=dataset, compute_loss_func=lambda *a: 0)
    with pytest.raises(ValueError, match="needs SelfishSFTConfig"):
        SelfishSFTTrainer(sft_model(tokenizer), args=trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True))


def test_selfish_sft_with_peft_config_trains_only_the_adapters(tmp_path, one_thread):
    peft = pytest.importorskip("peft")
    tokenizer = char_tokenizer()
    model = sft_model(tokenizer)
    counter = ForwardCounter(model)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = SelfishSFTConfig(
        output_dir=str(tmp_path),
        selfish_margin=MARGIN,
        selfish_fused=True,
        max_steps=1,
        per_device_train_batch_size=len(TEXTS),
        learning_rate=0.1,
        **OFFLINE_CPU,
    )
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])  # B = 0: the base model at first
    trainer = SelfishSFTTrainer(
        model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": TEXTS}),
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    (step,) = [call for call in counter.calls if call["training"]]  # one forward through PEFT's wrappers
    with torch.no_grad():
        batch = step["batch"]
        logits = sft_model(tokenizer)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, _ = hand_selfish_loss(logits, batch["labels"], MARGIN)
    assert_close_scaled(step["loss"], loss)
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(param, torch.zeros_like(param)), name
        elif "lora_" not in name:
            base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(param.detach(), initial[base_name]), name  # the base model is frozen


def test_rank_bucket_eval_through_selfish_sft(trained):
    from hf_selfish.callbacks import attach_rank_bucket_eval

    trainer, counter, tokenizer = trained
    groups = {"low_ids": list(range(15)), "high_ids": list(range(15, len(tokenizer)))}
    attach_rank_bucket_eval(trainer, groups, len(tokenizer))
    before = len(counter.calls)
    metrics = trainer.evaluate()
    assert len(counter.calls) - before == 1  # the bucket statistics come from the same one forward
    batch = next(iter(trainer.get_eval_dataloader()))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ce, _ = hand_selfish_loss(logits, batch["labels"], float("inf"))
    counted = int((batch["labels"][:, 1:] != -100).sum())
    tokens = {g: metrics[f"eval_{g}_tokens"] for g in groups}
    assert sum(tokens.values()) == counted
    nll_sum = sum(metrics[f"eval_{g}_nll_weighted"] * n for g, n in tokens.items() if n)
    assert nll_sum == pytest.approx(ce.item() * counted, rel=1e-5)


def test_a_checkpoint_before_any_evaluation_keeps_the_trainers_card(tmp_path, one_thread):
    """TRL writes the model card at every checkpoint: before an evaluation it must not stop training."""
    trainer = sft_trainer(tmp_path, steps=2)
    trainer.args.save_strategy = "steps"
    trainer.args.save_steps = 1
    trainer.train()  # two checkpoints, no evaluation
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    card = (tmp_path / "README.md").read_text()  # TRL writes it beside the checkpoints
    assert "trl" in card.lower() and "eval_loss" not in card  # TRL's own card, no table of no numbers
    trainer.evaluate()
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    eval_loss = trainer.state.log_history[-1]["eval_loss"]
    assert f"margin m = {MARGIN:g}" in card and f"Overall eval loss: {eval_loss:.4f}" in card  # hf_selfish's card


@pytest.mark.slow
def test_two_process_ddp_step_equals_one_process_step(tmp_path, one_thread):
    from .torchrun import run_two_processes

    run_two_processes(Path(__file__).with_name("sft_ddp_worker.py"), tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt")
    single = sft_trainer(tmp_path / "single", steps=1)
    initial = {name: p.detach().clone() for name, p in single.model.named_parameters()}
    single.train()
    (log,) = [entry for entry in single.state.log_history if "loss" in entry]
    assert ddp["logs"][0]["loss"] == pytest.approx(log["loss"], rel=1e-5)  # the mean over both processes
    for name, param in single.model.named_parameters():
        assert not torch.equal(param, initial[name]), name
        assert_close_scaled(ddp["params"][name], param.detach(), msg=name)
