"""How long the default test suite takes here, with the machine's load beside it.

Runs ``pytest`` (the README's test command, without host tests unless ``--host``) in a child
process and prints its wall-clock time, the CPU time it and its workers used, and the load
average before and after: the target is two minutes on an idle two-core machine, so a figure
taken under load says so.  Figures only: no assertion.

    python benchmarks/suite_time.py [--host] [-- extra pytest arguments]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", action="store_true", help="run the host tests too (PTESIM_HOST_TESTS=1)")
    ap.add_argument("pytest_args", nargs="*", help="more arguments for pytest (after --)")
    a = ap.parse_args()
    env = dict(os.environ)
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *a.pytest_args]
    if a.host:
        env["PTESIM_HOST_TESTS"] = "1"
    else:
        env.pop("PTESIM_HOST_TESTS", None)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line]
    print(f"pytest exit status {proc.returncode}: {summary[-1] if summary else '(no summary line)'}")
    print(f"wall {wall:.1f} s, CPU {used.ru_utime + used.ru_stime:.1f} s on {os.cpu_count()} CPUs")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
