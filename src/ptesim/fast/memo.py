"""Memoised execution of the per-table kernel functions (the fast engine).

``copy_pte_range`` (fork), ``zap_pte_range`` (exit, munmap, MADV_DONTNEED) and ``change_pte_range``
(mprotect) each work on one PTE table. :class:`FastEngine` computes, before each call, a *key*: the
table's entries with every PFN replaced by (folio ordinal, page offset), the complete state of every
folio those entries map (in the order they first appear), and the context the function can read
(operation and phase, call chain, executing CPU, the VMAs' flags, the mms' pin/dead/cpumask/ASID
state, the gather's fields, how much of the upper page-table levels exists). Two tables with equal
keys are the same input up to a bijection between their folios.

The first table of each key runs the reference function while the engine records its effects: the
primitives it emitted (by primitive, phase and call-chain id), the table entries and folio fields
after it, the RSS and page-table counter deltas and, for a zap, the pages it queued in the gather.
The record is *replayable* only if nothing else changed: no folio allocated or freed, no TLB entry
dropped, no gather flush, no folio data written, no new folio reached.  Every later table with the
same key gets the record applied through the folio bijection instead of running the code.

What the engine knows of the kernel is limited to *where* state lives (the fields it snapshots)
and one fact about the gather: its batch pages affect a zap only through the return value of
``__tlb_remove_folio_pages`` (True: flush now), whose counts do not depend on them.  So a zap
record that did not flush queues its pages on replay through that very function (counts muted:
the record has them), and if the gather asks for a flush there the replay is undone and the
table runs the reference code.  A zap of a linear table over one run queues the run whole (one
gather entry, released by ``PageAllocator.put_run_refs``).  Uniform tables and their folios are
also held in compact form (linear tables, folio runs; see docs/design.md,
"Compact state"), expanded on the first access by anything else.  The
differential tests (tests/test_fast_engine.py) run every scenario, arch and preset of the test
matrix and random fuzz programs on both engines and compare counts and final state exactly.
"""

from __future__ import annotations

import functools
import operator
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ptesim.kernel.core import Kernel
    from ptesim.kernel.folio import Folio, FolioRun
    from ptesim.kernel.mm import MmStruct, Vma
    from ptesim.kernel.mmu_gather import MmuGather
    from ptesim.kernel.pgtable import PteTable

#: ``--engine`` values.
ENGINES = ("fast", "reference")

Rel = Any  # an entry: the raw value, or (prot bits, folio ordinal, page offset in the folio)
Key = tuple[Any, ...]

_PLAIN = (int, bool, str, float, type(None))
#: Folio fields that are not part of a folio's *state* for the key: its identity and contents.
_FOLIO_IDENTITY = ("pfn", "data")
#: Gather fields handled apart (owner, queued pages, slot count, delayed rmaps; the flush counter,
#: which no kernel function reads and a replayable record leaves unchanged).
_GATHER_APART = (
    "mm",
    "pages",
    "delayed_rmap",
    "delayed_rmaps",
    "batches",
    "active",
    "batch_count",
    "flushes",
)
#: Runs expanded within one operation before the engine tries to compact them again (memory bound).
_PENDING_MAX = 64
#: Gather fields that hold addresses (the range to flush).
_GATHER_RANGE = ("start", "end")


def _freeze(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, set | frozenset):
        return frozenset(v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _thaw_into(obj: Any, name: str, frozen: Any) -> None:
    cur = getattr(obj, name)
    if isinstance(cur, list):
        setattr(obj, name, list(frozen))
    elif isinstance(cur, set):
        setattr(obj, name, set(frozen))
    else:
        setattr(obj, name, frozen)


def _restore_gather(tlb: MmuGather, gather_after: tuple[Any, ...], base: int) -> None:
    """Set the gather's fields a record changed to what they were after it (a field recorded
    relative to the table base is moved to this table's)."""
    for n, (how, v) in gather_after:
        if how == "rel":
            setattr(tlb, n, base + v)
        else:
            _thaw_into(tlb, n, v)


@dataclass(slots=True)
class Template:
    """The recorded effect of one reference run on one table."""

    replayable: bool
    entries_after: tuple[Rel, ...] = ()
    dst_after: tuple[Rel, ...] | None = None
    folio_changes: tuple[tuple[tuple[str, str, Any], ...], ...] = ()
    rss: tuple[tuple[tuple[str, int], ...], ...] = ()
    nr_ptes: tuple[int, ...] = ()
    counts: Counter[tuple[str, str, int]] | None = None
    ret: int | None = None  # zap: where it stopped, relative to the table base
    queued: tuple[tuple[int, int], ...] = ()  # zap: (folio ordinal, nr) appended to the gather
    gather_after: tuple[Any, ...] = ()
    new_folios: tuple[tuple[tuple[str, str, Any], ...], ...] = ()  # populate: whole state
    new_offsets: tuple[int, ...] = ()  # populate: PFN of each new folio from the first one
    #: populate: the record in compact form (:class:`Linear`), False if it has none, None: not derived
    linear: Any = None


@dataclass(slots=True, frozen=True)
class _Recorded:
    """A counted reference run on one table: what it returned, the gather's flush count before
    it, and its record (None if the run changed something a table-local record cannot replay)."""

    ret: Any
    flushes_before: int
    template: Template | None


@dataclass(slots=True, frozen=True)
class ZapRun:
    """A zap record whose effect is the same on every folio of a linear table over one run: each
    folio queued once with ``nr`` references, the one change every folio got, the entries after."""

    nr: int
    change: tuple[tuple[str, str, Any], ...]
    entries_after: tuple[Rel, ...]
    #: the one value of every entry after it, if they are all equal (a full table emptied)
    fill: int | None = None


@dataclass(slots=True, frozen=True)
class Linear:
    """A record whose effect is the same on every folio of a linear table (see "Compact state"):
    the table bits after it (source and, for a copy, destination), the one change every folio got
    (or, for populate, every new folio's whole state), and the record's counters."""

    bits_after: int
    dst_bits: int
    change: tuple[tuple[str, str, Any], ...]
    order: int
    count: int
    rss: tuple[tuple[tuple[str, int], ...], ...]
    nr_ptes: tuple[int, ...]
    counts: Counter[tuple[str, str, int]]
    #: change: the gather fields the record left (as ``Template.gather_after``)
    gather: tuple[Any, ...] = ()


#: A table as a compact move reads it: (fill, lo, hi, pfn, bits): entries ``lo <= i < hi`` are
#: ``bits + (pfn + i - lo) * unit`` (consecutive PFNs, the same bits), every other one ``fill``
Desc = tuple[int, int, int, int, int]


@dataclass(slots=True, frozen=True)
class MoveRecord:
    """A ``move_ptes`` record replayable on descriptors: each table's form after it (``(fill, lo,
    hi)`` if it maps nothing, else ``(fill, lo, hi, bits, PFN of entry lo - the source's first
    moved-from PFN before)``) and its counts.  It changed no folio, counter, allocator or TLB."""

    src_after: tuple[int, ...]
    dst_after: tuple[int, ...]
    counts: Counter[tuple[str, str, int]]


@dataclass(slots=True, frozen=True)
class EmptyZap:
    """A ``zap_pte_range`` record of a table holding only one non-present value: it queued nothing
    and changed no entry, folio or counter; where it stopped (relative to the table) and the
    gather fields it left."""

    ret: int
    gather: tuple[Any, ...]
    counts: Counter[tuple[str, str, int]]


class _Lookup:
    """``page_folio.get`` that materialises a compact run on the way."""

    __slots__ = ("get",)

    def __init__(self, pages: Any) -> None:
        self.get = pages.pfn_to_folio


class FastEngine:
    """Per-machine memo of per-table kernel functions; see the module docstring."""

    def __init__(self, kernel: Kernel) -> None:
        from ptesim.kernel.folio import Folio

        self.kernel = kernel
        self.templates: dict[Key, Template] = {}
        self.stats: Counter[str] = Counter()
        arch = kernel.arch
        #: inline PFN arithmetic when the arch uses the generic encoding
        from ptesim.arch.base import Arch

        cls = type(arch)
        generic = cls.pte_pfn is Arch.pte_pfn and cls.pte_present is Arch.pte_present
        #: (present bit, PFN mask, PFN shift) when the arch uses the generic helpers, else zeros
        self._inline = (arch.PRESENT, arch.pfn_mask, arch.PFN_SHIFT) if generic else (0, 0, 0)
        #: one PFN in an entry's raw value
        self._unit = arch.pfn_pte(1, 0) - arch.pfn_pte(0, 0)
        #: folios of equal tables sit at the same PFN offset within a PMD-sized physical block
        self._align = arch.geometry.ptrs_per_pte
        sample = Folio(0, 1)
        fields = tuple(f for f in Folio.__slots__ if f not in _FOLIO_IDENTITY)
        lists = tuple(f for f in fields if isinstance(getattr(sample, f), list))
        scalars = tuple(f for f in fields if f not in lists)
        #: scalar fields first, then list fields: the order of a folio state tuple
        self._folio_fields = scalars + lists
        self._list_fields = frozenset(lists)
        self._get_scalars = operator.attrgetter(*scalars, *scalars[:1])  # always a tuple
        self._get_lists = operator.attrgetter(*lists, *lists[:1])
        self._n_scalars = len(scalars)
        self._n_lists = len(lists)
        self._generic_folio = any(
            not isinstance(getattr(sample, f), _PLAIN) and f not in self._list_fields for f in fields
        )
        g = arch.geometry
        self._span = g.pmd_size
        self._levels = g.levels
        self._n = g.ptrs_per_pte
        #: records by compact key: a copy's compact form (False: it has none), a zap's record
        self.linear: dict[Key, Linear | Template | bool] = {}
        #: move_ptes records and zaps of emptied tables, by compact key (False: none replayable)
        self.window_records: dict[Key, MoveRecord | EmptyZap | bool] = {}
        #: destination tables a compact move left linear, in the order they filled up
        self._moved: list[PteTable] = []
        #: tables turned back into lists, and tables/PFN blocks a reference run left in object form:
        #: candidates for :meth:`compact_pending`
        self.materialised_tables: list[PteTable] = []
        self._pending_blocks: set[int] = set()
        kernel.pages.run_span = self._n
        #: counts of compact replays not yet added: id(record) -> [record, counter, times]
        self._owed: dict[int, list[Any]] = {}
        self._scratch: Counter[tuple[str, str, int]] = Counter()
        import ptesim.kernel.mmu_gather as gather

        #: the gather's own queueing function (a dunder name: not importable by name in a class)
        self._tlb_remove_folio_pages = gather.__dict__["__tlb_remove_folio_pages"]
        #: the record the last per-table copy used, and its folios (for the compact form)
        self._last: tuple[Template | None, list[Folio]] = (None, [])

    # ---- applicability ------------------------------------------------------------------------
    def usable(self) -> bool:
        """An ordered trace needs every primitive executed in order: then nothing is replayed."""
        return not self.kernel.sink.trace_limit

    # ---- relative form ------------------------------------------------------------------------
    def _relative(self, entries: list[int], folios: list[Folio], index: dict[int, int]) -> tuple[Rel, ...]:
        """The entries with each mapped folio's PFN taken out: ``(entry - folio PFN field, folio
        ordinal)``; new folios are appended to ``folios`` (and ``index``, by id) in order of first
        appearance.  Entries that map no folio stay raw integers."""
        pages = self.kernel.pages
        page_folio = pages._page_folio if not pages.runs else _Lookup(pages)
        arch = self.kernel.arch
        present = arch.pte_present
        pte_pfn = arch.pte_pfn
        unit = self._unit
        bit, mask, shift = self._inline
        out: list[Rel] = []
        append = out.append
        for e in entries:
            if not e or not (e & bit if bit else present(e)):
                append(e)
                continue
            f = page_folio.get((e & mask) >> shift if bit else pte_pfn(e))
            if f is None:
                append(e)
                continue
            k = index.get(id(f))
            if k is None:
                k = len(folios)
                index[id(f)] = k
                folios.append(f)
            append((e - f.pfn * unit, k))
        return tuple(out)

    def _absolute(self, rel: tuple[Rel, ...], folios: list[Folio]) -> list[int]:
        unit = self._unit
        return [r if type(r) is int else r[0] + folios[r[1]].pfn * unit for r in rel]

    def _translatable(self, rel: tuple[Rel, ...], folios: list[Folio]) -> bool:
        """Whether moving every folio by a multiple of the PMD alignment moves each entry's PFN by
        exactly that much (the arch's encoding is linear in the PFN field for these entries)."""
        pte_pfn = self.kernel.arch.pte_pfn
        step = self._align * self._unit
        for r in rel:
            if type(r) is not int:
                e = r[0] + folios[r[1]].pfn * self._unit
                if pte_pfn(e + step) != pte_pfn(e) + self._align:
                    return False
        return True

    def _folio_state(self, f: Folio) -> tuple[Any, ...]:
        if self._generic_folio:
            return (*(_freeze(getattr(f, n)) for n in self._folio_fields), f.pfn % self._align)
        return (
            self._get_scalars(f)[: self._n_scalars]
            + tuple(map(tuple, self._get_lists(f)[: self._n_lists]))
            + (f.pfn % self._align,)
        )

    def _folio_changes(
        self, before: tuple[Any, ...], after: tuple[Any, ...]
    ) -> tuple[tuple[str, str, Any], ...]:
        """The fields a run changed: (name, is a list, frozen value after)."""
        return tuple(
            (n, "list" if n in self._list_fields else "plain" if isinstance(a, _PLAIN) else "other", a)
            for n, b, a in zip(self._folio_fields, before[:-1], after[:-1], strict=True)
            if a != b
        )

    @staticmethod
    def _apply_folio_changes(f: Folio, changes: tuple[tuple[str, str, Any], ...]) -> None:
        for n, kind, v in changes:
            if kind == "plain":
                setattr(f, n, v)
            elif kind == "list":
                setattr(f, n, list(v))
            else:
                _thaw_into(f, n, v)

    # ---- context --------------------------------------------------------------------------------
    def _mm_key(self, mm: MmStruct) -> Key:
        sink = self.kernel.sink
        return (
            mm.has_pinned,
            mm.dead,
            frozenset(mm.cpumask),
            tuple(c.current_asid == mm.asid for c in self.kernel.hw.cpus),
            mm is sink.child_mm,
        )

    def _vma_key(self, vma: Vma, base: int) -> Key:
        return (
            vma.flags,
            vma.page_prot,
            vma.anon_vma,
            max(vma.start - base, -1),
            min(vma.end - base, self._span + 1),
        )

    def _depth(self, mm: MmStruct, addr: int) -> int:
        """How many levels of upper tables exist above the PTE table for ``addr``."""
        g = mm.kernel.arch.geometry
        table: Any = mm.pgd
        depth = 0
        for level in range(self._levels - 2):
            table = table.entries.get(g.index(level, addr))
            if table is None:
                break
            depth += 1
        return depth

    def _fingerprint(self) -> Key:
        """State a replayable run must leave alone: the allocator and every TLB."""
        k = self.kernel
        pages = k.pages
        return (
            pages.allocated,
            pages._next_pfn,
            sum(len(v) for v in pages._free.values()),
            sum(len(c.tlb) for c in k.hw.cpus),
        )

    def _gather_key(self, tlb: MmuGather, base: int) -> Key:
        """The gather's fields.  Outside a full-mm gather the flush range [start, end) is taken
        relative to the table: a bound below the table is -1 and one above it ``span + 1`` (the
        zap only widens the range by addresses inside the table, so only the side matters)."""
        out = []
        for n, v in sorted(vars(tlb).items()):
            if n in _GATHER_APART:
                continue
            if n in _GATHER_RANGE and not tlb.fullmm:
                v = min(max(v - base, -1), self._span + 1)
            out.append((n, _freeze(v)))
        return tuple(out)

    def _gather_after(self, tlb: MmuGather, before: dict[str, Any], base: int) -> Key:
        """The fields a zap left: range bounds it moved relative to the table, others as values."""
        out = []
        for n, v in sorted(vars(tlb).items()):
            if n in _GATHER_APART:
                continue
            if n in _GATHER_RANGE and not tlb.fullmm:
                if v != before[n]:
                    out.append((n, ("rel", v - base)))
                continue
            out.append((n, ("val", _freeze(v))))
        return tuple(out)

    # ---- compact state ----------------------------------------------------------------------------
    def _pfn(self, e: int) -> int:
        bit, mask, shift = self._inline
        return (e & mask) >> shift if bit else self.kernel.arch.pte_pfn(e)

    def _linear_src(self, tab: PteTable) -> tuple[FolioRun, int] | None:
        """(run, bits) when ``tab`` is a linear table mapping exactly one compact run."""
        lin = tab.linear
        if lin is None:
            return None
        first, step, n = lin
        if step != self._unit or n != self._n:
            return None
        pfn = self._pfn(first)
        run = self.kernel.pages.runs.get(pfn)
        if run is None or run.count << run.order != n:
            return None
        return run, first - pfn * step

    def _linear_bits(self, rel: tuple[Rel, ...] | None, nr: int) -> int | None:
        """The bits ``b`` if ``rel`` is the relative form of a linear table over folios of ``nr``
        pages in address order (entry i = ``(b + (i % nr) * unit, i // nr)``), else None."""
        if rel is None or len(rel) != self._n or type(rel[0]) is int:
            return None
        b: int = rel[0][0]
        u = self._unit
        if rel != tuple((b + (i % nr) * u, i // nr) for i in range(self._n)):
            return None
        return b

    def _derive_copy(
        self, tpl: Template | None, folios: list[Folio], run_count: int, order: int
    ) -> Linear | bool:
        """The compact form of a copy record taken on a linear table: same bits everywhere after
        it, the same change to every folio."""
        if tpl is None or not tpl.replayable or len(folios) != run_count or tpl.counts is None:
            return False
        nr = 1 << order
        src = self._linear_bits(tpl.entries_after, nr)
        dst = self._linear_bits(tpl.dst_after, nr)
        ch = tpl.folio_changes
        if src is None or dst is None or any(c != ch[0] for c in ch):
            return False
        return Linear(
            src, dst, ch[0], order, run_count, tuple(tuple(r) for r in tpl.rss), tpl.nr_ptes, tpl.counts
        )

    def _derive_populate(self, tpl: Template) -> Linear | bool:
        """The compact form of a populate record: one table of new folios of one order, placed in
        address order at consecutive PFNs, all in the same state."""
        if not tpl.replayable or tpl.folio_changes or not tpl.queued or tpl.counts is None:
            return False
        order = tpl.queued[0][1]
        nr = 1 << order
        count = len(tpl.queued)
        bits = self._linear_bits(tpl.entries_after, nr)
        if (
            bits is None
            or count * nr != self._n
            or tpl.queued != tuple((j, order) for j in range(count))
            or tpl.new_offsets != tuple(j * nr for j in range(count))
            or any(st != tpl.new_folios[0] for st in tpl.new_folios)
        ):
            return False
        return Linear(
            bits,
            0,
            tpl.new_folios[0],
            order,
            count,
            tuple(tuple(r) for r in tpl.rss),
            tpl.nr_ptes,
            tpl.counts,
        )

    def _note(self, tables: tuple[Any, ...], folios: list[Folio]) -> None:
        """Tables and folio blocks a reference run or a per-folio replay left in object form."""
        self.materialised_tables.extend(t for t in tables if hasattr(t, "make_linear"))
        if folios:
            self._pending_blocks.add(folios[0].pfn)

    def compact_pending(self, final: bool = True) -> None:
        """Give tables and folios left in object form their compact form again where they are
        uniform and nothing outside the allocator (a gather, a pin, a caller) holds them.  Called
        at the end of each operation (``final``), and within one when many runs were expanded."""
        self.settle()
        if not self.usable():
            return
        pages = self.kernel.pages
        blocks = self._pending_blocks
        if pages.materialised:
            self.stats["expanded_runs"] += len(pages.materialised)
            blocks.update(pages.materialised)
            pages.materialised = []
        kept: set[int] = set()
        for b in blocks:
            if not self._compact_run(b) and not final:
                kept.add(b)
        self._pending_blocks = kept
        if final:
            self._realign_moved()
            tables, self.materialised_tables = self.materialised_tables, []
            for t in tables:
                self._compact_table(t)

    def _compact_table(self, t: PteTable) -> bool:
        if t.linear is not None or t.window is not None or t.mm.dead:
            return False
        ents = t.entries
        e0 = ents[0]
        bit = self._inline[0]
        if not e0 or not (e0 & bit if bit else self.kernel.arch.pte_present(e0)):
            return False
        u, n = self._unit, len(ents)
        if ents != list(range(e0, e0 + n * u, u)) or self._pfn(ents[-1]) != self._pfn(e0) + n - 1:
            return False
        # the table's own slot, the local name and getrefcount's argument: nobody else holds the list
        if sys.getrefcount(ents) > 3:
            return False
        t.make_linear(e0, u, n)
        return True

    def _compact_run(self, block: int) -> bool:
        """Make the ``ptrs_per_pte`` pages from PFN ``block`` one run, if their folios allow."""
        pages = self.kernel.pages
        by_pfn = pages._by_pfn
        f0 = by_pfn.get(block)
        if f0 is None or f0.freed or f0.zero_page:
            return False
        if block // pages.run_span in pages._run_blocks:
            # a shorter run (a part mremap split off) starts in this block: one run per block
            return False
        nr = f0.nr_pages
        n = self._n
        if n % nr:
            return False
        fs = [by_pfn.get(p) for p in range(block, block + n, nr)]
        if None in fs:
            return False
        state = self._folio_state(f0)[:-1]
        uniform, rule = _data_rule(fs, nr)  # type: ignore[arg-type]
        if not uniform:
            return False
        # by_pfn, one page_folio slot per page, the list ``fs``, the loop name, getrefcount's argument
        refs = nr + 4
        for f in fs:
            assert f is not None
            if (
                f.order != f0.order
                or self._folio_state(f)[:-1] != state
                or sys.getrefcount(f) > refs + (f is f0)
            ):
                return False
        page_folio = pages._page_folio
        for p in range(block, block + n, nr):
            del by_pfn[p]
        for p in range(block, block + n):
            del page_folio[p]
        from ptesim.kernel.folio import FolioRun

        pages.add_run(FolioRun(block, f0.order, n // nr, f0, rule))
        return True

    # ---- the two memoised functions ------------------------------------------------------------
    def run(self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if not self.usable():
            return fn(*args)
        if kind == "copy":
            return self._copy(fn, *args)
        if kind == "zap":
            return self._zap(fn, *args)
        if kind == "populate":
            return self._populate(fn, *args)
        if kind == "change":
            return self._change(fn, *args)
        if kind == "move":
            return self._move(fn, *args)
        raise ValueError(kind)

    def _full_state(self, f: Folio) -> tuple[tuple[str, str, Any], ...]:
        """Every field of a folio, contents included, as changes to apply to a fresh one."""
        out = []
        for n in (*self._folio_fields, "data"):
            v = getattr(f, n)
            kind = "list" if isinstance(v, list) else "plain" if isinstance(v, _PLAIN) else "other"
            out.append((n, kind, _freeze(v)))
        return tuple(out)

    def _populate(self, fn: Callable[..., Any], vma: Vma, start: int, end: int) -> Any:
        """Write faults over one PMD range: the record also holds the folios the faults allocated
        (their orders in allocation order and their whole state); a replay allocates the same
        orders through the reference allocator, which with empty free lists and the same PFN
        alignment places them the same way relative to each other."""
        from ptesim.kernel.pgtable import PteTable

        mm = vma.mm
        kernel = self.kernel
        pages = kernel.pages
        base = start & ~(self._span - 1)
        tab = mm.pmd_entry(start)
        if (
            isinstance(tab, int)
            or vma.file is not None
            or any(pages._free.values())
            or (tab is not None and not isinstance(tab, PteTable))
        ):
            self.stats["reference"] += 1
            return fn(vma, start, end)
        sink = kernel.sink
        folios: list[Folio] = []
        index: dict[int, int] = {}
        rel = self._relative(tab.entries, folios, index) if tab is not None else None
        thp = kernel.thp
        key = (
            "populate",
            *self._where(start, end, base),
            self._vma_key(vma, base),
            self._mm_key(mm),
            self._depth(mm, start),
            thp.top,
            tuple(sorted(thp.per_order.items())),
            pages._next_pfn % self._align,
            rel,
            tuple(self._folio_state(f) for f in folios),
        )
        tpl = self.templates.get(key)
        if tpl is None:
            self.stats["recorded"] += 1
            states = key[-1]
            mm_before = self._mm_key(mm)
            tlb_before = sum(len(c.tlb) for c in kernel.hw.cpus)
            allocated = pages.allocated
            rss_before = Counter(mm.rss)
            nr_before = mm.nr_ptes
            data_before = [list(f.data) for f in folios]
            n_old = len(folios)
            ret, counts = self._recorded(fn, vma, start, end)
            tab_after = mm.pmd_entry(start)
            after = (
                self._relative(tab_after.entries, folios, index) if isinstance(tab_after, PteTable) else None
            )
            new = folios[n_old:]
            by_pfn = sorted(range(n_old, len(folios)), key=lambda i: folios[i].pfn)
            ok = (
                ret is None
                and after is not None
                and not any(pages._free.values())
                and pages.allocated - allocated == len(new)
                and sum(len(c.tlb) for c in kernel.hw.cpus) == tlb_before
                and self._mm_key(mm) == mm_before
                and all(list(f.data) == d for f, d in zip(folios, data_before, strict=False))
                and self._depth(mm, start) == self._levels - 2
                and self._translatable(after, folios)
            )
            tpl = Template(replayable=False)
            if ok:
                assert after is not None
                tpl = Template(
                    replayable=True,
                    entries_after=after,
                    folio_changes=tuple(
                        self._folio_changes(b, self._folio_state(f))
                        for f, b in zip(folios[:n_old], states, strict=True)
                    ),
                    rss=(_delta(rss_before, mm.rss),),
                    nr_ptes=(mm.nr_ptes - nr_before,),
                    counts=counts,
                    queued=tuple((i, folios[i].order) for i in by_pfn),
                    new_folios=tuple(self._full_state(folios[i]) for i in by_pfn),
                    new_offsets=tuple(folios[i].pfn - folios[by_pfn[0]].pfn for i in by_pfn)
                    if by_pfn
                    else (),
                )
            self.templates[key] = tpl
            self._note((tab_after,), folios)
            return ret
        if not tpl.replayable:
            self.stats["reference"] += 1
            return fn(vma, start, end)
        assert tpl.counts is not None
        had_table = tab is not None
        if not had_table:
            if tpl.linear is None:
                tpl.linear = self._derive_populate(tpl)
            lt = tpl.linear
            if type(lt) is Linear:
                nr = 1 << lt.order
                return self._populate_linear(lt, mm, start, (pages._next_pfn + nr - 1) & ~(nr - 1))
        self.stats["replayed"] += 1
        if not had_table:
            self._muted(mm.pte_alloc, start)
        tab = mm.pmd_entry(start)
        assert isinstance(tab, PteTable)
        ordered: list[Any] = folios + [None] * len(tpl.queued)
        first_pfn = 0
        for j, ((ordinal, order), state) in enumerate(zip(tpl.queued, tpl.new_folios, strict=True)):
            f = self._muted(pages.folio_alloc, order, mm)
            if j == 0:
                first_pfn = f.pfn
            assert f.pfn - first_pfn == tpl.new_offsets[j], "allocator placed a replayed folio differently"
            self._apply_folio_changes(f, state)
            ordered[ordinal] = f
        tab.entries[:] = self._absolute(tpl.entries_after, ordered)
        for f, ch in zip(folios, tpl.folio_changes, strict=True):
            if ch:
                self._apply_folio_changes(f, ch)
        mm.rss.update(dict(tpl.rss[0]))
        mm.nr_ptes += tpl.nr_ptes[0] - (1 if had_table is False else 0)
        sink.counts.update(tpl.counts)
        self._note((tab,), [f for f in ordered if f is not None])
        return None

    def _populate_linear(self, lt: Linear, mm: MmStruct, start: int, pfn0: int) -> None:
        """A populate record replayed as one compact run of new folios and one linear table."""
        from ptesim.kernel.folio import Folio
        from ptesim.kernel.pgtable import PteTable

        self.stats["linear"] += 1
        self._muted(mm.pte_alloc, start)
        tab = mm.pmd_entry(start)
        assert isinstance(tab, PteTable)
        proto = Folio(pfn0, lt.order)
        self._apply_folio_changes(proto, lt.change)
        self.kernel.pages.alloc_run(pfn0, lt.order, lt.count, proto)
        u = self._unit
        tab.make_linear(lt.bits_after + pfn0 * u, u, self._n)
        rss = mm.rss
        for k, v in lt.rss[0]:
            rss[k] += v
        mm.nr_ptes += lt.nr_ptes[0] - 1  # pte_alloc above counted the new table once
        self._owe(self.kernel.sink.counts, lt)

    def _owe(
        self, counts: Counter[tuple[str, str, int]], lt: Linear | Template | MoveRecord | EmptyZap
    ) -> None:
        """Add a record's counts to ``counts`` once more: summed up per record and added at the end
        of the operation (:meth:`settle`), since nothing reads the counts before then."""
        owed = self._owed.get(id(lt))
        if owed is None or owed[1] is not counts:
            self.settle()
            self._owed[id(lt)] = [lt, counts, 1]
        else:
            owed[2] += 1

    def settle(self) -> None:
        """Add the counts of every compact replay so far to the counters they belong to."""
        for lt, counts, times in self._owed.values():
            for k, v in lt.counts.items():
                counts[k] += v * times
        self._owed.clear()

    def _muted(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run reference code whose counts are already in a record."""
        sink = self.kernel.sink
        saved = sink.counts
        sink.counts = Counter()
        try:
            return fn(*args)
        finally:
            sink.counts = saved

    def _recorded(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, Counter[tuple[str, str, int]]]:
        sink = self.kernel.sink
        saved = sink.counts
        sink.counts = Counter()
        try:
            ret = fn(*args)
            got = sink.counts
        finally:
            sink.counts = saved
        saved.update(got)
        return ret, got

    def _copy(self, fn: Callable[..., Any], dst_vma: Vma, src_vma: Vma, addr: int, end: int) -> Any:
        from ptesim.kernel.pgtable import PteTable

        src_mm, dst_mm = src_vma.mm, dst_vma.mm
        base = addr & ~(self._span - 1)
        src_tab = src_mm.pmd_entry(addr)
        if (
            not isinstance(src_tab, PteTable)
            or dst_mm.pmd_entry(addr) is not None
            or src_vma.file is not None
            or dst_vma.file is not None
        ):
            self.stats["reference"] += 1
            return fn(dst_vma, src_vma, addr, end)
        sink = self.kernel.sink
        hit = self._linear_src(src_tab)
        if hit is not None:
            run, bits = hit
            ckey = (
                *self._copy_context(src_vma, dst_vma, addr, end, base),
                bits,
                run.order,
                self._folio_state(run.proto),
            )
            lt = self.linear.get(ckey)
            if type(lt) is Linear:
                self.stats["linear"] += 1
                saved, sink.counts = sink.counts, self._scratch
                ptep = dst_mm.pte_alloc(addr)
                sink.counts = saved
                self._scratch.clear()
                assert ptep is not None
                u, n, pfn = self._unit, self._n, run.pfn
                ptep.table.make_linear(lt.dst_bits + pfn * u, u, n)
                if lt.bits_after != bits:
                    src_tab.linear = (lt.bits_after + pfn * u, u, n)
                if lt.change:
                    self._apply_folio_changes(run.proto, lt.change)
                rss = src_mm.rss
                for k, v in lt.rss[0]:
                    rss[k] += v
                rss = dst_mm.rss
                for k, v in lt.rss[1]:
                    rss[k] += v
                src_mm.nr_ptes += lt.nr_ptes[0]
                dst_mm.nr_ptes += lt.nr_ptes[1] - 1  # pte_alloc above counted the new table once
                self._owe(saved, lt)
                return None
            count, order = run.count, run.order
            self.kernel.pages.materialise(run.pfn)
            ret = self._copy_table(fn, dst_vma, src_vma, addr, end, src_tab)
            if lt is None:
                tpl, folios = self._last
                self.linear[ckey] = self._derive_copy(tpl, folios, count, order)
            self._last = (None, [])
            return ret
        ret = self._copy_table(fn, dst_vma, src_vma, addr, end, src_tab)
        self._last = (None, [])  # hold no folio past the call
        return ret

    def _where(self, start: int, end: int, base: int) -> tuple[Any, ...]:
        """The part of every record's key that says where it runs: the operation and call chain (the
        events are counted under them), the CPU, and the range within the PTE table at ``base``."""
        sink = self.kernel.sink
        return (sink.op, sink.stack, self.kernel.hw.current, start - base, end - base)

    def _copy_context(self, src_vma: Vma, dst_vma: Vma, addr: int, end: int, base: int) -> tuple[Any, ...]:
        """What a ``copy_pte_range`` record depends on besides the source table's entries and their
        folios: the operation and call chain, the CPU, the range within the table, both VMAs and mms,
        and the child's page-table depth (whether its PTE table must be allocated)."""
        return (
            "copy",
            *self._where(addr, end, base),
            self._vma_key(src_vma, base),
            self._vma_key(dst_vma, base),
            self._mm_key(src_vma.mm),
            self._mm_key(dst_vma.mm),
            self._depth(dst_vma.mm, addr),
        )

    def _copy_table(
        self, fn: Callable[..., Any], dst_vma: Vma, src_vma: Vma, addr: int, end: int, src_tab: PteTable
    ) -> Any:
        """The per-table memo of ``copy_pte_range`` on a table in list form."""
        from ptesim.kernel.pgtable import PteTable

        src_mm, dst_mm = src_vma.mm, dst_vma.mm
        base = addr & ~(self._span - 1)
        sink = self.kernel.sink
        folios: list[Folio] = []
        index: dict[int, int] = {}
        rel = self._relative(src_tab.entries, folios, index)
        self._last = (None, folios)
        key = (
            *self._copy_context(src_vma, dst_vma, addr, end, base),
            rel,
            tuple(self._folio_state(f) for f in folios),
        )
        tpl = self.templates.get(key)
        if tpl is None:
            self.stats["recorded"] += 1
            states = key[-1]
            before = self._fingerprint()
            mm_before = (self._mm_key(src_mm), self._mm_key(dst_mm), src_mm.write_protect_seq)
            rss_before = (Counter(src_mm.rss), Counter(dst_mm.rss))
            nr_before = (src_mm.nr_ptes, dst_mm.nr_ptes)
            data_before = [list(f.data) for f in folios]
            ret, counts = self._recorded(fn, dst_vma, src_vma, addr, end)
            n_folios = len(folios)
            after = self._relative(src_tab.entries, folios, index)
            dst_tab = dst_mm.pmd_entry(addr)
            dst_after = (
                self._relative(dst_tab.entries, folios, index) if isinstance(dst_tab, PteTable) else None
            )
            ok = (
                ret is None
                and dst_after is not None
                and len(folios) == n_folios
                and self._fingerprint() == before
                and (self._mm_key(src_mm), self._mm_key(dst_mm), src_mm.write_protect_seq) == mm_before
                and all(list(f.data) == d for f, d in zip(folios, data_before, strict=True))
                and self._depth(dst_mm, addr) == self._levels - 2
                and self._translatable(after, folios)
                and self._translatable(dst_after, folios)
            )
            tpl = Template(replayable=False)
            if ok:
                tpl = Template(
                    replayable=True,
                    entries_after=after,
                    dst_after=dst_after,
                    folio_changes=tuple(
                        self._folio_changes(b, self._folio_state(f))
                        for f, b in zip(folios, states, strict=True)
                    ),
                    rss=(_delta(rss_before[0], src_mm.rss), _delta(rss_before[1], dst_mm.rss)),
                    nr_ptes=(src_mm.nr_ptes - nr_before[0], dst_mm.nr_ptes - nr_before[1]),
                    counts=counts,
                )
            self.templates[key] = tpl
            self._last = (tpl, folios)
            self._note((src_tab, dst_tab), folios)
            return ret
        self._note((src_tab,), folios)
        if not tpl.replayable:
            self.stats["reference"] += 1
            ret = fn(dst_vma, src_vma, addr, end)
            self._note((dst_mm.pmd_entry(addr),), [])
            return ret
        self._last = (tpl, folios)
        self.stats["replayed"] += 1
        assert tpl.dst_after is not None and tpl.counts is not None
        self._muted(dst_mm.pte_alloc, addr)
        dst_tab = dst_mm.pmd_entry(addr)
        assert isinstance(dst_tab, PteTable)
        dst_tab.entries[:] = self._absolute(tpl.dst_after, folios)
        self._note((dst_tab,), [])
        if tpl.entries_after != rel:
            src_tab.entries[:] = self._absolute(tpl.entries_after, folios)
        for f, ch in zip(folios, tpl.folio_changes, strict=True):
            if ch:
                self._apply_folio_changes(f, ch)
        src_mm.rss.update(dict(tpl.rss[0]))
        dst_mm.rss.update(dict(tpl.rss[1]))
        src_mm.nr_ptes += tpl.nr_ptes[0]
        dst_mm.nr_ptes += tpl.nr_ptes[1] - 1  # pte_alloc above counted the new table once
        sink.counts.update(tpl.counts)
        return None

    def _zap(self, fn: Callable[..., Any], tlb: MmuGather, vma: Vma, addr: int, end: int) -> Any:
        from ptesim.kernel.pgtable import PteTable

        mm = vma.mm
        base = addr & ~(self._span - 1)
        tab = mm.pmd_entry(addr)
        if not isinstance(tab, PteTable) or vma.file is not None or tlb.delayed_rmap:
            self.stats["reference"] += 1
            return fn(tlb, vma, addr, end)
        pages = self.kernel.pages
        if len(pages.materialised) + len(self._pending_blocks) > _PENDING_MAX:
            self.compact_pending(final=False)
        lin = tab.linear
        if lin is not None and not lin[1] and lin[2] == self._n and not self._present(lin[0]):
            return self._zap_empty(fn, tlb, vma, addr, end, tab, lin[0])
        hit = self._linear_src(tab)
        if hit is None:
            return self._zap_table(fn, tlb, vma, addr, end, tab)
        # a linear table over one run: the key without reading the entries (the record is the
        # one its list form gets, the run's folios in address order being its folio ordinals)
        run, bits = hit
        ckey = (*self._gather_context("zap", tlb, vma, addr, end, base), *self._run_key(run, bits))
        tpl = self.linear.get(ckey)
        if type(tpl) is Template and len(tpl.folio_changes) == run.count:
            if tpl.linear is None:
                tpl.linear = self._derive_zap(tpl, run.count)
            if type(tpl.linear) is ZapRun:
                ret = self._zap_run(tpl, tpl.linear, tlb, mm, tab, run, base)
                if ret is not None:
                    return ret
                self.stats["reference"] += 1
                return fn(tlb, vma, addr, end)
            start, stop, nr = run.pfn, run.end_pfn, 1 << run.order
            pages.materialise(start)
            by_pfn = pages._by_pfn
            folios = [by_pfn[p] for p in range(start, stop, nr)]
            ret = self._zap_replay(tpl, tlb, mm, tab, folios, None, base)
            if ret is not None:
                return ret
            self.stats["reference"] += 1
            return fn(tlb, vma, addr, end)
        ret = self._zap_table(fn, tlb, vma, addr, end, tab)
        tpl, _ = self._last
        self._last = (None, [])
        if tpl is not None and tpl.replayable:
            self.linear[ckey] = tpl
        return ret

    # ---- change_pte_range (mprotect) ------------------------------------------------------------
    def _change(self, fn: Callable[..., Any], tlb: MmuGather, vma: Vma, addr: int, end: int) -> Any:
        """``change_pte_range``: on a linear table over one run, the record of its list form
        replayed on the descriptors when it left the table linear over the same PFNs and made the
        same change to every folio; otherwise the per-table memo on the list form."""
        from ptesim.kernel.pgtable import PteTable

        mm = vma.mm
        tab = mm.pmd_entry(addr)
        if not isinstance(tab, PteTable) or vma.file is not None:
            self.stats["reference"] += 1
            return fn(tlb, vma, addr, end)
        base = addr & ~(self._span - 1)
        hit = self._linear_src(tab)
        if hit is None:
            return self._change_table(fn, tlb, vma, addr, end, tab)
        run, bits = hit
        ckey = (*self._gather_context("change", tlb, vma, addr, end, base), *self._run_key(run, bits))
        lt = self.linear.get(ckey)
        if type(lt) is Linear:
            self.stats["linear"] += 1
            self.stats["change_run"] += 1
            if lt.bits_after != bits:
                u = self._unit
                tab.linear = (lt.bits_after + run.pfn * u, u, self._n)
            if lt.change:
                self._apply_folio_changes(run.proto, lt.change)
            _restore_gather(tlb, lt.gather, base)
            self._owe(self.kernel.sink.counts, lt)
            return None
        count, order = run.count, run.order
        self.kernel.pages.materialise(run.pfn)
        ret = self._change_table(fn, tlb, vma, addr, end, tab)
        if lt is None:
            tpl, folios = self._last
            self.linear[ckey] = self._derive_change(tpl, folios, count, order)
        self._last = (None, [])
        return ret

    def _derive_change(
        self, tpl: Template | None, folios: list[Folio], count: int, order: int
    ) -> Linear | bool:
        """The compact form of a change record taken on a linear table over one run."""
        if tpl is None or not tpl.replayable or len(folios) != count or tpl.counts is None:
            return False
        bits = self._linear_bits(tpl.entries_after, 1 << order)
        ch = tpl.folio_changes
        if bits is None or any(c != ch[0] for c in ch) or any(v for _, v in tpl.rss[0]) or any(tpl.nr_ptes):
            return False
        return Linear(bits, 0, ch[0], order, count, tpl.rss, tpl.nr_ptes, tpl.counts, tpl.gather_after)

    def _record_gathered(
        self,
        fn: Callable[..., Any],
        tlb: MmuGather,
        vma: Vma,
        addr: int,
        end: int,
        tab: PteTable,
        folios: list[Folio],
        index: dict[int, int],
        states: tuple[Any, ...],
    ) -> _Recorded:
        """Run ``fn(tlb, vma, addr, end)`` on one table under a gather, counted, and make its
        record if the run changed nothing a table-local record cannot replay: no gather flush,
        no state outside the table, its folios and the mm (the template the zap and mprotect
        memos share; each adds its own conditions)."""
        mm = vma.mm
        base = addr & ~(self._span - 1)
        before = self._fingerprint()
        mm_before = self._mm_key(mm)
        rss_before = Counter(mm.rss)
        nr_before = mm.nr_ptes
        data_before = [list(f.data) for f in folios]
        gather_before = dict(vars(tlb))
        flushes_before = tlb.flushes
        ret, counts = self._recorded(fn, tlb, vma, addr, end)
        n_folios = len(folios)
        after = self._relative(tab.entries, folios, index)
        ok = (
            len(folios) == n_folios
            and tlb.flushes == flushes_before
            and self._fingerprint() == before
            and self._mm_key(mm) == mm_before
            and mm.pmd_entry(addr) is tab
            and self._translatable(after, folios)
            and all(list(f.data) == d for f, d in zip(folios, data_before, strict=True))
        )
        if not ok:
            return _Recorded(ret, flushes_before, None)
        return _Recorded(
            ret,
            flushes_before,
            Template(
                replayable=True,
                entries_after=after,
                folio_changes=tuple(
                    self._folio_changes(b, self._folio_state(f)) for f, b in zip(folios, states, strict=True)
                ),
                rss=(_delta(rss_before, mm.rss),),
                nr_ptes=(mm.nr_ptes - nr_before,),
                counts=counts,
                gather_after=self._gather_after(tlb, gather_before, base),
            ),
        )

    def _table_key(
        self, op: str, tlb: MmuGather, vma: Vma, addr: int, end: int, base: int, tab: PteTable
    ) -> tuple[tuple[Any, ...], list[Folio], dict[int, int], tuple[Rel, ...]]:
        """A zap or change record's key for a table in list form: the context, the entries
        relative to their folios and those folios' states; with the folios (in ordinal order),
        their index by id and the relative entries."""
        folios: list[Folio] = []
        index: dict[int, int] = {}
        rel = self._relative(tab.entries, folios, index)
        key = (
            *self._gather_context(op, tlb, vma, addr, end, base),
            rel,
            tuple(self._folio_state(f) for f in folios),
        )
        return key, folios, index, rel

    def _run_key(self, run: FolioRun, bits: int) -> tuple[Any, ...]:
        """The part of a linear table's record key its list form keys by entries and folio
        states: the entries' bits, the run's folio order and the state of its folios."""
        return (bits, run.order, self._folio_state(run.proto))

    def _gather_context(
        self, op: str, tlb: MmuGather, vma: Vma, addr: int, end: int, base: int
    ) -> tuple[Any, ...]:
        """What a ``zap_pte_range`` (``op`` "zap") or ``change_pte_range`` ("change") record
        depends on besides the table's entries and their folios: the operation and call chain, the
        CPU, the range within the table, the VMA (for a change, its new flags and protection), the
        mm and the state of the mmu_gather (its batch pages and pending flush range)."""
        return (
            op,
            *self._where(addr, end, base),
            self._vma_key(vma, base),
            self._mm_key(vma.mm),
            self._gather_key(tlb, base),
        )

    def _change_table(
        self, fn: Callable[..., Any], tlb: MmuGather, vma: Vma, addr: int, end: int, tab: PteTable
    ) -> Any:
        """The per-table memo of ``change_pte_range`` on a table in list form."""
        self._last = (None, [])
        base = addr & ~(self._span - 1)
        key, folios, index, rel = self._table_key("change", tlb, vma, addr, end, base, tab)
        tpl = self.templates.get(key)
        if tpl is not None:
            if not tpl.replayable:
                self.stats["reference"] += 1
                return fn(tlb, vma, addr, end)
            self.stats["replayed"] += 1
            assert tpl.counts is not None
            if tpl.entries_after != rel:
                tab.entries[:] = self._absolute(tpl.entries_after, folios)
            for f, ch in zip(folios, tpl.folio_changes, strict=True):
                if ch:
                    self._apply_folio_changes(f, ch)
            _restore_gather(tlb, tpl.gather_after, base)
            self.kernel.sink.counts.update(tpl.counts)
            self._last = (tpl, folios)
            self._note((tab,), folios)
            return None
        self.stats["recorded"] += 1
        n_pages = len(tlb.pages)
        rec = self._record_gathered(fn, tlb, vma, addr, end, tab, folios, index, key[-1])
        tpl = Template(replayable=False)
        if rec.ret is None and len(tlb.pages) == n_pages and rec.template is not None:
            tpl = rec.template
        ret = rec.ret
        self.templates[key] = tpl
        self._last = (tpl, folios)
        self._note((tab,), folios)
        return ret

    def _derive_zap(self, tpl: Template, count: int) -> ZapRun | bool:
        """The compact form of a zap record taken on a linear table over one run: every folio got
        the same change and was queued once with the same ``nr``, in address order, and no entry
        maps a folio after it (the table was cleared)."""
        ch = tpl.folio_changes
        if not tpl.replayable or not tpl.queued or tpl.counts is None or len(ch) != count:
            return False
        nr = tpl.queued[0][1]
        if (
            tpl.queued != tuple((j, nr) for j in range(count))
            or any(c != ch[0] for c in ch)
            or any(type(r) is not int for r in tpl.entries_after)
        ):
            return False
        after = tpl.entries_after
        full = len(after) == self._n and all(e == after[0] for e in after)
        return ZapRun(nr, ch[0], after, after[0] if full else None)

    def _queue_run(self, tlb: MmuGather, run: FolioRun, nr: int) -> bool:
        """Queue every folio of ``run`` (``nr`` references each) as one gather entry, with the
        batch accounting of as many calls of ``__tlb_remove_folio_pages`` (each takes one slot, two
        for a range; a batch page left with fewer than two free slots moves the gather on through
        ``tlb_next_batch``).  False, and the gather untouched, if one of those calls would have
        asked for a flush: that table runs the reference code."""
        from ptesim.kernel.mmu_gather import tlb_next_batch

        batches = tlb.batches
        n_batches = len(batches)
        nrs = [b.nr for b in batches]
        active, count = tlb.active, tlb.batch_count
        slots = 1 if nr == 1 else 2
        left = run.count
        while left:
            b = batches[tlb.active]
            # entries up to and including the one after which the batch has < 2 free slots
            fit = max(1, -(-(b.max - 1 - b.nr) // slots))
            if left < fit:
                b.nr += left * slots
                break
            b.nr += fit * slots
            left -= fit
            if not tlb_next_batch(tlb):
                del batches[n_batches:]
                for b, v in zip(batches, nrs, strict=True):
                    b.nr = v
                tlb.active, tlb.batch_count = active, count
                return False
        tlb.pages.append((run, nr))
        return True

    def _zap_run(
        self, tpl: Template, z: ZapRun, tlb: MmuGather, mm: MmStruct, tab: PteTable, run: FolioRun, base: int
    ) -> int | None:
        """Apply a zap record to a linear table over one run without expanding either: the run is
        queued whole in the gather (released as one entry at the flush, see
        ``PageAllocator.put_run_refs``), the one folio change goes to its prototype.  None (and
        nothing changed) if the gather must flush within the table."""
        assert tpl.ret is not None and tpl.counts is not None
        if tlb.free_before_flush or not self._queue_run(tlb, run, z.nr):
            return None
        self.stats["linear"] += 1
        self.stats["zap_run"] += 1
        if z.fill is not None:  # emptied: no list until something reads it
            tab.make_linear(z.fill, 0, self._n)
        else:
            tab.linear = None
            tab.entries = list(z.entries_after)
        if z.change:
            self._apply_folio_changes(run.proto, z.change)
        rss = mm.rss
        for k, v in tpl.rss[0]:
            rss[k] += v
        mm.nr_ptes += tpl.nr_ptes[0]
        _restore_gather(tlb, tpl.gather_after, base)
        self._owe(self.kernel.sink.counts, tpl)
        return base + tpl.ret

    def _zap_table(
        self, fn: Callable[..., Any], tlb: MmuGather, vma: Vma, addr: int, end: int, tab: PteTable
    ) -> Any:
        """The per-table memo of ``zap_pte_range`` on a table in list form."""
        self._last = (None, [])
        mm = vma.mm
        base = addr & ~(self._span - 1)
        if addr != base and tlb.flushes and not tlb.pages:
            # the rest of a table after a flush the full gather forced: where it starts depends on
            # how far the gather's batch pages got, so its key hardly ever recurs; a record kept
            # for it would only hold memory (two per flush point, thousands at 64G)
            self.stats["reference"] += 1
            return fn(tlb, vma, addr, end)
        key, folios, index, rel = self._table_key("zap", tlb, vma, addr, end, base, tab)
        tpl = self.templates.get(key)
        if tpl is not None:
            if tpl.replayable:
                self._last = (tpl, [])
                ret = self._zap_replay(tpl, tlb, mm, tab, folios, rel, base)
                if ret is not None:
                    return ret
            self.stats["reference"] += 1
            return fn(tlb, vma, addr, end)
        self.stats["recorded"] += 1
        queued_before = list(tlb.pages)
        rec = self._record_gathered(fn, tlb, vma, addr, end, tab, folios, index, key[-1])
        ret = rec.ret
        appended = tlb.pages[len(queued_before) :]
        tpl = Template(replayable=False)
        if (
            rec.template is not None
            and ret == end
            and tlb.pages[: len(queued_before)] == queued_before
            and not tlb.delayed_rmap
            and not tlb.free_before_flush
            and all(id(f) in index for f, _ in appended)
        ):
            tpl = rec.template
            tpl.ret = ret - base
            tpl.queued = tuple((index[id(f)], nr) for f, nr in appended)
        if tpl.replayable or tlb.flushes == rec.flushes_before:
            self.templates[key] = tpl
        # else: the gather flushed during this table (its batch pages were full); the next table
        # of this kind, from another point of the gather, is recorded afresh
        self._last = (tpl, [])
        return ret

    def _queue(self, tlb: MmuGather, entries: list[tuple[Folio, int]]) -> bool:
        """Queue a record's pages through the gather's own ``__tlb_remove_folio_pages``, which
        moves on to further batch pages as it fills them (its counts muted: the record has them).
        If it asks for a flush (the record's run did not), undo the queueing and return False:
        that table runs the reference code, which flushes where the kernel does."""
        queue = self._tlb_remove_folio_pages
        pages = tlb.pages
        n_pages, n_batches = len(pages), len(tlb.batches)
        active, count = tlb.active, tlb.batch_count
        nrs = [b.nr for b in tlb.batches]
        sink = self.kernel.sink
        saved, sink.counts = sink.counts, self._scratch  # its counts are in the record
        try:
            for f, nr in entries:
                if queue(tlb, f, nr):
                    del pages[n_pages:]
                    del tlb.batches[n_batches:]
                    for b, v in zip(tlb.batches, nrs, strict=True):
                        b.nr = v
                    tlb.active, tlb.batch_count = active, count
                    return False
            return True
        finally:
            sink.counts = saved
            self._scratch.clear()

    def _zap_replay(
        self,
        tpl: Template,
        tlb: MmuGather,
        mm: MmStruct,
        tab: PteTable,
        folios: list[Folio],
        rel: tuple[Rel, ...] | None,
        base: int,
    ) -> int | None:
        """Apply a zap record; None (and nothing changed) if the gather must flush within it."""
        assert tpl.counts is not None and tpl.ret is not None
        if tlb.free_before_flush or not self._queue(tlb, [(folios[k], nr) for k, nr in tpl.queued]):
            return None
        self.stats["replayed"] += 1
        if rel is None or tpl.entries_after != rel:
            after = self._absolute(tpl.entries_after, folios)
            if tab.linear is not None:  # no list to update: the table gets one
                tab.linear = None
                tab.entries = after
            else:
                tab.entries[:] = after
        for f, ch in zip(folios, tpl.folio_changes, strict=True):
            if ch:
                self._apply_folio_changes(f, ch)
        mm.rss.update(dict(tpl.rss[0]))
        mm.nr_ptes += tpl.nr_ptes[0]
        _restore_gather(tlb, tpl.gather_after, base)
        self.kernel.sink.counts.update(tpl.counts)
        return base + tpl.ret

    # ---- move_ptes (mremap) on descriptors -------------------------------------------------------
    def _present(self, e: int) -> bool:
        bit = self._inline[0]
        return bool(e) and bool(e & bit if bit else self.kernel.arch.pte_present(e))

    def _desc(self, tab: PteTable) -> Desc | None:
        """``tab`` in the form a compact move reads (see :data:`Desc`; lo == hi: it maps nothing,
        pfn and bits 0), or None.  A table in list form is read only if nothing else holds its
        list (it is replaced by a descriptor)."""
        u, n = self._unit, self._n
        lin = tab.linear
        if lin is not None:
            first, step, cnt = lin
            if cnt != n:
                return None
            if step == 0:
                return None if self._present(first) else (first, 0, 0, 0, 0)
            if step != u:
                return None
            pfn = self._pfn(first)
            return (0, 0, n, pfn, first - pfn * u)
        win = tab.window
        if win is not None:
            fill, lo, hi, first, step, cnt = win
            if step != u or cnt != n:
                return None
            e = first + lo * u
            pfn = self._pfn(e)
            return (fill, lo, hi, pfn, e - pfn * u)
        ents = tab.entries
        if sys.getrefcount(ents) > 3:  # the table's slot, the local name, getrefcount's argument
            return None
        return self._desc_of_list(ents)

    def _desc_of_list(self, ents: list[int]) -> Desc | None:
        """The :data:`Desc` of a table's entries, if they have that form."""
        n, u = len(ents), self._unit
        e0 = ents[0]
        if ents.count(e0) == n:
            if not self._present(e0):
                return (e0, 0, 0, 0, 0)
            return None
        present = [i for i, e in enumerate(ents) if self._present(e)]
        lo, hi = present[0], present[-1] + 1
        fill = ents[0] if lo else ents[-1]
        first = ents[lo]
        if (
            len(present) != hi - lo
            or ents[lo:hi] != list(range(first, first + (hi - lo) * u, u))
            or self._pfn(ents[hi - 1]) != self._pfn(first) + hi - lo - 1
            or ents[:lo].count(fill) != lo
            or ents[hi:].count(fill) != n - hi
            or (hi - lo < n and self._present(fill))
        ):
            return None
        pfn = self._pfn(first)
        return (fill if hi - lo < n else 0, lo, hi, pfn, first - pfn * u)

    def _set_desc(self, tab: PteTable, rel: tuple[int, ...], base_pfn: int) -> None:
        """Give ``tab`` the form a :class:`MoveRecord` left (relative to ``base_pfn``)."""
        n, u = self._n, self._unit
        if len(rel) == 3:
            tab.make_linear(rel[0], 0, n)
            return
        fill, lo, hi, bits, dpfn = rel
        first = bits + (base_pfn + dpfn - lo) * u
        if lo == 0 and hi == n:
            tab.make_linear(first, u, n)
        else:
            tab.make_window(fill, lo, hi, first, u, n)

    def _run_part(self, pfn: int, count: int, base: int) -> tuple[Any, ...] | None:
        """The compact run holding PFNs ``[pfn, pfn + count)``, relative to PFN ``base``: its bounds,
        order and folio state (None if no one run holds them)."""
        run = self.kernel.pages.run_at(pfn)
        if run is None or pfn + count > run.end_pfn:
            return None
        return (run.pfn - base, run.end_pfn - base, run.order, self._folio_state(run.proto)[:-1])

    def _mm_move_key(self, mm: MmStruct) -> Key:
        """The mm state a flush inside the recorded function can read or change."""
        return (*self._mm_key(mm), mm.global_asid, frozenset(mm.asid_transition), mm.users)

    def _move_key(
        self, vma: Vma, old_addr: int, old_end: int, new_vma: Vma, new_addr: int, s: Desc, d: Desc
    ) -> Key | None:
        """A ``move_ptes`` key from the two tables' descriptors: the call's context (operation, call
        chain, CPU, the range in the source table and where it lands in the destination, both VMAs,
        the mm), each table's form and the run of folios each maps (PFNs relative to the first one
        the source maps: equal keys are the same input moved by a multiple of the PMD alignment)."""
        fill_s, lo_s, hi_s, pfn_s, bits_s = s
        if lo_s == hi_s:
            return None
        run_s = self._run_part(pfn_s, hi_s - lo_s, pfn_s)
        if run_s is None:
            return None
        fill_d, lo_d, hi_d, pfn_d, bits_d = d
        dst: tuple[Any, ...] = (fill_d,)
        if lo_d != hi_d:
            run_d = self._run_part(pfn_d, hi_d - lo_d, pfn_s)
            if run_d is None:
                return None
            dst = (fill_d, lo_d, hi_d, bits_d, pfn_d - pfn_s, run_d)
        span = self._span
        sbase, dbase = old_addr & ~(span - 1), new_addr & ~(span - 1)
        return (
            "move",
            *self._where(old_addr, old_end, sbase),
            new_addr - dbase,
            self._vma_key(vma, sbase),
            self._vma_key(new_vma, dbase),
            self._mm_move_key(vma.mm),
            (fill_s, lo_s, hi_s, bits_s, pfn_s % self._align, run_s),
            dst,
        )

    def _move(
        self, fn: Callable[..., Any], vma: Vma, old_addr: int, old_end: int, new_vma: Vma, new_addr: int
    ) -> Any:
        """``move_ptes`` on compact tables: a source table linear over (a window of) one run and a
        destination that maps nothing or a window over one run.  The first extent of each key runs
        the reference code; if it changed nothing but the two tables (no folio, counter, TLB entry
        or allocation) and left both in descriptor form, later extents of that key replay as two new
        descriptors and the counts.  Anything else runs the reference code; with a TLB holding
        entries the flush could drop, too (the key does not see them)."""
        from ptesim.kernel.pgtable import PteTable

        args = (vma, old_addr, old_end, new_vma, new_addr)
        mm = vma.mm
        stab, dtab = mm.pmd_entry(old_addr), mm.pmd_entry(new_addr)
        if (
            not isinstance(stab, PteTable)
            or not isinstance(dtab, PteTable)
            or stab is dtab
            or vma.file is not None
            or any(c.tlb.entries for c in self.kernel.hw.cpus)
        ):
            self.stats["reference"] += 1
            return fn(*args)
        s, d = self._desc(stab), self._desc(dtab)
        if s is not None and s[1] == 0 and s[2] == self._n and self.kernel.pages.run_at(s[3]) is None:
            # a full table over folio objects (say, PTE-mapped THPs just split): compact them first
            self._compact_run(s[3])
        key = None if s is None or d is None else self._move_key(*args, s, d)
        if key is None:
            self.stats["reference"] += 1
            ret = fn(*args)
            self._move_settle(stab, dtab)
            return ret
        assert s is not None and d is not None
        self._moved.append(dtab)
        rec = self.window_records.get(key)
        if type(rec) is MoveRecord:
            self.stats["linear"] += 1
            self.stats["move_run"] += 1
            self._set_desc(stab, rec.src_after, s[3])
            self._set_desc(dtab, rec.dst_after, s[3])
            self._owe(self.kernel.sink.counts, rec)
            return None
        if rec is not None:
            self.stats["reference"] += 1
            ret = fn(*args)
            self._move_settle(stab, dtab)
            return ret
        self.stats["recorded"] += 1
        ret, made = self._move_record(fn, args, stab, dtab, s, d)
        self.window_records[key] = made if made is not None else False
        return ret

    def _move_record(
        self, fn: Callable[..., Any], args: tuple[Any, ...], stab: PteTable, dtab: PteTable, s: Desc, d: Desc
    ) -> tuple[Any, MoveRecord | None]:
        """Run ``move_ptes`` counted and make its record if it changed nothing but the two tables'
        entries and left both in descriptor form."""
        vma, old_addr, _, _, new_addr = args
        mm = vma.mm
        pages = self.kernel.pages
        runs = [pages.run_at(s[3])]
        if d[1] != d[2]:
            runs.append(pages.run_at(d[3]))
        saved = [(r, self._folio_state(r.proto)[:-1], list(r.proto.data)) for r in runs if r is not None]
        before = self._fingerprint()
        mm_before = self._mm_move_key(mm)
        rss_before = Counter(mm.rss)
        nr_before = mm.nr_ptes
        ret, counts = self._recorded(fn, *args)
        ok = (
            ret is None
            and self._fingerprint() == before
            and self._mm_move_key(mm) == mm_before
            and mm.rss == rss_before
            and mm.nr_ptes == nr_before
            and mm.pmd_entry(old_addr) is stab
            and mm.pmd_entry(new_addr) is dtab
            and all(self._run_unchanged(r, st, data) for r, st, data in saved)
        )
        s_after = self._desc(stab) if ok else None
        d_after = self._desc(dtab) if ok else None
        self._move_settle(stab, dtab)
        if s_after is None or d_after is None:
            return ret, None
        rels: list[tuple[int, ...]] = []
        for fill, lo, hi, pfn, bits in (s_after, d_after):
            if lo == hi:
                rels.append((fill, lo, hi))
                continue
            # the encoding must move each entry's PFN with its folio
            step = self._align * self._unit
            pte_pfn = self.kernel.arch.pte_pfn
            u = self._unit
            for e in (bits + pfn * u, bits + (pfn + hi - lo - 1) * u):
                if pte_pfn(e + step) != pte_pfn(e) + self._align:
                    return ret, None
            rels.append((fill, lo, hi, bits, pfn - s[3]))
        return ret, MoveRecord(rels[0], rels[1], counts)

    def _run_unchanged(self, run: FolioRun, state: tuple[Any, ...], data: list[int]) -> bool:
        """Whether every folio of ``run`` (still compact, or expanded by the recorded run) is still
        allocated in the state and with the contents it had."""
        pages = self.kernel.pages
        if pages.runs.get(run.pfn) is run:
            return self._folio_state(run.proto)[:-1] == state and run.proto.data == data
        by_pfn = pages._by_pfn
        rule, nr = run.data_rule, 1 << run.order
        for p in range(run.pfn, run.end_pfn, nr):
            f = by_pfn.get(p)
            if rule is not None:  # the contents the run's data rule gave this folio
                first = rule[0] + (p - run.pfn) * rule[1]
                data = [first + j * rule[1] for j in range(nr)]
            if f is None or f.order != run.order or self._folio_state(f)[:-1] != state or f.data != data:
                return False
        return True

    def _move_settle(self, stab: PteTable, dtab: PteTable) -> None:
        """After a reference run: give the runs it expanded their compact form again and the two
        tables a descriptor, so that the next extents can be moved on descriptors."""
        pages = self.kernel.pages
        if pages.materialised:
            self.stats["expanded_runs"] += len(pages.materialised)
            for b in pages.materialised:
                if not self._compact_run(b):
                    self._pending_blocks.add(b)
            pages.materialised = []
        n, u = self._n, self._unit
        for tab in (stab, dtab):
            if tab.linear is not None or tab.window is not None:
                continue
            d = self._desc(tab)
            if d is None:
                continue
            fill, lo, hi, pfn, bits = d
            if lo == hi:
                tab.make_linear(fill, 0, n)
            elif lo == 0 and hi == n:
                tab.make_linear(bits + pfn * u, u, n)
            else:
                tab.make_window(fill, lo, hi, bits + (pfn - lo) * u, u, n)

    def _realign_moved(self) -> None:
        """Re-compaction after mremap: a destination table filled from two source tables is linear
        across the tail of one run and the head of the next.  Where both runs hold folios of one
        order in one state, split them at the table's bounds so that the table maps exactly one
        run again (the form every other compact record reads); the run's part before it, if it
        would start in the same ``run_span`` block, gets folio objects.  Tables in the order they
        filled up, i.e. in address order: each split leaves the next table's first run starting
        at that table's first PFN."""
        moved, self._moved = self._moved, []
        seen: set[int] = set()
        for t in moved:
            if id(t) in seen:
                continue
            seen.add(id(t))
            lin = t.linear
            if lin is None or lin[1] != self._unit or t.mm.dead or t.mm.pmd_entry(t.base) is not t:
                continue
            self._realign(self._pfn(lin[0]))

    def _realign(self, pfn: int) -> bool:
        """Make ``[pfn, pfn + ptrs_per_pte)`` one run if two adjacent runs of one order and state
        hold it (see :meth:`_realign_moved`)."""
        pages = self.kernel.pages
        n, span = self._n, pages.run_span
        a = pages.run_at(pfn)
        if a is None or (a.pfn == pfn and a.count << a.order == n):
            return False
        b = pages.run_at(pfn + n - 1)
        nr = 1 << a.order
        if (
            b is None
            or b is a
            or a.end_pfn != b.pfn
            or b.order != a.order
            or (pfn - a.pfn) % nr
            or self._folio_state(a.proto)[:-1] != self._folio_state(b.proto)[:-1]
            or not self._contents_continue(a, b)
        ):
            return False
        blocks = pages._run_blocks
        end = pfn + n
        for blk in (pfn // span, end // span):
            if blocks.get(blk) not in (None, a, b):
                return False
        from ptesim.kernel.folio import Folio, FolioRun

        for r in (a, b):
            del pages.runs[r.pfn]
            del blocks[r.pfn // span]

        def part(lo: int, hi: int, run: FolioRun) -> FolioRun:
            p = Folio.__new__(Folio)
            for name in Folio.__slots__:
                v = getattr(run.proto, name)
                setattr(p, name, list(v) if isinstance(v, list) else v)
            p.pfn = lo
            rule = run.data_rule
            if rule is not None:  # page i of the part is page lo - run.pfn + i of the run
                rule = (rule[0] + (lo - run.pfn) * rule[1], rule[1])
            return FolioRun(lo, a.order, (hi - lo) >> a.order, p, rule)

        if a.pfn < pfn:
            head = part(a.pfn, pfn, a)
            pages.add_run(head)
            if head.pfn // span == pfn // span:
                # the table's run starts in its block: its folios get objects (the first table moved)
                pages.materialise(head.pfn)
                pages.materialised.remove(head.pfn)
        pages.add_run(part(pfn, end, a))
        if end < b.end_pfn:
            pages.add_run(part(end, b.end_pfn, b))
        self.stats["realigned"] += 1
        return True

    @staticmethod
    def _contents_continue(a: FolioRun, b: FolioRun) -> bool:
        """Whether run ``b``, which follows ``a``, holds the contents one run continuing ``a``
        would: the same contents in every folio, or ``b``'s data rule continuing ``a``'s."""
        ra, rb = a.data_rule, b.data_rule
        if ra is None or rb is None:
            return ra is None and rb is None and a.proto.data == b.proto.data
        return rb == (ra[0] + (b.pfn - a.pfn) * ra[1], ra[1])

    def _zap_empty(
        self, fn: Callable[..., Any], tlb: MmuGather, vma: Vma, addr: int, end: int, tab: PteTable, fill: int
    ) -> Any:
        """``zap_pte_range`` of a table held as ``n`` equal non-present entries (one an mremap moved
        everything out of, or a zap emptied): the list-form memo records it once; a record that
        queued nothing and changed no entry or counter replays on the descriptor."""
        base = addr & ~(self._span - 1)
        key = ("zap-empty", *self._gather_context("zap", tlb, vma, addr, end, base), fill)
        rec = self.window_records.get(key)
        if type(rec) is EmptyZap:
            self.stats["linear"] += 1
            self.stats["zap_empty"] += 1
            _restore_gather(tlb, rec.gather, base)
            self._owe(self.kernel.sink.counts, rec)
            return base + rec.ret
        mm = vma.mm
        rss_before, nr_before = Counter(mm.rss), mm.nr_ptes
        n_pages = len(tlb.pages)
        ret = self._zap_table(fn, tlb, vma, addr, end, tab)
        tpl, _ = self._last
        self._last = (None, [])
        if rec is None and tpl is not None:  # None: the rest of a table after a flush, not recorded
            made: EmptyZap | bool = False
            if (
                tpl.replayable
                and tpl.counts is not None
                and tpl.ret is not None
                and not tpl.queued
                and not tpl.folio_changes
                and len(tlb.pages) == n_pages
                and mm.rss == rss_before
                and mm.nr_ptes == nr_before
                and all(e == fill for e in tpl.entries_after)
            ):
                made = EmptyZap(tpl.ret, tpl.gather_after, tpl.counts)
            self.window_records[key] = made
        if tab.linear is None and tab.window is None and mm.pmd_entry(addr) is tab:
            ents = tab.entries
            if ents.count(fill) == self._n and sys.getrefcount(ents) <= 3:
                tab.make_linear(fill, 0, self._n)
        return ret


def _data_rule(fs: list[Folio], nr: int) -> tuple[bool, tuple[int, int] | None]:
    """How a block's contents can be held by a run: (True, None) if every folio's contents equal
    the first one's (the prototype keeps them), (True, ``(first, step)``) if page ``i`` of the
    block holds ``first + i * step`` (``FolioRun.data_rule``: a sweep wrote one value per page),
    else (False, None)."""
    data = fs[0].data
    if all(f.data == data for f in fs):
        return True, None
    first = data[0]
    step = data[1] - first if nr > 1 else fs[1].data[0] - first
    if not step:
        return False, None
    for j, f in enumerate(fs):
        lo = first + j * nr * step
        if f.data != list(range(lo, lo + nr * step, step)):
            return False, None
    return True, (first, step)


def _delta(before: Counter[str], after: Counter[str]) -> tuple[tuple[str, int], ...]:
    keys = sorted(set(before) | set(after))
    return tuple((k, after.get(k, 0) - before.get(k, 0)) for k in keys if k in after)


def engine_applies(kernel: Kernel) -> bool:
    """Whether the fast engine can run this machine (no per-operation checks, no ordered trace)."""
    return not kernel.checks and not kernel.sink.trace_limit


P = ParamSpec("P")
R = TypeVar("R")


def memoised_table_op(kind: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Let the fast engine, when the machine has one, replay recorded runs of this per-table
    function (``kind`` 'copy': ``copy_pte_range``; 'zap': ``zap_pte_range``; 'change':
    ``change_pte_range``; 'populate': the write faults of ``__mm_populate`` over one PMD range;
    'move': ``move_ptes``, one extent of mremap's ``move_page_tables``)."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            vma: Any = args[0 if kind in ("populate", "move") else 1]
            eng = vma.mm.kernel.fast
            if eng is None or kwargs:
                return fn(*args, **kwargs)
            out: R = eng.run(kind, fn, args)
            return out

        return wrapper

    return deco
