"""The repository contract: ruff and mypy are clean (both are test dependencies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check_and_format() -> None:
    """ruff finds nothing in src/, tests/ and benchmarks/, and every file is formatted."""
    pytest.importorskip("ruff")
    check = _run(sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks")
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = _run(sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "benchmarks")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict() -> None:
    """mypy --strict (configured in pyproject.toml) passes on the package."""
    pytest.importorskip("mypy")
    res = _run(sys.executable, "-m", "mypy")
    assert res.returncode == 0, res.stdout + res.stderr
