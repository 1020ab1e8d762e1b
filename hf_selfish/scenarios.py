"""The three gradient scenarios of a token embedding (the hypothesis of the selfish-loss paper), computed exactly.

For a causal LM with input embedding E (rows looked up by input id) and output embedding W (the LM head,
`logits = H @ W.T`), the gradient a token row receives splits into:

1. **input**: `dLoss/d(embeddings output)` scattered onto rows by input id (`index_add`);
2.1 **target**: `sum_n G[n, y_n] * H[n]` onto row `y_n`, over positions `n` where the token is the label;
2.2 **non-target**: `sum_n G[n, v] * H[n]` onto row `v` over positions where `v` is not the label,

with `H [N, d]` the hidden states entering the LM head and `G = dLoss/dlogits [N, V]`. So
`E.grad = input` and `W.grad = target + non_target = G.T @ H`; for tied embeddings (GPT-2) the shared
weight's grad is the sum of all three, which `.grad` alone cannot split. Nothing here materialises
`[N, V, d]`: the target part is an `index_add` of `[N, d]` rows, the non-target part is `G.T @ H` minus it.

Two ways to get the tensors:

- `compute_scenario_vectors(model, input_ids, labels, margin=...)`: a standalone measurement on one batch
  (one forward and one backward, model parameters' `.grad` untouched); `G` is the gradient of
  `hf_selfish.loss.selfish_causal_lm_loss` (cross-entropy for `margin=None`), targets come from the labels.
- `GradientScenarioRecorder(model)`: hooks that ride along the training step's own forward and backward,
  so `G` is whatever loss is really being trained, with its real scaling (`num_items_in_batch`, gradient
  accumulation, ...). It finds each row's target as the single negative entry of `G`, which is exact for
  any loss whose logit gradient is `w * (softmax over kept logits - onehot)` with `w >= 0`:
  cross-entropy and the selfish loss (see `targets_from_grad_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .files import atomic_path
from .ops.loss import selfish_causal_lm_loss, shift_causal_labels, upcast

SCENARIO_NAMES = ("input", "target", "non_target")


@dataclass(frozen=True)
class ScenarioVectors:
    """Per-row gradient contributions of the three scenarios, each `[V, d]`."""

    input: torch.Tensor  # [V, d] scenario 1
    target: torch.Tensor  # [V, d] scenario 2.1
    non_target: torch.Tensor  # [V, d] scenario 2.2

    def norms(self) -> ScenarioNorms:
        """L2 norm of every row, in float64."""
        return ScenarioNorms(*(vector.double().norm(dim=-1) for vector in self.stacked()))

    def stacked(self) -> torch.Tensor:
        """The three vectors as one `[3, V, d]` tensor, in `SCENARIO_NAMES` order."""
        return torch.stack([self.input, self.target, self.non_target])


@dataclass(frozen=True)
class ScenarioNorms:
    """Per-token gradient norms of the three scenarios, each `[V]` (summed over steps when accumulated)."""

    input: torch.Tensor  # [V] scenario 1
    target: torch.Tensor  # [V] scenario 2.1
    non_target: torch.Tensor  # [V] scenario 2.2

    def stacked(self) -> torch.Tensor:
        """The three norms as one `[3, V]` tensor, in `SCENARIO_NAMES` order."""
        return torch.stack([self.input, self.target, self.non_target])

    @classmethod
    def from_stacked(cls, stacked: torch.Tensor) -> ScenarioNorms:
        """Inverse of `stacked()`: `[3, V]` -> `ScenarioNorms`."""
        if stacked.dim() != 2 or stacked.shape[0] != 3:
            raise ValueError(f"expected a [3, V] tensor of scenario norms, got shape {tuple(stacked.shape)}")
        return cls(*stacked.unbind(0))

    @property
    def total(self) -> torch.Tensor:
        """`input + target + non_target`, `[V]`."""
        return self.input + self.target + self.non_target


# ---------------------------------------------------------------------------------------------------------
# Pure math
# ---------------------------------------------------------------------------------------------------------


def input_embedding_gradient(
    input_ids: torch.Tensor, grad_embeds: torch.Tensor, vocab_size: int, *, padding_idx: int | None = None
) -> torch.Tensor:
    """Scenario 1: `dLoss/d(embeddings output)` summed onto the rows of the ids that produced it.

    Args:
        input_ids: `[...]` token ids fed to the embedding.
        grad_embeds: `[..., d]` gradient of the loss w.r.t. the embedding output.
        vocab_size: number of rows `V`.
        padding_idx: row that `nn.Embedding(padding_idx=...)` never updates; it gets no gradient here either.

    Returns:
        `[V, d]` float32 (or wider) tensor equal to the embedding weight's gradient.
    """
    ids = input_ids.reshape(-1)  # [M]
    grads = upcast(grad_embeds.reshape(ids.shape[0], -1))  # [M, d] float32 (float64 stays)
    _check_ids(ids, vocab_size, "input_ids")
    if padding_idx is not None:
        grads = grads.masked_fill((ids == padding_idx).unsqueeze(-1), 0.0)
    out = grads.new_zeros(vocab_size, grads.shape[-1])  # [V, d]
    return out.index_add_(0, ids, grads)


def output_embedding_gradients(
    hidden: torch.Tensor, grad_logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenarios 2.1 and 2.2: split the LM-head weight gradient `G.T @ H` by target / non-target entries.

    Args:
        hidden: `[N, d]` hidden states entering the LM head.
        grad_logits: `[N, V]` gradient of the loss w.r.t. the LM head's output.
        targets: `[N]` label of each row (`ignore_index` for rows without one; their `G` entries all count
            as non-target, which is correct since a trained loss gives them a zero row).

    Returns:
        `(target, non_target)`, each `[V, d]`; they sum to `G.T @ H`.
    """
    hidden = upcast(hidden.reshape(-1, hidden.shape[-1]))  # [N, d] float32 (float64 stays)
    grad_logits = upcast(grad_logits.reshape(hidden.shape[0], -1))  # [N, V]
    targets = targets.reshape(-1)  # [N]
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"targets has {targets.shape[0]} rows but hidden has {hidden.shape[0]}; they must match")
    vocab_size = grad_logits.shape[-1]
    has_target = targets != ignore_index  # [N]
    rows = has_target.nonzero().squeeze(-1)  # [N']
    tokens = targets[rows]  # [N']
    _check_ids(tokens, vocab_size, "targets")
    coef = grad_logits[rows, tokens]  # [N'] G[n, y_n]
    target = hidden.new_zeros(vocab_size, hidden.shape[-1])  # [V, d]
    target.index_add_(0, tokens, coef.unsqueeze(-1) * hidden[rows])
    full = grad_logits.t() @ hidden  # [V, d]
    return target, full - target


def scenario_vectors(
    hidden: torch.Tensor,
    grad_logits: torch.Tensor,
    targets: torch.Tensor,
    input_ids: torch.Tensor,
    grad_embeds: torch.Tensor,
    *,
    padding_idx: int | None = None,
    ignore_index: int = -100,
) -> ScenarioVectors:
    """All three scenarios from the tensors of one forward/backward (shapes as in the two functions above)."""
    target, non_target = output_embedding_gradients(hidden, grad_logits, targets, ignore_index=ignore_index)
    inputs = input_embedding_gradient(input_ids, grad_embeds, target.shape[0], padding_idx=padding_idx)
    return ScenarioVectors(inputs, target, non_target)


def targets_from_grad_logits(grad_logits: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Each row's target, read off `G = dLoss/dlogits` itself: its single negative entry.

    For cross-entropy and the selfish loss, `G[n] = w_n * (q_n - onehot(y_n))` with `q_n` a softmax over the
    kept logits and `w_n >= 0`, so `G[n, y_n] <= 0` and every other entry is `>= 0`. A row with no negative
    entry (ignored row, or `q[y] == 1` in floating point) gets `ignore_index`: its target entry is exactly 0,
    so either split gives the same vectors.

    Args:
        grad_logits: `[N, V]`.

    Returns:
        `[N]` long tensor of target ids or `ignore_index`.

    Raises:
        ValueError: a row has more than one negative entry (label smoothing or another loss that is not
            `softmax - onehot`): target and non-target cannot be told apart from the gradient.
    """
    grad_logits = grad_logits.reshape(-1, grad_logits.shape[-1])  # [N, V]
    negative = grad_logits < 0  # [N, V]
    counts = negative.sum(dim=-1)  # [N]
    most = int(counts.max()) if counts.numel() else 0
    if most > 1:
        raise ValueError(
            f"dLoss/dlogits has {most} negative entries in one row; gradient scenarios need a loss whose logit "
            "gradient is `softmax - onehot` (cross-entropy or selfish loss). Turn off label smoothing or other "
            "loss terms, or turn off the gradient-scenario recording."
        )
    targets = grad_logits.argmin(dim=-1)  # [N]
    return targets.masked_fill(counts == 0, ignore_index)


def non_target_share(norms: ScenarioNorms, groups: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Share of scenario 2.2 in the total gradient norm of each group of tokens.

    `share[g] = sum_{v in g} non_target[v] / sum_{v in g} (input[v] + target[v] + non_target[v])`.
    A group that is empty or received no gradient at all is left out (absent, never NaN).

    Args:
        norms: per-token norms, `[V]` each.
        groups: ordered `{name: token ids}`, e.g. frequency-rank buckets.
    """
    total = norms.total.double().cpu()  # [V]
    non_target = norms.non_target.double().cpu()  # [V]
    shares = {}
    for name, ids in groups.items():
        index = torch.as_tensor(list(ids), dtype=torch.long)
        _check_ids(index, total.shape[0], f"group {name!r}")
        group_total = float(total[index].sum())
        if group_total > 0:
            shares[name] = float(non_target[index].sum()) / group_total
    return shares


# ---------------------------------------------------------------------------------------------------------
# On a model
# ---------------------------------------------------------------------------------------------------------


def compute_scenario_vectors(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    margin: float | None = 2.0,
    *,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> ScenarioVectors:
    """Exact scenario vectors of one batch for any `AutoModelForCausalLM`, in one forward and one backward.

    The loss is the one `SelfishTrainer` trains: `selfish_causal_lm_loss(logits, labels, margin)`
    (cross-entropy for `margin=None`), with transformers' causal shift and reduction (sum over the
    labelled tokens / `num_items_in_batch`, default their count). `G` is its autograd gradient on a
    detached logits leaf, pushed back through the model once. Parameters' `.grad` is left untouched;
    dropout follows `model.training` (call `model.eval()` to switch it off).

    Args:
        input_ids: `[B, T]`.
        labels: `[B, T]` (unshifted, as passed to a HF causal LM), `ignore_index` where there is no label.
        attention_mask: `[B, T]` or None.

    Returns:
        `ScenarioVectors`, each `[V, d]` float32; `input + target + non_target` is the gradient of a tied
        embedding, `target + non_target` that of an untied LM head, `input` that of an untied input
        embedding.
    """
    if input_ids.shape != labels.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must have one shape")
    embedding, head = embedding_modules(model)
    captured: dict[str, torch.Tensor] = {}

    def keep_embeds(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        captured["input_ids"] = args[0]
        if not output.requires_grad:  # frozen embeddings: still measure the gradient that reaches them
            output = output.detach().requires_grad_(True)
        captured["embeds"] = output
        return output

    def keep_head_io(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured["hidden"] = args[0]
        captured["raw_logits"] = output

    handles = [embedding.register_forward_hook(keep_embeds), head.register_forward_hook(keep_head_io)]
    try:
        with torch.enable_grad():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, T, V]
    finally:
        for handle in handles:
            handle.remove()
    with torch.enable_grad():
        leaf = logits.detach().requires_grad_(True)  # [B, T, V] after any post-head transform (soft-capping)
        loss = selfish_causal_lm_loss(
            leaf, labels, margin, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch
        )
        (grad_final,) = torch.autograd.grad(loss, leaf)  # [B, T, V]
    grad_raw, grad_embeds = torch.autograd.grad(
        logits, [captured["raw_logits"], captured["embeds"]], grad_outputs=grad_final.to(logits.dtype)
    )
    return scenario_vectors(
        captured["hidden"].detach(),
        grad_raw,
        shift_causal_labels(labels, ignore_index),
        captured["input_ids"],
        grad_embeds,
        padding_idx=getattr(embedding, "padding_idx", None),
        ignore_index=ignore_index,
    )


def compute_scenario_norms(model: nn.Module, *args: Any, **kwargs: Any) -> ScenarioNorms:
    """Per-token norms `[V]` of `compute_scenario_vectors` (same arguments)."""
    return compute_scenario_vectors(model, *args, **kwargs).norms()


# ---------------------------------------------------------------------------------------------------------
# Saved files
# ---------------------------------------------------------------------------------------------------------


def save_scenario_norms(norms: ScenarioNorms, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write `norms` as safetensors (keys `input`, `target`, `non_target`, float64 `[V]`) atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    stacked = norms.stacked().detach().double().cpu()  # [3, V]
    tensors = {name: tensor.contiguous() for name, tensor in zip(SCENARIO_NAMES, stacked)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=dict(metadata or {}))


def load_scenario_norms(path: str | Path) -> tuple[ScenarioNorms, dict[str, str]]:
    """Read a file written by `save_scenario_norms`: `(norms, metadata)`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        missing = [name for name in SCENARIO_NAMES if name not in handle.keys()]
        if missing:
            raise ValueError(f"{path} is not a scenarios file: it lacks the tensors {missing}")
        norms = ScenarioNorms(*(handle.get_tensor(name) for name in SCENARIO_NAMES))
        return norms, dict(handle.metadata() or {})


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------


def _check_ids(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"{what} holds ids in [{int(ids.min())}, {int(ids.max())}], outside the vocabulary [0, {vocab_size}); "
            "use ids of the model's vocabulary"
        )


def embedding_modules(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """`(input embedding, LM head)` of a HF causal LM, or a ValueError naming what is missing."""
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    head = get_out() if callable(get_out) else None
    if embedding is None or head is None:
        raise ValueError(
            f"{type(model).__name__} has no input embedding or no LM head (get_input_embeddings() -> "
            f"{type(embedding).__name__}, get_output_embeddings() -> {type(head).__name__}); gradient scenarios "
            "need a causal LM such as AutoModelForCausalLM"
        )
    return embedding, head
