"""Reverse-map accounting of folios (``include/linux/rmap.h``, ``mm/rmap.c``, v6.9; v6.12 batching).

Each function updates mapcounts and PageAnonExclusive exactly as its kernel namesake does, and emits
one ``mapcount`` / ``large_mapcount`` / ``anon_exclusive`` event per atomic it performs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.errors import InvariantViolation
from ptesim.events import emit, kfunc
from ptesim.kernel.folio import Folio

if TYPE_CHECKING:
    from ptesim.kernel.mm import MmStruct, Vma

EBUSY = -16


def __folio_rmap_sanity_checks(folio: Folio, page: int, nr: int) -> None:
    """include/linux/rmap.h (v6.9): the pages of one rmap batch must all belong to ``folio``
    (``VM_WARN_ON_FOLIO(page_folio(page + nr_pages - 1) != folio)``)."""
    if nr <= 0 or page < 0 or page + nr > folio.nr_pages:
        raise InvariantViolation(
            "rmap_sanity", f"rmap batch of {nr} pages from page {page} runs past the end of {folio!r}"
        )


def folio_needs_cow_for_dma(vma: Vma, folio: Folio) -> bool:
    """include/linux/mm.h: only relevant once the mm has ever pinned (MMF_HAS_PINNED)."""
    return vma.mm.has_pinned and folio.maybe_dma_pinned()


def __lruvec_stat_mod_folio(folio: Folio, mm: MmStruct) -> None:
    """mm/memcontrol.c (v6.9): one update of a mapped-page statistic (NR_ANON_MAPPED,
    NR_FILE_MAPPED, NR_ANON_THPS, ...) on the node's and the folio's memcg per-CPU counters.  rmap
    calls it once per __folio_add_anon_rmap / __folio_add_file_rmap / __folio_remove_rmap call that
    changed the number of mapped pages (mm/rmap.c, v6.9), so a per-PTE zap of a large folio pays it
    per page and a batched zap once per batch."""
    emit("rmap_stat", mm=mm)


def _page_mapcount_atomic(folio: Folio, mm: MmStruct) -> None:
    """One atomic on a page's _mapcount -- unless the kernel is built with CONFIG_NO_PAGE_MAPCOUNT
    (v6.15, 20250303163014.1128035-1), where large folios keep no per-page mapcount (the model
    still tracks it, uncounted, for its checks)."""
    if not (folio.large and mm.kernel.cfg.no_page_mapcount):
        emit("mapcount", mm=mm)


@kfunc
def folio_try_dup_anon_rmap_ptes(folio: Folio, page: int, nr: int, src_vma: Vma, dst_mm: MmStruct) -> int:
    """__folio_try_dup_anon_rmap(RMAP_LEVEL_PTE): share ``nr`` pages with the child.

    ``page`` is the index of the first page within the folio.  Fails with -EBUSY (touching
    nothing) if the folio may be pinned and any of the pages is still exclusive: those must be
    copied for the child instead.
    """
    __folio_rmap_sanity_checks(folio, page, nr)
    cfg = dst_mm.kernel.cfg
    if folio_needs_cow_for_dma(src_vma, folio) and any(folio.anon_exclusive[page : page + nr]):
        return EBUSY
    for i in range(page, page + nr):
        if folio.anon_exclusive[i]:
            emit("anon_exclusive", mm=dst_mm)
            folio.anon_exclusive[i] = False
        _page_mapcount_atomic(folio, dst_mm)
        folio.mapcount[i] += 1
    if cfg.large_mapcount and folio.large:
        emit("large_mapcount", mm=dst_mm)
        folio.large_mapcount += nr
    return 0


def folio_try_dup_anon_rmap_pte(folio: Folio, page: int, src_vma: Vma, dst_mm: MmStruct) -> int:
    return folio_try_dup_anon_rmap_ptes(folio, page, 1, src_vma, dst_mm)


@kfunc
def folio_try_dup_anon_rmap_pmd(folio: Folio, src_vma: Vma, dst_mm: MmStruct) -> int:
    """__folio_try_dup_anon_rmap(RMAP_LEVEL_PMD)."""
    if folio_needs_cow_for_dma(src_vma, folio) and any(folio.anon_exclusive):
        return EBUSY
    if any(folio.anon_exclusive):
        emit("anon_exclusive", mm=dst_mm)
        folio.anon_exclusive = [False] * folio.nr_pages
    emit("mapcount", mm=dst_mm)
    folio.entire_mapcount += 1
    if dst_mm.kernel.cfg.large_mapcount:
        emit("large_mapcount", mm=dst_mm)
        folio.large_mapcount += folio.nr_pages
    return 0


@kfunc
def folio_dup_file_rmap_ptes(folio: Folio, page: int, nr: int, dst_mm: MmStruct) -> None:
    __folio_rmap_sanity_checks(folio, page, nr)
    for i in range(page, page + nr):
        _page_mapcount_atomic(folio, dst_mm)
        folio.mapcount[i] += 1
    if dst_mm.kernel.cfg.large_mapcount and folio.large:
        emit("large_mapcount", mm=dst_mm)
        folio.large_mapcount += nr


@kfunc
def folio_add_new_anon_rmap(folio: Folio, vma: Vma, addr: int, pmd_mapped: bool = False) -> None:
    """A freshly allocated anonymous folio becomes mapped, every page exclusive to this mm."""
    mm = vma.mm
    folio.anon = True
    if pmd_mapped:
        emit("mapcount", mm=mm)
        folio.entire_mapcount = 1
    else:
        for i in range(folio.nr_pages):
            _page_mapcount_atomic(folio, mm)
            folio.mapcount[i] = 1
    for i in range(folio.nr_pages):
        folio.anon_exclusive[i] = True
    emit("anon_exclusive", folio.nr_pages if not pmd_mapped else 1, mm=mm)
    if mm.kernel.cfg.large_mapcount and folio.large:
        emit("large_mapcount", mm=mm)
        folio.large_mapcount = folio.nr_pages
    if pmd_mapped:
        __lruvec_stat_mod_folio(folio, mm)  # NR_ANON_THPS
    __lruvec_stat_mod_folio(folio, mm)  # NR_ANON_MAPPED


@kfunc
def folio_add_file_rmap_ptes(folio: Folio, page: int, nr: int, vma: Vma) -> None:
    """__folio_add_rmap(RMAP_LEVEL_PTE): per page ``atomic_inc_and_test(&page->_mapcount)``; a page
    of a large folio that became mapped raises ``_nr_pages_mapped`` -- per page, or once for the
    batch (:func:`folio_add_nr_pages_mapped`)."""
    __folio_rmap_sanity_checks(folio, page, nr)
    mm = vma.mm
    first = 0
    for i in range(page, page + nr):
        _page_mapcount_atomic(folio, mm)
        folio.mapcount[i] += 1
        if folio.mapcount[i] == 1 and folio.large:
            first += 1
            if not mm.kernel.cfg.nr_pages_mapped_batch:
                folio_inc_nr_pages_mapped(folio, mm)
    if first and mm.kernel.cfg.nr_pages_mapped_batch:
        folio_add_nr_pages_mapped(folio, mm, first)
    if first or (not folio.large and folio.mapcount[page] == 1):
        __lruvec_stat_mod_folio(folio, mm)  # NR_FILE_MAPPED
    if vma.mm.kernel.cfg.large_mapcount and folio.large:
        emit("large_mapcount", mm=vma.mm)
        folio.large_mapcount += nr


def folio_inc_nr_pages_mapped(folio: Folio, mm: MmStruct) -> None:
    """``__folio_add_rmap`` (mm/rmap.c, v6.9 - v6.11), the step after a page of a large folio gained
    its first PTE mapping: ``atomic_inc_return_relaxed(&folio->_nr_pages_mapped)``, one atomic
    per such page.  Counted as a ``mapcount`` atomic."""
    emit("mapcount", mm=mm)


def folio_add_nr_pages_mapped(folio: Folio, mm: MmStruct, first: int) -> None:
    """``__folio_add_rmap`` after 43c9074e6f09 (v6.12, LKML 20240807115515.1640951-1): the loop only
    sums the pages that became mapped; one ``atomic_add_return_relaxed(first,
    &folio->_nr_pages_mapped)`` for the whole batch."""
    emit("mapcount", mm=mm)


def folio_sub_nr_pages_mapped(folio: Folio, mm: MmStruct, last: int) -> None:
    """``__folio_remove_rmap`` after 43c9074e6f09 (v6.12, LKML 20240807115515.1640951-1): the loop
    only sums the pages that lost their last mapping; one ``atomic_sub_return_relaxed(last,
    &folio->_nr_pages_mapped)`` for the whole batch."""
    emit("mapcount", mm=mm)


def folio_dec_nr_pages_mapped(folio: Folio, mm: MmStruct, nr: int = 1) -> None:
    """``__folio_remove_rmap`` (mm/rmap.c, v6.9), the step after a page of a large folio lost its
    last PTE mapping: ``atomic_dec_return_relaxed(&folio->_nr_pages_mapped)``, one atomic per such
    page (RMAP_LEVEL_PMD: one ``atomic_sub_return_relaxed(ENTIRELY_MAPPED, ...)`` when the last
    PMD mapping goes, ``nr`` = 1).  Counted as a ``mapcount`` atomic."""
    emit("mapcount", nr, mm=mm)


@kfunc
def folio_remove_rmap_ptes(folio: Folio, page: int, nr: int, vma: Vma) -> None:
    """__folio_remove_rmap(RMAP_LEVEL_PTE): per page, ``atomic_add_negative(-1, &page->_mapcount)``
    and, if that was the page's last mapping and the folio is large, the ``_nr_pages_mapped``
    decrement (:func:`folio_dec_nr_pages_mapped`; from v6.12 one subtraction for the batch,
    :func:`folio_sub_nr_pages_mapped`).  An anon page that is no longer mapped loses
    AnonExclusive."""
    __folio_rmap_sanity_checks(folio, page, nr)
    mm = vma.mm
    batch = mm.kernel.cfg.nr_pages_mapped_batch
    last = 0
    for i in range(page, page + nr):
        _page_mapcount_atomic(folio, mm)
        folio.mapcount[i] -= 1
        if folio.mapcount[i] < 0:
            raise AssertionError(f"mapcount underflow on page {i} of {folio!r}")
        if folio.mapcount[i] == 0 and folio.large:
            last += 1
            if not batch:
                folio_dec_nr_pages_mapped(folio, mm)
        if folio.mapcount[i] == 0 and folio.entire_mapcount == 0 and folio.anon_exclusive[i]:
            folio.anon_exclusive[i] = False
    if last and batch:
        folio_sub_nr_pages_mapped(folio, mm, last)
    if last or (not folio.large and folio.mapcount[page] == 0):
        __lruvec_stat_mod_folio(folio, mm)  # NR_ANON_MAPPED / NR_FILE_MAPPED
    if mm.kernel.cfg.large_mapcount and folio.large:
        emit("large_mapcount", mm=mm)
        folio.large_mapcount -= nr


def folio_remove_rmap_pte(folio: Folio, page: int, vma: Vma) -> None:
    folio_remove_rmap_ptes(folio, page, 1, vma)


@kfunc
def folio_remove_rmap_pmd(folio: Folio, vma: Vma) -> None:
    """__folio_remove_rmap(RMAP_LEVEL_PMD): ``_entire_mapcount`` and, when that was the last PMD
    mapping, ``_nr_pages_mapped`` loses ENTIRELY_MAPPED."""
    emit("mapcount", mm=vma.mm)
    folio.entire_mapcount -= 1
    if folio.entire_mapcount < 0:
        raise AssertionError(f"entire mapcount underflow on {folio!r}")
    if folio.entire_mapcount == 0:
        folio_dec_nr_pages_mapped(folio, vma.mm)
        __lruvec_stat_mod_folio(folio, vma.mm)  # NR_ANON_THPS / NR_*_PMDMAPPED
        if not any(folio.mapcount):
            __lruvec_stat_mod_folio(folio, vma.mm)  # NR_ANON_MAPPED / NR_FILE_MAPPED
    if vma.mm.kernel.cfg.large_mapcount:
        emit("large_mapcount", mm=vma.mm)
        folio.large_mapcount -= folio.nr_pages
    if folio.entire_mapcount == 0 and not any(folio.mapcount):
        folio.anon_exclusive = [False] * folio.nr_pages
