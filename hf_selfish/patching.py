"""A causal LM's output head: whether losses can read it, and how the model transforms its logits.

:func:`check_fusable` and :func:`causal_lm_head_inputs` serve losses that read the last hidden state and
the output embedding outside the model's forward (AGG): the model runs its own ``forward`` with
``logits_to_keep=1`` and ``output_hidden_states=True``, and models whose logits are not
``hidden @ weight.T + bias`` are refused -- known config attributes by name, anything else by comparing
the model's last-position logits with the head's on every call.
:func:`logit_transform_of` reads the scaling and soft-capping that :mod:`hf_selfish.loss_patch` applies
inside the fused selfish loss.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = [
    "LOGIT_TRANSFORM_ATTRIBUTES",
    "autocast_inputs",
    "causal_lm_head_inputs",
    "check_fusable",
    "logit_transform_of",
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


# Transforms the fused selfish loss reproduces: attribute -> how it maps to (logit_scale, softcap).
SUPPORTED_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def logit_transform_of(model: torch.nn.Module) -> tuple[float | None, float | None]:
    """``(logit_scale, softcap)`` the model applies after its head: ``L = softcap * tanh(scale * z / softcap)``.

    Gemma 2/3's ``final_logit_softcapping`` is the softcap; Cohere's ``logit_scale`` and Granite's
    ``1 / logits_scaling`` the scale. Any other transform of :data:`LOGIT_TRANSFORM_ATTRIBUTES` raises
    a ``ValueError`` naming the model class and the attribute.
    """
    values = _transform_values(unwrap_model(model))
    unsupported = {k: v for k, v in values.items() if k not in SUPPORTED_TRANSFORMS}
    if unsupported:
        attribute, value = next(iter(unsupported.items()))
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} transforms its logits after the output embedding "
            f"(config.{attribute}={value!r}), which the fused selfish loss does not reproduce; "
            "apply_selfish_loss(model, fused=False) computes it from the model's logits instead."
        )
    scale = values.get("logit_scale")
    if "logits_scaling" in values:
        scale = (1.0 if scale is None else float(scale)) / float(values["logits_scaling"])
    return (None if scale is None else float(scale)), values.get("final_logit_softcapping")


def _transform_values(model: torch.nn.Module) -> dict[str, Any]:
    """The non-neutral values of :data:`LOGIT_TRANSFORM_ATTRIBUTES` in the model's (text) config."""
    configs = [model.config]
    if hasattr(model.config, "get_text_config"):
        configs.append(model.config.get_text_config())
    values = {}
    for config in configs:
        for attribute, neutral in LOGIT_TRANSFORM_ATTRIBUTES.items():
            value = getattr(config, attribute, None)
            if value not in neutral:
                values[attribute] = value
    return values


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
    return autocast_inputs(hidden, weight, bias)


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


def autocast_inputs(hidden, weight, bias):
    """Cast to the autocast dtype when autocast is on, as the model's ``lm_head`` would run under it."""
    device_type = hidden.device.type
    if not torch.is_autocast_enabled(device_type):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
