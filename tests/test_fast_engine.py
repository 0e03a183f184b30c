"""Differential tests: the fast engine and the reference engine give the same counts (per primitive,
phase and call chain) and the same final machine (every PTE, folio, VMA, counter, allocator and
TLB), for every scenario x arch x preset and for random fuzz programs."""

from __future__ import annotations

import random

import pytest

from ptesim.arch import ARCHES
from ptesim.fast.compare import machine_counts, machine_state
from ptesim.fast.memo import FastEngine
from ptesim.fuzz.program import OPS, REGIONS, Runner, Step, Target
from ptesim.kernel.config import PRESETS
from ptesim.workloads.counts import run_wis
from ptesim.workloads.scenarios import SCENARIOS, ModelSpec, run_scenario

KiB = 1024
MiB = 1 << 20


def both(spec: ModelSpec, scenario: str) -> tuple[object, object]:
    fast = run_scenario(spec, scenario)
    ref = run_scenario(ModelSpec(**{**spec.__dict__, "engine": "reference"}), scenario)
    assert ref.kernel.fast is None
    assert machine_counts(fast.kernel) == machine_counts(ref.kernel), "counts differ"
    assert machine_state(fast.kernel) == machine_state(ref.kernel), "final state differs"
    return fast.kernel.fast, ref


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("arch", ARCHES)
def test_matrix_one_table(arch: str, preset: str, scenario: str) -> None:
    """Every scenario x arch x preset, on one PTE table of 64K folios."""
    eng, _ = both(ModelSpec(arch=arch, preset=preset, folio=64 * KiB, mem=256 * KiB), scenario)
    assert eng is not None


#: presets whose fork/exit paths differ most (those that exist in this tree)
MULTI_PRESETS = [
    p
    for p in (
        "v6.8",
        "v6.9",
        "contpte-v1-before-opt",
        "contpte-v1-after-opt",
        "v6.17",
        "v6.19",
        "v6.9-svnapot",
    )
    if p in PRESETS
]
MULTI = [(arch, preset) for arch in ARCHES for preset in MULTI_PRESETS]


@pytest.mark.parametrize("scenario", ["fork-first", "fork-steady", "exit-child"])
@pytest.mark.parametrize("arch,preset", MULTI)
def test_matrix_multi_table(arch: str, preset: str, scenario: str) -> None:
    """Three PTE tables, populated by user stores (so the TLBs hold entries and some tables must
    run the reference code)."""
    eng, _ = both(ModelSpec(arch=arch, preset=preset, folio=64 * KiB, mem=6 * MiB), scenario)
    assert isinstance(eng, FastEngine)


@pytest.mark.parametrize("scenario", ["fork-first", "fork-steady", "exit-child", "munmap", "dontneed"])
@pytest.mark.parametrize("arch", ARCHES)
def test_tables_are_replayed(arch: str, scenario: str) -> None:
    """Nine tables populated by faults (MAP_POPULATE, empty TLBs): the later tables are replayed."""
    preset = "v6.9-svnapot" if arch == "riscv" else "v6.9"
    eng, _ = both(ModelSpec(arch=arch, preset=preset, folio=64 * KiB, mem=18 * MiB), scenario)
    assert isinstance(eng, FastEngine)
    assert eng.stats["replayed"] + eng.stats["linear"] >= 5, eng.stats


@pytest.mark.parametrize("folio", [4 * KiB, 2 * MiB])
@pytest.mark.parametrize("arch", ARCHES)
def test_fork_steady_other_folios(arch: str, folio: int) -> None:
    eng, _ = both(ModelSpec(arch=arch, preset="v6.9", folio=folio, mem=8 * MiB), "fork-steady")
    assert isinstance(eng, FastEngine)
    if folio == 4 * KiB:
        assert eng.stats["replayed"] + eng.stats["linear"] > 0, eng.stats


def test_wis_counts_equal_at_32m() -> None:
    """The will-it-scale iterations the cost model prices (malloc placement, populated by faults,
    zap batches crossing the gather's capacity)."""
    spec = ModelSpec(
        arch="arm64", preset="contpte-v1-before-opt", folio=64 * KiB, mem=32 * MiB, placement="malloc"
    )
    fast = run_wis(spec)
    ref = run_wis(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref


def test_x86_4k_gather_flushes_equal() -> None:
    """4K folios fill a gather batch page with every table and flush every ~19 tables (in the
    middle of a table): the table where the gather must flush and the rest of it after the flush
    run the reference code (the rest without a record: where it starts hardly ever recurs), and
    the flushes fall where the reference puts them."""
    eng, _ = both(ModelSpec(arch="x86", preset="v6.9", folio=4 * KiB, mem=96 * MiB), "exit-child")
    assert isinstance(eng, FastEngine)
    assert eng.stats["linear"] > 10 and eng.stats["recorded"] > 5 and eng.stats["reference"] >= 4, eng.stats
    assert eng.stats["zap_run"] > 10, "tables were zapped with their runs queued whole in the gather"


@pytest.mark.parametrize(
    "arch,preset,folio",
    [
        ("x86", "v6.9", 4 * KiB),
        ("x86", "v6.9", 64 * KiB),
        ("arm64", "v6.9", 64 * KiB),
        ("arm64", "v6.17", 4 * KiB),
        ("riscv", "v6.9", 64 * KiB),
    ],
)
def test_zap_queues_compact_runs(arch: str, preset: str, folio: int) -> None:
    """A zap of a linear table over one run queues the run whole in the mmu_gather (released by
    ``put_run_refs`` at the flush) instead of expanding it: same counts and state as the
    reference, and the zapped runs stay compact (a steady-state fork is this exit followed by a
    fork of compact state, which the tests above cover)."""
    eng, _ = both(ModelSpec(arch=arch, preset=preset, folio=folio, mem=8 * MiB), "exit-child")
    assert isinstance(eng, FastEngine)
    assert eng.stats["zap_run"] >= 1, eng.stats


def test_exit_keeps_runs_compact_at_size() -> None:
    """The child exit of a 512 MiB mapping of 4K folios (256 tables, 131072 folios) expands only
    the runs of the tables where the gather flushes (its batch pages are full: about every 19
    tables), not every run as an expanding zap would."""
    spec = ModelSpec(arch="x86", preset="v6.9", folio=4 * KiB, mem=512 * MiB)
    r = run_scenario(spec, "exit-child")
    eng = r.kernel.fast
    assert isinstance(eng, FastEngine)
    tables = spec.mem // r.kernel.arch.geometry.pmd_size
    assert eng.stats["zap_run"] > tables * 3 // 4, eng.stats
    assert eng.stats["expanded_runs"] < tables // 8, eng.stats


def test_trace_and_check_use_the_reference_engine() -> None:
    spec = ModelSpec(mem=4 * MiB, trace_limit=10)
    assert spec.build().fast is None
    assert ModelSpec(mem=4 * MiB, checks=True).build().fast is None
    assert ModelSpec(mem=4 * MiB).build().fast is not None


# ---- random fuzz programs ---------------------------------------------------------------------


def random_program(rng: random.Random, n: int) -> list[Step]:
    """A random program over the fuzzer's operations (steps that make no sense are skipped by the
    runner, identically on both engines)."""
    steps = [
        Step.make("folio", order=rng.choice([0, 2, 4, 9])),
        Step.make("mmap", region=0, off=0, pages=1024, shared=False),
    ]
    steps.append(Step.make("populate", region=0, off=0, pages=1024, value=1))
    for _ in range(n):
        op = rng.choice(
            [
                "fork",
                "fork",
                "exit",
                "write",
                "populate",
                "munmap",
                "dontneed",
                "mprotect",
                "mmap",
                "pin",
                "migrate",
                "folio",
                "read",
                "free",
            ]
        )
        task = rng.randrange(4)
        region = rng.randrange(REGIONS)
        off = rng.randrange(0, 1024, 16)
        pages = rng.choice([1, 16, 512, 1024])
        kw: dict[str, int | bool | str] = {}
        for name in OPS[op]:
            kw[name] = {
                "region": region,
                "off": off,
                "pages": pages,
                "shared": rng.random() < 0.2,
                "value": rng.randrange(1, 1000),
                "page": rng.randrange(1024),
                "cpu": rng.randrange(3),
                "prot": rng.choice(["r", "rw"]),
                "order": rng.choice([0, 2, 4, 9]),
                "on": rng.random() < 0.5,
                "pin": 0,
            }[name]
        steps.append(Step.make(op, task, **kw))
    return steps


def _run(target: Target, steps: list[Step], fast: bool) -> Runner:
    r = Runner(target)
    if fast:
        r.kernel.fast = FastEngine(r.kernel)
    for s in steps:
        r.run(s)
    return r


@pytest.mark.parametrize("seed", range(12))
def test_random_programs(seed: int) -> None:
    """Random programs (fork, exit, COW writes, munmap, madvise, mprotect, pins, migration) on
    both engines, every invariant checked after each step on both: identical counts and state."""
    rng = random.Random(seed)
    arch = ARCHES[seed % len(ARCHES)]
    preset = rng.choice(MULTI_PRESETS)
    target = Target(arch, preset)
    steps = random_program(rng, 25)
    fast = _run(target, steps, True)
    ref = _run(target, steps, False)
    assert machine_counts(fast.kernel) == machine_counts(ref.kernel)
    assert machine_state(fast.kernel) == machine_state(ref.kernel)
    assert fast.reads == ref.reads


# ---- compact state: linear tables and folio runs, expanded on demand ----------------------------


def _compact_program(spec: ModelSpec) -> tuple[object, ...]:
    """Populate by faults (linear tables, folio runs), fork/exit to the steady state, then touch
    parts of the compact range one page or half a table at a time (COW writes in the child and the
    parent, a pin, munmap, MADV_DONTNEED, mprotect), fork again and exit everything."""
    from ptesim.workloads.scenarios import map_and_populate

    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    pmd = k.arch.geometry.pmd_size
    page = k.arch.page_size
    runs_after_populate = len(k.pages.runs)
    t.fork(1).exit()
    child = t.fork(1)
    child.write(addr + pmd + 3 * page, 7)  # COW in the child: table 1's run expands
    t.write(addr + 2 * pmd, 9)  # COW in the parent
    reads = [child.read(addr + pmd + 3 * page), t.read(addr + pmd + 3 * page), child.read(addr)]
    t.pin(addr + 3 * pmd + 5 * page)
    t.munmap(addr + 4 * pmd + pmd // 2, pmd // 2)  # half a table
    t.madvise(addr + 5 * pmd, pmd // 4, "dontneed")
    t.mprotect(addr + 6 * pmd, pmd, "r")
    grandchild = t.fork(2)
    child.exit()
    reads.append(grandchild.read(addr + 2 * pmd))
    grandchild.exit()
    mid = (machine_counts(k), machine_state(k))
    t.exit()
    return runs_after_populate, reads, mid, machine_counts(k), machine_state(k), k


@pytest.mark.parametrize(
    "arch,preset,folio",
    [
        ("x86", "v6.9", 4 * KiB),
        ("x86", "v6.8", 4 * KiB),
        ("x86", "v6.9", 64 * KiB),
        ("arm64", "v6.9", 4 * KiB),
        ("arm64", "contpte-v1-after-opt", 64 * KiB),
        ("riscv", "v6.9", 4 * KiB),
        ("riscv", "v6.9-svnapot", 64 * KiB),
    ],
)
def test_compact_state_expands_exactly(arch: str, preset: str, folio: int) -> None:
    """The populated range is held as linear tables and folio runs; every operation that later
    touches part of it (COW, pin, munmap, madvise, mprotect, fork, exit) sees the same machine as
    the reference engine, counts and state equal at every step compared."""
    spec = ModelSpec(arch=arch, preset=preset, folio=folio, mem=16 * MiB)
    *fast, k = _compact_program(spec)
    *ref, _ = _compact_program(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast[0] > 0 and ref[0] == 0, "the fast engine held the populated range as folio runs"
    # Svnapot entries of a 64K block share one PFN field: those tables are not linear
    linear = preset != "v6.9-svnapot"
    assert k.fast is not None and (k.fast.stats["linear"] > 0) == linear, k.fast.stats
    assert fast[1:] == ref[1:]


def test_compact_state_survives_steady_forks() -> None:
    """After fork+exit cycles every table is linear again and every folio a run: the memory of a
    steady-state mapping does not grow with the number of forks."""
    from ptesim.workloads.scenarios import map_and_populate

    spec = ModelSpec(arch="x86", preset="v6.9", folio=4 * KiB, mem=8 * MiB)
    k = spec.build()
    t, _ = map_and_populate(k, spec, via="fault")
    for _ in range(3):
        t.fork(1).exit()
    assert len(k.pages.runs) == 4 and len(k.pages._by_pfn) == 1  # the zero page only
    assert all(tab.linear is not None for tab in t.mm.pte_tables())
    held = k.pages.pfn_to_folio(next(iter(k.pages.runs)))  # a caller keeps a folio object
    t.fork(1).exit()
    assert held is not None and k.pages.pfn_to_folio(held.pfn) is held


def _per_table_ops(spec: ModelSpec) -> tuple[object, ...]:
    """Populate by faults, then the per-table operations over the whole range: mprotect read-only
    and back, fork, mprotect in the child, the child's exit, mprotect in the parent after the
    fork (its folios no longer exclusive), munmap."""
    from ptesim.workloads.scenarios import map_and_populate

    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    t.mprotect(addr, spec.mem, "r")
    t.mprotect(addr, spec.mem, "rw")
    mid = (machine_counts(k), machine_state(k))
    child = t.fork(1)
    child.mprotect(addr, spec.mem, "r")
    child.exit()
    t.mprotect(addr, spec.mem, "r")
    t.mprotect(addr, spec.mem, "rw")
    late = (machine_counts(k), machine_state(k))
    t.munmap(addr, spec.mem)
    return mid, late, machine_counts(k), machine_state(k), k


@pytest.mark.parametrize(
    "arch,preset,folio",
    [
        ("x86", "v6.9", 4 * KiB),
        ("x86", "v6.17", 64 * KiB),
        ("arm64", "v6.9", 64 * KiB),
        ("arm64", "v6.17", 64 * KiB),
        ("riscv", "v6.9-svnapot", 64 * KiB),
    ],
)
def test_mprotect_keeps_tables_compact(arch: str, preset: str, folio: int) -> None:
    """``change_pte_range`` on a linear table over one run replays its record on the descriptors
    (new bits, one folio change): the same counts and state as the reference at every step."""
    spec = ModelSpec(arch=arch, preset=preset, folio=folio, mem=8 * MiB)
    *fast, k = _per_table_ops(spec)
    *ref, _ = _per_table_ops(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref
    assert k.fast is not None
    # Svnapot entries of a 64K block share one PFN field: those tables are not linear
    assert (k.fast.stats["change_run"] > 0) == (preset != "v6.9-svnapot"), k.fast.stats


def _unmap_and_reuse(spec: ModelSpec) -> tuple[object, ...]:
    """Populate by faults, fork, munmap the first half in the parent (the child still maps it),
    exit the child (its folios of that half reach zero and are freed), populate a new mapping
    (from the freed PFNs), munmap the second half."""
    from ptesim.workloads.scenarios import map_and_populate

    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    c = t.fork(1)
    t.munmap(addr, spec.mem // 2)
    c.exit()
    mid = (machine_counts(k), machine_state(k))
    ranges = sum(type(x) is range for v in k.pages._free.values() for x in v)
    t2, _ = map_and_populate(k, spec, via="fault")
    t.munmap(addr + spec.mem // 2, spec.mem // 2)
    t2.exit()
    return ranges, mid, machine_counts(k), machine_state(k), k


@pytest.mark.parametrize(
    "arch,preset,folio", [("x86", "v6.9", 16 * KiB), ("arm64", "v6.9", 64 * KiB), ("riscv", "v6.9", 64 * KiB)]
)
def test_freed_runs_stay_compact(arch: str, preset: str, folio: int) -> None:
    """A run whose folios all reach zero at the gather's flush is freed whole (its PFNs pushed on
    the free list as one range); allocation then pops them one at a time, exactly as the
    reference engine's free list of single PFNs."""
    spec = ModelSpec(arch=arch, preset=preset, folio=folio, mem=12 * MiB)
    ranges, *fast, k = _unmap_and_reuse(spec)
    no_ranges, *ref, _ = _unmap_and_reuse(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref
    assert ranges > 0 and no_ranges == 0, "a run was freed whole"
    assert k.fast is not None and k.fast.stats["zap_run"] >= 2, k.fast.stats


# ---- mremap: move_ptes on descriptors ---------------------------------------------------------

MREMAP_CASES = [
    ("x86", "v6.9", 4 * KiB, "pmd"),
    ("x86", "v6.17", 64 * KiB, "pmd"),
    ("arm64", "v6.9", 4 * KiB, "pmd"),
    ("arm64", "v6.9", 64 * KiB, "pmd"),
    ("arm64", "v6.17", 64 * KiB, "pmd"),
    ("arm64", "v6.19", 4 * KiB, "pmd"),
    ("riscv", "v6.9", 64 * KiB, "pmd"),
    ("riscv", "v7.0-svnapot", 4 * KiB, "pmd"),
    ("x86", "v6.9", 2 * MiB, "pte"),
    ("arm64", "v6.17", 2 * MiB, "pte"),
]


@pytest.mark.parametrize("arch,preset,folio,mapping", MREMAP_CASES)
def test_mremap_moves_descriptors(arch: str, preset: str, folio: int, mapping: str) -> None:
    """Nine tables populated by faults, moved by one 64K (contiguous) block: each source table's
    entries land in two destination tables.  After the first extent of each kind, ``move_ptes``
    replays on the descriptors (a window of a table, a table linear across two runs) and the
    emptied source tables are zapped on theirs: counts and final state equal the reference."""
    spec = ModelSpec(arch=arch, preset=preset, folio=folio, mem=18 * MiB, mapping=mapping)
    eng, _ = both(spec, "mremap")
    assert isinstance(eng, FastEngine)
    assert eng.stats["move_run"] >= 8 and eng.stats["zap_empty"] >= 4, eng.stats


def test_mremap_with_tlb_entries() -> None:
    """Populated by user stores, the TLB holds the range: an extent whose flush could drop entries
    runs the reference code (x86: the first one's full flush empties the TLB, the rest replay)."""
    for arch in ("x86", "arm64"):
        eng, _ = both(ModelSpec(arch=arch, preset="v6.9", folio=4 * KiB, mem=12 * MiB), "mremap")
        assert isinstance(eng, FastEngine)
        assert eng.stats["reference"] >= 1, eng.stats
        assert (eng.stats["move_run"] > 0) == (arch == "x86"), eng.stats


def _mremap_program(spec: ModelSpec) -> tuple[object, ...]:
    """Populate by faults, mremap by one block, then use the moved range (whose tables are
    windows or linear across two runs): fork, COW in the child, the child's exit, mremap back,
    munmap half, exit."""
    from ptesim.workloads.scenarios import map_and_populate, mremap_offset

    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    page = k.arch.page_size
    new = addr + spec.mem + mremap_offset(k)
    t.mremap(addr, spec.mem, new)
    eng = k.fast
    # destination tables linear over exactly one run, as every other compact record reads them
    over_one_run = sum(eng._linear_src(tab) is not None for tab in t.mm.pte_tables()) if eng else 0
    mid = (machine_counts(k), machine_state(k))
    c = t.fork(1)
    c.write(new + 5 * page, 3)
    reads = [c.read(new + 5 * page), t.read(new + 5 * page), c.read(new + spec.mem - page)]
    c.exit()
    t.mremap(new, spec.mem, addr)
    t.munmap(addr, spec.mem // 2)
    late = (machine_counts(k), machine_state(k))
    t.exit()
    return over_one_run, reads, mid, late, machine_counts(k), machine_state(k), k


@pytest.mark.parametrize(
    "arch,preset,folio",
    [("x86", "v6.9", 4 * KiB), ("arm64", "v6.17", 64 * KiB), ("riscv", "v6.9", 16 * KiB)],
)
def test_mremap_then_use_the_moved_range(arch: str, preset: str, folio: int) -> None:
    """After the move the runs are split at the destination tables' bounds (each of the three
    tables filled from two source tables maps one run again), so that the fork, exit and munmap
    that follow replay on descriptors: the same counts and state as the reference at each step."""
    spec = ModelSpec(arch=arch, preset=preset, folio=folio, mem=8 * MiB)
    over_one_run, *fast, k = _mremap_program(spec)
    _, *ref, _ = _mremap_program(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref
    assert k.fast is not None and k.fast.stats["move_run"] > 0, k.fast.stats
    assert over_one_run == 3 and k.fast.stats["realigned"] >= 3, k.fast.stats
    assert k.fast.stats["zap_run"] > 0, k.fast.stats


@pytest.mark.parametrize("arch,folio", [("x86", 4 * KiB), ("arm64", 64 * KiB)])
def test_mremap_of_an_unaligned_mapping(arch: str, folio: int) -> None:
    """The same with malloc's placement (a page of header, the range not PMD-aligned): partial
    tables at both ends, runs split where they do not start on a block, the same machine."""
    spec = ModelSpec(arch=arch, preset="v6.17", folio=folio, mem=8 * MiB, placement="malloc")
    _, *fast, k = _mremap_program(spec)
    _, *ref, _ = _mremap_program(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref
    assert k.fast is not None and k.fast.stats["move_run"] > 0, k.fast.stats


# ---- per-page sweeps: a COW write of every page, MADV_DONTNEED one page at a time ----------------

SWEEP_CASES = [
    ("x86", "v6.9", 4 * KiB),
    ("x86", "v6.9", 64 * KiB),
    ("arm64", "v6.9", 64 * KiB),
    ("arm64", "v6.17", 4 * KiB),
    ("riscv", "v6.9", 4 * KiB),
]


@pytest.mark.parametrize("scenario", ["cow-write", "dontneed-pages"])
@pytest.mark.parametrize("arch,preset,folio", SWEEP_CASES)
def test_sweeps_are_replayed(arch: str, preset: str, folio: int, scenario: str) -> None:
    """Tables populated by faults, then one COW write or one MADV_DONTNEED per page: the
    first, a middle and the last table of the range run the reference loop while it is
    recorded, the others replay the record (new folios as one run whose contents follow the
    values written, the old run freed or changed whole, the TLB's entries and evictions), with
    the same counts and final machine as the reference (x86 4K: 4608 pages, more than a TLB
    holds, so the replays evict; the other COW cases take five tables, two of them replayed)."""
    tables = 9 if (arch, folio) == ("x86", 4 * KiB) or scenario == "dontneed-pages" else 5
    eng, _ = both(ModelSpec(arch=arch, preset=preset, folio=folio, mem=tables * 2 * MiB), scenario)
    assert isinstance(eng, FastEngine)
    assert eng.stats["sweep_recorded"] == 3 and eng.stats["sweep_replayed"] == tables - 3, eng.stats


@pytest.mark.parametrize("arch", ["x86", "arm64"])
def test_cow_sweep_of_pmd_mapped_thps_is_compacted_as_it_goes(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COW write of every page of PMD-mapped THPs runs the reference loop (the first write of
    each splits the child's PMD, then every page is copied), and the child's tables and new
    folios are compacted every few tables rather than when the sweep ends, with the same counts
    and final machine as the reference engine."""
    from ptesim.fast import memo

    monkeypatch.setattr(memo, "_PENDING_MAX", 2)
    spec = ModelSpec(arch=arch, preset="v6.9", folio=2 * MiB, mem=8 * MiB)
    k = run_scenario(spec, "cow-write").kernel
    assert isinstance(k.fast, FastEngine) and not k.fast.stats["sweep_recorded"], k.fast
    child = k.tasks[-1].mm
    vma = child.vmas[-1]
    tables = [child.pmd_entry(a) for a in range(vma.start, vma.end, 2 * MiB)]
    # before anything reads them (machine_state below expands every table)
    assert len(tables) == 4 and all(t.linear is not None for t in tables), tables
    both(spec, "cow-write")


def _sweep_program(spec: ModelSpec) -> tuple[object, ...]:
    """Sweeps on shared and compact state: the child of a fork writes every page (COW), reads
    some back; the parent drops half its pages one at a time while the child still maps them (the
    old folios change, none is freed); the child's exit frees its copies; the parent forks again,
    and its new child drops every page (freeing nothing the parent still maps)."""
    from ptesim.workloads.scenarios import each_page, map_and_populate

    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    page = k.arch.page_size
    c = t.fork(1)
    each_page(c, "write", addr, spec.mem, 5)
    reads = [c.read(addr + i * 1000 * page) for i in range(4)] + [t.read(addr + page)]
    each_page(t, "dontneed", addr, spec.mem // 2)
    mid = (machine_counts(k), machine_state(k))
    c.exit()
    g = t.fork(2)
    each_page(g, "dontneed", addr, spec.mem)
    reads.append(g.read(addr + spec.mem - page))
    g.exit()
    return reads, mid, machine_counts(k), machine_state(k), k


def test_sweeps_on_shared_state() -> None:
    spec = ModelSpec(arch="x86", preset="v6.9", folio=4 * KiB, mem=12 * MiB)
    *fast, k = _sweep_program(spec)
    *ref, _ = _sweep_program(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref
    assert k.fast is not None and k.fast.stats["sweep_replayed"] >= 4, k.fast.stats


def _sweep_then_mremap(spec: ModelSpec) -> tuple[object, ...]:
    """The child of a fork writes every page (its new folios are runs whose contents follow the
    values written), then moves its range by one block and reads it back, forks and exits."""
    from ptesim.workloads.scenarios import each_page, map_and_populate, mremap_offset

    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    page = k.arch.page_size
    c = t.fork(1)
    each_page(c, "write", addr, spec.mem, 5)
    new = addr + spec.mem + mremap_offset(k)
    c.mremap(addr, spec.mem, new)
    realigned = k.fast.stats["realigned"] if k.fast else 0
    reads = [c.read(new + i * 700 * page) for i in range(6)]
    c.fork(2).exit()
    c.exit()
    return realigned, reads, machine_counts(k), machine_state(k)


def test_mremap_after_a_sweep() -> None:
    spec = ModelSpec(arch="x86", preset="v6.9", folio=4 * KiB, mem=18 * MiB)
    realigned, *fast = _sweep_then_mremap(spec)
    _, *ref = _sweep_then_mremap(ModelSpec(**{**spec.__dict__, "engine": "reference"}))
    assert fast == ref
    assert realigned >= 4, "the runs of contents written page by page were split as well"


def test_cow_sweep_leaves_compact_state() -> None:
    """After the child's COW write of every page, every table of both processes is linear again
    and every folio is in a run (the recorded tables' new folios too: their contents, one value
    per page, are held as the run's data rule), so a later fork or exit of the child replays on
    descriptors."""
    spec = ModelSpec(arch="x86", preset="v6.9", folio=4 * KiB, mem=18 * MiB)
    k = run_scenario(spec, "cow-write").kernel
    tables = [t for mm in k.mms for t in mm.pte_tables()]
    assert len(tables) == 18 and all(t.linear is not None for t in tables)
    assert len(k.pages._by_pfn) == 1  # the zero page
    rules = sorted(r.data_rule for r in k.pages.runs.values() if r.data_rule is not None)
    assert rules == [(1000 + i * 512, 1) for i in range(9)]
    child = max(k.mms, key=lambda m: m.id)
    assert k.pages.pfn_to_folio(k.arch.pte_pfn(child.pte_tables()[4].entries[7])).data == [1000 + 4 * 512 + 7]


def _random_mremaps(spec: ModelSpec, seed: int) -> tuple[object, ...]:
    """Mappings moved whole or in part, to destinations at random page offsets, between forks,
    COW writes and munmaps of parts of them (the same program on either engine: it depends only
    on the seed and on addresses)."""
    from ptesim.workloads.scenarios import map_and_populate

    rng = random.Random(seed)
    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    page = k.arch.page_size
    maps = [(addr, spec.mem)]
    reads = []
    for _ in range(8):
        i = rng.randrange(len(maps))
        start, length = maps[i]
        op = rng.choice(["move", "move", "move-part", "fork", "write", "munmap"])
        top = max(s + n for s, n in maps)
        dest = top + (4 << 20) + rng.choice([1, 16, 17, 512, 527, rng.randrange(1, 1024)]) * page
        if op == "move":
            t.mremap(start, length, dest)
            maps[i] = (dest, length)
        elif op == "move-part" and length >= 2 * page:
            half = length // 2 // page * page
            t.mremap(start, half, dest)
            maps[i] = (start + half, length - half)
            maps.append((dest, half))
        elif op == "fork":
            c = t.fork(1)
            c.write(start + rng.randrange(length // page) * page, rng.randrange(1, 100))
            c.exit()
        elif op == "write":
            t.write(start + rng.randrange(length // page) * page, rng.randrange(1, 100))
        elif op == "munmap" and length >= 4 * page:
            quarter = length // 4 // page * page
            t.munmap(start + length - quarter, quarter)
            maps[i] = (start, length - quarter)
        start, length = maps[i]
        reads.append(t.read(start + rng.randrange(length // page) * page))
    return reads, machine_counts(k), machine_state(k)


@pytest.mark.parametrize("seed", range(6))
def test_random_mremaps(seed: int) -> None:
    rng = random.Random(seed)
    arch = ARCHES[seed % len(ARCHES)]
    spec = ModelSpec(
        arch=arch,
        preset=rng.choice(["v6.9", "v6.17"]),
        folio=rng.choice([4 * KiB, 16 * KiB, 64 * KiB]),
        mem=rng.choice([12, 18]) * MiB,
    )
    fast = _random_mremaps(spec, seed)
    ref = _random_mremaps(ModelSpec(**{**spec.__dict__, "engine": "reference"}), seed)
    assert fast == ref
