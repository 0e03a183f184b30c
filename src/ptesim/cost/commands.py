"""Cost-model commands: ``reproduce seed``, ``wis``, ``latency``, ``calibrate``, ``whatif``."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from ptesim.cost.calibrate import Cell, fit
from ptesim.cost.model import CATEGORIES
from ptesim.cost.profile import Profile, dump_profile, load_profile
from ptesim.errors import UsageError
from ptesim.report.tables import markdown_table
from ptesim.units import format_size, parse_cpu_list, parse_size


def _reproduce(args: argparse.Namespace) -> int:
    from ptesim.cost.seed import reproduce

    if args.what != "seed":
        raise UsageError(f"reproduce: unknown table {args.what!r} (known: seed)")
    profile = load_profile(args.profile)
    rep = reproduce(profile, heldout=not args.no_heldout)
    held = rep.heldout
    if args.plot:
        from ptesim.report.plots import seed_plot

        seed_plot(rep.rows, Path(args.plot))
    if args.json:
        out: dict[str, Any] = {
            "rows": rep.rows,
            "max_abs_error_pp": round(rep.max_abs_error_pp, 3),
            "heldout": {
                "cpus": list(held.holdout_cpus) if held else [],
                "max_abs_error_pp": round(held.heldout_max_abs_error_pp, 3) if held else None,
                "fitted": held.fitted if held else {},
            },
            "parameters": rep.parameters,
            "profile": profile.name,
        }
        print(json.dumps(out, indent=2))
        return 0
    rows = []
    for r in rep.rows:
        rows.append(
            [
                str(r["cpus"]),
                f"{r['published_before']:+.1f}%",
                f"{r['model_before']:+.1f}%",
                f"{r['model_before'] - r['published_before']:+.1f}",
                f"{r['published_after']:+.1f}%",
                f"{r['model_after']:+.1f}%",
                f"{r['model_after'] - r['published_after']:+.1f}",
            ]
        )
    print(f"Seed table: will-it-scale fork-and-exit, arm64 4K/64K folios, 128M, profile {profile.name}\n")
    print(markdown_table(["cpus", "before opt", "model", "err pp", "after opt", "model", "err pp"], rows))
    print(f"\nmax |error| {rep.max_abs_error_pp:.2f} pp over all cells")
    if held:
        print(
            f"fitted on CPUs {sorted({c.cpus for c in held.cells if not c.heldout})}: held-out "
            f"{list(held.holdout_cpus)} max |error| {held.heldout_max_abs_error_pp:.2f} pp"
        )
    print("\nDecomposition of each model number (pp): " + ", ".join(CATEGORIES))
    drows = []
    for (label, cpus), ch in sorted(rep.changes.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        drows.append(
            [label, str(cpus), f"{ch.change_pct:+.1f}"]
            + [f"{ch.contributions_pp[c]:+.1f}" for c in CATEGORIES]
        )
    print(markdown_table(["variant", "cpus", "change %", *CATEGORIES], drows))
    return 0


def _wis(args: argparse.Namespace) -> int:
    from ptesim.workloads.wis import wis_rows, wis_work

    profile = load_profile(args.profile)
    feats = profile.cpu_features | frozenset(f for f in args.features.split(",") if f)
    kw: dict[str, Any] = {"folio": parse_size(args.folio), "mem": parse_size(args.mem), "cpu_features": feats}
    var = wis_work(args.arch, args.preset, **kw)
    base = wis_work(args.arch, args.baseline, **kw)
    rows = wis_rows(var, base, profile, parse_cpu_list(args.cpus))
    if args.json:
        print(
            json.dumps(
                {
                    "results": [
                        {
                            "cpus": r.cpus,
                            "first_iterations_per_s": r.first.variant.iterations_per_s,
                            "steady_iterations_per_s": r.steady.variant.iterations_per_s,
                            "first_change_pct": r.first.change_pct,
                            "steady_change_pct": r.steady.change_pct,
                            "steady_contributions_pp": r.steady.contributions_pp,
                        }
                        for r in rows
                    ]
                },
                indent=2,
            )
        )
        return 0
    out = [
        [
            str(r.cpus),
            f"{r.first.variant.iterations_per_s:,.0f}",
            f"{r.first.change_pct:+.1f}%",
            f"{r.steady.variant.iterations_per_s:,.0f}",
            f"{r.steady.change_pct:+.1f}%",
        ]
        for r in rows
    ]
    print(
        f"{args.preset} vs {args.baseline}, {args.arch}, folio {args.folio}, {args.mem}, "
        f"profile {profile.name}\n"
    )
    print(markdown_table(["cpus", "first it/s", "first change", "steady it/s", "steady change"], out))
    return 0


def _latency(args: argparse.Namespace) -> int:
    from ptesim.workloads.latency import latency_ns

    ns = latency_ns(
        args.op, args.arch, args.preset, args.profile, folio=parse_size(args.folio), mem=parse_size(args.mem)
    )
    if args.json:
        print(json.dumps({"op": args.op, "arch": args.arch, "preset": args.preset, "ms": ns / 1e6}))
    else:
        print(f"{args.op} {args.arch} {args.preset} folio {args.folio} mem {args.mem}: {ns / 1e6:.3f} ms")
    return 0


def _read_table(path: str) -> list[tuple[str, int, float]]:
    """A measured table: CSV with column ``cpus`` and one ``<label>_pct`` column per variant."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read table {path}: {exc.strerror}") from None
    body = "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))
    out = []
    for r in csv.DictReader(io.StringIO(body)):
        if "cpus" not in r:
            raise UsageError(f"{path}: needs a 'cpus' column")
        for k, v in r.items():
            if k.endswith("_pct"):
                try:
                    out.append((k.removesuffix("_pct"), int(r["cpus"]), float(v)))
                except (TypeError, ValueError):
                    raise UsageError(f"{path}: bad number in column {k}") from None
    return out


def _calibrate(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    holdout = parse_cpu_list(args.holdout) if args.holdout else []
    if args.from_host:
        raise UsageError("calibrate --from-host: needs the model's latency counts (not available yet)")
    from ptesim.cost.seed import VARIANTS, seed_cells, seed_work

    table = args.table
    if table is None:
        cells = seed_cells(seed_work(profile))
    else:
        work = seed_work(profile)
        cells = []
        for label, cpus, pct in _read_table(table):
            if label not in VARIANTS:
                raise UsageError(f"{table}: unknown column {label}_pct (expected {', '.join(VARIANTS)})")
            cells.append(Cell(label, cpus, work[label].steady, work["baseline"].steady, pct))
    names = [n for n in args.fit.split(",") if n]
    res = fit(profile, names, cells, holdout_cpus=holdout)
    rows = [
        [
            c.label,
            str(c.cpus),
            f"{c.measured_pct:+.1f}",
            f"{c.model_pct:+.2f}",
            f"{c.error_pp:+.2f}",
            "held-out" if c.heldout else "",
        ]
        for c in res.cells
    ]
    print(markdown_table(["cell", "cpus", "measured %", "model %", "residual pp", ""], rows))
    for k, v in res.fitted.items():
        print(f"{k} = {v:.6g} (was {res.initial[k]:.6g})")
    print(
        f"max |residual| fitted {res.fitted_max_abs_error_pp:.2f} pp, "
        f"held-out {res.heldout_max_abs_error_pp:.2f} pp"
    )
    if args.write:
        Path(args.write).write_text(dump_profile(res.profile), encoding="utf-8")
        print(f"wrote {args.write}")
    return 0


#: whatif configurations: label, arch, granule, cpu features, profile
WHATIF = (
    ("arm64 4K", "arm64", 4096, frozenset[str](), "altra"),
    ("arm64 4K +TLBIRANGE", "arm64", 4096, frozenset({"tlbi-range"}), "arm64-tlbirange"),
    ("arm64 4K +BBML2", "arm64", 4096, frozenset({"bbml2"}), "altra"),
    ("arm64 16K", "arm64", 16384, frozenset[str](), "altra"),
    ("arm64 64K", "arm64", 65536, frozenset[str](), "altra"),
    ("riscv Svnapot (IPI)", "riscv", 4096, frozenset[str](), "riscv-generic"),
    ("riscv Svnapot (SBI)", "riscv", 4096, frozenset({"sbi-rfence"}), "riscv-generic"),
    ("x86-64", "x86", 4096, frozenset[str](), "x86-host"),
)


def _whatif(args: argparse.Namespace) -> int:
    from ptesim.workloads.wis import wis_rows, wis_work

    cpus = parse_cpu_list(args.cpus)
    out = []
    for label, arch, granule, feats, pname in WHATIF:
        profile: Profile = load_profile(pname)
        folio = max(parse_size(args.folio), granule * 16)
        kw: dict[str, Any] = {
            "folio": folio,
            "mem": parse_size(args.mem),
            "granule": granule,
            "cpu_features": feats,
        }
        before = wis_work(arch, "contpte-v1-before-opt" if arch == "arm64" else "v6.8", **kw)
        after = wis_work(arch, "contpte-v1-after-opt" if arch == "arm64" else "v6.9", **kw)
        rows = wis_rows(after, before, profile, cpus)
        calibrated = sum(1 for k in profile.parameters() if profile.is_calibrated(k))
        out.append(
            [label, f"{pname} ({calibrated} calibrated)", format_size(folio)]
            + [f"{r.steady.change_pct:+.1f}%" for r in rows]
        )
    print(markdown_table(["config", "profile", "folio", *[f"{n} cpus" for n in cpus]], out))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("reproduce", help="reproduce a published table with the model (seed)")
    p.add_argument("what", help="which table: seed")
    p.add_argument("--profile", default="altra")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out refit")
    p.set_defaults(handler=_reproduce)

    p = sub.add_parser("wis", help="will-it-scale fork-and-exit throughput from the model")
    p.add_argument("--arch", default="arm64")
    p.add_argument("--profile", default="altra")
    p.add_argument("--preset", required=True)
    p.add_argument("--baseline", default="contpte-v1-base")
    p.add_argument("--folio", default="64K")
    p.add_argument("--mem", default="128M")
    p.add_argument("--cpus", default="1,8,16,24,32")
    p.add_argument("--features", default="", help="extra CPU features, comma separated")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_wis)

    p = sub.add_parser("latency", help="single-process latency of fork/munmap/dontneed/cow from the model")
    p.add_argument("op")
    p.add_argument("--arch", default="arm64")
    p.add_argument("--profile", default="altra")
    p.add_argument("--preset", default="v6.9")
    p.add_argument("--folio", default="64K")
    p.add_argument("--mem", default="1G")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_latency)

    p = sub.add_parser("calibrate", help="least-squares fit of profile parameters to a measured table")
    p.add_argument("--table", help="CSV: cpus,<variant>_pct,... (default: the seed table)")
    p.add_argument("--profile", default="altra")
    p.add_argument("--fit", default="", help="parameters to fit, comma separated")
    p.add_argument("--holdout", default="", help="CPU counts left out of the fit")
    p.add_argument(
        "--from-host", metavar="JSON", help="fit x86-host per-PTE/per-batch costs from host results"
    )
    p.add_argument("--write", metavar="TOML", help="write the fitted profile")
    p.set_defaults(handler=_calibrate)

    p = sub.add_parser("whatif", help="which architectures benefit from fork batching")
    p.add_argument("--cpus", default="1,8,16,32")
    p.add_argument("--folio", default="64K")
    p.add_argument("--mem", default="128M")
    p.set_defaults(handler=_whatif)
