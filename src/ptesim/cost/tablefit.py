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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.optimize import least_squares

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
) -> TableFit:
    """Fit ``names`` of ``profile`` to the cells of its machine that are not held out."""
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
    starts = [x_now, (lower + upper) / 2, lower + 0.25 * (upper - lower), lower + 0.75 * (upper - lower)]
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


@dataclass(frozen=True)
class _Fold:
    """One leave-one-table-out refit: what a worker process (or Dask worker) needs to run it."""

    profile: Profile
    names: tuple[str, ...]
    cells: tuple[PubCell, ...]
    works: dict[str, CellWork]
    holdout: tuple[str, ...]
    command: str
    table: str


def _run_fold(f: _Fold) -> FoldResult | None:
    """Refit without ``f.table`` and predict its cells; None when too few cells are left to fit."""
    try:
        fit = fit_tables(
            f.profile, f.names, f.cells, f.works, holdout=[*f.holdout, f.table], command=f.command
        )
    except UsageError:
        return None
    part = [c for c in f.cells if c.machine == f.profile.name and c.table == f.table]
    return FoldResult(f.table, fit, predict_cells(part, {f.profile.name: fit.profile}, f.works))


def folds(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[PubCell],
    works: dict[str, CellWork],
    *,
    holdout: Sequence[str] = (),
    command: str = "",
) -> list[_Fold]:
    """The leave-one-table-out refits of ``profile``'s machine (tables wholly held out are skipped)."""
    mine = [c for c in cells if c.machine == profile.name]
    mine_works = {c.id: works[c.id] for c in mine}
    out = []
    for table in dict.fromkeys(c.table for c in mine):
        if all(is_held(c, holdout) for c in mine if c.table == table):
            continue
        out.append(_Fold(profile, tuple(names), tuple(mine), mine_works, tuple(holdout), command, table))
    return out


def run_folds(tasks: Sequence[_Fold]) -> list[FoldResult]:
    """Every refit, on the local process pool or the Dask cluster (:mod:`ptesim.parallel`)."""
    from ptesim.parallel import map_cells

    return [r for r in map_cells(_run_fold, tasks, what="cross-validation fits") if r is not None]


def cross_validate(
    profile: Profile,
    names: Sequence[str],
    cells: Sequence[PubCell],
    works: dict[str, CellWork],
    *,
    holdout: Sequence[str] = (),
    command: str = "",
) -> list[FoldResult]:
    """Leave one table out at a time: refit without it, predict its cells (role ``held-out``).
    The refits are independent and run in parallel (:func:`run_folds`)."""
    return run_folds(folds(profile, names, cells, works, holdout=holdout, command=command))


def calibrate_tables(
    paths: list[str],
    *,
    profile: str | None = None,
    fit_names: list[str] | None = None,
    holdout: list[str] | None = None,
    cross: bool = False,
    command: str = "",
) -> dict[str, Any]:
    """Fit every machine of the tables (or only ``profile``'s): {machine: {"fit": TableFit,
    "folds": [FoldResult] (with ``cross``), "predictions": [CellPrediction] of all its cells}}."""
    cells = read_tables(paths)
    machines = list(dict.fromkeys(c.machine for c in cells))
    if profile is not None:
        prof0 = load_profile(profile)
        if prof0.name not in machines:
            raise UsageError(f"calibrate: no cell of the tables is for machine {prof0.name!r}")
        profiles = {prof0.name: prof0}
    else:
        profiles = {m: load_profile(m) for m in machines}
    cells = [c for c in cells if c.machine in profiles]
    prefetch([s for c in cells for s in cell_runs(c, profiles[c.machine]) if s is not None])
    works = {c.id: cell_work(c, profiles[c.machine]) for c in cells}
    out: dict[str, Any] = {}
    tasks: list[_Fold] = []
    for name, prof in profiles.items():
        names = fit_names or (list(prof.fit.parameters) if prof.fit else [])
        if not names:
            raise UsageError(f"calibrate: {name}: name the parameters to fit (--fit a,b,...)")
        f = fit_tables(prof, names, cells, works, holdout=holdout or [], command=command)
        mine = [c for c in cells if c.machine == name]
        out[name] = {"fit": f, "predictions": predict_cells(mine, {name: f.profile}, works)}
        if cross:
            out[name]["folds"] = []
            tasks += folds(prof, names, cells, works, holdout=holdout or [], command=command)
    # every machine's refits at once: they are independent (local pool, or --scheduler's cluster)
    for fr in run_folds(tasks):
        out[fr.fit.profile.name]["folds"].append(fr)
    return out


def cross_validate_tables(paths: Sequence[str]) -> list[FoldResult]:
    """``validate --cross-validate``: for each machine of the tables whose shipped profile was fitted,
    refit the same parameters once per table with that table left out, and predict it."""
    cells = read_tables(paths)
    profiles = {m: load_profile(m) for m in dict.fromkeys(c.machine for c in cells)}
    fitted = {m: p for m, p in profiles.items() if p.fit is not None and p.fit.parameters}
    cells = [c for c in cells if c.machine in fitted]
    prefetch([s for c in cells for s in cell_runs(c, fitted[c.machine]) if s is not None])
    works = {c.id: cell_work(c, fitted[c.machine]) for c in cells}
    tasks = [
        t
        for m, p in fitted.items()
        for t in folds(
            p, p.fit.parameters if p.fit else (), cells, works, holdout=p.fit.held_out if p.fit else ()
        )
    ]
    return run_folds(tasks)
