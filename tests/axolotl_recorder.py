"""A test-only Axolotl plugin: records what each training step saw, for tests/test_axolotl.py.

Per optimizer step: the parameters before the step, and per training forward the batch the trainer passed
(input_ids, labels, masks, num_items_in_batch) and the loss the (patched) forward returned. Saved to
``output_dir/recorded.pt`` at the end of training, so the test recomputes every loss independently.
"""

from __future__ import annotations

from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback


class _Recorder(TrainerCallback):
    def __init__(self, model, output_dir):
        self.model = model
        self.output_dir = Path(output_dir)
        self.steps: list[dict] = []
        model.register_forward_pre_hook(self._inputs, with_kwargs=True)
        model.register_forward_hook(self._output)

    def on_step_begin(self, args, state, control, **kwargs):
        params = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        self.steps.append({"step": state.global_step, "params": params, "forwards": []})

    def _inputs(self, module, args, kwargs):
        if module.training and self.steps:
            batch = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()}
            self.steps[-1]["forwards"].append({"batch": batch})

    def _output(self, module, args, output):
        if module.training and self.steps and self.steps[-1]["forwards"]:
            self.steps[-1]["forwards"][-1]["loss"] = output.loss.detach().clone()

    def on_train_end(self, args, state, control, **kwargs):
        torch.save({"steps": self.steps, "log_history": state.log_history}, self.output_dir / "recorded.pt")


class RecorderPlugin(BasePlugin):
    def add_callbacks_pre_trainer(self, cfg, model):
        return [_Recorder(model, cfg.output_dir)]
