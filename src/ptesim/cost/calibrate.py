"""Least-squares calibration of chosen profile parameters to a measured table.

A *cell* is one measured number: the throughput change (in %) of a variant against a baseline at one
CPU count, as in the seed table.  :func:`fit` adjusts the named parameters (in log space, so they stay
positive) with :func:`scipy.optimize.least_squares` to minimise the per-cell error in percentage
points, and reports the fitted values, the residual of every cell, and the error on held-out cells
that took no part in the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from ptesim.cost.model import Work, change
from ptesim.cost.profile import Profile, resolve_parameter
from ptesim.errors import UsageError


@dataclass(frozen=True)
class Cell:
    label: str  # e.g. "before_opt"
    cpus: int
    variant: Work
    baseline: Work
    measured_pct: float


@dataclass(frozen=True)
class CellResult:
    label: str
    cpus: int
    measured_pct: float
    model_pct: float
    heldout: bool

    @property
    def error_pp(self) -> float:
        return self.model_pct - self.measured_pct


@dataclass(frozen=True)
class FitResult:
    profile: Profile
    fitted: dict[str, float]  # dotted name -> value
    initial: dict[str, float]
    cells: list[CellResult]
    success: bool
    message: str
    holdout_cpus: tuple[int, ...] = field(default_factory=tuple)

    @property
    def max_abs_error_pp(self) -> float:
        return max((abs(c.error_pp) for c in self.cells), default=0.0)

    @property
    def fitted_max_abs_error_pp(self) -> float:
        return max((abs(c.error_pp) for c in self.cells if not c.heldout), default=0.0)

    @property
    def heldout_max_abs_error_pp(self) -> float:
        return max((abs(c.error_pp) for c in self.cells if c.heldout), default=0.0)


def predict(cells: Sequence[Cell], profile: Profile) -> list[float]:
    """The model's change (%) for every cell."""
    return [change(c.variant, c.baseline, profile, c.cpus).change_pct for c in cells]


def evaluate(cells: Sequence[Cell], profile: Profile, holdout_cpus: Sequence[int] = ()) -> list[CellResult]:
    preds = predict(cells, profile)
    return [
        CellResult(c.label, c.cpus, c.measured_pct, p, c.cpus in holdout_cpus)
        for c, p in zip(cells, preds, strict=True)
    ]


def fit(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[Cell],
    *,
    holdout_cpus: Sequence[int] = (),
    max_nfev: int = 400,
) -> FitResult:
    """Fit the parameters ``names`` of ``profile`` to the non-held-out ``cells``."""
    if not names:
        raise UsageError("calibrate: name at least one parameter to fit (--fit a,b,...)")
    params = profile.parameters()
    keys = [resolve_parameter(n, params) for n in names]
    if len(set(keys)) != len(keys):
        raise UsageError("calibrate: a parameter is named twice")
    train = [c for c in cells if c.cpus not in holdout_cpus]
    if len(train) < len(keys):
        raise UsageError(
            f"calibrate: {len(keys)} parameters cannot be fitted to {len(train)} cells; hold out fewer CPUs"
        )
    initial = {k: params[k] for k in keys}
    x0 = np.array([math.log(max(params[k], 1e-6)) for k in keys])

    def with_x(x: np.ndarray) -> Profile:
        return profile.with_values({k: float(math.exp(v)) for k, v in zip(keys, x, strict=True)})

    def residuals(x: np.ndarray) -> np.ndarray:
        p = with_x(x)
        return np.array([m - c.measured_pct for m, c in zip(predict(train, p), train, strict=True)])

    res = least_squares(residuals, x0, method="trf", x_scale=1.0, max_nfev=max_nfev, xtol=1e-12, ftol=1e-12)
    fitted_profile = with_x(res.x)
    fitted = {k: float(math.exp(v)) for k, v in zip(keys, res.x, strict=True)}
    prov = dict(fitted_profile.provenance)
    for k in keys:
        prov[k] = "calibrated: least-squares fit to " + ", ".join(sorted({c.label for c in train}))
    object.__setattr__(fitted_profile, "provenance", prov)
    return FitResult(
        profile=fitted_profile,
        fitted=fitted,
        initial=initial,
        cells=evaluate(cells, fitted_profile, holdout_cpus),
        success=bool(res.success),
        message=str(res.message),
        holdout_cpus=tuple(holdout_cpus),
    )
