"""The Python front door: count a scenario, trace it, price counts, sweep, as the CLI does.

Every function takes the same keyword arguments as the command line's shared options
(:mod:`ptesim.options`), with sizes as ``"64K"`` or as byte counts, and validates them the same way
(a bad value raises :class:`ptesim.errors.UsageError` naming it).  The CLI calls these functions;
``docs/api.md`` has examples that run as doctests.

>>> import ptesim
>>> c = ptesim.count(arch="x86", preset="v6.9", folio="64K", mem="1M", scenario="fork-first")
>>> c.totals["folio_ref"]
16
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ptesim.errors import UsageError
from ptesim.options import DEFAULT_ARCH, DEFAULT_PRESET, GRANULES, Combination, check_combination
from ptesim.units import format_size, parse_size

if TYPE_CHECKING:
    from ptesim.cost.profile import Profile
    from ptesim.cost.validate import CellPrediction
    from ptesim.workloads.scenarios import ModelSpec, ScenarioResult

__all__ = [
    "Counts",
    "Price",
    "TraceRecord",
    "Validation",
    "combinations",
    "count",
    "count_cell",
    "count_many",
    "latency",
    "machine",
    "price",
    "sweep",
    "to_bytes",
    "trace",
    "validate",
    "validation",
    "wis",
]

Size = int | str


def to_bytes(value: Size, what: str = "size") -> int:
    """A size given as ``"64K"``/``"2M"`` or as a byte count, in bytes.

    >>> to_bytes("64K"), to_bytes(4096)
    (65536, 4096)
    """
    if isinstance(value, bool):
        raise UsageError(f"bad {what} {value!r}: expected a size such as '64K' or a byte count")
    if isinstance(value, int):
        if value <= 0:
            raise UsageError(f"bad {what} {value}: must be positive")
        return value
    if isinstance(value, str):
        return parse_size(value, what=what)
    raise UsageError(f"bad {what} {value!r}: expected a size such as '64K' or a byte count")


def _granule(value: Size) -> int:
    n = to_bytes(value, "granule")
    if n not in GRANULES.values():
        raise UsageError(f"bad granule {value!r}: one of {', '.join(GRANULES)}")
    return n


def machine(
    *,
    arch: str = DEFAULT_ARCH,
    preset: str = DEFAULT_PRESET,
    folio: Size = "64K",
    mem: Size = "1M",
    granule: Size = "4K",
    cpu_features: Iterable[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    cpus: int = 4,
    mapping: str = "pmd",
    placement: str = "aligned",
    checks: bool = False,
    trace_limit: int = 0,
    engine: str = "fast",
) -> ModelSpec:
    """The :class:`~ptesim.workloads.scenarios.ModelSpec` of these options, checked as the CLI checks.

    >>> machine(arch="arm64", folio="2M", mem="4M").folio
    2097152
    """
    from ptesim.kernel.config import PRESETS

    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    combo = Combination(
        arch=arch,
        preset=preset,
        granule=_granule(granule),
        folio=to_bytes(folio, "folio"),
        mem=to_bytes(mem, "mem"),
        cpus=int(cpus),
        cpu_features=None if cpu_features is None else tuple(cpu_features),
        overrides=tuple(f"{k}={v}" for k, v in (overrides or {}).items()),
        mapping=mapping,
    )
    from ptesim.arch import ARCHES

    if arch not in ARCHES:
        raise UsageError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    check_combination(combo)
    return combo.model_spec(placement=placement, checks=checks, trace_limit=trace_limit, engine=engine)


@dataclass(frozen=True)
class Counts:
    """The counted primitives of one scenario's own operation (what ``ptesim explain`` prints)."""

    spec: ModelSpec
    scenario: str
    cpu_features: tuple[str, ...]
    #: every primitive with the coarse aggregates (``pte_rmw``, ``tlbi_page`` ...) added
    totals: dict[str, int]
    by_phase: dict[str, dict[str, int]]
    by_site: dict[str, dict[str, int]]
    by_stack: list[tuple[tuple[str, ...], dict[str, int]]]
    #: ``fast`` or ``reference``: the engine that ran (counts are the same with either)
    engine: str = "reference"
    #: wall seconds of the model run (machine, setup and scenario)
    elapsed_s: float = 0.0
    #: bytes one PMD maps on this machine
    pmd_size: int = 2 << 20

    @property
    def blocks(self) -> float:
        """The mapping in 64K blocks, the unit of the reference tables."""
        return self.spec.blocks

    @property
    def per_block(self) -> dict[str, float]:
        return {k: v / self.blocks for k, v in self.totals.items()}

    @property
    def primitives(self) -> dict[str, int]:
        """The fine primitives only (no aggregates): what a profile prices."""
        from ptesim.events import PRIMITIVES

        return {k: v for k, v in self.totals.items() if k in PRIMITIVES}

    def to_json(self) -> dict[str, Any]:
        """The ``ptesim explain --json`` object (docs/schema.md)."""
        s = self.spec
        return {
            "arch": s.arch,
            "preset": s.preset,
            "scenario": self.scenario,
            "folio": format_size(s.folio),
            "mapping": s.mapping,
            "mem": format_size(s.mem),
            "granule": format_size(s.granule),
            "folio_bytes": s.folio,
            "mem_bytes": s.mem,
            "granule_bytes": s.granule,
            "cpus": s.ncpus,
            "cpu_features": list(self.cpu_features),
            "blocks": self.blocks,
            "totals": dict(self.totals),
            "per_block": self.per_block,
            "by_phase": {p: dict(c) for p, c in self.by_phase.items()},
            "by_site": {k: dict(c) for k, c in self.by_site.items()},
            "by_stack": [{"stack": list(st), "counts": dict(c)} for st, c in self.by_stack],
            "engine": self.engine,
            "elapsed_s": round(self.elapsed_s, 6),
        }

    @classmethod
    def of(cls, res: ScenarioResult, elapsed_s: float = 0.0) -> Counts:
        from ptesim.events import with_aggregates

        sink = res.sink
        return cls(
            spec=res.spec,
            scenario=res.scenario,
            cpu_features=tuple(sorted(res.kernel.arch.features)),
            totals={k: int(v) for k, v in with_aggregates(sink.totals()).items()},
            by_phase={
                p: {k: int(v) for k, v in with_aggregates(c).items()}
                for p, c in sorted(sink.by_phase().items())
            },
            by_site={k: dict(c) for k, c in sorted(sink.by_site().items())},
            by_stack=[
                (tuple(st), dict(c))
                for st, c in sorted(sink.by_stack().items(), key=lambda kv: -sum(kv[1].values()))
            ],
            engine="fast" if res.kernel.fast is not None else "reference",
            elapsed_s=elapsed_s,
            pmd_size=res.kernel.arch.geometry.pmd_size,
        )


def count(scenario: str = "fork-first", spec: ModelSpec | None = None, **options: Any) -> Counts:
    """Run ``scenario`` on the model machine of ``options`` (see :func:`machine`) and count it.

    >>> c = count(arch="arm64", preset="v6.9", folio="64K", mem="64K", scenario="fork-first")
    >>> c.totals["tlbi_page"] >= 0 and c.blocks == 1
    True
    """
    import time

    from ptesim.workloads.scenarios import run_scenario

    spec = spec if spec is not None else machine(**options)
    t0 = time.perf_counter()
    res = run_scenario(spec, scenario)
    return Counts.of(res, time.perf_counter() - t0)


def count_cell(cell: tuple[str, ModelSpec]) -> Counts:
    """:func:`count` of one ``(scenario, spec)`` cell: what a worker process or Dask worker runs."""
    scenario, spec = cell
    return count(scenario, spec=spec)


def count_many(cells: Sequence[tuple[str, ModelSpec]]) -> list[Counts]:
    """:func:`count` of every ``(scenario, spec)`` cell, in order: on the local process pool, or
    on a Dask cluster (:mod:`ptesim.parallel`), with a progress bar on a terminal.  What a sweep
    (``ptesim explain`` with comma lists, :func:`sweep`) runs."""
    from ptesim.parallel import map_cells

    if len(cells) == 1:
        return [count_cell(cells[0])]
    return map_cells(count_cell, list(cells), what="model runs")


@dataclass(frozen=True)
class TraceRecord:
    """One counted primitive, in execution order, with the kernel call chain (outermost first)."""

    seq: int
    prim: str
    phase: str
    stack: tuple[str, ...]


def trace(scenario: str = "fork-first", *, limit: int = 200_000, **options: Any) -> list[TraceRecord]:
    """The ordered primitives of the scenario's own operation (``ptesim trace``).

    >>> recs = trace(arch="x86", preset="v6.8", folio="64K", mem="64K")
    >>> recs[0].phase in ("fork_parent", "fork_child")
    True
    """
    from ptesim.workloads.scenarios import run_scenario

    res = run_scenario(machine(trace_limit=limit, **options), scenario)
    recs = res.sink.trace
    total = sum(res.sink.totals().values())
    shown = recs[-total:] if total and total <= len(recs) else recs
    return [TraceRecord(r.seq, r.prim, r.phase, tuple(r.stack)) for r in shown]


@dataclass(frozen=True)
class Price:
    """Counts priced by a profile: nanoseconds by category, with ``cpus`` identical workers busy."""

    profile: str
    cpus: int
    time_ns: float
    by_category_ns: dict[str, float]


def price(counts: Counts | Mapping[str, float], profile: str | Profile | None = None, cpus: int = 1) -> Price:
    """Price counted primitives with a cost profile (default: the arch's, e.g. ``altra`` for arm64).

    Process-level fork/exit costs are left out: this is the cost of the counted operation alone.

    >>> p = price(count(arch="arm64", mem="64K"), "altra")
    >>> p.time_ns > 0 and p.profile == "altra"
    True
    """
    from ptesim.cost.model import Work, iteration_time
    from ptesim.cost.profile import load_profile
    from ptesim.options import DEFAULT_PROFILES

    if isinstance(counts, Counts):
        prims: Mapping[str, float] = counts.primitives
        arch = counts.spec.arch
    else:
        prims, arch = counts, None
    if profile is None:
        profile = DEFAULT_PROFILES[arch or DEFAULT_ARCH]
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if arch is not None and prof.arch != arch:
        raise UsageError(f"profile {prof.name} is for {prof.arch}, not {arch}")
    t = iteration_time(Work(Counter(prims), forks=0.0, exits=0.0), prof, cpus)
    return Price(prof.name, cpus, t.cycle_ns, dict(t.by_category))


def _as_list(v: Any) -> list[Any]:
    if isinstance(v, list | tuple):
        return list(v)
    return [v]


def sweep(
    scenario: str = "fork-first",
    *,
    primitives: Sequence[str] | None = None,
    **options: Any,
) -> Any:
    """Count ``scenario`` over the cartesian product of every option given as a list, the
    combinations run in parallel as the CLI's sweeps are (:func:`count_many`).

    Returns one row per combination (the options, then the total of each primitive): a pandas
    DataFrame when pandas is installed, else a list of dicts.  ``primitives`` picks the count
    columns (default: every primitive that occurred).

    >>> rows = sweep(arch="x86", preset=["v6.8", "v6.9"], folio="64K", mem="1M", primitives=["pte_write"])
    >>> list(rows["preset"]) if hasattr(rows, "columns") else [r["preset"] for r in rows]
    ['v6.8', 'v6.9']
    """
    keys = list(options)
    rows: list[dict[str, Any]] = []
    combos = [
        dict(zip(keys, v, strict=True)) for v in itertools.product(*(_as_list(options[k]) for k in keys))
    ]
    counted = count_many([(scenario, machine(**opts)) for opts in combos])
    for opts, c in zip(combos, counted, strict=True):
        row: dict[str, Any] = {}
        for k, v in opts.items():
            row[k] = to_bytes(v, k) if k in ("folio", "mem", "granule") else v
        if primitives is None:
            row.update({k: v for k, v in c.totals.items() if v})
        else:
            row.update({k: c.totals.get(k, 0) for k in primitives})
        rows.append(row)
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows).fillna(0)


@dataclass(frozen=True)
class Validation:
    """Published cells priced by the model: each with its prediction, 90% interval and role."""

    predictions: list[CellPrediction]
    #: per role: cells, max |error|, interval coverage (the ``summary`` of ``validate --json``)
    summary: dict[str, Any]
    #: True when each cell was predicted by a refit that never saw its table
    cross_validated: bool = False

    def rows(self) -> list[dict[str, Any]]:
        """One dict per cell, the ``cells`` of ``ptesim validate --json`` (docs/schema.md)."""
        return [p.as_dict() for p in self.predictions]


def validation(tables: Sequence[str] | None = None, *, cross_validate: bool = False) -> Validation:
    r"""Price every cell of published tables (default: those shipped with ptesim) with the shipped
    profiles, unrefitted; with ``cross_validate``, each machine's profile is refitted once per table
    with that table left out (on the local process pool, or a Dask cluster: :mod:`ptesim.parallel`)
    and predicts it.  What ``ptesim validate [--cross-validate]`` prints.

    >>> import pathlib, tempfile
    >>> table = pathlib.Path(tempfile.mkdtemp()) / "mine.csv"
    >>> _ = table.write_text(
    ...     "table,machine,workload,op,mem,folio,mapping,cpus,baseline,variant,metric,value,source\n"
    ...     "mine,altra,wis-fork-exit,fork-exit,2M,64K,pte,8,contpte-v1-base,contpte-v1-before-opt,"
    ...     "throughput_change_pct,-15.4,example\n"
    ... )
    >>> v = validation([str(table)])
    >>> p = v.predictions[0]
    >>> p.role, p.cell.cpus, p.lo <= p.predicted <= p.hi
    ('unseen', 8, True)
    """
    from ptesim.cost.tables import shipped_tables
    from ptesim.cost.validate import summary
    from ptesim.cost.validate import validate as price_tables

    paths = list(tables) if tables is not None else shipped_tables()
    if cross_validate:
        from ptesim.cost.tablefit import cross_validate_tables

        preds = [p for fold in cross_validate_tables(paths) for p in fold.predictions]
        return Validation(preds, summary(preds), cross_validated=True)
    preds, summ = price_tables(paths)
    return Validation(preds, summ)


def validate(tables: Sequence[str] | None = None, *, cross_validate: bool = False) -> Any:
    """The cells of :func:`validation`, one row per published cell (``table``, ``id``, ``machine``,
    ``op``, ``cpus``, ``published``, ``predicted``, ``lo``, ``hi``, ``role`` and the same values
    with their unit in the name): a pandas DataFrame when pandas is installed (the summary in
    ``.attrs["summary"]``), else a list of dicts.

    >>> from ptesim.cost.tables import shipped_tables
    >>> seed = [t for t in shipped_tables() if t.endswith("altra-seed.csv")]
    >>> df = validate(seed)
    >>> rows = df.to_dict("records") if hasattr(df, "columns") else df
    >>> rows[0]["id"], rows[0]["cpus"], rows[0]["published_pct"], rows[0]["role"]
    ('seed#1', 1, -10.4, 'fitted')
    """
    v = validation(tables, cross_validate=cross_validate)
    rows = v.rows()
    try:
        import pandas as pd
    except ImportError:
        return rows
    df = pd.DataFrame(rows)
    df.attrs["summary"] = v.summary
    return df


def combinations(**options: Any) -> list[Combination]:
    """The checked combinations of ``options`` (the CLI's shared options as keywords; ``arch``,
    ``preset``, ``granule``, ``folio``, ``mem`` and ``cpus`` may be lists, sizes ``"64K"`` or
    bytes), in the order the CLI runs them: the cartesian product, ``arch`` varying slowest.

    >>> [(c.preset, c.folio) for c in combinations(preset=["v6.8", "v6.9"], folio="64K")]
    [('v6.8', 65536), ('v6.9', 65536)]
    """
    from ptesim.arch import ARCHES
    from ptesim.kernel.config import PRESETS
    from ptesim.options import SWEEP_FIELDS

    unknown = set(options) - {*SWEEP_FIELDS, "cpu_features", "overrides", "mapping", "profile", "baseline"}
    if unknown:
        raise UsageError(f"unknown option {sorted(unknown)[0]!r}")
    axes: dict[str, list[Any]] = {}
    for name in SWEEP_FIELDS:
        if name not in options:
            continue
        values = _as_list(options[name])
        if name in ("folio", "mem"):
            values = [to_bytes(v, name) for v in values]
        elif name == "granule":
            values = [_granule(v) for v in values]
        elif name == "cpus":
            values = [int(v) for v in values]
        elif name == "arch":
            for v in values:
                if v not in ARCHES:
                    raise UsageError(f"unknown arch {v!r}; known: {', '.join(ARCHES)}")
        elif name == "preset":
            for v in values:
                if v not in PRESETS:
                    raise UsageError(f"unknown preset {v!r}; known: {', '.join(PRESETS)}")
        axes[name] = values
    common: dict[str, Any] = {k: options[k] for k in ("mapping", "profile", "baseline") if k in options}
    if options.get("cpu_features") is not None:
        common["cpu_features"] = tuple(options["cpu_features"])
    if options.get("overrides"):
        common["overrides"] = tuple(f"{k}={v}" for k, v in options["overrides"].items())
    out = []
    for point in itertools.product(*axes.values()):
        c = Combination(**common, **dict(zip(axes, point, strict=True)))
        check_combination(c)
        out.append(c)
    return out


def _frame(rows: list[dict[str, Any]]) -> Any:
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows)


def wis(**options: Any) -> Any:
    """will-it-scale fork-and-exit priced by the model (``ptesim wis``) for every combination of
    ``options`` (:func:`combinations`; ``cpus`` default 1,8,16,24,32, ``mem`` 128M per worker,
    ``baseline`` the same preset without PTE_CONT): one row per combination and CPU count, with
    the fields of ``ptesim wis --json`` (``docs/schema.md``); a DataFrame when pandas is installed.

    >>> rows = wis(arch="x86", preset=["v6.8", "v6.9"], mem="2M", cpus=8, baseline="v6.8")
    >>> rows = rows.to_dict("records") if hasattr(rows, "columns") else rows
    >>> [(r["preset"], r["cpus"], r["steady_change_pct"] == 0) for r in rows]
    [('v6.8', 8, True), ('v6.9', 8, False)]
    """
    from ptesim.cost.commands import wis_table

    options.setdefault("cpus", [1, 8, 16, 24, 32])
    options.setdefault("mem", "128M")
    return _frame(wis_table(combinations(**options)).rows)


def latency(op: str = "fork", **options: Any) -> Any:
    """One process's ``op`` priced by the model (``ptesim latency``) for every combination of
    ``options`` (``mem`` default 1G): one row per combination with the fields of
    ``ptesim latency --json`` (``time_ns`` and its interval, by category, ``change_pct`` with a
    ``baseline``); a DataFrame when pandas is installed.

    >>> rows = latency("fork", arch="arm64", folio=["64K", "2M"], mem="4M")
    >>> rows = rows.to_dict("records") if hasattr(rows, "columns") else rows
    >>> rows[0]["time_ns"] > rows[1]["time_ns"] > 0
    True
    """
    from ptesim.cost.commands import latency_table

    options.setdefault("mem", "1G")
    return _frame(latency_table(op, combinations(**options)).rows)
