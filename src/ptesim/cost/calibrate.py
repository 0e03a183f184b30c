"""Least-squares calibration of chosen profile parameters to a measured table.

A *cell* is one measured number: the throughput change (in %) of a variant against a baseline at one
CPU count, as in the seed table, or a measured latency (ms) of one operation.  :func:`fit` adjusts
the named parameters (in log space, so they stay positive) with :func:`scipy.optimize.least_squares`,
from several starting points, to minimise the per-cell error (percentage points for changes, percent
of the measurement for latencies), and reports the fitted values, the residual of every cell, and the
error on held-out cells that took no part in the fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ptesim.cost.contention import MAX_SCV
from ptesim.cost.model import Work, change, iteration_time
from ptesim.cost.profile import Profile, resolve_parameter
from ptesim.errors import UsageError

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Cell:
    """A measured change (%) of ``variant`` against ``baseline`` with ``cpus`` workers."""

    label: str  # e.g. "before_opt"
    cpus: int
    variant: Work
    baseline: Work
    measured_pct: float


@dataclass(frozen=True)
class LatencyCell:
    """A measured single-operation latency (ms); residuals are relative (% of the measurement)."""

    label: str  # e.g. "fork 64K"
    work: Work
    measured_ms: float
    cpus: int = 1


AnyCell = Cell | LatencyCell


@dataclass(frozen=True)
class CellResult:
    label: str
    cpus: int
    measured: float
    model: float
    heldout: bool
    unit: str = "%"  # "%" (a change; error in pp) or "ms" (a latency; error in % of measured)

    @property
    def error(self) -> float:
        """Model minus measurement: percentage points for a change, percent for a latency."""
        if self.unit == "ms":
            return 100.0 * (self.model - self.measured) / self.measured
        return self.model - self.measured

    # names used by the seed reports
    @property
    def measured_pct(self) -> float:
        return self.measured

    @property
    def model_pct(self) -> float:
        return self.model

    @property
    def error_pp(self) -> float:
        return self.error


@dataclass(frozen=True)
class FitResult:
    profile: Profile
    fitted: dict[str, float]  # dotted name -> value
    initial: dict[str, float]
    cells: list[CellResult]
    success: bool
    message: str
    holdout_cpus: tuple[int, ...] = field(default_factory=tuple)
    starts: int = 1
    at_bound: dict[str, str] = field(default_factory=dict)  # name -> "lower" | "upper"

    def warnings(self) -> list[str]:
        """One line per fitted value that ended on its physical bound."""
        out = []
        for k, side in self.at_bound.items():
            b = self.profile.bounds[k]
            out.append(
                f"warning: {self.profile.name}: {k} = {self.fitted[k]:.4g} ended on its {side} physical "
                f"bound {b.lo if side == 'lower' else b.hi:.4g} ({b.source})"
            )
        return out

    @property
    def max_abs_error(self) -> float:
        return max((abs(c.error) for c in self.cells), default=0.0)

    @property
    def fitted_max_abs_error(self) -> float:
        return max((abs(c.error) for c in self.cells if not c.heldout), default=0.0)

    @property
    def heldout_max_abs_error(self) -> float:
        return max((abs(c.error) for c in self.cells if c.heldout), default=0.0)

    # seed-table names (errors in percentage points)
    max_abs_error_pp = max_abs_error
    fitted_max_abs_error_pp = fitted_max_abs_error
    heldout_max_abs_error_pp = heldout_max_abs_error


def predict_cell(cell: AnyCell, profile: Profile) -> float:
    if isinstance(cell, LatencyCell):
        return iteration_time(cell.work, profile, cell.cpus).cycle_ns / 1e6
    return change(cell.variant, cell.baseline, profile, cell.cpus).change_pct


def predict(cells: Sequence[AnyCell], profile: Profile) -> list[float]:
    """The model's value for every cell (change in % or latency in ms)."""
    return [predict_cell(c, profile) for c in cells]


def _measured(cell: AnyCell) -> float:
    return cell.measured_ms if isinstance(cell, LatencyCell) else cell.measured_pct


def _residual(cell: AnyCell, model: float) -> float:
    if isinstance(cell, LatencyCell):
        return 100.0 * (model - cell.measured_ms) / cell.measured_ms
    return model - cell.measured_pct


def evaluate(
    cells: Sequence[AnyCell], profile: Profile, holdout_cpus: Sequence[int] = ()
) -> list[CellResult]:
    preds = predict(cells, profile)
    return [
        CellResult(
            c.label,
            c.cpus,
            _measured(c),
            p,
            c.cpus in holdout_cpus,
            "ms" if isinstance(c, LatencyCell) else "%",
        )
        for c, p in zip(cells, preds, strict=True)
    ]


#: Upper bounds of parameters whose range is limited (the solver's largest gamma scv).
UPPER = {"shared.scv": MAX_SCV}


def default_starts(n: int) -> list[list[float]]:
    """Multipliers of the initial values: the values themselves, then each parameter x1/4 and x4."""
    out = [[1.0] * n]
    for i in range(n):
        for f in (0.25, 4.0):
            row = [1.0] * n
            row[i] = f
            out.append(row)
    return out


def fit(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[AnyCell],
    *,
    holdout_cpus: Sequence[int] = (),
    holdout: Callable[[AnyCell], bool] | None = None,
    starts: Sequence[Sequence[float]] | None = None,
    max_nfev: int = 200,
    source: str = "",
) -> FitResult:
    """Fit the parameters ``names`` of ``profile`` to the cells that are not held out.

    Cells whose ``cpus`` is in ``holdout_cpus`` (or for which ``holdout(cell)`` is true) are left out
    of the fit and reported apart.  The fit runs from each of ``starts`` (multipliers of the current
    values; :func:`default_starts` by default) and keeps the best.  ``source`` is written into the
    provenance of every fitted value."""
    import numpy as np
    from scipy.optimize import least_squares

    if not names:
        raise UsageError("calibrate: name at least one parameter to fit (--fit a,b,...)")
    params = profile.parameters()
    keys = [resolve_parameter(n, params) for n in names]
    if len(set(keys)) != len(keys):
        raise UsageError("calibrate: a parameter is named twice")

    def is_held(c: AnyCell) -> bool:
        return c.cpus in holdout_cpus or (holdout is not None and holdout(c))

    train = [c for c in cells if not is_held(c)]
    if len(train) < len(keys):
        raise UsageError(
            f"calibrate: {len(keys)} parameters cannot be fitted to {len(train)} cells; hold out fewer"
        )
    initial = {k: params[k] for k in keys}
    base = np.array([math.log(max(params[k], 1e-6)) for k in keys])

    def with_x(x: np.ndarray) -> Profile:
        return profile.with_values({k: float(math.exp(v)) for k, v in zip(keys, x, strict=True)})

    def residuals(x: np.ndarray) -> np.ndarray:
        p = with_x(x)
        return np.array([_residual(c, m) for c, m in zip(train, predict(train, p), strict=True)])

    # A profile's [bounds] are the physical range of each value: the fit cannot leave them.
    upper = np.array(
        [
            math.log(max(profile.bounds[k].hi, 1e-9)) if k in profile.bounds else math.log(UPPER.get(k, 1e12))
            for k in keys
        ]
    )
    lower = np.array(
        [math.log(max(profile.bounds[k].lo, 1e-9)) if k in profile.bounds else math.log(1e-9) for k in keys]
    )
    upper = np.maximum(upper, lower + 1e-6)
    base = np.clip(base, lower, upper)
    best = None
    tried = 0
    for mult in starts if starts is not None else default_starts(len(keys)):
        if len(mult) != len(keys):
            raise ValueError("each start needs one multiplier per parameter")
        x0 = np.clip(base + np.log(np.asarray(mult, dtype=float)), lower + 1e-9, upper - 1e-9)
        try:
            res = least_squares(
                residuals,
                x0,
                method="trf",
                bounds=(lower, upper),
                max_nfev=max_nfev,
                xtol=1e-10,
                ftol=1e-10,
            )
        except (ValueError, FloatingPointError, OverflowError, ZeroDivisionError, UsageError):
            continue
        tried += 1
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise UsageError("calibrate: the fit failed from every starting point")
    fitted_profile = with_x(best.x)
    fitted = {k: float(math.exp(v)) for k, v in zip(keys, best.x, strict=True)}
    at_bound = {
        k: ("lower" if best.x[i] - lower[i] < math.log(1.01) else "upper")
        for i, k in enumerate(keys)
        if k in profile.bounds and min(best.x[i] - lower[i], upper[i] - best.x[i]) < math.log(1.01)
    }
    prov = dict(fitted_profile.provenance)
    what = source or "least-squares fit to " + ", ".join(sorted({c.label.split()[0] for c in train}))
    for k in keys:
        prov[k] = f"calibrated: {what}"
    object.__setattr__(fitted_profile, "provenance", prov)
    return FitResult(
        profile=fitted_profile,
        fitted=fitted,
        initial=initial,
        cells=[
            CellResult(r.label, r.cpus, r.measured, r.model, is_held(c), r.unit)
            for r, c in zip(evaluate(cells, fitted_profile), cells, strict=True)
        ],
        success=bool(best.success),
        message=str(best.message),
        holdout_cpus=tuple(holdout_cpus),
        starts=tried,
        at_bound=at_bound,
    )
