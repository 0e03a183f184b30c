"""Comma lists run the cartesian product; --json/--csv/--plot print one tidy row per combination."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from ptesim.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_explain_sweep_rows_match_single_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """A 2x2 sweep has four rows in option order, each equal to the totals of its own explain run."""
    base = ["explain", "--arch", "x86", "--mem", "1M"]
    doc = json.loads(run(capsys, *base, "--preset", "v6.8,v6.9", "--folio", "16K,64K", "--json"))
    assert doc["sweep"] == ["preset", "folio"]
    assert [(r["preset"], r["folio_bytes"]) for r in doc["rows"]] == [
        ("v6.8", 16384),
        ("v6.8", 65536),
        ("v6.9", 16384),
        ("v6.9", 65536),
    ]
    one = json.loads(run(capsys, *base, "--preset", "v6.9", "--folio", "16K", "--json"))
    row = doc["rows"][2]
    for prim, n in one["totals"].items():
        if n:
            assert row[prim] == n, prim
    assert row["mem_bytes"] == one["mem_bytes"] == 1 << 20


def test_explain_sweep_csv_and_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--csv has a header and one line per combination; --plot writes an image."""
    png = tmp_path / "sweep.png"
    out = run(
        capsys, "explain", "--arch", "x86", "--folio", "4K,64K", "--mem", "256K", "--csv", "--plot", str(png)
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [int(r["folio_bytes"]) for r in rows] == [4096, 65536]
    assert int(rows[0]["folio_ref"]) > int(rows[1]["folio_ref"])
    assert png.stat().st_size > 1000
