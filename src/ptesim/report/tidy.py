"""Tidy tables: one row per observation, one column per variable, rendered as markdown, CSV or JSON.

A command computes a :class:`Tidy` (its rows are plain dicts keyed by the JSON field names, numbers in
the units the names say: ``mem_bytes``, ``time_ns``, ``change_pct``) and hands it to :func:`emit`,
which prints it the way ``--json``/``--csv`` ask, or as a markdown table.  The JSON form and the
units are documented once in ``docs/schema.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptesim.report.tables import markdown_table
from ptesim.units import format_size


def _plain(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def size_cell(v: Any) -> str:
    """A byte count as the kernel's sysfs spells it (``65536`` -> ``64K``)."""
    return format_size(int(v))


def pct_cell(v: Any) -> str:
    return "-" if v is None else f"{v:+.1f}%"


def ms_from_ns_cell(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.3f}"


@dataclass(frozen=True)
class Column:
    """A column: its JSON/CSV key (with the unit in the name), its table title and cell format."""

    key: str
    title: str = ""
    fmt: Callable[[Any], str] = _plain
    #: A cell drawn from the whole row (e.g. a value with its interval); overrides ``fmt``.
    show: Callable[[Mapping[str, Any]], str] | None = None

    @property
    def heading(self) -> str:
        return self.title or self.key

    def cell(self, row: Mapping[str, Any]) -> str:
        return self.show(row) if self.show is not None else self.fmt(row.get(self.key))


def size_column(name: str) -> Column:
    """``<name>_bytes``, shown as ``64K``."""
    return Column(f"{name}_bytes", name, size_cell)


#: Columns of the sweep keys of :class:`ptesim.options.Combination`, by field name.
KEY_COLUMNS: dict[str, Column] = {
    "arch": Column("arch"),
    "preset": Column("preset"),
    "granule": size_column("granule"),
    "folio": size_column("folio"),
    "mem": size_column("mem"),
    "cpus": Column("cpus", "cpus", str),
}


def key_columns(varying: Sequence[str], *, always: Sequence[str] = ()) -> list[Column]:
    """The key columns of a sweep's table: the options that vary (and ``always``), in option order."""
    return [col for name, col in KEY_COLUMNS.items() if name in varying or name in always]


def key_values(combo: Any, names: Sequence[str]) -> dict[str, Any]:
    """The row values of a combination's sweep keys (sizes in bytes)."""
    return {KEY_COLUMNS[n].key: getattr(combo, n) for n in names}


@dataclass
class Tidy:
    """A tidy table and what a reader needs around it."""

    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    notes: list[str] = field(default_factory=list)
    #: Fields that hold for every row (the command's fixed settings), printed in the JSON object.
    meta: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        body = markdown_table(
            [c.heading for c in self.columns],
            [[c.cell(r) for c in self.columns] for r in self.rows],
        )
        parts = [self.title, "", body] if self.title else [body]
        if self.notes:
            parts += ["", *self.notes]
        return "\n".join(parts)

    def csv(self) -> str:
        """Every scalar field of every row (the shown columns first), so that a CSV stands alone."""
        keys = self.data_columns()
        for r in self.rows:
            keys += [k for k, v in r.items() if k not in keys and not isinstance(v, dict | list)]
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(keys)
        for r in self.rows:
            w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
        return out.getvalue()

    def data_columns(self) -> list[str]:
        """The keys of the shown columns that rows hold (a column may be drawn from other fields)."""
        return [c.key for c in self.columns if any(c.key in r for r in self.rows)]

    def to_json(self) -> dict[str, Any]:
        return {**self.meta, "columns": self.data_columns(), "rows": self.rows}


def add_output_options(p: argparse.ArgumentParser, *, plot: bool = False, json_help: str = "") -> None:
    """``--json`` and ``--csv`` (one of them), and ``--plot FILE`` for commands that plot."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help=json_help or "print JSON (docs/schema.md)")
    g.add_argument("--csv", action="store_true", help="print CSV, one row per table row")
    if plot:
        p.add_argument("--plot", metavar="FILE", help="also draw the result to FILE (PNG, SVG or PDF)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")


#: Namespace attribute where a command leaves its result document for ``--save``.
RESULT_ATTR = "result_document"


def record(args: argparse.Namespace, doc: Any) -> None:
    """Leave ``doc`` (the command's JSON document) for ``--save`` to store."""
    setattr(args, RESULT_ATTR, doc)


def emit(
    args: argparse.Namespace,
    table: Tidy,
    *,
    json_doc: Mapping[str, Any] | None = None,
    text: Callable[[], None] | None = None,
    plot: Callable[[str], None] | None = None,
) -> None:
    """Print ``table`` as ``--json`` (``json_doc`` when given), ``--csv``, or as text (``text()`` when
    given, else markdown); draw ``plot(FILE)`` for ``--plot FILE``; and record the JSON document for
    ``--save``.  The one output path of every command that prints a table."""
    record(args, json_doc if json_doc is not None else table.to_json())
    if getattr(args, "json", False):
        json.dump(json_doc if json_doc is not None else table.to_json(), sys.stdout, indent=2)
        print()
    elif getattr(args, "csv", False):
        sys.stdout.write(table.csv())
    elif text is not None:
        text()
    else:
        print(table.markdown())
    path = getattr(args, "plot", None)
    if path and plot is not None:
        plot(path)


def add_scheduler_option(p: argparse.ArgumentParser) -> None:
    """``--scheduler ADDRESS``: run independent cells on a Dask distributed cluster."""
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the independent cells on this Dask scheduler (tcp://host:8786) instead of local processes",
    )
