"""will-it-scale "fork and exit" throughput from counts, a profile and the contention model.

Each of N workers owns a populated private anonymous buffer and loops fork / child exit / waitpid
(``tests/fork2.c`` style testcase of will-it-scale; see kernel.md §8.2).  Counts per iteration come from
executing the kernel model (:func:`ptesim.workloads.counts.wis_counts`); this module only prices them.
The first iteration (parent PTEs still writable, so ``wrprotect`` runs) and the steady state are
reported apart; the metric is iterations/s summed over workers and its change against a baseline preset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ptesim.cost.model import Change, Work, change, merge_phases
from ptesim.cost.profile import Profile
from ptesim.errors import UsageError


def _counts_module() -> Any:
    try:
        from ptesim.workloads import counts
    except ImportError as exc:  # pragma: no cover - depends on the kernel model being installed
        raise UsageError(f"the kernel model's workload counts are not available ({exc})") from None
    return counts


@dataclass(frozen=True)
class WisWork:
    first: Work
    steady: Work


def wis_work(
    arch: str,
    preset: str,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: frozenset[str] = frozenset(),
    overrides: Mapping[str, object] | None = None,
) -> WisWork:
    """Run the model's will-it-scale iteration and return the counted work, first and steady."""
    wc = _counts_module().wis_counts(
        arch, preset, folio=folio, mem=mem, granule=granule, cpu_features=cpu_features, overrides=overrides
    )
    return WisWork(first=Work(merge_phases(wc.first)), steady=Work(merge_phases(wc.steady)))


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
