"""arm64 page-table entries: ``arch/arm64/include/asm/pgtable-hwdef.h``, ``pgtable-prot.h``,
``pgtable.h`` and ``arch/arm64/mm/fault.c : __ptep_set_access_flags`` (v6.9; uffd-wp and the
present-invalid encoding as in v6.10).

Bit layout of a stage-1 page descriptor as Linux uses it::

    0      PTE_VALID            1   PTE_TYPE_PAGE (with VALID: 0b11)
    4:2    AttrIndx (MT_NORMAL = 0)
    6      PTE_USER (AP[1])     7   PTE_RDONLY (AP[2])
    9:8    SH (inner shareable) 10  PTE_AF        11  PTE_NG (also PTE_PRESENT_INVALID when !VALID)
    47:PAGE_SHIFT  output address (PFN)
    51     PTE_DBM == PTE_WRITE 52  PTE_CONT      53  PTE_PXN       54  PTE_UXN
    55     PTE_DIRTY (sw)       56  PTE_SPECIAL (sw)                 58  PTE_UFFD_WP (sw)

Write permission is the pair (PTE_WRITE, PTE_RDONLY): with hardware DBM a writable-clean entry
has WRITE and RDONLY set, and the hardware clears RDONLY on the first write ("hardware dirty").
``pte_wrprotect`` moves hardware-dirty into the software PTE_DIRTY before setting RDONLY.  arm64 has
no soft-dirty bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.arch.arm64.contpte import ContPteArch, kname
from ptesim.kernel.pgtable import Ptep, ptep_cmpxchg, ptep_load, ptep_load_block, ptep_store, ptep_xchg

if TYPE_CHECKING:
    from ptesim.kernel.mm import MmStruct, Vma

PTE_VALID = 1 << 0
PTE_TYPE_PAGE = 3 << 0
PTE_ATTRINDX_MASK = 7 << 2
PTE_ATTRINDX_NORMAL = 0 << 2  # MT_NORMAL
PTE_USER = 1 << 6
PTE_RDONLY = 1 << 7
PTE_SHARED = 3 << 8
PTE_AF = 1 << 10
PTE_NG = 1 << 11
PTE_PRESENT_INVALID = PTE_NG  # only when !PTE_VALID (v6.10)
PTE_DBM = 1 << 51
PTE_WRITE = PTE_DBM
PTE_CONT = 1 << 52
PTE_PXN = 1 << 53
PTE_UXN = 1 << 54
PTE_DIRTY = 1 << 55
PTE_SPECIAL = 1 << 56
PTE_UFFD_WP = 1 << 58
PTE_ADDR_HIGH_BIT = 48  # output address bits [47:PAGE_SHIFT] (no LPA2 / 52-bit PA modelled)

#: _PAGE_DEFAULT: TYPE_PAGE | AF | SH inner-shareable | MT_NORMAL; user pages are also nG.
_PAGE_DEFAULT = PTE_TYPE_PAGE | PTE_AF | PTE_SHARED | PTE_ATTRINDX_NORMAL

#: CONT_PTES per granule (arch/arm64/Kconfig ARM64_CONT_PTE_SHIFT 4/7/5).
CONT_PTES_BY_GRANULE = {4096: 16, 16384: 128, 65536: 32}


class Arm64Pgtable(ContPteArch):
    """PTE values, the raw ``__`` primitives and the hardware walker's view of arm64 entries."""

    name: ClassVar[str] = "arm64"
    PRESENT = PTE_VALID
    WRITE = PTE_WRITE
    USER = PTE_USER
    YOUNG = PTE_AF
    DIRTY = PTE_DIRTY
    SPECIAL = PTE_SPECIAL
    UFFD_WP = PTE_UFFD_WP
    SOFT_DIRTY = 0
    NOEXEC = PTE_UXN
    CONT = PTE_CONT
    HW_ACCESS_BITS = PTE_AF | PTE_RDONLY

    def _init_layout(self) -> None:
        self.pfn_mask = ((1 << PTE_ADDR_HIGH_BIT) - 1) & ~(self.page_size - 1)

    # ---- values ---------------------------------------------------------------------------------
    def pte_pfn(self, pte: int) -> int:
        return (pte & self.pfn_mask) >> self.page_shift

    def pfn_pte(self, pfn: int, prot: int) -> int:
        return (prot & ~self.pfn_mask) | ((pfn << self.page_shift) & self.pfn_mask)

    def pte_valid(self, pte: int) -> bool:
        return bool(pte & PTE_VALID)

    def pte_present(self, pte: int) -> bool:
        return bool(pte & PTE_VALID) or (pte & (PTE_VALID | PTE_PRESENT_INVALID)) == PTE_PRESENT_INVALID

    def pte_hw_dirty(self, pte: int) -> bool:
        return bool(pte & PTE_WRITE) and not pte & PTE_RDONLY

    def pte_sw_dirty(self, pte: int) -> bool:
        return bool(pte & PTE_DIRTY)

    def pte_dirty(self, pte: int) -> bool:
        return self.pte_sw_dirty(pte) or self.pte_hw_dirty(pte)

    def pte_wrprotect(self, pte: int) -> int:
        if self.pte_hw_dirty(pte):
            pte |= PTE_DIRTY
        return (pte & ~PTE_WRITE) | PTE_RDONLY

    def pte_mkwrite(self, pte: int) -> int:
        """pte_mkwrite_novma: WRITE, and writable at once if already (software) dirty."""
        pte |= PTE_WRITE
        if self.pte_sw_dirty(pte):
            pte &= ~PTE_RDONLY
        return pte

    def pte_mkclean(self, pte: int) -> int:
        return (pte & ~PTE_DIRTY) | PTE_RDONLY

    def pte_mkdirty(self, pte: int) -> int:
        pte |= PTE_DIRTY
        if self.pte_write(pte):
            pte &= ~PTE_RDONLY
        return pte

    def pte_mkuffd_wp(self, pte: int) -> int:
        return self.pte_wrprotect(pte) | PTE_UFFD_WP

    def pte_modify(self, pte: int, newprot: int) -> int:
        """New protections; hardware-dirty is preserved through the software dirty bit."""
        mask = PTE_USER | PTE_PXN | PTE_UXN | PTE_RDONLY | PTE_PRESENT_INVALID | PTE_VALID | PTE_WRITE
        mask |= PTE_ATTRINDX_MASK
        if self.pte_hw_dirty(pte):
            pte |= PTE_DIRTY
        pte = (pte & ~mask) | (newprot & mask)
        if self.pte_sw_dirty(pte):
            pte = self.pte_mkdirty(pte)
        return pte

    def pte_same(self, a: int, b: int) -> bool:
        """__HAVE_ARCH_PTE_SAME: PTE_RDONLY is ignored for present entries (DBM may flip it)."""
        if self.pte_present(a):
            a &= ~PTE_RDONLY
        if self.pte_present(b):
            b &= ~PTE_RDONLY
        return a == b

    def pte_accessible(self, mm: MmStruct, pte: int) -> bool:
        """No flush pending in the model: pte_valid_young() — an entry with AF clear is never in a
        TLB."""
        return self.pte_valid(pte) and self.pte_young(pte)

    def vm_get_page_prot(self, read: bool, write: bool, exec_: bool, shared: bool) -> int:
        """protection_map[] from PAGE_NONE/PAGE_READONLY/PAGE_SHARED(_EXEC) (pgtable-prot.h):
        private writable mappings start read-only (COW); shared writable ones writable-clean."""
        prot = _PAGE_DEFAULT | PTE_USER | PTE_RDONLY | PTE_NG | PTE_PXN | PTE_UXN
        if not (read or write or exec_):
            return (prot & ~PTE_VALID) | PTE_PRESENT_INVALID
        if write and shared:
            prot |= PTE_WRITE
        if exec_:
            prot &= ~PTE_UXN
        return prot

    # ---- hardware (the MMU, not the kernel: nothing counted) ----------------------------------
    def hw_access(self, pte: int, write: bool) -> int | None:
        """A walk: fault unless valid and user; writes need RDONLY clear or DBM (which then clears
        RDONLY: hardware dirty).  Hardware sets AF (FEAT_HAFDBS)."""
        if not pte & PTE_VALID or not pte & PTE_USER:
            return None
        if "no-hafdbs" in self.features:
            # Without FEAT_HAFDBS an entry with AF clear takes an access-flag fault and a write to
            # an RDONLY entry a permission fault, DBM or not: software sets young and dirty.
            if not pte & PTE_AF or (write and pte & PTE_RDONLY):
                return None
            return pte
        if write and pte & PTE_RDONLY:
            if not pte & PTE_DBM:
                return None
            pte &= ~PTE_RDONLY
        return pte | PTE_AF

    def hw_keeps_permission_faults(self) -> bool:
        """The Arm ARM lets a TLB cache a translation that generates a permission fault, which is
        why __ptep_set_access_flags() invalidates when it makes an entry writable-dirty and
        flush_tlb_fix_spurious_fault() can be a no-op.  Modelled with software AF/dirty, where
        the kernel's own fault path makes entries writable."""
        return "no-hafdbs" in self.features

    def hw_tlb_writable(self, pte: int) -> bool:
        return not pte & PTE_RDONLY

    def tlb_span(self, pte: int) -> int:
        """A valid CONT entry may be cached as one TLB entry for the whole block."""
        return self.contpte_nr if self.pte_valid_cont(pte) else 1

    def local_flush_tlb_page(self, vma: Vma, addr: int) -> None:
        """Supplied by the TLB-maintenance layer (:mod:`ptesim.arch.arm64.tlbflush`)."""
        raise NotImplementedError

    # ---- raw primitives -------------------------------------------------------------------------
    def raw_ptep_get(self, ptep: Ptep) -> int:
        """__ptep_get: READ_ONCE(*ptep)."""
        return ptep_load(ptep)

    def raw_ptep_get_block(self, ptep: Ptep, nr: int) -> list[int]:
        return ptep_load_block(ptep, nr)

    def raw_set_ptes(self, mm: MmStruct, addr: int, ptep: Ptep, pte: int, nr: int) -> None:
        """__set_ptes (v6.9): for user entries no barrier; one store per entry, PFN advanced.
        (__sync_cache_and_tags: no I-cache or MTE work for non-exec untagged anon memory.)"""
        for i in range(nr):
            ptep_store(ptep + i, pte)
            pte = self.pte_advance_pfn(pte, 1)

    def raw_ptep_get_and_clear(self, mm: MmStruct, addr: int, ptep: Ptep) -> int:
        """__ptep_get_and_clear: one xchg."""
        return ptep_xchg(ptep, 0)

    @kname("___ptep_set_wrprotect")
    def raw_ptep_set_wrprotect_from(self, mm: MmStruct, addr: int, ptep: Ptep, pte: int) -> None:
        """cmpxchg_relaxed loop of pte_wrprotect from a value already read (a hardware AF/DBM
        update in between forces another attempt)."""
        while True:
            new = self.pte_wrprotect(pte)
            found = ptep_cmpxchg(ptep, pte, new)
            if found == pte:
                return
            pte = found

    @kname("__ptep_set_wrprotect")
    def raw_ptep_set_wrprotect(self, mm: MmStruct, addr: int, ptep: Ptep) -> None:
        self.raw_ptep_set_wrprotect_from(mm, addr, ptep, ptep_load(ptep))

    @kname("__ptep_test_and_clear_young")
    def raw_ptep_test_and_clear_young(self, vma: Vma, addr: int, ptep: Ptep) -> bool:
        pte = ptep_load(ptep)
        while True:
            new = self.pte_mkold(pte)
            found = ptep_cmpxchg(ptep, pte, new)
            if found == pte:
                return self.pte_young(pte)
            pte = found

    @kname("__ptep_set_access_flags")
    def raw_ptep_set_access_flags(self, vma: Vma, addr: int, ptep: Ptep, entry: int, dirty: bool) -> bool:
        """arch/arm64/mm/fault.c: OR in AF/DIRTY/WRITE and take the most permissive RDONLY, atomically;
        if ``dirty`` invalidate the stale read-only entry (broadcast; v6.19 ``local_wp_flush``:
        this CPU only)."""
        pte = ptep_load(ptep)
        if self.pte_same(pte, entry):
            return False
        entry &= PTE_RDONLY | PTE_AF | PTE_WRITE | PTE_DIRTY
        entry ^= PTE_RDONLY
        val = pte
        while True:
            old = val
            new = ((val ^ PTE_RDONLY) | entry) ^ PTE_RDONLY
            found = ptep_cmpxchg(ptep, old, new)
            if found == old:
                break
            val = found
        if dirty:
            if self.cfg.local_wp_flush:
                self.local_flush_tlb_page(vma, addr)
            else:
                self.flush_tlb_page(vma, addr)
        return True
