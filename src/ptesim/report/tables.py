"""Markdown tables in the commit-log style of the seed table (right-aligned numbers)."""

from __future__ import annotations

from collections.abc import Sequence


def _numeric(cell: str) -> bool:
    t = cell.strip().rstrip("%").replace(",", "").lstrip("+-")
    try:
        float(t)
    except ValueError:
        return False
    return True


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``| a | b |`` tables; columns whose cells are all numbers are right-aligned."""
    cols = len(headers)
    for r in rows:
        if len(r) != cols:
            raise ValueError(f"row has {len(r)} cells, expected {cols}")
    widths = [max([len(headers[i])] + [len(r[i]) for r in rows]) for i in range(cols)]
    right = [bool(rows) and all(_numeric(r[i]) for r in rows) for i in range(cols)]

    def fmt(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.rjust(w) if rt else c.ljust(w) for c, w, rt in zip(cells, widths, right, strict=True)
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if rt else ("-" * (w + 2)) for w, rt in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([fmt(headers), sep, *(fmt(r) for r in rows)])
