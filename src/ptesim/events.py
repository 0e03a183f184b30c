"""The event sink: the only place in ptesim where anything is counted.

Model code never increments a counter of its own.  A raw primitive — a PTE load, a TLBI, a folio
atomic — calls :func:`emit` at the moment it executes, and the sink that is *active* for the running
operation records it under three keys:

* the **primitive** (a fine name from :data:`PRIMITIVES`),
* the **phase** (``fork_parent``, ``fork_child``, ``exit``, ``fault`` …, see :meth:`EventSink.phase_for`),
* the **call stack** of kernel functions that led to it, kept by the :func:`kfunc` decorator, so that
  ``ptesim explain`` can say that a TLBI came from ``__flush_tlb_range`` ← ``contpte_convert`` ←
  ``__contpte_try_fold`` ← ``set_ptes`` ← ``copy_present_pte``.

Coarse keys of the public JSON schema (``pte_rmw``, ``tlbi_page``, ``dsb`` …) are sums of fine keys,
defined once in :data:`AGGREGATES`.

The active sink is carried in a :class:`contextvars.ContextVar`, not a global: a machine activates its own
sink for the duration of each operation (``with sink.active(): ...``).
"""

from __future__ import annotations

import contextvars
import functools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

#: Fine primitives, with what one count means.
PRIMITIVES: dict[str, str] = {
    # page-table memory
    "pte_read": "one load of a page-table entry (READ_ONCE / __ptep_get)",
    "pte_write": "one plain store of a page-table entry (WRITE_ONCE / __set_pte)",
    "pte_xchg": "one atomic exchange of a PTE (__ptep_get_and_clear)",
    "pte_cmpxchg": "one successful compare-and-exchange of a PTE (wrprotect / access-flag loops)",
    "pte_bitop": "one atomic bit operation on a PTE (x86 clear_bit(_PAGE_BIT_RW), riscv amoand)",
    "pmd_read": "one load of a PMD entry",
    "pmd_write": "one store of a PMD entry",
    "pmd_rmw": "one atomic read-modify-write of a PMD entry",
    # TLB maintenance (issued by the initiating CPU)
    "tlbi_page_bcast": "one-page invalidation broadcast to all CPUs (TLBI VALE1IS / VAE1IS)",
    "tlbi_page_local": "one-page invalidation of this CPU only (TLBI VALE1, INVLPG, sfence.vma addr)",
    "tlbi_range_bcast": "one broadcast range invalidation (TLBI RVALE1IS)",
    "tlbi_range_local": "one local range invalidation (TLBI RVALE1)",
    "tlbi_asid_bcast": "broadcast invalidation of a whole address space (TLBI ASIDE1IS)",
    "tlbi_asid_local": "local invalidation of a whole address space (CR3 reload, sfence.vma x0, asid)",
    "tlbi_all_bcast": "broadcast invalidation of everything (TLBI VMALLE1IS)",
    "tlbi_all_local": "local invalidation of everything (TLBI VMALLE1, sfence.vma)",
    "invlpgb": "one INVLPGB of a virtual range (AMD broadcast; up to invlpgb_count_max pages)",
    "invlpgb_pcid": "one INVLPGB of a whole PCID (AMD broadcast; a full flush of the mm)",
    "tlbsync": "one TLBSYNC: wait until this CPU's INVLPGBs completed on every CPU",
    "tlbi_live_asid": (
        "qualifier of a broadcast page or range TLBI (also counted as such) whose ASID is the one the "
        "issuing CPU is running: the address space is live there, not a child that never ran"
    ),
    "dsb_live_asid": (
        "qualifier of a DSB ISH (also counted as such) issued for the address space the issuing CPU is "
        "running: the completion wait of invalidations of a live mm"
    ),
    "dsb_ishst": "DSB ISHST: make prior stores visible to all walkers before a broadcast TLBI",
    "dsb_ish": "DSB ISH: wait for completion of broadcast TLBIs on every CPU",
    "dsb_nshst": "DSB NSHST: local store barrier before a local TLBI",
    "dsb_nsh": "DSB NSH: wait for local TLBI completion",
    "isb": "ISB",
    "ipi": "one inter-processor interrupt sent to a CPU to make it flush",
    "sbi_rfence": "one SBI remote-fence call (riscv, a cpumask per call)",
    "sbi_rfence_target": "one CPU reached by an SBI remote fence",
    # folios
    "folio_ref": "one atomic on a folio refcount (folio_get, folio_ref_add, folio_put_refs)",
    "mapcount": "one atomic on a per-page _mapcount or a folio's _mapcount/_entire_mapcount",
    "large_mapcount": "one atomic on a large folio's _large_mapcount (>= v6.11)",
    "anon_exclusive": "one atomic set/clear of PageAnonExclusive",
    "tlb_page": (
        "one page or folio range queued on an mmu_gather (__tlb_remove_page_size / "
        "__tlb_remove_folio_pages) and released from it at the flush (free_pages_and_swap_cache: "
        "page_folio of its page, free_swap_cache, the release loop; the reference drop is folio_ref)"
    ),
    "rmap_stat": (
        "one mapped-page statistic update by an rmap add or remove (__lruvec_stat_mod_folio of "
        "NR_ANON_MAPPED, NR_FILE_MAPPED, NR_ANON_THPS ...: the node's and the memcg's per-CPU counters)"
    ),
    "page_copy": "one base page copied (COW, pinned-page copy at fork)",
    "page_zero": "one base page zeroed for a new anonymous folio",
    "folio_alloc": "one folio allocated (any order)",
    "folio_free": "one folio freed",
    "pgtable_alloc": "one page-table page allocated",
    "pgtable_free": "one page-table page freed",
    # other kernel events
    "fault": "one page fault taken by a user access",
    "rss_flush": "one add_mm_rss_vec (per-CPU counter update) per PTE-table walk",
    "syscall": (
        "one memory-management system call of a task (mmap, munmap, mprotect, mremap, madvise): entry "
        "and exit, mmap_lock, the VMA lookup, mmu_gather set-up; fork and exit carry process_ns instead"
    ),
}

#: Coarse keys of the JSON schema, each the sum of the fine keys listed.
AGGREGATES: dict[str, tuple[str, ...]] = {
    "pte_rmw": ("pte_xchg", "pte_cmpxchg", "pte_bitop"),
    "tlbi_page": ("tlbi_page_bcast", "tlbi_page_local"),
    "tlbi_range": ("tlbi_range_bcast", "tlbi_range_local", "invlpgb"),
    "tlbi_asid": ("tlbi_asid_bcast", "tlbi_asid_local", "tlbi_all_bcast", "tlbi_all_local", "invlpgb_pcid"),
    "tlbi_bcast": (
        "tlbi_page_bcast",
        "tlbi_range_bcast",
        "tlbi_asid_bcast",
        "tlbi_all_bcast",
        "invlpgb",
        "invlpgb_pcid",
    ),
    "tlbi_local": ("tlbi_page_local", "tlbi_range_local", "tlbi_asid_local", "tlbi_all_local"),
    "dsb": ("dsb_ishst", "dsb_ish", "dsb_nshst", "dsb_nsh"),
}

#: The keys every ``totals`` object of the JSON schema carries (0 when absent).
SCHEMA_KEYS: tuple[str, ...] = (
    "pte_read",
    "pte_write",
    "pte_rmw",
    "tlbi_page",
    "tlbi_range",
    "tlbi_asid",
    "dsb",
    "ipi",
    "folio_ref",
    "mapcount",
    "anon_exclusive",
    "page_copy",
    "pgtable_alloc",
)

PHASES = (
    "setup",
    "populate",
    "fork_parent",
    "fork_child",
    "exit",
    "munmap",
    "madvise",
    "mprotect",
    "mremap",
    "fault",
    "access",
)

Stack = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One executed primitive, in order, for ``ptesim trace``."""

    seq: int
    prim: str
    phase: str
    stack: Stack
    detail: str


class EventSink:
    """Counts primitives by (primitive, phase, call stack); optionally keeps an ordered trace."""

    def __init__(self, *, trace_limit: int = 0) -> None:
        #: Counts by (primitive, phase, call-stack id); :meth:`stack_of` turns an id into the chain.
        self.counts: Counter[tuple[str, str, int]] = Counter()
        #: The current call stack, as an interned id (0 is the empty stack).
        self.stack: int = 0
        self._frames: list[Stack] = [()]
        self._children: dict[tuple[int, str], int] = {}
        self.op: str = "setup"
        self.child_mm: object | None = None
        self.trace_limit = trace_limit
        self.trace: list[TraceRecord] = []
        self._seq = 0

    # -- the operation being executed ------------------------------------------------------
    def phase_for(self, mm: object | None) -> str:
        """Phase of an event: during fork, work on the child's mm (or for its new mappings) is
        ``fork_child`` and everything else ``fork_parent``; otherwise the current operation."""
        if self.op == "fork":
            return "fork_child" if mm is not None and mm is self.child_mm else "fork_parent"
        return self.op

    @contextmanager
    def operation(self, op: str, child_mm: object | None = None) -> Iterator[None]:
        """Attribute everything emitted inside to ``op`` (and activate this sink)."""
        saved = (self.op, self.child_mm)
        self.op, self.child_mm = op, child_mm
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            self.op, self.child_mm = saved

    @contextmanager
    def active(self) -> Iterator[None]:
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)

    # -- call stacks ---------------------------------------------------------------------------
    def push(self, parent: int, name: str) -> int:
        """The id of stack ``parent`` + ``name`` (interned: the hot path hashes an int and a
        string, never a tuple of frames)."""
        key = (parent, name)
        sid = self._children.get(key)
        if sid is None:
            sid = len(self._frames)
            self._frames.append((*self._frames[parent], name))
            self._children[key] = sid
        return sid

    def stack_of(self, sid: int) -> Stack:
        """The chain of kernel functions, outermost first, of stack id ``sid``."""
        return self._frames[sid]

    @property
    def current_stack(self) -> Stack:
        return self._frames[self.stack]

    # -- recording ---------------------------------------------------------------------------
    def record(self, prim: str, n: int, mm: object | None, detail: str) -> None:
        phase = self.phase_for(mm)
        self.counts[(prim, phase, self.stack)] += n
        if self.trace_limit:
            self.append_trace(prim, n, phase, detail)

    def append_trace(self, prim: str, n: int, phase: str, detail: str) -> None:
        for _ in range(n):
            if len(self.trace) >= self.trace_limit:
                return
            self._seq += 1
            self.trace.append(TraceRecord(self._seq, prim, phase, self._frames[self.stack], detail))

    def reset(self) -> None:
        self.counts.clear()
        self.trace.clear()
        self._seq = 0

    # -- views -------------------------------------------------------------------------------
    def totals(self, phases: tuple[str, ...] | None = None) -> Counter[str]:
        out: Counter[str] = Counter()
        for (prim, phase, _), n in self.counts.items():
            if phases is None or phase in phases:
                out[prim] += n
        return out

    def by_phase(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for (prim, phase, _), n in self.counts.items():
            out.setdefault(phase, Counter())[prim] += n
        return out

    def by_site(self, phases: tuple[str, ...] | None = None) -> dict[str, Counter[str]]:
        """Counts by the innermost kernel function that executed the primitive."""
        out: dict[str, Counter[str]] = {}
        for (prim, phase, sid), n in self.counts.items():
            if phases is None or phase in phases:
                stack = self._frames[sid]
                site = stack[-1] if stack else "<user>"
                out.setdefault(site, Counter())[prim] += n
        return out

    def by_stack(self, phases: tuple[str, ...] | None = None) -> dict[Stack, Counter[str]]:
        out: dict[Stack, Counter[str]] = {}
        for (prim, phase, sid), n in self.counts.items():
            if phases is None or phase in phases:
                out.setdefault(self._frames[sid], Counter())[prim] += n
        return out

    def full_counts(self) -> Counter[tuple[str, str, Stack]]:
        """Every count under its (primitive, phase, call chain) key: what two runs must agree on."""
        out: Counter[tuple[str, str, Stack]] = Counter()
        for (prim, phase, sid), n in self.counts.items():
            if n:
                out[(prim, phase, self._frames[sid])] += n
        return out


def with_aggregates(counts: Mapping[str, int | float]) -> dict[str, int | float]:
    """Fine counts plus the coarse keys of :data:`AGGREGATES` and every :data:`SCHEMA_KEYS` key."""
    out: dict[str, int | float] = {k: counts.get(k, 0) for k in SCHEMA_KEYS}
    for k, v in counts.items():
        out[k] = v
    for coarse, parts in AGGREGATES.items():
        out[coarse] = sum(counts.get(p, 0) for p in parts)
    return out


_ACTIVE: contextvars.ContextVar[EventSink | None] = contextvars.ContextVar("ptesim_event_sink", default=None)


def current_sink() -> EventSink:
    sink = _ACTIVE.get()
    if sink is None:
        raise RuntimeError("a model primitive ran outside an operation: no event sink is active")
    return sink


def emit(prim: str, n: int = 1, mm: object | None = None, detail: str = "") -> None:
    """Record ``n`` executions of primitive ``prim`` in the active sink.

    This is the hottest function of the model, so :meth:`EventSink.record` is inlined here.
    """
    sink = _ACTIVE.get()
    if sink is None:
        raise RuntimeError("a model primitive ran outside an operation: no event sink is active")
    if not n:
        return
    op = sink.op
    if op == "fork":
        op = "fork_child" if mm is not None and mm is sink.child_mm else "fork_parent"
    sink.counts[(prim, op, sink.stack)] += n
    if sink.trace_limit:
        sink.append_trace(prim, n, op, detail)


P = ParamSpec("P")
R = TypeVar("R")


def kfunc(fn: Callable[P, R]) -> Callable[P, R]:
    """Mark a model function as a kernel function: it appears in the call stack of every
    primitive it (transitively) executes, under its own name."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        sink = _ACTIVE.get()
        if sink is None:
            return fn(*args, **kwargs)
        saved = sink.stack
        sid = sink._children.get((saved, name))
        sink.stack = sink.push(saved, name) if sid is None else sid
        try:
            return fn(*args, **kwargs)
        finally:
            sink.stack = saved

    return wrapper


def known_primitive(name: str) -> bool:
    return name in PRIMITIVES or name in AGGREGATES


__all__ = [
    "AGGREGATES",
    "PHASES",
    "PRIMITIVES",
    "SCHEMA_KEYS",
    "EventSink",
    "TraceRecord",
    "current_sink",
    "emit",
    "kfunc",
    "known_primitive",
    "with_aggregates",
]
