"""Model commands: ``presets``, ``explain``, ``trace``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ptesim.arch import ARCHES, CPU_FEATURES
from ptesim.errors import UsageError
from ptesim.events import SCHEMA_KEYS, with_aggregates
from ptesim.kernel.config import FLAG_FIELDS, PRESETS, parse_overrides
from ptesim.units import format_size, parse_size
from ptesim.workloads.scenarios import SCENARIOS, ModelSpec, run_scenario

GRANULES = {"4K": 4096, "16K": 16384, "64K": 65536}


def add_model_options(p: argparse.ArgumentParser, *, mem: str = "1M", folio: str = "64K") -> None:
    """Options shared by every command that builds a model machine."""
    p.add_argument("--arch", default="x86", help=f"one of {', '.join(ARCHES)} (default x86)")
    p.add_argument("--preset", default="v6.9", help="kernel preset (see 'ptesim presets')")
    p.add_argument("--folio", default=folio, help=f"anonymous folio size, e.g. 4K, 64K, 2M (default {folio})")
    p.add_argument("--mem", default=mem, help=f"size of the populated mapping (default {mem})")
    p.add_argument("--granule", default="4K", help="arm64 translation granule: 4K, 16K or 64K")
    p.add_argument(
        "--cpu-features",
        default=None,
        help="comma-separated CPU features (e.g. tlbi-range,kpti); default: those the preset implies",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="FLAG=VALUE",
        help="override one kernel flag of the preset (repeatable; see 'ptesim presets --flags')",
    )
    p.add_argument("--ncpus", type=int, default=4, help="CPUs of the model machine (default 4)")
    p.add_argument("--placement", default="aligned", choices=("aligned", "malloc"), help="mapping placement")
    p.add_argument("--check", action="store_true", help="run every validate_* invariant after each operation")


def spec_from_args(a: argparse.Namespace, *, trace_limit: int = 0) -> ModelSpec:
    if a.arch not in ARCHES:
        raise UsageError(f"unknown arch {a.arch!r}; known: {', '.join(ARCHES)}")
    if a.preset not in PRESETS:
        raise UsageError(f"unknown preset {a.preset!r}; known: {', '.join(PRESETS)}")
    granule_key = a.granule.upper().removesuffix("B").removesuffix("I")
    if granule_key not in GRANULES:
        raise UsageError(f"bad granule {a.granule!r}: one of 4K, 16K, 64K")
    granule = GRANULES[granule_key]
    mem = parse_size(a.mem, what="--mem")
    folio = parse_size(a.folio, what="--folio")
    if folio % granule or (folio // granule) & (folio // granule - 1):
        raise UsageError(
            f"bad folio size {a.folio}: must be a power-of-two multiple of the {format_size(granule)} page"
        )
    if mem % granule:
        raise UsageError(f"bad --mem {a.mem}: not a multiple of the {format_size(granule)} page")
    if folio > mem:
        raise UsageError(f"bad folio size {a.folio}: larger than the mapping ({a.mem})")
    if not 1 <= a.ncpus <= 1024:
        raise UsageError(f"bad --ncpus {a.ncpus}: between 1 and 1024")
    features: frozenset[str] | None = None
    if a.cpu_features is not None:
        features = frozenset(f.strip() for f in a.cpu_features.split(",") if f.strip())
        unknown = sorted(features - set(CPU_FEATURES[a.arch]))
        if unknown:
            raise UsageError(
                f"unknown CPU feature {unknown[0]!r} for {a.arch}; known: {', '.join(CPU_FEATURES[a.arch])}"
            )
    spec = ModelSpec(
        arch=a.arch,
        preset=a.preset,
        folio=folio,
        mem=mem,
        granule=granule,
        cpu_features=features,
        overrides=parse_overrides(a.set),
        ncpus=a.ncpus,
        placement=a.placement,
        checks=a.check,
        trace_limit=trace_limit,
    )
    spec.config()  # validate overrides early
    from ptesim.kernel.core import Kernel

    g = Kernel(spec.arch, spec.config(), granule=spec.granule, cpu_features=spec.cpu_features, ncpus=1)
    if folio > g.arch.geometry.pmd_size:
        raise UsageError(
            f"bad folio size {a.folio}: larger than the PMD size {format_size(g.arch.geometry.pmd_size)}"
        )
    return spec


# ---- presets ------------------------------------------------------------------------------------


def cmd_presets(a: argparse.Namespace) -> int:
    if a.json:
        out = {
            name: {
                "description": cfg.description,
                "flags": cfg.flags(),
                "cpu_features": sorted(cfg.default_cpu_features),
            }
            for name, cfg in PRESETS.items()
        }
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if a.flags:
        t = Table(title="kernel flags", show_lines=True)
        t.add_column("flag")
        t.add_column("meaning")
        t.add_column("introduced by")
        for f in FLAG_FIELDS:
            t.add_row(f.name, f.metadata["doc"], f.metadata["cite"])
        console.print(t)
        return 0
    names = list(PRESETS)
    t = Table(title="kernel presets")
    t.add_column("flag")
    for n in names:
        t.add_column(n, overflow="fold")
    for f in FLAG_FIELDS:
        vals = [str(getattr(PRESETS[n], f.name)) for n in names]
        t.add_row(f.name, *vals)
    console.print(t)
    for n in names:
        console.print(f"[bold]{n}[/bold]: {PRESETS[n].description}")
    return 0


# ---- explain ------------------------------------------------------------------------------------


def _stack_str(stack: tuple[str, ...], depth: int = 6) -> str:
    frames = list(reversed(stack))[:depth]
    more = " ← …" if len(stack) > depth else ""
    return " ← ".join(frames) + more if frames else "<user>"


def explain_json(res: Any) -> dict[str, Any]:
    spec: ModelSpec = res.spec
    sink = res.sink
    totals = with_aggregates(sink.totals())
    blocks = spec.blocks
    return {
        "arch": spec.arch,
        "preset": spec.preset,
        "scenario": res.scenario,
        "folio": format_size(spec.folio),
        "mem": format_size(spec.mem),
        "granule": format_size(spec.granule),
        "cpu_features": sorted(res.kernel.arch.features),
        "blocks": blocks,
        "totals": totals,
        "per_block": {k: v / blocks for k, v in totals.items()},
        "by_phase": {p: with_aggregates(c) for p, c in sorted(sink.by_phase().items())},
        "by_site": {s: dict(c) for s, c in sorted(sink.by_site().items())},
        "by_stack": [
            {"stack": list(stack), "counts": dict(c)}
            for stack, c in sorted(sink.by_stack().items(), key=lambda kv: -sum(kv[1].values()))
        ],
    }


def cmd_explain(a: argparse.Namespace) -> int:
    spec = spec_from_args(a)
    if a.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {a.scenario!r}; known: {', '.join(SCENARIOS)}")
    res = run_scenario(spec, a.scenario)
    data = explain_json(res)
    if a.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    title = (
        f"{spec.arch} {spec.preset}, {a.scenario}: {data['mem']} of {data['folio']} folios"
        f" ({data['granule']} pages, {data['blocks']:g} × 64K blocks)"
    )
    phases = sorted(data["by_phase"])
    t = Table(title=title)
    t.add_column("primitive")
    t.add_column("total", justify="right")
    t.add_column("per 64K block", justify="right")
    for p in phases:
        t.add_column(p, justify="right")
    keys = list(SCHEMA_KEYS) + sorted(k for k in data["totals"] if k not in SCHEMA_KEYS and data["totals"][k])
    for key in keys:
        total = data["totals"].get(key, 0)
        if not total and key not in SCHEMA_KEYS:
            continue
        t.add_row(
            key,
            f"{total:,}",
            f"{data['per_block'].get(key, 0):.4g}",
            *[f"{data['by_phase'][p].get(key, 0):,}" for p in phases],
        )
    console.print(t)
    s = Table(title="where each primitive came from (innermost kernel function first)")
    s.add_column("call chain")
    s.add_column("primitives")
    for row in data["by_stack"][: a.top]:
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(row["counts"].items()))
        s.add_row(_stack_str(tuple(row["stack"]), a.depth), counts)
    console.print(s)
    return 0


# ---- trace --------------------------------------------------------------------------------------


def cmd_trace(a: argparse.Namespace) -> int:
    spec = spec_from_args(a, trace_limit=a.limit)
    if a.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {a.scenario!r}; known: {', '.join(SCENARIOS)}")
    res = run_scenario(spec, a.scenario)
    recs = res.sink.trace
    if a.json:
        json.dump(
            [{"seq": r.seq, "prim": r.prim, "phase": r.phase, "stack": list(r.stack)} for r in recs],
            sys.stdout,
            indent=1,
        )
        print()
        return 0
    # the trace is kept from the start of the run; show only the scenario's own operation
    total = sum(res.sink.totals().values())
    shown = recs[-total:] if total and total <= len(recs) else recs
    for r in shown:
        print(f"{r.seq:7d}  {r.phase:<12} {r.prim:<18} {_stack_str(r.stack, a.depth)}")
    if len(recs) >= a.limit:
        print(f"(trace stopped at --limit {a.limit} records)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("presets", help="list kernel presets and their flags")
    p.add_argument("--flags", action="store_true", help="describe every flag and the patch behind it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_presets)

    p = sub.add_parser("explain", help="count every primitive of a scenario, by phase and call chain")
    add_model_options(p)
    p.add_argument("--scenario", default="fork-first", help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("--json", action="store_true", help="print the documented JSON object")
    p.add_argument("--top", type=int, default=25, help="call chains to show (default 25)")
    p.add_argument("--depth", type=int, default=6, help="frames per call chain (default 6)")
    p.set_defaults(handler=cmd_explain)

    p = sub.add_parser("trace", help="print the ordered primitives of a small scenario")
    add_model_options(p, mem="64K")
    p.add_argument("--scenario", default="fork-first", help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("--limit", type=int, default=200000, help="records kept (default 200000)")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_trace)
