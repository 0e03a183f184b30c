"""How long the model takes to count a fork, next to how long this machine's kernel takes to do it.

The host side maps 1 GiB of private anonymous memory with MADV_NOHUGEPAGE (4K folios), writes
every page, forks once (so that, as in the model's steady state, the parent's PTEs are already
write-protected), then times ``os.fork()`` in the parent many times; each child calls ``_exit`` at
once.  The same fork without the mapping is timed too, so the mapping's share can be told apart
from the interpreter's own.  The model side counts the same forks (x86, v6.9, 4K folios, steady
state: a first child forked and exited, then ``--model-reps`` forks, each child exiting before
the next) with each engine, and the script prints the ratio of the medians.

Then it times the commands a user waits for: ``ptesim --version``, ``reproduce seed``, ``whatif``
and, with ``--suite``, the test suite.  Figures only; nothing here is asserted.

    python benchmarks/fork_vs_host.py [--mem 1G] [--reps 30] [--model-reps 3] [--engines fast,reference]
                                      [--suite]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ptesim.units import format_size, parse_size
from ptesim.workloads.scenarios import ModelSpec, map_and_populate

ROOT = Path(__file__).resolve().parents[1]


def host_fork_seconds(length: int, reps: int) -> list[float]:
    """Wall seconds of each ``os.fork()`` in the parent (steady state), or of a bare fork if 0."""
    buf = None
    if length:
        buf = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        page = mmap.PAGESIZE
        for off in range(0, length, page):
            buf[off] = 1
    out: list[float] = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        t1 = time.perf_counter()
        os.waitpid(pid, 0)
        if i:  # the first fork write-protects the parent's PTEs; the rest are the steady state
            out.append(t1 - t0)
    if buf is not None:
        buf.close()
    return out


def model_fork_seconds(mem: int, engine: str, reps: int) -> tuple[float, list[float], list[float]]:
    """Populate wall seconds, then the wall and CPU seconds of each steady-state fork on the model.

    As on the host, the parent forks ``reps + 1`` times and each child exits before the next fork;
    the first fork (which write-protects the parent's PTEs) is left out."""
    spec = ModelSpec(arch="x86", preset="v6.9", folio=4096, mem=mem, engine=engine)
    k = spec.build()
    t0 = time.perf_counter()
    task, _ = map_and_populate(k, spec, via="fault")
    populate = time.perf_counter() - t0
    task.fork(1).exit()
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(reps):
        k.sink.reset()
        c0, t1 = time.process_time(), time.perf_counter()
        child = task.fork(1)
        wall.append(time.perf_counter() - t1)
        cpu.append(time.process_time() - c0)
        child.exit()
    return populate, wall, cpu


def command_seconds(argv: list[str], reps: int = 1) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(
            argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mem", default="1G")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--model-reps", type=int, default=3, help="steady-state forks counted on the model")
    ap.add_argument("--engines", default="fast,reference")
    ap.add_argument("--suite", action="store_true", help="also time the test suite (minutes)")
    ap.add_argument("--no-commands", action="store_true", help="skip the command timings")
    a = ap.parse_args()
    mem = parse_size(a.mem, what="--mem")

    host = statistics.median(host_fork_seconds(mem, a.reps))
    bare = statistics.median(host_fork_seconds(0, a.reps))
    print(f"host kernel {os.uname().release}: fork of {format_size(mem)} (4K pages, steady state)")
    print(f"  median of {a.reps}: {host * 1e3:.2f} ms  (bare interpreter fork {bare * 1e3:.2f} ms)")
    for engine in a.engines.split(","):
        populate, walls, cpus = model_fork_seconds(mem, engine, a.model_reps)
        fork, cpu = statistics.median(walls), statistics.median(cpus)
        print(
            f"model, {engine} engine: counts the same fork in {fork * 1e3:.1f} ms wall"
            f" ({cpu * 1e3:.1f} ms CPU; median of {len(walls)},"
            f" {min(walls) * 1e3:.1f}-{max(walls) * 1e3:.1f})"
            f" = {fork / host:.2f}x the host fork; populating the mapping took {populate:.2f} s"
        )
    if a.no_commands:
        return
    py = sys.executable
    print("commands (best of 3 for --version, one run otherwise):")
    print(f"  ptesim --version        {command_seconds([py, '-m', 'ptesim.cli', '--version'], 3):7.2f} s")
    print(
        f"  ptesim reproduce seed   {command_seconds([py, '-m', 'ptesim.cli', 'reproduce', 'seed']):7.2f} s"
    )
    print(f"  ptesim whatif           {command_seconds([py, '-m', 'ptesim.cli', 'whatif']):7.2f} s")
    if a.suite:
        t = command_seconds([py, "-m", "pytest", "-q", "-m", "not host", "-p", "no:cacheprovider"])
        print(f"  test suite (not host)   {t:7.2f} s")


if __name__ == "__main__":
    main()
