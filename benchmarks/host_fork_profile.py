"""Where the host kernel's fork() time goes, per folio size: ``perf`` samples inside copy_page_range.

    python benchmarks/host_fork_profile.py [--sizes 4K,16K,64K,1M] [--mem 512M] [--reps 20]
                                           [--freq 10000]

``ptesim host fork`` times the whole fork() of a process; the per-size shape of those times (how
much a 16K folio saves over 4K folios, compared with a 1M folio) is what ``x86-host`` is
calibrated on.  This script checks that the shape is the kernel's page-table copy and not the
measuring harness (the interpreter's own fork, process creation, scheduling): it runs the same
``ptesim host fork`` of each size under ``perf record -e cpu-clock -g`` (a software clock, so it
works in a guest without a PMU) and counts the samples whose call chain passes through
``copy_page_range`` (mm/memory.c: every PTE-level copy of fork, inlined helpers included).  For
each size it prints that time per fork next to the timed fork (fastest sample less the
measuring process's baseline), and for both the time each folio costs beyond what the largest
size costs per page:

    extra per folio = (T(size) - T(largest)) / (folios of size - folios of largest)

A cost of one fixed amount per PTE plus one per folio makes that figure the same for every size;
where it is not, the per-folio work of the kernel's large-folio path (folio_pte_batch,
folio_try_dup_anon_rmap_ptes) differs from that of its 4K path.  The profile also lists the
functions the samples ended in (set_ptes, vm_normal_page and the rest; what the compiler
inlined is charged to copy_page_range).

Needs root (THP knobs, saved and restored by ``ptesim host fork``) and ``perf``; anything missing
is one line and exit status 2.  Samples include the warm-up forks, and every fork also copies the
interpreter's own mappings (the same for every size, so it cancels out of the differences).
Figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ptesim.units import format_size, parse_size

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = "copy_page_range"
_FRAME = re.compile(r"^\s*[0-9a-f]+\s+(\S+?)(?:\+0x[0-9a-f]+)?\s+\(")


def chains(perf_script: str) -> list[list[str]]:
    """The call chain of every sample of ``perf script`` output, innermost function first."""
    out = []
    for block in perf_script.split("\n\n"):
        frames = [m.group(1) for line in block.splitlines()[1:] if (m := _FRAME.match(line))]
        if frames:
            out.append(frames)
    return out


@dataclass
class SizeProfile:
    size: str
    timed_ms: float  # fastest timed fork less the measuring process's own fork
    copy_ms: float  # cpu-clock time per fork with copy_page_range on the call chain
    samples: int
    leaves: collections.Counter[str]  # the function each of those samples ended in


def profile_size(size: str, mem: str, reps: int, warmup: int, freq: int) -> SizeProfile:
    """Run ``ptesim host fork`` of one size under perf; its timing and its copy_page_range samples."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = [
            "perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq), "-g", "-o", data, "--",
            sys.executable, "-m", "ptesim.cli", "host", "fork", "--sizes", size, "--mem", mem,
            "--reps", str(reps), "--warmup", str(warmup), "--no-trace", "-q", "--json",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"host_fork_profile: ptesim host fork --sizes {size} failed: {last}")
        doc = json.loads(run.stdout)
        script = subprocess.run(
            ["perf", "script", "-i", data], capture_output=True, text=True, check=False
        ).stdout
    result = doc["results"][0]
    if result.get("skipped"):
        raise SystemExit(f"host_fork_profile: {size}: {result['skipped']}")
    under = [c for c in chains(script) if ANCHOR in c]
    leaves = collections.Counter(c[0] for c in under)
    forks = reps + warmup
    period_ms = 1e3 / freq
    return SizeProfile(
        size=size,
        timed_ms=result["min_ms"] - result["baseline_ms"],
        copy_ms=len(under) * period_ms / forks,
        samples=len(under),
        leaves=leaves,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="4K,16K,64K,1M")
    ap.add_argument("--mem", default="512M")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--freq", type=int, default=10000, help="cpu-clock samples per second")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("host_fork_profile: needs root (THP knobs and kernel call chains)", file=sys.stderr)
        return 2
    if shutil.which("perf") is None:
        print("host_fork_profile: perf is not installed", file=sys.stderr)
        return 2
    try:
        sizes = sorted(args.sizes.split(","), key=parse_size)
        mem = parse_size(args.mem)
    except ValueError as exc:
        print(f"host_fork_profile: {exc}", file=sys.stderr)
        return 2
    page = os.sysconf("SC_PAGE_SIZE")
    rows = []
    for size in sizes:
        print(f"profiling {size} ...", file=sys.stderr)
        rows.append(profile_size(size, args.mem, args.reps, args.warmup, args.freq))
    big = rows[-1]
    big_folios = mem // max(parse_size(big.size), page)
    print(f"fork of {format_size(mem)}, {args.reps} timed + {args.warmup} warm-up forks per size")
    print("size   timed ms  copy_page_range ms  extra/folio timed ns  extra/folio profile ns")
    for r in rows:
        folios = mem // max(parse_size(r.size), page)
        if r is big:
            extra = "(reference)", "(reference)"
        else:
            d = folios - big_folios
            t = (r.timed_ms - big.timed_ms) * 1e6 / d
            p = (r.copy_ms - big.copy_ms) * 1e6 / d
            extra = f"{t:.1f}", f"{p:.1f}"
        print(f"{r.size:>5} {r.timed_ms:9.3f} {r.copy_ms:19.3f} {extra[0]:>21} {extra[1]:>23}")
    print("\nwhere the copy_page_range samples ended (share of each size's samples):")
    for r in rows:
        n = r.samples or 1
        top = ", ".join(f"{k} {100 * v / n:.0f}%" for k, v in r.leaves.most_common(5))
        print(f"  {r.size:>5}: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
