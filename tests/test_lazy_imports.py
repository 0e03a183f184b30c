"""``ptesim --help`` and ``--version`` must start fast: they import no numerical or plotting library.

Each case runs the command line in a fresh interpreter and lists the heavy top-level packages that
ended up in ``sys.modules``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numpy", "scipy", "matplotlib", "simpy", "pandas", "dask", "hypothesis")

PROBE = """
import json, sys
from ptesim.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = set(json.loads({heavy!r}))
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & heavy)))
"""


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["explain", "--help"], ["reproduce", "--help"], ["fuzz", "--help"]]
)
def test_cli_start_imports_nothing_heavy(argv: list[str]) -> None:
    code = PROBE.format(heavy=json.dumps(HEAVY))
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    assert loaded == [], f"ptesim {' '.join(argv)} imported {loaded}"


def test_probe_sees_a_heavy_import() -> None:
    """The probe itself works: a command line that does need numpy is reported."""
    code = PROBE.format(heavy=json.dumps(HEAVY)).replace(
        "from ptesim.cli import main", "import numpy\nfrom ptesim.cli import main"
    )
    p = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=True)
    assert json.loads(p.stdout.strip().splitlines()[-1]) == ["numpy"]
