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


def test_wis_sweep_rows_equal_single_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """A 2x2 wis sweep (preset x folio) prints four rows, each equal to its own single run."""
    base = ["wis", "--arch", "arm64", "--mem", "2M", "--cpus", "8"]
    doc = json.loads(run(capsys, *base, "--preset", "v6.8,v6.9", "--folio", "16K,64K", "--json"))
    assert doc["sweep"] == ["preset", "folio"]
    assert [(r["preset"], r["folio_bytes"], r["cpus"]) for r in doc["rows"]] == [
        ("v6.8", 16384, 8),
        ("v6.8", 65536, 8),
        ("v6.9", 16384, 8),
        ("v6.9", 65536, 8),
    ]
    for row in doc["rows"]:
        folio = "16K" if row["folio_bytes"] == 16384 else "64K"
        (one,) = json.loads(run(capsys, *base, "--preset", row["preset"], "--folio", folio, "--json"))["rows"]
        assert row == one
    text = run(capsys, *base, "--preset", "v6.8,v6.9", "--folio", "16K,64K")
    assert len([line for line in text.splitlines() if line.startswith("| v6.")]) == 4


def test_cost_commands_csv_parses_and_plot_writes_png(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """wis, latency, whatif and validate print CSV with one line per row and draw a PNG."""
    published = Path(__file__).resolve().parents[1] / "src/ptesim/cost/data/published/altra-seed.csv"
    runs = {
        "wis": ["wis", "--mem", "2M", "--cpus", "1,8", "--folio", "16K,64K"],
        "latency": ["latency", "fork", "--mem", "4M", "--arch", "arm64,x86", "--baseline", "v6.8"],
        "whatif": ["whatif", "--arch", "x86", "--cpus", "1,8", "--mem", "2M", "--fork-mem", "4M"],
        "validate": ["validate", "--tables", str(published)],
    }
    expect = {"wis": 4, "latency": 2, "whatif": 2, "validate": 10}
    for name, argv in runs.items():
        png = tmp_path / f"{name}.png"
        rows = list(csv.DictReader(io.StringIO(run(capsys, *argv, "--csv", "--plot", str(png)))))
        assert len(rows) == expect[name], name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    rows = list(csv.DictReader(io.StringIO(run(capsys, *runs["latency"], "--csv"))))
    assert {r["arch"] for r in rows} == {"arm64", "x86"}
    assert all(float(r["time_ns"]) > 0 and float(r["change_pct"]) != 0 for r in rows)


def test_whatif_json_units(capsys: pytest.CaptureFixture[str]) -> None:
    """whatif --json: CPU counts are ints, sizes in *_bytes, times in *_ns, changes in *_pct."""
    doc = json.loads(
        run(capsys, "whatif", "--arch", "x86", "--cpus", "1,8", "--mem", "2M", "--fork-mem", "4M", "--json")
    )
    assert doc["rows"] and [r["cpus"] for r in doc["rows"]][:2] == [1, 8]
    for r in doc["rows"]:
        assert type(r["cpus"]) is int
        assert r["mem_bytes"] == 2 << 20 and r["fork_mem_bytes"] == 4 << 20
        assert r["fork_after_ns"] < r["fork_before_ns"]
        assert r["fork_change_pct"] == pytest.approx(
            100 * (r["fork_after_ns"] / r["fork_before_ns"] - 1), abs=0.01
        )
    op = json.loads(run(capsys, "whatif", "--op", "munmap", "--arch", "x86", "--mem", "2M,4M", "--json"))
    assert op["sweep"] == ["mem"]
    assert {r["mem_bytes"] for r in op["rows"]} == {2 << 20, 4 << 20}
    assert all(isinstance(r["before_ns"], float) and "before_ms" not in r for r in op["rows"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "argv,label",
    [
        (["fuzz", "--arch", "x86", "--examples", "3"], "fuzz x86"),
        (["mutants", "--only", "fold-drops-dirty", "--budget", "5"], "mutants"),
        (["explain", "--arch", "x86", "--folio", "4K,64K", "--mem", "256K"], "model runs"),
    ],
)
def test_progress_bar_on_a_terminal_only(
    argv: list[str], label: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Campaigns and sweeps draw a bar on stderr when it is a terminal, and none with -q."""
    monkeypatch.setenv("PTESIM_JOBS", "1")
    for quiet in (False, True):
        err = _Terminal()
        monkeypatch.setattr("sys.stderr", err)
        main([*argv, *(["-q"] if quiet else [])])
        capsys.readouterr()
        assert (label in err.getvalue()) is not quiet, err.getvalue()


def test_long_fuzz_campaign_runs_in_cells_with_the_same_answer_on_any_worker_count(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """fuzz --examples above a cell's size runs independent cells; one worker or two, the programs
    run and the violation found (the first cell's, in seed order) are the same."""
    import ptesim.fuzz.commands as fuzz_commands

    monkeypatch.setattr(fuzz_commands, "CAMPAIGN_CELL", 4)
    out = {}
    for jobs in ("1", "2"):
        monkeypatch.setenv("PTESIM_JOBS", jobs)
        for argv in (["--arch", "x86"], ["--mutant", "fold-drops-dirty"]):
            rc = main(["fuzz", *argv, "--examples", "10", "--json", "--no-shrink"])
            doc = json.loads(capsys.readouterr().out)
            doc.pop("seconds")
            out[jobs, argv[1]] = (rc, doc)
    assert out["1", "x86"] == out["2", "x86"] and out["1", "x86"][0] == 0
    assert out["1", "x86"][1]["examples"] == 10
    assert out["1", "fold-drops-dirty"] == out["2", "fold-drops-dirty"]
    assert out["1", "fold-drops-dirty"][0] == 1 and out["1", "fold-drops-dirty"][1]["violations"]


def test_plot_of_single_runs_and_of_whatif_op(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--plot on one explain run (counts by phase) and on whatif --op (one bar per configuration)."""
    for name, argv in {
        "explain": ["explain", "--arch", "x86", "--mem", "256K"],
        "whatif-op": ["whatif", "--op", "munmap", "--arch", "x86", "--mem", "2M"],
        "latency": ["latency", "munmap", "--arch", "x86", "--mem", "2M"],
    }.items():
        png = tmp_path / f"{name}.png"
        run(capsys, *argv, "--plot", str(png))
        assert png.read_bytes()[:4] == b"\x89PNG", name


def test_fuzz_sweeps_targets_as_independent_campaigns(capsys: pytest.CaptureFixture[str]) -> None:
    """fuzz --arch x86,riscv runs one campaign per target (cells on the pool) and reports each."""
    rc = main(["fuzz", "--arch", "x86,riscv", "--preset", "v6.9", "--examples", "6", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [(c["target"], c["examples"], c["violations"]) for c in doc["campaigns"]] == [
        ("x86 v6.9", 6, []),
        ("riscv v6.9", 6, []),
    ]
