"""Between-table model discrepancy: the error the model makes on a table its fit never saw.

The interval of a table fit (:mod:`ptesim.cost.intervals`) holds the uncertainty of the fitted values
and the scatter of the fitted cells around the model.  A table the fit never saw can also be one the
model gets structurally wrong (a mechanism the other tables do not determine), and nothing in the
fitted cells measures that.  What does measure it is leave-one-table-out: each table predicted by a
fit of the same parameters on the machine's other tables.  Its log error ``r`` on a cell is the fit's
own error (variance ``v``, the fit interval of that prediction) plus a between-table discrepancy
``delta`` of variance ``tau^2``, the same for every cell of every table on the log scale of
:mod:`ptesim.cost.tables` (a random effect per table; ln-ratio units, so 0.1 is 10% of the time
whatever the size of the change).  ``tau^2`` is estimated by moments from those residuals::

    tau^2 = max(0, mean over tables j of mean over cells c of j of (r_c^2 - v_c))

(every table weighs the same: the table is the unit that is or is not seen).  A cell whose role is
``held-out`` or ``unseen`` then has the variance ``g^T C g + (s sigma)^2 + tau^2`` and the 90%
interval ``y +- t_{0.95, K-1} sd``: ``tau^2`` comes from only K tables, so the quantile is Student's
with K - 1 degrees of freedom (the prediction interval for a new study of a random-effects
meta-analysis, Higgins, Thompson & Spiegelhalter 2009, J. R. Stat. Soc. A 172:137, with the mean
discrepancy assumed 0 rather than estimated).  A ``fitted`` cell keeps the fit interval.

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
    """The moment estimate of ``tau`` from leave-one-table-out residuals, one weight per table."""
    groups: dict[str, list[Residual]] = {}
    for r in residuals:
        groups.setdefault(r.source, []).append(r)
    if not groups:
        return NONE
    per_table = [sum(r.error**2 - r.fit_var for r in g) / len(g) for g in groups.values()]
    tau2 = max(0.0, sum(per_table) / len(per_table))
    return Discrepancy(math.sqrt(tau2), max(len(groups) - 1, 1), tuple(groups), pooled)


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
