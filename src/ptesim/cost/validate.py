"""``ptesim validate``: price every cell of published tables with the shipped profiles, unrefitted.

:func:`validate` is the computation (parse -> run the model -> price with intervals); the command in
:mod:`ptesim.cost.commands` only renders it.  A cell's role says what its machine's profile knows of
it: ``fitted`` (its table was in the fit), ``held-out`` (named in the fit's held-out list) or
``unseen`` (never shown to the fit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ptesim.cost.intervals import LogInterval, log_interval
from ptesim.cost.profile import Profile
from ptesim.cost.runs import prefetch
from ptesim.cost.tables import (
    CellWork,
    PubCell,
    cell_runs,
    cell_work,
    from_log,
    kind_of,
    matches,
    model_log,
    profiles_for,
    published_log,
    read_tables,
)
from ptesim.units import format_size

ROLES = ("fitted", "held-out", "unseen")


@dataclass(frozen=True)
class CellPrediction:
    cell: PubCell
    profile: str
    interval: LogInterval
    role: str

    @property
    def predicted(self) -> float:
        return from_log(self.cell, self.interval.y)

    @property
    def lo(self) -> float:
        return from_log(self.cell, self.interval.lo)

    @property
    def hi(self) -> float:
        return from_log(self.cell, self.interval.hi)

    @property
    def error(self) -> float:
        """Predicted minus published: percentage points, or percent of a ``seconds`` value."""
        if self.cell.percent:
            return self.predicted - self.cell.value
        return 100.0 * (self.predicted / self.cell.value - 1.0)

    @property
    def log_error(self) -> float:
        return self.interval.y - published_log(self.cell)

    @property
    def covered(self) -> bool:
        return self.lo <= self.cell.value <= self.hi

    def as_dict(self) -> dict[str, Any]:
        c = self.cell
        return {
            "table": c.table,
            "id": c.id,
            "machine": c.machine,
            "workload": c.workload,
            "op": c.op,
            "mem": format_size(c.mem),
            "folio": format_size(c.folio),
            "mapping": c.mapping,
            "cpus": c.cpus,
            "baseline": c.baseline,
            "variant": c.variant,
            "metric": c.metric,
            "published": c.value,
            "predicted": _round(self.predicted, c),
            "lo": _round(self.lo, c),
            "hi": _round(self.hi, c),
            "role": self.role,
            "mem_bytes": c.mem,
            "folio_bytes": c.folio,
            **self._unit_fields(),
        }

    def _unit_fields(self) -> dict[str, float]:
        """``published``, ``predicted``, ``lo``, ``hi`` and the error again, with their unit in the
        name: ``*_pct`` (a change) and ``error_pp``, or ``*_ns`` (a time) and ``error_pct``."""
        c = self.cell
        vals = {"published": c.value, "predicted": self.predicted, "lo": self.lo, "hi": self.hi}
        if c.percent:
            out = {f"{k}_pct": round(v, 3) for k, v in vals.items()}
            out["error_pp"] = round(self.error, 3)
        else:
            out = {f"{k}_ns": round(v * 1e9, 1) for k, v in vals.items()}
            out["error_pct"] = round(self.error, 3)
        return out


def _round(v: float, cell: PubCell) -> float:
    return round(v, 3) if cell.percent else float(f"{v:.6g}")


def role_of(cell: PubCell, profile: Profile) -> str:
    fit = profile.fit
    if fit is None:
        return "unseen"
    if any(matches(cell, item) for item in fit.held_out):
        return "held-out"
    if cell.table in fit.tables:
        return "fitted"
    return "unseen"


def predict_cells(
    cells: Sequence[PubCell], profiles: dict[str, Profile], works: dict[str, CellWork] | None = None
) -> list[CellPrediction]:
    """Price each cell with its machine's profile, with a 90% interval and its role."""
    if works is None:
        prefetch([s for c in cells for s in cell_runs(c, profiles[c.machine]) if s is not None])
        works = {c.id: cell_work(c, profiles[c.machine]) for c in cells}
    out = []
    for c in cells:
        prof = profiles[c.machine]
        cw = works[c.id]
        role = role_of(c, prof)
        iv = log_interval(_pricer(cw), prof, kind_of(c), role)
        out.append(CellPrediction(c, prof.name, iv, role))
    return out


def _pricer(cw: CellWork) -> Callable[[Profile], float]:
    def price(p: Profile) -> float:
        return model_log(cw, p)

    return price


def summary(preds: Sequence[CellPrediction]) -> dict[str, Any]:
    """Per role: cells, max |error| (pp for changes, % for seconds), interval coverage and median
    width (as a factor hi/lo of time, and in pp for changes), and the issue's targets (changes
    above +100% within a factor 2, changes within +-20% within 5 pp)."""
    out: dict[str, Any] = {"cells": len(preds)}
    for role in ROLES:
        group = [p for p in preds if p.role == role]
        if not group:
            continue
        pct = [abs(p.error) for p in group if p.cell.percent]
        sec = [abs(p.error) for p in group if not p.cell.percent]
        big = [p for p in group if p.cell.percent and p.cell.value > 100]
        small = [p for p in group if p.cell.percent and abs(p.cell.value) <= 20]
        out[role] = {
            "cells": len(group),
            "max_abs_error_pp": round(max(pct), 3) if pct else None,
            "max_abs_error_seconds_pct": round(max(sec), 3) if sec else None,
            "coverage_90": round(sum(p.covered for p in group) / len(group), 3),
            # how wide: hi/lo of the interval as a factor of time (log scale), and in pp for changes
            "median_width_factor": round(
                math.exp(_median([p.interval.hi - p.interval.lo for p in group])), 3
            ),
            "median_width_pp": round(_median([p.hi - p.lo for p in group if p.cell.percent]), 2)
            if any(p.cell.percent for p in group)
            else None,
            "big_within_factor_2": f"{sum(_factor(p) <= 2 for p in big)}/{len(big)}",
            "small_within_5pp": f"{sum(abs(p.error) <= 5 for p in small)}/{len(small)}",
        }
    return out


def _median(xs: Sequence[float]) -> float:
    v = sorted(xs)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _factor(p: CellPrediction) -> float:
    """How many times off a change is, as a ratio of (1 + change)."""
    return math.exp(abs(p.log_error))


def validate(paths: Sequence[str]) -> tuple[list[CellPrediction], dict[str, Any]]:
    """Parse ``paths``, run the model for every cell and price it with its machine's profile."""
    cells = read_tables(paths)
    profiles = profiles_for(cells)
    preds = predict_cells(cells, profiles)
    return preds, summary(preds)
