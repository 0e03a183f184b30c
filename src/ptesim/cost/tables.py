"""Published tables as input: parse the CSV format of ``shared/data/published`` and price its cells.

The format (one published number a row) is defined in the README beside the tables::

    table,machine,workload,op,mem,folio,mapping,cpus,baseline,variant,metric,value,source

Three steps, each a plain function: :func:`read_tables` parses and checks the files (every error is
one line naming the file, line and cell), :func:`cell_runs` names the model runs a cell needs, and
:func:`model_log` prices a cell with a profile.  Rendering is the command's.

Every cell is compared on one scale, the natural logarithm of a time ratio, so that a table of
+3654% and one of -0.6% can be fitted together:

* ``runtime_change_pct``: ``ln(T_variant / T_baseline)`` of the op's time;
* ``throughput_change_pct``: ``ln(X_variant / X_baseline)`` of iterations per second;
* ``seconds``: ``ln(T_variant / 1 s)``.

A ``latency`` cell times only its op: for ``fork`` the parent's fork() call (the copy of the
mapping plus the fixed cost of copying a process, ``process_ns.fork``), for ``munmap``,
``dontneed`` and ``dontneed-pages`` the call(s) over the whole mapping.  The mapping, its population
and (for ``pte``) the split of PMD mappings are set-up, counted apart and left out.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ptesim.cost.model import Work, change, iteration_time, merge_phases
from ptesim.cost.profile import Profile, load_profile, shipped_profiles
from ptesim.cost.runs import RunSpec, result, run_spec
from ptesim.errors import UsageError
from ptesim.units import parse_size

COLUMNS = (
    "table",
    "machine",
    "workload",
    "op",
    "mem",
    "folio",
    "mapping",
    "cpus",
    "baseline",
    "variant",
    "metric",
    "value",
    "source",
)
WORKLOADS = ("latency", "wis-fork-exit")
METRICS = ("throughput_change_pct", "runtime_change_pct", "seconds")
#: Phases that are set-up, not the timed op of a latency cell.
SETUP_PHASES = ("setup", "populate")


@dataclass(frozen=True)
class PubCell:
    """One published number and what the model must run to predict it."""

    table: str
    machine: str
    workload: str
    op: str
    mem: int
    folio: int
    mapping: str
    cpus: int
    baseline: str  # "" for a ``seconds`` cell
    variant: str
    metric: str
    value: float
    source: str
    file: str
    line: int
    index: int  # 1-based position of the cell in its table

    @property
    def id(self) -> str:
        """``table#n``: the n-th cell of its table."""
        return f"{self.table}#{self.index}"

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line} (cell {self.id})"

    @property
    def percent(self) -> bool:
        return self.metric != "seconds"

    def field(self, name: str) -> str:
        """A column's value as text, for ``--holdout table:column=value`` selectors."""
        from ptesim.units import format_size

        v = getattr(self, name)
        if name in ("mem", "folio"):
            return format_size(v)
        return str(v)


def split_kernel(text: str, where: str) -> tuple[str, dict[str, str]]:
    """``v6.9+contpte=false+zap_batch=true`` -> (preset, overrides), checked against the flags."""
    from ptesim.kernel.config import PRESETS

    name, *items = text.strip().split("+")
    if name not in PRESETS:
        raise UsageError(f"{where}: unknown preset {name!r}")
    overrides: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{where}: bad kernel override {item!r} in {text!r}: expected flag=value")
        overrides[key.strip().replace("-", "_")] = value.strip()
    try:
        PRESETS[name].with_overrides(overrides)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    return name, overrides


def read_tables(paths: Sequence[str], *, known_machines: Iterable[str] | None = None) -> list[PubCell]:
    """Parse and check every cell of the given files (comment lines start with ``#``)."""
    if not paths:
        raise UsageError("give at least one table file (--tables FILE ...)")
    machines = set(shipped_profiles() if known_machines is None else known_machines)
    cells: list[PubCell] = []
    counters: dict[str, int] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read table {path}: {getattr(exc, 'strerror', None) or exc}") from None
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        body = [(n, line) for n, line in lines if not line.lstrip().startswith("#")]
        if not body:
            raise UsageError(f"{path}: no header and no cells")
        header_no, header = body[0]
        cols = next(csv.reader([header]))
        if tuple(c.strip() for c in cols) != COLUMNS:
            raise UsageError(f"{path}:{header_no}: the header must be {','.join(COLUMNS)}")
        for n, line in body[1:]:
            row = next(csv.reader(io.StringIO(line)))
            if len(row) != len(COLUMNS):
                raise UsageError(f"{path}:{n}: expected {len(COLUMNS)} columns, got {len(row)}")
            r = dict(zip(COLUMNS, (v.strip() for v in row), strict=True))
            table = r["table"]
            if not table:
                raise UsageError(f"{path}:{n}: empty table id")
            counters[table] = counters.get(table, 0) + 1
            where = f"{path}:{n} (cell {table}#{counters[table]})"
            cells.append(_cell(r, where, path, n, counters[table], machines))
    return cells


def _cell(r: dict[str, str], where: str, path: str, line: int, index: int, machines: set[str]) -> PubCell:
    if r["machine"] not in machines:
        raise UsageError(
            f"{where}: no profile for machine {r['machine']!r} (profiles: {', '.join(sorted(machines))})"
        )
    if r["workload"] not in WORKLOADS:
        raise UsageError(f"{where}: unknown workload {r['workload']!r} (one of {', '.join(WORKLOADS)})")
    if r["metric"] not in METRICS:
        raise UsageError(f"{where}: unknown metric {r['metric']!r} (one of {', '.join(METRICS)})")
    if r["workload"] == "latency":
        from ptesim.workloads.counts import LATENCY_OPS

        if r["op"] not in LATENCY_OPS:
            raise UsageError(f"{where}: unknown latency op {r['op']!r} (one of {', '.join(LATENCY_OPS)})")
    elif r["op"] != "fork-exit":
        raise UsageError(f"{where}: a wis-fork-exit cell has op fork-exit, not {r['op']!r}")
    if r["mapping"] not in ("pte", "pmd"):
        raise UsageError(f"{where}: mapping must be pte or pmd, not {r['mapping']!r}")
    try:
        mem = parse_size(r["mem"], what="mem")
        folio = parse_size(r["folio"], what="folio")
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    try:
        cpus = int(r["cpus"])
        value = float(r["value"])
    except ValueError:
        raise UsageError(f"{where}: bad number in cpus {r['cpus']!r} or value {r['value']!r}") from None
    if cpus < 1 or not math.isfinite(value):
        raise UsageError(f"{where}: cpus must be >= 1 and value finite")
    if r["metric"] == "seconds":
        if r["baseline"]:
            raise UsageError(f"{where}: a seconds cell has no baseline")
        if value <= 0:
            raise UsageError(f"{where}: a time must be positive")
    else:
        if not r["baseline"]:
            raise UsageError(f"{where}: a {r['metric']} cell needs a baseline kernel")
        split_kernel(r["baseline"], where)
        if value <= -100:
            raise UsageError(f"{where}: a change must be above -100%")
    split_kernel(r["variant"], where)
    return PubCell(
        table=r["table"],
        machine=r["machine"],
        workload=r["workload"],
        op=r["op"],
        mem=mem,
        folio=folio,
        mapping=r["mapping"],
        cpus=cpus,
        baseline=r["baseline"],
        variant=r["variant"],
        metric=r["metric"],
        value=value,
        source=r["source"],
        file=path,
        line=line,
        index=index,
    )


# -- model runs ------------------------------------------------------------------------------------


def _spec(cell: PubCell, kernel: str, profile: Profile) -> RunSpec:
    preset, overrides = split_kernel(kernel, cell.where)
    workload = "wis" if cell.workload == "wis-fork-exit" else cell.op
    # The mapping matters only for PMD-sized folios (4K granule: 2M); one spelling shares the cache.
    mapping = cell.mapping if cell.folio == 2 << 20 else "pmd"
    return run_spec(
        workload,
        profile.arch,
        preset,
        folio=cell.folio,
        mem=cell.mem,
        cpu_features=sorted(profile.cpu_features),
        overrides=overrides,
        mapping=mapping,
    )


def cell_runs(cell: PubCell, profile: Profile) -> tuple[RunSpec, RunSpec | None]:
    """The model runs of a cell: (variant, baseline or None for a ``seconds`` cell)."""
    var = _spec(cell, cell.variant, profile)
    base = _spec(cell, cell.baseline, profile) if cell.baseline else None
    return var, base


@dataclass(frozen=True)
class CellWork:
    """What the model executed for a cell, ready to price."""

    cell: PubCell
    variant: Work
    baseline: Work | None


def cell_work(cell: PubCell, profile: Profile) -> CellWork:
    """Run (or fetch from the cache) the model runs of a cell."""
    var, base = cell_runs(cell, profile)
    return CellWork(cell, _work(cell, var), _work(cell, base) if base is not None else None)


def _work(cell: PubCell, spec: RunSpec) -> Work:
    res = result(spec)
    if cell.workload == "wis-fork-exit":
        assert res.steady is not None
        return Work(merge_phases(res.steady))
    timed = [p for p in res.first if p not in SETUP_PHASES]
    return Work(merge_phases(res.first, timed), forks=1.0 if cell.op == "fork" else 0.0, exits=0.0)


def model_log(cw: CellWork, profile: Profile) -> float:
    """The model's value of a cell on the log scale of the module docstring."""
    c = cw.cell
    if c.workload == "wis-fork-exit" and cw.baseline is not None:
        ch = change(cw.variant, cw.baseline, profile, c.cpus)
        return math.log(ch.baseline.cycle_ns / ch.variant.cycle_ns)
    tv = iteration_time(cw.variant, profile, c.cpus).cycle_ns
    if cw.baseline is None:
        return math.log(tv / 1e9)
    tb = iteration_time(cw.baseline, profile, c.cpus).cycle_ns
    return math.log(tv / tb)


def published_log(cell: PubCell) -> float:
    """The published value on the same log scale."""
    if cell.metric == "seconds":
        return math.log(cell.value)
    return math.log1p(cell.value / 100.0)


def from_log(cell: PubCell, x: float) -> float:
    """A log-scale value in the cell's unit: percent, or seconds."""
    if cell.metric == "seconds":
        return math.exp(x)
    return 100.0 * math.expm1(x)


def profiles_for(cells: Sequence[PubCell]) -> dict[str, Profile]:
    """The shipped profile of every machine the cells name."""
    return {m: load_profile(m) for m in dict.fromkeys(c.machine for c in cells)}


def matches(cell: PubCell, item: str) -> bool:
    """Does ``item`` name this cell?  ``table``, ``table#n`` or ``table:column=value[,column=value]``."""
    if "#" in item:
        return cell.id == item
    table, sep, rest = item.partition(":")
    if table != cell.table:
        return False
    if not sep:
        return True
    for cond in rest.split(","):
        col, eq, value = cond.partition("=")
        if not eq or col not in COLUMNS:
            raise UsageError(
                f"bad cell selector {item!r}: expected table:column=value with a column of the format"
            )
        if cell.field(col) != value:
            return False
    return True


def shipped_tables() -> list[str]:
    """Paths of the published tables shipped with ptesim (copies of ``shared/data/published``)."""
    from importlib import resources

    root = resources.files("ptesim.cost") / "data" / "published"
    return sorted(str(p) for p in root.iterdir() if p.name.endswith(".csv"))


def kind_of(cell: PubCell) -> str:
    """The scatter class of a cell (:func:`ptesim.cost.intervals.cell_sigma`)."""
    if cell.metric == "seconds":
        return "time"
    return "throughput" if cell.workload == "wis-fork-exit" else "change"
