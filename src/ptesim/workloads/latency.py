"""Single-process latency of fork, munmap, MADV_DONTNEED (whole and page by page), a COW pass, an
mprotect toggle (read-only, then read-write) and an mremap move (see ``docs/cost.md``).

Counts come from :func:`ptesim.workloads.counts.latency_counts` (one process on an otherwise idle
machine, a populated mapping of one folio size), through the run cache of :mod:`ptesim.cost.runs`.
The time is the CPU-local work plus the lone service of the broadcast invalidations (one CPU busy: no
stretch, no queueing).  It is the cost of the operation *on the mapping*: the process's fixed fork
cost is left out, exactly as host mode's ``net_ms`` takes the measuring process's own fork off.
:func:`predict` is what host mode's ``--compare-model`` calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ptesim.cost.model import IterationTime, Work, iteration_time, merge_phases
from ptesim.cost.profile import Profile, load_profile
from ptesim.cost.runs import RunSpec, result, run_spec
from ptesim.errors import UsageError
from ptesim.units import parse_size

OPS = (
    "fork",
    "munmap",
    "dontneed",
    "dontneed-pages",
    "cow",
    "mprotect",
    "mremap",
    "munmap-threads",
    "mprotect-threads",
)


def latency_spec(
    op: str,
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
    if op not in OPS:
        raise UsageError(f"unknown operation {op!r} (expected one of {', '.join(OPS)})")
    return run_spec(
        op,
        arch,
        preset,
        folio=folio,
        mem=mem,
        granule=granule,
        cpu_features=cpu_features,
        overrides=overrides,
        mapping=mapping,
    )


def latency_work(spec: RunSpec) -> Work:
    """The counted work of one latency run (runs the model unless cached)."""
    return Work(merge_phases(result(spec).first), forks=0.0, exits=0.0)


def latency_time(spec: RunSpec, profile: Profile) -> IterationTime:
    """The priced operation, with its decomposition, one CPU busy."""
    if profile.arch != spec.arch:
        raise UsageError(f"profile {profile.name} is for {profile.arch}, not {spec.arch}")
    return iteration_time(latency_work(spec), profile, 1)


def latency_ns(
    op: str,
    arch: str,
    preset: str,
    profile: str | Profile,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: Iterable[str] | None = None,
) -> float:
    """Latency in ns of ``op`` over ``mem`` bytes of ``folio``-sized folios."""
    prof = load_profile(profile) if isinstance(profile, str) else profile
    spec = latency_spec(op, arch, preset, folio=folio, mem=mem, granule=granule, cpu_features=cpu_features)
    return latency_time(spec, prof).cycle_ns


def host_preset(profile: Profile) -> str:
    """The kernel preset matching the machine a profile describes (``profile.preset``)."""
    return profile.preset or "v6.9"


def predict(op: str, arch: str, profile: str, size: str, mem: int) -> float | None:
    """Predicted latency in milliseconds of ``op`` over ``mem`` bytes of ``size`` folios (the kernel's
    sysfs spelling: ``4K``, ``64K``, ``2M``), with the preset the profile names, or ``None`` when the
    model cannot run this combination (an arch the profile is not for, a size the arch lacks)."""
    try:
        prof = load_profile(profile)
        if prof.arch != arch:
            return None
        folio = parse_size(size, what="folio size")
        return latency_ns(op, arch, host_preset(prof), prof, folio=folio, mem=mem) / 1e6
    except (UsageError, NotImplementedError):
        return None
