"""Tiny random causal LMs built from configs, the way transformers' own tests do (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config


def tiny_config(model_type: str, vocab_size: int = 67, **overrides):
    """A 2-layer, 32-dim config of `model_type` (gpt2, llama, qwen2, gpt_neox)."""
    if model_type == "gpt2":
        base = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size)
        cls = GPT2Config
    elif model_type == "llama":
        base = dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=vocab_size,
            tie_word_embeddings=False,
        )
        cls = LlamaConfig
    elif model_type == "qwen2":
        base = dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=vocab_size,
        )
        cls = Qwen2Config
    elif model_type == "gpt_neox":
        base = dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_size=32,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=vocab_size,
        )
        cls = GPTNeoXConfig
    else:
        raise ValueError(f"no tiny config for model type {model_type!r}")
    base.update(overrides)
    return cls(**base)


def tiny_model(model_type: str, vocab_size: int = 67, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A randomly initialised tiny causal LM (dropout off), in float32 or, for exactness tests, float64."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, vocab_size, **overrides)
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    return AutoModelForCausalLM.from_config(config).to(dtype)
