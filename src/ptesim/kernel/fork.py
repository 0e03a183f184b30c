"""``kernel/fork.c : dup_mmap`` and ``mm/mmap.c : exit_mmap`` (v6.9)."""

from __future__ import annotations

from ptesim.events import kfunc
from ptesim.kernel.memory import copy_page_range, free_pgtables, unmap_vmas
from ptesim.kernel.mm import VM_DONTCOPY, VM_WIPEONFORK, MmStruct, vm_area_dup
from ptesim.kernel.mmu_gather import tlb_finish_mmu, tlb_gather_mmu_fullmm


@kfunc
def dup_mmap(mm: MmStruct, oldmm: MmStruct) -> None:
    """Duplicate every VMA of ``oldmm`` into the new ``mm`` and copy its page tables, then flush
    the parent's TLB once: write-protection only removes permission, so stale writable entries
    in the parent are tolerated until this single flush (still under the mmap write lock)."""
    for mpnt in oldmm.vmas:
        if mpnt.flags & VM_DONTCOPY:
            continue
        tmp = vm_area_dup(mpnt, mm)
        mm.vmas.append(tmp)
        if tmp.flags & VM_WIPEONFORK:
            tmp.anon_vma = False
            continue
        copy_page_range(tmp, mpnt)
    oldmm.kernel.arch.flush_tlb_mm(oldmm)
    oldmm.kernel.arch.hw.flush_point(oldmm, 0, 1 << 64, "dup_mmap")


@kfunc
def exit_mmap(mm: MmStruct) -> None:
    """Tear down the whole address space with a full-mm gather: unmap every VMA, free the page
    tables, and flush once at the end (arm64 issues no TLBI for leaf-only flush points)."""
    mm.dead = True
    tlb = tlb_gather_mmu_fullmm(mm)
    vmas = list(mm.vmas)
    unmap_vmas(tlb, vmas, 0, 1 << 64)
    free_pgtables(tlb, mm, 0, 1 << 64, keep=[])
    tlb_finish_mmu(tlb)
    for vma in vmas:
        if vma.file is not None:
            vma.file.put(mm.kernel)
    mm.vmas.clear()


__all__ = ["dup_mmap", "exit_mmap"]
