"""Memoised execution of the per-table kernel functions (the fast engine).

``copy_pte_range`` (fork) and ``zap_pte_range`` (exit, under a full-mm gather) each work on one PTE
table.  :class:`FastEngine` computes, before each call, a *key*: the table's entries with every PFN
replaced by (folio ordinal, page offset), the complete state of every folio those entries map (in
the order they first appear), and the context the function can read (operation and phase, call
chain, executing CPU, the VMAs' flags, the mms' pin/dead/cpumask/ASID state, the gather's fields,
how much of the upper page-table levels exists).  Two tables with equal keys are the same input up
to a bijection between their folios.

The first table of each key runs the reference function while the engine records its effects: the
primitives it emitted (by primitive, phase and call-chain id), the table entries and folio fields
after it, the RSS and page-table counter deltas and, for a zap, the pages it queued in the gather.
The record is *replayable* only if nothing else changed: no folio allocated or freed, no TLB entry
dropped, no gather flush, no folio data written, no new folio reached.  Every later table with the
same key gets the record applied through the folio bijection instead of running the code.

What the engine knows of the kernel is limited to *where* state lives (the fields it snapshots) and
one fact about the gather: a queued entry only matters through its active batch page filling up
(``nr >= max - 1``, then tlb_next_batch), so a record that stayed within one batch page replays
wherever the active batch page has as much headroom.  The
differential tests (tests/test_fast_engine.py) run every scenario, arch and preset of the test
matrix and random fuzz programs on both engines and compare counts and final state exactly.
"""

from __future__ import annotations

import functools
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from ptesim.kernel.core import Kernel
    from ptesim.kernel.folio import Folio
    from ptesim.kernel.mm import MmStruct, Vma
    from ptesim.kernel.mmu_gather import MmuGather

#: ``--engine`` values.
ENGINES = ("fast", "reference")

Rel = Any  # an entry: the raw value, or (prot bits, folio ordinal, page offset in the folio)
Key = tuple[Any, ...]

_PLAIN = (int, bool, str, float, type(None))
#: Folio fields that are not part of a folio's *state* for the key: its identity and contents.
_FOLIO_IDENTITY = ("pfn", "data")
#: Gather fields handled apart (owner, queued pages, slot count, delayed rmaps).
_GATHER_APART = ("mm", "pages", "delayed_rmap", "delayed_rmaps", "batches", "active", "batch_count")
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
    slots: int = 0  # zap: gather slots the run consumed
    gather_after: tuple[Any, ...] = ()
    new_folios: tuple[tuple[tuple[str, str, Any], ...], ...] = ()  # populate: whole state
    new_offsets: tuple[int, ...] = ()  # populate: PFN of each new folio from the first one


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

    # ---- applicability ------------------------------------------------------------------------
    def usable(self) -> bool:
        """An ordered trace needs every primitive executed in order: then nothing is replayed."""
        return not self.kernel.sink.trace_limit

    # ---- relative form ------------------------------------------------------------------------
    def _relative(self, entries: list[int], folios: list[Folio], index: dict[int, int]) -> tuple[Rel, ...]:
        """The entries with each mapped folio's PFN taken out: ``(entry - folio PFN field, folio
        ordinal)``; new folios are appended to ``folios`` (and ``index``, by id) in order of first
        appearance.  Entries that map no folio stay raw integers."""
        page_folio = self.kernel.pages._page_folio
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
            sink.op,
            sink.stack,
            kernel.hw.current,
            start - base,
            end - base,
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
            return ret
        if not tpl.replayable:
            self.stats["reference"] += 1
            return fn(vma, start, end)
        self.stats["replayed"] += 1
        assert tpl.counts is not None
        had_table = tab is not None
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
        return None

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
        folios: list[Folio] = []
        index: dict[int, int] = {}
        rel = self._relative(src_tab.entries, folios, index)
        key = (
            "copy",
            sink.op,
            sink.stack,
            self.kernel.hw.current,
            addr - base,
            end - base,
            self._vma_key(src_vma, base),
            self._vma_key(dst_vma, base),
            self._mm_key(src_mm),
            self._mm_key(dst_mm),
            self._depth(dst_mm, addr),
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
            return ret
        if not tpl.replayable:
            self.stats["reference"] += 1
            return fn(dst_vma, src_vma, addr, end)
        self.stats["replayed"] += 1
        assert tpl.dst_after is not None and tpl.counts is not None
        self._muted(dst_mm.pte_alloc, addr)
        dst_tab = dst_mm.pmd_entry(addr)
        assert isinstance(dst_tab, PteTable)
        dst_tab.entries[:] = self._absolute(tpl.dst_after, folios)
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
        sink = self.kernel.sink
        folios: list[Folio] = []
        index: dict[int, int] = {}
        rel = self._relative(tab.entries, folios, index)
        key = (
            "zap",
            sink.op,
            sink.stack,
            self.kernel.hw.current,
            addr - base,
            end - base,
            self._vma_key(vma, base),
            self._mm_key(mm),
            self._gather_key(tlb, base),
            rel,
            tuple(self._folio_state(f) for f in folios),
        )
        tpl = self.templates.get(key)
        if tpl is None:
            self.stats["recorded"] += 1
            states = key[-1]
            before = self._fingerprint()
            mm_before = self._mm_key(mm)
            rss_before = Counter(mm.rss)
            nr_before = mm.nr_ptes
            data_before = [list(f.data) for f in folios]
            gather_before = dict(vars(tlb))
            queued_before = list(tlb.pages)
            # the active batch page: a template replays only within it (no tlb_next_batch)
            active_before, count_before = tlb.active, tlb.batch_count
            slots_before = tlb.batches[tlb.active].nr
            flushes_before = tlb.flushes
            ret, counts = self._recorded(fn, tlb, vma, addr, end)
            n_folios = len(folios)
            after = self._relative(tab.entries, folios, index)
            appended = tlb.pages[len(queued_before) :]
            ok = (
                ret == end
                and len(folios) == n_folios
                and tlb.flushes == flushes_before
                and tlb.active == active_before
                and tlb.batch_count == count_before
                and tlb.batches[tlb.active].nr >= slots_before
                and tlb.pages[: len(queued_before)] == queued_before
                and not tlb.delayed_rmap
                and all(id(f) in index for f, _ in appended)
                and self._fingerprint() == before
                and self._mm_key(mm) == mm_before
                and mm.pmd_entry(addr) is tab
                and self._translatable(after, folios)
                and all(list(f.data) == d for f, d in zip(folios, data_before, strict=True))
            )
            tpl = Template(replayable=False)
            if ok:
                tpl = Template(
                    replayable=True,
                    entries_after=after,
                    folio_changes=tuple(
                        self._folio_changes(b, self._folio_state(f))
                        for f, b in zip(folios, states, strict=True)
                    ),
                    rss=(_delta(rss_before, mm.rss),),
                    nr_ptes=(mm.nr_ptes - nr_before,),
                    counts=counts,
                    ret=ret - base,
                    queued=tuple((index[id(f)], nr) for f, nr in appended),
                    slots=tlb.batches[tlb.active].nr - slots_before,
                    gather_after=self._gather_after(tlb, gather_before, base),
                )
            self.templates[key] = tpl
            return ret
        batch = tlb.batches[tlb.active]
        if not tpl.replayable or batch.nr + tpl.slots >= batch.max - 1:
            self.stats["reference"] += 1
            return fn(tlb, vma, addr, end)
        self.stats["replayed"] += 1
        assert tpl.counts is not None and tpl.ret is not None
        if tpl.entries_after != rel:
            tab.entries[:] = self._absolute(tpl.entries_after, folios)
        for f, ch in zip(folios, tpl.folio_changes, strict=True):
            if ch:
                self._apply_folio_changes(f, ch)
        mm.rss.update(dict(tpl.rss[0]))
        mm.nr_ptes += tpl.nr_ptes[0]
        tlb.pages.extend((folios[k], nr) for k, nr in tpl.queued)
        batch.nr += tpl.slots
        for n, (how, v) in tpl.gather_after:
            if how == "rel":
                setattr(tlb, n, base + v)
            else:
                _thaw_into(tlb, n, v)
        sink.counts.update(tpl.counts)
        return base + tpl.ret


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
    function (``kind`` 'copy': ``copy_pte_range``; 'zap': ``zap_pte_range``; 'populate': the
    write faults of ``__mm_populate`` over one PMD range)."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            vma: Any = args[0 if kind == "populate" else 1]
            eng = vma.mm.kernel.fast
            if eng is None or kwargs:
                return fn(*args, **kwargs)
            out: R = eng.run(kind, fn, args)
            return out

        return wrapper

    return deco
