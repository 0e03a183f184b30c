"""Between-table model discrepancy: the error the model makes on a table its fit never saw.

The interval of a table fit (:mod:`ptesim.cost.intervals`) holds the uncertainty of the fitted values
and the scatter of the fitted cells around the model.  A table the fit never saw can also be one the
model gets structurally wrong (a mechanism the other tables do not determine), and nothing in the
fitted cells measures that.  What does measure it is leave-one-table-out: each table predicted by a
fit of the same parameters on the machine's other tables.  Its log error ``r`` on a cell is the fit's
own error (variance ``v``, the fit interval of that prediction) plus a between-table discrepancy
``delta`` of variance ``tau^2``, the same for every cell of every table on the log scale of
:mod:`ptesim.cost.tables` (ln-ratio units, so 0.1 is 10% of the time whatever the size of the
change): ``r_c ~ N(0, v_c + tau^2)``.  ``tau^2 >= 0`` is its maximum-likelihood estimate, every table
weighing the same (the table is the unit that is or is not seen; its cells share the weight)::

    tau^2 = argmax  sum over tables j of (1/n_j) sum over cells c of j of log N(r_c; 0, v_c + tau^2)

The fit variances ``v`` span orders of magnitude (0.002 to 0.7 on altra), so likelihood rather
than moments: the moment estimate ``mean(r^2 - v)`` lets a table whose cells the fit merely could
not pin down (large ``v``, small ``r``) subtract from the discrepancy that another table shows.

A cell whose role is ``held-out`` or ``unseen`` then has the variance
``g^T C g + (s sigma)^2 + tau^2`` and the 90% interval ``y +- t_{0.95, K-1} sd``: ``tau^2`` comes
from only K tables, so the quantile is Student's with K - 1 degrees of freedom (the prediction
interval for a new study of a random-effects meta-analysis, Higgins, Thompson & Spiegelhalter 2009,
J. R. Stat. Soc. A 172:137, with the mean discrepancy assumed 0 rather than estimated).  A
``fitted`` cell keeps the fit interval.

A machine's own residuals are used when they come from at least :data:`MIN_TABLES` tables; with
fewer (apple-m2-vm has one foldable table, xeon-4210r one table), every machine's residuals are
pooled: in ln-ratio terms an error of the model on an unseen table is comparable across machines,
while one or two tables say next to nothing about a variance (t with 1 df is 6.3 sd wide).

Which residuals may estimate ``tau`` for a prediction is what keeps it honest: never the residuals of
the table being predicted, and never residuals of fits that saw it (see :func:`choose`'s callers in
:mod:`ptesim.cost.tablefit`: the leave-one-table-out report uses, for held-out table T, the residuals
of each other table j from the fit without both T and j).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: A machine needs leave-one-table-out residuals of this many tables for an estimate of its own.
MIN_TABLES = 3


@dataclass(frozen=True)
class Residual:
    """A cell of ``table`` predicted by a fit that did not see ``table``."""

    machine: str
    table: str
    cell: str
    error: float  # predicted - published, log scale
    fit_var: float  # the variance the fit's own interval gives that prediction

    @property
    def source(self) -> str:
        return f"{self.machine}/{self.table}"


@dataclass(frozen=True)
class Discrepancy:
    """``sd`` (log scale) with ``df`` degrees of freedom, from the residuals of ``sources``."""

    sd: float
    df: int
    sources: tuple[str, ...]
    pooled: bool = False


NONE = Discrepancy(0.0, 0, ())


def estimate(residuals: Iterable[Residual], *, pooled: bool = False) -> Discrepancy:
    """The maximum-likelihood estimate of ``tau`` from leave-one-table-out residuals, each table one
    weight: ``tau^2`` maximises ``sum_j (1/n_j) sum_{c in j} log N(r_c; 0, v_c + tau^2)``."""
    groups: dict[str, list[Residual]] = {}
    for r in residuals:
        groups.setdefault(r.source, []).append(r)
    if not groups:
        return NONE
    cells = [(r.error**2, max(r.fit_var, 1e-12), 1.0 / len(g)) for g in groups.values() for r in g]

    def nll(tau2: float) -> float:
        return sum(w * (math.log(v + tau2) + r2 / (v + tau2)) for r2, v, w in cells)

    # A log grid over every scale the residuals can support, then a golden-section refinement
    # between the neighbours of the best grid point (the likelihood need not be unimodal).
    top = max(r2 for r2, _, _ in cells) * 4.0 + 1e-10
    grid = [0.0] + [top * 10.0 ** (-10.0 * i / 400) for i in range(400, -1, -1)]
    values = [nll(t) for t in grid]
    i = min(range(len(grid)), key=values.__getitem__)
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    phi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    for _ in range(80):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if nll(c) < nll(d):
            b = d
        else:
            a = c
    best = min((grid[i], (a + b) / 2.0), key=nll)
    return Discrepancy(math.sqrt(best), max(len(groups) - 1, 1), tuple(groups), pooled)


def tables_of(residuals: Iterable[Residual]) -> set[str]:
    return {r.source for r in residuals}


def choose(own: Sequence[Residual], others: Sequence[Residual]) -> Discrepancy:
    """The machine's own estimate when its residuals span :data:`MIN_TABLES` tables, else the estimate
    pooled with ``others`` (other machines' residuals).  The caller guarantees that no residual comes
    from the table to be predicted or from a fit that saw it."""
    if len(tables_of(own)) >= MIN_TABLES:
        return estimate(own)
    return estimate([*own, *others], pooled=True)


@functools.lru_cache(maxsize=64)
def quantile(df: int) -> float:
    """The 95th percentile of Student's t with ``df`` degrees of freedom (a two-sided 90% interval)."""
    from scipy.stats import t

    return float(t.ppf(0.95, df))
