"""riscv64, Sv48 with 4K pages: ``arch/riscv/include/asm/pgtable.h``, ``pgtable-64.h`` and
``arch/riscv/mm/tlbflush.c`` (v6.8-v6.10), plus an optional **what-if**: Svnapot 64K mappings used
transparently for user memory.

PTE bits: V(0) R(1) W(2) X(3) U(4) G(5) A(6) D(7), RSW(8) = special, RSW(9) = soft-dirty, PPN in
bits 53:10, N (NAPOT) in bit 63.  uffd-wp sits in a reserved bit (59) here; its real placement
varies by version and does not affect any count.  riscv write-protects with one atomic AND
(``amoand``), gets-and-clears with one ``amoswap`` (xchg), and has the generic per-PTE
``wrprotect_ptes`` / ``clear_full_ptes`` loops and ``pte_batch_hint() == 1``.

**WHAT-IF (not in mainline):** with ``cfg.svnapot_thp`` (preset ``v6.9-svnapot``) the arm64 contpte
layer drives Svnapot, as Alexandre Ghiti's unmerged "[PATCH 00/12] Make riscv use THP contpte support
for arm64" (8 May 2024) proposed by moving ``arch/arm64/mm/contpte.c`` to ``mm/contpte.c``.  The
model reuses :mod:`ptesim.arch.arm64.contpte` with the N bit as the contiguous hint.  Mainline uses
Svnapot only for hugetlbfs (and kernel vmalloc) mappings.

NAPOT encoding.  In memory every entry of a 64K block holds N=1 and PPN[3:0] = 0b1000 (the size);
the hardware takes PA[15:12] from the VA.  Core mm must see the *real* PFN of each entry (Ghiti's
patch 1, "Restore the pfn in a NAPOT pte when manipulated by core mm code"), so ``__ptep_get``
returns N=1 with the real PPN and ``__set_ptes`` encodes the size again.  The model's page-table
checker and walker read raw entries without knowing their position, so the model stores beside each
raw NAPOT entry (above bit 63, outside the 64-bit descriptor) the entry's index in its block — the
VA bits the hardware would use — and ``pte_pfn`` of a raw NAPOT entry returns the real PFN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.arch.arm64.contpte import ContPteArch, kname
from ptesim.events import emit, kfunc
from ptesim.kernel.pgtable import Ptep, ptep_bitop, ptep_load, ptep_store, ptep_xchg

if TYPE_CHECKING:
    from ptesim.hw.cpu import Hardware
    from ptesim.kernel.config import KernelConfig
    from ptesim.kernel.mm import MmStruct, Vma
    from ptesim.kernel.mmu_gather import MmuGather

_PAGE_PRESENT = 1 << 0
_PAGE_READ = 1 << 1
_PAGE_WRITE = 1 << 2
_PAGE_EXEC = 1 << 3
_PAGE_USER = 1 << 4
_PAGE_GLOBAL = 1 << 5
_PAGE_ACCESSED = 1 << 6
_PAGE_DIRTY = 1 << 7
_PAGE_SPECIAL = 1 << 8
_PAGE_SOFT_DIRTY = 1 << 9
_PAGE_UFFD_WP = 1 << 59
_PAGE_NAPOT = 1 << 63
_PAGE_PROT_NONE = _PAGE_GLOBAL  # only when !_PAGE_PRESENT
_PAGE_PFN_SHIFT = 10
_PPN_BITS = 44
#: NAPOT_CONT64KB_ORDER: the only Svnapot size Linux defines.
NAPOT_CONT_ORDER = 4
NAPOT_PTE_NUM = 1 << NAPOT_CONT_ORDER
#: model-only position tag of a raw NAPOT entry (bits 67:64) and its presence bit (68)
_POS_SHIFT = 64
_POS_MASK = (NAPOT_PTE_NUM - 1) << _POS_SHIFT
_ENCODED = 1 << 68

#: tlb_flush_all_threshold (arch/riscv/mm/tlbflush.c): more pages than this -> flush the ASID.
TLB_FLUSH_ALL_THRESHOLD = 64
#: FLUSH_TLB_MAX_SIZE ((unsigned long)-1): "the whole address space".
FLUSH_TLB_MAX_SIZE = -1


class Riscv(ContPteArch):
    name: ClassVar[str] = "riscv"
    PRESENT = _PAGE_PRESENT
    WRITE = _PAGE_WRITE
    USER = _PAGE_USER
    YOUNG = _PAGE_ACCESSED
    DIRTY = _PAGE_DIRTY
    SPECIAL = _PAGE_SPECIAL
    UFFD_WP = _PAGE_UFFD_WP
    SOFT_DIRTY = _PAGE_SOFT_DIRTY
    NOEXEC = 0
    EXEC = _PAGE_EXEC
    CONT = _PAGE_NAPOT
    PFN_SHIFT = _PAGE_PFN_SHIFT
    PFN_BITS = _PPN_BITS

    def __init__(self, cfg: KernelConfig, hw: Hardware, features: frozenset[str]) -> None:
        super().__init__(cfg, hw, features)
        self.pfn_mask |= _POS_MASK | _ENCODED
        self._init_contpte(NAPOT_PTE_NUM, cfg.svnapot_thp)

    # ---- values ---------------------------------------------------------------------------------
    def pte_pfn(self, pte: int) -> int:
        ppn = (pte >> _PAGE_PFN_SHIFT) & ((1 << _PPN_BITS) - 1)
        if pte & _ENCODED:
            return (ppn & ~(NAPOT_PTE_NUM - 1)) | ((pte & _POS_MASK) >> _POS_SHIFT)
        return ppn

    def pte_present(self, pte: int) -> bool:
        return bool(pte & (_PAGE_PRESENT | _PAGE_PROT_NONE))

    def pte_valid(self, pte: int) -> bool:
        return bool(pte & _PAGE_PRESENT)

    def pte_napot(self, pte: int) -> bool:
        return bool(pte & _PAGE_NAPOT)

    def pte_mkcont(self, pte: int) -> int:
        """pte_mknapot(pte, NAPOT_CONT64KB_ORDER), in the core-mm form (real PFN kept)."""
        return pte | _PAGE_NAPOT

    def vm_get_page_prot(self, read: bool, write: bool, exec_: bool, shared: bool) -> int:
        """protection_map[]: _PAGE_BASE = PRESENT | ACCESSED | USER; private writable = read-only."""
        if not (read or write or exec_):
            return _PAGE_PROT_NONE | _PAGE_READ
        prot = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_USER | _PAGE_READ
        if write and shared:
            prot |= _PAGE_WRITE
        if exec_:
            prot |= _PAGE_EXEC
        return prot

    def tlb_span(self, pte: int) -> int:
        return NAPOT_PTE_NUM if self.contpte_enabled and self.pte_valid_cont(pte) else 1

    def ptes_linear(self, folio_pages: int) -> bool:
        """No, where Svnapot maps the folio: the 16 entries of a NAPOT block share one PPN field
        (PPN[3:0] = 0b1000), so they do not step by one PFN."""
        return not (self.contpte_enabled and folio_pages >= NAPOT_PTE_NUM)

    # ---- NAPOT memory encoding ------------------------------------------------------------------
    def _napot_encode(self, pte: int) -> int:
        if not pte & _PAGE_NAPOT or pte & _ENCODED:
            return pte
        pfn = self.pte_pfn(pte)
        ppn = (pfn & ~(NAPOT_PTE_NUM - 1)) | (NAPOT_PTE_NUM >> 1)  # PPN[3:0] = 0b1000: 64K
        pos = pfn & (NAPOT_PTE_NUM - 1)
        return (pte & ~self.pfn_mask) | (ppn << _PAGE_PFN_SHIFT) | (pos << _POS_SHIFT) | _ENCODED

    def _napot_decode(self, pte: int) -> int:
        if not pte & _ENCODED:
            return pte
        return self.pfn_pte(self.pte_pfn(pte), self.pte_pgprot(pte))

    # ---- raw primitives -------------------------------------------------------------------------
    def raw_ptep_get(self, ptep: Ptep) -> int:
        """ptep_get: READ_ONCE, then (NAPOT) the real PFN restored from the entry's position."""
        return self._napot_decode(ptep_load(ptep))

    def raw_set_ptes(self, mm: MmStruct, addr: int, ptep: Ptep, pte: int, nr: int) -> None:
        for i in range(nr):
            ptep_store(ptep + i, self._napot_encode(pte))
            pte = self.pte_advance_pfn(pte, 1)

    def raw_ptep_get_and_clear(self, mm: MmStruct, addr: int, ptep: Ptep) -> int:
        """atomic_long_xchg(ptep, 0)."""
        return self._napot_decode(ptep_xchg(ptep, 0))

    @kname("ptep_set_wrprotect")
    def raw_ptep_set_wrprotect(self, mm: MmStruct, addr: int, ptep: Ptep) -> None:
        """atomic_long_and(~_PAGE_WRITE, ptep): one AMO, no read."""
        ptep_bitop(ptep, clear=_PAGE_WRITE)

    def raw_ptep_set_wrprotect_from(self, mm: MmStruct, addr: int, ptep: Ptep, pte: int) -> None:
        self.raw_ptep_set_wrprotect(mm, addr, ptep)

    @kname("ptep_test_and_clear_young")
    def raw_ptep_test_and_clear_young(self, vma: Vma, addr: int, ptep: Ptep) -> bool:
        if not self.pte_young(ptep_load(ptep)):
            return False
        return bool(ptep_bitop(ptep, clear=_PAGE_ACCESSED) & _PAGE_ACCESSED)

    @kname("ptep_set_access_flags")
    def raw_ptep_set_access_flags(self, vma: Vma, addr: int, ptep: Ptep, entry: int, dirty: bool) -> bool:
        """arch/riscv/mm/pgtable.c: store if different; always 'changed', so the fault path's
        update_mmu_cache_range sfences locally (and never flush_tlb_fix_spurious_fault)."""
        if not self.pte_same(self.raw_ptep_get(ptep), entry):
            ptep_store(ptep, self._napot_encode(entry))
        return True

    def flush_tlb_fix_spurious_fault(self, vma: Vma, addr: int) -> None:
        self._local_flush_tlb_range_asid(vma.mm, addr, self.page_size, self.page_size)

    @kfunc
    def update_mmu_cache_range(self, vma: Vma, addr: int, ptep: Ptep | None, nr: int) -> None:
        """arch/riscv/include/asm/pgtable.h (v6.9): SFENCE.VMA orders rather than flushes, so after
        every fault that installs or changes PTEs the kernel eagerly issues one local
        ``sfence.vma addr`` (local_flush_tlb_page, every ASID) per PTE, last page first."""
        for i in reversed(range(nr)):
            self.local_flush_tlb_page(vma.mm, addr + i * self.page_size)

    def update_mmu_cache_pmd(self, vma: Vma, addr: int) -> None:
        """update_mmu_cache(vma, addr, (pte_t *)pmdp): one local sfence.vma at ``addr``."""
        self.update_mmu_cache_range(vma, addr & ~(self.page_size - 1), None, 1)

    def local_flush_tlb_page(self, mm: MmStruct, addr: int) -> None:
        """``sfence.vma addr``: this CPU, every ASID."""
        self.hw.tlbi("page", broadcast=False, asid=None, vpn=addr >> self.page_shift, mm=mm)

    # ---- TLB maintenance (arch/riscv/mm/tlbflush.c) --------------------------------------------
    def _sfence_page(self, mm: MmStruct, addr: int) -> None:
        """local_flush_tlb_page_asid: sfence.vma addr, asid (with Svinval: sinval.vma)."""
        self.hw.tlbi("page", broadcast=False, asid=mm.asid, vpn=addr >> self.page_shift, mm=mm)

    def _sfence_asid(self, mm: MmStruct) -> None:
        """local_flush_tlb_all_asid: sfence.vma x0, asid."""
        self.hw.tlbi("asid", broadcast=False, asid=mm.asid, mm=mm)

    def _nr_ptes(self, size: int, stride: int) -> int:
        return -(-size // stride)

    @kfunc
    def _local_flush_tlb_range_asid(self, mm: MmStruct, start: int, size: int, stride: int) -> None:
        """One page -> one sfence; the whole space or more than tlb_flush_all_threshold strides ->
        one ASID sfence; otherwise one per stride.  With Svinval the per-stride loop is
        ``sfence.w.inval; sinval.vma x n; sfence.inval.ir`` (the two fences are not counted)."""
        if size != FLUSH_TLB_MAX_SIZE and size <= stride:
            self._sfence_page(mm, start)
        elif size == FLUSH_TLB_MAX_SIZE or self._nr_ptes(size, stride) > TLB_FLUSH_ALL_THRESHOLD:
            self._sfence_asid(mm)
        else:
            for i in range(self._nr_ptes(size, stride)):
                self._sfence_page(mm, start + i * stride)

    def _remote_effect(self, cpu: int, mm: MmStruct, start: int, size: int, stride: int) -> None:
        """What __ipi_flush_tlb_range_asid / the SBI implementation does on ``cpu``."""
        many = size > stride and self._nr_ptes(size, stride) > TLB_FLUSH_ALL_THRESHOLD
        if size == FLUSH_TLB_MAX_SIZE or many:
            self.hw.remote_flush(cpu, "asid", mm.asid)
        else:
            npages = max(1, -(-size // self.page_size))
            self.hw.remote_flush(cpu, "range", mm.asid, start >> self.page_shift, npages)

    @kname("__flush_tlb_range")
    def _flush_tlb_range(self, mm: MmStruct, start: int, size: int, stride: int) -> None:
        """Only this CPU in mm_cpumask -> local sfences.  Otherwise IPIs to the other CPUs in the
        mask (this CPU flushes itself), or with ``sbi-rfence`` one SBI RFENCE call for the mask."""
        cmask = sorted(mm.cpumask)
        if not cmask:
            return
        cur = self.hw.current
        if not any(c != cur for c in cmask):
            self._local_flush_tlb_range_asid(mm, start, size, stride)
        elif "sbi-rfence" in self.features:
            emit("sbi_rfence", mm=mm)
            for c in cmask:
                emit("sbi_rfence_target", mm=mm)
                self._remote_effect(c, mm, start, size, stride)
        else:
            for c in cmask:
                if c == cur:
                    self._local_flush_tlb_range_asid(mm, start, size, stride)
                else:
                    self.hw.ipi(c, mm=mm)
                    self._remote_effect(c, mm, start, size, stride)

    @kfunc
    def flush_tlb_mm(self, mm: MmStruct) -> None:
        self._flush_tlb_range(mm, 0, FLUSH_TLB_MAX_SIZE, self.page_size)

    @kfunc
    def flush_tlb_mm_range(self, mm: MmStruct, start: int, end: int, stride: int) -> None:
        self._flush_tlb_range(mm, start, end - start, stride)

    @kfunc
    def flush_tlb_page(self, vma: Vma, addr: int) -> None:
        self._flush_tlb_range(vma.mm, addr & ~(self.page_size - 1), self.page_size, self.page_size)

    @kfunc
    def flush_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        self._flush_tlb_range(vma.mm, start, end - start, self.page_size)

    @kfunc
    def flush_pmd_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        self._flush_tlb_range(vma.mm, start, end - start, self.geometry.pmd_size)

    def raw_flush_tlb_range(
        self, mm: MmStruct, start: int, end: int, stride: int, last_level: bool, level: int | None
    ) -> None:
        """What the generic contpte code's flushes become: every entry of a NAPOT block is
        invalidated (stride PAGE_SIZE, as riscv's hugetlb NAPOT flushes do)."""
        self._flush_tlb_range(mm, start, end - start, stride)

    def local_flush_tlb_contpte(self, vma: Vma, addr: int) -> None:
        size = NAPOT_PTE_NUM * self.page_size
        self._local_flush_tlb_range_asid(vma.mm, addr & ~(size - 1), size, self.page_size)

    @kfunc
    def tlb_flush(self, tlb: MmuGather) -> None:
        """asm/tlb.h: full-mm, flush-all or freed tables -> flush_tlb_mm; else the gathered range."""
        if tlb.fullmm or tlb.need_flush_all or tlb.freed_tables:
            self.flush_tlb_mm(tlb.mm)
        else:
            self.flush_tlb_mm_range(tlb.mm, tlb.start, tlb.end, 1 << tlb.tlb_get_unmap_shift())


__all__ = ["NAPOT_PTE_NUM", "TLB_FLUSH_ALL_THRESHOLD", "Riscv"]
