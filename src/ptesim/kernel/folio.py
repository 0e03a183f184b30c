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


class PageAllocator:
    """A PFN space handing out naturally aligned folios of any order (a simple buddy-less allocator:
    a bump pointer plus per-order free lists).  PFN 0 is the shared zero page."""

    def __init__(self, max_order: int) -> None:
        self.max_order = max_order
        self._next_pfn = 1 << max_order
        self._free: dict[int, list[int]] = {}
        self.by_pfn: dict[int, Folio] = {}
        self.zero_page = Folio(0, 0)
        self.zero_page.zero_page = True
        self.zero_page.refcount = 1 << 30
        self.by_pfn[0] = self.zero_page
        self._page_folio: dict[int, Folio] = {0: self.zero_page}
        self.allocated = 0

    def folio_alloc(self, order: int, mm: object | None = None) -> Folio:
        """Allocate a folio of ``order`` (counted: ``folio_alloc``)."""
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order {order} out of range 0..{self.max_order}")
        emit("folio_alloc", mm=mm)
        free = self._free.get(order)
        if free:
            pfn = free.pop()
        else:
            size = 1 << order
            pfn = (self._next_pfn + size - 1) & ~(size - 1)
            self._next_pfn = pfn + size
        folio = Folio(pfn, order)
        self.by_pfn[pfn] = folio
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
        del self.by_pfn[folio.pfn]
        pages = self._page_folio
        for p in range(folio.pfn, folio.end_pfn):
            del pages[p]
        self._free.setdefault(folio.order, []).append(folio.pfn)
        self.allocated -= 1

    def pfn_to_folio(self, pfn: int) -> Folio | None:
        """The folio containing ``pfn`` (page_folio(pfn_to_page(pfn))), or None if free."""
        return self._page_folio.get(pfn)

    def folio_put_refs(self, folio: Folio, nr: int, mm: object | None = None) -> None:
        """folio_put_refs(): drop ``nr`` references with one atomic; free at zero."""
        emit("folio_ref", mm=mm)
        folio.refcount -= nr
        if folio.refcount < 0:
            raise AssertionError(f"refcount underflow on {folio!r}")
        if folio.refcount == 0:
            self.free_folio(folio, mm)

    def folio_put(self, folio: Folio, mm: object | None = None) -> None:
        self.folio_put_refs(folio, 1, mm)
