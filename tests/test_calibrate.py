"""Calibration recovers parameters from a table the model itself generated."""

from __future__ import annotations

import pytest
from test_cost_synth import work

from ptesim.cost.calibrate import Cell, fit, predict
from ptesim.cost.profile import load_profile

CPUS = (1, 8, 16, 24, 32)
NAMES = ("pte_read_ns", "dvm_service_ns", "sync_service_ns")


def _cells(values: dict[str, float]) -> list[Cell]:
    truth = load_profile("altra").with_values(values)
    base = work("contpte-v1-base")
    cells = [
        Cell(label, n, work(preset), base, 0.0)
        for label, preset in (("before_opt", "contpte-v1-before-opt"), ("after_opt", "contpte-v1-after-opt"))
        for n in CPUS
    ]
    preds = predict(cells, truth)
    return [Cell(c.label, c.cpus, c.variant, c.baseline, p) for c, p in zip(cells, preds, strict=True)]


def test_recovers_known_parameters() -> None:
    truth = {"pte_read_ns": 0.05, "dvm_service_ns": 3.0, "sync_service_ns": 40.0}
    cells = _cells(truth)
    start = load_profile("altra").with_values({"pte_read_ns": 0.1, "dvm_service_ns": 5.0, "sync_service_ns": 20.0})
    res = fit(start, list(NAMES), cells, holdout_cpus=(16, 24))
    got = {n: res.profile.get(n) for n in NAMES}
    for n in NAMES:
        assert got[n] == pytest.approx(truth[n], rel=0.01)
    assert res.heldout_max_abs_error_pp < 0.01
    assert all(c.heldout == (c.cpus in (16, 24)) for c in res.cells)
