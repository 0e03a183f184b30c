"""The between-table discrepancy of held-out and unseen intervals (cost/discrepancy.py, cost.md §11).

The cells here are made of counts directly (no model run): two per table, priced by the altra profile,
so that a leave-one-table-out cross-validation with its nested refits takes a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptesim.cost import discrepancy
from ptesim.cost.discrepancy import Residual, choose, estimate
from ptesim.cost.model import Work
from ptesim.cost.profile import load_profile
from ptesim.cost.tablefit import cross_validate, fit_tables, with_discrepancy
from ptesim.cost.tables import CellWork, PubCell, from_log, model_log
from ptesim.cost.validate import predict_cells

NAMES = ("local_ns.mapcount", "local_ns.folio_ref")
TRUTH = {"local_ns.mapcount": 40.0, "local_ns.folio_ref": 10.0}
#: per table: (mapcounts, folio refs) of the variant per cell, and the table's structural offset
#: (log scale) -- what the model gets wrong on that table, unknown to any fit
TABLES = {
    "ta": (((2048, 64), (256, 1024)), 0.0),
    "tb": (((1024, 16), (128, 2048)), 0.05),
    "tc": (((4096, 256), (64, 512)), -0.04),
}
BASE = {"mapcount": 100.0, "folio_ref": 100.0, "pte_read": 20000.0}


def _cell(table: str, i: int, value: float, machine: str = "altra") -> PubCell:
    return PubCell(
        table, machine, "latency", "fork", 1 << 22, 1 << 21, "pte", 1, "v6.8", "v6.9",
        "runtime_change_pct", value, "made", "made.csv", i, i,
    )  # fmt: skip


def _work(cell: PubCell, mc: int, fr: int) -> CellWork:
    var = Work({"mapcount": float(mc), "folio_ref": float(fr), "pte_read": 20000.0}, forks=1.0, exits=0.0)
    return CellWork(cell, var, Work(dict(BASE), forks=1.0, exits=0.0))


def _made(values: dict[str, list[float]] | None = None) -> tuple[list[PubCell], dict[str, CellWork]]:
    """Cells whose published values are the model with TRUTH plus each table's offset (or ``values``)."""
    truth = load_profile("altra").with_values(TRUTH)
    cells, works = [], {}
    for t, (counts, offset) in TABLES.items():
        for i, (mc, fr) in enumerate(counts, 1):
            probe = _cell(t, i, 0.0)
            y = model_log(_work(probe, mc, fr), truth) + offset
            v = values[t][i - 1] if values and t in values else from_log(probe, y)
            c = _cell(t, i, v)
            cells.append(c)
            works[c.id] = _work(c, mc, fr)
    return cells, works


def _held_out(
    cells: list[PubCell], works: dict[str, CellWork], table: str
) -> list[tuple[float, float, float]]:
    folds = cross_validate(load_profile("altra"), NAMES, cells, works)
    fold = next(f for f in folds if f.table == table)
    return [(p.predicted, p.lo, p.hi) for p in fold.predictions]


@pytest.fixture(autouse=True)
def _small(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process; three tables, so that a held-out table's two others make its own estimate."""
    monkeypatch.setenv("PTESIM_JOBS", "1")
    monkeypatch.setattr(discrepancy, "MIN_TABLES", 2)


@functools.lru_cache(maxsize=1)
def _reference() -> list[tuple[float, float, float]]:
    return _held_out(*_made(), "tb")


def test_the_estimate_weighs_tables_and_allows_for_the_fits_own_variance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discrepancy, "MIN_TABLES", 3)
    rs = [
        Residual("m", "a", "a#1", 0.3, 0.01),
        Residual("m", "a", "a#2", 0.1, 0.01),  # table a: its two cells share one weight
        Residual("m", "b", "b#1", 0.1, 0.01),
    ]
    d = estimate(rs)
    # equal v: v + tau^2 is the table-weighted mean of r^2, (0.5*0.09 + 0.5*0.01 + 0.01) / 2
    assert d.sd == pytest.approx(math.sqrt(0.03 - 0.01), rel=1e-4) and d.df == 1
    assert estimate([Residual("m", "a", "a#1", 0.01, 0.04)]).sd == 0.0  # no excess over the fit's scatter
    # a table the fit could not pin down (large v, small r) does not cancel another's large miss
    mixed = estimate([Residual("m", "a", "a#1", 0.3, 1e-4), Residual("m", "b", "b#1", 0.01, 0.5)])
    assert mixed.sd > 0.2
    # too few tables of its own: pooled with the other machines' residuals
    other = [Residual("n", t, f"{t}#1", 0.2, 0.0) for t in "xyz"]
    pooled = choose(rs, other)
    assert pooled.pooled and pooled.df == 4 and set(pooled.sources) == {"m/a", "m/b", "n/x", "n/y", "n/z"}
    assert not choose(other, rs).pooled


@settings(max_examples=2, deadline=None)
@given(st.lists(st.floats(-60.0, 400.0), min_size=2, max_size=2))
def test_a_held_out_interval_does_not_see_its_own_table(values: list[float]) -> None:
    """No peeking: the held-out prediction of table T and its interval, discrepancy included, are
    the same whatever T publishes (T is in neither the fit that predicts it nor the nested fits whose
    residuals give its discrepancy)."""
    after = _held_out(*_made({"tb": values}), "tb")
    for b, a in zip(_reference(), after, strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9)


def test_held_out_intervals_carry_the_discrepancy_and_others_see_the_table() -> None:
    cells, works = _made()
    folds = cross_validate(load_profile("altra"), NAMES, cells, works)
    assert [f.table for f in folds] == list(TABLES)
    for f in folds:
        assert f.discrepancy.sd > 0 and f.table not in {s.split("/")[1] for s in f.discrepancy.sources}
        assert f.discrepancy.df == len(f.discrepancy.sources) - 1 == len(TABLES) - 2
        for p in f.predictions:
            assert p.role == "held-out" and p.interval.discrepancy
            assert p.interval.hi - p.interval.lo > 2 * 1.6448 * p.interval.fit_sd
    # a table's values do reach the intervals of the other tables (through their nested refits)
    other = [x for row in _held_out(*_made({"tb": [300.0, -50.0]}), "ta") for x in row]
    assert other != pytest.approx([x for row in _held_out(cells, works, "ta") for x in row])


def test_fitted_intervals_are_unchanged_and_unseen_ones_widen() -> None:
    """A fitted cell keeps the fit interval whatever discrepancy the profile stores; a cell of a
    table the fit never saw gets it."""
    cells, works = _made()
    fitted_cells = [c for c in cells if c.table != "tc"]
    fit = fit_tables(load_profile("altra"), NAMES, fitted_cells, works)
    plain = fit.profile
    wide = with_discrepancy(
        plain, discrepancy.Discrepancy(0.1, 3, ("altra/x", "altra/y", "altra/z", "altra/w"))
    )
    a = predict_cells(cells, {"altra": plain}, works)
    b = predict_cells(cells, {"altra": wide}, works)
    for p, q in zip(a, b, strict=True):
        if p.cell.table == "tc":
            assert p.role == q.role == "unseen"
            assert q.lo < p.lo and q.hi > p.hi and q.predicted == p.predicted
            assert q.interval.fit_sd == pytest.approx(p.interval.fit_sd)
        else:
            assert p.role == q.role == "fitted"
            assert (q.lo, q.predicted, q.hi) == (p.lo, p.predicted, p.hi)


def test_the_discrepancy_survives_the_profile_file(tmp_path: object) -> None:
    from pathlib import Path

    from ptesim.cost.profile import dump_profile

    cells, works = _made()
    fit = fit_tables(load_profile("altra"), NAMES, cells, works)
    prof = with_discrepancy(fit.profile, discrepancy.Discrepancy(0.25, 4, ("altra/a", "apple-m2-vm/b")))
    path = Path(str(tmp_path)) / "altra.toml"
    path.write_text(dump_profile(prof), encoding="utf-8")
    back = load_profile(str(path))
    assert back.fit is not None and back.fit.discrepancy_sd == 0.25 and back.fit.discrepancy_df == 4
    assert back.fit.discrepancy_from == ("altra/a", "apple-m2-vm/b")
    assert dataclasses.replace(back.fit, discrepancy_sd=0.0).discrepancy_sd == 0.0


def test_a_machine_with_too_few_tables_pools_the_other_machines_residuals() -> None:
    """apple-m2-vm-like: two tables, so no nested refit is possible; its held-out table's
    discrepancy comes from the other machine's leave-one-table-out residuals only (fits that never
    see this machine's tables), and does not move when that table's values do."""
    from ptesim.cost.tablefit import cross_validate_machines

    def made(values: dict[str, list[float]] | None = None) -> tuple[list[PubCell], dict[str, CellWork]]:
        cells, works = _made()
        apple = load_profile("apple-m2-vm").with_values(TRUTH)
        for t, ((mc, fr), off) in {"pa": ((900, 40), 0.05), "pb": ((50, 700), -0.03)}.items():
            for i, scale in enumerate((1, 2), 1):
                probe = _cell(t, i, 0.0, machine="apple-m2-vm")
                y = model_log(_work(probe, mc * scale, fr), apple) + off
                v = values[t][i - 1] if values and t in values else from_log(probe, y)
                c = _cell(t, i, v, machine="apple-m2-vm")
                cells.append(c)
                works[c.id] = _work(c, mc * scale, fr)
        return cells, works

    def apple_fold(
        cells: list[PubCell], works: dict[str, CellWork]
    ) -> tuple[discrepancy.Discrepancy, list[float]]:
        specs = [(load_profile("altra"), NAMES, ()), (load_profile("apple-m2-vm"), NAMES, ())]
        cv = cross_validate_machines(specs, cells, works)
        fold = next(f for f in cv.folds["apple-m2-vm"] if f.table == "pa")
        return fold.discrepancy, [x for p in fold.predictions for x in (p.predicted, p.lo, p.hi)]

    disc, before = apple_fold(*made())
    assert disc.pooled and disc.sources and all(s.startswith("altra/") for s in disc.sources)
    _, after = apple_fold(*made({"pa": [250.0, -40.0]}))
    assert after == pytest.approx(before, rel=1e-9, abs=1e-9)
