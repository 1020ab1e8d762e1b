"""TRL's `SFTTrainer` with the selfish loss: `SelfishSFTTrainer` and its `SelfishSFTConfig`.

    from hf_selfish.integrations.trl import SelfishSFTConfig, SelfishSFTTrainer

    args = SelfishSFTConfig(output_dir="out", selfish_margin=2.0, selfish_fused=True)
    trainer = SelfishSFTTrainer(model, args=args, train_dataset=dataset, processing_class=tokenizer)

The classes are `SelfishTrainer` / `SelfishTrainingArguments` mixed into TRL's: TRL prepares the data
(chat templates, completion-only labels, packing, PEFT from ``peft_config``); `SelfishTrainer` computes
the loss and logs ``selfish_margin`` and ``selfish_masked_fraction`` exactly as it does alone, evaluates
with plain cross-entropy, and takes ``token_counts`` and `RankBucketEvalCallback`'s metric hooks.

Why not ``SFTTrainer(compute_loss_func=selfish_loss_func(...))``: TRL 1.16 deprecates it and, to feed its
own metrics, runs a second forward pass per step. Here a training step is ONE forward of the model: with
``selfish_fused=True`` it is the forward `hf_selfish.apply_selfish_loss` patched, which returns the fused
selfish loss without building the ``[tokens, vocab]`` logits. TRL's own fused LM head
(``trl.trainer.utils.add_fused_lm_head``, which the default ``loss_type="nll"`` patches into the model's
forward) is not installed: the selfish loss replaces it, and two patched forwards would stack.
TRL's ``entropy`` and ``mean_token_accuracy`` come from that head, so they are not logged; ``num_tokens`` is.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import trl.trainer.sft_trainer as _sft_trainer
from trl import SFTConfig, SFTTrainer

from ..config import SelfishTrainingArguments
from ..trainer import SelfishTrainer

__all__ = ["SelfishSFTConfig", "SelfishSFTTrainer"]


@dataclass
class SelfishSFTConfig(SelfishTrainingArguments, SFTConfig):
    """`SFTConfig` plus the selfish-loss settings of `SelfishTrainingArguments` (margin, schedule, fused, ...).

    TRL's defaults stay TRL's (``learning_rate=2e-5``, ``gradient_checkpointing=True``, ``bf16`` where
    supported, ``logging_steps=10``). ``loss_type="dft"`` is refused: the training loss is the selfish loss.
    """

    def __post_init__(self):
        if self.loss_type != "nll" and self.loss_type != "chunked_nll":
            raise ValueError(
                f"SelfishSFTConfig trains with the selfish loss (loss_name={self.loss_name!r}); "
                f"loss_type={self.loss_type!r} would be ignored. Leave loss_type at 'nll'."
            )
        super().__post_init__()


class SelfishSFTTrainer(SelfishTrainer, SFTTrainer):
    """`SFTTrainer` whose training loss is `SelfishTrainer`'s, in one forward pass per step.

    Arguments are `SFTTrainer`'s (``args`` a `SelfishSFTConfig`, default ``SelfishSFTConfig("tmp_trainer")``)
    plus ``token_counts`` (for rival losses that need the train split's counts). ``compute_loss_func`` is
    refused: the loss is the selfish one.
    """

    def __init__(self, model, args: SelfishSFTConfig | None = None, *pos, token_counts=None, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "SelfishSFTTrainer computes the selfish loss itself; drop compute_loss_func (TRL deprecates it "
                "and it costs a second forward pass per step)"
            )
        args = SelfishSFTConfig("tmp_trainer") if args is None else args
        if not isinstance(args, SelfishSFTConfig):
            raise ValueError(
                f"SelfishSFTTrainer needs SelfishSFTConfig, got {type(args).__name__}; build the arguments with "
                "hf_selfish.integrations.trl.SelfishSFTConfig(...)"
            )
        _check_sft_inputs(args, inspect.signature(SFTTrainer.__init__).bind_partial(None, model, args, *pos, **kwargs))
        with _without_trl_fused_head():
            super().__init__(model, args, *pos, token_counts=token_counts, **kwargs)
        self._total_train_tokens = getattr(self, "_total_train_tokens", 0)

    @property
    def label_mask_columns(self) -> tuple[str, ...]:
        """The columns TRL's collator masks labels with, as this config uses them (`check_train_dataset`)."""
        columns = ("assistant_masks",) if self.args.assistant_only_loss else ()
        return columns + (("completion_mask",) if self.args.completion_only_loss in (None, True) else ())

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """`SelfishTrainer.compute_loss` (one forward), plus TRL's ``num_tokens`` count while training."""
        inputs = {**inputs, "use_cache": False}  # as SFTTrainer: no KV cache in a loss forward
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self._count_train_tokens(inputs)
        return result

    def _count_train_tokens(self, inputs) -> None:
        """TRL's ``num_tokens`` metric: input tokens seen so far over all processes (padding excluded)."""
        if "attention_mask" in inputs:
            local = inputs["attention_mask"].sum()
        else:  # padding-free batches: one packed row
            local = inputs["input_ids"].new_tensor(inputs["input_ids"].numel())
        self._total_train_tokens += int(self.accelerator.gather_for_metrics(local).sum().item())
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]


# Columns SFTTrainer reads besides ``dataset_text_field``: tokenized, conversational, prompt-completion.
_SFT_COLUMNS = ("input_ids", "messages", "conversations", "prompt")


def _check_sft_inputs(args: SelfishSFTConfig, bound: inspect.BoundArguments) -> None:
    """What SFTTrainer would fail on deep inside (a bare StopIteration, a KeyError from ``datasets.map``, a
    TypeError on a missing chat template), said before it prepares anything, with what to pass instead."""
    given = bound.arguments
    eval_sets = given.get("eval_dataset")
    datasets = {"train_dataset": given.get("train_dataset")}
    if isinstance(eval_sets, dict):
        datasets.update({f"eval_dataset[{name!r}]": d for name, d in eval_sets.items()})
    else:
        datasets["eval_dataset"] = eval_sets
    for name, dataset in datasets.items():
        if dataset is not None:
            _check_sft_dataset(name, dataset, args, given.get("formatting_func") is not None)
    processing_class = given.get("processing_class")
    if (
        args.assistant_only_loss
        and processing_class is not None
        and args.chat_template_path is None
        and getattr(processing_class, "chat_template", None) is None
    ):
        raise ValueError(
            "assistant_only_loss=True masks the loss by the chat template's assistant turns, and the "
            f"processing_class ({type(processing_class).__name__}) has no chat_template: set tokenizer.chat_template, "
            "or pass SelfishSFTConfig(chat_template_path=...), or leave assistant_only_loss off"
        )


def _check_sft_dataset(name: str, dataset, args: SelfishSFTConfig, has_formatting_func: bool) -> None:
    """A dataset SFTTrainer can prepare: at least one row, and a column it reads (or a ``formatting_func``)."""
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"{name} is empty (0 rows); SelfishSFTTrainer needs at least one example to train or score")
    columns = list(getattr(dataset, "column_names", None) or [])
    if not columns or has_formatting_func or any(c in columns for c in (args.dataset_text_field, *_SFT_COLUMNS)):
        return
    raise ValueError(
        f"{name} has no {args.dataset_text_field!r} column (its columns: {', '.join(columns)}); pass "
        "SelfishSFTConfig(dataset_text_field=<the column of text>), a formatting_func, or a conversational "
        "'messages' column"
    )


@contextlib.contextmanager
def _without_trl_fused_head():
    """``SFTTrainer.__init__`` without ``add_fused_lm_head``: the model's forward stays unpatched by TRL.

    TRL calls it by the name it imported into ``trl.trainer.sft_trainer``; that name is swapped for a
    no-op while the trainer is built (our ``compute_loss`` never asks for ``fused_lm_head=True``).
    """
    original = getattr(_sft_trainer, "add_fused_lm_head", None)
    if original is None:  # a TRL version without it: nothing of TRL to keep out of the forward
        yield
        return
    _sft_trainer.add_fused_lm_head = lambda *args, **kwargs: None
    try:
        yield
    finally:
        _sft_trainer.add_fused_lm_head = original
