"""hf_selfish: selfish-token hard-negative masking for the Hugging Face Trainer.

Selfish loss is the method of Turumtaev, "Stop Jostling: Adaptive Negative Sampling Reduces the
Marginalization of Low-Resource Language Tokens by Cross-Entropy Loss" (LoResLM 2025)::

    from hf_selfish import SelfishTrainer, SelfishTrainingArguments
    args = SelfishTrainingArguments(output_dir="out", selfish_margin=2.0)   # None: plain CE
    trainer = SelfishTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)

The public API is `__all__`, one list: every name in it is imported from ``hf_selfish`` and documented
by its docstring. Names are imported on first use (as transformers does), so ``from hf_selfish import
selfish_cross_entropy`` loads torch only, and ``import hf_selfish`` loads nothing heavy. The optional TRL
integration lives in `hf_selfish.integrations.trl` (it needs the ``trl`` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "selfish_cross_entropy": ".ops.loss",
    "selfish_causal_lm_loss": ".ops.loss",
    "validate_margin": ".ops.loss",
    "linear_selfish_cross_entropy": ".ops.fused",
    "apply_selfish_loss": ".loss_patch",
    "remove_selfish_loss": ".loss_patch",
    "selfish_loss_settings": ".loss_patch",
    "SelfishLossSettings": ".loss_patch",
    "SelfishCausalLMOutput": ".loss_patch",
    "SelfishTrainingArguments": ".config",
    "SelfishTrainer": ".trainer",
    "selfish_loss_func": ".trainer",
    "RankBucketEvalCallback": ".callbacks",
    "GradientScenarioCallback": ".callbacks",
    "attach_rank_bucket_eval": ".callbacks",
    "rank_bucket_metric_path": ".rank_buckets",
    "TokenFrequency": ".frequency",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name.startswith("__"):
        raise AttributeError(name)
    try:  # submodules, e.g. `hf_selfish.hub` after `from hf_selfish import hub`
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
