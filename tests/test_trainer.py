"""SelfishTrainer on tiny random models: loss values, gradient accumulation, evaluation."""

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from hf_selfish import SelfishTrainer, SelfishTrainingArguments, loss_patch, selfish_loss_func

from .test_loss import masked_reference
from .tiny_models import tiny_model
from .tolerances import assert_exact

VOCAB = 67


def padded_dataset(n_rows: int, length: int = 12, seed: int = 0) -> Dataset:
    """Rows of random ids with different true lengths, right-padded (labels -100, mask 0)."""
    gen = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n_rows):
        true_len = 4 + (i * 5) % (length - 3)
        ids = torch.randint(0, VOCAB, (length,), generator=gen)
        mask = (torch.arange(length) < true_len).long()
        ids = ids * mask
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append(mask.tolist())
        rows["labels"].append(torch.where(mask.bool(), ids, -100).tolist())
    return Dataset.from_dict(rows)


# One plain SGD step (lr 1, no clipping, constant schedule): the update is the gradient itself, so two losses'
# steps compare their gradients exactly. With `SGD_ACCUMULATED`, over two accumulated micro-batches of 2 rows.
SGD_STEP = dict(optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0)
SGD_ACCUMULATED = dict(SGD_STEP, gradient_accumulation_steps=2, per_device_train_batch_size=2)


def make_args(tmp_path, margin=2.0, **overrides) -> SelfishTrainingArguments:
    base = dict(
        output_dir=str(tmp_path),
        selfish_margin=margin,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=64,
        max_steps=1,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    base.update(overrides)
    return SelfishTrainingArguments(**base)


def batch_reference_loss(model, dataset, margin) -> torch.Tensor:
    """Selfish loss of the whole dataset as one batch, from the model's own logits."""
    batch = {k: torch.tensor(dataset[k]) for k in ("input_ids", "attention_mask", "labels")}
    model.eval()  # dropout is 0 in the tiny configs; eval mode only silences it for sure
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return masked_reference(logits[:, :-1], batch["labels"][:, 1:], margin)


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("margin", [0.05, None])
def test_one_training_step_logs_the_reference_loss(tmp_path, model_type, margin):
    # random tiny models have near-uniform logits: margin 0.05 really masks some of them
    model = tiny_model(model_type, VOCAB)
    data = padded_dataset(4)
    expected = batch_reference_loss(model, data, margin)
    if margin is not None:
        assert abs(expected - batch_reference_loss(model, data, None)) > 1e-3
    trainer = SelfishTrainer(model=model, args=make_args(tmp_path, margin), train_dataset=data)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    logged = trainer.state.log_history[0]["loss"]
    assert logged == pytest.approx(expected.item(), rel=1e-5)
    assert torch.isfinite(torch.tensor(logged))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_compute_loss_does_not_ask_the_model_for_its_loss(tmp_path):
    model = tiny_model("gpt2", VOCAB)
    data = padded_dataset(4)
    trainer = SelfishTrainer(model=model, args=make_args(tmp_path), train_dataset=data)
    seen = {}
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    batch = {k: torch.tensor(data[k]) for k in data.column_names}
    model.train()
    trainer.compute_loss(model, batch)
    hook.remove()
    assert "labels" not in seen and "input_ids" in seen


def _params_after_one_update(tmp_path, batch_size, accumulation, margin, loss_func=None):
    model = tiny_model("llama", VOCAB, seed=3, dtype=torch.float64)  # float64: the same sums in another order
    data = padded_dataset(16, seed=5)
    args = make_args(
        tmp_path, margin, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, **SGD_STEP
    )
    if loss_func is None:
        trainer = SelfishTrainer(model=model, args=args, train_dataset=data)
    else:
        trainer = Trainer(model=model, args=args, train_dataset=data, compute_loss_func=loss_func)
    trainer.train()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), trainer.state.log_history[0]["loss"]


@pytest.mark.parametrize("margin", [0.05, None])
def test_gradient_accumulation_matches_one_big_batch(tmp_path, margin):
    big, big_loss = _params_after_one_update(tmp_path / "a", 16, 1, margin)
    acc, acc_loss = _params_after_one_update(tmp_path / "b", 4, 4, margin)
    start = torch.cat(
        [p.detach().flatten() for p in tiny_model("llama", VOCAB, seed=3, dtype=torch.float64).parameters()]
    )
    assert not torch.allclose(big, start)  # the update really moved the weights
    assert_exact(acc, big)
    assert acc_loss == pytest.approx(big_loss, rel=1e-10)


def test_compute_loss_func_gradient_accumulation_matches(tmp_path):
    """`selfish_loss_func` plugged into the stock Trainer gives the same update as SelfishTrainer."""
    ours, _ = _params_after_one_update(tmp_path / "a", 16, 1, 0.05)
    func_acc, _ = _params_after_one_update(tmp_path / "b", 4, 4, 0.05, loss_func=selfish_loss_func(0.05))
    assert_exact(func_acc, ours)


def test_eval_loss_is_plain_cross_entropy(tmp_path):
    model = tiny_model("gpt2", VOCAB, seed=1, dtype=torch.float64)
    data = padded_dataset(8, seed=2)
    # a random tiny model has near-uniform logits: a small margin makes the masking bite
    selfish = SelfishTrainer(model=model, args=make_args(tmp_path / "s", margin=0.05), eval_dataset=data)
    eval_loss = selfish.evaluate()["eval_loss"]
    batch = {k: torch.tensor(data[k]) for k in data.column_names}
    with torch.no_grad():
        mean_ce = model(**batch).loss.item()  # the model's own mean CE over labelled tokens
    assert eval_loss == pytest.approx(mean_ce, rel=1e-6)
    masked = batch_reference_loss(model, data, 0.05).item()
    assert abs(masked - mean_ce) > 1e-3  # the margin would have changed it: the test can fail


def test_loss_func_eval_matches_stock_trainer(tmp_path):
    """With `compute_loss_func`, eval goes through the stock Trainer's token count, CE unchanged."""
    model = tiny_model("gpt2", VOCAB, seed=1)
    data = padded_dataset(8, seed=2)
    stock_args = TrainingArguments(
        output_dir=str(tmp_path / "p"), per_device_eval_batch_size=64, report_to="none", use_cpu=True
    )
    plain_loss = Trainer(model=model, args=stock_args, eval_dataset=data).evaluate()["eval_loss"]
    selfish = Trainer(
        model=model, args=make_args(tmp_path / "s"), eval_dataset=data, compute_loss_func=selfish_loss_func(2.0)
    )
    assert selfish.evaluate()["eval_loss"] == pytest.approx(plain_loss, rel=1e-6)


def test_missing_labels_are_named(tmp_path):
    model = tiny_model("gpt2", VOCAB)
    trainer = SelfishTrainer(model=model, args=make_args(tmp_path), train_dataset=padded_dataset(4))
    with pytest.raises(ValueError, match="needs `labels`"):
        trainer.compute_loss(model, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})


def test_bad_margin_in_arguments(tmp_path):
    with pytest.raises(ValueError, match="-1.0"):
        make_args(tmp_path, margin=-1.0)


def test_plain_training_arguments_refused(tmp_path):
    with pytest.raises(ValueError, match="SelfishTrainingArguments"):
        SelfishTrainer(
            model=tiny_model("gpt2", VOCAB),
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        )


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("model_type", ["gpt2", "llama"])  # tied and untied embeddings
def test_fused_training_step_equals_unfused(tmp_path, monkeypatch, model_type, sparse):
    sparse_flags = []
    op = loss_patch.linear_selfish_cross_entropy

    def spy(*args, **kwargs):
        sparse_flags.append(kwargs["sparse_backward"])
        return op(*args, **kwargs)

    monkeypatch.setattr(loss_patch, "linear_selfish_cross_entropy", spy)

    def update(fused):
        model = tiny_model(model_type, VOCAB, seed=4, dtype=torch.float64)  # fused vs unfused: exact in float64
        args = make_args(
            tmp_path / str(fused),
            0.05,
            selfish_fused=fused,
            selfish_fused_chunk_size=7,
            selfish_fused_sparse=sparse,
            **SGD_ACCUMULATED,
        )
        trainer = SelfishTrainer(model=model, args=args, train_dataset=padded_dataset(4, seed=9))
        trainer.train()
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        return params, trainer.state.log_history[0]

    fused, fused_log = update(True)
    assert sparse_flags and set(sparse_flags) == {sparse}  # selfish_fused_sparse reaches the op
    plain, plain_log = update(False)
    assert_exact(fused, plain)
    assert fused_log["loss"] == pytest.approx(plain_log["loss"], rel=1e-10)
    assert fused_log["selfish_masked_fraction"] == pytest.approx(plain_log["selfish_masked_fraction"], rel=1e-12)


def test_fused_refuses_a_softcap_the_model_does_not_apply(tmp_path):
    """GPT-2 ignores config.final_logit_softcapping: the first step's check sees its logits differ and refuses."""
    model = tiny_model("gpt2", VOCAB)
    model.config.final_logit_softcapping = 3.0
    trainer = SelfishTrainer(model=model, args=make_args(tmp_path, selfish_fused=True), train_dataset=padded_dataset(4))
    with pytest.raises(ValueError, match="GPT2LMHeadModel's logits differ"):
        trainer.train()
