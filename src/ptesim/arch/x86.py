"""x86-64 (4-level, 4K pages): ``arch/x86/include/asm/pgtable.h``, ``arch/x86/mm/tlb.c`` (v6.9).

x86 has no contiguous-PTE hint, so fork and zap differ from the generic code only in their atomics:
write-protect is one ``clear_bit(_PAGE_BIT_RW)`` and get-and-clear one ``xchg`` (a plain read and
clear when the whole mm is being torn down).  Flushes are local INVLPG / CR3 reloads plus IPIs to the
other CPUs in ``mm_cpumask``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.arch.base import Arch
from ptesim.events import kfunc
from ptesim.kernel.pgtable import Ptep, ptep_bitop, ptep_cmpxchg, ptep_load, ptep_store, ptep_xchg

if TYPE_CHECKING:
    from ptesim.kernel.mm import MmStruct, Vma
    from ptesim.kernel.mmu_gather import MmuGather

#: tlb_single_page_flush_ceiling (arch/x86/mm/tlb.c): above this many pages, flush everything.
TLB_SINGLE_PAGE_FLUSH_CEILING = 33
TLB_FLUSH_ALL = -1


class X86(Arch):
    name: ClassVar[str] = "x86"
    PRESENT = 1 << 0  # _PAGE_BIT_PRESENT
    WRITE = 1 << 1  # _PAGE_BIT_RW
    USER = 1 << 2  # _PAGE_BIT_USER
    YOUNG = 1 << 5  # _PAGE_BIT_ACCESSED
    DIRTY = 1 << 6  # _PAGE_BIT_DIRTY
    SPECIAL = 1 << 9  # _PAGE_BIT_SOFTW1
    UFFD_WP = 1 << 10  # _PAGE_BIT_SOFTW2
    SOFT_DIRTY = 1 << 11  # _PAGE_BIT_SOFTW3
    NOEXEC = 1 << 63  # _PAGE_BIT_NX
    PFN_SHIFT = 12
    PFN_BITS = 40

    # ---- overrides of the generic API ---------------------------------------------------------
    @kfunc
    def ptep_set_wrprotect(self, mm: MmStruct, addr: int, ptep: Ptep) -> None:
        """One ``clear_bit(_PAGE_BIT_RW)``; with user shadow stacks a read + cmpxchg loop so that
        Write=0,Dirty=1 (a shadow-stack PTE) is never created by accident."""
        if "shstk" in self.features:
            old = ptep_load(ptep)
            ptep_cmpxchg(ptep, old, self.pte_wrprotect(old))
        else:
            ptep_bitop(ptep, clear=self.WRITE)

    @kfunc
    def ptep_get_and_clear(self, mm: MmStruct, addr: int, ptep: Ptep) -> int:
        """native_ptep_get_and_clear: one xchg."""
        return ptep_xchg(ptep, 0)

    @kfunc
    def ptep_get_and_clear_full(self, mm: MmStruct, addr: int, ptep: Ptep, full: bool) -> int:
        """Full-mm teardown needs no atomicity: native_local_ptep_get_and_clear (read + clear)."""
        if full:
            pte = ptep_load(ptep)
            ptep_store(ptep, 0)
            return pte
        return self.ptep_get_and_clear(mm, addr, ptep)

    @kfunc
    def ptep_test_and_clear_young(self, vma: Vma, addr: int, ptep: Ptep) -> bool:
        return bool(ptep_bitop(ptep, clear=self.YOUNG) & self.YOUNG)

    @kfunc
    def ptep_set_access_flags(self, vma: Vma, addr: int, ptep: Ptep, entry: int, dirty: bool) -> bool:
        """arch/x86/mm/pgtable.c: store only if changed and dirty; no flush (a stale, less
        permissive TLB entry just faults again and the hardware drops it)."""
        changed = not self.pte_same(ptep_load(ptep), entry)
        if changed and dirty:
            ptep_store(ptep, entry)
        return changed

    def pte_needs_flush(self, oldpte: int, newpte: int) -> bool:
        """arch/x86/include/asm/tlbflush.h (c9fe66560bf2 'mm/mprotect: do not flush when not
        required architecturally', v6.0): a non-present old entry is never cached; a new PFN, a
        cleared DIRTY/PRESENT, or any change of RW/USER/NX needs a flush; software bits and the
        accessed bit do not."""
        if not oldpte & self.PRESENT:
            return False
        if self.pte_pfn(oldpte) != self.pte_pfn(newpte):
            return True
        diff = (oldpte ^ newpte) & ~(self.SPECIAL | self.UFFD_WP | self.SOFT_DIRTY | self.YOUNG)
        if diff & oldpte & (self.DIRTY | self.PRESENT):
            return True
        return bool(diff & (self.WRITE | self.USER | self.NOEXEC))

    def flush_tlb_fix_spurious_fault(self, vma: Vma, addr: int) -> None:
        """A faulting translation is never left in the TLB on x86: nothing to do."""

    # ---- TLB maintenance ----------------------------------------------------------------------
    @kfunc
    def flush_tlb_mm_range(
        self, mm: MmStruct, start: int, end: int, stride_shift: int, freed_tables: bool
    ) -> None:
        """arch/x86/mm/tlb.c: ranges beyond tlb_single_page_flush_ceiling become full flushes;
        the local CPU flushes itself, every other CPU in mm_cpumask gets an IPI."""
        full = end == TLB_FLUSH_ALL or ((end - start) >> stride_shift) > TLB_SINGLE_PAGE_FLUSH_CEILING
        npages = 0 if full else (end - start) >> self.page_shift
        cur = self.hw.current
        others = sorted(c for c in mm.cpumask if c != cur)
        vpn = start >> self.page_shift
        twin = 2 if "pti" in self.features else 1
        if "invlpgb" in self.features and others:
            if full:
                self.hw.tlbi("asid", broadcast=True, asid=mm.asid, mm=mm, count=twin)
            else:
                for i in range(npages):
                    self.hw.tlbi("page", broadcast=True, asid=mm.asid, vpn=vpn + i, mm=mm, count=twin)
            return
        if cur in mm.cpumask:
            self.flush_tlb_func(mm, full, vpn, npages, twin)
        for c in others:
            self.hw.ipi(c, mm=mm)
            if full:
                self.hw.remote_flush(c, "asid", mm.asid)
            else:
                self.hw.remote_flush(c, "range", mm.asid, vpn, npages)

    @kfunc
    def flush_tlb_func(self, mm: MmStruct, full: bool, vpn: int, npages: int, twin: int) -> None:
        """flush_tlb_func on the initiating CPU: INVLPG per page, or a CR3 reload / INVPCID."""
        if full:
            self.hw.tlbi("asid", broadcast=False, asid=mm.asid, mm=mm, count=twin)
        else:
            for i in range(npages):
                self.hw.tlbi("page", broadcast=False, asid=mm.asid, vpn=vpn + i, mm=mm, count=twin)

    @kfunc
    def flush_tlb_mm(self, mm: MmStruct) -> None:
        self.flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, self.page_shift, True)

    @kfunc
    def flush_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        self.flush_tlb_mm_range(vma.mm, start, end, self.page_shift, False)

    @kfunc
    def flush_tlb_page(self, vma: Vma, addr: int) -> None:
        self.flush_tlb_mm_range(vma.mm, addr, addr + self.page_size, self.page_shift, False)

    @kfunc
    def tlb_flush(self, tlb: MmuGather) -> None:
        """arch/x86/include/asm/tlb.h: a full-mm gather flushes everything."""
        if tlb.fullmm or tlb.need_flush_all:
            self.flush_tlb_mm_range(tlb.mm, 0, TLB_FLUSH_ALL, self.page_shift, tlb.freed_tables)
        else:
            self.flush_tlb_mm_range(tlb.mm, tlb.start, tlb.end, tlb.stride_shift, tlb.freed_tables)
