"""Measured fork() time of 1 GiB on this kernel for 4K, 64K and PMD-mapped 2M folios, and the ratios.

    python benchmarks/host_fork_sizes.py [--mem 1G] [--reps 10] [--sizes 4K,64K,2M]
                                         [--compare-model x86-host]

Needs root to set the THP knobs (they are saved first and restored afterwards); without root it
measures what the current settings give and says which sizes could not be set.  Prints the ptesim
table, then for each size the median fork time with and without the measuring process's own fork
(the "net" time, which is what the buffer costs) and the ratio to the smallest size.  With
``--compare-model PROFILE`` it also prints the model's prediction and its error for each size.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from ptesim.errors import UsageError
from ptesim.host import bench
from ptesim.host.commands import format_op_table, markdown_table
from ptesim.host.sysfs import HostInterrupted, HostSession


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sizes", default="4K,64K,2M")
    ap.add_argument("--compare-model", metavar="PROFILE", default=None)
    args = ap.parse_args(argv)
    try:
        plan = bench.plan("fork", args.sizes, args.mem, reps=args.reps, warmup=args.warmup)
        with HostSession() as session:
            doc = bench.measure(plan, session, lambda msg: print(msg, file=sys.stderr))
        bench.finish(doc, session)
        if args.compare_model:
            bench.compare_model(doc, args.compare_model)
    except UsageError as exc:
        print(f"host_fork_sizes: {exc}", file=sys.stderr)
        return 2
    except HostInterrupted as exc:
        print(f"host_fork_sizes: interrupted by {exc}; THP settings restored", file=sys.stderr)
        return 128 + exc.signum
    print(format_op_table(doc))
    print()
    timed = [r for r in doc["results"] if r["net_ms"] is not None]
    if not timed:
        print("no size could be timed")
        return 1
    first = timed[0]
    rows = []
    for r in timed:
        rows.append(
            [
                r["size"],
                f"{r['median_ms']:.3f}",
                f"{r['net_ms']:.3f}",
                f"{first['net_ms'] / r['net_ms']:.1f}x" if r["net_ms"] > 0 else "—",
                f"{r['median_ms'] / first['median_ms']:.3f}",
            ]
        )
    print(markdown_table(["size", "fork ms", "net ms", f"{first['size']} / size (net)", "ratio (raw)"], rows))
    if args.compare_model:
        print()
        for r in timed:
            err = r.get("model_error_pct")
            print(
                f"{r['size']:>5}: measured {r['net_ms']:.3f} ms, model "
                + ("—" if r.get("model_ms") is None else f"{r['model_ms']:.3f} ms")
                + ("" if err is None else f", error {err:+.1f}%")
            )
    falls = all(a["net_ms"] > b["net_ms"] for a, b in itertools.pairwise(timed))
    print()
    print(
        "fork time falls with every larger folio size"
        if falls
        else "fork time does NOT fall with every larger folio size"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
