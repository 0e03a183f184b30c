"""``struct mmu_gather`` (``include/asm-generic/tlb.h``, ``mm/mmu_gather.c``, v6.9).

Unmapping clears PTEs first and invalidates later: the gather widens a range as entries are cleared
(``tlb_flush_{pte,pmd,pud,p4d}_range`` set ``cleared_*``; ``{pte,pmd,pud}_free_tlb`` set
``freed_tables`` as well), queues the pages, and at each flush point calls the arch's ``tlb_flush``
*before* the queued folios are released.  The arch reads the stride from :meth:`tlb_get_unmap_shift`
at flush time: the smallest entry size cleared since the last flush.

Batches follow ``mm/mmu_gather.c``: the on-stack ``local`` batch holds MMU_GATHER_BUNDLE slots; then up
to MAX_GATHER_BATCH_COUNT batch pages of MAX_GATHER_BATCH slots each, both derived from PAGE_SIZE.  A
large-folio entry takes two slots (encoded page + nr_pages).  After each add, a batch with fewer than
two free slots moves the gather on to the next batch page (``tlb_next_batch``); when there is none
to move to, the caller must flush.  With delayed rmaps pending, the gather never leaves the first
batch page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.events import emit, kfunc
from ptesim.kernel.folio import Folio, FolioRun

if TYPE_CHECKING:
    from ptesim.kernel.mm import MmStruct, Vma

MMU_GATHER_BUNDLE = 8
#: sizeof(struct mmu_gather_batch) before its flexible array: next pointer + nr + max.
MMU_GATHER_BATCH_HEADER = 16
POINTER_SIZE = 8


def max_gather_batch(page_size: int) -> int:
    """MAX_GATHER_BATCH: encoded-page slots in one batch page (510 for 4K, 2046 for 16K, 8190 for 64K)."""
    return (page_size - MMU_GATHER_BATCH_HEADER) // POINTER_SIZE


def max_gather_batch_count(page_size: int) -> int:
    """MAX_GATHER_BATCH_COUNT = 10000 / MAX_GATHER_BATCH (19 for 4K, 4 for 16K, 1 for 64K)."""
    return 10000 // max_gather_batch(page_size)


class MmuGatherBatch:
    """``struct mmu_gather_batch``: ``nr`` slots used of ``max``."""

    __slots__ = ("max", "nr")

    def __init__(self, max_: int) -> None:
        self.nr = 0
        self.max = max_


class MmuGather:
    def __init__(self, mm: MmStruct, fullmm: bool) -> None:
        self.mm = mm
        self.fullmm = fullmm
        self.need_flush_all = False
        page_size = mm.kernel.arch.page_size
        self.max_batch = max_gather_batch(page_size)
        self.max_batch_count = max_gather_batch_count(page_size)
        #: local (on-stack) batch first, then the batch pages tlb_next_batch() allocated
        self.batches: list[MmuGatherBatch] = [MmuGatherBatch(MMU_GATHER_BUNDLE)]
        self.active = 0
        self.batch_count = 0
        #: tlb->delayed_rmap: some queued entries still hold their rmap (dirty shared folios)
        self.delayed_rmap = False
        #: queued (folio, nr) entries; the fast engine may queue a whole compact run as one entry
        self.pages: list[tuple[Folio | FolioRun, int]] = []
        self.delayed_rmaps: list[tuple[Folio, int, int]] = []
        self.flushes = 0
        self._reset_range()
        #: Mutants may set this to release pages before the TLB flush (a real historical bug class).
        self.free_before_flush = False

    def _reset_range(self) -> None:
        """__tlb_reset_range()."""
        if self.fullmm:
            self.start, self.end = 0, 1 << 64
        else:
            self.start, self.end = 1 << 64, 0
        self.freed_tables = False
        self.cleared_ptes = False
        self.cleared_pmds = False
        self.cleared_puds = False
        self.cleared_p4ds = False

    def __tlb_adjust_range(self, addr: int, size: int) -> None:
        self.start = min(self.start, addr)
        self.end = max(self.end, addr + size)

    def tlb_flush_pte_range(self, addr: int, size: int) -> None:
        self.__tlb_adjust_range(addr, size)
        self.cleared_ptes = True

    def tlb_flush_pmd_range(self, addr: int, size: int) -> None:
        self.__tlb_adjust_range(addr, size)
        self.cleared_pmds = True

    def tlb_flush_pud_range(self, addr: int, size: int) -> None:
        self.__tlb_adjust_range(addr, size)
        self.cleared_puds = True

    def tlb_flush_p4d_range(self, addr: int, size: int) -> None:
        self.__tlb_adjust_range(addr, size)
        self.cleared_p4ds = True

    def tlb_remove_tlb_entries(self, addr: int, nr: int) -> None:
        self.tlb_flush_pte_range(addr, nr << self.mm.kernel.arch.page_shift)

    def tlb_get_unmap_shift(self) -> int:
        """include/asm-generic/tlb.h: the smallest entry size cleared since the last flush."""
        g = self.mm.kernel.arch.geometry
        if self.cleared_ptes:
            return g.page_shift
        if self.cleared_pmds:
            return g.pmd_shift
        if self.cleared_puds:
            return g.shifts[-3] if g.levels >= 3 else g.pmd_shift
        if self.cleared_p4ds:
            return g.shifts[-4] if g.levels >= 4 else g.shifts[0]
        return g.page_shift

    def tlb_get_level(self) -> int | None:
        """arm64 asm/tlb.h tlb_get_level(): the TTL hint (3 = PTE ... 0 = P4D) when exactly one
        level was cleared and no table was freed, else unknown (None)."""
        if self.freed_tables:
            return None
        cleared = (self.cleared_ptes, self.cleared_pmds, self.cleared_puds, self.cleared_p4ds)
        if sum(cleared) != 1:
            return None
        return 3 - cleared.index(True)


def tlb_gather_mmu(mm: MmStruct) -> MmuGather:
    return MmuGather(mm, fullmm=False)


def tlb_gather_mmu_fullmm(mm: MmStruct) -> MmuGather:
    return MmuGather(mm, fullmm=True)


# ---- freeing page tables (include/asm-generic/tlb.h, v6.9) -----------------------------------
# Each records a one-page range at the table's base address at the level above it, so the arch
# flush that follows also invalidates walk caches holding the freed table.


def pte_free_tlb(tlb: MmuGather, addr: int) -> None:
    """A PTE table covering ``addr`` (PMD-aligned) is freed: tlb_flush_pmd_range(addr, PAGE_SIZE)."""
    tlb.tlb_flush_pmd_range(addr, tlb.mm.kernel.arch.page_size)
    tlb.freed_tables = True


def pmd_free_tlb(tlb: MmuGather, addr: int) -> None:
    """A PMD table covering ``addr`` (PUD-aligned) is freed: tlb_flush_pud_range(addr, PAGE_SIZE)."""
    tlb.tlb_flush_pud_range(addr, tlb.mm.kernel.arch.page_size)
    tlb.freed_tables = True


def pud_free_tlb(tlb: MmuGather, addr: int) -> None:
    """A PUD table covering ``addr`` is freed: tlb_flush_p4d_range(addr, PAGE_SIZE)."""
    tlb.tlb_flush_p4d_range(addr, tlb.mm.kernel.arch.page_size)
    tlb.freed_tables = True


# ---- batching (mm/mmu_gather.c) -----------------------------------------------------------------


def tlb_next_batch(tlb: MmuGather) -> bool:
    """Move on to the next batch page, allocating one while fewer than MAX_GATHER_BATCH_COUNT
    exist; False when the gather must be flushed first (also with delayed rmaps pending outside
    the local batch)."""
    if tlb.delayed_rmap and tlb.active != 0:
        return False
    if tlb.active + 1 < len(tlb.batches):
        tlb.active += 1
        return True
    if tlb.batch_count == tlb.max_batch_count:
        return False
    tlb.batch_count += 1
    tlb.batches.append(MmuGatherBatch(tlb.max_batch))
    tlb.active = len(tlb.batches) - 1
    return True


def __tlb_remove_folio_pages(tlb: MmuGather, folio: Folio, nr: int, delay_rmap: bool = False) -> bool:
    """Queue ``nr`` references of ``folio``; True when the batch is full (force a flush).

    ``delay_rmap``: the rmap of these pages is removed only after the TLB flush (tlb_flush_rmaps);
    the caller has set ``tlb.delayed_rmap`` through tlb_delay_rmap()."""
    batch = tlb.batches[tlb.active]
    # One entry (an encoded page, plus its nr_pages for a range): queued here, and at the flush
    # released by free_pages_and_swap_cache(), which reads page_folio() of the entry's page.
    emit("tlb_page", mm=tlb.mm)
    tlb.pages.append((folio, nr))
    batch.nr += 1 if nr == 1 else 2
    if tlb.free_before_flush:
        tlb_batch_pages_flush(tlb)
        return False
    # Always leave room for another page + nr_pages pair.
    return batch.nr >= batch.max - 1 and not tlb_next_batch(tlb)


def tlb_delay_rmap(tlb: MmuGather) -> bool:
    """CONFIG_SMP: remember that delayed rmaps are pending, and say yes."""
    tlb.delayed_rmap = True
    return True


@kfunc
def tlb_flush_mmu_tlbonly(tlb: MmuGather) -> None:
    """Flush the TLB for what was cleared since the last flush (arch ``tlb_flush``)."""
    if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds or tlb.cleared_puds or tlb.cleared_p4ds):
        return
    arch = tlb.mm.kernel.arch
    arch.tlb_flush(tlb)
    tlb.flushes += 1
    start, end = tlb.start, tlb.end
    tlb._reset_range()
    if not tlb.mm.dead:
        arch.hw.flush_point(tlb.mm, start, end, "mmu_gather")


@kfunc
def tlb_batch_pages_flush(tlb: MmuGather) -> None:
    """free_pages_and_swap_cache(): one folio_put_refs per queued entry; back to the local batch."""
    pages = tlb.mm.kernel.pages
    for folio, nr in tlb.pages:
        if isinstance(folio, Folio):
            pages.folio_put_refs(folio, nr, mm=tlb.mm)
        else:  # a compact run of folios the fast engine queued as one entry
            pages.put_run_refs(folio, nr, mm=tlb.mm)
    tlb.pages.clear()
    for batch in tlb.batches:
        batch.nr = 0
    tlb.active = 0


@kfunc
def tlb_flush_rmaps(tlb: MmuGather, vma: Vma) -> None:
    """Remove the rmaps delayed until after the TLB flush (dirty shared folios)."""
    from ptesim.kernel.rmap import folio_remove_rmap_ptes

    if not tlb.delayed_rmap:
        return
    for folio, page, nr in tlb.delayed_rmaps:
        folio_remove_rmap_ptes(folio, page, nr, vma)
    tlb.delayed_rmaps.clear()
    tlb.delayed_rmap = False


@kfunc
def tlb_flush_mmu(tlb: MmuGather) -> None:
    tlb_flush_mmu_tlbonly(tlb)
    tlb_batch_pages_flush(tlb)


def tlb_end_vma(tlb: MmuGather) -> None:
    """Per-VMA flush unless the whole mm is going away."""
    if not tlb.fullmm:
        tlb_flush_mmu_tlbonly(tlb)


@kfunc
def tlb_finish_mmu(tlb: MmuGather) -> None:
    tlb_flush_mmu(tlb)
