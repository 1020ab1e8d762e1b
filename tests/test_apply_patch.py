"""`apply_selfish_loss`: the fused selfish loss inside the model's forward, on every supported architecture.

The reference is an unpatched copy of the same model trained with the unfused loss on its logits,
``selfish_causal_lm_loss(model(...).logits, labels, margin, num_items_in_batch=...)``: one SGD step over
two micro-batches (gradient accumulation, right padding with -100 labels) must give the same losses and
the same update of every parameter. Gemma 2/3 soft-cap their logits and Cohere scales them, so these
also test the transforms inside the fused chunks.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    CohereConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    Trainer,
    TrainingArguments,
)

from hf_selfish import (
    SelfishTrainer,
    SelfishTrainingArguments,
    apply_selfish_loss,
    remove_selfish_loss,
    selfish_causal_lm_loss,
    selfish_loss_func,
)
from hf_selfish.loss_patch import selfish_loss_settings

from .test_trainer import padded_dataset
from .tolerances import assert_close_scaled, assert_exact

VOCAB = 128
MARGIN = 2.0
IGNORE = -100
COMMON = dict(
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    hidden_size=16,
    intermediate_size=32,
    max_position_embeddings=64,
    vocab_size=VOCAB,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
CONFIGS = {
    "gpt2": lambda: GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=VOCAB, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
    ),
    "llama": lambda: LlamaConfig(**COMMON, tie_word_embeddings=False),
    "smollm2": lambda: LlamaConfig(**COMMON, tie_word_embeddings=True),  # SmolLM2 is a tied Llama
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=8),
    "mistral": lambda: MistralConfig(**COMMON),
    "gemma2": lambda: Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=3.0),
    "gemma3": lambda: Gemma3TextConfig(**COMMON, head_dim=8, final_logit_softcapping=3.0),
    "phi3": lambda: Phi3Config(**COMMON),
    "gpt_neox": lambda: GPTNeoXConfig(
        num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32, vocab_size=VOCAB
    ),
    "cohere": lambda: CohereConfig(**COMMON),  # logits * logit_scale (0.0625)
}


def tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A random 1-layer model whose logits spread enough for margin 2 to mask a good share of them.

    In float64 by default: the patched and the reference step are the same sums in another order, compared
    tightly (tests/tolerances.py)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[name]()).to(dtype)
    scale = getattr(model.config, "logit_scale", None) or 1.0
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, 1.0 / scale)  # logits ~ N(0, d) before any transform
    return model.train()


def micro_batches(seed: int = 0, batch: int = 2, length: int = 10):
    """Two micro-batches with right padding (attention 0, label -100), and their labelled-token count."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for pad in (3, 5):
        input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, -pad:] = 0
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    num_items = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)  # as the Trainer counts
    return batches, torch.tensor(num_items)


def unfused_loss(model, batch, num_items):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return selfish_causal_lm_loss(model(**inputs).logits, batch["labels"], MARGIN, num_items_in_batch=num_items)


def patched_loss(model, batch, num_items):
    return model(**batch, num_items_in_batch=num_items).loss


def sgd_step(model, batches, num_items, loss_of):
    """Accumulate the micro-batches' gradients, take one SGD step (lr 1): ``(losses, parameter updates)``."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = []
    for batch in batches:
        loss = loss_of(model, batch, num_items)
        loss.backward()
        losses.append(loss.detach())
    optimizer.step()
    return torch.stack(losses), {name: p.detach() - before[name] for name, p in model.named_parameters()}


def assert_same_step(reference, patched) -> dict:
    """One SGD step of ``reference`` with the unfused selfish loss and of ``patched`` through its own
    forward: equal losses and parameter updates (float64, tight); returns the reference's updates."""
    batches, num_items = micro_batches()
    want_losses, want_updates = sgd_step(reference, batches, num_items, unfused_loss)
    got_losses, got_updates = sgd_step(patched, batches, num_items, patched_loss)
    assert_exact(got_losses, want_losses)
    assert got_updates.keys() == want_updates.keys()
    for param, update in got_updates.items():
        assert_exact(update, want_updates[param], msg=lambda m, p=param: f"{p}: {m}")
    return want_updates


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_patched_training_step_equals_unfused_selfish_loss(name):
    reference = tiny(name)
    patched = apply_selfish_loss(copy.deepcopy(reference), MARGIN, chunk_size=7)
    batches, num_items = micro_batches()
    with torch.no_grad():
        inputs = {k: v for k, v in batches[0].items() if k != "labels"}
        _, fraction = selfish_causal_lm_loss(
            reference(**inputs).logits, batches[0]["labels"], MARGIN, return_masked_fraction=True
        )
    assert fraction > 0.15, f"margin {MARGIN} masks only {fraction:.2f}: the test would not see the mask"

    want_updates = assert_same_step(reference, patched)
    head = [n for n, p in patched.named_parameters() if p is patched.get_output_embeddings().weight]
    assert want_updates[head[0]].abs().max() > 1e-3  # the step moves the head: the comparison can fail


def test_the_softcap_and_the_scale_matter():
    """Without its transform the fused loss would differ far beyond the tolerance (Gemma 2 and Cohere)."""
    batches, num_items = micro_batches()
    for name, attribute, neutral in (("gemma2", "final_logit_softcapping", None), ("cohere", "logit_scale", 1.0)):
        model = apply_selfish_loss(tiny(name), MARGIN)
        with_transform = patched_loss(model, batches[0], num_items)
        setattr(model.config, attribute, neutral)
        model.forward.verified = True  # skip the check, which would now (rightly) refuse the model
        without = patched_loss(model, batches[0], num_items)
        assert (with_transform - without).abs() > 1e-2, name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eval_and_unlabelled_calls_are_the_original_forward_bitwise(name):
    reference = tiny(name)
    patched = apply_selfish_loss(copy.deepcopy(reference), MARGIN)
    batch = micro_batches()[0][0]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        train_logits = reference(**inputs).logits
        assert torch.equal(patched(**inputs).logits, train_logits)  # training, no labels
        reference.eval(), patched.eval()
        want = reference(**batch)
        got = patched(**batch)  # eval with labels: the model's own loss and logits
    assert torch.equal(got.logits, want.logits) and torch.equal(got.loss, want.loss)


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_generate_is_unchanged(name):
    reference = tiny(name).eval()
    patched = apply_selfish_loss(copy.deepcopy(reference), MARGIN)
    prompt = torch.tensor([[5, 6, 7]])
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(patched.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


def test_remove_restores_the_original_forward_exactly():
    model = tiny("llama")
    original = type(model).forward
    apply_selfish_loss(model, MARGIN)
    assert selfish_loss_settings(model) is not None and "forward" in vars(model)  # the instance's, not the class's
    assert type(model).forward is original
    remove_selfish_loss(model)
    assert "forward" not in vars(model) and model.forward.__func__ is original
    batch = micro_batches()[0][0]
    assert model(**batch).logits is not None  # the model's own cross-entropy again
    with pytest.raises(ValueError, match="LlamaForCausalLM has no selfish loss patch"):
        remove_selfish_loss(model)


def test_patching_twice_does_not_stack():
    model = tiny("llama")
    apply_selfish_loss(model, MARGIN)
    apply_selfish_loss(model, 0.5, chunk_size=3)
    assert vars(model)["forward"].previous is None  # not a patch of the patch
    assert selfish_loss_settings(model).margin == 0.5 and selfish_loss_settings(model).chunk_size == 3
    batches, num_items = micro_batches()
    want = selfish_causal_lm_loss(
        model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"]).logits,
        batches[0]["labels"],
        0.5,
    )
    assert_exact(model(**batches[0]).loss, want)
    remove_selfish_loss(model)
    assert "forward" not in vars(model)


def test_a_deep_copy_patches_the_copy():
    model = apply_selfish_loss(tiny("llama"), MARGIN)
    clone = copy.deepcopy(model)
    assert vars(clone)["forward"].model is clone
    assert "input_ids" in inspect.signature(clone.forward).parameters  # the Trainer reads it


def test_shift_labels_and_logits_to_keep():
    model = apply_selfish_loss(tiny("qwen2"), MARGIN, chunk_size=5)
    batch = micro_batches()[0][0]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits  # [B, T, V]
    shift_labels = torch.nn.functional.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:]
    want = selfish_causal_lm_loss(logits, batch["labels"], MARGIN)
    assert_exact(model(**inputs, shift_labels=shift_labels).loss, want)
    keep = 4  # the head sees the last 4 positions; labels align with them, as in ForCausalLMLoss
    want = selfish_causal_lm_loss(logits[:, -keep:], batch["labels"][:, -keep:], MARGIN)
    got = model(**inputs, labels=batch["labels"][:, -keep:], logits_to_keep=keep).loss
    assert_exact(got, want)


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_unfused_patch_equals_the_selfish_loss_of_the_logits(name):
    reference = tiny(name)
    patched = apply_selfish_loss(copy.deepcopy(reference), MARGIN, fused=False)
    assert_same_step(reference, patched)


def test_masked_fraction_and_no_logits():
    model = apply_selfish_loss(tiny("llama"), MARGIN)
    batch = micro_batches()[0][0]
    out = model(**batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    _, want = selfish_causal_lm_loss(model(**inputs).logits, batch["labels"], MARGIN, return_masked_fraction=True)
    assert out.logits is None
    torch.testing.assert_close(out.masked_fraction, want, rtol=0, atol=0)  # the same count of the same mask


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_under_bf16_autocast(name):
    model = apply_selfish_loss(tiny(name, dtype=torch.float32), MARGIN)
    batch = micro_batches()[0][0]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(**batch).loss
        want = selfish_causal_lm_loss(model(**inputs).logits, batch["labels"], MARGIN)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)


# ---- refusals ----


@pytest.mark.parametrize("margin", [-1.0, float("nan"), "wide"])
def test_bad_margin_is_refused(margin):
    with pytest.raises(ValueError, match="margin"):
        apply_selfish_loss(tiny("llama"), margin)


def test_bad_chunk_size_is_refused():
    with pytest.raises(ValueError, match="chunk_size"):
        apply_selfish_loss(tiny("llama"), MARGIN, chunk_size=0)


class HeadlessLM(torch.nn.Module):
    """A model with no output embeddings."""

    def get_output_embeddings(self):
        return None


def test_model_without_output_embeddings_is_refused():
    with pytest.raises(ValueError, match="HeadlessLM.get_output_embeddings"):
        apply_selfish_loss(HeadlessLM(), MARGIN)


class WholeLM(torch.nn.Module):
    """A model whose decoder is itself: the patch cannot run it without the head."""

    def __init__(self):
        super().__init__()
        self.lm_head = torch.nn.Linear(4, 8)
        self.base_model = self

    def get_output_embeddings(self):
        return self.lm_head


def test_model_without_a_separate_decoder_is_refused():
    with pytest.raises(ValueError, match="WholeLM exposes no decoder"):
        apply_selfish_loss(WholeLM(), MARGIN)


def test_unsupported_logit_transform_is_refused():
    model = tiny("llama")
    model.config.lm_head_multiplier = 2.0  # Falcon-H1's: not reproduced by the fused loss
    with pytest.raises(ValueError, match=r"LlamaForCausalLM .*config\.lm_head_multiplier=2\.0"):
        apply_selfish_loss(model, MARGIN)
    apply_selfish_loss(model, MARGIN, fused=False)  # the unfused loss works from the logits


def test_a_head_the_config_does_not_announce_is_caught_on_the_first_step():
    """A hook scaling the head's output: the model's logits differ from what the fused loss computes."""
    model = apply_selfish_loss(tiny("llama"), MARGIN)
    model.get_output_embeddings().register_forward_hook(lambda module, args, output: output * 2.0)
    with pytest.raises(ValueError, match="LlamaForCausalLM's logits differ"):
        model(**micro_batches()[0][0])


# ---- with the Trainer ----


def train_args(tmp_path, cls=TrainingArguments, **overrides):
    """One SGD step (lr 1) over two accumulated micro-batches of 2 rows."""
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    base.update(overrides)
    return cls(**base)


def parameters(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_stock_trainer_trains_a_patched_model_with_the_selfish_loss(tmp_path, name):
    """No compute_loss_func: the patched forward's loss; the reference is selfish_loss_func on the logits."""
    data = padded_dataset(4, seed=3)
    reference = tiny(name)
    patched = apply_selfish_loss(copy.deepcopy(reference), MARGIN, chunk_size=5)
    Trainer(
        model=reference,
        args=train_args(tmp_path / "ref"),
        train_dataset=data,
        compute_loss_func=selfish_loss_func(MARGIN),
    ).train()
    trainer = Trainer(model=patched, args=train_args(tmp_path / "patched"), train_dataset=data)
    trainer.train()
    want, got = parameters(reference), parameters(patched)
    for param, value in got.items():
        assert_exact(value, want[param], msg=lambda m, p=param: f"{p}: {m}")
    assert vars(patched)["forward"].verified  # the fused path ran


@pytest.mark.parametrize("name", ["gemma2", "cohere"])
def test_selfish_trainer_fused_equals_unfused_on_transformed_logits(tmp_path, name):
    """SelfishTrainer's fused path is the patch: same update, loss and masked fraction as the unfused path."""
    data = padded_dataset(4, seed=5)
    results = {}
    for fused in (True, False):
        model = tiny(name)
        args = train_args(
            tmp_path / str(fused),
            cls=SelfishTrainingArguments,
            selfish_margin=MARGIN,
            selfish_fused=fused,
            selfish_fused_chunk_size=3,
        )
        trainer = SelfishTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
        trainer.train()
        assert ("forward" in vars(model)) == fused  # only the fused path patches the model
        results[fused] = parameters(model), trainer.state.log_history[0], trainer.evaluate()["eval_loss"]
    (fused_params, fused_log, fused_eval), (plain_params, plain_log, plain_eval) = results[True], results[False]
    for param, value in fused_params.items():
        assert_exact(value, plain_params[param], msg=param)
    assert fused_log["loss"] == pytest.approx(plain_log["loss"], rel=1e-10)
    assert fused_log["selfish_masked_fraction"] == pytest.approx(plain_log["selfish_masked_fraction"], rel=1e-12)
    assert fused_log["selfish_masked_fraction"] > 0.1
    assert fused_eval == pytest.approx(plain_eval, rel=1e-10)  # evaluation: the original forward, plain CE


def test_moe_router_loss_refused_fused_and_kept_unfused():
    from transformers import MixtralConfig

    config = MixtralConfig(**COMMON, num_local_experts=2, num_experts_per_tok=1, output_router_logits=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()  # float32: the experts' grouped matmul has no float64
    with pytest.raises(ValueError, match="MixtralForCausalLM adds a router load-balancing loss"):
        apply_selfish_loss(model, MARGIN)
    batch = micro_batches()[0][0]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    own = model(**inputs)  # logits and the router loss, without the model's cross-entropy
    want = selfish_causal_lm_loss(own.logits, batch["labels"], MARGIN) + model.router_aux_loss_coef * own.aux_loss
    apply_selfish_loss(model, MARGIN, fused=False)
    assert_close_scaled(model(**batch).loss, want)


def test_gradient_checkpointing():
    reference = tiny("llama")
    patched = apply_selfish_loss(copy.deepcopy(reference), MARGIN)
    patched.activation_checkpointing_enable()
    assert_same_step(reference, patched)


def test_a_micro_batch_without_labelled_tokens_gives_zero_loss_and_gradients():
    model = apply_selfish_loss(tiny("llama"), MARGIN)
    batch = dict(micro_batches()[0][0])
    batch["labels"] = torch.full_like(batch["labels"], IGNORE)
    loss = model(**batch, num_items_in_batch=torch.tensor(0)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
