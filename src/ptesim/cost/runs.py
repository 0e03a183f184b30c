"""Running the kernel model for the cost model: each run cached, several in parallel.

Runs are also kept on disk (``PTESIM_CACHE_DIR``, default the user cache directory; ``off``
disables it), keyed by the run and a digest of ptesim's source, so that changed code never reuses
old counts.

Executing the model is the slow part of every cost command (a 128 MiB will-it-scale iteration on the
arm64 contpte presets runs ~10^6 counted primitives), while pricing the counts takes milliseconds.  A
:class:`RunSpec` names one run -- the workload (``wis`` or a latency operation) and everything that
selects the model machine -- and is the key of a per-process cache.  :func:`prefetch` runs the
missing ones in worker processes (``PTESIM_JOBS``, default: the CPUs this process may use), longest
first, so that a command's runs overlap on a multi-core machine.

The counts themselves come only from :mod:`ptesim.workloads.counts`; nothing here computes one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

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
    mapping: str = "pmd"

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
            mapping=self.mapping,
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
    mapping: str = "pmd",
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
        mapping,
    )


@dataclass(frozen=True)
class RunResult:
    """Counts by phase: ``first`` and ``steady`` iterations for ``wis``, ``first`` only otherwise."""

    first: PhaseCounts
    steady: PhaseCounts | None


#: Single-process operations whose counts may be taken on a smaller mapping and extrapolated, when
#: they are exactly affine in the mapping size.  Each PTE table is copied (fork) or each call zaps one
#: page (dontneed-pages) with no state carried across tables.  Whole-range zaps (munmap, dontneed)
#: are not among them: mmu_gather flushes when its batch pages fill (MAX_GATHER_BATCH_COUNT), a
#: step every ~9700 slots that three small sizes can look affine across while 1 GiB is not (checked:
#: a 1 GiB munmap of 4K folios on arm64 v6.9 has 27 ASID flushes where 32/64/96 MiB extrapolate 32).
SCALABLE = ("fork", "dontneed-pages")
#: Above this size a scalable run is counted at SCALE_STEP, 2x and 3x and extrapolated.
SCALE_ABOVE = 128 << 20
SCALE_STEP = 32 << 20


def execute(spec: RunSpec) -> RunResult:
    """Run the kernel model once (no cache).

    A :data:`SCALABLE` operation over more than :data:`SCALE_ABOVE` is counted at three smaller
    sizes m, 2m, 3m; if every count (per phase and primitive) is exactly affine over them, the counts
    at the real size are that affine function (exact integers); otherwise the model runs at the
    real size."""
    from ptesim.workloads import counts

    if spec.workload == "wis":
        wc = counts.run_wis(spec.model_spec())
        return RunResult(wc.first, wc.steady)
    full = spec.model_spec()  # checks the real size (ModelSpec refuses a mapping beyond MODEL_MEM_MAX)
    step = SCALE_STEP
    if (
        spec.workload in SCALABLE
        and spec.mem > SCALE_ABOVE
        and spec.mem % step == 0
        and step % max(spec.folio, 2 << 20) == 0
    ):
        small = [
            counts.run_latency(spec.workload, dataclasses.replace(spec, mem=k * step).model_spec())
            for k in (1, 2, 3)
        ]
        scaled = _affine(small, spec.mem // step)
        if scaled is not None:
            return RunResult(scaled, None)
    return RunResult(counts.run_latency(spec.workload, full), None)


def _affine(runs: list[PhaseCounts], k: int) -> PhaseCounts | None:
    """Counts at k steps from counts at 1, 2 and 3 steps, if they are exactly affine; else None."""
    keys = {(ph, prim) for r in runs for ph, c in r.items() for prim in c}
    out: PhaseCounts = {}
    for ph, prim in keys:
        a, b, c = (r.get(ph, Counter())[prim] for r in runs)
        if c - b != b - a:
            return None
        v = a + (b - a) * (k - 1)
        if v:
            out.setdefault(ph, Counter())[prim] = v
    return out


_CACHE: dict[RunSpec, RunResult] = {}


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """A digest of ptesim's whole source: counts cached on disk are only reused by the same code.

    Every module is included, not a list of the packages that count: the engines (the fast
    engine's replays in ``fast/`` as much as the kernel model), the workloads and anything they
    come to import all decide what a run counts, and a package left off the list would let a fixed
    model keep serving counts cached before the fix.
    """
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _disk_path(spec: RunSpec) -> object | None:
    """Where a run's counts are kept between processes: ``PTESIM_CACHE_DIR`` (``off`` disables it)."""
    import hashlib
    from pathlib import Path

    where = os.environ.get("PTESIM_CACHE_DIR", "")
    if where == "off":
        return None
    if not where:
        from platformdirs import user_cache_dir

        where = user_cache_dir("ptesim")
    key = hashlib.sha256(repr(spec).encode()).hexdigest()[:24]
    return Path(where) / _code_hash() / f"{key}.json"


def _load(spec: RunSpec) -> RunResult | None:
    import json
    from pathlib import Path

    path = _disk_path(spec)
    if not isinstance(path, Path) or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("spec") != repr(spec):
            return None
        steady = data["steady"]
        return RunResult(
            {p: Counter(c) for p, c in data["first"].items()},
            None if steady is None else {p: Counter(c) for p, c in steady.items()},
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(spec: RunSpec, res: RunResult) -> None:
    import json
    from pathlib import Path

    path = _disk_path(spec)
    if not isinstance(path, Path):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"spec": repr(spec), "first": res.first, "steady": res.steady}), encoding="utf-8"
        )
        tmp.replace(path)
    except OSError:
        pass


def result(spec: RunSpec) -> RunResult:
    """The counts of ``spec``, from the cache (in memory, then on disk) or by running the model."""
    got = _CACHE.get(spec)
    if got is None:
        got = _load(spec)
        if got is None:
            got = execute(spec)
            _store(spec, got)
        _CACHE[spec] = got
    return got


def jobs_default() -> int:
    """Worker processes for :func:`prefetch` (:func:`ptesim.parallel.jobs_default`)."""
    from ptesim.parallel import jobs_default as default

    return default()


def prefetch(specs: Sequence[RunSpec], jobs: int | None = None) -> None:
    """Run every spec not yet cached, in up to ``jobs`` worker processes, longest first."""
    for s in dict.fromkeys(specs):
        if s not in _CACHE:
            got = _load(s)
            if got is not None:
                _CACHE[s] = got
    todo = sorted((s for s in dict.fromkeys(specs) if s not in _CACHE), key=lambda s: -s.weight)
    if not todo:
        return
    from ptesim.parallel import map_cells

    for s, res in zip(todo, map_cells(execute, todo, what="model runs", jobs=jobs), strict=True):
        _CACHE[s] = res
        _store(s, res)


def clear_cache() -> None:
    _CACHE.clear()
