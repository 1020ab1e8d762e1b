"""The fused selfish loss applied to a causal LM: its last hidden state and output embedding.

`fused_causal_lm_loss` runs the model's own ``forward`` with ``logits_to_keep=1`` (its head computes
one position) and ``output_hidden_states=True``, and feeds the last hidden state and the output
embedding to `hf_selfish.ops.fused.linear_selfish_cross_entropy`. Models that transform their logits
after the head are refused: known config attributes by name, anything else by comparing the model's
own last-position logits with the head's on every call. The output embedding's weight must be whole on
the device (DDP is fine; FSDP and DeepSpeed ZeRO-3 shard it outside the forward).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .ops.fused import linear_selfish_cross_entropy
from .ops.loss import resolve_shift_labels

__all__ = [
    "LOGIT_TRANSFORM_ATTRIBUTES",
    "causal_lm_head_inputs",
    "check_fusable",
    "fused_causal_lm_loss",
    "unwrap_model",
]

FUSED = ("the fused selfish loss", "Train it unfused (selfish_fused=False).")  # (what needs the head, the remedy)

# Config attributes of models whose forward transforms the logits after the output embedding, with
# the values that mean "no transform". A model with any other value is refused: the fused loss
# computes ``hidden @ weight.T + bias`` and nothing else.
LOGIT_TRANSFORM_ATTRIBUTES: dict[str, tuple] = {
    "final_logit_softcapping": (None,),  # Gemma 2/3/3n, ...: cap * tanh(logits / cap)
    "logits_soft_cap": (None,),
    "logit_scale": (None, 1, 1.0),  # Cohere: logits * logit_scale
    "logits_scaling": (None, 1, 1.0),  # Granite: logits / logits_scaling
    "lm_head_multiplier": (None, 1, 1.0),  # Falcon-H1: lm_head(h) * multiplier
    "logits_mup_width_multiplier": (None, 1, 1.0),  # muP: lm_head(h / multiplier)
}


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP/DataParallel (``.module``) or ``torch.compile`` (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def check_fusable(model: torch.nn.Module, user: tuple[str, str] = FUSED) -> torch.nn.Linear:
    """The model's output embedding, if ``hidden @ weight.T + bias`` reproduces its logits; else a ``ValueError``.

    Refused: models whose config transforms logits after the head (see
    :data:`LOGIT_TRANSFORM_ATTRIBUTES`, named in the error), models whose output embedding is not a
    plain ``nn.Linear``, and models whose ``forward`` has no ``logits_to_keep`` argument. ``user`` names
    the loss that needs the head and what to do instead, for the error.
    """
    what, remedy = user
    model = unwrap_model(model)
    name = type(model).__name__
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    for config in configs:
        for attribute, neutral in LOGIT_TRANSFORM_ATTRIBUTES.items():
            value = getattr(config, attribute, None)
            if value not in neutral:
                raise ValueError(
                    f"{name} transforms its logits after the output embedding (config.{attribute}={value!r}); "
                    f"{what} computes hidden @ weight.T only. {remedy}"
                )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{name}.get_output_embeddings() is {type(head).__name__}, not an nn.Linear; "
            f"{what} needs a linear LM head. {remedy}"
        )
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"{name}.forward takes no `logits_to_keep`, so it would compute the full logits anyway "
            f"({what} needs its last hidden state). {remedy}"
        )
    return head


def fused_causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    labels: torch.Tensor | None,
    margin: float | None = 2.0,
    *,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
    return_masked_fraction: bool = False,
    sparse_backward: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selfish causal-LM loss of ``model`` on ``inputs`` without its ``[B, T, V]`` logits.

    Equals ``selfish_causal_lm_loss(model(**inputs).logits, labels, margin, ...)`` in value and in
    the gradient of every parameter. The model runs through its own ``forward`` (so DDP and other
    wrappers see a normal call) with ``logits_to_keep=1`` and ``output_hidden_states=True``: its head
    computes the logits of the last position only, and the last hidden state ``[B, T, d]`` and the
    output embedding go to :func:`linear_selfish_cross_entropy`. The last position's logits, which
    the model computed itself, are compared with ``head(last hidden state)`` on every call, so a
    model that transforms its logits in a way this module does not know of is refused, never
    silently trained on a different loss.

    Args:
        model: a causal LM (``...ForCausalLM``), possibly wrapped by DDP or ``torch.compile``.
        inputs: the batch without labels (``input_ids``, ``attention_mask``, ...).
        labels: ``[B, T]`` unshifted labels, shifted here like ``ForCausalLMLoss``; or pass
            ``shift_labels`` already aligned with the positions.
        margin, num_items_in_batch, ignore_index, chunk_size, return_masked_fraction, sparse_backward:
            as in :func:`linear_selfish_cross_entropy`.
    """
    shift_labels = resolve_shift_labels(labels, shift_labels, ignore_index, "fused_causal_lm_loss")
    hidden, weight, bias = causal_lm_head_inputs(model, inputs)
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit from here on
        labels = shift_labels.to(hidden.device)  # [B, T]
        return linear_selfish_cross_entropy(
            hidden,
            weight,
            labels,
            margin,
            bias=bias,
            ignore_index=ignore_index,
            num_items_in_batch=num_items_in_batch,
            chunk_size=chunk_size,
            return_masked_fraction=return_masked_fraction,
            sparse_backward=sparse_backward,
        )


def causal_lm_head_inputs(
    model: torch.nn.Module, inputs: dict[str, Any], user: tuple[str, str] = FUSED
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The last hidden state ``[B, T, d]`` and the output embedding's ``weight [V, d]`` and ``bias``.

    The model runs its own ``forward`` (``logits_to_keep=1``, ``output_hidden_states=True``) on ``inputs``
    (``labels`` dropped); ``F.linear(hidden, weight, bias)`` is checked against its last-position logits.
    Under autocast the three come in the autocast dtype, as the model's ``lm_head`` would run.
    """
    head = check_fusable(model, user)
    inputs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    outputs = model(**inputs, logits_to_keep=1, output_hidden_states=True)
    hidden = outputs.hidden_states[-1]  # [B, T, d]
    weight, bias = head.weight, head.bias  # [V, d], [V] or None
    _check_head_reproduces_logits(model, outputs.logits, hidden, weight, bias, user)
    return _autocast_inputs(hidden, weight, bias)


def _check_head_reproduces_logits(model, logits, hidden, weight, bias, user: tuple[str, str] = FUSED) -> None:
    """Raise a ``ValueError`` if the model's last-position logits are not ``F.linear(hidden, weight, bias)``."""
    what, remedy = user
    with torch.no_grad():
        if logits.shape[-2] != 1:
            raise ValueError(
                f"{type(unwrap_model(model)).__name__} ignored logits_to_keep=1 and computed logits {tuple(logits.shape)}; "
                f"{what} would save nothing. {remedy}"
            )
        expected = torch.nn.functional.linear(hidden[:, -1:], weight, bias).float()  # [B, 1, V]
        got = logits.float()
        tolerance = 1e-4 if logits.dtype == torch.float32 else 2e-2  # same matmul: equal up to rounding
        if not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
            error = (got - expected).abs().max().item()
            raise ValueError(
                f"{type(unwrap_model(model)).__name__}'s logits differ from output_embeddings(last hidden state) by up to "
                f"{error:.3g}: the model transforms its logits after the head, which {what} cannot reproduce. {remedy}"
            )


def _autocast_inputs(hidden, weight, bias):
    """Cast to the autocast dtype when autocast is on, as the model's ``lm_head`` would run under it."""
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
