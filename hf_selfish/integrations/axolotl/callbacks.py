"""The margin schedule and the selfish metrics of an Axolotl run, as a `TrainerCallback`."""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from ...loss_patch import selfish_loss_settings
from ...ops.margin import MarginSchedule

__all__ = ["SelfishLogCallback", "margin_schedule"]


def margin_schedule(cfg, vocab_size: int) -> MarginSchedule:
    """The selfish margin over training from the validated Axolotl config ("auto" resolved against ``vocab_size``)."""
    return MarginSchedule.from_settings(
        cfg.selfish_margin,
        cfg.selfish_margin_end,
        cfg.selfish_margin_schedule,
        vocab_size=vocab_size,
        top_p=cfg.selfish_top_p,
    )


class SelfishLogCallback(TrainerCallback):
    """Sets the patched forward's margin at each step (its schedule) and logs ``selfish_margin`` and
    ``selfish_masked_fraction`` (the mean over the micro-batches since the last log), as `SelfishTrainer` does.

    The masked fraction is read from the patched forward's output by a forward hook on ``model``, the module
    the trainer calls (a PEFT wrapper calls its inner model's ``forward`` directly, past that model's hooks).
    """

    def __init__(self, model: torch.nn.Module, schedule: MarginSchedule, loss_name: str = "selfish"):
        self.settings = selfish_loss_settings(model)
        if self.settings is None:
            raise ValueError("SelfishLogCallback needs a model patched by hf_selfish.apply_selfish_loss")
        self.schedule = schedule
        self.scheduled = loss_name == "selfish"  # a split variant keeps its selfish_loss_kwargs margin
        self.margin: float | None = None  # of the last training step
        self._fraction_sum: torch.Tensor | None = None  # stays on the device: no sync per step
        self._fraction_count = 0
        model.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        fraction = getattr(output, "masked_fraction", None)
        if not module.training or fraction is None or self.settings.margin is None:
            return
        fraction = fraction.detach()
        self._fraction_sum = fraction if self._fraction_sum is None else self._fraction_sum + fraction
        self._fraction_count += 1

    def on_step_begin(self, args, state, control, **kwargs):
        if self.scheduled:
            self.settings.margin = self.schedule.at(state.global_step, state.max_steps)
        self.margin = self.settings.margin

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or self.margin is None:
            return
        added = {"selfish_margin": round(self.margin, 6)}
        if self._fraction_sum is not None:
            added["selfish_masked_fraction"] = round(self._fraction_sum.item() / self._fraction_count, 6)
            self._fraction_sum, self._fraction_count = None, 0
        logs.update(added)  # the callbacks after this one (the console, report_to) see them
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(added)  # the Trainer stored the entry before on_log: trainer_state.json
