"""``ptesim host``: info, fork, munmap, dontneed, cow, wis, restore.

Tables are markdown in the style of the seed table (right-aligned columns, as in a commit log);
``--json`` prints the stable object documented in ``docs/host.md`` and ``--csv`` one row per result.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import Any

from ptesim.argcheck import float_arg, int_arg
from ptesim.host import bench
from ptesim.host.sysfs import HostInterrupted, HostSession, restore_saved_state
from ptesim.host.tracing import TLB_FLUSH_REASONS
from ptesim.units import format_size, parse_cpu_list


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A right-aligned markdown table padded like the seed table.

    >>> print(markdown_table(["cpus", "x"], [["1", "-10.4%"]]))
    |   cpus |        x |
    |-------:|---------:|
    |      1 |   -10.4% |
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(headers)]
    widths = [max(w, 7) for w in widths]
    lines = ["|" + "|".join(f" {h:>{w - 1}} " for h, w in zip(headers, widths, strict=True)) + "|"]
    lines.append("|" + "|".join("-" * w + ":" for w in widths) + "|")
    for r in rows:
        lines.append("|" + "|".join(f" {c:>{w - 1}} " for c, w in zip(r, widths, strict=True)) + "|")
    return "\n".join(lines)


def _ms(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 100 else f"{x:.1f}"


def _short_reason(name: str) -> str:
    return name.removeprefix("TLB_").lower()


def format_op_table(doc: dict[str, Any]) -> str:
    results = doc["results"]
    ref = next((r["net_ms"] for r in results if r["net_ms"]), None)
    ref_size = next((r["size"] for r in results if r["net_ms"]), "")
    op = doc["op"]
    headers = ["size", "backing", f"{op} ms", "min", "max", "±95%"]
    if op == "fork":
        headers.append("net ms")
    headers.append(f"vs {ref_size}" if ref_size else "ratio")
    compare = "model" in doc
    if compare:
        headers += ["model ms", "error"]
    headers.append("TLB flushes/iter")
    rows = []
    for r in results:
        pct = r["backing_pct"]
        row = [r["size"], "?" if pct is None else f"{pct:.1f}%"]
        row += [_ms(r["median_ms"]), _ms(r["min_ms"]), _ms(r["max_ms"]), _ms(r["ci95_ms"])]
        if op == "fork":
            row.append(_ms(r["net_ms"]))
        row.append(f"{r['net_ms'] / ref:.2f}x" if r["net_ms"] is not None and ref else "—")
        if compare:
            row.append(_ms(r.get("model_ms")))
            err = r.get("model_error_pct")
            row.append("—" if err is None else f"{err:+.1f}%")
        tlb = r["tlb_flush_events"]
        if tlb is None:
            row.append("n/a")
        else:
            row.append(", ".join(f"{_short_reason(k)} {v:g}" for k, v in tlb.items() if v) or "0")
        rows.append(row)
    out = [
        f"{op} of {format_size(doc['mem'])} on {doc['kernel']} ({doc['arch']}), "
        f"CPU {doc['cpu']}, {doc['reps']} runs after {doc['warmup']} warm-up, THP mode {doc['mode']}",
        "",
        markdown_table(headers, rows),
    ]
    notes = [f"{r['size']}: {r['skipped']}" for r in results if r.get("skipped")]
    if op == "fork":
        notes.append(
            "net ms = median minus the measuring process's own fork "
            f"({_ms(next((r['baseline_ms'] for r in results if r['baseline_ms']), None))} ms)"
        )
    if compare and all(r.get("model_ms") is None for r in results):
        notes.append(f"the model gave no prediction with profile {doc['model']['profile']!r}")
    notes += _common_notes(doc)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def _common_notes(doc: dict[str, Any]) -> list[str]:
    notes = []
    if doc.get("unset_sizes"):
        notes.append(
            "not root: measured with the current THP settings; could not set " + ", ".join(doc["unset_sizes"])
        )
    if doc.get("root") and doc.get("settings_after") == doc.get("settings_before"):
        notes.append("THP settings restored and verified")
    return notes


def format_wis_table(doc: dict[str, Any]) -> str:
    results = doc["results"]
    one = results[0]["iterations_per_s"] / results[0]["cpus"] if results else None
    rows = []
    for r in results:
        per = r["iterations_per_s"] / r["cpus"]
        rows.append(
            [
                str(r["cpus"]),
                f"{r['iterations_per_s']:.0f}",
                f"{per:.0f}",
                f"{100.0 * (per / one - 1):+.1f}%" if one else "—",
            ]
        )
    pct = doc["backing_pct"]
    out = [
        f"will-it-scale fork and exit, {format_size(doc['mem'])} of {doc['size']} folios per worker, "
        f"{doc['duration_s']:g}s, on {doc['kernel']} ({doc['arch']}); backing "
        + ("?" if pct is None else f"{pct:.1f}%"),
        "",
        markdown_table(["cpus", "iterations/s", "per worker", "per worker vs 1st"], rows),
    ]
    notes = ([doc["skipped"]] if doc.get("skipped") else []) + _common_notes(doc)
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out)


def format_op_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    fields = ["size", "backing_pct", "median_ms", "min_ms", "max_ms", "ci95_ms"]
    fields += ["baseline_ms", "net_ms", "model_ms", "model_error_pct", "skipped"]
    w.writerow(["op", "mem", *fields, "n", *(f"tlb_{r}" for r in TLB_FLUSH_REASONS)])
    for r in doc["results"]:
        tlb = r["tlb_flush_events"] or {}
        w.writerow(
            [doc["op"], doc["mem"]]
            + ["" if r.get(f) is None else r[f] for f in fields]
            + [len(r["samples_ms"])]
            + [tlb.get(x, "") for x in TLB_FLUSH_REASONS]
        )
    return buf.getvalue().rstrip("\n")


def format_wis_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["size", "mem", "cpus", "iterations_per_s", "per_worker"])
    for r in doc["results"]:
        per = ";".join(f"{x:g}" for x in r["per_worker"])
        w.writerow([doc["size"], doc["mem"], r["cpus"], r["iterations_per_s"], per])
    return buf.getvalue().rstrip("\n")


def format_info(doc: dict[str, Any]) -> str:
    lines = [
        f"kernel {doc['kernel']} ({doc['arch']}), {doc['cpus']} CPUs "
        f"({doc['cpus_allowed']} allowed), page size {format_size(doc['page_size'])}, "
        f"{'root' if doc['root'] else 'not root (measurements use the current settings)'}",
    ]
    if not doc["thp_available"]:
        lines.append("transparent huge pages: unavailable")
    else:
        lines.append(
            f"THP enabled [{doc['enabled']}], defrag [{doc['defrag']}], shmem_enabled "
            f"[{doc['shmem_enabled']}], PMD size {format_size(doc['pmd_size'])}"
        )
        rows = []
        for s in doc["sizes"]:
            stats = doc["stats"].get(s["size"], {})
            rows.append(
                [
                    s["size"] + (" (PMD)" if s["pmd"] else ""),
                    s["enabled"] or "",
                    s["effective"],
                    s["shmem_enabled"] or "",
                    str(stats.get("anon_fault_alloc", "")),
                    str(stats.get("anon_fault_fallback", "")),
                    str(stats.get("nr_anon", "")),
                ]
            )
        lines += [
            "",
            markdown_table(
                ["size", "enabled", "effective", "shmem", "fault alloc", "fallback", "nr_anon"],
                rows,
            ),
            "",
        ]
        if doc["sizes_without_enabled"]:
            lines.append(
                "sizes exposed for shmem only (no enabled file): " + ", ".join(doc["sizes_without_enabled"])
            )
        lines.append("khugepaged: " + ", ".join(f"{k}={v}" for k, v in sorted(doc["khugepaged"].items())))
        vm = doc["vmstat"]
        lines.append("vmstat: " + ", ".join(f"{k}={vm[k]}" for k in sorted(vm) if vm[k]) or "vmstat: all 0")
    lines.append(f"tlb:tlb_flush tracepoint: {doc['tlb_flush_tracepoint']}")
    lines.append(f"MemAvailable: {format_size(doc['mem_available'] // (1 << 20) * (1 << 20))}")
    if doc["leftover_saved_state"]:
        lines.append(
            f"leftover saved THP settings at {doc['leftover_saved_state']}: run 'ptesim host restore'"
        )
    return "\n".join(lines)


def _emit(args: argparse.Namespace, doc: dict[str, Any], table: str, csv_text: str) -> None:
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.csv:
        print(csv_text)
    else:
        print(table)


def _notify(args: argparse.Namespace) -> bench.Notify:
    quiet = getattr(args, "quiet", False)

    def notify(msg: str) -> None:
        if not quiet:
            print(f"ptesim: {msg}", file=sys.stderr, flush=True)

    return notify


def _interrupted(exc: HostInterrupted) -> int:
    print(f"ptesim: interrupted by {exc}; THP settings restored", file=sys.stderr)
    return 128 + exc.signum


def cmd_info(args: argparse.Namespace) -> int:
    doc = bench.info()
    print(json.dumps(doc, indent=2) if args.json else format_info(doc))
    return 0


def cmd_op(args: argparse.Namespace) -> int:
    p = bench.plan(
        args.op,
        args.sizes,
        args.mem,
        reps=args.reps,
        warmup=args.warmup,
        cpu=args.cpu,
        mode=args.mode,
        threshold=args.threshold,
        trace=not args.no_trace,
        reasons=args.tlb_reasons,
    )
    if args.compare_model:
        # Fail before touching anything if the model side is missing.
        bench.load_model()
    notify = _notify(args)
    try:
        with HostSession(notify=notify) as session:
            doc = bench.measure(p, session, notify)
    except HostInterrupted as exc:
        return _interrupted(exc)
    bench.finish(doc, session)
    if args.compare_model:
        bench.compare_model(doc, args.compare_model)
    _emit(args, doc, format_op_table(doc), format_op_csv(doc))
    return 0


def cmd_wis(args: argparse.Namespace) -> int:
    p = bench.wis_plan(
        args.size,
        args.mem,
        parse_cpu_list(args.cpus),
        duration=args.duration,
        mode=args.mode,
        threshold=args.threshold,
    )
    notify = _notify(args)
    try:
        with HostSession(notify=notify) as session:
            doc = bench.measure_wis(p, session, notify)
    except HostInterrupted as exc:
        return _interrupted(exc)
    bench.finish(doc, session)
    _emit(args, doc, format_wis_table(doc), format_wis_csv(doc))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    print(restore_saved_state())
    return 0


def _output_flags(p: argparse.ArgumentParser, csv_too: bool = True) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print one JSON object (docs/host.md)")
    if csv_too:
        g.add_argument("--csv", action="store_true", help="print CSV, one row per result")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=("always", "madvise"),
        default="always",
        help="set the size under test to always, or to madvise plus MADV_HUGEPAGE",
    )
    p.add_argument(
        "--threshold",
        type=float_arg(0, 100),
        default=90.0,
        metavar="PCT",
        help="minimum verified backing to report a timing (default 90)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def register(sub: Any) -> None:
    host: argparse.ArgumentParser = sub.add_parser(
        "host", help="measure the real kernel of this machine with the same workloads"
    )
    hs = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND", parser_class=type(host))
    hs.required = True

    p = hs.add_parser("info", help="kernel, CPUs, mTHP sizes and settings, THP stats, tracing")
    _output_flags(p, csv_too=False)
    p.add_argument("-q", "--quiet", action="store_true", help="accepted for symmetry; info is quiet")
    p.set_defaults(handler=cmd_info, csv=False)

    for op, what in (
        ("fork", "fork() latency of a populated buffer"),
        ("munmap", "munmap() latency of a populated buffer"),
        ("dontneed", "madvise(MADV_DONTNEED) latency of a populated buffer"),
        ("cow", "write-fault (COW) latency over a buffer shared with a forked child"),
    ):
        p = hs.add_parser(op, help=f"{what}, per folio size")
        p.add_argument(
            "--sizes", default="4K,64K,2M", help="folio sizes, e.g. 4K,64K,2M or 'all' (default 4K,64K,2M)"
        )
        p.add_argument("--mem", default="1G", help="buffer size (default 1G)")
        p.add_argument(
            "--reps", type=int_arg(1, 100_000), default=10, help="timed runs per size (default 10)"
        )
        p.add_argument("--warmup", type=int_arg(0, 10_000), default=2, help="untimed runs first (default 2)")
        p.add_argument(
            "--cpu",
            type=int,
            default=None,
            help="CPU to pin the measuring process to (default: the last allowed)",
        )
        p.add_argument("--no-trace", action="store_true", help="do not count tlb:tlb_flush")
        p.add_argument(
            "--tlb-reasons",
            metavar="LIST",
            default=None,
            help="only these tlb_flush reasons, e.g. local_mm_shootdown,remote_send_ipi",
        )
        p.add_argument(
            "--compare-model",
            metavar="PROFILE",
            default=None,
            help="print the model's prediction with cost profile PROFILE alongside",
        )
        _common(p)
        _output_flags(p)
        p.set_defaults(handler=cmd_op, op=op)

    p = hs.add_parser("wis", help='will-it-scale "fork and exit" throughput with N processes')
    p.add_argument("--size", default="4K", help="folio size (default 4K)")
    p.add_argument("--mem", default="128M", help="buffer per worker (default 128M)")
    p.add_argument("--cpus", default="1", help="worker counts, e.g. 1,2 or 1-4 (default 1)")
    p.add_argument(
        "--duration", type=float_arg(0.001, 86_400), default=5.0, help="seconds per count (default 5)"
    )
    _common(p)
    _output_flags(p)
    p.set_defaults(handler=cmd_wis)

    p = hs.add_parser("restore", help="restore THP settings left changed by a killed run")
    p.set_defaults(handler=cmd_restore)
