"""`apply_selfish_loss`: the selfish loss inside a causal LM's own ``forward``.

The patch replaces the *instance's* ``forward`` (never the class's). While the model trains and is
given ``labels`` (or ``shift_labels``), the patched forward runs the decoder (``model.base_model``),
takes its last hidden state and returns a :class:`SelfishCausalLMOutput` whose ``loss`` is the fused
selfish loss (:func:`hf_selfish.ops.fused.linear_selfish_cross_entropy`, with the model's logit scaling
and soft-capping) and whose ``logits`` are ``None``: the ``[tokens, vocab]`` logits are never built.
In evaluation, without labels, and in generation it calls the original forward unchanged. So the stock
``Trainer`` (no ``compute_loss_func``), TRL trainers, DDP and PEFT all train with the selfish loss.

Learned from (not copied): Liger Kernel's ``lce_forward`` / ``_apply_liger_kernel_to_instance``, TRL's
``_patch_chunked_ce_lm_head`` and Cut Cross-Entropy's ``cce_patch``. Unlike them the forward is a
callable object holding its model, so ``copy.deepcopy(model)`` patches the copy, not the original.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from .distributed import refuse_adapted_head, whole_head_parameters
from .ops.fused import check_chunk_size, linear_selfish_cross_entropy
from .ops.logit_transform import make_logit_transform
from .ops.loss import resolve_shift_labels, selfish_causal_lm_loss, validate_margin
from .ops.params import check_flag
from .patching import autocast_inputs, logit_transform_of, unwrap_model

try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers before 5.2x (5.16, which Axolotl pins, too) slices inside each model, like this

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
        indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden_states[:, indices, :]


__all__ = [
    "SelfishCausalLMOutput",
    "SelfishLossSettings",
    "apply_selfish_loss",
    "remove_selfish_loss",
    "selfish_loss_settings",
]

# keyword arguments of a causal LM's forward that belong to the loss, never to the decoder
LOSS_KWARGS = ("labels", "shift_labels", "num_items_in_batch", "ignore_index", "logits_to_keep", "return_dict")


@dataclass
class SelfishCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the share of (labelled position, vocab) entries the margin masked."""

    masked_fraction: torch.Tensor | None = None


@dataclass
class SelfishLossSettings:
    """What the patched forward computes; change the fields to change it (e.g. a margin schedule)."""

    margin: float | None = 2.0  # None: plain cross-entropy
    fused: bool = True  # False: the selfish loss of the model's own logits
    chunk_size: int | None = None  # rows per chunk of the fused loss; None: 256 MiB of float32 logits
    sparse_backward: bool = True  # the fused loss's exact sparse gradient matmuls
    # the selfish variants (hf_selfish.ops.variants), fused only: the one side of the gradient that gets the
    # masked softmax ("head" / "hidden"; None: both), and the [V] bool ids the margin never masks (selfish_rare)
    split: str | None = None
    always_kept: torch.Tensor | None = None


def apply_selfish_loss(model: torch.nn.Module, margin: float | None = 2.0, *, fused: bool = True, chunk_size=None):
    """Make ``model``'s training loss the selfish loss, computed inside its forward; returns ``model``.

    Args:
        model: a causal LM (``AutoModelForCausalLM``) exposing its decoder (``base_model``) and
            ``get_output_embeddings()``; DDP, ``torch.compile`` and PEFT wrappers are looked through.
        margin: the selfish margin; ``None`` trains with plain cross-entropy (fused, if ``fused``).
        fused: compute the loss from the last hidden state and the head, chunk by chunk, never
            building the logits; ``False`` applies the selfish loss to the model's own logits.
        chunk_size: rows per chunk of the fused loss (``None``: 256 MiB of float32 logits).

    Patching an already patched model updates its settings (patches never stack);
    :func:`remove_selfish_loss` restores the original forward.
    """
    settings = SelfishLossSettings(validate_margin(margin), check_flag("fused", fused), check_chunk_size(chunk_size))
    model = _inner_model(model)
    if fused:
        _check_reachable(model)
    current = vars(model).get("forward")
    if isinstance(current, _SelfishForward):
        settings.sparse_backward = current.settings.sparse_backward
        current.settings = settings
        current.verified = False
        return model
    model.forward = _SelfishForward(model, settings, previous=current)
    return model


def remove_selfish_loss(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`apply_selfish_loss`: the forward the model had before (the class's, usually)."""
    model = _inner_model(model)
    current = vars(model).get("forward")
    if not isinstance(current, _SelfishForward):
        raise ValueError(f"{type(model).__name__} has no selfish loss patch to remove")
    if current.previous is None:
        del model.forward  # the class's forward again
    else:
        model.forward = current.previous
    return model


def selfish_loss_settings(model: torch.nn.Module) -> SelfishLossSettings | None:
    """The live settings of a patched model (``None`` if it is not patched)."""
    current = vars(_inner_model(model)).get("forward")
    return current.settings if isinstance(current, _SelfishForward) else None


def _inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / ``torch.compile`` / PEFT (``get_base_model()``)."""
    model = unwrap_model(model)
    if hasattr(model, "get_base_model"):  # PEFT: patch the model its forward calls into
        model = unwrap_model(model.get_base_model())
    return model


def _check_reachable(model: torch.nn.Module) -> None:
    """Raise a ``ValueError`` naming the model class when the fused loss cannot reach its decoder or head."""
    name = type(model).__name__
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    refuse_adapted_head(head, name)  # LoRA on lm_head: say so, rather than "not an nn.Linear"
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{name}.get_output_embeddings() is {type(head).__name__}, not an nn.Linear: the fused selfish loss "
            "cannot reach its head; apply_selfish_loss(model, fused=False) works from the logits instead"
        )
    if _decoder_of(model) is None:
        raise ValueError(
            f"{name} exposes no decoder (base_model / get_decoder()) apart from itself: the fused selfish loss "
            "cannot run it without the head; apply_selfish_loss(model, fused=False) works from the logits instead"
        )
    logit_transform_of(model)  # raises on transforms the fused loss does not reproduce
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "output_router_logits", False):
        raise ValueError(
            f"{name} adds a router load-balancing loss (config.output_router_logits=True) that the fused selfish "
            "loss does not compute; apply_selfish_loss(model, fused=False) keeps it"
        )


def _decoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model without its head: ``base_model`` (``model.model``, ``transformer``, ...) or ``get_decoder()``."""
    for candidate in (getattr(model, "base_model", None), _call_or_none(model, "get_decoder")):
        if isinstance(candidate, torch.nn.Module) and candidate is not model:
            return candidate
    return None


def _call_or_none(model, method: str):
    try:
        return getattr(model, method)() if hasattr(model, method) else None
    except (AttributeError, NotImplementedError):
        return None


class _SelfishForward:
    """The patched ``forward`` of one model instance.

    A callable object, not a closure, so that ``copy.deepcopy(model)`` gives the copy a forward bound
    to the copy, and ``inspect.signature(model.forward)`` stays the original's (the Trainer drops
    dataset columns and ``generate`` validates kwargs by it).
    """

    def __init__(self, model: torch.nn.Module, settings: SelfishLossSettings, previous=None):
        self.model = model
        self.settings = settings
        self.previous = previous  # an instance forward set before ours (accelerate hooks), else None
        self.verified = False  # the fused loss checked once against the model's own logits
        self.__signature__ = inspect.signature(self.original)

    @property
    def original(self):
        """The forward the model had before the patch."""
        return self.previous if self.previous is not None else type(self.model).forward.__get__(self.model)

    def __call__(self, *args, **kwargs):
        arguments = _named_arguments(self.__signature__, args, kwargs)
        has_labels = arguments.get("labels") is not None or arguments.get("shift_labels") is not None
        if not (self.model.training and has_labels):
            return self.original(*args, **kwargs)  # evaluation, generation: exactly as before
        return_dict = _wants_return_dict(arguments.get("return_dict"), self.model.config)
        result = self._fused(arguments) if self.settings.fused else self._unfused(arguments)
        return result if return_dict else result.to_tuple()  # the model's own convention, on both paths

    def _unfused(self, arguments: dict[str, Any]) -> SelfishCausalLMOutput:
        """The selfish loss of the model's own logits (its transforms included)."""
        loss_kwargs = _pop_loss_kwargs(arguments)
        outputs = self.original(**arguments, logits_to_keep=loss_kwargs["logits_to_keep"], return_dict=True)
        loss, masked_fraction = selfish_causal_lm_loss(
            outputs.logits,
            loss_kwargs["labels"],
            self.settings.margin,
            num_items_in_batch=loss_kwargs["num_items_in_batch"],
            ignore_index=loss_kwargs["ignore_index"],
            shift_labels=loss_kwargs["shift_labels"],
            return_masked_fraction=True,
        )
        aux_loss = getattr(outputs, "aux_loss", None)  # MoE: the model adds it to its own loss, so do we
        if aux_loss is not None:
            loss = loss + self.model.router_aux_loss_coef * aux_loss.to(loss.device)
        return SelfishCausalLMOutput(
            loss=loss,
            logits=outputs.logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            masked_fraction=masked_fraction,
        )

    def _fused(self, arguments: dict[str, Any]) -> SelfishCausalLMOutput:
        """Decoder -> last hidden state -> fused selfish loss; no logits."""
        loss_kwargs = _pop_loss_kwargs(arguments)
        if not self.verified:
            self._verify(arguments)
        arguments["use_cache"] = False  # a loss call never feeds generation: no KV cache
        outputs = _decoder_of(self.model)(**arguments, return_dict=True)
        hidden = slice_logits_to_keep(outputs.last_hidden_state, loss_kwargs["logits_to_keep"])  # [B, T, d]
        loss, masked_fraction = self._loss(hidden, loss_kwargs)
        result = SelfishCausalLMOutput(
            loss=loss,
            logits=None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            masked_fraction=masked_fraction,
        )
        return result

    def _loss(self, hidden: torch.Tensor, loss_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, masked_fraction)`` of ``hidden [B, T, d]`` against the (shifted) labels."""
        ignore_index = loss_kwargs["ignore_index"]
        labels = resolve_shift_labels(
            loss_kwargs["labels"], loss_kwargs["shift_labels"], ignore_index, "apply_selfish_loss"
        )
        weight, bias = whole_head_parameters(self.model.get_output_embeddings())  # whole under FSDP2 too
        hidden, weight, bias = autocast_inputs(hidden, weight, bias)
        scale, softcap = logit_transform_of(self.model)
        always_kept = self.settings.always_kept
        if always_kept is not None:
            always_kept = always_kept.to(hidden.device)  # [V] bool; no copy once it is there
            self.settings.always_kept = always_kept
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit from here on
            return linear_selfish_cross_entropy(
                hidden,
                weight,
                labels.to(hidden.device),  # [B, T]
                self.settings.margin,
                bias=bias,
                ignore_index=ignore_index,
                num_items_in_batch=loss_kwargs["num_items_in_batch"],
                chunk_size=self.settings.chunk_size,
                return_masked_fraction=True,
                sparse_backward=self.settings.sparse_backward,
                logit_scale=scale,
                softcap=softcap,
                split=self.settings.split,
                always_kept=always_kept,
            )

    def _verify(self, arguments: dict[str, Any]) -> None:
        """Once per patch: the model's own last-position logits must equal the transformed head of the
        decoder's last hidden state, else the fused loss would silently train a different model (a head
        wrapped by a hook, a transform no config attribute announces). Runs in eval mode, without
        gradients, so the training step's dropout and random state are untouched."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                expected = self.original(**arguments, logits_to_keep=1, return_dict=True).logits.float()  # [B, 1, V]
                decoder = _decoder_of(self.model)
                hidden = decoder(**{**arguments, "use_cache": False}, return_dict=True).last_hidden_state[:, -1:]
                got = self._transformed_head(hidden).float()  # [B, 1, V]
        finally:
            self.model.train(was_training)
        # same matmul, equal up to rounding: float32's, or bf16/fp16's (autocast, a half-precision head)
        low_precision = torch.is_autocast_enabled(hidden.device.type) or hidden.dtype not in (
            torch.float32,
            torch.float64,
        )
        tolerance = 2e-2 if low_precision else 1e-4
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
            error = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
            raise ValueError(self._mismatch_cause(error))
        self.verified = True

    def _mismatch_cause(self, error: float) -> str:
        """Why the logits differ, the likeliest cause first: non-finite head parameters, a forward another
        library replaced (the fused loss bypasses it), and only then a head the fused loss cannot reach."""
        name = type(self.model).__name__
        weight, bias = whole_head_parameters(self.model.get_output_embeddings())
        for part, tensor in (("weight", weight), ("bias", bias)):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                count = int((~torch.isfinite(tensor)).sum())
                return (
                    f"{name}'s output embedding {part} holds {count} non-finite value(s) (NaN or inf): the model "
                    "is broken before any loss; load or initialise it again (a diverged checkpoint?)"
                )
        library = _forward_replaced_by(self.model, self.previous)
        if library is not None:
            return (
                f"{name}.forward was replaced by another library ({library}) before the selfish loss was applied, "
                f"and its logits differ from the head's by up to {error:.3g}; the fused selfish loss would bypass "
                "that patch: pass a model no other trainer or library patched (a fresh from_pretrained), or use "
                "apply_selfish_loss(model, fused=False), which trains on the patched forward's logits"
            )
        return (
            f"{name}'s logits differ from its transformed output embedding of the decoder's last hidden state by up "
            f"to {error:.3g}: the fused selfish loss cannot reach its head; apply_selfish_loss(model, fused=False) "
            "works from the logits instead"
        )

    def _transformed_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """``softcap * tanh(scale * head(hidden) / softcap)`` as the fused loss computes it, ``[B, 1, V]``."""
        weight, bias = whole_head_parameters(self.model.get_output_embeddings())
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        transform = make_logit_transform(*logit_transform_of(self.model))  # the fused loss's own transform
        if transform is not None:
            transform.apply_(logits, None)  # in place; no derivative wanted
        return logits


def _forward_replaced_by(model: torch.nn.Module, previous) -> str | None:
    """The module of a forward another library put on ``model`` (its instance, or its class), else None.

    Read from the function's globals: a ``functools.wraps`` patch copies the original's ``__module__``."""
    candidates = [previous] if previous is not None else []
    candidates.append(type(model).forward)
    for forward in candidates:
        module = _defining_module(forward)
        if module and not module.startswith(("transformers", "torch", "hf_selfish")):
            return module
    return None


def _defining_module(function) -> str | None:
    """Where ``function`` (a function, bound method, partial or callable object) was written."""
    while isinstance(function, functools.partial) or hasattr(function, "__func__"):
        function = function.func if isinstance(function, functools.partial) else function.__func__
    globals_ = getattr(function, "__globals__", None)
    if isinstance(globals_, dict) and isinstance(globals_.get("__name__"), str):
        return globals_["__name__"]
    return getattr(type(function), "__module__", None)


def _named_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The call's arguments by name, the ``**kwargs`` merged in."""
    bound = signature.bind_partial(*args, **kwargs)
    arguments = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return arguments


def _wants_return_dict(return_dict: bool | None, config) -> bool:
    """What the model would return: an output object unless ``return_dict=False`` was passed, or left unset
    with ``config.return_dict=False`` (transformers' ``can_return_tuple``)."""
    if return_dict is not None:
        return bool(return_dict)
    return bool(getattr(config, "return_dict", True))


def _pop_loss_kwargs(arguments: dict[str, Any]) -> dict[str, Any]:
    """Remove the loss's arguments from ``arguments`` (in place); return them, with their defaults."""
    loss_kwargs = {name: arguments.pop(name, None) for name in LOSS_KWARGS}
    if loss_kwargs["ignore_index"] is None:
        loss_kwargs["ignore_index"] = -100
    if loss_kwargs["logits_to_keep"] is None:
        loss_kwargs["logits_to_keep"] = 0  # every position, as transformers' default
    return loss_kwargs
