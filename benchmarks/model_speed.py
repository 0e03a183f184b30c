"""How fast the reference model forks and exits a populated mapping.

Prints, for 128 MiB and 1 GiB with 4K and 64K folios (x86 v6.9 and arm64 v6.9 when available),
the wall time of one fork and one child exit and the PTEs simulated per second.  Figures only: no
assertion, no timing in the test suite.

    python benchmarks/model_speed.py [--sizes 128M,1G] [--arches x86,arm64]
"""

from __future__ import annotations

import argparse
import time

from ptesim.errors import UsageError
from ptesim.units import format_size, parse_size
from ptesim.workloads.scenarios import ModelSpec, map_and_populate


def one(arch: str, preset: str, mem: int, folio: int) -> tuple[float, float, float]:
    spec = ModelSpec(arch=arch, preset=preset, mem=mem, folio=folio)
    k = spec.build()
    t0 = time.perf_counter()
    task, _ = map_and_populate(k, spec, via="fault")
    t1 = time.perf_counter()
    child = task.fork(1)
    t2 = time.perf_counter()
    child.exit()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128M,1G")
    ap.add_argument("--folios", default="4K,64K")
    ap.add_argument("--arches", default="x86,arm64")
    ap.add_argument("--preset", default="v6.9")
    a = ap.parse_args()
    head = f"{'arch':<6} {'mem':>5} {'folio':>5} {'populate s':>10} {'fork s':>8} {'exit s':>8}"
    print(f"{head} {'PTEs/s fork':>12} {'PTEs/s exit':>12}")
    for arch in a.arches.split(","):
        for size in a.sizes.split(","):
            for folio in a.folios.split(","):
                mem, fsz = parse_size(size), parse_size(folio)
                try:
                    pop, fork, ex = one(arch, a.preset, mem, fsz)
                except UsageError as exc:
                    print(f"{arch:<6} {size:>5} {folio:>5}  skipped: {exc}")
                    continue
                ptes = mem // 4096
                print(
                    f"{arch:<6} {format_size(mem):>5} {folio:>5} {pop:10.2f} {fork:8.2f} {ex:8.2f}"
                    f" {ptes / fork:12,.0f} {ptes / ex:12,.0f}"
                )


if __name__ == "__main__":
    main()
