"""TEMPORARY stand-in for hf_selfish.patching.apply_selfish_loss until branch `patch` lands (deleted then)."""

import types

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from hf_selfish.distributed import whole_head_parameters
from hf_selfish.ops.fused import linear_selfish_cross_entropy


def apply_selfish_loss(model, margin=2.0, *, fused=True, chunk_size=None):
    original = model.forward

    def forward(self, *args, labels=None, num_items_in_batch=None, **kwargs):
        if not (self.training and labels is not None and torch.is_grad_enabled()):
            return original(*args, labels=labels, **kwargs)
        backbone = self.get_decoder() if hasattr(self, "get_decoder") else self.model
        hidden = backbone(*args, **kwargs).last_hidden_state
        weight, bias = whole_head_parameters(self.get_output_embeddings())
        shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
        loss = linear_selfish_cross_entropy(
            hidden, weight, shift, margin, bias=bias, num_items_in_batch=num_items_in_batch
        )
        return CausalLMOutputWithPast(loss=loss)

    model.forward = types.MethodType(forward, model)
    return model
