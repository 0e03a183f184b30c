"""Joint calibration of a profile on published tables (``ptesim calibrate --tables``).

Every cell of every table of one machine, whatever its workload or metric, is compared on the log
scale of :mod:`ptesim.cost.tables`; the named parameters are fitted by bounded least squares
(:func:`scipy.optimize.least_squares`, trust region reflective) in the logarithm of each value,
inside the physical range the profile gives it (``[bounds]``): a fit cannot leave it, and a value
that ends on a bound is reported as a warning.  No cell or table gets a parameter of its own.

The fit leaves in the profile what :mod:`ptesim.cost.intervals` needs for a 90% interval on any
later prediction: the covariance of the log parameters (Laplace approximation, ``s^2 (J^T J)^+``)
and the residual standard deviation ``s``.

:func:`cross_validate` refits once per table with that table left out and predicts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from ptesim.cost.discrepancy import NONE, Discrepancy, Residual, choose
from ptesim.cost.intervals import cell_sigma
from ptesim.cost.profile import FitInfo, Profile, load_profile, resolve_parameter
from ptesim.cost.runs import prefetch
from ptesim.cost.tables import (
    CellWork,
    PubCell,
    cell_runs,
    cell_work,
    kind_of,
    matches,
    model_log,
    published_log,
    read_tables,
)
from ptesim.cost.validate import CellPrediction, predict_cells
from ptesim.errors import UsageError

#: A fitted value within this factor of a bound is "at the bound".
AT_BOUND = 1.01


@dataclass(frozen=True)
class TableFit:
    profile: Profile  # the fitted profile, with [fit] filled in
    names: tuple[str, ...]
    initial: dict[str, float]
    fitted: dict[str, float]
    at_bound: dict[str, str]  # name -> "lower" | "upper"
    train: tuple[str, ...]  # cell ids fitted
    held_out: tuple[str, ...]  # cell ids held out
    rms_log: float

    def warnings(self) -> list[str]:
        out = []
        for k, side in self.at_bound.items():
            b = self.profile.bounds[k]
            edge = b.lo if side == "lower" else b.hi
            out.append(
                f"warning: {self.profile.name}: {k} = {self.fitted[k]:.4g} ended on its {side} "
                f"physical bound {edge:.4g} ({b.source})"
            )
        return out


def bound_side(value: float, lo: float, hi: float) -> str:
    """ "lower" or "upper" when a fitted value ended on that bound of its range (within 1%), else "".

    A floor of 0 is searched from 1e-6 in log space: there, "on the bound" means below 0.1% of
    the ceiling, not within 1% of the search's stand-in for zero."""
    if value < max(lo, 1e-6) * AT_BOUND or (lo == 0 and value < 1e-3 * hi):
        return "lower"
    if value * AT_BOUND > hi:
        return "upper"
    return ""


def is_held(cell: PubCell, holdout: Sequence[str]) -> bool:
    return any(matches(cell, item) for item in holdout)


def fit_tables(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[PubCell],
    works: dict[str, CellWork],
    *,
    holdout: Sequence[str] = (),
    command: str = "",
    start_at_values: bool = True,
) -> TableFit:
    """Fit ``names`` of ``profile`` to the cells of its machine that are not held out.

    The search starts from the middle and the quartiles of each range and, with ``start_at_values``,
    from the profile's own values.  A leave-one-table-out refit does not start there: a shipped
    profile's values were fitted on the held-out table too, and in a direction the other tables do
    not determine (the seed's contention, without the seed) a start there would carry that table's
    values into its own prediction."""
    params = profile.parameters()
    keys = [resolve_parameter(n, params) for n in names]
    if not keys:
        raise UsageError("calibrate: name at least one parameter to fit (--fit a,b,...)")
    if len(set(keys)) != len(keys):
        raise UsageError("calibrate: a parameter is named twice")
    for k in keys:
        if k not in profile.bounds:
            raise UsageError(
                f"calibrate: {profile.name}: {k} has no physical range in [bounds]; it cannot be fitted"
            )
    mine = [c for c in cells if c.machine == profile.name]
    train = [c for c in mine if not is_held(c, holdout)]
    if len(train) < len(keys):
        raise UsageError(
            f"calibrate: {profile.name}: {len(keys)} parameters cannot be fitted to {len(train)} cells"
        )
    lower = np.array([math.log(max(profile.bounds[k].lo, 1e-6)) for k in keys])
    upper = np.array([math.log(max(profile.bounds[k].hi, 1e-6)) for k in keys])
    upper = np.maximum(upper, lower + 1e-9)
    pub = np.array([published_log(c) for c in train])
    # Each residual in units of its cell's expected scatter (cost/intervals.py cell_sigma), so that
    # a throughput table precise to 1% is not drowned by factor-of-two single-process changes.
    sigma = np.array([cell_sigma(kind_of(c), published_log(c)) for c in train])
    tw = [works[c.id] for c in train]

    def with_x(x: np.ndarray) -> Profile:
        return profile.with_values({k: float(math.exp(v)) for k, v in zip(keys, x, strict=True)})

    def residuals(x: np.ndarray) -> np.ndarray:
        p = with_x(x)
        out: np.ndarray = (np.array([model_log(w, p) for w in tw]) - pub) / sigma
        return out

    x_now = np.clip(np.array([math.log(max(params[k], 1e-6)) for k in keys]), lower, upper)
    starts = [(lower + upper) / 2, lower + 0.25 * (upper - lower), lower + 0.75 * (upper - lower)]
    if start_at_values:
        starts.insert(0, x_now)
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lower + 1e-9, upper - 1e-9)
        try:
            res = least_squares(
                residuals, x0, method="trf", bounds=(lower, upper), xtol=1e-10, ftol=1e-10, max_nfev=300
            )
        except (ValueError, FloatingPointError, OverflowError, ZeroDivisionError):
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise UsageError(f"calibrate: {profile.name}: the fit failed from every starting point")
    n, p = len(train), len(keys)
    rss = float(2 * best.cost)
    s2 = rss / (n - p) if n > p else rss / max(n, 1)
    at_bound: dict[str, str] = {}
    for i, k in enumerate(keys):
        side = bound_side(math.exp(best.x[i]), profile.bounds[k].lo, profile.bounds[k].hi)
        if side:
            at_bound[k] = side
    # Laplace approximation over the parameters inside their ranges; one held on its bound by the
    # constraint is treated as fixed there (its bound is a physical limit, not an estimate).
    free = np.array([k not in at_bound for k in keys])
    jac = np.asarray(best.jac)[:, free]
    cov = np.zeros((len(keys), len(keys)))
    if free.any():
        sub = s2 * np.linalg.pinv(jac.T @ jac, rcond=1e-10)
        # A direction the cells do not determine is no more uncertain than its physical range
        # allows: cap each standard deviation at that of a uniform prior over the range.
        prior_sd = (upper - lower)[free] / math.sqrt(12.0)
        sd = np.sqrt(np.maximum(np.diag(sub), 0.0))
        scale = np.where(sd > prior_sd, prior_sd / np.maximum(sd, 1e-300), 1.0)
        cov[np.ix_(free, free)] = sub * np.outer(scale, scale)
    fitted = {k: float(math.exp(v)) for k, v in zip(keys, best.x, strict=True)}
    out = with_x(best.x)
    tables = tuple(dict.fromkeys(c.table for c in train))
    held = tuple(item for item in holdout if any(matches(c, item) for c in mine))
    prov = dict(out.provenance)
    what = f"tables {', '.join(tables)}" + (f" (held out: {', '.join(held)})" if held else "")
    for k in keys:
        bound = profile.bounds[k]
        prov[k] = (
            f"calibrated: {what}; {command}. Physical range [{bound.lo:.4g}, {bound.hi:.4g}]: {bound.source}"
        )
    object.__setattr__(out, "provenance", prov)
    info = FitInfo(
        parameters=tuple(keys),
        covariance=tuple(tuple(float(x) for x in row) for row in cov),
        residual_sd=math.sqrt(s2),
        tables=tables,
        held_out=held,
        command=command,
    )
    out = replace(out, fit=info)
    return TableFit(
        profile=out,
        names=tuple(keys),
        initial={k: params[k] for k in keys},
        fitted=fitted,
        at_bound=at_bound,
        train=tuple(c.id for c in train),
        held_out=tuple(c.id for c in mine if is_held(c, holdout)),
        rms_log=float(np.sqrt(np.mean((np.asarray(best.fun) * sigma) ** 2))),
    )


@dataclass(frozen=True)
class FoldResult:
    table: str
    fit: TableFit
    predictions: list[CellPrediction]
    discrepancy: Discrepancy = NONE  # the between-table term in the held-out intervals


@dataclass(frozen=True)
class _Fold:
    """One refit without ``tables`` (one table: leave-one-table-out; two: the nested refit that gives
    table ``tables[1]``'s residuals for an interval of ``tables[0]`` without ever seeing it): what a
    worker process (or Dask worker) needs to run it."""

    profile: Profile
    names: tuple[str, ...]
    cells: tuple[PubCell, ...]
    works: dict[str, CellWork]
    holdout: tuple[str, ...]
    command: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class _FoldOut:
    tables: tuple[str, ...]
    fit: TableFit
    predictions: list[CellPrediction]  # of every cell of ``tables``, fit interval only


def _run_fold(f: _Fold) -> _FoldOut | None:
    """Refit without ``f.tables`` and predict their cells; None when too few cells are left to fit."""
    try:
        fit = fit_tables(
            f.profile,
            f.names,
            f.cells,
            f.works,
            holdout=[*f.holdout, *f.tables],
            command=f.command,
            start_at_values=False,
        )
    except UsageError:
        return None
    part = [c for c in f.cells if c.machine == f.profile.name and c.table in f.tables]
    return _FoldOut(f.tables, fit, predict_cells(part, {f.profile.name: fit.profile}, f.works))


def _tables(profile: Profile, cells: Sequence[PubCell], holdout: Sequence[str]) -> list[str]:
    """The machine's tables that are not wholly held out."""
    mine = [c for c in cells if c.machine == profile.name]
    return [
        t
        for t in dict.fromkeys(c.table for c in mine)
        if not all(is_held(c, holdout) for c in mine if c.table == t)
    ]


def folds(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[PubCell],
    works: dict[str, CellWork],
    *,
    holdout: Sequence[str] = (),
    command: str = "",
    nested: bool = True,
) -> list[_Fold]:
    """The leave-one-table-out refits of ``profile``'s machine (tables wholly held out are skipped),
    and with ``nested`` one refit without each pair of its tables."""
    mine = tuple(c for c in cells if c.machine == profile.name)
    mine_works = {c.id: works[c.id] for c in mine}
    tables = _tables(profile, cells, holdout)
    sets: list[tuple[str, ...]] = [(t,) for t in tables]
    if nested:
        sets += [(a, b) for i, a in enumerate(tables) for b in tables[i + 1 :]]
    return [_Fold(profile, tuple(names), mine, mine_works, tuple(holdout), command, ts) for ts in sets]


def _residuals(preds: Sequence[CellPrediction], table: str, holdout: Sequence[str]) -> list[Residual]:
    """The leave-one-table-out residuals of ``table``'s cells (cells the user held out excepted: they
    are predictions to judge, not calibration)."""
    return [
        Residual(p.cell.machine, table, p.cell.id, p.log_error, p.interval.fit_sd**2)
        for p in preds
        if p.cell.table == table and not is_held(p.cell, holdout)
    ]


@dataclass(frozen=True)
class CrossValidation:
    """Per machine: each table predicted by a fit that never saw it, its interval widened by a
    discrepancy estimated without it (``folds``), and the discrepancy that the machine's full fit
    stores for tables it has not seen (``shipped``, from every table's leave-one-table-out residuals)."""

    folds: dict[str, list[FoldResult]]
    shipped: dict[str, Discrepancy]
    residuals: dict[str, list[Residual]]  # per machine, of the plain leave-one-table-out fits


def cross_validate_machines(
    specs: Sequence[tuple[Profile, Sequence[str], Sequence[str]]],
    cells: Sequence[PubCell],
    works: dict[str, CellWork],
    *,
    command: str = "",
) -> CrossValidation:
    """Leave one table out at a time for every (profile, fitted names, holdout) of ``specs``, with
    honest intervals (:mod:`ptesim.cost.discrepancy`).

    Held-out table T of machine M gets the discrepancy estimated from the residuals of M's other tables
    j, each from the nested refit without both T and j, so that T's published values enter neither
    the fit that predicts T nor anything its interval is made of; when those residuals span fewer than
    MIN_TABLES tables, they are pooled with the other machines' leave-one-table-out residuals (fits
    of other machines never see M's tables).  The refits are independent and run in parallel
    (:func:`run_folds`)."""
    tasks = [
        t
        for prof, names, hold in specs
        for t in folds(prof, names, cells, works, holdout=hold, command=command)
    ]
    outs = [o for o in run_folds(tasks) if o is not None]
    holds = {prof.name: tuple(hold) for prof, _, hold in specs}
    single: dict[str, dict[str, _FoldOut]] = {}
    pair: dict[str, dict[frozenset[str], _FoldOut]] = {}
    for o in outs:
        m = o.fit.profile.name
        if len(o.tables) == 1:
            single.setdefault(m, {})[o.tables[0]] = o
        else:
            pair.setdefault(m, {})[frozenset(o.tables)] = o
    loto = {
        m: [r for t, o in by.items() for r in _residuals(o.predictions, t, holds[m])]
        for m, by in single.items()
    }

    def others(m: str) -> list[Residual]:
        return [r for k, rs in loto.items() if k != m for r in rs]

    shipped = {prof.name: choose(loto.get(prof.name, []), others(prof.name)) for prof, _, _ in specs}
    result: dict[str, list[FoldResult]] = {prof.name: [] for prof, _, _ in specs}
    for prof, _, hold in specs:
        m = prof.name
        for t, o in single.get(m, {}).items():
            own = [
                r
                for (key, po) in pair.get(m, {}).items()
                if t in key
                for j in key - {t}
                for r in _residuals(po.predictions, j, hold)
            ]
            disc = choose(own, others(m))
            fitted = with_discrepancy(o.fit.profile, disc)
            part = [p.cell for p in o.predictions]
            preds = predict_cells(part, {m: fitted}, works)
            result[m].append(FoldResult(t, replace(o.fit, profile=fitted), preds, disc))
    return CrossValidation(result, shipped, loto)


def with_discrepancy(profile: Profile, disc: Discrepancy) -> Profile:
    """``profile`` whose ``[fit]`` carries ``disc`` for its predictions of cells it did not see."""
    if profile.fit is None:
        return profile
    info = replace(profile.fit, discrepancy_sd=disc.sd, discrepancy_df=disc.df, discrepancy_from=disc.sources)
    return replace(profile, fit=info)


def run_folds(tasks: Sequence[_Fold]) -> list[_FoldOut | None]:
    """Every refit, on the local process pool or the Dask cluster (:mod:`ptesim.parallel`)."""
    from ptesim.parallel import map_cells

    return map_cells(_run_fold, tasks, what="cross-validation fits")


def cross_validate(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[PubCell],
    works: dict[str, CellWork],
    *,
    holdout: Sequence[str] = (),
    command: str = "",
) -> list[FoldResult]:
    """Leave one table out at a time: refit without it, predict its cells (role ``held-out``), with
    the between-table discrepancy of :func:`cross_validate_machines` (this machine alone)."""
    cv = cross_validate_machines([(profile, names, holdout)], cells, works, command=command)
    return cv.folds[profile.name]


def calibrate_tables(
    paths: list[str],
    *,
    profile: str | None = None,
    fit_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    holdout: list[str] | None = None,
    cross: bool = False,
    command: str = "",
    machines: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Fit every machine of the tables (or only ``profile``'s, or ``machines``): {machine: {"fit":
    TableFit, "folds": [FoldResult] and "discrepancy" (with ``cross``), "predictions":
    [CellPrediction] of all its cells}}.  ``fit_names`` is one list for every machine or a list per
    machine.  With ``cross`` the fitted profile stores the between-table discrepancy estimated from
    the leave-one-table-out residuals (:func:`cross_validate_machines`)."""
    cells = read_tables(paths)
    present = list(dict.fromkeys(c.machine for c in cells))
    if profile is not None:
        prof0 = load_profile(profile)
        if prof0.name not in present:
            raise UsageError(f"calibrate: no cell of the tables is for machine {prof0.name!r}")
        profiles = {prof0.name: prof0}
    else:
        profiles = {m: load_profile(m) for m in present if machines is None or m in machines}
    cells = [c for c in cells if c.machine in profiles]
    prefetch([s for c in cells for s in cell_runs(c, profiles[c.machine]) if s is not None])
    works = {c.id: cell_work(c, profiles[c.machine]) for c in cells}
    out: dict[str, Any] = {}
    specs: list[tuple[Profile, Sequence[str], Sequence[str]]] = []
    for name, prof in profiles.items():
        given_names = fit_names.get(name) if isinstance(fit_names, Mapping) else fit_names
        names = list(given_names or (list(prof.fit.parameters) if prof.fit else []))
        if not names:
            raise UsageError(f"calibrate: {name}: name the parameters to fit (--fit a,b,...)")
        f = fit_tables(prof, names, cells, works, holdout=holdout or [], command=command)
        mine = [c for c in cells if c.machine == name]
        out[name] = {"fit": f, "predictions": predict_cells(mine, {name: f.profile}, works)}
        specs.append((prof, names, holdout or []))
    if cross:
        # every machine's refits at once: they are independent (local pool, or --scheduler's cluster)
        cv = cross_validate_machines(specs, cells, works, command=command)
        for name, e in out.items():
            e["folds"] = cv.folds[name]
            e["discrepancy"] = cv.shipped[name]
            e["residuals"] = cv.residuals.get(name, [])
            e["fit"] = replace(e["fit"], profile=with_discrepancy(e["fit"].profile, cv.shipped[name]))
    return out


def cross_validate_tables(paths: Sequence[str]) -> list[FoldResult]:
    """``validate --cross-validate``: for each machine of the tables whose shipped profile was fitted,
    refit the same parameters once per table with that table left out, and predict it (with the
    between-table discrepancy estimated without it)."""
    cells = read_tables(paths)
    profiles = {m: load_profile(m) for m in dict.fromkeys(c.machine for c in cells)}
    fitted = {m: p for m, p in profiles.items() if p.fit is not None and p.fit.parameters}
    cells = [c for c in cells if c.machine in fitted]
    prefetch([s for c in cells for s in cell_runs(c, fitted[c.machine]) if s is not None])
    works = {c.id: cell_work(c, fitted[c.machine]) for c in cells}
    specs = [(p, p.fit.parameters, p.fit.held_out) for p in fitted.values() if p.fit is not None]
    cv = cross_validate_machines(specs, cells, works)
    return [fr for m in fitted for fr in cv.folds[m]]
