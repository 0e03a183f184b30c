"""Per-iteration primitive counts of the workloads the cost model prices.

These functions only *run the model* and return what the event sink recorded, by phase and fine
primitive; they know nothing of time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from ptesim.errors import UsageError
from ptesim.workloads.scenarios import SCENARIOS, ModelSpec, map_and_populate

PhaseCounts = dict[str, Counter[str]]


@dataclass(frozen=True)
class WisCounts:
    """One worker's will-it-scale fork-and-exit iteration: fork of the populated buffer, then the
    child's exit.  ``first`` is the first iteration (parent PTEs writable), ``steady`` a later one."""

    first: PhaseCounts
    steady: PhaseCounts
    blocks: float


def wis_counts(
    arch: str,
    preset: str,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: frozenset[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    placement: str = "malloc",
) -> WisCounts:
    """Run two iterations of fork / child exit on the model and return their counts."""
    return run_wis(_model_spec(arch, preset, folio, mem, granule, cpu_features, overrides, placement))


def run_wis(spec: ModelSpec) -> WisCounts:
    """:func:`wis_counts` for a machine already described by a :class:`ModelSpec`."""
    k = spec.build()
    t, _ = map_and_populate(k, spec, via="fault")
    out: list[PhaseCounts] = []
    for _ in range(2):
        k.sink.reset()
        child = t.fork(1)
        child.exit()
        out.append({p: Counter(c) for p, c in k.sink.by_phase().items()})
    return WisCounts(first=out[0], steady=out[1], blocks=spec.blocks)


LATENCY_OPS = {
    "fork": "fork-first",
    "munmap": "munmap",
    "dontneed": "dontneed",
    "dontneed-pages": "dontneed-pages",
    "cow": "cow-write",
    "mprotect": "mprotect",
    "mremap": "mremap",
    "munmap-threads": "munmap-threads",
    "mprotect-threads": "mprotect-threads",
}


def latency_counts(
    op: str,
    arch: str,
    preset: str,
    *,
    folio: int,
    mem: int,
    granule: int = 4096,
    cpu_features: frozenset[str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> PhaseCounts:
    """Counts of one single-process operation over a populated mapping, by phase."""
    return run_latency(op, _model_spec(arch, preset, folio, mem, granule, cpu_features, overrides, "aligned"))


def run_latency(op: str, spec: ModelSpec) -> PhaseCounts:
    """:func:`latency_counts` for a machine already described by a :class:`ModelSpec`."""
    if op not in LATENCY_OPS:
        raise UsageError(f"unknown latency operation {op!r}; known: {', '.join(LATENCY_OPS)}")
    k = spec.build(LATENCY_OPS[op])
    SCENARIOS[LATENCY_OPS[op]][0](k, spec)
    return {p: Counter(c) for p, c in k.sink.by_phase().items()}


def _model_spec(
    arch: str,
    preset: str,
    folio: int,
    mem: int,
    granule: int,
    cpu_features: frozenset[str] | None,
    overrides: Mapping[str, object] | None,
    placement: str,
) -> ModelSpec:
    return ModelSpec(
        arch=arch,
        preset=preset,
        folio=folio,
        mem=mem,
        granule=granule,
        cpu_features=cpu_features,
        overrides={k: str(v) for k, v in (overrides or {}).items()},
        placement=placement,
    )
