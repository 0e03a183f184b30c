"""Single-process latency of fork, munmap, MADV_DONTNEED (whole and page by page) and a COW pass.

Counts come from :func:`ptesim.workloads.counts.latency_counts` (one process, a populated mapping of one
folio size); the time is CPU-local work plus the uncontended service of the broadcast invalidations
(one CPU: no queueing).  :func:`predict` is what host mode's ``--compare-model`` calls.
"""

from __future__ import annotations

from ptesim.cost.model import Work, iteration_time, merge_phases
from ptesim.cost.profile import load_profile
from ptesim.errors import UsageError
from ptesim.units import parse_size

OPS = ("fork", "munmap", "dontneed", "dontneed-pages", "cow")


def latency_ns(
    op: str,
    arch: str,
    preset: str,
    profile_name: str,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: frozenset[str] | None = None,
) -> float:
    if op not in OPS:
        raise UsageError(f"unknown operation {op!r} (expected one of {', '.join(OPS)})")
    try:
        from ptesim.workloads import counts
    except ImportError as exc:  # pragma: no cover
        raise UsageError(f"the kernel model's workload counts are not available ({exc})") from None
    profile = load_profile(profile_name)
    feats = profile.cpu_features if cpu_features is None else cpu_features
    by_phase = counts.latency_counts(
        op, arch, preset, folio=folio, mem=mem, granule=granule, cpu_features=feats
    )
    work = Work(merge_phases(by_phase), forks=1.0 if op == "fork" else 0.0, exits=0.0)
    return iteration_time(work, profile, 1).cycle_ns


#: Preset used for the host comparison, by architecture (the upstream form).
HOST_PRESET = {"x86": "v6.9", "arm64": "v6.9", "riscv": "v6.9"}


def predict(op: str, arch: str, profile: str, size: str, mem: int) -> float | None:
    """Predicted latency in milliseconds of ``op`` over ``mem`` bytes of ``size`` folios, or ``None``
    when the model cannot run this combination."""
    try:
        folio = parse_size(size, what="folio size")
        return latency_ns(op, arch, HOST_PRESET.get(arch, "v6.9"), profile, folio=folio, mem=mem) / 1e6
    except (UsageError, ImportError, NotImplementedError):
        return None
