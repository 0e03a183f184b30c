"""``ptesim host`` measurements on this kernel: JSON schema, tables, guards, restore on errors."""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_helpers import runner_processes
from ptesim import cli
from ptesim.host import bench
from ptesim.host.sysfs import (
    STATE_FILE_NAME,
    HostSession,
    ThpSysfs,
    quiescent_settings,
    settings_for_size,
    state_dir,
)

THP = Path("/sys/kernel/mm/transparent_hugepage")
HOST_OK = sys.platform.startswith("linux") and os.geteuid() == 0 and any(THP.glob("hugepages-*kB/enabled"))
pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not HOST_OK, reason="needs Linux, root and mTHP sysfs"),
]

RESULT_KEYS = {
    "size",
    "backing_pct",
    "median_ms",
    "min_ms",
    "max_ms",
    "ci95_ms",
    "samples_ms",
    "tlb_flush_events",
}
TOP_KEYS = {"kernel", "arch", "mem", "results", "settings_before", "settings_after"}


@pytest.fixture(autouse=True)
def knobs_unchanged() -> Iterator[dict[str, str]]:
    """Every THP knob equals its value before the test, no saved state and no runner remain."""
    sysfs = ThpSysfs()
    before = quiescent_settings(sysfs)
    yield before
    assert quiescent_settings(sysfs) == before
    assert not (state_dir() / STATE_FILE_NAME).exists()
    assert runner_processes() == []
    assert not [
        line for line in Path("/proc/self/mounts").read_text().splitlines() if str(state_dir()) in line
    ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["host", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, *argv, "--json", "-q")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_info_reports_the_discovery_facts(capsys: pytest.CaptureFixture[str]) -> None:
    """host info --json names kernel, CPUs, sizes with enabled files, knobs, stats and tracing."""
    doc = run_json(capsys, "info")
    for key in (
        "kernel",
        "arch",
        "cpus",
        "page_size",
        "root",
        "sizes",
        "settings",
        "defrag",
        "khugepaged",
        "stats",
        "tlb_flush_tracepoint",
        "sizes_without_enabled",
    ):
        assert key in doc
    sizes = {s["size"] for s in doc["sizes"]}
    assert {"64K", "2M"} <= sizes
    assert all((THP / s["dir"] / "enabled").is_file() for s in doc["sizes"])
    code, out, _ = run(capsys, "info")
    assert code == 0 and " size |" in out


def test_fork_json_schema_backing_and_restore(
    capsys: pytest.CaptureFixture[str], knobs_unchanged: dict[str, str]
) -> None:
    """fork per size: stable schema, verified backing, samples kept, settings restored."""
    doc = run_json(capsys, "fork", "--sizes", "4K,64K,2M", "--mem", "32M", "--reps", "3", "--warmup", "1")
    assert set(doc) >= TOP_KEYS
    assert doc["mem"] == 32 << 20 and doc["op"] == "fork"
    assert [r["size"] for r in doc["results"]] == ["4K", "64K", "2M"]
    for r in doc["results"]:
        assert set(r) >= RESULT_KEYS
        assert r["skipped"] is None
        assert r["backing_verified"] and r["backing_pct"] >= 90.0
        assert len(r["samples_ms"]) == 3
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["baseline_ms"] > 0
        tlb = r["tlb_flush_events"]
        assert tlb is None or all(k.startswith("TLB_") for k in tlb)
    assert doc["results"][2]["pmd_mapped_pct"] >= 90.0
    assert doc["settings_before"] == doc["settings_after"] == knobs_unchanged


def test_fork_table_has_one_row_per_size(capsys: pytest.CaptureFixture[str]) -> None:
    """The markdown table is right-aligned like the seed table, one row per size."""
    code, out, _ = run(
        capsys, "fork", "--sizes", "4K,2M", "--mem", "32M", "--reps", "2", "--warmup", "0", "-q"
    )
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2
    assert table[0].split("|")[1].strip() == "size"
    assert set(table[1].replace("|", "")) == {"-", ":"}
    assert [row.split("|")[1].strip() for row in table[2:]] == ["4K", "2M"]
    assert "restored and verified" in out


@pytest.mark.parametrize("op", ["munmap", "dontneed", "cow"])
def test_other_operations_csv(capsys: pytest.CaptureFixture[str], op: str) -> None:
    """munmap, dontneed and cow print one CSV row per size with a timing."""
    code, out, err = run(
        capsys, op, "--sizes", "4K,64K", "--mem", "32M", "--reps", "2", "--warmup", "0", "--csv", "-q"
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["size"] for r in rows] == ["4K", "64K"]
    assert all(r["op"] == op and float(r["median_ms"]) > 0 for r in rows)


def test_wis_runs_n_workers(capsys: pytest.CaptureFixture[str]) -> None:
    """wis: one result per worker count, per-worker rates summing to the total."""
    doc = run_json(capsys, "wis", "--size", "64K", "--mem", "32M", "--cpus", "1,2", "--duration", "0.3")
    assert doc["backing_pct"] >= 90.0
    assert [r["cpus"] for r in doc["results"]] == [1, 2]
    for r in doc["results"]:
        assert len(r["per_worker"]) == r["cpus"]
        assert r["iterations_per_s"] == pytest.approx(sum(r["per_worker"]), rel=1e-3)
        assert r["iterations_per_s"] > 0


def test_low_backing_is_refused(knobs_unchanged: dict[str, str]) -> None:
    """A size whose verified backing is below the threshold gets no timing, and says why."""
    sysfs = ThpSysfs()
    spec = {
        "op": "fork",
        "mem": 8 << 20,
        "folio_size": 64 << 10,
        "page_size": 4096,
        "pmd_size": 2 << 20,
        "madvise": None,
        "warmup": 0,
        "reps": 2,
        "cpu": None,
        "threshold": 90.0,
        "verify": True,
    }
    with HostSession(sysfs) as s:
        s.push(settings_for_size(sysfs, 4096, 4096, "always"))
        raw = bench.run_runner(spec)
    assert raw["samples_ns"] == [] and raw["backing"]["pct"] == 0.0
    assert "threshold" in raw["skipped"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fork", "--sizes", "abc"], "bad folio size"),
        (["fork", "--sizes", "3K"], "unsupported folio size 3K"),
        (["fork", "--sizes", "8K"], "unsupported folio size 8K"),
        (["fork", "--sizes", "48K"], "unsupported folio size"),
        (["fork", "--sizes", "64K", "--mem", "1T"], "MemAvailable"),
        (["fork", "--sizes", "2M", "--mem", "3M"], "multiple of the largest"),
        (["fork", "--tlb-reasons", "bogus", "--mem", "32M"], "unknown TLB flush reason"),
        (["fork", "--cpu", "4096", "--mem", "32M"], "bad --cpu"),
        (["wis", "--cpus", "64"], "CPUs are allowed"),
        (["fork", "--reps", "0"], "argument --reps: 0 is out of range"),
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    """Bad requests exit 2 with one line naming the problem, before anything changes."""
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_compare_model_without_model_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--compare-model needs ptesim.workloads.latency.predict; without it, exit 2 in one line."""
    try:
        latency = importlib.import_module("ptesim.workloads.latency")
    except ImportError:
        pass
    else:
        if hasattr(latency, "predict"):
            pytest.skip("the model side exists")
    code, _, err = run(capsys, "fork", "--sizes", "4K", "--mem", "32M", "--compare-model", "x86-host")
    assert code == 2 and "model comparison unavailable" in err


def test_compare_model_adds_prediction(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a predict() available, each result gains model_ms and model_error_pct."""
    calls: list[tuple[str, str, str, str, int]] = []

    def predict(op: str, arch: str, profile: str, size: str, mem: int) -> float | None:
        calls.append((op, arch, profile, size, mem))
        return 1.0

    monkeypatch.setattr(bench, "load_model", lambda: predict)
    doc = run_json(
        capsys,
        "fork",
        "--sizes",
        "4K",
        "--mem",
        "32M",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--compare-model",
        "x86-host",
    )
    assert calls == [("fork", "x86", "x86-host", "4K", 32 << 20)]
    r = doc["results"][0]
    assert r["model_ms"] == 1.0 and r["model_error_pct"] is not None


def test_exception_mid_run_restores_settings(
    monkeypatch: pytest.MonkeyPatch, knobs_unchanged: dict[str, str]
) -> None:
    """An exception raised after the first size was measured leaves every knob as saved."""
    real = bench.run_runner
    seen: list[str] = []

    def failing(spec: dict[str, Any]) -> dict[str, Any]:
        if seen:
            assert ThpSysfs().read("hugepages-2048kB/enabled") == "always"
            raise RuntimeError("injected mid-run")
        seen.append(spec["op"])
        return real(spec)

    monkeypatch.setattr(bench, "run_runner", failing)
    with pytest.raises(RuntimeError, match="injected mid-run"):
        cli.main(["host", "fork", "--sizes", "64K,2M", "--mem", "32M", "--reps", "2", "-q"])
    assert seen == ["fork"]


def test_without_write_access_current_settings_are_used(knobs_unchanged: dict[str, str]) -> None:
    """Read-only (as without root): nothing changes, unsettable sizes are named, 4K still timed."""
    p = bench.plan("fork", "4K,64K", "8M", reps=2, warmup=0, trace=False)
    with HostSession(writable=False) as s:
        doc = bench.measure(p, s)
    bench.finish(doc, s)
    assert doc["root"] is False
    assert doc["settings_before"] == doc["settings_after"] == knobs_unchanged
    four_k, sixty_four_k = doc["results"]
    assert four_k["median_ms"] is not None and four_k["backing_pct"] >= 90.0
    if knobs_unchanged["hugepages-64kB/enabled"] == "never":
        assert doc["unset_sizes"] == ["64K"]
        assert sixty_four_k["median_ms"] is None and "threshold" in sixty_four_k["skipped"]
