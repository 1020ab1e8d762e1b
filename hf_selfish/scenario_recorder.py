"""Recording the gradient scenarios during training (the math is in `hf_selfish.scenarios`).

- `GradientScenarioRecorder`: hooks on a model's input embedding and LM head that sum the scenario vectors
  of every backward pass while attached.
- `GradientScenarioCallback`: attaches it on the steps to record and keeps the per-token norms.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .metric_names import SCENARIOS_FILE, scenario_share_key
from .ops.loss import compute_dtype
from .scenarios import (
    ScenarioNorms,
    ScenarioVectors,
    embedding_modules,
    input_embedding_gradient,
    non_target_share,
    output_embedding_gradients,
    save_scenario_norms,
    targets_from_grad_logits,
)

logger = logging.getLogger(__name__)

__all__ = ["GradientScenarioCallback", "GradientScenarioRecorder"]


class GradientScenarioRecorder:
    """Hooks that add each backward's scenario vectors to running `[V, d]` sums, during real training.

    Forward hooks on `model.get_input_embeddings()` and `model.get_output_embeddings()` capture the input
    ids, the embedding output, the LM head's input `H` and its output; tensor hooks on the last two catch
    `dLoss/d(embeddings)` and `G = dLoss/dlogits` during the trainer's own backward. So `G` comes from
    the loss actually trained with its actual scaling, and nothing runs an extra forward or backward.
    Targets are read from `G` (`targets_from_grad_logits`), so labels need not reach the model.

    Only forwards run with gradients enabled are recorded (evaluation under `no_grad` is skipped). Attach
    only around the steps to record: detached, the recorder costs nothing.

    Example:
        recorder = GradientScenarioRecorder(model)
        with recorder:  # attach ... detach
            loss = model(**batch).loss
            loss.backward()
        vectors = recorder.pop_vectors()  # ScenarioVectors, sum over the backwards since the last pop
    """

    def __init__(self, model: nn.Module):
        self.embedding, self.head = embedding_modules(model)
        self.vocab_size = self.head.weight.shape[0]
        if self.embedding.weight.shape[0] != self.vocab_size:
            raise ValueError(
                f"input embedding has {self.embedding.weight.shape[0]} rows but the LM head has {self.vocab_size}; "
                "gradient scenarios need one row per token in both"
            )
        self.padding_idx = getattr(self.embedding, "padding_idx", None)
        self._sums: torch.Tensor | None = None  # [3, V, d] float32 (float64), SCENARIO_NAMES order
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> None:
        """Start recording (idempotent)."""
        if not self.attached:
            self._handles = [
                self.embedding.register_forward_hook(self._on_embedding_forward),
                self.head.register_forward_hook(self._on_head_forward),
            ]

    def detach(self) -> None:
        """Stop recording; the sums so far are kept until `pop_vectors`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> GradientScenarioRecorder:
        self.attach()
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    def pop_vectors(self) -> ScenarioVectors | None:
        """The vectors summed since the last pop (None if no backward was recorded), and reset."""
        sums, self._sums = self._sums, None
        return None if sums is None else ScenarioVectors(*sums.unbind(0))

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        if self._sums is None:
            dtype = compute_dtype(like.dtype)  # float32 (float64 for a double model)
            self._sums = torch.zeros(3, self.vocab_size, like.shape[-1], dtype=dtype, device=like.device)
        return self._sums

    def _on_embedding_forward(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        input_ids = args[0].detach()  # [B, T]
        self._on_output_grad(output, lambda grad: (self._embedding_vector(input_ids, grad),))

    def _on_head_forward(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        hidden = args[0].detach()  # [B, T, d]
        self._on_output_grad(
            output, lambda grad: output_embedding_gradients(hidden, grad, targets_from_grad_logits(grad)), first=1
        )

    def _embedding_vector(self, input_ids: torch.Tensor, grad_embeds: torch.Tensor) -> torch.Tensor:
        return input_embedding_gradient(input_ids, grad_embeds, self.vocab_size, padding_idx=self.padding_idx)

    def _on_output_grad(self, output: torch.Tensor, vectors_of, first: int = 0) -> None:
        """When autograd reaches ``output``, add ``vectors_of(grad)`` to the sums from scenario ``first`` on."""
        if not (torch.is_grad_enabled() and output.requires_grad):
            return

        def on_grad(grad: torch.Tensor) -> None:
            with torch.no_grad():
                vectors = vectors_of(grad)
                buffer = self._buffer(vectors[0])
                for offset, vector in enumerate(vectors):
                    buffer[first + offset] += vector

        output.register_hook(on_grad)


class GradientScenarioCallback(TrainerCallback, ExportableState):
    """Accumulate per-token gradient norms of scenarios 1 / 2.1 / 2.2 every `every_k_steps` optimizer steps.

    Args:
        every_k_steps: record the optimizer steps whose 0-based index is a multiple of this.
        groups: optional ordered `{name: token ids}` (e.g. frequency-rank buckets); when given, the share of
            scenario 2.2 per group is logged.

    Attributes:
        norms: `ScenarioNorms` of `[V]` float64 tensors summed over the recorded steps (None before any).
        recorded_steps: how many optimizer steps were recorded.
    """

    def __init__(self, every_k_steps: int = 1, groups: Mapping[str, Sequence[int]] | None = None):
        if isinstance(every_k_steps, bool) or not isinstance(every_k_steps, int) or every_k_steps < 1:
            raise ValueError(f"every_k_steps must be an integer >= 1, got {every_k_steps!r}")
        self.every_k_steps = every_k_steps
        self.groups = {name: [int(i) for i in ids] for name, ids in (groups or {}).items()}
        self.recorded_steps = 0
        self._sums: torch.Tensor | None = None  # [3, V] float64, cpu, summed over recorded steps
        self._window: torch.Tensor | None = None  # [3, V] float64, since the last training log
        self._recorder: GradientScenarioRecorder | None = None

    @property
    def norms(self) -> ScenarioNorms | None:
        return None if self._sums is None else ScenarioNorms.from_stacked(self._sums)

    # ---- Trainer events ------------------------------------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if args.label_smoothing_factor > 0:
            raise ValueError(
                f"label_smoothing_factor={args.label_smoothing_factor}: gradient scenarios need a loss whose "
                "logit gradient is `softmax - onehot`; set it to 0 or drop GradientScenarioCallback"
            )
        self._recorder = GradientScenarioRecorder(kwargs["model"])
        self._restore(state)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self._recorder is not None and state.global_step % self.every_k_steps == 0:
            self._recorder.attach()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self._recorder is None or not self._recorder.attached:
            return
        self._recorder.detach()
        vectors = self._recorder.pop_vectors()
        if vectors is None:  # nothing reached the embeddings (e.g. frozen model)
            return
        stacked = _mean_across_processes(vectors.stacked())  # [3, V, d]
        norms = stacked.double().norm(dim=-1).cpu()  # [3, V]
        self._sums = norms if self._sums is None else self._sums + norms
        self._window = norms if self._window is None else self._window + norms
        self.recorded_steps += 1

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs):
        if logs is None or "loss" not in logs:  # training logs only
            return
        metrics = self.pop_log_metrics()
        if not metrics:
            return
        record = state.log_history[-1] if state.log_history else None
        logs.update(metrics)
        # Trainer.log appended `{**logs, "step": ...}` before calling on_log: complete that record too
        if record is not None and record.get("step") == state.global_step and record.get("loss") == logs["loss"]:
            record.update(metrics)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        checkpoint_dir = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(checkpoint_dir):
            logger.warning("No checkpoint folder %s: scenario norms not saved there", checkpoint_dir)
            return
        self._write(checkpoint_dir, state)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self._recorder is not None:
            self._recorder.detach()
        self._write(args.output_dir, state)

    # ---- Logging --------------------------------------------------------------------------------------

    def pop_log_metrics(self) -> dict[str, float]:
        """`{scenario_{group}_non_target_share: float}` over the steps recorded since the last call."""
        window, self._window = self._window, None
        if window is None or not self.groups:
            return {}
        shares = non_target_share(ScenarioNorms.from_stacked(window), self.groups)
        return {scenario_share_key(group): share for group, share in shares.items()}

    # ---- Saving and resuming --------------------------------------------------------------------------

    def state(self) -> dict:
        """`ExportableState`: constructor args plus the sums, stored in `trainer_state.json` at each save."""
        return {
            "args": {"every_k_steps": self.every_k_steps, "groups": self.groups},
            "attributes": {},
            "scenario_sums": {
                "recorded_steps": self.recorded_steps,
                "norms": None if self._sums is None else self._sums.tolist(),
            },
        }

    def _restore(self, state: TrainerState) -> None:
        """Take the sums from the (possibly resumed) `TrainerState`; a fresh run finds its own, unchanged."""
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):  # several instances were saved; this one is the first
            saved = saved[0]
        if not isinstance(saved, dict) or "scenario_sums" not in saved:
            return
        sums = saved["scenario_sums"]
        self.recorded_steps = int(sums["recorded_steps"])
        self._sums = None if sums["norms"] is None else torch.tensor(sums["norms"], dtype=torch.float64)
        if self._sums is not None and self._sums.shape[-1] != self._recorder.vocab_size:
            raise ValueError(
                f"the resumed checkpoint holds scenario norms for {self._sums.shape[-1]} tokens but the model has "
                f"{self._recorder.vocab_size}; resume with the same vocabulary"
            )

    def _write(self, folder: str, state: TrainerState) -> None:
        if not state.is_world_process_zero or self._sums is None:
            return
        metadata = {
            "recorded_steps": str(self.recorded_steps),
            "every_k_steps": str(self.every_k_steps),
            "global_step": str(state.global_step),
        }
        save_scenario_norms(self.norms, os.path.join(folder, SCENARIOS_FILE), metadata)


def _mean_across_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Average over ranks when `torch.distributed` runs with several processes, as DDP averages gradients."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    world_size = torch.distributed.get_world_size()
    if world_size == 1:
        return tensor
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor / world_size
