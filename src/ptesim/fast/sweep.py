"""Per-table memo of per-page sweeps (the fast engine): every page of a range written once (a COW
write of every page after fork) or given MADV_DONTNEED one page at a time.

A sweep is one call of :func:`ptesim.workloads.scenarios.each_page` whose reference is the plain
per-page loop: one user store (``Task.write``) or one ``madvise(MADV_DONTNEED)`` system call per
page, in address order, each a complete operation of the model.  The fast engine cuts the range
into PTE tables and, for a whole table that is a linear table over one compact run
(:mod:`ptesim.fast.memo`, "Compact state"), runs the reference loop over that table while it
records everything the loop did:

* the counts (by primitive, phase and call chain);
* the table after it: every entry one value (a MADV_DONTNEED sweep emptied it), or linear over a
  run of new folios the loop allocated at consecutive PFNs from the allocator's bump pointer (a
  COW copy of every page), their state, and their contents as an affine rule (page ``i`` holds
  the value written to it, ``value + i``: the per-page values stay checkable);
* what happened to the run's folios: all freed in address order (their PFNs pushed on the free
  list as one ``range``), or the same change to every one;
* the RSS and page-table counter deltas;
* every TLB operation, per CPU: entries inserted, entries dropped, invalidations and their
  victims (all inside the table's range, for the process's ASID).

The record is kept only if the loop changed nothing else: no other page table, run, folio or
mm; no TLB entry outside the table's range (other than the oldest ones a full TLB evicts); no
flush of a whole ASID or TLB.  Its key is the process's CPU and call chain, the VMA, the mm's
pin/dead/cpumask/ASID state, the table's bits and the run's order and folio state, the THP
settings, the allocator's PFN alignment and whether its free lists are empty, and each TLB's
spans; and the table's range must hold no TLB entry (of any ASID, on any CPU) before it.  Every
later table with an equal key gets the record applied: O(1) per table (one new run, one
descriptor, one prototype change), plus the TLB.

The TLB is a FIFO of bounded capacity, so what a table's loop leaves in it depends on how full
it was: the record keeps the loop's TLB operations in order, from which the number of old
entries evicted for a given fill is computed (once per fill); the table's surviving entries are
queued as one segment and the TLB's dict is rebuilt once, when the sweep ends or before a table
runs the reference code.  Tables that do not qualify run the reference loop.
"""

from __future__ import annotations

import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptesim.fast.memo import FastEngine
    from ptesim.hw.tlb import Tlb
    from ptesim.kernel.core import Task
    from ptesim.kernel.folio import Folio, FolioRun
    from ptesim.kernel.mm import MmStruct
    from ptesim.kernel.pgtable import PteTable

#: what one page of a sweep does
SWEEPS = ("write", "dontneed")

RefLoop = Callable[["Task", str, int, int, int], None]
#: a TLB entry relative to a table: (vpn offset, span, ("n"ew run | "o"ld run | "a"bsolute, pfn), writable)
RelEntry = tuple[int, int, tuple[str, int], bool]


@dataclass(slots=True)
class CpuTlbEffect:
    """What a table's loop did to one CPU's TLB: its operations on keys of the table (in order:
    ("ins", vpn offset, span) a new or replaced entry, ("del", vpn offset, span) a removed one),
    the table's entries left at the end (in the TLB's order) and the spans inserted."""

    ops: tuple[tuple[str, int, int], ...]
    final: tuple[RelEntry, ...]
    spans: frozenset[int]
    #: old entries evicted, by the TLB's fill before the table (computed on demand)
    evictions: dict[int, int] = field(default_factory=dict)

    def evicted(self, fill: int, capacity: int) -> int:
        got = self.evictions.get(fill)
        if got is None:
            got = 0
            n = fill
            live: set[tuple[int, int]] = set()
            for op, off, span in self.ops:
                k = (off, span)
                if op == "ins":
                    if k not in live:
                        if n >= capacity:
                            got += 1
                        else:
                            n += 1
                        live.add(k)
                elif k in live:
                    live.discard(k)
                    n -= 1
            self.evictions[fill] = got
        return got


@dataclass(slots=True)
class SweepRecord:
    counts: Counter[tuple[str, str, int]]
    #: the table after: every entry this value, or (fill None) linear over the new run
    fill: int | None
    #: linear over the new run: entry i = bits + (first new PFN) * unit + i * unit
    bits: int
    #: new folios: order, count, whole state of each (a prototype), contents rule step (per page)
    new_order: int
    new_count: int
    new_state: tuple[tuple[str, str, Any], ...]
    #: the old run: all freed, or this change to every folio
    old_freed: bool
    old_change: tuple[tuple[str, str, Any], ...]
    rss: tuple[tuple[str, int], ...]
    nr_ptes: int
    tlb: tuple[tuple[int, CpuTlbEffect], ...]
    #: an invalidation of the table's range for every ASID ran (riscv's ``sfence.vma addr``): the
    #: record applies only where no other ASID has entries there
    any_asid: bool


class _PendingTlb:
    """One CPU's TLB with replayed tables' entries not yet written into it: the TLB's own entries
    minus its ``pops`` oldest, then the queued segments (a record's entries, translated when the
    dict is rebuilt)."""

    __slots__ = ("pops", "seg_len", "segs", "tlb")

    def __init__(self, tlb: Tlb) -> None:
        self.tlb = tlb
        self.pops = 0
        self.segs: deque[list[Any]] = deque()
        self.seg_len = 0

    def __len__(self) -> int:
        return len(self.tlb.entries) - self.pops + self.seg_len

    def push(self, evict: int, final: tuple[RelEntry, ...], where: tuple[int, int, int, int]) -> None:
        own = len(self.tlb.entries) - self.pops
        take = min(evict, own)
        self.pops += take
        evict -= take
        while evict:
            seg = self.segs[0]
            left = len(seg[0]) - seg[1]
            if left <= evict:
                self.segs.popleft()
                self.seg_len -= left
                evict -= left
            else:
                seg[1] += evict
                self.seg_len -= evict
                evict = 0
        if final:
            self.segs.append([final, 0, where])
            self.seg_len += len(final)

    def flush(self) -> None:
        from ptesim.hw.tlb import TlbEntry

        if not self.pops and not self.segs:
            return
        tlb = self.tlb
        entries = tlb.entries
        if self.pops:
            entries = dict(islice(entries.items(), self.pops, None))
        for final, start, (asid, vpn0, new0, old0) in self.segs:
            for off, span, (kind, pfn), writable in final[start:]:
                base = new0 if kind == "n" else old0 if kind == "o" else 0
                entries[(asid, vpn0 + off, span)] = TlbEntry(base + pfn, writable)
        tlb.entries = entries
        self.pops = 0
        self.segs.clear()
        self.seg_len = 0


class _TlbLog:
    """Records one CPU's TLB operations during a reference run (instance attributes shadowing
    the :class:`~ptesim.hw.tlb.Tlb` methods, removed afterwards)."""

    def __init__(self, tlb: Tlb, lo: int, hi: int) -> None:
        self.tlb = tlb
        self.lo, self.hi = lo, hi
        self.ops: list[tuple[Any, ...]] = []
        self.bad = False
        self.any_asid = False
        cls = type(tlb)
        ops = self.ops

        def insert(asid: int, vpn: int, span: int, pfn_base: int, writable: bool) -> None:
            ops.append(("ins", (asid, vpn & ~(span - 1), span), pfn_base, writable))
            cls.insert(tlb, asid, vpn, span, pfn_base, writable)

        def drop(key: tuple[int, int, int]) -> None:
            if key in tlb.entries:
                ops.append(("del", key))
            cls.drop(tlb, key)

        def invalidate_range(asid: int | None, vpn: int, npages: int) -> int:
            end = vpn + npages
            victims = [
                k for k in tlb.entries if (asid is None or k[0] == asid) and k[1] < end and k[1] + k[2] > vpn
            ]
            if not (lo <= vpn and end <= hi):
                self.bad = True
            if asid is None:
                self.any_asid = True
            for k in victims:
                ops.append(("del", k))
            return cls.invalidate_range(tlb, asid, vpn, npages)

        def whole(*args: Any) -> None:
            self.bad = True
            name = "invalidate_asid" if args else "invalidate_all"
            getattr(cls, name)(tlb, *args)

        tlb.insert = insert  # type: ignore[method-assign]
        tlb.drop = drop  # type: ignore[method-assign]
        tlb.invalidate_range = invalidate_range  # type: ignore[method-assign]
        tlb.invalidate_asid = whole  # type: ignore[method-assign,assignment]
        tlb.invalidate_all = whole  # type: ignore[method-assign]

    def close(self) -> None:
        for n in ("insert", "drop", "invalidate_range", "invalidate_asid", "invalidate_all"):
            self.tlb.__dict__.pop(n, None)


_SWEEPERS: weakref.WeakKeyDictionary[FastEngine, Sweeper] = weakref.WeakKeyDictionary()


def sweep(eng: FastEngine, task: Task, how: str, addr: int, length: int, value: int, ref: RefLoop) -> None:
    """Run the sweep ``ref`` over [addr, addr + length) on ``eng``'s machine (see the module
    docstring): each whole PTE table replayed from a record where one applies."""
    sw = _SWEEPERS.get(eng)
    if sw is None:
        sw = _SWEEPERS[eng] = Sweeper(eng)
    sw.sweep(task, how, addr, length, value, ref)


class Sweeper:
    """The sweep memo of one machine (held by its :class:`FastEngine`)."""

    def __init__(self, eng: FastEngine) -> None:
        self.eng = eng
        self.records: dict[tuple[Any, ...], SweepRecord | None] = {}

    # ---- the driver -----------------------------------------------------------------------------
    def sweep(self, task: Task, how: str, addr: int, length: int, value: int, ref: RefLoop) -> None:
        """``ref(task, how, start, end, value)`` over [addr, addr + length), a PTE table at a time,
        replaying a record where one applies."""
        eng = self.eng
        k = eng.kernel
        span = eng._span
        page = k.arch.page_size
        cpus = k.hw.cpus
        pending = [_PendingTlb(c.tlb) for c in cpus]
        eng.settle()
        occupied = self._occupied(span // page)
        mine = occupied.setdefault(task.mm.asid, set())
        end = addr + length
        a = addr
        try:
            while a < end:
                nxt = min((a | (span - 1)) + 1, end)
                v = value + (a - addr) // page
                block = a // span
                done = False
                if nxt - a == span and block not in mine:
                    done = self._table(task, how, a, v, ref, pending, block in occupied[None])
                    if done:
                        mine.add(block)
                        occupied[None].add(block)
                if not done:
                    for p in pending:
                        p.flush()
                    self._reference(task, how, a, nxt, v, ref)
                    occupied = self._occupied(span // page)
                    mine = occupied.setdefault(task.mm.asid, set())
                a = nxt
        finally:
            for p in pending:
                p.flush()
            eng.settle()
            eng.compact_pending()

    def _reference(self, task: Task, how: str, start: int, end: int, value: int, ref: RefLoop) -> None:
        """The reference loop over [start, end) of one table that does not qualify (a PMD-mapped
        THP the first write splits, a partial table); the table and the folios it allocated are
        offered for compaction as a recorded table's are, and compacted every ``_PENDING_MAX``
        tables, so that a long sweep of such tables keeps memory bounded."""
        from ptesim.fast.memo import _PENDING_MAX
        from ptesim.kernel.pgtable import PteTable

        eng = self.eng
        pages = eng.kernel.pages
        next_before = pages._next_pfn
        ref(task, how, start, end, value)
        tab = task.mm.pmd_entry(start) if task.alive else None
        self._offer(tab if isinstance(tab, PteTable) else None, next_before)
        if len(eng.materialised_tables) >= _PENDING_MAX:
            eng.compact_pending()

    def _offer(self, tab: PteTable | None, next_before: int) -> None:
        """Offer a table a loop ran on, and the block of folios it allocated from ``next_before``
        on, for compaction (done when the sweep ends, or sooner), if uniform: the new folios'
        contents by their rule."""
        eng = self.eng
        if tab is not None:
            eng.materialised_tables.append(tab)
        if eng.kernel.pages._next_pfn > next_before:
            eng._pending_blocks.add(next_before)

    def _occupied(self, n: int) -> dict[int | None, set[int]]:
        """By ASID (None: any), the PTE-table blocks (virtual page number // entries per table)
        a TLB entry on some CPU overlaps."""
        out: dict[int | None, set[int]] = {None: set()}
        for c in self.eng.kernel.hw.cpus:
            for asid, first, span in c.tlb.entries:
                blocks = range(first // n, (first + span - 1) // n + 1)
                out[None].update(blocks)
                out.setdefault(asid, set()).update(blocks)
        return out

    # ---- one table --------------------------------------------------------------------------------
    def _table(
        self,
        task: Task,
        how: str,
        base: int,
        value: int,
        ref: RefLoop,
        pending: list[_PendingTlb],
        others_cached: bool,
    ) -> bool:
        """Replay or record the loop over the table at ``base``, whose range no TLB entry of the
        process's ASID overlaps (``others_cached``: one of another ASID does); False if it does
        not qualify (the caller runs the reference loop)."""
        from ptesim.kernel.pgtable import PteTable

        eng = self.eng
        k = eng.kernel
        mm = task.mm
        tab = mm.pmd_entry(base)
        vma = mm.find_vma(base)
        if (
            not isinstance(tab, PteTable)
            or vma is None
            or vma.file is not None
            or vma.start > base
            or vma.end < base + eng._span
            or not task.alive
        ):
            return False
        hit = eng._linear_src(tab)
        if hit is None:
            return False
        run, bits = hit
        n = eng._n
        if any(c.tlb.capacity < 2 * n for c in k.hw.cpus):
            return False
        pages = k.pages
        free = any(pages._free.values())
        thp = k.thp
        key = (
            how,
            task.cpu,
            k.sink.stack,
            eng._vma_key(vma, base),
            eng._mm_key(mm),
            mm.global_asid,
            frozenset(mm.asid_transition),
            *eng._run_key(run, bits),
            thp.top,
            tuple(sorted(thp.per_order.items())),
            pages._next_pfn % eng._align,
            free,
            tuple(frozenset(c.tlb.spans) for c in k.hw.cpus),
        )
        if key in self.records:
            rec = self.records[key]
            if rec is None or (rec.any_asid and others_cached):
                return False
            self._replay(rec, task, mm, tab, run, base, value, pending)
            eng.stats["sweep_replayed"] += 1
            return True
        for p in pending:
            p.flush()
        eng.stats["sweep_recorded"] += 1
        self.records[key] = self._record(task, how, mm, tab, run, base, value, ref, free)
        return True

    def _replay(
        self,
        rec: SweepRecord,
        task: Task,
        mm: MmStruct,
        tab: Any,
        run: FolioRun,
        base: int,
        value: int,
        pending: list[_PendingTlb],
    ) -> None:
        from ptesim.kernel.folio import Folio

        eng = self.eng
        k = eng.kernel
        pages = k.pages
        old0 = run.pfn
        new0 = 0
        if rec.new_count:
            nr = 1 << rec.new_order
            new0 = (pages._next_pfn + nr - 1) & ~(nr - 1)
            proto = Folio(new0, rec.new_order)
            eng._apply_folio_changes(proto, rec.new_state)
            new = pages.alloc_run(new0, rec.new_order, rec.new_count, proto)
            new.data_rule = (value, 1)
        if rec.old_freed:
            run.proto.refcount = 0
            run.proto.freed = True
            del pages.runs[run.pfn]
            del pages._run_blocks[run.pfn // pages.run_span]
            pages._free.setdefault(run.order, []).append(range(run.pfn, run.end_pfn, 1 << run.order))
            pages.allocated -= run.count
        elif rec.old_change:
            eng._apply_folio_changes(run.proto, rec.old_change)
        u = eng._unit
        if rec.fill is not None:
            tab.make_linear(rec.fill, 0, eng._n)
        else:
            tab.make_linear(rec.bits + new0 * u, u, eng._n)
        for name, d in rec.rss:
            mm.rss[name] += d
        mm.nr_ptes += rec.nr_ptes
        vpn0 = base >> k.arch.page_shift
        for cpu, eff in rec.tlb:
            p = pending[cpu]
            p.tlb.spans.update(eff.spans)
            p.push(eff.evicted(len(p), p.tlb.capacity), eff.final, (mm.asid, vpn0, new0, old0))
        k.hw.current = task.cpu
        eng._owe(k.sink.counts, rec)  # type: ignore[arg-type]

    def _refuse(self, why: str) -> SweepRecord | None:
        """A loop whose record is not kept (``why``: which check failed, in the engine's stats)."""
        self.eng.stats[f"sweep_refused_{why}"] += 1
        return None

    # ---- recording ------------------------------------------------------------------------------
    def _elsewhere(self, mm: MmStruct, tab: Any, run: FolioRun, limit: int) -> tuple[Any, ...]:
        """Everything a table's loop must leave alone: every other page table of every mm (and the
        other mms' counters), every other run and every folio object below PFN ``limit`` (the
        allocator's bump pointer before the loop)."""
        eng = self.eng
        k = eng.kernel
        pages = k.pages
        tables: list[Any] = []
        for m in sorted(k.mms, key=lambda x: x.id):
            for t in m.pte_tables():
                if t is not tab:
                    tables.append((m.id, t.base, t.linear if t.linear is not None else tuple(t.entries)))
            tables.append((m.id, tuple(m.pmd_leaves())))
            if m is not mm:
                tables.append((m.id, tuple(sorted(m.rss.items())), m.nr_ptes, eng._mm_key(m)))
        runs = tuple(
            (p, r.order, r.count, r.data_rule, eng._folio_state(r.proto))
            for p, r in sorted(pages.runs.items())
            if r is not run
        )
        lo, hi = run.pfn, run.end_pfn
        folios = tuple(
            (p, eng._folio_state(f), tuple(f.data))
            for p, f in sorted(pages._by_pfn.items())
            if not lo <= p < hi and p < limit and not f.zero_page
        )
        return tuple(tables), runs, folios

    def _record(
        self,
        task: Task,
        how: str,
        mm: MmStruct,
        tab: PteTable,
        run: FolioRun,
        base: int,
        value: int,
        ref: RefLoop,
        free_before: bool,
    ) -> SweepRecord | None:
        """Run the reference loop over the table, counted and watched; its record if it qualifies."""
        eng = self.eng
        k = eng.kernel
        pages = k.pages
        n = eng._n
        page_shift = k.arch.page_shift
        vpn0 = base >> page_shift
        old0, old_end, old_order, old_count = run.pfn, run.end_pfn, run.order, run.count
        old_nr = 1 << old_order
        pages.materialise(old0)
        folios = [pages._by_pfn[p] for p in range(old0, old_end, old_nr)]
        states = [eng._folio_state(f) for f in folios]
        data = [list(f.data) for f in folios]
        others = self._elsewhere(mm, tab, run, pages._next_pfn)
        mm_before = (eng._mm_key(mm), mm.global_asid, frozenset(mm.asid_transition), mm.write_protect_seq)
        rss_before = Counter(mm.rss)
        nr_before = mm.nr_ptes
        alloc_before, next_before = pages.allocated, pages._next_pfn
        free_lists = {o: list(v) for o, v in pages._free.items()}
        tlb_before = [list(c.tlb.entries) for c in k.hw.cpus]
        logs = [_TlbLog(c.tlb, vpn0, vpn0 + n) for c in k.hw.cpus]
        # the loop runs on the reference engine alone: the per-table memos inside it would record
        # one zap per page offset, none of which recurs once the table is replayed whole
        k.fast = None
        try:
            _, counts = eng._recorded(ref, task, how, base, base + eng._span, value)
        finally:
            k.fast = eng
            for log in logs:
                log.close()
        self._offer(tab, next_before)
        # the table
        now = mm.pmd_entry(base)
        if now is not tab or not task.alive:
            return self._refuse("table")
        ents = tab.entries
        # the old folios: all freed (in address order), or one change to every one
        freed = [f.freed for f in folios]
        old_freed = all(freed)
        old_change: tuple[tuple[str, str, Any], ...] = ()
        if old_freed:
            pushed = [p for p in range(old0, old_end, old_nr)]
            fl = pages._free.get(old_order, [])
            before = free_lists.get(old_order, [])
            if fl[: len(before)] != before or fl[len(before) :] != pushed:
                return self._refuse("freed_order")
            if any(pages._free.get(o, []) != v for o, v in free_lists.items() if o != old_order):
                return self._refuse("free_lists")
        elif any(freed):
            return self._refuse("some_freed")
        else:
            changes = [
                eng._folio_changes(b, eng._folio_state(f)) for f, b in zip(folios, states, strict=True)
            ]
            if any(c != changes[0] for c in changes) or any(
                f.data != d for f, d in zip(folios, data, strict=True)
            ):
                return self._refuse("old_change")
            old_change = changes[0]
            if any(pages._free.get(o, []) != v for o, v in free_lists.items()) or len(pages._free) != len(
                free_lists
            ):
                return self._refuse("free_lists")
        # the table after, and new folios
        fill: int | None = None
        bits = 0
        new_order = new_count = 0
        new_state: tuple[tuple[str, str, Any], ...] = ()
        new_freed = old_count if old_freed else 0
        if all(e == ents[0] for e in ents) and not k.arch.pte_present(ents[0]):
            fill = ents[0]
            if pages._next_pfn != next_before or pages.allocated != alloc_before - new_freed:
                return self._refuse("fill_alloc")
        else:
            if free_before or old_freed:
                return self._refuse("new_with_free")
            first = pages.pfn_to_folio(eng._pfn(ents[0]))
            if first is None or first.pfn < next_before:
                return self._refuse("new_first")
            new_order = first.order
            nr = 1 << new_order
            new_count = n >> new_order
            if new_count << new_order != n:
                return self._refuse("new_order")
            new0 = first.pfn
            if new0 != (next_before + nr - 1) & ~(nr - 1) or pages._next_pfn != new0 + n:
                return self._refuse("new_place")
            if pages.allocated != alloc_before + new_count:
                return self._refuse("new_count")
            new = [pages._by_pfn.get(p) for p in range(new0, new0 + n, nr)]
            if any(f is None for f in new):
                return self._refuse("new_missing")
            fs: list[Folio] = [f for f in new if f is not None]
            rel = eng._relative(ents, list(fs), {id(f): j for j, f in enumerate(fs)})
            b = eng._linear_bits(rel, nr)
            if b is None:
                return self._refuse("new_linear")
            bits = b
            st0 = eng._folio_state(fs[0])[:-1]  # all but the PFN's offset in its block
            for j, f in enumerate(fs):
                if eng._folio_state(f)[:-1] != st0 or f.data != list(
                    range(value + j * nr, value + (j + 1) * nr)
                ):
                    return self._refuse("new_state")
            new_state = eng._full_state(fs[0])
        # nothing else
        if (
            eng._mm_key(mm),
            mm.global_asid,
            frozenset(mm.asid_transition),
            mm.write_protect_seq,
        ) != mm_before:
            return self._refuse("mm")
        lo_new, hi_new = (pages._next_pfn - n, pages._next_pfn) if new_count else (0, 0)
        tlb = []
        for cpu, (log, before_keys) in enumerate(zip(logs, tlb_before, strict=True)):
            eff = self._tlb_effect(log, before_keys, mm.asid, vpn0, n, (lo_new, hi_new), (old0, old_end))
            if eff is False:
                return self._refuse("tlb")
            if eff is not None:
                tlb.append((cpu, eff))
        after_others = self._elsewhere(mm, tab, run, next_before)
        if after_others != others:
            return self._refuse("elsewhere")
        return SweepRecord(
            counts=counts,
            fill=fill,
            bits=bits,
            new_order=new_order,
            new_count=new_count,
            new_state=new_state,
            old_freed=old_freed,
            old_change=old_change,
            rss=tuple((name, mm.rss.get(name, 0) - rss_before.get(name, 0)) for name in sorted(set(mm.rss))),
            nr_ptes=mm.nr_ptes - nr_before,
            tlb=tuple((c, e) for c, e in tlb if isinstance(e, CpuTlbEffect)),
            any_asid=any(log.any_asid for log in logs),
        )

    def _tlb_effect(
        self,
        log: _TlbLog,
        before: list[tuple[int, int, int]],
        asid: int,
        vpn0: int,
        n: int,
        new: tuple[int, int],
        old: tuple[int, int],
    ) -> CpuTlbEffect | bool | None:
        """One CPU's TLB effect relative to the table (None: untouched; False: not replayable)."""
        tlb = log.tlb
        if log.bad:
            return False
        ops: list[tuple[str, int, int]] = []
        spans: set[int] = set()
        for op in log.ops:
            key = op[1]
            a, first, span = key
            if a != asid or first < vpn0 or first + span > vpn0 + n:
                return False
            ops.append((op[0], first - vpn0, span))
            if op[0] == "ins":
                spans.add(span)
        if not ops:
            return None if list(tlb.entries) == before else False
        mine = [(key, e) for key, e in tlb.entries.items() if key[0] == asid and vpn0 <= key[1] < vpn0 + n]
        keys = list(tlb.entries)
        kept = keys[: len(keys) - len(mine)]
        if [key for key, _ in mine] != keys[len(keys) - len(mine) :]:
            return False
        evicted = len(before) - len(kept)
        if before[evicted:] != kept:
            return False
        final: list[RelEntry] = []
        for (_a, first, span), e in mine:
            if new[0] <= e.pfn < new[1]:
                where = ("n", e.pfn - new[0])
            elif old[0] <= e.pfn < old[1]:
                where = ("o", e.pfn - old[0])
            elif e.pfn == 0:
                where = ("a", 0)
            else:
                return False
            final.append((first - vpn0, span, where, e.writable))
        eff = CpuTlbEffect(tuple(ops), tuple(final), frozenset(spans))
        if eff.evicted(len(before), tlb.capacity) != evicted:
            return False
        return eff
