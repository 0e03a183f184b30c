"""Calibration recovers known parameters from tables the model itself generated: the seed-style
throughput table (arm64 will-it-scale counts) and a host-style fork-latency document (x86)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptesim.cost.calibrate import Cell, fit, predict
from ptesim.cost.hostfit import fit_host, read_host_results
from ptesim.cost.profile import load_profile
from ptesim.cost.seed import SEED_FIT, SEED_START, seed_work
from ptesim.errors import UsageError
from ptesim.units import parse_size
from ptesim.workloads.latency import latency_ns

CPUS = (1, 8, 16, 24, 32)
MEM = "8M"  # a small buffer keeps the model runs short; calibration sees the same structure


@pytest.fixture(scope="module")
def seed_cells_template() -> list[Cell]:
    work = seed_work(load_profile("altra"), mem=MEM)
    return [
        Cell(label, n, work[label].steady, work["baseline"].steady, 0.0)
        for label in ("before_opt", "after_opt")
        for n in CPUS
    ]


def test_recovers_seed_parameters_within_1pct(seed_cells_template: list[Cell]) -> None:
    """Fitting the four seed parameters to a table made with known values finds them within 1%."""
    truth = {
        "local_ns.pte_read": 0.4,
        "shared.service_ns.tlbi_page_bcast": 1.5,
        "shared.sync_per_active_cpu_ns": 8.0,
        "shared.scv": 3.0,
    }
    made = predict(seed_cells_template, load_profile("altra").with_values(truth))
    cells = [
        Cell(c.label, c.cpus, c.variant, c.baseline, p)
        for c, p in zip(seed_cells_template, made, strict=True)
    ]
    start = load_profile("altra").with_values(SEED_START)
    res = fit(start, list(SEED_FIT), cells, holdout_cpus=(16, 24))
    for k, v in truth.items():
        assert res.fitted[k] == pytest.approx(v, rel=0.01), k
    assert res.heldout_max_abs_error < 0.05
    assert all(c.heldout == (c.cpus in (16, 24)) for c in res.cells)
    assert all(res.profile.provenance[k].startswith("calibrated:") for k in truth)


def _host_doc(values: dict[str, float], sizes: list[str], mem: int) -> dict[str, object]:
    prof = load_profile("x86-host").with_values(values)
    results = []
    for size in sizes:
        ms = latency_ns("fork", "x86", "v6.15", prof, folio=parse_size(size), mem=mem) / 1e6
        results.append(
            {"size": size, "median_ms": ms + 0.3, "baseline_ms": 0.3, "net_ms": ms, "skipped": None}
        )
    return {"kernel": "model", "arch": "x86_64", "op": "fork", "mem": mem, "results": results}


def test_recovers_host_per_pte_and_per_batch_costs(tmp_path: Path) -> None:
    """From model-made fork timings at 4K and 64K, the per-PTE and per-batch costs come back
    within 1% and the held-out sizes are predicted."""
    truth = {"local_ns.mapcount": 31.0, "local_ns.folio_ref": 47.0}
    path = tmp_path / "host.json"
    path.write_text(json.dumps(_host_doc(truth, ["4K", "16K", "64K"], 4 << 20)))
    res = fit_host(str(path), load_profile("x86-host"), holdout_sizes=["16K"])
    for k, v in truth.items():
        assert res.fitted[k] == pytest.approx(v, rel=0.01), k
    held = [c for c in res.cells if c.heldout]
    assert [c.label for c in held] == ["fork 16K"]
    assert abs(held[0].error) < 0.5
    assert "host fork timings" in res.profile.provenance["local_ns.mapcount"]


@pytest.mark.parametrize(
    "doc, needle",
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"arch": "x86_64", "op": "fork", "mem": 4096}', "results"),
        ('{"arch": "x86_64", "op": "wis", "mem": 4096, "results": [{}]}', "wis"),
        ('{"arch": "x86_64", "op": "fork", "mem": -1, "results": [{"size": "4K"}]}', "mem"),
    ],
)
def test_bad_host_documents_are_one_line_errors(tmp_path: Path, doc: str, needle: str) -> None:
    """Malformed host results are refused with a one-line error naming the problem."""
    path = tmp_path / "r.json"
    path.write_text(doc)
    with pytest.raises(UsageError) as exc:
        read_host_results(str(path))
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_host_document_for_another_arch_or_untimed(tmp_path: Path) -> None:
    """A run measured on another architecture, or with no timed size, cannot calibrate x86-host."""
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps({"arch": "aarch64", "op": "fork", "mem": 1 << 20, "results": [{"size": "4K"}]})
    )
    with pytest.raises(UsageError, match="arm64"):
        fit_host(str(path), load_profile("x86-host"))
    path.write_text(
        json.dumps(
            {"arch": "x86_64", "op": "fork", "mem": 1 << 20, "results": [{"size": "4K", "net_ms": None}]}
        )
    )
    with pytest.raises(UsageError, match="no size was timed"):
        fit_host(str(path), load_profile("x86-host"))


def test_host_measurement_is_net_of_the_measuring_process() -> None:
    """A host result's time on the buffer: ``net_ms`` (median less the measuring process's own
    fork), the median itself when an older document has no ``net_ms``, and with ``--statistic
    min`` the fastest sample less the same baseline."""
    from ptesim.cost.hostfit import host_cells

    doc = {
        "arch": "x86_64",
        "op": "fork",
        "mem": 1 << 20,
        "results": [
            {"size": "4K", "net_ms": 2.0, "median_ms": 2.5, "min_ms": 1.75, "baseline_ms": 0.5},
            {"size": "64K", "median_ms": 0.75, "min_ms": 0.625, "baseline_ms": 0.125},
        ],
    }
    prof = load_profile("x86-host")
    by_median = {c.label.split()[-1]: c.measured_ms for c in host_cells(doc, prof)}
    by_min = {c.label.split()[-1]: c.measured_ms for c in host_cells(doc, prof, statistic="min")}
    assert by_median == {"4K": 2.0, "64K": 0.75}
    assert by_min == {"4K": 1.25, "64K": 0.5}


def test_host_fit_provenance_names_statistic_file_and_fitted_sizes(tmp_path: Path) -> None:
    """fit_host(): the provenance of a value fitted on host timings says which statistic was fitted
    (the net median, or the fastest sample less the baseline), which file, and the sizes fitted
    (the held-out ones left out); a bad result in the file is named with the file."""
    truth = {"local_ns.mapcount": 31.0, "local_ns.folio_ref": 47.0}
    path = tmp_path / "host.json"
    doc = _host_doc(truth, ["4K", "16K", "64K"], 4 << 20)
    for r in doc["results"]:
        r["min_ms"] = r["median_ms"]
    path.write_text(json.dumps(doc))
    for statistic, words in (("median", "net median"), ("min", "fastest sample less the baseline")):
        res = fit_host(str(path), load_profile("x86-host"), holdout_sizes=["16K"], statistic=statistic)
        why = res.profile.provenance["local_ns.mapcount"]
        assert f"host fork timings ({words}), host.json (" in why and "sizes 4K, 64K)" in why
    doc["results"].append({"median_ms": 1.0})
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=f"^{path}: every result needs a 'size'"):
        fit_host(str(path), load_profile("x86-host"))
