"""An Axolotl plugin: the selfish loss in ``axolotl train``, set by top-level YAML keys.

    plugins:
      - hf_selfish.integrations.axolotl.SelfishPlugin
    selfish_margin: 2.0          # null: plain cross-entropy; "auto": ln(V) - ln(1 - selfish_top_p)
    selfish_fused: true          # the loss from the last hidden state and the head: no [tokens, vocab] logits
    selfish_margin_schedule: constant   # or linear / cosine, to selfish_margin_end
    selfish_rank_bucket_eval: false     # per frequency-rank bucket eval metrics

How: the loss moves into the model's own forward (:func:`hf_selfish.apply_selfish_loss`, in
``post_model_load``, after any LoRA adapter), so whichever trainer Axolotl builds (``AxolotlTrainer``,
ReLoRA's, a ``trainer_cls`` of the config) trains with it; the trainer passes ``labels`` and
``num_items_in_batch`` to the forward, so gradient accumulation is exact. Evaluation runs the model
in eval mode, where the patched forward is the original one: ``eval_loss`` is plain cross-entropy.
A trainer class from ``get_trainer_cls`` would have replaced the trainer Axolotl picks (and any other
plugin's), and ``SelfishTrainer`` needs its own ``SelfishTrainingArguments``, which Axolotl does not build.

A callback moves the margin along its schedule at each step and adds ``selfish_margin`` and
``selfish_masked_fraction`` to every training log (console, ``trainer_state.json``, ``report_to``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SelfishPlugin"]


def __getattr__(name: str) -> Any:
    """``SelfishPlugin`` on first use: the YAML keys (`args.SelfishArgs`) import without Axolotl."""
    if name == "SelfishPlugin":
        from .plugin import SelfishPlugin

        return SelfishPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
