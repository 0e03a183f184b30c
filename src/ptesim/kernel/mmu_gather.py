"""``struct mmu_gather`` (``include/asm-generic/tlb.h``, ``mm/mmu_gather.c``, v6.9).

Unmapping clears PTEs first and invalidates later: the gather widens a range as PTEs are cleared,
queues the pages, and at each flush point calls the arch's ``tlb_flush`` *before* the queued folios
are released.  Batch capacity follows the kernel: MMU_GATHER_BUNDLE on-stack slots plus up to
MAX_GATHER_BATCH_COUNT batch pages of MAX_GATHER_BATCH slots; a large-folio entry takes two slots
(encoded page + nr_pages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.events import kfunc
from ptesim.kernel.folio import Folio

if TYPE_CHECKING:
    from ptesim.kernel.mm import MmStruct

MMU_GATHER_BUNDLE = 8
MAX_GATHER_BATCH = (4096 - 16) // 8  # 510
MAX_GATHER_BATCH_COUNT = 10000 // MAX_GATHER_BATCH  # 19
GATHER_SLOTS = MMU_GATHER_BUNDLE + MAX_GATHER_BATCH * MAX_GATHER_BATCH_COUNT


class MmuGather:
    def __init__(self, mm: MmStruct, fullmm: bool) -> None:
        self.mm = mm
        self.fullmm = fullmm
        self.need_flush_all = False
        self.freed_tables = False
        self.cleared_ptes = False
        self.cleared_pmds = False
        self.stride_shift = mm.kernel.arch.page_shift
        self.pages: list[tuple[Folio, int]] = []
        self.slots = 0
        self.flushes = 0
        self.delayed_rmap: list[tuple[Folio, int, int, object]] = []
        self._reset_range()
        #: Mutants may set this to release pages before the TLB flush (a real historical bug class).
        self.free_before_flush = False

    def _reset_range(self) -> None:
        if self.fullmm:
            self.start, self.end = 0, 1 << 64
        else:
            self.start, self.end = 1 << 64, 0
        self.range_dirty = False
        self.cleared_ptes = False
        self.cleared_pmds = False
        self.freed_tables = False

    def tlb_flush_pte_range(self, addr: int, size: int) -> None:
        """__tlb_adjust_range + cleared_ptes."""
        self.start = min(self.start, addr)
        self.end = max(self.end, addr + size)
        self.cleared_ptes = True
        self.range_dirty = True

    def tlb_flush_pmd_range(self, addr: int, size: int) -> None:
        self.start = min(self.start, addr)
        self.end = max(self.end, addr + size)
        self.cleared_pmds = True
        self.range_dirty = True
        self.stride_shift = (
            self.mm.kernel.arch.geometry.pmd_shift if not self.cleared_ptes else self.stride_shift
        )

    def tlb_remove_tlb_entries(self, addr: int, nr: int) -> None:
        self.tlb_flush_pte_range(addr, nr << self.mm.kernel.arch.page_shift)

    def tlb_get_level(self) -> int | None:
        """tlb_get_level(): 3 if only PTEs were cleared, 2 if only PMDs, else unknown."""
        if self.cleared_ptes and not self.cleared_pmds and not self.freed_tables:
            return 3
        if self.cleared_pmds and not self.cleared_ptes and not self.freed_tables:
            return 2
        return None


def tlb_gather_mmu(mm: MmStruct) -> MmuGather:
    return MmuGather(mm, fullmm=False)


def tlb_gather_mmu_fullmm(mm: MmStruct) -> MmuGather:
    return MmuGather(mm, fullmm=True)


def __tlb_remove_folio_pages(tlb: MmuGather, folio: Folio, nr: int) -> bool:
    """Queue ``nr`` references of ``folio``; True when the batch is full (force a flush)."""
    tlb.pages.append((folio, nr))
    tlb.slots += 2 if nr > 1 else 1
    if tlb.free_before_flush:
        tlb_batch_pages_flush(tlb)
    return tlb.slots >= GATHER_SLOTS - 1


@kfunc
def tlb_flush_mmu_tlbonly(tlb: MmuGather) -> None:
    """Flush the TLB for what was cleared since the last flush (arch ``tlb_flush``)."""
    if not (tlb.freed_tables or tlb.cleared_ptes or tlb.cleared_pmds):
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
    """free_pages_and_swap_cache(): one folio_put_refs per queued entry."""
    pages = tlb.mm.kernel.pages
    for folio, nr in tlb.pages:
        pages.folio_put_refs(folio, nr, mm=tlb.mm)
    tlb.pages.clear()
    tlb.slots = 0


@kfunc
def tlb_flush_rmaps(tlb: MmuGather) -> None:
    """Remove the rmaps delayed until after the TLB flush (dirty file pages)."""
    from ptesim.kernel.rmap import folio_remove_rmap_ptes

    for folio, page, nr, vma in tlb.delayed_rmap:
        folio_remove_rmap_ptes(folio, page, nr, vma)  # type: ignore[arg-type]
    tlb.delayed_rmap.clear()


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
