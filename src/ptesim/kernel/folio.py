"""Folios and the physical page allocator (``include/linux/mm_types.h``, ``mm/page_alloc.c``).

A folio is a naturally aligned run of ``1 << order`` base pages.  Per folio the model keeps what the
fork/zap/COW paths touch: the refcount, per-page ``_mapcount``, ``_entire_mapcount`` (PMD mappings),
``_large_mapcount``, per-page ``PageAnonExclusive``, a pin count, and per-page contents (an integer a
write replaces) so that isolation between parent and child can be checked.

Mapcounts are stored 0-based (the kernel's ``_mapcount`` is offset by -1; the offset carries no
behaviour here).
"""

from __future__ import annotations

from ptesim.events import emit

#: GUP_PIN_COUNTING_BIAS (include/linux/mm.h): a pin of a small folio adds this to the refcount.
GUP_PIN_COUNTING_BIAS = 1024


class Folio:
    __slots__ = (
        "anon",
        "anon_exclusive",
        "data",
        "dirty",
        "entire_mapcount",
        "freed",
        "large_mapcount",
        "mapcount",
        "nr_pages",
        "order",
        "pfn",
        "pincount",
        "refcount",
        "zero_page",
    )

    def __init__(self, pfn: int, order: int) -> None:
        self.pfn = pfn
        self.order = order
        self.nr_pages = 1 << order
        self.refcount = 1
        self.mapcount = [0] * self.nr_pages
        self.entire_mapcount = 0
        self.large_mapcount = 0
        self.anon_exclusive = [False] * self.nr_pages
        self.pincount = 0
        self.data = [0] * self.nr_pages
        self.anon = False
        self.dirty = False
        self.freed = False
        self.zero_page = False

    def __repr__(self) -> str:
        return f"<folio pfn={self.pfn:#x} order={self.order} ref={self.refcount}>"

    @property
    def large(self) -> bool:
        return self.order > 0

    @property
    def end_pfn(self) -> int:
        return self.pfn + self.nr_pages

    def total_mapcount(self) -> int:
        """folio_mapcount(): PTE mappings of every page plus PMD mappings of the whole folio."""
        return sum(self.mapcount) + self.entire_mapcount

    def maybe_dma_pinned(self) -> bool:
        """folio_maybe_dma_pinned() (include/linux/mm.h): large folios keep an exact pin count."""
        return self.pincount > 0


# ---- counted folio atomics (include/linux/page_ref.h, mm.h) -------------------------------------


def folio_get(folio: Folio, mm: object | None = None) -> None:
    emit("folio_ref", mm=mm)
    folio.refcount += 1


def folio_ref_add(folio: Folio, nr: int, mm: object | None = None) -> None:
    emit("folio_ref", mm=mm)
    folio.refcount += nr


def folio_ref_sub(folio: Folio, nr: int, mm: object | None = None) -> None:
    emit("folio_ref", mm=mm)
    folio.refcount -= nr


class FolioRun:
    """``count`` folios of one order at consecutive PFNs from ``pfn``, every one in the state of
    ``proto`` (all fields but the PFN): the fast engine's compact form of the folios one uniform
    PTE table maps.  No kernel code sees a run: the allocator turns it back into folio objects
    (:meth:`PageAllocator.materialise`) the moment any of its PFNs is looked up.

    ``data_rule`` ``(first, step)``, if set, replaces the prototype's contents: page ``i`` of the
    run (counted from its first PFN) holds ``first + i * step`` (a sweep that wrote one value per
    page, such as a COW write of every page, leaves its new folios this way)."""

    __slots__ = ("count", "data_rule", "order", "pfn", "proto")

    def __init__(
        self, pfn: int, order: int, count: int, proto: Folio, data_rule: tuple[int, int] | None = None
    ) -> None:
        self.pfn = pfn
        self.order = order
        self.count = count
        self.proto = proto
        self.data_rule = data_rule

    @property
    def end_pfn(self) -> int:
        return self.pfn + (self.count << self.order)


class PageAllocator:
    """A PFN space handing out naturally aligned folios of any order (a simple buddy-less allocator:
    a bump pointer plus per-order free lists).  PFN 0 is the shared zero page.

    Folios of a :class:`FolioRun` (the fast engine's compact form: ``run_span`` pages from any
    PFN, keyed by their first PFN) are allocated but have no objects until looked up."""

    def __init__(self, max_order: int) -> None:
        self.max_order = max_order
        self._next_pfn = 1 << max_order
        #: free PFNs per order, the last freed on top; a ``range`` stands for its PFNs pushed in
        #: order (the fast engine frees a compact run as one)
        self._free: dict[int, list[int | range]] = {}
        self._by_pfn: dict[int, Folio] = {}
        self.zero_page = Folio(0, 0)
        self.zero_page.zero_page = True
        self.zero_page.refcount = 1 << 30
        self._by_pfn[0] = self.zero_page
        self._page_folio: dict[int, Folio] = {0: self.zero_page}
        self.allocated = 0
        #: compact runs by first PFN, each covering ``run_span`` PFNs (0: no runs), and by the
        #: ``run_span``-aligned block their first PFN is in (runs do not overlap: one per block)
        self.runs: dict[int, FolioRun] = {}
        self._run_blocks: dict[int, FolioRun] = {}
        self.run_span = 0
        #: first PFNs of runs materialised since the fast engine last looked
        self.materialised: list[int] = []

    @property
    def by_pfn(self) -> dict[int, Folio]:
        """Every allocated folio by PFN (compact runs materialised first)."""
        if self.runs:
            for pfn in list(self.runs):
                self.materialise(pfn)
        return self._by_pfn

    def materialise(self, pfn: int) -> None:
        """Turn the run starting at ``pfn`` into folio objects in the run's state."""
        run = self.runs.pop(pfn)
        del self._run_blocks[pfn // self.run_span]
        proto = run.proto
        nr = proto.nr_pages
        by_pfn, pages = self._by_pfn, self._page_folio
        rule = run.data_rule
        for p in range(run.pfn, run.end_pfn, nr):
            f = Folio.__new__(Folio)
            f.pfn = p
            f.order = proto.order
            f.nr_pages = nr
            f.refcount = proto.refcount
            f.mapcount = list(proto.mapcount)
            f.entire_mapcount = proto.entire_mapcount
            f.large_mapcount = proto.large_mapcount
            f.anon_exclusive = list(proto.anon_exclusive)
            f.pincount = proto.pincount
            if rule is None:
                f.data = list(proto.data)
            else:
                first = rule[0] + (p - run.pfn) * rule[1]
                f.data = list(range(first, first + nr * rule[1], rule[1])) if rule[1] else [first] * nr
            f.anon = proto.anon
            f.dirty = proto.dirty
            f.freed = proto.freed
            f.zero_page = proto.zero_page
            by_pfn[p] = f
            for q in range(p, p + nr):
                pages[q] = f
        self.materialised.append(pfn)

    def alloc_run(self, pfn: int, order: int, count: int, proto: Folio) -> FolioRun:
        """Allocate ``count`` folios of ``order`` from ``pfn`` (the bump pointer, which must be
        there) as one compact run in the state of ``proto``; nothing is counted here (the fast
        engine replays the allocations' counts from its record)."""
        assert not any(self._free.values()) and pfn >= self._next_pfn and count << order == self.run_span
        run = FolioRun(pfn, order, count, proto)
        self._next_pfn = run.end_pfn
        self.add_run(run)
        self.allocated += count
        return run

    def add_run(self, run: FolioRun) -> None:
        """Register a compact run (its PFNs hold no folio objects)."""
        self.runs[run.pfn] = run
        self._run_blocks[run.pfn // self.run_span] = run

    def run_at(self, pfn: int) -> FolioRun | None:
        """The compact run holding ``pfn``, if any."""
        if not self.runs:
            return None
        b = pfn // self.run_span
        for run in (self._run_blocks.get(b), self._run_blocks.get(b - 1)):
            if run is not None and run.pfn <= pfn < run.end_pfn:
                return run
        return None

    def folio_alloc(self, order: int, mm: object | None = None) -> Folio:
        """Allocate a folio of ``order`` (counted: ``folio_alloc``)."""
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order {order} out of range 0..{self.max_order}")
        emit("folio_alloc", mm=mm)
        free = self._free.get(order)
        if free:
            top = free[-1]
            if type(top) is range:
                pfn = top[-1]
                if len(top) > 1:
                    free[-1] = top[:-1]
                else:
                    free.pop()
            else:
                last = free.pop()
                assert type(last) is int
                pfn = last
        else:
            size = 1 << order
            pfn = (self._next_pfn + size - 1) & ~(size - 1)
            self._next_pfn = pfn + size
        folio = Folio(pfn, order)
        self._by_pfn[pfn] = folio
        pages = self._page_folio
        for p in range(pfn, pfn + folio.nr_pages):
            pages[p] = folio
        self.allocated += 1
        return folio

    def free_folio(self, folio: Folio, mm: object | None = None) -> None:
        """Return a folio whose refcount reached zero (counted: ``folio_free``)."""
        assert not folio.zero_page
        if folio.freed:
            raise AssertionError(f"double free of {folio!r}")
        emit("folio_free", mm=mm)
        folio.freed = True
        del self._by_pfn[folio.pfn]
        pages = self._page_folio
        for p in range(folio.pfn, folio.end_pfn):
            del pages[p]
        self._free.setdefault(folio.order, []).append(folio.pfn)
        self.allocated -= 1

    def pfn_to_folio(self, pfn: int) -> Folio | None:
        """The folio containing ``pfn`` (page_folio(pfn_to_page(pfn))), or None if free."""
        f = self._page_folio.get(pfn)
        if f is None and self.runs:
            run = self.run_at(pfn)
            if run is not None:
                self.materialise(run.pfn)
                return self._page_folio.get(pfn)
        return f

    def folio_put_refs(self, folio: Folio, nr: int, mm: object | None = None) -> None:
        """folio_put_refs(): drop ``nr`` references with one atomic; free at zero."""
        emit("folio_ref", mm=mm)
        folio.refcount -= nr
        if folio.refcount < 0:
            raise AssertionError(f"refcount underflow on {folio!r}")
        if folio.refcount == 0:
            self.free_folio(folio, mm)

    def put_run_refs(self, run: FolioRun, nr: int, mm: object | None = None) -> None:
        """``folio_put_refs(folio, nr)`` on every folio of a compact run, in PFN order: the release
        of a run the fast engine queued in an mmu_gather as one entry (it stands for one queued
        entry per folio).  While the run is still held compact and none of its folios reaches
        zero, the one change is made to the run's prototype (one counted atomic per folio, as
        ``free_pages_and_swap_cache()`` does); otherwise each folio object is released."""
        proto = run.proto
        if self.runs.get(run.pfn) is run:
            if proto.refcount > nr:
                emit("folio_ref", run.count, mm=mm)
                proto.refcount -= nr
                return
            if proto.refcount == nr and "free_folio" not in vars(self):
                # every folio reaches zero: free_folio() of each, the run's PFNs pushed in order
                emit("folio_ref", run.count, mm=mm)
                emit("folio_free", run.count, mm=mm)
                proto.refcount = 0
                proto.freed = True
                del self.runs[run.pfn]
                del self._run_blocks[run.pfn // self.run_span]
                self._free.setdefault(run.order, []).append(range(run.pfn, run.end_pfn, 1 << run.order))
                self.allocated -= run.count
                return
        for p in range(run.pfn, run.end_pfn, 1 << run.order):
            folio = self.pfn_to_folio(p)
            assert folio is not None
            self.folio_put_refs(folio, nr, mm)

    def folio_put(self, folio: Folio, mm: object | None = None) -> None:
        self.folio_put_refs(folio, 1, mm)
