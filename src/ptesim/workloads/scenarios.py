"""Build a model machine from command-line style options and run named scenarios on it.

A scenario counts only its own operation (the fork, the exit, the munmap, the COW writes); the
setup before it (mapping, population, earlier forks) runs with the same kernel but is reset out of
the sink before the measured operation starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ptesim.errors import UsageError
from ptesim.events import EventSink
from ptesim.fast.footprint import check_fits
from ptesim.fast.memo import ENGINES, FastEngine, engine_applies, memoised_table_op
from ptesim.fast.sweep import SWEEPS, sweep
from ptesim.kernel.config import KernelConfig, preset
from ptesim.kernel.core import Kernel, Task
from ptesim.kernel.mm import Vma
from ptesim.units import MODEL_MEM_MAX, format_size, parse_size

BLOCK = 64 * 1024  # the normalisation unit of the reference tables: one 64K block


@dataclass(frozen=True)
class ModelSpec:
    """Everything that selects one model machine and one populated mapping."""

    arch: str = "x86"
    preset: str = "v6.9"
    folio: int = 64 * 1024
    mem: int = 1 << 20
    granule: int = 4096
    cpu_features: frozenset[str] | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    ncpus: int = 4
    placement: str = "aligned"  # "aligned" (PMD-aligned mmap) or "malloc" (glibc-style mmap chunk)
    #: How PMD-sized folios are mapped once populated: "pmd" (the fault path's PMD leaf) or "pte"
    #: (the PMD mapping split without splitting the folio: 512 PTEs map one PMD-sized folio).
    mapping: str = "pmd"
    checks: bool = False
    trace_limit: int = 0
    #: "fast" replays per-table kernel functions where the fast engine applies (no --check, no
    #: trace), "reference" always runs every function; counts and state are the same.
    engine: str = "fast"

    def __post_init__(self) -> None:
        # sizes may be given as the kernel's sysfs spells them ("64K") as well as in bytes
        for name in ("folio", "mem", "granule"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, parse_size(value, what=name))
        if self.cpu_features is not None and not isinstance(self.cpu_features, frozenset):
            object.__setattr__(self, "cpu_features", frozenset(self.cpu_features))
        if not 0 < self.mem <= MODEL_MEM_MAX:
            raise UsageError(
                f"bad --mem {format_size(self.mem)}: the model maps at most {format_size(MODEL_MEM_MAX)}"
            )

    def config(self) -> KernelConfig:
        cfg = preset(self.preset)
        if self.overrides:
            cfg = cfg.with_overrides(self.overrides)
        return cfg

    def build(self, scenario: str | None = None) -> Kernel:
        """The machine, refused up front if ``scenario`` on it would not fit in memory."""
        k = Kernel(
            self.arch,
            self.config(),
            ncpus=self.ncpus,
            granule=self.granule,
            cpu_features=self.cpu_features,
            checks=self.checks,
            trace_limit=self.trace_limit,
        )
        if self.mem % k.arch.page_size:
            raise UsageError(f"--mem {format_size(self.mem)} is not a multiple of the page size")
        if self.folio > self.mem:
            raise UsageError(
                f"folio size {format_size(self.folio)} is larger than the mapping ({format_size(self.mem)})"
            )
        k.set_folio_size(self.folio)
        g = k.arch.geometry
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; one of {', '.join(ENGINES)}")
        fast = self.engine == "fast" and engine_applies(k)
        # the fast engine's compact form needs entries that step by one PFN (not Svnapot blocks)
        compact = fast and k.arch.ptes_linear(max(1, self.folio // g.page_size))
        check_fits(self.mem, g.page_size, self.folio, g.pmd_size, scenario, compact=compact)
        if fast:
            k.fast = FastEngine(k)
        return k

    @property
    def blocks(self) -> float:
        return self.mem / BLOCK


MAPPINGS = ("pmd", "pte")


def folio_label(folio: int, mapping: str, pmd_size: int) -> str:
    """``"64K folios"``, or for a PMD-sized folio which mapping ran: ``"2M folios, PTE-mapped"``."""
    text = f"{format_size(folio)} folios"
    if folio == pmd_size:
        text += ", PTE-mapped" if mapping == "pte" else ", PMD-mapped"
    return text


def map_and_populate(k: Kernel, spec: ModelSpec, *, via: str = "auto") -> tuple[Task, int]:
    """A process on CPU 0 maps ``spec.mem`` of private anonymous memory and fills it.

    ``via='write'`` writes every page from the CPU (memset); ``via='fault'`` faults every page in
    for writing as MAP_POPULATE does, without the user stores.  Both leave the same page tables.
    """
    t = k.spawn(0)
    page = k.arch.page_size
    if spec.placement == "malloc":
        # glibc: an mmap'd chunk is the request plus one page of header, and the user pointer sits
        # just past the 16-byte chunk header; memset then dirties the whole request.
        base = t.mmap(spec.mem + page, addr=_malloc_addr(k, spec.mem + page))
        addr = base
    elif spec.placement == "aligned":
        addr = t.mmap(spec.mem)
    else:
        raise UsageError(f"unknown placement {spec.placement!r} (aligned or malloc)")
    if via == "auto":
        via = "write" if spec.mem <= (16 << 20) else "fault"
    if via == "write":
        t.populate(addr, spec.mem)
    else:
        fault_in(t, addr, spec.mem)
    if spec.mapping == "pte":
        pte_map_thps(t, addr, spec.mem)
    elif spec.mapping != "pmd":
        raise UsageError(f"bad mapping {spec.mapping!r}: one of pmd, pte")
    return t, addr


def pte_map_thps(t: Task, addr: int, length: int) -> None:
    """PTE-map every PMD-mapped folio of ``[addr, addr + length)`` without splitting the folio.

    David Hildenbrand's pte-mapped-folio benchmarks make their PMD-sized folios PTE-mapped this way:
    an mprotect() of part of each THP and back splits the PMD mapping (``__split_huge_pmd`` in
    ``mm/huge_memory.c``, v6.9) while the folio stays one order-9 folio, so that every later fork,
    zap or MADV_DONTNEED walks 512 PTEs of one large folio.  The split runs as set-up: a scenario
    resets the counts before the operation it measures."""
    from ptesim.kernel.huge_memory import __split_huge_pmd

    k = t.kernel
    pmd_size = k.arch.geometry.pmd_size
    vma = t.mm.find_vma(addr)
    assert vma is not None
    with k.operation(t, "setup"):
        for a in range(addr & ~(pmd_size - 1), addr + length, pmd_size):
            if a >= addr and isinstance(t.mm.pmd_entry(a), int):
                __split_huge_pmd(vma, a)


def _malloc_addr(k: Kernel, length: int) -> int:
    """Top-down placement with no THP alignment (mappings not a PMD multiple are not aligned)."""
    from ptesim.kernel.mmap import MMAP_BASE

    return (MMAP_BASE - length) & ~(k.arch.page_size - 1)


def fault_in(t: Task, addr: int, length: int) -> None:
    """__mm_populate(): write-fault every page that is not yet mapped, one PMD range at a time."""
    k = t.kernel
    vma = t.mm.find_vma(addr)
    assert vma is not None
    pmd = k.arch.geometry.pmd_size
    end = addr + length
    with k.operation(t, "populate"):
        a = addr
        while a < end:
            nxt = min((a | (pmd - 1)) + 1, end)
            populate_pmd_range(vma, a, nxt)
            a = nxt
    if t.kernel.checks:
        from ptesim.kernel.check import validate_all

        validate_all(k)


@memoised_table_op("populate")
def populate_pmd_range(vma: Vma, start: int, end: int) -> None:
    """Write-fault every unmapped page of [start, end) (within one PMD), as faultin_page() does."""
    from ptesim.kernel.memory import handle_mm_fault

    mm = vma.mm
    arch = mm.kernel.arch
    for a in range(start, end, arch.page_size):
        if isinstance(mm.pmd_entry(a), int):
            continue
        ptep = mm.pte_offset(a)
        if ptep is None or not arch.pte_present(ptep.peek()):
            handle_mm_fault(vma, a, True)


@dataclass
class ScenarioResult:
    spec: ModelSpec
    scenario: str
    sink: EventSink
    kernel: Kernel


def _populate(k: Kernel, spec: ModelSpec) -> tuple[Task, int]:
    return map_and_populate(k, spec)


def sc_populate(k: Kernel, spec: ModelSpec) -> None:
    t = k.spawn(0)
    addr = t.mmap(spec.mem)
    k.sink.reset()
    if spec.mem <= (16 << 20):
        with k.sink.operation("populate"):
            t.populate(addr, spec.mem)
    else:
        fault_in(t, addr, spec.mem)
    if spec.mapping == "pte":
        pte_map_thps(t, addr, spec.mem)


def sc_fork_first(k: Kernel, spec: ModelSpec) -> None:
    t, _ = _populate(k, spec)
    k.sink.reset()
    t.fork(1)


def sc_fork_steady(k: Kernel, spec: ModelSpec) -> None:
    t, _ = _populate(k, spec)
    t.fork(1).exit()
    k.sink.reset()
    t.fork(1)


def sc_exit_child(k: Kernel, spec: ModelSpec) -> None:
    t, _ = _populate(k, spec)
    c = t.fork(1)
    k.sink.reset()
    c.exit()


def sc_munmap(k: Kernel, spec: ModelSpec) -> None:
    t, addr = _populate(k, spec)
    k.sink.reset()
    t.munmap(addr, spec.mem)


def sc_dontneed(k: Kernel, spec: ModelSpec) -> None:
    t, addr = _populate(k, spec)
    k.sink.reset()
    t.madvise(addr, spec.mem, "dontneed")


def sc_dontneed_pages(k: Kernel, spec: ModelSpec) -> None:
    t, addr = _populate(k, spec)
    k.sink.reset()
    each_page(t, "dontneed", addr, spec.mem)


def sc_cow_write(k: Kernel, spec: ModelSpec) -> None:
    t, addr = _populate(k, spec)
    c = t.fork(1)
    k.sink.reset()
    each_page(c, "write", addr, spec.mem, 1000)


def each_page(t: Task, how: str, addr: int, length: int, value: int = 0) -> None:
    """Every page of [addr, addr + length) in address order, one complete operation per page:
    ``how`` "write" stores ``value + i`` into page ``i`` (a user store, faulting as it must),
    "dontneed" is one ``madvise(page, page_size, MADV_DONTNEED)`` per page.  Its definition is
    :func:`each_page_loop`; the fast engine runs that loop a PTE table at a time and replays its
    record on equivalent tables (:mod:`ptesim.fast.sweep`)."""
    if how not in SWEEPS:
        raise ValueError(f"unknown sweep {how!r}")
    eng = t.kernel.fast
    if eng is None or not eng.usable():
        each_page_loop(t, how, addr, addr + length, value)
        return
    sweep(eng, t, how, addr, length, value, each_page_loop)


def each_page_loop(t: Task, how: str, start: int, end: int, value: int) -> None:
    """The per-page loop of :func:`each_page` over [start, end), page ``i`` getting ``value + i``."""
    page = t.kernel.arch.page_size
    if how == "write":
        for i, a in enumerate(range(start, end, page)):
            t.write(a, value + i)
    else:
        for a in range(start, end, page):
            t.madvise(a, page, "dontneed")


def sc_mprotect(k: Kernel, spec: ModelSpec) -> None:
    """One iteration of Dev Jain's mprotect benchmark (cover letter of 20250718090244.21092-1):
    mprotect(PROT_READ) then mprotect(PROT_READ | PROT_WRITE) of the whole populated range."""
    t, addr = _populate(k, spec)
    k.sink.reset()
    t.mprotect(addr, spec.mem, "r")
    t.mprotect(addr, spec.mem, "rw")


def mremap_offset(k: Kernel) -> int:
    """How far past the end of the mapping ``mremap`` moves it: one 64K block or one contiguous
    block of the granule, whichever is larger, so that no PMD can be moved whole and every PTE is
    moved (as in Dev Jain's 1M benchmark, 20250610035043.75448-1, where the range is smaller than
    a PMD) while contpte blocks stay aligned."""
    cont = getattr(k.arch, "contpte_nr", 1) * k.arch.page_size
    return max(BLOCK, cont)


def sc_mremap(k: Kernel, spec: ModelSpec) -> None:
    """Move the populated range with MREMAP_MAYMOVE | MREMAP_FIXED to just past its end."""
    t, addr = _populate(k, spec)
    k.sink.reset()
    t.mremap(addr, spec.mem, addr + spec.mem + mremap_offset(k))


def _threads_everywhere(k: Kernel, t: Task) -> None:
    """Give the process a thread on every other CPU, then let a few flushes run on a scratch page
    so that the mm is in its steady state: on x86 with INVLPGB (v6.15) it is then active on more
    than 3 CPUs, holds a global ASID and has finished the ASID transition."""
    for cpu in range(k.hw.ncpus):
        if cpu != t.cpu:
            t.thread(cpu)
    scratch = t.mmap(k.arch.page_size)
    t.write(scratch, 1)
    for _ in range(2):
        t.mprotect(scratch, k.arch.page_size, "r")
        t.mprotect(scratch, k.arch.page_size, "rw")


def sc_munmap_threads(k: Kernel, spec: ModelSpec) -> None:
    t, addr = _populate(k, spec)
    _threads_everywhere(k, t)
    k.sink.reset()
    t.munmap(addr, spec.mem)


def sc_mprotect_threads(k: Kernel, spec: ModelSpec) -> None:
    t, addr = _populate(k, spec)
    _threads_everywhere(k, t)
    k.sink.reset()
    t.mprotect(addr, spec.mem, "r")
    t.mprotect(addr, spec.mem, "rw")


SCENARIOS: dict[str, tuple[Callable[[Kernel, ModelSpec], None], str]] = {
    "populate": (sc_populate, "fault every page of a fresh mapping in by writing it"),
    "fork-first": (sc_fork_first, "fork a populated mapping whose PTEs are writable"),
    "fork-steady": (sc_fork_steady, "fork again after a first child exited: parent PTEs already read-only"),
    "exit-child": (sc_exit_child, "the child of one fork exits"),
    "munmap": (sc_munmap, "unmap the whole populated mapping"),
    "dontneed": (sc_dontneed, "MADV_DONTNEED the whole populated mapping"),
    "dontneed-pages": (sc_dontneed_pages, "MADV_DONTNEED the populated mapping one page at a time"),
    "cow-write": (sc_cow_write, "after fork, the child writes every page (COW faults)"),
    "mprotect": (sc_mprotect, "mprotect the populated mapping read-only, then read-write again"),
    "mremap": (sc_mremap, "mremap (move) the populated mapping to just past its end"),
    "munmap-threads": (sc_munmap_threads, "munmap with a thread of the process on every CPU"),
    "mprotect-threads": (
        sc_mprotect_threads,
        "the mprotect toggle with a thread of the process on every CPU",
    ),
}


def run_scenario(spec: ModelSpec, scenario: str) -> ScenarioResult:
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    k = spec.build(scenario)
    SCENARIOS[scenario][0](k, spec)
    return ScenarioResult(spec, scenario, k.sink, k)


def phase_counts(sink: EventSink) -> dict[str, Counter[str]]:
    return sink.by_phase()
