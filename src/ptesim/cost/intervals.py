"""90% intervals for every prediction, propagated from a table fit (Laplace approximation).

A fit (:mod:`ptesim.cost.tablefit`) leaves in the profile the covariance of the natural logarithms
of its fitted parameters (``s^2 (J^T J)^-1`` at the optimum, J the Jacobian of the log-scale residuals)
and the standard deviation ``s`` of the fitted cells' weighted residuals (each residual divided by
its cell's expected scatter :func:`cell_sigma`).  A prediction ``y(theta)`` on the log scale of
:mod:`ptesim.cost.tables` then has variance ``g^T C g + (s sigma)^2`` (delta method, g the gradient
of y in the log parameters by central differences): the uncertainty of the fitted values plus the
scatter the model leaves on cells like the fitted ones.  The interval is ``y +- 1.645 sd``, mapped
back to the cell's unit, so it is asymmetric in percent.

That interval only knows the fitted cells.  A prediction for a cell the fit did not see (role
``held-out`` or ``unseen``: every ``whatif`` number, a ``wis`` or ``latency`` row that is not a fitted
published cell) also carries the between-table discrepancy the profile's ``[fit]`` stores
(:mod:`ptesim.cost.discrepancy`): variance ``tau^2`` added, and the quantile of Student's t with the
discrepancy's degrees of freedom instead of 1.645.  A ``fitted`` cell keeps the fit interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ptesim.cost.profile import Profile

Z90 = 1.6448536269514722
STEP = 0.02  # central-difference step in ln(parameter)


@dataclass(frozen=True)
class LogInterval:
    """A prediction on the log scale with its 90% interval; ``lo == hi == y`` without a fit."""

    y: float
    lo: float
    hi: float
    has_fit: bool
    fit_sd: float = 0.0  # the fit's part of the standard deviation (no between-table discrepancy)
    discrepancy: bool = False  # the between-table discrepancy widened the interval

    def pct(self) -> tuple[float, float, float]:
        """(value, low, high) as a percent change."""
        return tuple(100.0 * math.expm1(v) for v in (self.y, self.lo, self.hi))  # type: ignore[return-value]


#: Expected scatter (log scale) of a published number around the model, by kind, before the fit's
#: residual scale multiplies it: a will-it-scale throughput ratio of one harness run is precise to
#: ~1%; a single-process change carries the harness and the kernel mapping of the series, more so
#: the larger the change; an absolute time ~3%.
def cell_sigma(kind: str, y: float) -> float:
    """``kind`` is ``throughput`` (will-it-scale), ``change`` (single-process runtime) or ``time``."""
    if kind == "throughput":
        return 0.01
    if kind == "time":
        return 0.03
    return 0.03 + 0.1 * abs(y)


#: Roles whose cells the fit did not see: their intervals carry the between-table discrepancy.
UNSEEN_ROLES = ("held-out", "unseen")


def log_interval(
    fn: Callable[[Profile], float], profile: Profile, kind: str = "change", role: str = "unseen"
) -> LogInterval:
    """``fn(profile)`` on the log scale, with its 90% interval from ``profile.fit``; ``kind`` selects
    the scatter of :func:`cell_sigma` that the fit's residual scale multiplies; ``role`` (``fitted``,
    ``held-out`` or ``unseen``, the default: a prediction of something no table showed the fit) says
    whether the fit's between-table discrepancy is added."""
    y = fn(profile)
    fit = profile.fit
    if fit is None or not fit.parameters:
        return LogInterval(y, y, y, False)
    grad = []
    values = profile.parameters()
    for k in fit.parameters:
        v = values[k]
        if v <= 0:
            grad.append(0.0)
            continue
        up = fn(profile.with_values({k: v * math.exp(STEP)}))
        down = fn(profile.with_values({k: v * math.exp(-STEP)}))
        grad.append((up - down) / (2 * STEP))
    var = sum(grad[i] * fit.covariance[i][j] * grad[j] for i in range(len(grad)) for j in range(len(grad)))
    fit_var = max(var, 0.0) + (fit.residual_sd * cell_sigma(kind, y)) ** 2
    if role in UNSEEN_ROLES and fit.discrepancy_sd > 0:
        from ptesim.cost.discrepancy import quantile

        sd = math.sqrt(fit_var + fit.discrepancy_sd**2)
        q = quantile(fit.discrepancy_df)
        return LogInterval(y, y - q * sd, y + q * sd, True, math.sqrt(fit_var), True)
    sd = math.sqrt(fit_var)
    return LogInterval(y, y - Z90 * sd, y + Z90 * sd, True, sd)


def format_pct(iv: LogInterval) -> str:
    """``+12.3% (+8.1…+16.0)``, or ``+12.3% (no fit)`` for a profile without a table fit."""
    y, lo, hi = iv.pct()
    if not iv.has_fit:
        return f"{y:+.1f}% (no fit)"
    return f"{y:+.1f}% ({lo:+.1f}…{hi:+.1f})"


def format_seconds(iv: LogInterval) -> str:
    y, lo, hi = (math.exp(v) for v in (iv.y, iv.lo, iv.hi))
    if not iv.has_fit:
        return f"{y:.4g} s (no fit)"
    return f"{y:.4g} s ({lo:.4g}…{hi:.4g})"
