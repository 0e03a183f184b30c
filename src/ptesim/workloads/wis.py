"""will-it-scale "fork and exit" throughput from counts, a profile and the contention model.

Each of N workers owns a populated private anonymous buffer and loops fork / child exit / waitpid
(will-it-scale's fork testcase; see kernel.md §8.2).  Counts per iteration come from executing the
kernel model (:func:`ptesim.workloads.counts.wis_counts`, through the run cache of
:mod:`ptesim.cost.runs`); this module only prices them.  The first iteration (parent PTEs still
writable, so ``wrprotect`` runs) and the steady state are reported apart; the metric is iterations/s
summed over workers and its change against a baseline preset.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ptesim.cost.model import Change, Work, change, merge_phases
from ptesim.cost.profile import Profile
from ptesim.cost.runs import RunSpec, result, run_spec
from ptesim.errors import UsageError


@dataclass(frozen=True)
class WisWork:
    first: Work
    steady: Work


def wis_spec(
    arch: str,
    preset: str,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: Iterable[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    mapping: str = "pmd",
) -> RunSpec:
    return run_spec(
        "wis",
        arch,
        preset,
        folio=folio,
        mem=mem,
        granule=granule,
        cpu_features=cpu_features,
        overrides=overrides,
        mapping=mapping,
    )


def work_of(spec: RunSpec) -> WisWork:
    """The priced-ready work of a will-it-scale run (runs the model unless cached)."""
    res = result(spec)
    assert res.steady is not None
    return WisWork(first=Work(merge_phases(res.first)), steady=Work(merge_phases(res.steady)))


@dataclass(frozen=True)
class WisRow:
    cpus: int
    first: Change
    steady: Change


def wis_rows(variant: WisWork, baseline: WisWork, profile: Profile, cpus: Sequence[int]) -> list[WisRow]:
    """Throughput and change against ``baseline`` at each CPU count, first iteration and steady state."""
    if not cpus:
        raise UsageError("give at least one CPU count")
    return [
        WisRow(
            n,
            change(variant.first, baseline.first, profile, n),
            change(variant.steady, baseline.steady, profile, n),
        )
        for n in cpus
    ]
