"""userfaultfd write-protection (``mm/userfaultfd.c``, v6.9): registration in WP mode and
``UFFDIO_WRITEPROTECT``.

Only what changes page tables is modelled: a registered VMA carries ``VM_UFFD_WP`` and
``mwriteprotect_range`` sets or clears the uffd-wp bit of the present PTEs in a range (write
protecting them), through ``change_protection(MM_CP_UFFD_WP / MM_CP_UFFD_WP_RESOLVE)``.  Delivering
write faults to a handler is not modelled, so a program must not write to a protected page.
The bit matters to fork: ``folio_pte_batch`` never batches PTEs that differ in it, and a child VMA
that stays registered keeps it.
"""

from __future__ import annotations

from ptesim.errors import UsageError
from ptesim.events import kfunc
from ptesim.kernel.mm import VM_UFFD_WP, MmStruct, Vma
from ptesim.kernel.mmap import _check_range, _isolate, can_change_pte_writable
from ptesim.kernel.mmu_gather import MmuGather, tlb_finish_mmu, tlb_gather_mmu


def userfaultfd_register_wp(mm: MmStruct, start: int, length: int) -> None:
    """UFFDIO_REGISTER with UFFDIO_REGISTER_MODE_WP over anonymous or shmem VMAs (shmem since
    v5.19, b1f9e876862d 'mm/uffd: enable write protection for shmem & hugetlbfs'; the model keeps
    the registration across fork, as with UFFD_FEATURE_EVENT_FORK).  A registered shmem VMA makes
    fork copy its page tables (vma_needs_copy).  The PTE markers that keep a zapped shmem page
    protected (pte_marker_uffd_wp) are not modelled: a zap forgets the protection."""
    end = _check_range(mm, start, length)
    for vma in _isolate(mm, start, end):
        vma.flags |= VM_UFFD_WP


@kfunc
def mwriteprotect_range(mm: MmStruct, start: int, length: int, enable_wp: bool) -> None:
    """UFFDIO_WRITEPROTECT: every VMA in the range must be registered for uffd-wp."""
    end = _check_range(mm, start, length)
    vmas = [v for v in mm.vmas if v.start < end and v.end > start]
    if any(not v.flags & VM_UFFD_WP for v in vmas):
        raise UsageError(f"range {start:#x}+{length:#x} is not registered for uffd-wp")
    tlb = tlb_gather_mmu(mm)
    for vma in vmas:
        uffd_wp_range(tlb, vma, max(start, vma.start), min(end, vma.end), enable_wp)
    tlb_finish_mmu(tlb)


@kfunc
def uffd_wp_range(tlb: MmuGather, vma: Vma, start: int, end: int, enable_wp: bool) -> None:
    """change_protection() with MM_CP_UFFD_WP (set the bit, write-protect) or
    MM_CP_UFFD_WP_RESOLVE | MM_CP_TRY_CHANGE_WRITABLE (clear it, make writable where allowed)."""
    from ptesim.kernel.huge_memory import __split_huge_pmd
    from ptesim.kernel.pgtable import PteTable

    mm = vma.mm
    arch = mm.kernel.arch
    g = arch.geometry
    addr = start
    while addr < end:
        nxt = min((addr | (g.pmd_size - 1)) + 1, end)
        if isinstance(mm.pmd_entry(addr), int):
            __split_huge_pmd(vma, addr)
        if isinstance(mm.pmd_entry(addr), PteTable):
            ptep = mm.pte_offset(addr)
            assert ptep is not None
            a = addr
            while a < nxt:
                if arch.pte_present(arch.ptep_get(ptep)):
                    old = arch.ptep_modify_prot_start(vma, a, ptep)
                    pte = arch.pte_modify(old, vma.page_prot)
                    if enable_wp:
                        pte = arch.pte_mkuffd_wp(pte)
                    else:
                        pte = arch.pte_clear_uffd_wp(pte)
                        if not arch.pte_write(pte) and can_change_pte_writable(vma, a, pte):
                            pte = arch.pte_mkwrite(pte)
                    arch.ptep_modify_prot_commit(vma, a, ptep, old, pte)
                    tlb.tlb_flush_pte_range(a, arch.page_size)
                ptep, a = ptep + 1, a + arch.page_size
        addr = nxt


__all__ = ["mwriteprotect_range", "userfaultfd_register_wp"]
