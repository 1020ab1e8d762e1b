"""PEFT LoRA: the fused selfish loss inside the patched forward trains the adapters like the unfused loss.

The reference is independent of the patch: the same LoRA model, unpatched, its full logits and the unfused
`selfish_causal_lm_loss`, the same SGD step. LoRA on the head itself is refused with an error naming it.
"""

from __future__ import annotations

import pytest
import torch

from hf_selfish import apply_selfish_loss
from hf_selfish.ops.loss import selfish_causal_lm_loss

from .fused_steps_worker import INIT_STD, step_batch
from .tiny_models import tiny_model
from .tolerances import assert_close_scaled

peft = pytest.importorskip("peft")

VOCAB = 97
MARGIN = 1.0
LR = 0.5


def lora_model(target_modules=("q_proj", "v_proj", "down_proj")):
    """A tiny Llama with LoRA adapters; random A and B, so both move in one step (B = 0 would freeze A)."""
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(target_modules), init_lora_weights=False
    )
    base = tiny_model("llama", VOCAB, seed=0, num_hidden_layers=1, initializer_range=INIT_STD)
    torch.manual_seed(1)  # the adapters' initialisation
    return peft.get_peft_model(base, config)


def sgd_step(model, loss_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One SGD step on the trainable parameters; returns the loss and every parameter after it."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss = loss_of(model)
    loss.backward()
    torch.optim.SGD(trainable, lr=LR).step()
    return loss.detach(), {name: p.detach().clone() for name, p in model.named_parameters()}


def patched_loss(model):
    return model(**step_batch()).loss  # labels in the batch: the patched forward returns its loss


def unfused_loss(model):
    batch = step_batch()
    labels = batch.pop("labels")
    loss, masked_fraction = selfish_causal_lm_loss(model(**batch).logits, labels, MARGIN, return_masked_fraction=True)
    assert 0.1 < masked_fraction < 0.9  # the margin masks: the comparison tests the selfish loss, not CE
    return loss


def test_lora_fused_step_equals_unfused_step(one_thread):
    model = lora_model()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    apply_selfish_loss(model, MARGIN)
    loss, params = sgd_step(model, patched_loss)
    assert model(**step_batch()).logits is None  # the fused path ran: no logits were built

    ref_loss, ref_params = sgd_step(lora_model(), unfused_loss)
    assert_close_scaled(loss, ref_loss)
    adapters = [name for name in params if "lora_" in name]
    assert len(adapters) == 6  # A and B of three modules
    for name, expected in ref_params.items():
        assert_close_scaled(params[name], expected, msg=name)
        moved = not torch.equal(expected, initial[name])
        assert moved == (name in adapters), f"{name}: only the adapters train"


def test_lora_on_the_head_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"LM head .*PEFT adapter.* Remove 'lm_head' from the LoraConfig"):
        apply_selfish_loss(lora_model(("q_proj", "lm_head")), MARGIN)
    # unfused, the selfish loss reads the model's own logits, adapter included
    model = apply_selfish_loss(lora_model(("q_proj", "lm_head")), MARGIN, fused=False)
    loss, _ = sgd_step(model, patched_loss)
    ref_loss, _ = sgd_step(lora_model(("q_proj", "lm_head")), unfused_loss)
    assert_close_scaled(loss, ref_loss)
