"""`SelfishTrainer`: a drop-in `transformers.Trainer` whose training loss is the selfish loss (or a rival).

One class serves every arm of an experiment: ``selfish_margin=None`` trains with plain
cross-entropy through the very same code path, and ``loss_name`` picks a rival loss from
:mod:`hf_selfish.ops.registry`. Evaluation always uses plain cross-entropy over the full
vocabulary, so the ``eval_loss`` of every arm is the same metric.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn
from transformers import Trainer

from .config import SelfishTrainingArguments
from .distributed import refuse_untested_deepspeed
from .files import umask_permissions
from .loss_patch import apply_selfish_loss, selfish_loss_settings
from .ops.loss import resolve_shift_labels, selfish_causal_lm_loss, validate_margin
from .ops.margin import MarginSchedule
from .ops.registry import get_loss, needs_hidden, needs_token_counts, takes_head
from .ops.variants import fused_variant
from .patching import causal_lm_head_inputs, check_fusable

logger = logging.getLogger(__name__)

# for errors about models whose head a loss cannot read: (what needs the head, what to do instead)
AGG_USER = ("agg (adaptive gradient gating)", "Train this model with another loss_name.")
HEAD_USERS = {
    "agg": AGG_USER,
    "selfish_head": ("selfish_head", "Train it fused (selfish_fused=True), or with another loss_name."),
    "selfish_hidden": ("selfish_hidden", "Train it fused (selfish_fused=True), or with another loss_name."),
}

__all__ = [
    "SelfishTrainer",
    "SelfishTrainingArguments",
    "check_train_dataset",
    "has_labelled_token",
    "output_vocab_size",
    "selfish_loss_func",
]


def has_labelled_token(dataset, ignore_index: int = -100, batch_size: int = 1024, mask_columns=()) -> bool:
    """Whether any row has a label a causal LM is trained or scored on (``labels[1:] != ignore_index``).

    Rows without a ``labels`` column are labelled by their ``input_ids`` (what the collators do);
    ``mask_columns`` (e.g. TRL's ``completion_mask``) keep a position only where every mask is 1.
    """
    column = "labels" if "labels" in dataset.column_names else "input_ids"
    masks = [name for name in mask_columns if name in dataset.column_names]
    for batch in dataset.select_columns([column, *masks]).iter(batch_size=batch_size):
        for i, row in enumerate(batch[column]):
            for j in range(1, len(row)):
                if row[j] != ignore_index and all(batch[name][i][j] for name in masks):
                    return True
    return False


def check_train_dataset(dataset, mask_columns=()) -> None:
    """Refuse a map-style (`datasets.Dataset`) train split without one labelled token: every step would have
    loss 0 and gradient 0, and the run would finish as if it had trained. Other datasets are not scanned."""
    names = getattr(dataset, "column_names", None)
    if not isinstance(names, list) or not ({"labels", "input_ids"} & set(names)) or not hasattr(dataset, "__len__"):
        return
    if not has_labelled_token(dataset, mask_columns=mask_columns):
        raise ValueError(
            f"the train dataset has no labelled token ({len(dataset)} rows, each shorter than two tokens or masked "
            "out; a causal LM learns labels[1:]): every step would have loss 0 and change nothing; give rows with "
            "text (an empty string is no example)"
        )


def output_vocab_size(model: nn.Module) -> int:
    """Rows of the model's output embedding (its logits' last dimension)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        shape = getattr(head.weight, "ds_shape", head.weight.shape)  # ZeRO-3: the whole shape, not the (0,) stub
        return int(shape[0])
    return int(model.config.vocab_size)


def _logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a model output (a `ModelOutput`, dict or tuple)."""
    if isinstance(outputs, dict):
        return outputs["logits"]
    return outputs[0]


def selfish_loss_func(margin: float | None = 2.0, *, ignore_index: int = -100) -> Callable[..., torch.Tensor]:
    """A loss for ``Trainer(compute_loss_func=selfish_loss_func(margin))`` with any causal LM.

    The Trainer calls it during training and evaluation alike. It applies the selfish margin while
    autograd records (training) and plain cross-entropy under ``torch.no_grad()`` (evaluation), so
    ``eval_loss`` stays comparable between arms.
    """
    margin = validate_margin(margin)

    def compute_loss_func(outputs, labels, num_items_in_batch=None):
        active_margin = margin if torch.is_grad_enabled() else None
        return selfish_causal_lm_loss(
            _logits_of(outputs), labels, active_margin, num_items_in_batch=num_items_in_batch, ignore_index=ignore_index
        )

    return compute_loss_func


class SelfishTrainer(Trainer):
    """`Trainer` that computes the causal-LM loss itself: the arm's loss while training, plain CE in eval.

    The model is run without ``labels`` so it never computes its own cross-entropy (no double
    loss). Gradient accumulation is exact: the Trainer counts the labelled tokens of the whole
    accumulated batch (``num_items_in_batch``) and the loss is divided by that count.

    With ``selfish_fused`` the model is patched (:func:`hf_selfish.apply_selfish_loss`): while training,
    its own forward returns the fused selfish loss (at the scheduled margin) and no logits.

    ``args.loss_name`` picks the training loss (default ``"selfish"``, with ``selfish_margin``);
    ``args.loss_kwargs`` its parameters. ``token_counts`` (keyword argument) are the train split's
    count of every token id, needed by ``tlat``, ``logit_adjustment``, ``agg`` and ``selfish_rare``. ``agg``,
    ``selfish_head`` and ``selfish_hidden`` read the last hidden state (``output_hidden_states=True``,
    ``logits_to_keep=1``) and the weight of ``model.get_output_embeddings()``; the two selfish ones call that
    module for the head side, so the gradient-scenario recorder sees it. With ``selfish_fused`` the selfish
    variants (``selfish_head``, ``selfish_hidden``, ``selfish_rare``) run inside the patched forward instead, at
    their ``loss_kwargs`` margin (constant; the margin schedule is the selfish loss's), and log the margin and
    the masked fraction like it.
    """

    args: SelfishTrainingArguments

    def __init__(self, *args, token_counts=None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, SelfishTrainingArguments):
            raise ValueError(
                f"SelfishTrainer needs SelfishTrainingArguments, got {type(self.args).__name__}; "
                "build the arguments with hf_selfish.SelfishTrainingArguments(...)"
            )
        # We compute a causal-LM loss normalised by `num_items_in_batch`: ask the Trainer to count the
        # labelled tokens of each accumulated batch over `labels[..., 1:]`, and not to rescale for GA.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self.margin_schedule = MarginSchedule.from_settings(
            self.args.selfish_margin,
            self.args.selfish_margin_end,
            self.args.selfish_margin_schedule,
            vocab_size=output_vocab_size(self.model),
            top_p=self.args.selfish_top_p,
        )
        if self.args.selfish_fused:
            # FSDP2 and DeepSpeed ZeRO-2/3 are tested (tests/test_distributed_fused.py, tests/test_deepspeed_fused.py,
            # hf_selfish.distributed); FSDP1 and ZeRO-3's parameter offload are not
            if self.is_fsdp_enabled and not self.accelerator.is_fsdp2:
                raise ValueError(
                    "selfish_fused is tested under DDP, FSDP2 (fsdp_version: 2) and DeepSpeed ZeRO-2/3; FSDP1 shards "
                    "the LM head's weight in a way it is not tested with: use FSDP2, or train with selfish_fused=False"
                )
            # the loss moves into the model's forward: its logits are never built while training
            apply_selfish_loss(self.model, self.margin_schedule.start, chunk_size=self.args.selfish_fused_chunk_size)
            selfish_loss_settings(self.model).sparse_backward = self.args.selfish_fused_sparse
        loss_name = self.args.loss_name
        if self.is_deepspeed_enabled:
            refuse_untested_deepspeed(
                self.accelerator.state.deepspeed_plugin.deepspeed_config,
                fused=self.args.selfish_fused,
                head_readers=self._head_readers(),
            )
        if needs_token_counts(loss_name) and token_counts is None:
            raise ValueError(
                f"loss_name={loss_name!r} needs token_counts, the train split's count of every token id: "
                "SelfishTrainer(..., token_counts=TokenFrequency.from_dataset(train, vocab_size).counts)"
            )
        self.token_counts = None if token_counts is None else torch.as_tensor(token_counts, dtype=torch.float64)
        self._counts_on_device: dict[torch.device, torch.Tensor] = {}
        self._fused_variant = None  # the margin of a fused selfish variant (its settings are on the patch)
        if self.args.selfish_fused and loss_name != "selfish":
            variant = fused_variant(
                loss_name, self.args.loss_kwargs or {}, self.token_counts, output_vocab_size(self.model)
            )
            settings = selfish_loss_settings(self.model)
            settings.split, settings.always_kept, self._fused_variant = variant.split, variant.always_kept, variant
        elif needs_hidden(loss_name):  # refuse heads it cannot read, before training
            check_fusable(self.model, HEAD_USERS.get(loss_name, AGG_USER))
        self._masked_fraction_sum: torch.Tensor | None = None  # over micro-batches since the last log
        self._masked_fraction_count = 0
        self._last_margin: float | None = None

    def _head_readers(self) -> list[str]:
        """Features of this run that read the LM head's weight outside the model's forward (named for errors)."""
        from .scenario_recorder import GradientScenarioCallback  # callbacks import the trainer's module

        name = self.args.loss_name
        fused_variant_run = self.args.selfish_fused and name != "selfish"  # inside the patched forward instead
        readers = [HEAD_USERS.get(name, AGG_USER)[0]] if needs_hidden(name) and not fused_variant_run else []
        if any(isinstance(cb, GradientScenarioCallback) for cb in self.callback_handler.callbacks):
            readers.append("the gradient scenarios (GradientScenarioCallback, selfish_log_scenarios_every)")
        return readers

    # dataset columns that mask labels in the collator (TRL's completion_mask, assistant_masks); none here
    label_mask_columns: tuple[str, ...] = ()

    def train(self, *args, **kwargs):
        """`Trainer.train`, after refusing a train split with nothing to learn (`check_train_dataset`)."""
        check_train_dataset(self.train_dataset, self.label_mask_columns)
        return super().train(*args, **kwargs)

    def training_margin(self) -> float | None:
        """The margin applied at the current training step (``None`` = plain cross-entropy)."""
        return self.margin_schedule.at(self.state.global_step, self.state.max_steps)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``selfish_margin``, ``selfish_masked_fraction`` and callbacks' metrics to the training logs."""
        if "loss" in logs:
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "pop_log_metrics"):  # e.g. GradientScenarioCallback's 2.2 shares
                    logs.update(callback.pop_log_metrics())
        if "loss" in logs and self._last_margin is not None:
            logs["selfish_margin"] = round(self._last_margin, 6)  # the margin of the last logged step
            if self._masked_fraction_sum is not None:
                fraction = self._masked_fraction_sum.item() / self._masked_fraction_count
                logs["selfish_masked_fraction"] = round(fraction, 6)
                self._masked_fraction_sum, self._masked_fraction_count = None, 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """`Trainer._save` (the model, its config, the tokenizer), then the files it wrote get the umask's
        permissions: safetensors writes the weights ``0600`` whatever the umask."""
        if not self.args.should_save:  # the process that writes sets the permissions
            super()._save(output_dir, state_dict)
            return
        with umask_permissions(output_dir if output_dir is not None else self.args.output_dir):
            super()._save(output_dir, state_dict)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        shift_labels = inputs.pop("shift_labels", None)
        if labels is None and shift_labels is None:
            raise ValueError(
                f"SelfishTrainer needs `labels` in every batch; got keys {sorted(inputs)}. "
                "Use a causal-LM collator (DataCollatorForLanguageModeling(mlm=False)) or add labels."
            )
        if model.training and self.args.loss_name != "selfish" and self._fused_variant is None:
            loss, outputs = self._rival_loss(model, inputs, labels, shift_labels, num_items_in_batch)
            loss = self._scale_for_token_averaging(loss, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        margin = None
        if model.training:  # a fused selfish variant keeps its loss_kwargs margin; the selfish loss its schedule
            margin = self.training_margin() if self._fused_variant is None else self._fused_variant.margin
        if self.args.selfish_fused and model.training:
            selfish_loss_settings(self.model).margin = margin  # the patched forward computes the loss
            outputs = model(**inputs, labels=labels, shift_labels=shift_labels, num_items_in_batch=num_items_in_batch)
            loss, masked_fraction = outputs.loss, outputs.masked_fraction  # outputs.logits is None
        else:
            outputs = model(**inputs)
            loss, masked_fraction = selfish_causal_lm_loss(
                _logits_of(outputs),
                labels,
                margin,
                num_items_in_batch=num_items_in_batch,
                shift_labels=shift_labels,
                return_masked_fraction=True,
            )
        if model.training:
            self._last_margin = margin
        if margin is not None:  # stays on the device: no sync per step
            previous = self._masked_fraction_sum
            self._masked_fraction_sum = masked_fraction if previous is None else previous + masked_fraction
            self._masked_fraction_count += 1
        loss = self._scale_for_token_averaging(loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _rival_loss(self, model, inputs, labels, shift_labels, num_items_in_batch):
        """``(loss, outputs)`` of the registry's ``args.loss_name`` on causally shifted labels."""
        name = self.args.loss_name
        loss_fn = get_loss(name)
        shift_labels = resolve_shift_labels(labels, shift_labels, -100, "SelfishTrainer")
        if needs_hidden(name):
            user = HEAD_USERS.get(name, AGG_USER)
            hidden, weight, bias = causal_lm_head_inputs(model, inputs, user)  # [B, T, d], [V, d], [V]
            head = {}
            if takes_head(name) and not torch.is_autocast_enabled(hidden.device.type):
                # the split selfish variants call the head module itself: the scenario recorder's hooks see it
                # (under autocast the head's float32 weight would not take the cast hidden state)
                head = {"head": check_fusable(model, user)}
            with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit from here on
                loss = loss_fn(
                    hidden,
                    weight,
                    shift_labels.to(hidden.device),
                    bias=bias,
                    num_items_in_batch=num_items_in_batch,
                    token_counts=self._token_counts(hidden.device),
                    **head,
                    **(self.args.loss_kwargs or {}),
                )
            return loss, None
        outputs = model(**inputs)
        logits = _logits_of(outputs)  # [B, T, V]
        loss = loss_fn(
            logits,
            shift_labels.to(logits.device),
            num_items_in_batch=num_items_in_batch,
            token_counts=self._token_counts(logits.device),
            **(self.args.loss_kwargs or {}),
        )
        return loss, outputs

    def _token_counts(self, device: torch.device) -> torch.Tensor | None:
        """The train-split counts on ``device`` (copied there once)."""
        if self.token_counts is None:
            return None
        if device not in self._counts_on_device:
            self._counts_on_device[device] = self.token_counts.to(device)
        return self._counts_on_device[device]

    def create_model_card(self, **kwargs) -> None:
        """`push_to_hub` calls this: the Trainer's card, rewritten by `hf_selfish.model_card.write_run_card`.

        Its metadata (base model, license, tags) is kept; the body states the training loss (selfish and
        its margin, or plain cross-entropy) and holds the per-group table of the last evaluation. Before any
        evaluation (a checkpoint TRL saves early) the Trainer's own card stays.
        """
        super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return
        from .model_card import last_eval_entry, write_run_card  # huggingface_hub's card module: only when needed

        if last_eval_entry(self.state.log_history) is None:
            # TRL's trainers write the card at every checkpoint, often before any evaluation: keep the Trainer's
            # own card until there is an evaluation to report (a table of no numbers would be scored on nothing)
            logger.info("model card: no evaluation yet, the Trainer's card is kept; hf_selfish's follows an evaluate()")
            return

        settings = self.args.to_dict()
        settings["selfish_margin_value"] = self.margin_schedule.start  # "auto" resolved against the vocabulary
        if self.args.max_steps > 0:  # max_steps overrides the epochs
            settings.pop("num_train_epochs", None)
        write_run_card(
            self.args.output_dir, self.state.log_history, settings, model_id=self.hub_model_id or self.args.hub_model_id
        )

    def _scale_for_token_averaging(self, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """Undo DDP's gradient mean when the token count was summed over processes (as Trainer does)."""
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss_scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (loss_scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss
