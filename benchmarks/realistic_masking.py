"""Random ``hidden``, ``weight`` and labels that the selfish margin masks like a trained LM's (benchmarks only).

Plain random logits with random labels mask about half the vocabulary at margin 2 (a random target
sits mid-row), and every row keeps a different random half. A trained model puts its targets near the
top of their rows, so at margin 2 it masks 98-99% of the entries (SmolLM2-135M on tinyshakespeare:
98.4%). :func:`realistic_inputs` builds that:

    logits[i, j] = scale * <g_i, r_j> + log p(j)

with ``g``, ``r`` standard normal (``<g, r> ~ N(0, 1)``), ``p`` a Zipf(1) unigram distribution over
the ids in a random order (a BPE vocabulary is only roughly frequency-ordered; ``sort_by_frequency``
puts the frequent ids first), carried by the last hidden unit, and labels drawn from the model's own
softmax (a calibrated model). ``scale`` is set by bisection on 256 rows so that the masked fraction at
the margin is ``masked_target``.
"""

from __future__ import annotations

import torch

from hf_selfish.ops.fused import default_chunk_size, linear_selfish_cross_entropy
from hf_selfish.ops.loss import mask_below_threshold
from hf_selfish.ops.sparse_backward import plan_sparse_backward

SEARCH_ROWS = 256


def _parts(n: int, d: int, vocab: int, seed: int, sort_by_frequency: bool, prior: float):
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(n, d - 1, generator=generator) / (d - 1) ** 0.25  # [N, d - 1]
    r = torch.randn(vocab, d - 1, generator=generator) / (d - 1) ** 0.25  # [V, d - 1]
    rank = torch.arange(1, vocab + 1) if sort_by_frequency else torch.randperm(vocab, generator=generator) + 1
    log_p = -torch.log(rank.double())
    log_p = (log_p - torch.logsumexp(log_p, 0)).float() * prior  # [V] log unigram probability, Zipf(1), weighted
    weight = torch.cat([r, log_p.unsqueeze(1)], dim=1)  # [V, d]
    return g, weight, generator


def _hidden(g: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.cat([g * scale, torch.ones(g.shape[0], 1)], dim=1)  # [n, d]: the last unit adds log p(j)


def _sample_labels(hidden, weight, generator, chunk: int = 256) -> torch.Tensor:
    labels = []
    for start in range(0, hidden.shape[0], chunk):
        probs = torch.softmax(hidden[start : start + chunk] @ weight.T, dim=1)  # [c, V]
        labels.append(torch.multinomial(probs, 1, generator=generator).squeeze(1))
    return torch.cat(labels)


def masked_fraction(hidden, weight, labels, margin: float) -> float:
    with torch.no_grad():
        _, fraction = linear_selfish_cross_entropy(hidden, weight, labels, margin, return_masked_fraction=True)
    return fraction.item()


def realistic_inputs(
    n: int,
    d: int,
    vocab: int,
    margin: float,
    masked_target: float = 0.985,
    seed: int = 0,
    sort_by_frequency: bool = False,
    prior: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``hidden [n, d]``, ``weight [V, d]`` (float32, CPU), ``labels [n]`` and the ``scale`` found."""
    g, weight, generator = _parts(n, d, vocab, seed, sort_by_frequency, prior)
    low, high = 0.0, 64.0
    for _ in range(14):  # bisection: the masked fraction grows with the scale (sharper rows)
        scale = (low + high) / 2
        hidden = _hidden(g[:SEARCH_ROWS], scale)
        labels = _sample_labels(hidden, weight, torch.Generator().manual_seed(seed + 1))
        if masked_fraction(hidden, weight, labels, margin) < masked_target:
            low = scale
        else:
            high = scale
    scale = (low + high) / 2
    hidden = _hidden(g, scale)
    return hidden, weight, _sample_labels(hidden, weight, generator), scale


def masking_stats(hidden, weight, labels, margin: float, chunk_size: int | None = None) -> dict:
    """Masked fraction and, averaged over the fused chunks: the share of the vocabulary some row keeps,
    the share of rows the sparse backward takes over their kept columns, and the share of the dense
    matmul size it runs (1 where the chunk takes the dense matmuls)."""
    chunk = chunk_size or default_chunk_size(weight.shape[0], hidden.shape[0])
    union, narrow, cost = [], [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk):
            logits = (hidden[start : start + chunk] @ weight.T).float()  # [c, V]
            logits -= logits.gather(1, labels[start : start + chunk].unsqueeze(1)) - margin
            n_masked = mask_below_threshold(logits, count=True)
            union.append((logits.amax(dim=0) != float("-inf")).double().mean().item())
            plan = plan_sparse_backward(logits, n_masked)
            narrow.append(0.0 if plan is None else plan.narrow_rows.numel() / logits.shape[0])
            cost.append(1.0 if plan is None else plan.cost(logits.shape[1]) / logits.numel())
            del logits
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "masked_fraction": round(masked_fraction(hidden, weight, labels, margin), 4),
        "chunk": chunk,
        "kept_columns_per_chunk": round(mean(union), 3),
        "sparse_rows": round(mean(narrow), 3),
        "matmul_share": round(mean(cost), 3),
    }
