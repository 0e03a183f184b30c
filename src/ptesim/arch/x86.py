"""x86-64 (4-level, 4K pages): ``arch/x86/include/asm/pgtable.h``, ``arch/x86/mm/tlb.c`` (v6.9; the
v6.15 INVLPGB broadcast path with ``cfg.broadcast_tlb_flush`` and CPU feature ``invlpgb``).

x86 has no contiguous-PTE hint, so fork and zap differ from the generic code only in their atomics:
write-protect is a read and one ``cmpxchg`` (v6.6+) and get-and-clear one ``xchg`` (a plain read and
clear when the whole mm is being torn down).  Flushes are local INVLPG / CR3 reloads plus IPIs to the
other CPUs in ``mm_cpumask``, or, for an mm with a global ASID, INVLPGB broadcasts and a TLBSYNC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.arch.base import Arch, Pmdp
from ptesim.events import emit, kfunc
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
    #: _PAGE_BIT_PROTNONE: the global bit, never set in a user PTE otherwise
    PROTNONE = 1 << 8
    #: invlpgb_count_max = (CPUID 0x80000008 EDX[15:0]) + 1: pages one INVLPGB may cover.  Machine
    #: dependent; 8 is ASSUMED (the model has no CPUID to read).
    INVLPGB_COUNT_MAX = 8
    PFN_SHIFT = 12
    PFN_BITS = 40

    # ---- overrides of the generic API ---------------------------------------------------------
    def pte_present(self, pte: int) -> bool:
        """pte_present() (arch/x86/include/asm/pgtable.h): a PROT_NONE entry is present to the
        kernel (it maps its page, for rmap and fork) though the hardware faults on it."""
        return bool(pte & (self.PRESENT | self.PROTNONE))

    def vm_get_page_prot(self, read: bool, write: bool, exec_: bool, shared: bool) -> int:
        """protection_map[] (arch/x86/mm/pgprot.c): PROT_NONE is PAGE_NONE = _PAGE_PROTNONE |
        _PAGE_ACCESSED, without _PAGE_PRESENT, so every access faults."""
        if not (read or write or exec_):
            return self.PROTNONE | self.YOUNG
        return super().vm_get_page_prot(read, write, exec_, shared)

    @kfunc
    def ptep_set_wrprotect(self, mm: MmStruct, addr: int, ptep: Ptep) -> None:
        """arch/x86/include/asm/pgtable.h (v6.6+, the user shadow-stack series, whatever the CPU):
        ``READ_ONCE`` then a ``try_cmpxchg`` loop, so that hardware setting Dirty=1 in between can
        never leave a Write=0,Dirty=1 (shadow-stack) PTE behind.  No ``clear_bit`` since v6.6."""
        old = ptep_load(ptep)
        while True:
            found = ptep_cmpxchg(ptep, old, self.pte_wrprotect(old))
            if found == old:
                return
            old = found

    @kfunc
    def pmdp_set_wrprotect(self, mm: MmStruct, addr: int, pmdp: Pmdp) -> None:
        """The PMD form of ptep_set_wrprotect (v6.6+): ``READ_ONCE`` + ``try_cmpxchg`` loop."""
        emit("pmd_read", mm=mm)
        emit("pmd_rmw", mm=mm)
        entries = pmdp.table.entries  # type: ignore[attr-defined]
        entries[pmdp.idx] = self.pte_wrprotect(entries[pmdp.idx])

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
        """arch/x86/mm/tlb.c (v6.15): get_flush_tlb_info turns a range beyond
        tlb_single_page_flush_ceiling into a full flush (4a02ed8e1cc3).  An mm with a global ASID
        is flushed by broadcast_tlb_flush; otherwise, if another CPU is in mm_cpumask, the local CPU
        flushes itself and every other CPU gets an IPI (flush_tlb_multi), after which
        consider_global_asid may hand the mm a global ASID; a mm only on this CPU is flushed
        locally (flush_tlb_func)."""
        full = end == TLB_FLUSH_ALL or ((end - start) >> stride_shift) > TLB_SINGLE_PAGE_FLUSH_CEILING
        if full:
            start, end = 0, TLB_FLUSH_ALL
        if self._broadcast_tlb_flush() and mm.global_asid:
            self.broadcast_tlb_flush(mm, start, end, stride_shift)
            return
        cur = self.hw.current
        if any(c != cur for c in mm.cpumask):
            self.flush_tlb_multi(mm, start, end, stride_shift, full)
            self.consider_global_asid(mm)
        elif cur in mm.cpumask:
            self.flush_tlb_func(mm, full, self._vpns(start, end, stride_shift, full), self._twin())

    def _twin(self) -> int:
        return 2 if "pti" in self.features else 1

    def _vpns(self, start: int, end: int, stride_shift: int, full: bool) -> list[int]:
        """The pages flush_tlb_func invalidates one by one: every ``1 << stride_shift`` bytes."""
        return [] if full else [a >> self.page_shift for a in range(start, end, 1 << stride_shift)]

    def _broadcast_tlb_flush(self) -> bool:
        """CONFIG_BROADCAST_TLB_FLUSH and X86_FEATURE_INVLPGB."""
        return "invlpgb" in self.features and bool(getattr(self.cfg, "broadcast_tlb_flush", False))

    @kfunc
    def flush_tlb_multi(self, mm: MmStruct, start: int, end: int, stride_shift: int, full: bool) -> None:
        """native_flush_tlb_multi: the local CPU (if it runs the mm) flushes itself, every other CPU
        in mm_cpumask gets an IPI and flushes in flush_tlb_func."""
        cur = self.hw.current
        vpns = self._vpns(start, end, stride_shift, full)
        if cur in mm.cpumask:
            self.flush_tlb_func(mm, full, vpns, self._twin())
        for c in sorted(c for c in mm.cpumask if c != cur):
            self.hw.ipi(c, mm=mm)
            if full:
                self.hw.remote_flush(c, "asid", mm.asid)
            else:
                for vpn in vpns:
                    self.hw.remote_flush(c, "page", mm.asid, vpn)
            mm.asid_transition.discard(c)  # the IPI's flush_tlb_func moves it to the global ASID
        mm.asid_transition.discard(cur)

    def mm_active_cpus(self, mm: MmStruct) -> list[int]:
        """CPUs in mm_cpumask whose loaded mm is ``mm`` (mm_active_cpus_exceeds; the model has no
        lazy-TLB CPUs)."""
        return [c for c in sorted(mm.cpumask) if self.hw.cpus[c].current_asid == mm.asid]

    @kfunc
    def consider_global_asid(self, mm: MmStruct) -> None:
        """v6.15: hand out a global ASID when the mm is active on 4 or more CPUs
        (mm_active_cpus_exceeds(mm, 3)).  The kernel samples this only when
        (current->pid & 0x1f) == (jiffies & 0x1f); the model checks at every remote flush (the
        steady state of a long-running multi-threaded process).  Until each of those CPUs
        reloads its ASID it is in transition (finish_asid_transition)."""
        if not self._broadcast_tlb_flush() or mm.global_asid:
            return
        active = self.mm_active_cpus(mm)
        if len(active) > 3:
            mm.global_asid = True
            mm.asid_transition = set(active)

    @kfunc
    def broadcast_tlb_flush(self, mm: MmStruct, start: int, end: int, stride_shift: int) -> None:
        """One INVLPGB for a whole PCID, or INVLPGBs of at most ``INVLPGB_COUNT_MAX`` strides each
        over the range (each twice with PTI); IPIs to CPUs still on their old ASID
        (finish_asid_transition); then one TLBSYNC."""
        twin = self._twin()
        if end == TLB_FLUSH_ALL:
            self.hw.invlpgb(mm.asid, mm=mm, count=twin)
        else:
            addr = start
            while addr < end:
                nr = max(1, min((end - addr) >> stride_shift, self.INVLPGB_COUNT_MAX))
                npages = (nr << stride_shift) >> self.page_shift
                self.hw.invlpgb(mm.asid, vpn=addr >> self.page_shift, npages=npages, mm=mm, count=twin)
                addr += nr << stride_shift
        self.finish_asid_transition(mm, start, end, stride_shift)
        self.hw.barrier("tlbsync", mm=mm)

    @kfunc
    def finish_asid_transition(self, mm: MmStruct, start: int, end: int, stride_shift: int) -> None:
        """If a CPU running the mm has not switched to the global ASID yet, flush_tlb_multi (whose
        IPIs make the stragglers switch); once none is left the transition is over."""
        if not mm.asid_transition:
            return
        if any(c in mm.asid_transition for c in self.mm_active_cpus(mm)):
            self.flush_tlb_multi(mm, start, end, stride_shift, end == TLB_FLUSH_ALL)
        else:
            mm.asid_transition.clear()

    @kfunc
    def flush_tlb_func(self, mm: MmStruct, full: bool, vpns: list[int], twin: int) -> None:
        """flush_tlb_func on the initiating CPU: one INVLPG per stride (flush_tlb_one_user every
        ``1 << stride_shift`` bytes), or a CR3 reload / INVPCID."""
        if full:
            self.hw.tlbi("asid", broadcast=False, asid=mm.asid, mm=mm, count=twin)
        else:
            for vpn in vpns:
                self.hw.tlbi("page", broadcast=False, asid=mm.asid, vpn=vpn, mm=mm, count=twin)

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
        """arch/x86/include/asm/tlb.h: the stride is tlb_get_unmap_shift(); a full-mm gather
        flushes everything."""
        stride_shift = tlb.tlb_get_unmap_shift()
        if tlb.fullmm or tlb.need_flush_all:
            self.flush_tlb_mm_range(tlb.mm, 0, TLB_FLUSH_ALL, stride_shift, tlb.freed_tables)
        else:
            self.flush_tlb_mm_range(tlb.mm, tlb.start, tlb.end, stride_shift, tlb.freed_tables)
