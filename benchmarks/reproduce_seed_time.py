"""How long `ptesim reproduce seed` takes (target: <= 30 s on the 2-core machine)."""

from __future__ import annotations

import subprocess
import sys
import time

if __name__ == "__main__":
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ptesim.cli", "reproduce", "seed", "--json"], capture_output=True)
    dt = time.perf_counter() - t0
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}): {proc.stderr.decode().strip()}"
    print(f"ptesim reproduce seed: {dt:.1f} s ({status}; target <= 30 s)")
