"""Running the kernel model for the cost model: each run cached, several in parallel.

Executing the model is the slow part of every cost command (a 128 MiB will-it-scale iteration on the
arm64 contpte presets runs ~10^6 counted primitives), while pricing the counts takes milliseconds.  A
:class:`RunSpec` names one run -- the workload (``wis`` or a latency operation) and everything that
selects the model machine -- and is the key of a per-process cache.  :func:`prefetch` runs the
missing ones in worker processes (``PTESIM_JOBS``, default: the CPUs this process may use), longest
first, so that a command's runs overlap on a multi-core machine.

The counts themselves come only from :mod:`ptesim.workloads.counts`; nothing here computes one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ptesim.errors import UsageError
from ptesim.workloads.scenarios import ModelSpec

PhaseCounts = dict[str, Counter[str]]


@dataclass(frozen=True)
class RunSpec:
    """One model run.  ``workload`` is ``"wis"`` or a latency operation (``fork``, ``munmap`` …)."""

    workload: str
    arch: str
    preset: str
    folio: int
    mem: int
    granule: int = 4096
    cpu_features: frozenset[str] | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    placement: str = "malloc"

    def model_spec(self) -> ModelSpec:
        """The model machine and mapping this run uses."""
        return ModelSpec(
            arch=self.arch,
            preset=self.preset,
            folio=self.folio,
            mem=self.mem,
            granule=self.granule,
            cpu_features=self.cpu_features,
            overrides=dict(self.overrides),
            placement=self.placement,
        )

    @property
    def weight(self) -> int:
        """Rough relative run time, to start the longest runs first."""
        w = self.mem // 4096
        if self.arch == "arm64" and "base" not in self.preset:
            w *= 4
        if self.workload == "wis":
            w *= 2
        return w


def run_spec(
    workload: str,
    arch: str,
    preset: str,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: Iterable[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    placement: str | None = None,
) -> RunSpec:
    """Build a :class:`RunSpec`; ``cpu_features=None`` keeps the preset's default features."""
    return RunSpec(
        workload,
        arch,
        preset,
        folio,
        mem,
        granule,
        None if cpu_features is None else frozenset(cpu_features),
        tuple(sorted((k, str(v)) for k, v in (overrides or {}).items())),
        placement or ("malloc" if workload == "wis" else "aligned"),
    )


@dataclass(frozen=True)
class RunResult:
    """Counts by phase: ``first`` and ``steady`` iterations for ``wis``, ``first`` only otherwise."""

    first: PhaseCounts
    steady: PhaseCounts | None


def execute(spec: RunSpec) -> RunResult:
    """Run the kernel model once (no cache)."""
    from ptesim.workloads import counts

    if spec.workload == "wis":
        wc = counts.run_wis(spec.model_spec())
        return RunResult(wc.first, wc.steady)
    return RunResult(counts.run_latency(spec.workload, spec.model_spec()), None)


_CACHE: dict[RunSpec, RunResult] = {}


def result(spec: RunSpec) -> RunResult:
    """The counts of ``spec``, from the cache or by running the model."""
    got = _CACHE.get(spec)
    if got is None:
        got = execute(spec)
        _CACHE[spec] = got
    return got


def jobs_default() -> int:
    """Worker processes for :func:`prefetch`: ``PTESIM_JOBS`` or the CPUs this process may use."""
    env = os.environ.get("PTESIM_JOBS", "")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UsageError(f"PTESIM_JOBS must be an integer (got {env!r})") from None
    return max(1, len(os.sched_getaffinity(0)))


def prefetch(specs: Sequence[RunSpec], jobs: int | None = None) -> None:
    """Run every spec not yet cached, in up to ``jobs`` worker processes, longest first."""
    todo = sorted((s for s in dict.fromkeys(specs) if s not in _CACHE), key=lambda s: -s.weight)
    if not todo:
        return
    n = min(jobs if jobs is not None else jobs_default(), len(todo))
    if n <= 1:
        for s in todo:
            _CACHE[s] = execute(s)
        return
    with ProcessPoolExecutor(max_workers=n) as pool:
        futures = [(s, pool.submit(execute, s)) for s in todo]
        for s, fut in futures:
            _CACHE[s] = fut.result()


def clear_cache() -> None:
    _CACHE.clear()
