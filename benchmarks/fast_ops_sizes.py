"""Time and peak memory of each whole-range operation on the fast engine, up to 64 GiB.

For each operation, one fresh process builds the model (x86 v6.9 by default, 4K folios), maps and
populates ``--mem`` by faults (MAP_POPULATE), brings the mapping to the state the operation needs
(a fork for an exit, a fork and an exit for a steady-state fork) and then times the operation
alone.  The parent reads the child's peak RSS from ``wait4``.  Figures only: no assertion.

    python benchmarks/fast_ops_sizes.py [--mem 64G] [--ops fork-steady,exit-child,munmap]
        [--arch x86] [--preset v6.9] [--folio 4K] [--engine fast]

Operations: populate, fork-first, fork-steady (fork after a first child exited), fork-exit (one
will-it-scale iteration: fork and the child's exit), exit-child, munmap, dontneed (MADV_DONTNEED
of the whole range), mprotect (read-only and back), mremap (move the whole range to just past its
end, by one 64K or contiguous block, as the ``mremap`` scenario does: every PTE is moved),
cow-write (after a fork the child writes every page: one COW fault per page) and dontneed-pages
(MADV_DONTNEED one page at a time); the last two are per-page sweeps (docs/design.md, "Per-page
sweeps").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

OPS = (
    "populate",
    "fork-first",
    "fork-steady",
    "fork-exit",
    "exit-child",
    "munmap",
    "dontneed",
    "mprotect",
    "mremap",
    "cow-write",
    "dontneed-pages",
)


def child(op: str, arch: str, preset: str, mem: int, folio: int, engine: str) -> None:
    """Run one operation in this process and print its timings as JSON."""
    from ptesim.workloads.scenarios import ModelSpec, each_page, map_and_populate, mremap_offset

    spec = ModelSpec(arch=arch, preset=preset, mem=mem, folio=folio, engine=engine)
    # refused up front, as the scenario of the same name would be, if it cannot fit
    k = spec.build("fork-steady" if op == "fork-exit" else op)
    t0 = time.perf_counter()
    task, addr = map_and_populate(k, spec, via="fault")
    t1 = time.perf_counter()
    if op == "populate":
        setup, dt = 0.0, t1 - t0
    else:
        c = None
        if op == "fork-steady":
            task.fork(1).exit()
        elif op in ("exit-child", "cow-write"):
            c = task.fork(1)
        t2 = time.perf_counter()
        if op in ("fork-first", "fork-steady"):
            task.fork(1)
        elif op == "fork-exit":
            task.fork(1).exit()
        elif op == "exit-child":
            assert c is not None
            c.exit()
        elif op == "munmap":
            task.munmap(addr, mem)
        elif op == "dontneed":
            task.madvise(addr, mem, "dontneed")
        elif op == "mprotect":
            task.mprotect(addr, mem, "r")
            task.mprotect(addr, mem, "rw")
        elif op == "mremap":
            task.mremap(addr, mem, addr + mem + mremap_offset(k))
        elif op == "cow-write":
            assert c is not None
            each_page(c, "write", addr, mem, 1000)
        elif op == "dontneed-pages":
            each_page(task, "dontneed", addr, mem)
        else:
            raise SystemExit(f"unknown op {op!r}; one of {', '.join(OPS)}")
        setup, dt = t2 - t0, time.perf_counter() - t2
    stats = dict(k.fast.stats) if k.fast is not None else {}
    print(json.dumps({"setup_s": setup, "op_s": dt, "stats": stats}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem", default="64G")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--arch", default="x86")
    ap.add_argument("--preset", default="v6.9")
    ap.add_argument("--folio", default="4K")
    ap.add_argument("--engine", default="fast", choices=("fast", "reference"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from ptesim.units import format_size, parse_size

    mem, folio = parse_size(a.mem), parse_size(a.folio)
    if a.child:
        child(a.child, a.arch, a.preset, mem, folio, a.engine)
        return
    print(f"{a.arch} {a.preset}, {format_size(folio)} folios, {format_size(mem)}, {a.engine} engine")
    print(f"{'operation':<12} {'op s':>8} {'setup s':>8} {'peak RSS MB':>12}  runs expanded")
    for op in a.ops.split(","):
        argv = [sys.executable, __file__, "--child", op, "--mem", a.mem, "--arch", a.arch]
        argv += ["--preset", a.preset, "--folio", a.folio, "--engine", a.engine]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        assert p.stdout is not None and p.stderr is not None
        out, err = p.stdout.read(), p.stderr.read()
        p.returncode = os.waitstatus_to_exitcode(status)
        rss_mb = usage.ru_maxrss / 1024
        if p.returncode:
            line = (err.strip().splitlines() or ["?"])[-1]
            print(f"{op:<12} {'-':>8} {'-':>8} {rss_mb:12.0f}  failed: {line}")
            continue
        r = json.loads(out)
        expanded = r["stats"].get("expanded_runs", 0)
        print(f"{op:<12} {r['op_s']:8.2f} {r['setup_s']:8.2f} {rss_mb:12.0f}  {expanded}")


if __name__ == "__main__":
    main()
