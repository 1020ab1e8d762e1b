"""`rank_bucket_nll`: per-token-group NLL (and top-1 accuracy, recall@5, MRR) as an `evaluate` module.

Load it from the package, no Hub access needed:

    import evaluate
    from hf_selfish.rank_buckets import rank_bucket_metric_path
    metric = evaluate.load(rank_bucket_metric_path(), groups={"rank_1-10": [...], "rank_11-20": [...]})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets
import evaluate
import numpy as np
import torch

from hf_selfish.evaluation import (
    IGNORE_INDEX,
    TokenStats,
    group_metrics,
    validate_groups,
)

_CITATION = """\
@misc{selfish_tokens,
  title = {Selfish Tokens: Hard Negative Sampling to Improve the Performance of Language Models in
           Low-Resource Languages},
  note = {Method text shipped with hf_selfish}
}
"""

_DESCRIPTION = """\
Per-group evaluation of a language model's next-token predictions. A group is a named set of token ids:
a frequency-rank bucket (e.g. "rank_41-50"), a language, or any id set; groups may overlap. Per group it
reports `nll` (mean over the group's tokens present in the data of each token's mean NLL, so every token
type weighs the same), `nll_weighted` (occurrence-weighted mean NLL), `tokens` (positions whose target is in
the group), `types` (distinct group tokens present) and, when ranks are given, `accuracy` (rank 1),
`recall_at_5` (rank <= 5) and `mrr` (mean 1 / rank), occurrence-weighted. Tokens absent from the data are
excluded, never counted as 0; a group with no positions reports only `tokens` = 0.

Inputs are per-position numbers, not logits, so the stored data stays O(positions), never
O(positions x vocabulary). Compute them from logits with `hf_selfish.evaluation.causal_nll_and_rank`
(causal LM, unshifted labels) or `target_nll_and_rank` (aligned targets).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per position, either the target's NLL (float), or a pair `[nll, rank]` where `rank` is
        1 + the number of vocabulary entries scored strictly higher than the target (ties count in the
        target's favour). Use one form for all positions.
    references: per position, the target token id (int); positions with -100 are skipped.
    groups: `{group name: [token ids]}`. Given here or to `evaluate.load(..., groups=...)`; here wins.
    vocab_size: size of the id space; default: 1 + the largest id among references and groups.
Returns:
    `{f"{group}_{stat}": value}` for stat in nll, nll_weighted, tokens, types (and accuracy, recall_at_5, mrr
    when ranks were given).
Examples:
    >>> metric = evaluate.load(rank_bucket_metric_path())
    >>> metric.compute(predictions=[[0.1, 1], [2.3, 3], [1.0, 1]], references=[0, 1, 0],
    ...                groups={"frequent": [0], "rare": [1, 2]})
    {'frequent_nll': 0.55, 'frequent_nll_weighted': 0.55, 'frequent_tokens': 2, 'frequent_types': 1,
     'frequent_accuracy': 1.0, 'frequent_recall_at_5': 1.0, 'frequent_mrr': 1.0, 'rare_nll': 2.3, ...}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RankBucketNll(evaluate.Metric):
    """Group metrics of per-position target NLL (and rank), reusing `hf_selfish.evaluation`."""

    def __init__(
        self,
        groups: Mapping[str, Sequence[int]] | None = None,
        vocab_size: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.groups = groups
        self.vocab_size = vocab_size

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("float64"), length=2),
                        "references": datasets.Value("int64"),
                    }
                ),
                datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}),
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        groups: Mapping[str, Sequence[int]] | None = None,
        vocab_size: int | None = None,
    ) -> dict[str, float | int]:
        groups = groups if groups is not None else self.groups
        if groups is None:
            raise ValueError(
                "rank_bucket_nll needs groups: pass groups={name: [token ids]} to compute() or evaluate.load()."
            )
        targets = torch.as_tensor(np.asarray(references, dtype=np.int64).reshape(-1))  # [N]
        values = np.asarray(predictions, dtype=np.float64)  # [N] or [N, 2]
        ranking = values.ndim == 2
        if values.shape[0] != targets.numel() or (ranking and values.shape[1] != 2) or values.ndim > 2:
            raise ValueError(
                f"predictions of shape {values.shape} do not match {targets.numel()} references; give one NLL "
                "or one [nll, rank] pair per reference."
            )
        nll = torch.as_tensor(values[:, 0] if ranking else values)  # [N]
        rank = torch.as_tensor(np.rint(values[:, 1]).astype(np.int64)) if ranking else torch.ones_like(targets)  # [N]

        vocab_size = vocab_size or self.vocab_size or _infer_vocab_size(targets, groups)
        validate_groups(groups, vocab_size)
        stats = TokenStats.zeros(vocab_size)
        stats.update(targets, nll, rank, ignore_index=IGNORE_INDEX)
        return group_metrics(stats, groups, ranking=ranking)


def _infer_vocab_size(targets: torch.Tensor, groups: Mapping[str, Sequence[int]]) -> int:
    """1 + the largest id among the (non-ignored) targets and the groups."""
    largest = int(targets.max()) if targets.numel() else 0
    for ids in groups.values():
        ids = list(ids)
        if ids:
            largest = max(largest, max(int(i) for i in ids))
    return largest + 1
