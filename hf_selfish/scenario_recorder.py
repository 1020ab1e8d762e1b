"""`GradientScenarioRecorder`: hooks on a model's input embedding and LM head that sum the scenario vectors
of every backward pass while attached (the math is in `hf_selfish.scenarios`)."""

from __future__ import annotations

import torch
from torch import nn

from .scenarios import (
    ScenarioVectors,
    embedding_modules,
    input_embedding_gradient,
    output_embedding_gradients,
    targets_from_grad_logits,
)

__all__ = ["GradientScenarioRecorder"]


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
        self._sums: torch.Tensor | None = None  # [3, V, d] float32, SCENARIO_NAMES order
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
            self._sums = torch.zeros(3, self.vocab_size, like.shape[-1], device=like.device)
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
