"""The margin of the selfish loss: validation, the "auto" rule, and schedules over training.

``auto``: with vocabulary ``V`` and nucleus ``top_p``, ``margin = ln(V) - ln(1 - top_p)``. The margin
masks tokens with ``p < P(target) · e^-margin = P(target) · (1 - top_p) / V``; even all ``V`` of them
together hold less than ``1 - top_p``, so every masked negative lies outside the top-p nucleus that
sampling draws from: training stops pushing only tokens that could never be sampled
(V = 200k, top_p = 0.99 gives 16.8; V = 65 gives 8.78).

A linear or cosine schedule can end at "no masking" (end margin ``inf``: plain cross-entropy at the
end). A margin cannot move linearly to infinity, so that schedule moves the masking ratio instead:
the loss masks probabilities below ``P(target) * exp(-margin)``, and ``exp(-margin)`` goes linearly
(or along the cosine) from ``exp(-start)`` to 0, i.e. ``margin = start - ln(1 - progress)``, which is
plain cross-entropy (``None``) from the last step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .loss import validate_margin

__all__ = [
    "AUTO",
    "NULL_WORDS",
    "SCHEDULES",
    "MarginSchedule",
    "auto_margin",
    "check_schedule",
    "check_top_p",
    "margin_label",
    "parse_margin",
    "parse_margin_end",
]

AUTO = "auto"
SCHEDULES = ("constant", "linear", "cosine")
# How a recipe or a command line writes "no value" (YAML's null and ~, Python's None); a margin also
# reads "none" and "" as no margin, i.e. plain cross-entropy.
NULL_WORDS = frozenset({"None", "null", "~"})


def check_top_p(top_p: float) -> float:
    if not 0.0 < top_p < 1.0:
        raise ValueError(f"selfish_top_p must lie strictly between 0 and 1, got {top_p!r}")
    return top_p


def auto_margin(vocab_size: int, top_p: float = 0.99) -> float:
    """``ln(V) - ln(1 - top_p)``, the "auto" margin for a vocabulary of ``vocab_size`` tokens."""
    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"auto margin needs a vocabulary of at least 2 tokens, got {vocab_size!r}")
    return math.log(vocab_size) - math.log1p(-check_top_p(top_p))


def check_schedule(kind: str, start, end) -> None:
    """A schedule name from `SCHEDULES`; linear/cosine need both a start and an end margin."""
    if kind not in SCHEDULES:
        raise ValueError(f"selfish_margin_schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind != "constant" and (start is None or end is None):
        # (an end of "no masking" is math.inf here: parse_margin_end)
        raise ValueError(
            f"a {kind} margin schedule needs a start margin (selfish_margin) and an end margin "
            f"(selfish_margin_end), got start={start!r}, end={end!r}"
        )


# How an end margin says "no masking at the end" (an annealing to plain cross-entropy)
INFINITE_WORDS = frozenset({"inf", "+inf", ".inf", "infinity"})


def parse_margin_end(value: float | str | None) -> float | str | None:
    """An end margin: as :func:`parse_margin`, but ``inf`` (a float or "inf") stays ``math.inf``: no masking at the
    end of a linear/cosine schedule (``None`` means no end margin was given)."""
    if isinstance(value, str) and value.strip().lower() in INFINITE_WORDS:
        return math.inf
    if isinstance(value, float) and value == math.inf:
        return math.inf
    return parse_margin(value)


def parse_margin(value: float | str | None) -> float | str | None:
    """A margin setting: a non-negative number, ``"auto"``, or ``None`` (plain cross-entropy).

    Strings from recipes and command lines ("2", "null", "auto") are accepted; anything else raises
    a ``ValueError`` naming the value.
    """
    if isinstance(value, str):
        text = value.strip()
        if text in NULL_WORDS or text.lower() in ("none", ""):
            return None
        if text.lower() == AUTO:
            return AUTO
    return validate_margin(value)


@dataclass(frozen=True)
class MarginSchedule:
    """The margin as a function of training progress: constant, or linear/cosine from start to end.

    ``None`` for ``start`` is plain cross-entropy throughout (the baseline arm).
    """

    start: float | None
    end: float | None = None
    kind: str = "constant"

    def __post_init__(self):
        check_schedule(self.kind, self.start, self.end)

    @classmethod
    def from_settings(cls, margin, end, kind: str, vocab_size: int, top_p: float) -> MarginSchedule:
        """Resolve ``"auto"`` (start or end) against the model's vocabulary."""

        def resolve(value):
            value = parse_margin_end(value)
            return auto_margin(vocab_size, top_p) if value == AUTO else value

        return cls(start=resolve(parse_margin(margin)), end=resolve(end), kind=kind)

    def at(self, step: int, total_steps: int) -> float | None:
        """The margin at ``step`` of ``total_steps`` (the end margin from the last step on)."""
        if self.kind == "constant" or self.start is None:
            return self.start
        progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
        if self.kind == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        if self.end == math.inf:  # exp(-margin) linear from exp(-start) to 0 (see the module docstring)
            return None if progress >= 1.0 else self.start - math.log1p(-progress)
        return self.start + (self.end - self.start) * progress


def margin_label(setting: float | str | None, resolved: float | None = None) -> str:
    """How a margin reads in tables, cards and logs: ``none (plain CE)``, ``2``, ``auto = 9.47``."""
    if setting is None and resolved is None:
        return "none (plain CE)"
    if setting == AUTO:
        return AUTO if resolved is None else f"auto = {resolved:.3g}"
    if isinstance(setting, str):
        return setting
    return f"{float(setting if setting is not None else resolved):g}"
