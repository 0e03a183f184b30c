"""--save records a run; `ptesim runs` lists it; `ptesim compare` gives per-cell deltas, with a
Mann-Whitney test where both runs hold samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptesim import store
from ptesim.cli import main


@pytest.fixture(autouse=True)
def _db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("PTESIM_DB", str(path))
    return path


def test_save_list_show_compare(capsys: pytest.CaptureFixture[str]) -> None:
    """Two saved explain runs are listed with ids and compared cell by cell."""
    for preset in ("v6.8", "v6.9"):
        assert main(["explain", "--arch", "x86", "--preset", preset, "--mem", "256K", "--save"]) == 0
    err = capsys.readouterr().err
    assert "saved run 2" in err
    assert main(["runs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["rows"]
    assert [r["id"] for r in listed] == [1, 2]
    assert "--preset v6.9" in listed[1]["command"]
    run = store.get_run("-1")
    assert run.results["totals"]["folio_ref"] == 4 and run.version
    assert main(["compare", "1", "2", "--json"]) == 0
    rows = {r["cell"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["totals.folio_ref"]["a"] == 64 and rows["totals.folio_ref"]["b"] == 4
    assert rows["totals.folio_ref"]["delta"] == -60


def test_compare_samples_is_significant(capsys: pytest.CaptureFixture[str]) -> None:
    """Host-style rows with samples: medians compared, Mann-Whitney says which differ."""
    fast = {"results": [{"size": "64K", "samples_ms": [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.02, 0.98]}]}
    slow = {"results": [{"size": "64K", "samples_ms": [2.0, 2.1, 1.9, 2.0, 2.05, 1.95, 2.02, 1.98]}]}
    same = {"results": [{"size": "64K", "samples_ms": [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.02, 0.99]}]}
    ids = [store.save_run(["host", "fork"], "host", doc) for doc in (fast, slow, same)]
    (d,) = store.compare(store.get_run(str(ids[0])), store.get_run(str(ids[1])))
    assert d.cell == "results[size=64K].samples_ms (median)"
    assert d.a == pytest.approx(1.0) and d.b == pytest.approx(2.0)
    assert d.significant is True
    (d,) = store.compare(store.get_run(str(ids[0])), store.get_run(str(ids[2])))
    assert d.significant is False


def test_unknown_run_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A run id that is not in the store: one line, exit 2."""
    assert main(["compare", "1", "7"]) == 2
    assert "ptesim: error:" in capsys.readouterr().err


def test_compare_two_kernels_tables_matches_rows_without_the_preset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two wis runs of two kernels: rows are matched by everything but the preset, and each
    cell is the difference between the kernels."""
    for preset in ("v6.8", "v6.9"):
        argv = ["wis", "--preset", preset, "--mem", "2M", "--cpus", "1,8", "--save"]
        assert main(argv) == 0
    capsys.readouterr()
    assert main(["compare", "-2", "-1", "--json"]) == 0
    rows = {r["cell"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    key = "arch=arm64,granule_bytes=4096,folio_bytes=65536,mem_bytes=2097152,cpus=8"
    cell = f"rows[{key}].steady_iterations_per_s"
    assert (
        rows[cell]["a"]
        and rows[cell]["b"]
        and rows[cell]["delta"] == pytest.approx(rows[cell]["b"] - rows[cell]["a"])
    )
    assert not any("preset=" in c for c in rows)
