"""Markdown tables that stay readable: never wider than `MAX_TABLE_COLUMNS`.

A table with more columns is cut into several tables of the same rows, one under the other, each
repeating the leading ``keep`` columns (the row label, the token counts, the baseline) so that every
part reads alone. Report tables choose a layout that fits first (arms as columns: the baseline's value,
then each arm's Δ); cutting is the fallback for comparisons with many arms or groups.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model_card import markdown_table

__all__ = ["MAX_TABLE_COLUMNS", "column_chunks", "fitted_table"]

MAX_TABLE_COLUMNS = 12


def column_chunks(width: int, keep: int, max_columns: int = MAX_TABLE_COLUMNS) -> list[list[int]]:
    """Column indices of each part: the first ``keep`` columns, then the next slice of the others."""
    if not 0 <= keep < max_columns:
        raise ValueError(f"keep must be in [0, {max_columns}), got {keep!r}")
    kept = list(range(min(keep, width)))
    rest = list(range(len(kept), width))
    step = max_columns - len(kept)
    return [kept + rest[i : i + step] for i in range(0, len(rest), step)] or [kept]


def fitted_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    align: Sequence[str] | None = None,
    *,
    keep: int = 1,
    max_columns: int = MAX_TABLE_COLUMNS,
) -> str:
    """`markdown_table`, cut into parts of at most ``max_columns`` columns (separated by a blank line)."""
    align = list(align or ["l"] + ["r"] * (len(header) - 1))
    parts = []
    for columns in column_chunks(len(header), keep, max_columns):
        parts.append(
            markdown_table(
                [header[i] for i in columns], [[row[i] for i in columns] for row in rows], [align[i] for i in columns]
            )
        )
    return "\n\n".join(parts)
