"""PMD-mapped THP (``mm/huge_memory.c``, v6.9): fault, fork copy, zap, write fault and split."""

from __future__ import annotations

from ptesim.events import emit, kfunc
from ptesim.kernel.folio import folio_get, folio_ref_add
from ptesim.kernel.mm import MM_ANONPAGES, VM_WRITE, Vma
from ptesim.kernel.mmu_gather import MmuGather, __tlb_remove_folio_pages
from ptesim.kernel.pgtable import Ptep, PteTable
from ptesim.kernel.rmap import (
    folio_add_new_anon_rmap,
    folio_remove_rmap_pmd,
    folio_try_dup_anon_rmap_pmd,
)


def _pmd_folio(vma: Vma, pmd: int):  # type: ignore[no-untyped-def]
    kernel = vma.mm.kernel
    folio = kernel.pages.pfn_to_folio(kernel.arch.pte_pfn(pmd))
    assert folio is not None
    return folio


@kfunc
def do_huge_pmd_anonymous_page(vma: Vma, addr: int) -> bool:
    """Map a PMD-order folio if the PMD size is enabled and the aligned range fits the VMA."""
    from ptesim.kernel.memory import thp_orders_allowed, thp_vma_suitable

    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    order = arch.geometry.pmd_order
    if order not in thp_orders_allowed(vma) or not thp_vma_suitable(vma, addr, order, arch.page_size):
        return False
    haddr = addr & ~(arch.geometry.pmd_size - 1)
    pmdp = mm.pmdp(haddr, alloc=True)
    assert pmdp is not None
    folio = kernel.pages.folio_alloc(order, mm=mm)
    emit("page_zero", folio.nr_pages, mm=mm)
    emit("pgtable_alloc", mm=mm)  # pte_alloc_one(): the table deposited for a later split
    mm.nr_ptes += 1
    entry = arch.pfn_pte(folio.pfn, vma.page_prot)
    entry = arch.pte_mkyoung(entry)
    if vma.flags & VM_WRITE:
        entry = arch.pte_mkwrite(arch.pte_mkdirty(entry))
    folio_add_new_anon_rmap(folio, vma, haddr, pmd_mapped=True)
    mm.rss[MM_ANONPAGES] += folio.nr_pages
    arch.set_pmd_at(mm, haddr, pmdp, entry)
    arch.update_mmu_cache_pmd(vma, addr)
    return True


@kfunc
def copy_huge_pmd(dst_vma: Vma, src_vma: Vma, addr: int) -> int:
    """Share a PMD-mapped THP with the child, write-protecting both; -EAGAIN after splitting a
    possibly pinned exclusive folio (the caller then copies its PTEs)."""
    src_mm, dst_mm = src_vma.mm, dst_vma.mm
    kernel = src_mm.kernel
    arch = kernel.arch
    src_pmdp = src_mm.pmdp(addr, alloc=False)
    dst_pmdp = dst_mm.pmdp(addr, alloc=True)
    assert src_pmdp is not None and dst_pmdp is not None
    emit("pgtable_alloc", mm=dst_mm)  # pte_alloc_one() for the deposit
    pmd = arch.pmdp_get(src_pmdp)
    folio = _pmd_folio(src_vma, pmd)
    folio_get(folio, mm=dst_mm)
    if folio_try_dup_anon_rmap_pmd(folio, src_vma, dst_mm):
        kernel.pages.folio_put(folio, mm=dst_mm)
        emit("pgtable_free", mm=dst_mm)
        __split_huge_pmd(src_vma, addr)
        return -11
    dst_mm.rss[MM_ANONPAGES] += folio.nr_pages
    dst_mm.nr_ptes += 1
    arch.pmdp_set_wrprotect(src_mm, addr, src_pmdp)
    pmd = arch.pte_mkold(arch.pte_wrprotect(pmd))
    if not dst_vma.flags & 0x1000:
        pmd = arch.pte_clear_uffd_wp(pmd)
    arch.set_pmd_at(dst_mm, addr, dst_pmdp, pmd)
    return 0


@kfunc
def zap_huge_pmd(tlb: MmuGather, vma: Vma, addr: int) -> None:
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    pmdp = mm.pmdp(addr, alloc=False)
    assert pmdp is not None
    pmd = arch.pmdp_huge_get_and_clear_full(mm, addr, pmdp, tlb.fullmm)
    tlb.tlb_flush_pmd_range(addr, arch.geometry.pmd_size)
    folio = _pmd_folio(vma, pmd)
    folio_remove_rmap_pmd(folio, vma)
    emit("pgtable_free", mm=mm)  # zap_deposited_table()
    mm.nr_ptes -= 1
    mm.rss[MM_ANONPAGES] -= folio.nr_pages
    if __tlb_remove_folio_pages(tlb, folio, 1):
        from ptesim.kernel.mmu_gather import tlb_flush_mmu

        tlb_flush_mmu(tlb)


@kfunc
def do_huge_pmd_wp_page(vma: Vma, addr: int) -> None:
    """Write fault on a read-only PMD: reuse an exclusive folio in place, else split (the PTE
    fault path then copies one page)."""
    mm = vma.mm
    arch = mm.kernel.arch
    pmdp = mm.pmdp(addr, alloc=False)
    assert pmdp is not None
    pmd = arch.pmdp_get(pmdp)
    folio = _pmd_folio(vma, pmd)
    if all(folio.anon_exclusive) or (folio.entire_mapcount == 1 and folio.refcount == 1):
        folio.anon_exclusive = [True] * folio.nr_pages
        entry = arch.maybe_mkwrite(arch.pte_mkdirty(arch.pte_mkyoung(pmd)), vma)
        arch.set_pmd_at(mm, addr & ~(arch.geometry.pmd_size - 1), pmdp, entry)
        arch.update_mmu_cache_pmd(vma, addr)  # pmdp_set_access_flags() changed it
        return
    __split_huge_pmd(vma, addr)


@kfunc
def __split_huge_pmd(vma: Vma, addr: int) -> None:
    """Replace a PMD leaf by a PTE table mapping the same pages with the same bits (the deposited
    table is withdrawn); the PMD is invalidated and flushed first (pmdp_invalidate)."""
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    g = arch.geometry
    haddr = addr & ~(g.pmd_size - 1)
    pmdp = mm.pmdp(haddr, alloc=False)
    assert pmdp is not None
    pmd = arch.pmdp_huge_get_and_clear_full(mm, haddr, pmdp, False)
    arch.flush_pmd_tlb_range(vma, haddr, haddr + g.pmd_size)
    folio = _pmd_folio(vma, pmd)
    table = PteTable(mm, haddr, g.ptrs_per_pte)
    pmdp.table.entries[pmdp.idx] = table  # type: ignore[attr-defined]
    base = Ptep(table, 0)
    arch.set_ptes(mm, haddr, base, arch.pte_mknoncont(pmd), folio.nr_pages)
    folio_ref_add(folio, folio.nr_pages - 1, mm=mm)  # each PTE mapping holds its own reference
    for i in range(folio.nr_pages):
        emit("mapcount", mm=mm)
        folio.mapcount[i] += 1
    emit("mapcount", mm=mm)
    folio.entire_mapcount -= 1
