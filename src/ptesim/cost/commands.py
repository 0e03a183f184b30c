"""Cost-model commands: ``reproduce seed``, ``wis``, ``latency``, ``calibrate``, ``whatif``."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptesim.errors import UsageError
from ptesim.options import (
    Combination,
    add_options,
    combinations,
    default_profile,
    given,
    grouped,
    mapping_kwargs,
    only,
    varying,
)
from ptesim.report.tables import markdown_table
from ptesim.report.tidy import (
    Column,
    Tidy,
    add_output_options,
    add_scheduler_option,
    emit,
    key_columns,
    ms_from_ns_cell,
    size_cell,
)
from ptesim.units import format_size, parse_cpu_list, parse_size

if TYPE_CHECKING:  # the cost model imports numpy and scipy: only the commands that price load it
    from ptesim.cost.calibrate import FitResult
    from ptesim.cost.model import Change, IterationTime
    from ptesim.cost.profile import Profile

#: Column titles of the decomposition (percentage points of the change).
CATEGORY_TITLES = {
    "pte": "PTE access",
    "atomics": "atomics",
    "tlbi": "TLBI/DSB",
    "queueing": "queueing",
    "other": "other",
}
#: The categories in column order: ``ptesim.cost.model.CATEGORIES`` (a test keeps them equal), spelled
#: here so that building the parser does not import the cost model (numpy, scipy).
CATEGORIES = tuple(CATEGORY_TITLES)


# -- argument helpers ------------------------------------------------------------------------------


def _profile(name: str, arch: str | None = None) -> Profile:
    from ptesim.cost.profile import load_profile

    prof = load_profile(name)
    if arch is not None and prof.arch != arch:
        raise UsageError(f"profile {prof.name} is for {prof.arch}, not {arch} (choose a {arch} profile)")
    return prof


def _priced(c: Combination) -> tuple[Profile, list[str] | None]:
    """The profile that prices ``c`` and the CPU features of the run: ``--cpu-features``, else those of
    the machine the profile describes."""
    profile = _profile(c.profile_name(), c.arch)
    if c.cpu_features is not None:
        return profile, list(c.cpu_features)
    return profile, sorted(profile.cpu_features) if profile.cpu_features else None


def _baseline(c: Combination) -> tuple[str, dict[str, str], str]:
    """Preset, overrides and label of the kernel ``c`` is compared with (``--baseline``)."""
    if c.baseline is None or c.baseline == "nocont":
        return c.preset, {**c.override_dict(), "contpte": "n"}, f"{c.preset} without PTE_CONT"
    return c.baseline, c.override_dict(), c.baseline


def run_spec_type() -> type:
    from ptesim.cost.runs import RunSpec

    return RunSpec


def _folio_label(granule: int, folio: int, mapping: str) -> str:
    """``64K folios`` or, for a PMD-sized folio, which mapping ran."""
    from ptesim.workloads.scenarios import folio_label

    # A PTE table is one granule of 8-byte entries, so one PMD maps granule / 8 granules.
    return folio_label(folio, mapping, granule * (granule // 8))


def _decomp_row(ch: Change) -> list[str]:
    return [f"{ch.contributions_pp[c]:+.1f}" for c in CATEGORIES]


def _decomp_dict(ch: Change) -> dict[str, float]:
    out = {f"{c}_pp": round(ch.contributions_pp[c], 3) for c in CATEGORIES}
    out["queueing_stretch_pp"] = round(ch.stretch_pp, 3)
    return out


def _time_dict(t: IterationTime) -> dict[str, float]:
    return {f"{c}_ms": round(v / 1e6, 6) for c, v in t.by_category.items()}


# -- reproduce seed --------------------------------------------------------------------------------


def _reproduce(args: argparse.Namespace) -> int:
    from ptesim.cost.seed import HOLDOUT, reproduce

    if args.what != "seed":
        raise UsageError(f"reproduce: unknown table {args.what!r} (known: seed)")
    profile = _profile(default_profile(args), "arm64")
    mem = format_size(only(args, "mem", "reproduce"))
    rep = reproduce(profile, heldout=not args.no_heldout, mem=mem, curve=bool(args.plot))
    held = rep.heldout
    if args.plot:
        from ptesim.report.plots import seed_plot

        seed_plot(rep.rows, Path(args.plot), rep.curves)
    if args.csv:
        emit(args, Tidy([Column(k) for k in rep.rows[0]], list(rep.rows)))
        return 0
    if args.json:
        out: dict[str, Any] = {
            "rows": [{**r, **{f"{k}_pct": v for k, v in r.items() if k != "cpus"}} for r in rep.rows],
            "max_abs_error_pp": round(rep.max_abs_error_pp, 3),
            "heldout": {
                "cpus": list(HOLDOUT) if held else [],
                "max_abs_error_pp": round(held.heldout_max_abs_error_pp, 3) if held else None,
            },
            "parameters": rep.parameters,
        }
        if args.detail:
            out["profile"] = profile.name
            out["mem"] = mem
            out["provenance"] = {k: profile.provenance[k] for k in rep.parameters}
            out["decomposition"] = [
                {"variant": label, "cpus": cpus, "change_pct": round(ch.change_pct, 3), **_decomp_dict(ch)}
                for (label, cpus), ch in sorted(
                    rep.changes.items(), key=lambda kv: (kv[0][0] != "before_opt", kv[0][1])
                )
            ]
            if held:
                out["heldout_fit"] = {
                    "fitted": held.fitted,
                    "cells": [
                        {
                            "variant": c.label,
                            "cpus": c.cpus,
                            "published": c.measured,
                            "model": round(c.model, 3),
                            "heldout": c.heldout,
                        }
                        for c in held.cells
                    ],
                }
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for r in rep.rows:
        rows.append(
            [
                str(r["cpus"]),
                f"{r['published_before']:+.1f}%",
                f"{r['model_before']:+.1f}% ({r['model_before_lo']:+.1f}…{r['model_before_hi']:+.1f})",
                f"{r['model_before'] - r['published_before']:+.1f}",
                f"{r['published_after']:+.1f}%",
                f"{r['model_after']:+.1f}% ({r['model_after_lo']:+.1f}…{r['model_after_hi']:+.1f})",
                f"{r['model_after'] - r['published_after']:+.1f}",
            ]
        )
    print(
        f"Seed table: will-it-scale fork and exit, arm64 4K pages, 64K folios, {mem} per worker, "
        f"profile {profile.name}\n"
    )
    print(
        markdown_table(
            ["cpus", "before opt", "model (90%)", "error pp", "after opt", "model (90%)", "error pp"],
            rows,
        )
    )
    print(f"\nmax |error| {rep.max_abs_error_pp:.2f} pp over all {2 * len(rep.rows)} cells")
    if held:
        print(
            f"refitted on CPUs {sorted({c.cpus for c in held.cells if not c.heldout})} only: "
            f"max |error| on held-out {list(HOLDOUT)} = {held.heldout_max_abs_error_pp:.2f} pp"
        )
    print(
        "\nWhere each model number comes from (percentage points; they add up to the change).  "
        "queueing = the DVM sync stretched by the other busy CPUs + waiting behind their syncs."
    )
    drows = []
    for (label, cpus), ch in sorted(rep.changes.items(), key=lambda kv: (kv[0][0] != "before_opt", kv[0][1])):
        drows.append(
            [
                label.replace("_", " "),
                str(cpus),
                f"{ch.change_pct:+.1f}",
                *_decomp_row(ch),
                f"{ch.stretch_pp:+.1f}",
            ]
        )
    print(
        markdown_table(
            ["variant", "cpus", "change %", *CATEGORY_TITLES.values(), "of which stretch"],
            drows,
        )
    )
    print("\nParameters:")
    for k, v in rep.parameters.items():
        print(f"  {k} = {v:.6g}  ({profile.provenance[k]})")
    return 0


# -- wis ---------------------------------------------------------------------------------------------


def _published(workload: str, machine: str) -> list[Any]:
    """The shipped published cells of ``workload`` measured on ``machine`` (plots mark them)."""
    from ptesim.cost.tables import read_tables, shipped_tables

    return [c for c in read_tables(shipped_tables()) if c.workload == workload and c.machine == machine]


def _fixed_text(combos: list[Combination], keys: list[str]) -> str:
    """What every row of a sweep shares, e.g. ``arm64 v6.9, 4K pages, 64K folios, 128M``."""
    c = combos[0]
    parts = []
    if "arch" not in keys:
        parts.append(c.arch)
    if "preset" not in keys:
        parts.append(c.preset)
    if "granule" not in keys:
        parts.append(f"{format_size(c.granule)} pages")
    if "folio" not in keys:
        parts.append(_folio_label(c.granule, c.folio, c.mapping))
    if "mem" not in keys:
        parts.append(format_size(c.mem))
    return ", ".join(parts)


def _size_keys(c: Combination) -> dict[str, Any]:
    return {
        "arch": c.arch,
        "preset": c.preset,
        "granule_bytes": c.granule,
        "folio_bytes": c.folio,
        "mem_bytes": c.mem,
        "mapping": c.mapping,
    }


def _decomp_columns() -> list[Column]:
    return [Column(f"{c}_pp", f"{t} pp", _pp_cell) for c, t in CATEGORY_TITLES.items()]


def _pp_cell(v: Any) -> str:
    return "-" if v is None else f"{v:+.1f}"


def _pct_cell(v: Any) -> str:
    return "-" if v is None else f"{v:+.1f}%"


def _interval_cell(key: str) -> Callable[[Any], str]:
    """``+12.3% (+8.1…+16.0)`` from a row's ``KEY_pct``, ``KEY_lo_pct``, ``KEY_hi_pct``."""

    def show(r: Any) -> str:
        v, lo, hi = r.get(f"{key}_pct"), r.get(f"{key}_lo_pct"), r.get(f"{key}_hi_pct")
        if v is None:
            return "-"
        return f"{v:+.1f}% ({lo:+.1f}…{hi:+.1f})" if lo is not None else f"{v:+.1f}% (no fit)"

    return show


def _steady_log(var: Any, base: Any, cpus: int) -> Callable[[Profile], float]:
    """ln of the steady throughput ratio as a function of the profile (for the interval)."""
    from ptesim.cost.model import change

    def f(p: Profile) -> float:
        return math.log1p(change(var, base, p, cpus).change_pct / 100.0)

    return f


def wis_table(combos: list[Combination]) -> Tidy:
    """Price will-it-scale fork-and-exit for every combination: one row per combination (the CPU
    counts included), sizes in bytes, throughput in iterations/s, changes in percent."""
    from ptesim.cost.intervals import log_interval
    from ptesim.cost.runs import prefetch
    from ptesim.cost.validate import role_of
    from ptesim.workloads.wis import wis_rows, wis_spec, work_of

    keys = varying(combos)
    groups = grouped(combos, "cpus")
    plans = []
    for c, cpus in groups:
        profile, feats = _priced(c)
        base_preset, base_ov, base_label = _baseline(c)
        kw: dict[str, Any] = {"folio": c.folio, "mem": c.mem, "granule": c.granule, "cpu_features": feats}
        kw.update(mapping_kwargs(c.mapping, run_spec_type()))
        var_spec = wis_spec(c.arch, c.preset, overrides=c.override_dict(), **kw)
        base_spec = wis_spec(c.arch, base_preset, overrides=base_ov, **kw)
        plans.append((c, cpus, profile, base_label, var_spec, base_spec))
    prefetch([s for p in plans for s in p[4:]])
    rows: list[dict[str, Any]] = []
    for c, cpus, profile, base_label, var_spec, base_spec in plans:
        var_work, base_work = work_of(var_spec), work_of(base_spec)
        pub_cells = {
            p.cpus: p
            for p in _published("wis-fork-exit", profile.name)
            if p.variant == c.preset
            and p.baseline == c.baseline
            and (p.folio, p.mem) == (c.folio, c.mem)
            and not c.overrides
        }
        published = {n: p.value for n, p in pub_cells.items()}
        for r in wis_rows(var_work, base_work, profile, cpus):
            # a published cell the profile was fitted on keeps the fit interval; anything else is a
            # prediction for a table the fit never saw (between-table discrepancy, cost/discrepancy.py)
            role = role_of(pub_cells[r.cpus], profile) if r.cpus in pub_cells else "unseen"
            steady = _steady_log(var_work.steady, base_work.steady, r.cpus)
            iv = log_interval(steady, profile, "throughput", role)
            _, lo, hi = iv.pct()
            rows.append(
                {
                    **_size_keys(c),
                    "cpus": r.cpus,
                    "baseline": base_label,
                    "profile": profile.name,
                    "first_iterations_per_s": round(r.first.variant.iterations_per_s, 3),
                    "first_change_pct": round(r.first.change_pct, 3),
                    "steady_iterations_per_s": round(r.steady.variant.iterations_per_s, 3),
                    "baseline_steady_iterations_per_s": round(r.steady.baseline.iterations_per_s, 3),
                    "steady_change_pct": round(r.steady.change_pct, 3),
                    "steady_change_lo_pct": round(lo, 3) if iv.has_fit else None,
                    "steady_change_hi_pct": round(hi, 3) if iv.has_fit else None,
                    "published_steady_change_pct": published.get(r.cpus),
                    **_decomp_dict(r.steady),
                }
            )
    cols = [
        *key_columns(keys, always=("cpus",)),
        Column("first_iterations_per_s", "first it/s", lambda v: f"{v:,.0f}"),
        Column("first_change_pct", "first change", _pct_cell),
        Column("steady_iterations_per_s", "steady it/s", lambda v: f"{v:,.0f}"),
        Column("steady_change_pct", "steady change (90%)", show=_interval_cell("steady_change")),
        *_decomp_columns(),
    ]
    c = combos[0]
    if "preset" not in keys:
        kernels = f"{c.preset} vs {rows[0]['baseline']}"
    elif c.baseline in (None, "nocont"):
        kernels = "each preset vs itself without PTE_CONT"
    else:
        kernels = f"each preset vs {c.baseline}"
    fixed = _fixed_text(combos, [*keys, "preset"])
    profiles = ", ".join(dict.fromkeys(r["profile"] for r in rows))
    title = (
        f"will-it-scale fork and exit: {kernels}, {fixed}{' per worker' if 'mem' not in keys else ''}, "
        f"profile {profiles}"
    )
    return Tidy(cols, rows, title=title, meta={"workload": "wis-fork-exit", "sweep": keys})


def _wis(args: argparse.Namespace) -> int:
    table = wis_table(combinations(args))  # ptesim.api.wis() prices the same table

    def plot(path: str) -> None:
        from ptesim.report.plots import sweep_plot

        sweep_plot(
            table,
            path,
            x="cpus",
            y="steady_change_pct",
            ylabel="steady-state change in iterations/s vs baseline (%)",
            err=("steady_change_lo_pct", "steady_change_hi_pct"),
            published="published_steady_change_pct",
        )

    emit(args, table, plot=plot)
    return 0


# -- latency ---------------------------------------------------------------------------------------


def latency_table(op: str, combos: list[Combination]) -> Tidy:
    """Price one ``op`` for every combination: one row per combination, times in nanoseconds."""
    from ptesim.cost.intervals import log_interval
    from ptesim.cost.runs import prefetch
    from ptesim.cost.validate import role_of
    from ptesim.workloads.latency import OPS, latency_spec, latency_time

    if op not in OPS:
        raise UsageError(f"unknown operation {op!r} (expected one of {', '.join(OPS)})")
    keys = varying(combos)
    plans = []
    for c in combos:
        profile, feats = _priced(c)
        kw: dict[str, Any] = {"folio": c.folio, "mem": c.mem, "granule": c.granule, "cpu_features": feats}
        kw.update(mapping_kwargs(c.mapping, run_spec_type()))
        spec = latency_spec(op, c.arch, c.preset, overrides=c.override_dict(), **kw)
        base = None
        if c.baseline is not None:
            base_preset, base_ov, base_label = _baseline(c)
            base = (latency_spec(op, c.arch, base_preset, overrides=base_ov, **kw), base_label)
        plans.append((c, profile, spec, base))
    prefetch([s for _, _, spec, base in plans for s in (spec, base[0] if base else None) if s is not None])
    rows: list[dict[str, Any]] = []
    for c, profile, spec, base in plans:
        t = latency_time(spec, profile)

        def log_ms(p: Profile, spec: Any = spec) -> float:
            return math.log(latency_time(spec, p).cycle_ns / 1e6)

        pub = [
            p
            for p in _published("latency", profile.name)
            if p.op == op
            and p.variant == c.preset
            and (p.folio, p.mem, p.mapping) == (c.folio, c.mem, c.mapping)
            and not c.overrides
        ]
        timed = [p for p in pub if p.metric == "seconds"]
        # a fitted published time keeps the fit interval; any other time is unseen by the fit
        iv = log_interval(log_ms, profile, "time", role_of(timed[0], profile) if timed else "unseen")
        published = [p.value for p in pub if p.metric == "seconds"]
        published_change = [p.value for p in pub if p.percent and p.baseline == c.baseline]
        row: dict[str, Any] = {
            "op": op,
            **_size_keys(c),
            "profile": profile.name,
            "time_ns": round(t.cycle_ns, 1),
            "time_lo_ns": round(math.exp(iv.lo) * 1e6, 1) if iv.has_fit else None,
            "time_hi_ns": round(math.exp(iv.hi) * 1e6, 1) if iv.has_fit else None,
            "published_time_ns": round(published[0] * 1e9, 1) if published else None,
            **{f"{k}_ns": round(v, 1) for k, v in t.by_category.items()},
        }
        if base is not None:
            bt = latency_time(base[0], profile)
            row.update(
                baseline=base[1],
                baseline_time_ns=round(bt.cycle_ns, 1),
                change_pct=round(100.0 * (t.cycle_ns / bt.cycle_ns - 1.0), 3),
                published_change_pct=published_change[0] if published_change else None,
            )
        rows.append(row)
    cols = [
        *key_columns(keys),
        Column("time_ns", "ms", ms_from_ns_cell),
        Column("time_lo_ns", "90% low ms", ms_from_ns_cell),
        Column("time_hi_ns", "90% high ms", ms_from_ns_cell),
        *[
            Column(f"{k}_ns", f"{CATEGORY_TITLES[k]} ms", ms_from_ns_cell)
            for k in CATEGORIES
            if any(r.get(f"{k}_ns") for r in rows)
        ],
    ]
    if any("baseline" in r for r in rows):
        cols += [
            Column("baseline_time_ns", "baseline ms", ms_from_ns_cell),
            Column("change_pct", "change", _pct_cell),
        ]
    title = (
        f"{op}: {_fixed_text(combos, keys)}, profile {', '.join(dict.fromkeys(r['profile'] for r in rows))}"
    )
    return Tidy(cols, rows, title=title, meta={"op": op, "sweep": keys})


def _latency_line(table: Tidy) -> None:
    """The one-line form of a latency run of one combination."""
    r = table.rows[0]
    parts = ", ".join(
        f"{CATEGORY_TITLES[k]} {r[f'{k}_ns'] / 1e6:.3f}" for k in CATEGORIES if r.get(f"{k}_ns")
    )
    mem = format_size(r["mem_bytes"])
    folios = _folio_label(r["granule_bytes"], r["folio_bytes"], r["mapping"])
    interval = (
        f" (90% interval {r['time_lo_ns'] / 1e6:.3f}…{r['time_hi_ns'] / 1e6:.3f})"
        if r["time_lo_ns"] is not None
        else " (no fit)"
    )
    print(
        f"{r['op']}: {r['arch']} {r['preset']}, {mem} of {folios} "
        f"({format_size(r['granule_bytes'])} pages), profile {r['profile']}: {r['time_ns'] / 1e6:.3f} ms"
        f"{interval}; {parts} ms"
    )
    if "baseline" in r:
        print(
            f"baseline {r['baseline']}: {r['baseline_time_ns'] / 1e6:.3f} ms; change {r['change_pct']:+.1f}%"
        )


def _latency(args: argparse.Namespace) -> int:
    from ptesim.workloads.latency import OPS

    if args.op not in OPS:
        raise UsageError(f"unknown operation {args.op!r} (expected one of {', '.join(OPS)})")
    table = latency_table(args.op, combinations(args))

    def plot(path: str) -> None:
        from ptesim.report.plots import sweep_plot

        sweep_plot(
            table,
            path,
            y="time_ns",
            ylabel=f"{args.op} latency, one process (ns)",
            err=("time_lo_ns", "time_hi_ns"),
            published="published_time_ns",
        )

    emit(args, table, text=(lambda: _latency_line(table)) if len(table.rows) == 1 else None, plot=plot)
    return 0


# -- calibrate ---------------------------------------------------------------------------------------


def _read_table(path: str) -> list[tuple[str, int, float]]:
    """A measured table: CSV with column ``cpus`` and one ``<label>_pct`` column per variant."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read table {path}: {exc.strerror}") from None
    body = "\n".join(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    reader = csv.DictReader(io.StringIO(body))
    if not reader.fieldnames or "cpus" not in reader.fieldnames:
        raise UsageError(f"{path}: needs a 'cpus' column and one '<variant>_pct' column per variant")
    pct_cols = [k for k in reader.fieldnames if k.endswith("_pct")]
    if not pct_cols:
        raise UsageError(f"{path}: no '<variant>_pct' column")
    out = []
    for lineno, r in enumerate(reader, start=2):
        try:
            cpus = int(r["cpus"])
        except (TypeError, ValueError):
            raise UsageError(f"{path}: line {lineno}: bad CPU count {r['cpus']!r}") from None
        if cpus < 1:
            raise UsageError(f"{path}: line {lineno}: CPU count must be positive")
        for k in pct_cols:
            v = r.get(k)
            if v is None or not v.strip():
                continue
            try:
                out.append((k.removesuffix("_pct"), cpus, float(v)))
            except ValueError:
                raise UsageError(f"{path}: line {lineno}: bad number {v!r} in column {k}") from None
    if not out:
        raise UsageError(f"{path}: no measurements")
    return out


def _apply_start(profile: Profile, text: str | None) -> Profile:
    """``--start seed`` or ``--start name=value,...``: initial values before fitting."""
    from ptesim.cost.profile import resolve_parameter

    if not text:
        return profile
    if text == "seed":
        from ptesim.cost.seed import SEED_START

        return profile.with_values(SEED_START)
    values: dict[str, float] = {}
    params = profile.parameters()
    for item in text.split(","):
        name, sep, val = item.partition("=")
        if not sep:
            raise UsageError(f"bad --start {item!r}: expected name=value or 'seed'")
        try:
            values[resolve_parameter(name.strip(), params)] = float(val)
        except ValueError:
            raise UsageError(f"bad --start value {val!r} for {name}") from None
    return profile.with_values(values)


def _print_fit(res: FitResult, unit: str, as_json: bool, as_csv: bool = False) -> None:
    if as_csv:
        err = "error_pp" if unit == "pp" else "error_pct"
        lines = [
            {
                "label": c.label,
                "cpus": c.cpus,
                "measured": c.measured,
                "model": round(c.model, 4),
                err: round(c.error, 3),
                "heldout": c.heldout,
            }
            for c in res.cells
        ]
        sys.stdout.write(Tidy([Column(k) for k in lines[0]], lines).csv())
        return
    if as_json:
        print(
            json.dumps(
                {
                    "fitted": res.fitted,
                    "initial": res.initial,
                    "cells": [
                        {
                            "label": c.label,
                            "cpus": c.cpus,
                            "measured": c.measured,
                            "model": round(c.model, 4),
                            "error": round(c.error, 3),
                            "unit": "pp" if c.unit == "%" else "%",
                            "heldout": c.heldout,
                        }
                        for c in res.cells
                    ],
                    "max_abs_error_fitted": round(res.fitted_max_abs_error, 3),
                    "max_abs_error_heldout": round(res.heldout_max_abs_error, 3)
                    if any(c.heldout for c in res.cells)
                    else None,
                    "provenance": {k: res.profile.provenance[k] for k in res.fitted},
                    "at_bound": res.at_bound,
                },
                indent=2,
            )
        )
        return
    rows = [
        [
            c.label,
            str(c.cpus),
            f"{c.measured:.4g}",
            f"{c.model:.4g}",
            f"{c.error:+.2f}",
            "held out" if c.heldout else "fitted",
        ]
        for c in res.cells
    ]
    print(markdown_table(["cell", "cpus", "measured", "model", f"error {unit}", ""], rows))
    for k, v in res.fitted.items():
        print(f"{k} = {v:.6g} (start {res.initial[k]:.6g})")
    for w in res.warnings():
        print(w)
    line = f"max |error| fitted {res.fitted_max_abs_error:.2f} {unit}"
    if any(c.heldout for c in res.cells):
        line += f", held out {res.heldout_max_abs_error:.2f} {unit}"
    print(line)


def _command_line(args: argparse.Namespace) -> str:
    """The calibrate command as it could be typed again (for provenance)."""
    parts = ["ptesim", "calibrate", "--profile", default_profile(args)]
    for opt, val in (
        ("--from-host", args.from_host),
        ("--table", args.table),
        ("--start", args.start),
        ("--fit", args.fit),
        ("--holdout", args.holdout),
        ("--holdout-sizes", args.holdout_sizes),
        ("--statistic", None if args.statistic == "median" else args.statistic),
    ):
        if val:
            parts += [opt, str(val)]
    return " ".join(shlex.quote(p) for p in parts)


def _calibrate_tables(args: argparse.Namespace) -> int:
    from ptesim.cost.tablefit import calibrate_tables
    from ptesim.cost.validate import summary

    if args.from_host or args.table:
        raise UsageError("calibrate: give --tables, --table or --from-host, one of them")
    names = [n.strip() for n in args.fit.split(",") if n.strip()] or None
    holdout = [h.strip() for h in args.holdout.split(",") if h.strip()] if args.holdout else []
    profile = given(args, "profile")
    parts = ["ptesim", "calibrate", "--tables", *[Path(t).name for t in args.tables]]
    if profile:
        parts += ["--profile", str(args.profile)]
    if names:
        parts += ["--fit", ",".join(names)]
    if holdout:
        parts += ["--holdout", ",".join(holdout)]
    command = " ".join(shlex.quote(p) for p in parts)
    res = calibrate_tables(
        args.tables,
        profile=str(args.profile) if profile else None,
        fit_names=names,
        holdout=holdout,
        cross=args.cross_validate,
        command=command,
    )
    if args.csv:
        lines = [{"fit": "all tables", **p.as_dict()} for e in res.values() for p in e["predictions"]] + [
            {"fit": f"without {fr.table}", **p.as_dict()}
            for e in res.values()
            for fr in e.get("folds", [])
            for p in fr.predictions
        ]
        sys.stdout.write(Tidy([Column("fit"), *validate_table([]).columns], lines).csv())
    elif args.json:
        doc: dict[str, Any] = {}
        for name, e in res.items():
            f = e["fit"]
            doc[name] = {
                "fitted": f.fitted,
                "initial": f.initial,
                "bounds": {k: [f.profile.bounds[k].lo, f.profile.bounds[k].hi] for k in f.names},
                "at_bound": f.at_bound,
                "residual_sd": f.profile.fit.residual_sd if f.profile.fit else None,
                "cells": [p.as_dict() for p in e["predictions"]],
            }
            if "folds" in e:
                doc[name]["cross_validation"] = [
                    {
                        "table": fr.table,
                        "discrepancy": _disc_dict(fr.discrepancy),
                        "cells": [p.as_dict() for p in fr.predictions],
                    }
                    for fr in e["folds"]
                ]
                doc[name]["discrepancy"] = _disc_dict(e["discrepancy"])
        print(json.dumps(doc, indent=2))
    else:
        for name, e in res.items():
            f = e["fit"]
            print(
                f"## {name}: {len(f.train)} cells fitted, {len(f.held_out)} held out, "
                f"rms log error {f.rms_log:.3f}\n"
            )
            rows = [
                [
                    k,
                    f"{f.initial[k]:.4g}",
                    f"{v:.4g}",
                    f"[{f.profile.bounds[k].lo:.4g}, {f.profile.bounds[k].hi:.4g}]",
                    f.at_bound.get(k, ""),
                ]
                for k, v in f.fitted.items()
            ]
            print(markdown_table(["parameter", "start", "fitted", "physical range", "at bound"], rows))
            print()
            print(_cells_table(e["predictions"]))
            for w in f.warnings():
                print(w)
            if "folds" in e:
                print(f"\nLeave-one-table-out ({name}): each table predicted by a fit that never saw it\n")
                print(_cells_table([p for fr in e["folds"] for p in fr.predictions]))
                s = summary([p for fr in e["folds"] for p in fr.predictions]).get("held-out", {})
                if s:
                    print(
                        f"\nheld out: {s['cells']} cells; intervals cover {100 * s['coverage_90']:.0f}%; "
                        f"changes >+100% within a factor 2: {s['big_within_factor_2']}; "
                        f"changes within ±20% within 5 pp: {s['small_within_5pp']}"
                    )
                for fr in e["folds"]:
                    print(f"(without {fr.table}) {_disc_text(fr.discrepancy)}")
                    for w in fr.fit.warnings():
                        print(f"(without {fr.table}) {w}")
                print(f"stored for tables the fit has not seen: {_disc_text(e['discrepancy'])}")
            print()
    if args.write:
        _write_profiles(args.write, [e["fit"].profile for e in res.values()])
    return 0


def _disc_dict(d: Any) -> dict[str, Any]:
    return {"sd": round(d.sd, 6), "df": d.df, "from": list(d.sources), "pooled": d.pooled}


def _disc_text(d: Any) -> str:
    if not d.sources:
        return "between-table discrepancy: none (no leave-one-table-out residuals)"
    how = "pooled over machines, " if d.pooled else ""
    return (
        f"between-table discrepancy sd {d.sd:.3f} (log scale, t with {d.df} df; {how}"
        f"from {', '.join(d.sources)})"
    )


def _write_profiles(target: str, profiles: list[Profile]) -> None:
    from ptesim.cost.profile import dump_profile

    path = Path(target)
    if target.endswith(".toml"):
        if len(profiles) != 1:
            raise UsageError("calibrate --write FILE.toml: the fit made several profiles; give a directory")
        dests = [(path, profiles[0])]
    else:
        dests = [(path / f"{p.name}.toml", p) for p in profiles]
    for dest, prof in dests:
        try:
            old = dest.read_text(encoding="utf-8") if dest.is_file() else ""
            head = "".join(line + "\n" for line in old.splitlines() if line.startswith("#"))
            dest.write_text(head + dump_profile(prof), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {dest}: {exc.strerror}") from None
        print(f"wrote {dest}")


def _cells_table(preds: list[Any]) -> str:
    return validate_table(preds).markdown()


def _calibrate(args: argparse.Namespace) -> int:
    from ptesim.cost.profile import dump_profile, resolve_parameter

    if args.tables:
        return _calibrate_tables(args)
    if args.cross_validate:
        raise UsageError("calibrate: --cross-validate applies to --tables")
    profile = _profile(default_profile(args))
    names = [n.strip() for n in args.fit.split(",") if n.strip()]
    params = profile.parameters()
    for n in names:
        resolve_parameter(n, params)
    holdout = parse_cpu_list(args.holdout) if args.holdout else []
    if args.table and args.from_host:
        raise UsageError("calibrate: give either --table or --from-host, not both")
    if args.table:
        _read_table(args.table)  # fail early on an unreadable table
    command = _command_line(args)
    if args.from_host:
        from ptesim.cost.hostfit import fit_host, read_host_results

        read_host_results(args.from_host)
        if holdout:
            raise UsageError(
                "calibrate --from-host: hold out folio sizes with --holdout-sizes, not --holdout"
            )
        start = _apply_start(profile, args.start)
        sizes = [s for s in args.holdout_sizes.split(",") if s.strip()]
        res = fit_host(
            args.from_host, start, names, holdout_sizes=sizes, statistic=args.statistic, command=command
        )
        _print_fit(res, "%", args.json, args.csv)
    else:
        if args.holdout_sizes:
            raise UsageError("calibrate: --holdout-sizes applies to --from-host")
        if not names:
            raise UsageError("calibrate: name at least one parameter to fit (--fit a,b,...)")
        res = _fit_table(args, _apply_start(profile, args.start), names, holdout, command)
        _print_fit(res, "pp", args.json, args.csv)
    if args.write:
        try:
            Path(args.write).write_text(dump_profile(res.profile), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.write}: {exc.strerror}") from None
        if not args.json:
            print(f"wrote {args.write}")
    return 0


def _fit_table(
    args: argparse.Namespace, profile: Profile, names: list[str], holdout: list[int], command: str
) -> FitResult:
    from ptesim.cost.calibrate import Cell, fit
    from ptesim.cost.seed import VARIANTS, seed_cells, seed_work

    if profile.arch != "arm64":
        raise UsageError(
            f"calibrate --table: the seed workload runs on arm64; profile {profile.name} is {profile.arch}"
        )
    mem = format_size(only(args, "mem", "calibrate"))
    work = seed_work(profile, mem=mem)
    if args.table is None:
        cells = seed_cells(work)
        what = "seed table"
    else:
        cells = []
        for label, cpus, pct in _read_table(args.table):
            if label not in VARIANTS:
                raise UsageError(f"{args.table}: unknown column {label}_pct (expected {', '.join(VARIANTS)})")
            cells.append(Cell(label, cpus, work[label].steady, work["baseline"].steady, pct))
        what = f"table {Path(args.table).name}"
    if holdout:
        missing = sorted(set(holdout) - {c.cpus for c in cells})
        if missing:
            raise UsageError(f"--holdout: no cell at {missing[0]} CPUs in the {what}")
    fitted_on = sorted({c.cpus for c in cells} - set(holdout))
    source = f"{what}, CPUs {', '.join(map(str, fitted_on))}, {command}"
    return fit(profile, names, cells, holdout_cpus=holdout, source=source)


# -- whatif ------------------------------------------------------------------------------------------


def _whatif_arches(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(args.arch) if given(args, "arch") else None


def whatif_op_table(op: str, mems: tuple[int, ...], arches: tuple[str, ...] | None = None) -> Tidy:
    """``whatif --op``: one row per configuration and mapping size, times in nanoseconds."""
    from ptesim.cost.whatif import calibration_label, whatif_op

    rows: list[dict[str, Any]] = []
    for mem in mems:
        for r in whatif_op(op, mem=format_size(mem), arches=arches):
            rows.append(
                {
                    **_config_json(r.config, op=r.config.op),
                    "mem_bytes": mem,
                    "profile": r.profile.name,
                    "profile_values": calibration_label(r.profile),
                    "kernels": f"{r.config.before[0]} -> {r.config.after[0]}",
                    "before_ns": round(r.before_ms * 1e6, 1),
                    "after_ns": round(r.after_ms * 1e6, 1),
                    "change_pct": round(r.change_pct, 3),
                }
            )
    keys = ["config", *(["mem"] if len(mems) > 1 else [])]
    cols = [
        Column("config"),
        *key_columns(keys),
        Column("folio_bytes", "folio", size_cell),
        Column("kernels"),
        Column("before_ns", "before ms", _ms4),
        Column("after_ns", "after ms", _ms4),
        Column("change_pct", "change", _pct_cell),
        Column("profile_values", "profile values"),
    ]
    title = f"{op} of {', '.join(format_size(m) for m in mems)}: change in latency from its batching"
    return Tidy(cols, rows, title=title, meta={"op": op, "sweep": keys[1:]})


def _ms4(v: Any) -> str:
    return "-" if v is None else f"{v / 1e6:.4f}"


def _whatif_op(args: argparse.Namespace) -> int:
    from ptesim.cost.whatif import OP_KERNELS, op_configs

    op = args.op
    op_configs(op)  # validates the operation before any model run
    mems = tuple(args.mem) if given(args, "mem") else (64 << 20,)
    table = whatif_op_table(op, mems, _whatif_arches(args))

    def text() -> None:
        what = OP_KERNELS[op][0]
        mem = ", ".join(format_size(m) for m in mems)
        print(
            f"Change in the latency of one {op} of {mem} from its batching ({what}), one process on an "
            "idle machine, predicted by the model (negative = faster).\n"
        )
        print(Tidy(table.columns, table.rows).markdown())
        note = " without -> with the core zap batching" if op == "munmap" else ""
        print(
            f"\nkernels: before -> after{note}; overrides per row in --json.  '4 threads': the process has "
            "a thread on every CPU, the only case in which v6.15's INVLPGB policy broadcasts."
        )

    def plot(path: str) -> None:
        from ptesim.report.plots import sweep_plot

        sweep_plot(
            table,
            path,
            x="mem_bytes" if len(mems) > 1 else None,
            bars=len(mems) == 1,
            y="change_pct",
            ylabel=f"change in {op} latency from batching (%)",
        )

    emit(args, table, text=text, plot=plot)
    return 0


def whatif_table(
    cpus: tuple[int, ...], mems: tuple[int, ...], fork_mem: str, arches: tuple[str, ...] | None = None
) -> Tidy:
    """``whatif`` (fork): one row per configuration, will-it-scale buffer and CPU count."""
    from ptesim.cost.whatif import calibration_label, whatif

    rows: list[dict[str, Any]] = []
    for mem in mems:
        for r in whatif(list(cpus), mem=format_size(mem), fork_mem=fork_mem, arches=arches):
            fork = r.fork_interval.pct() if r.fork_interval and r.fork_interval.has_fit else None
            for c, iv in zip(r.wis, r.wis_intervals, strict=True):
                _, lo, hi = iv.pct()
                rows.append(
                    {
                        **_config_json(r.config),
                        "profile": r.profile.name,
                        "profile_values": calibration_label(r.profile),
                        "calibrated": sorted(k for k in r.profile.parameters() if r.profile.is_calibrated(k)),
                        "mem_bytes": mem,
                        "cpus": c.cpus,
                        "wis_change_pct": round(c.change_pct, 3),
                        "wis_change_lo_pct": round(lo, 3) if iv.has_fit else None,
                        "wis_change_hi_pct": round(hi, 3) if iv.has_fit else None,
                        "fork_mem_bytes": parse_size(fork_mem),
                        "fork_change_pct": round(r.fork_change_pct, 3),
                        "fork_change_lo_pct": round(fork[1], 3) if fork else None,
                        "fork_change_hi_pct": round(fork[2], 3) if fork else None,
                        "fork_before_ns": round(r.fork_before_ms * 1e6, 1),
                        "fork_after_ns": round(r.fork_after_ms * 1e6, 1),
                    }
                )
    keys = ["config", *(["mem"] if len(mems) > 1 else []), "cpus"]
    cols = [
        Column("config"),
        *key_columns(keys),
        Column("folio_bytes", "folio", size_cell),
        Column("wis_change_pct", "wis change (90%)", show=_interval_cell("wis_change")),
        Column("fork_change_pct", f"{fork_mem} fork", show=_interval_cell("fork_change")),
        Column("profile_values", "profile values"),
    ]
    return Tidy(cols, rows, meta={"sweep": [k for k in keys if k != "config"]})


def _whatif_text(table: Tidy, cpus: tuple[int, ...], mems: tuple[int, ...], fork_mem: str) -> None:
    """The human form: one line per configuration (and buffer), a column per CPU count."""
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in table.rows:
        by.setdefault((r["config"], r["mem_bytes"]), []).append(r)
    wis, fork = _interval_cell("wis_change"), _interval_cell("fork_change")
    lines = [
        [
            label,
            *([format_size(mem)] if len(mems) > 1 else []),
            format_size(rs[0]["folio_bytes"]),
            *[wis(r) for r in rs],
            fork(rs[0]),
            rs[0]["profile_values"],
        ]
        for (label, mem), rs in by.items()
    ]
    mem_text = ", ".join(format_size(m) for m in mems)
    print(
        "Change from batching PTEs during fork (before -> after), predicted by the model.\n"
        f"will-it-scale fork and exit ({mem_text} per worker, steady state): change in iterations/s; "
        f"{fork_mem} fork: change in latency of one process's first fork (negative = faster).  "
        "In brackets: the 90% interval of the profile's table fit widened by its between-table "
        "discrepancy, for no table showed the fit these configurations (docs/cost.md section 11; "
        "'no fit': the profile's values are assumed, not fitted).\n"
    )
    print(
        markdown_table(
            [
                "config",
                *(["mem"] if len(mems) > 1 else []),
                "folio",
                *[f"wis {n} cpus" for n in cpus],
                f"{fork_mem} fork",
                "profile values",
            ],
            lines,
        )
    )
    print("\nCalibrated values (all others assumed; each profile's [provenance] says why):")
    seen: dict[str, list[str]] = {}
    for r in table.rows:
        seen.setdefault(r["profile"], r["calibrated"])
    for name, cal in seen.items():
        print(f"  {name}: {', '.join(cal) if cal else 'none'}")
    print(
        "\nbefore -> after: each preset without -> with the core fork/zap batching: arm64 v6.9 "
        "(+bbml2_aware with BBML2), riscv v6.9-svnapot, x86-64 v6.9; 'seed kernels' is the seed's "
        "contpte-v1-before-opt -> contpte-v1-after-opt.  Folios: the contiguous block size of the granule."
    )


def _whatif(args: argparse.Namespace) -> int:
    if args.op != "fork":
        return _whatif_op(args)
    cpus, mems = tuple(args.cpus), tuple(args.mem)
    table = whatif_table(cpus, mems, args.fork_mem, _whatif_arches(args))

    def plot(path: str) -> None:
        from ptesim.report.plots import sweep_plot

        sweep_plot(
            table,
            path,
            x="cpus",
            y="wis_change_pct",
            ylabel="will-it-scale fork+exit: change in iterations/s from batching (%)",
            err=("wis_change_lo_pct", "wis_change_hi_pct"),
        )

    emit(args, table, text=lambda: _whatif_text(table, cpus, mems, args.fork_mem), plot=plot)
    return 0


# -- validate --------------------------------------------------------------------------------------


def validate_table(preds: list[Any]) -> Tidy:
    """Priced published cells (:class:`ptesim.cost.validate.CellPrediction`) as a tidy table, one row
    per cell: what ``validate`` and ``calibrate --tables`` print."""
    cols = [
        Column("id", "cell"),
        Column("machine"),
        Column("op", show=lambda r: f"{r['op']} {r['mem']}"),
        Column("folio", show=lambda r: f"{r['folio']} {r['mapping']}"),
        Column("cpus"),
        Column(
            "variant",
            "kernels",
            show=lambda r: f"{r['variant']} vs {r['baseline']}" if r["baseline"] else r["variant"],
        ),
        Column("published", show=_published_cell),
        Column("predicted", "predicted (90%)", show=_predicted_cell),
        Column(
            "error",
            show=lambda r: f"{r['error_pp']:+.1f}pp" if "error_pp" in r else f"{r['error_pct']:+.1f}%",
        ),
        Column("role"),
    ]
    return Tidy(cols, [p.as_dict() for p in preds])


def _published_cell(r: Any) -> str:
    return f"{r['published_pct']:+.1f}%" if "published_pct" in r else f"{r['published']:.4g} s"


def _predicted_cell(r: Any) -> str:
    if "predicted_pct" in r:
        v, lo, hi = r["predicted_pct"], r["lo_pct"], r["hi_pct"]
        return f"{v:+.1f}% ({lo:+.1f}…{hi:+.1f})" if lo != hi else f"{v:+.1f}%"
    v, lo, hi = r["predicted"], r["lo"], r["hi"]
    return f"{v:.4g} s ({lo:.4g}…{hi:.4g})" if lo != hi else f"{v:.4g} s"


def _summary_lines(summ: dict[str, Any]) -> None:
    for role, s in summ.items():
        if not isinstance(s, dict):
            continue
        parts = [f"{s['cells']} cells"]
        if s["max_abs_error_pp"] is not None:
            parts.append(f"max |error| {s['max_abs_error_pp']:.1f} pp")
        if s["max_abs_error_seconds_pct"] is not None:
            parts.append(f"max |error| of times {s['max_abs_error_seconds_pct']:.1f}%")
        parts.append(f"90% intervals cover {100 * s['coverage_90']:.0f}%")
        parts.append(f"median width ×{s['median_width_factor']:.2f}")
        parts.append(f"changes >+100% within a factor 2: {s['big_within_factor_2']}")
        parts.append(f"changes within ±20% within 5 pp: {s['small_within_5pp']}")
        print(f"{role}: " + ", ".join(parts))


def validation_plot(rows: list[dict[str, Any]], path: str, *, title: str = "") -> None:
    """Published against predicted with 90% interval bars: changes (%) and times (ns) apart."""
    from ptesim.report.plots import published_plot

    panels = []
    for unit, suffix in (("%", "_pct"), ("ns", "_ns")):
        part = [
            {k: r[f"{k}{suffix}"] for k in ("published", "predicted", "lo", "hi")} | {"role": r["role"]}
            for r in rows
            if f"published{suffix}" in r
        ]
        if part:
            what = "change" if unit == "%" else "time"
            panels.append((part, unit, f"{title}: {what}" if title else what))
    published_plot(panels, path)


def _validate(args: argparse.Namespace) -> int:
    from ptesim.api import validation

    v = validation(args.tables, cross_validate=args.cross_validate)
    table = validate_table(v.predictions)
    how = "each table predicted by a refit that never saw it" if v.cross_validated else "shipped profiles"

    def text() -> None:
        if v.cross_validated:
            print(f"Leave-one-table-out: {how}\n")
        print(table.markdown())
        print()
        _summary_lines(v.summary)

    emit(
        args,
        table,
        json_doc={"cells": v.rows(), "summary": v.summary, "cross_validated": v.cross_validated},
        text=text,
        plot=lambda path: validation_plot(v.rows(), path, title=f"published vs predicted ({how})"),
    )
    return 0


# -- profiles ----------------------------------------------------------------------------------------


def _one_line(text: str, width: int = 60) -> str:
    """The first sentence of ``text``, cut to ``width`` characters."""
    first = " ".join(text.split()).split(". ")[0].rstrip(".")
    return first if len(first) <= width else first[: width - 1] + "…"


def _profiles(args: argparse.Namespace) -> int:
    from ptesim.cost.profile import shipped_profiles

    if args.name is None:
        rows = []
        for name in shipped_profiles():
            prof = _profile(name)
            params = prof.parameters()
            cal = sum(1 for k in params if prof.is_calibrated(k))
            rows.append(
                {
                    "name": prof.name,
                    "arch": prof.arch,
                    "preset": prof.preset,
                    "calibrated": cal,
                    "assumed": len(params) - cal,
                    "description": _one_line(prof.description),
                }
            )
        cols = [Column(k) for k in ("name", "arch", "preset", "calibrated", "assumed", "description")]
        emit(args, Tidy(cols, rows, title="cost profiles ('ptesim profiles NAME' shows one)"))
        return 0
    prof = _profile(args.name)
    rows = []
    for key, value in prof.parameters().items():
        row: dict[str, Any] = {"parameter": key, "value": value}
        row["provenance"] = prof.provenance.get(key, "")  # with the physical range of a bounded value
        rows.append(row)
    cols = [Column("parameter"), Column("value"), Column("provenance")]
    title = f"{prof.name} ({prof.arch}, preset {prof.preset or '-'}): {_one_line(prof.description, 200)}"
    if prof.cpu_features:
        title += f"\nCPU features: {', '.join(sorted(prof.cpu_features))}"
    emit(
        args,
        Tidy(cols, rows, title=title),
        json_doc={
            "name": prof.name,
            "arch": prof.arch,
            "preset": prof.preset,
            "description": prof.description,
            "cpu_features": sorted(prof.cpu_features),
            "source": prof.source,
            "parameters": rows,
        },
    )
    return 0


def register(sub: Any) -> None:
    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, **kw)
        return p

    p = add("reproduce", help="reproduce a published table with the model (seed)")
    p.add_argument("what", help="which table: seed")
    add_options(
        p, "profile", "mem", defaults={"mem": "128M"}, notes={"mem": "buffer per worker, as published"}
    )
    p.add_argument("--plot", metavar="PNG", help="plot published points and model curves")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print the rows, errors and parameters (cost.md §5)")
    g.add_argument("--csv", action="store_true", help="print the rows: published and model, per CPU count")
    p.add_argument("--detail", action="store_true", help="with --json: add decomposition and provenance")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out refit")
    add_scheduler_option(p)
    p.set_defaults(handler=_reproduce)

    priced = ("arch", "preset", "set", "cpu_features", "granule", "folio", "mapping", "mem")
    p = add("wis", help="will-it-scale fork-and-exit throughput from the model")
    add_options(
        p,
        *priced,
        "cpus",
        "profile",
        "baseline",
        defaults={"mem": "128M", "cpus": "1,8,16,24,32"},
        notes={
            "mem": "buffer per worker",
            "cpus": "busy CPUs, one worker each",
            "baseline": "default nocont",
        },
    )
    add_output_options(p, plot=True)
    add_scheduler_option(p)
    p.set_defaults(handler=_wis)

    p = add("latency", help="single-process latency of fork/munmap/dontneed/cow from the model")
    p.add_argument("op", help="fork, munmap, dontneed, dontneed-pages, cow, mprotect or mremap")
    add_options(p, *priced, "profile", "baseline", defaults={"mem": "1G"})
    add_output_options(p, plot=True)
    add_scheduler_option(p)
    p.set_defaults(handler=_latency)

    p = add("calibrate", help="least-squares fit of profile parameters to published or measured tables")
    p.add_argument(
        "--tables", nargs="+", metavar="FILE", help="published-format CSV tables: fit every machine they name"
    )
    p.add_argument(
        "--cross-validate",
        action="store_true",
        help="with --tables: leave one table out at a time and predict it",
    )
    p.add_argument("--table", help="CSV: cpus,before_opt_pct,after_opt_pct (default: the seed table)")
    add_options(p, "profile", "mem", defaults={"mem": "128M"}, notes={"mem": "buffer per worker of the seed"})
    p.add_argument("--fit", default="", help="parameters to fit, comma separated")
    p.add_argument(
        "--holdout",
        default="",
        help="CPU counts left out of the fit; with --tables: table ids or cells (table#n, table:cpus=16)",
    )
    p.add_argument("--start", default=None, help="'seed' or name=value,... : initial values")
    p.add_argument(
        "--from-host", metavar="JSON", help="fit per-PTE/per-batch costs to 'ptesim host <op> --json'"
    )
    p.add_argument("--holdout-sizes", default="", help="with --from-host: folio sizes left out of the fit")
    p.add_argument(
        "--statistic",
        default="median",
        choices=("median", "min"),
        help="with --from-host: fit the net median (default) or the fastest sample less the baseline",
    )
    p.add_argument(
        "--write", metavar="TOML", help="write the fitted profile (with --tables: a directory or FILE.toml)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print the fit (cost.md §3, §9)")
    g.add_argument("--csv", action="store_true", help="print one line per cell: measured, model, error")
    add_scheduler_option(p)
    p.set_defaults(handler=_calibrate)

    p = add("validate", help="price every cell of published tables with the shipped profiles, unrefitted")
    p.add_argument(
        "--tables",
        nargs="+",
        metavar="FILE",
        help="CSV tables in the published format (default: the published tables shipped with ptesim)",
    )
    p.add_argument(
        "--cross-validate",
        action="store_true",
        help="predict each table with its machine's profile refitted without that table "
        "(the fits run on local processes, or on --scheduler's cluster)",
    )
    add_output_options(p, plot=True)
    add_scheduler_option(p)
    p.set_defaults(handler=_validate)

    p = add("profiles", help="list the cost profiles, or show one: values, ranges and provenance")
    p.add_argument("name", nargs="?", help="a profile name or TOML file to show in full")
    add_output_options(p)
    p.set_defaults(handler=_profiles)

    p = add("whatif", help="which architectures benefit from batching PTEs (fork, munmap, mprotect, mremap)")
    p.add_argument(
        "--op",
        default="fork",
        help="fork (will-it-scale and fork latency), or munmap, mprotect, mremap (latency of one operation)",
    )
    add_options(
        p,
        "arch",
        "cpus",
        "mem",
        defaults={"cpus": "1,8,16,32", "mem": "128M"},
        notes={
            "arch": "whatif runs only the configurations of these (without --arch: of every arch)",
            "mem": "will-it-scale buffer per worker; with --op munmap/mprotect/mremap the mapping (64M)",
        },
    )
    p.add_argument("--fork-mem", default="1G", help="mapping of the single-process fork")
    add_output_options(p, plot=True)
    add_scheduler_option(p)
    p.set_defaults(handler=_whatif)


def _config_json(config: Any, *, op: str | None = None) -> dict[str, Any]:
    """The JSON fields naming one whatif configuration (both whatif forms share them, in this order)."""
    out: dict[str, Any] = {"config": config.label, "arch": config.arch}
    if op is not None:
        out["op"] = op
    out.update(
        granule=format_size(config.granule),
        folio=format_size(config.folio),
        granule_bytes=config.granule,
        folio_bytes=config.folio,
        cpu_features=sorted(config.features),
        before={"preset": config.before[0], "overrides": dict(config.before[1])},
        after={"preset": config.after[0], "overrides": dict(config.after[1])},
    )
    return out
