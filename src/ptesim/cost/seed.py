"""The seed table (Ryan Roberts, contpte v1 14/14 commit log, quoted in the reply on v2 01/14) and the
model's reproduction of it.  The published numbers are read from the CSV shipped as package data."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

from ptesim.cost.calibrate import Cell, FitResult, evaluate, fit
from ptesim.cost.model import Change, change
from ptesim.cost.profile import Profile
from ptesim.units import parse_size
from ptesim.workloads.wis import WisWork, wis_work

BASELINE = "contpte-v1-base"
VARIANTS = {"before_opt": "contpte-v1-before-opt", "after_opt": "contpte-v1-after-opt"}
HOLDOUT = (16, 24)


@dataclass(frozen=True)
class SeedRow:
    cpus: int
    published: dict[str, float]  # label -> %


def published() -> list[SeedRow]:
    text = (resources.files("ptesim.cost") / "data" / "seed_fork_scaling.csv").read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if line and not line.startswith("#"))
    rows = []
    for r in csv.DictReader(io.StringIO(body)):
        rows.append(
            SeedRow(
                int(r["cpus"]),
                {"before_opt": float(r["before_opt_pct"]), "after_opt": float(r["after_opt_pct"])},
            )
        )
    return rows


def seed_work(profile: Profile) -> dict[str, WisWork]:
    """Run the three seed presets through the will-it-scale workload (arm64, 64K folios, 128 MiB)."""
    folio, mem, feats = parse_size("64K"), parse_size("128M"), profile.cpu_features
    out = {"baseline": wis_work("arm64", BASELINE, folio=folio, mem=mem, cpu_features=feats)}
    for label, preset in VARIANTS.items():
        out[label] = wis_work("arm64", preset, folio=folio, mem=mem, cpu_features=feats)
    return out


def seed_cells(work: dict[str, WisWork]) -> list[Cell]:
    cells = []
    for row in published():
        for label in VARIANTS:
            cells.append(
                Cell(label, row.cpus, work[label].steady, work["baseline"].steady, row.published[label])
            )
    return cells


def calibrated_names(profile: Profile) -> list[str]:
    return sorted(k for k in profile.parameters() if profile.is_calibrated(k))


@dataclass(frozen=True)
class SeedReport:
    rows: list[dict[str, float]]
    changes: dict[tuple[str, int], Change]
    max_abs_error_pp: float
    heldout: FitResult | None
    parameters: dict[str, float]


def reproduce(profile: Profile, *, heldout: bool = True) -> SeedReport:
    work = seed_work(profile)
    cells = seed_cells(work)
    res = evaluate(cells, profile)
    changes = {(c.label, c.cpus): change(c.variant, c.baseline, profile, c.cpus) for c in cells}
    by = {(r.label, r.cpus): r for r in res}
    rows = []
    for row in published():
        rows.append(
            {
                "cpus": row.cpus,
                "published_before": row.published["before_opt"],
                "model_before": round(by[("before_opt", row.cpus)].model_pct, 2),
                "published_after": row.published["after_opt"],
                "model_after": round(by[("after_opt", row.cpus)].model_pct, 2),
            }
        )
    names = calibrated_names(profile)
    held = fit(profile, names, cells, holdout_cpus=HOLDOUT) if heldout and names else None
    return SeedReport(
        rows=rows,
        changes=changes,
        max_abs_error_pp=max(abs(r.error_pp) for r in res),
        heldout=held,
        parameters={k: profile.parameters()[k] for k in names},
    )
