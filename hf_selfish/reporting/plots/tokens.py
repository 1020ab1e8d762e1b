"""Per-token figures by train frequency rank: the token distribution, each token's final eval NLL, and the
gradient-scenario norms of the selfish-loss paper (summed gradient norm per token, by scenario)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...frequency import frequency_order
from ...metric_names import describe_group, group_label
from ...scenarios import SCENARIO_NAMES
from ._common import (
    MAX_LABELLED_TOKENS,
    IdGroups,
    Order,
    PathLike,
    Tokens,
    arm_style,
    new_figure,
    positive,
    rank_x,
    save,
    token_axis,
)


def plot_token_distribution(
    counts: Sequence[int] | np.ndarray,
    path: PathLike,
    *,
    tokens: Tokens = None,
    groups: IdGroups | None = None,
    title: str | None = None,
) -> Path:
    """Train-split count of each token by frequency rank, log y; bars coloured by group when given.

    Small vocabularies (≤ ``MAX_LABELLED_TOKENS``) get one bar per token labelled with its characters;
    bigger ones a rank-count line on log-log axes without per-token labels.
    """
    counts = np.asarray(counts)
    if tokens is not None and len(tokens) != counts.size:
        raise ValueError(f"tokens has {len(tokens)} entries but counts has {counts.size}; give one per token id")
    order = frequency_order(counts)
    sorted_counts = counts[order].astype(float)
    labelled = tokens is not None and counts.size <= MAX_LABELLED_TOKENS
    if counts.size <= MAX_LABELLED_TOKENS:
        fig = new_figure(max(8.0, 0.13 * counts.size + 2), 4.5)
        ax = fig.add_subplot()
        x = rank_x(order, labelled)
        colors = ["0.5"] * counts.size
        handles = {}
        if groups:
            group_of = {}
            for g_index, (name, ids) in enumerate(groups.items()):
                for token_id in ids:
                    group_of.setdefault(int(token_id), (g_index, name))
            for pos, token_id in enumerate(order):
                if int(token_id) in group_of:
                    g_index, name = group_of[int(token_id)]
                    colors[pos] = f"C{g_index % 10}"
                    handles.setdefault(name, colors[pos])
        ax.bar(x, positive(sorted_counts), color=colors, width=0.8)
        if handles:
            from matplotlib.patches import Patch

            ax.legend(
                [Patch(color=c) for c in handles.values()], [group_label(n) for n in handles], fontsize=8, ncols=2
            )
        token_axis(ax, order, tokens if labelled else None)
    else:
        fig = new_figure(8.0, 4.5)
        ax = fig.add_subplot()
        ax.plot(np.arange(1, counts.size + 1), positive(sorted_counts), color="C0")
        ax.set_xscale("log")
        ax.set_xlabel("train frequency rank (1 = most frequent)")
    ax.set_yscale("log")
    ax.set_ylabel("train occurrences (log)")
    ax.set_title(title or f"Token distribution ({counts.size} tokens, {int(counts.sum()):,} train occurrences)")
    ax.grid(axis="y", which="major", alpha=0.3)
    return save(fig, path)


def plot_token_nll(
    per_arm: Mapping[str, Sequence[float | None] | np.ndarray],
    counts: Sequence[int] | np.ndarray,
    path: PathLike,
    *,
    groups: IdGroups | None = None,
    tokens: Tokens = None,
    title: str | None = None,
) -> Path:
    """Final eval NLL of each token (``per_arm[arm][id]``, None/NaN: absent) against its train frequency rank.

    Dotted vertical lines separate rank groups (``groups`` named ``rank_*``) when given.
    """
    counts = np.asarray(counts)
    order = frequency_order(counts)
    labelled = tokens is not None and counts.size <= MAX_LABELLED_TOKENS
    fig = new_figure(max(8.0, 0.13 * counts.size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = rank_x(order, labelled)
    for index, (arm, values) in enumerate(per_arm.items()):
        values = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
        if values.size != counts.size:
            raise ValueError(f"per-token NLL of arm {arm!r} has {values.size} entries, expected {counts.size}")
        ax.plot(x, values[order], **arm_style(index), marker="o", ms=3, lw=0.8, label=arm)
    if groups:
        position = {int(token_id): pos for pos, token_id in enumerate(order)}
        for name, ids in list(groups.items())[1:]:
            if describe_group(name).kind == "rank" and ids:
                start = min(position[int(i)] for i in ids)
                ax.axvline(x[start] - (0.5 if labelled else 0), color="0.6", ls=":", lw=0.8)
    token_axis(ax, order, tokens if labelled else None)
    ax.set_ylabel("final eval NLL of the token")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Per-token eval NLL by train frequency rank (gaps: absent from eval)")
    return save(fig, path)


SCENARIO_KEYS = SCENARIO_NAMES
SCENARIO_LABELS = {"input": "1: as input", "target": "2.1: as target", "non_target": "2.2: as non-target"}


def load_scenarios(path: PathLike) -> dict[str, np.ndarray]:
    """Read ``scenarios.safetensors``: float ``[V]`` tensors ``input``, ``target``, ``non_target``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no scenarios file at {str(path)!r}; turn scenarios on in the recipe to record them")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read scenarios file {str(path)!r}: {err}") from None
    return _check_norms(tensors, str(path))


def _check_norms(norms: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    missing = [k for k in SCENARIO_KEYS if k not in norms]
    if missing:
        raise ValueError(f"scenarios {where!r} lack {missing}; expected tensors named {list(SCENARIO_KEYS)}")
    arrays = {k: np.asarray(norms[k], dtype=np.float64).reshape(-1) for k in SCENARIO_KEYS}
    sizes = {k: v.size for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"scenarios {where!r} have tensors of different lengths {sizes}; each must be [V]")
    return arrays


def _finish_norm_axes(ax, order: np.ndarray, tokens: Tokens, arrays: Sequence[np.ndarray]) -> None:
    """Log y of summed norms, tokens on x (log x when there are too many to label), legend, zero note."""
    ax.set_yscale("log")
    token_axis(ax, order, tokens)
    if tokens is None and len(order) > MAX_LABELLED_TOKENS:
        ax.set_xscale("log")
    ax.set_ylabel("summed gradient norm (log)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _note_zeros(ax, arrays)


def _note_zeros(ax, arrays: Sequence[np.ndarray]) -> None:
    """Say so on the figure when some norms are 0: they are gaps on the log axis, not missing data."""
    zeros = sum(int((np.asarray(a) <= 0).sum()) for a in arrays)
    if zeros:
        ax.text(
            0.99,
            0.01,
            f"{zeros} zero norm(s) not drawn (log axis)",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.4",
        )


def plot_scenarios(
    norms: Mapping[str, Any], path: PathLike, *, tokens: Tokens = None, order: Order = None, title: str | None = None
) -> Path:
    """The selfish-loss paper's figure: summed gradient norm per token (log y) for scenarios 1, 2.1 and 2.2.

    ``norms``: ``[V]`` arrays named ``input``, ``target``, ``non_target``. ``order``: token ids by
    frequency rank (see `frequency_order`); default id order. Zeros (a token never seen as input or
    target) are gaps on the log axis.
    """
    norms = _check_norms(norms, "norms")
    size = norms["input"].size
    order = np.arange(size) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(size)):
        raise ValueError(f"order must be a permutation of the {size} token ids, got {order.size} entries")
    labelled = tokens is not None and size <= MAX_LABELLED_TOKENS
    fig = new_figure(max(8.0, 0.13 * size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = rank_x(order, labelled)
    markers = {"input": "o", "target": "s", "non_target": "^"}
    for index, key in enumerate(SCENARIO_KEYS):
        ax.plot(
            x,
            positive(norms[key][order]),
            color=f"C{index}",
            marker=markers[key],
            ms=3,
            lw=0.8,
            label=SCENARIO_LABELS[key],
        )
    _finish_norm_axes(ax, order, tokens if labelled else None, [norms[k] for k in SCENARIO_KEYS])
    ax.set_title(title or "Gradient reaching each token's embedding, by scenario")
    return save(fig, path)


def plot_scenarios_comparison(
    per_arm: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    *,
    key: str = "non_target",
    tokens: Tokens = None,
    order: Order = None,
    title: str | None = None,
) -> Path:
    """One scenario (default 2.2, the token as non-target) for every arm, log y, tokens by frequency rank."""
    if key not in SCENARIO_KEYS:
        raise ValueError(f"scenario key must be one of {list(SCENARIO_KEYS)}, got {key!r}")
    if not per_arm:
        raise ValueError("plot_scenarios_comparison needs the scenario norms of at least one arm")
    checked = {arm: _check_norms(norms, f"arm {arm}") for arm, norms in per_arm.items()}
    size = next(iter(checked.values()))[key].size
    order = np.arange(size) if order is None else np.asarray(order)
    labelled = tokens is not None and size <= MAX_LABELLED_TOKENS
    fig = new_figure(max(8.0, 0.13 * size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = rank_x(order, labelled)
    for index, (arm, norms) in enumerate(checked.items()):
        if norms[key].size != size:
            raise ValueError(f"arm {arm!r} has {norms[key].size} tokens in its scenarios, the first arm {size}")
        ax.plot(x, positive(norms[key][order]), **arm_style(index), marker="o", ms=3, lw=0.8, label=arm)
    _finish_norm_axes(ax, order, tokens if labelled else None, [norms[key] for norms in checked.values()])
    key_name = SCENARIO_LABELS[key].replace(": as ", " (token as ") + ")"
    ax.set_title(title or f"Scenario {key_name}: summed gradient norm per arm")
    return save(fig, path)


def head_non_target_share(norms: Mapping[str, Any]) -> np.ndarray:
    """Per token, the share of scenario 2.2 in its output-embedding gradient: ``2.2 / (2.1 + 2.2)``, ``[V]``.

    The summed norms of the token as non-target and as target (scenario 1, the input role, is left out:
    the selfish variants differ in what they do to the head's update). NaN for a token whose output
    embedding got no gradient.
    """
    norms = _check_norms(norms, "norms")
    head = norms["target"] + norms["non_target"]  # [V]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(head > 0, norms["non_target"] / head, np.nan)


def plot_head_share_comparison(
    per_arm: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    *,
    tokens: Tokens = None,
    order: Order = None,
    title: str | None = None,
) -> Path:
    """Each arm's share of scenario 2.2 in each token's output-embedding gradient (:func:`head_non_target_share`),
    tokens by frequency rank: how much of a rare token's head update is the push-down as a non-target."""
    if not per_arm:
        raise ValueError("plot_head_share_comparison needs the scenario norms of at least one arm")
    shares = {arm: head_non_target_share(norms) for arm, norms in per_arm.items()}
    size = next(iter(shares.values())).size
    order = np.arange(size) if order is None else np.asarray(order)
    labelled = tokens is not None and size <= MAX_LABELLED_TOKENS
    fig = new_figure(max(8.0, 0.13 * size + 2) if labelled else 9.0, 4.5)
    ax = fig.add_subplot()
    x = rank_x(order, labelled)
    for index, (arm, share) in enumerate(shares.items()):
        if share.size != size:
            raise ValueError(f"arm {arm!r} has {share.size} tokens in its scenarios, the first arm {size}")
        ax.plot(x, share[order], **arm_style(index), marker="o", ms=3, lw=0.8, label=arm)
    token_axis(ax, order, tokens if labelled else None)
    if not labelled and size > MAX_LABELLED_TOKENS:
        ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("2.2 / (2.1 + 2.2) of summed norms")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Share of the push-down as non-target (2.2) in each token's output-embedding update")
    return save(fig, path)
