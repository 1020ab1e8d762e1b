"""The gradient-scenario figures of the selfish-loss paper: summed gradient norm per token, by scenario."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...scenarios import SCENARIO_NAMES
from ._common import (
    MAX_LABELLED_TOKENS,
    arm_style,
    new_figure,
    positive,
    rank_x,
    save,
    token_axis,
)

SCENARIO_KEYS = SCENARIO_NAMES
SCENARIO_LABELS = {
    "input": "1: as input",
    "target": "2.1: as target",
    "non_target": "2.2: as non-target",
}


def load_scenarios(path: str | os.PathLike) -> dict[str, np.ndarray]:
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
    norms: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    tokens: Sequence[str | None] | None = None,
    order: Sequence[int] | np.ndarray | None = None,
    title: str | None = None,
) -> Path:
    """The seed's figure: summed gradient norm per token (log y) for scenarios 1, 2.1 and 2.2.

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
    ax.set_yscale("log")
    token_axis(ax, order, tokens if labelled else None)
    if not labelled and size > MAX_LABELLED_TOKENS:
        ax.set_xscale("log")
    ax.set_ylabel("summed gradient norm (log)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _note_zeros(ax, [norms[k] for k in SCENARIO_KEYS])
    ax.set_title(title or "Gradient reaching each token's embedding, by scenario")
    return save(fig, path)


def plot_scenarios_comparison(
    per_arm: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    key: str = "non_target",
    tokens: Sequence[str | None] | None = None,
    order: Sequence[int] | np.ndarray | None = None,
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
    ax.set_yscale("log")
    token_axis(ax, order, tokens if labelled else None)
    if not labelled and size > MAX_LABELLED_TOKENS:
        ax.set_xscale("log")
    ax.set_ylabel("summed gradient norm (log)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(fontsize=8)
    _note_zeros(ax, [norms[key] for norms in checked.values()])
    key_name = SCENARIO_LABELS[key].replace(": as ", " (token as ") + ")"
    ax.set_title(title or f"Scenario {key_name}: summed gradient norm per arm")
    return save(fig, path)
