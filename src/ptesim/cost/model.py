"""Counts × profile → time per iteration, split into the parts the seed discussion is about.

The kernel model counts primitives; this module prices them with a :class:`~ptesim.cost.profile.Profile`
and puts N workers through the closed queueing network of :mod:`ptesim.cost.contention`:

* **pte** — PTE/PMD loads, stores and atomic RMWs.  On arm64 contpte the loads are amplified by the
  gathering in ``contpte_ptep_get`` (``arch/arm64/mm/contpte.c``): 16 extra loads per ``ptep_get`` of a
  CONT entry, and by the fold/unfold repaint of ``contpte_convert``.
* **atomics** — folio refcount, ``_mapcount``, ``_large_mapcount`` and ``PageAnonExclusive`` atomics
  (``include/linux/rmap.h : __folio_try_dup_anon_rmap``, ``folio_remove_rmap_ptes``).
* **tlbi** — the issuing CPU's cost of TLBIs, barriers, IPIs and SBI calls plus the service they receive
  at the shared resource when it is free and no other CPU is busy (``arch/arm64/include/asm/tlbflush.h :
  __flush_tlb_range``).
* **queueing** — what contention for the shared resource adds: the stretch of each completion wait by
  the other busy CPUs, and the wait behind their visits (:mod:`ptesim.cost.contention`).
* **other** — process fork/exit fixed costs, page-table and folio allocation, page copies, faults.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from ptesim.cost.contention import ClosedNetwork, Solution, solve
from ptesim.cost.profile import SHARED_PRIMITIVES, SYNC_PRIMITIVES, Profile
from ptesim.errors import UsageError
from ptesim.events import PRIMITIVES

CATEGORIES: tuple[str, ...] = ("pte", "atomics", "tlbi", "queueing", "other")

_PTE = ("pte_read", "pte_write", "pte_xchg", "pte_cmpxchg", "pte_bitop", "pmd_read", "pmd_write", "pmd_rmw")
_ATOMICS = ("folio_ref", "mapcount", "large_mapcount", "anon_exclusive")
_TLBI_PREFIX = ("tlbi_", "dsb_", "isb", "ipi", "sbi_")


def category_of(prim: str) -> str:
    """The decomposition category of a fine primitive."""
    if prim in _PTE:
        return "pte"
    if prim in _ATOMICS:
        return "atomics"
    if prim.startswith(_TLBI_PREFIX):
        return "tlbi"
    return "other"


def merge_phases(
    by_phase: Mapping[str, Mapping[str, int]], phases: Iterable[str] | None = None
) -> Counter[str]:
    """Sum a ``{phase: Counter}`` mapping into one Counter (optionally only some phases)."""
    out: Counter[str] = Counter()
    for phase, counts in by_phase.items():
        if phases is None or phase in phases:
            for prim, n in counts.items():
                if prim not in PRIMITIVES:
                    raise UsageError(f"unknown primitive {prim!r} in counts (phase {phase})")
                out[prim] += int(n)
    return out


@dataclass(frozen=True)
class Work:
    """What one worker does per iteration: counted primitives plus process-level events."""

    counts: Mapping[str, float]
    forks: float = 1.0
    exits: float = 1.0


def local_by_category(work: Work, profile: Profile) -> dict[str, float]:
    """CPU-local nanoseconds per iteration by category (no shared-resource service)."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for prim, n in work.counts.items():
        out[category_of(prim)] += n * profile.local_ns[prim]
    out["other"] += work.forks * profile.process_ns["fork"] + work.exits * profile.process_ns["exit"]
    return out


def shared_demand(work: Work, profile: Profile) -> tuple[float, float]:
    """(lone service demand ns, visits) per iteration at the shared invalidation resource."""
    svc = profile.shared.service_ns
    demand = sum(work.counts.get(p, 0) * svc[p] for p in SHARED_PRIMITIVES)
    visits = float(sum(work.counts.get(p, 0) for p in SYNC_PRIMITIVES))
    if demand > 0 and visits == 0:
        visits = 1.0  # broadcast ops without a completion wait: one visit carrying all of them
    return demand, visits


def network(work: Work, profile: Profile) -> ClosedNetwork:
    local = sum(local_by_category(work, profile).values())
    demand, visits = shared_demand(work, profile)
    sh = profile.shared
    return ClosedNetwork(
        think_ns=local,
        demand_ns=demand,
        visits=visits,
        scv=sh.scv,
        sync_per_active_cpu_ns=sh.sync_per_active_cpu_ns if visits else 0.0,
        active_cpu_cap=sh.active_cpu_cap,
    )


#: Solutions are pure functions of (network, CPUs); calibration asks for the same ones repeatedly.
_solve = lru_cache(maxsize=8192)(solve)


@dataclass(frozen=True)
class IterationTime:
    """One worker's iteration with ``cpus`` workers running, and its decomposition."""

    cpus: int
    by_category: dict[str, float]  # ns per iteration; sums to cycle_ns
    cycle_ns: float
    solution: Solution

    @property
    def iterations_per_s(self) -> float:
        """Summed over all workers, as will-it-scale reports it."""
        return self.solution.iterations_per_s

    @property
    def per_worker_iterations_per_s(self) -> float:
        return 1e9 / self.cycle_ns

    @property
    def stretch_ns(self) -> float:
        return self.solution.stretch_ns

    @property
    def waiting_ns(self) -> float:
        return self.solution.waiting_ns


def iteration_time(work: Work, profile: Profile, cpus: int) -> IterationTime:
    """Price one iteration and put ``cpus`` identical workers through the contention model.

    ``tlbi`` receives the lone service of the shared resource (what one CPU alone would wait for);
    ``queueing`` receives what contention adds: the sync stretch caused by the other busy CPUs and
    the wait behind their visits."""
    local = local_by_category(work, profile)
    sol = _solve(network(work, profile), cpus)
    by_cat = dict(local)
    by_cat["tlbi"] += sol.lone_service_ns
    by_cat["queueing"] = sol.response_ns - sol.lone_service_ns
    return IterationTime(cpus=cpus, by_category=by_cat, cycle_ns=sol.cycle_ns, solution=sol)


@dataclass(frozen=True)
class Change:
    """Throughput change of a variant against a baseline at one CPU count, with its decomposition."""

    cpus: int
    change_pct: float
    contributions_pp: dict[str, float]  # sums to change_pct
    variant: IterationTime
    baseline: IterationTime

    @property
    def stretch_pp(self) -> float:
        """The part of ``contributions_pp['queueing']`` due to the sync stretch (the rest is waiting)."""
        return -100.0 * (self.variant.stretch_ns - self.baseline.stretch_ns) / self.variant.cycle_ns


def change(variant: Work, baseline: Work, profile: Profile, cpus: int) -> Change:
    """Change in summed iterations/s of ``variant`` relative to ``baseline`` (negative = regression).

    With T the per-worker iteration time, the change is ``T_base / T_var - 1``; each category's share
    of it is ``-(T_var[c] - T_base[c]) / T_var`` so that the shares add up to the change."""
    v = iteration_time(variant, profile, cpus)
    b = iteration_time(baseline, profile, cpus)
    pct = 100.0 * (b.cycle_ns / v.cycle_ns - 1.0)
    contrib = {c: -100.0 * (v.by_category[c] - b.by_category[c]) / v.cycle_ns for c in CATEGORIES}
    return Change(cpus=cpus, change_pct=pct, contributions_pp=contrib, variant=v, baseline=b)
