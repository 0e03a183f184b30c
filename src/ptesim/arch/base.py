"""The arch page-table API and the generic fallbacks of ``include/linux/pgtable.h`` (v6.9).

The core model calls only these methods, under the kernel's names.  A backend overrides the ones its
``arch/*/include/asm/pgtable.h`` overrides.  PTE values are integers in the arch's own bit layout;
the value helpers (``pte_write``, ``pte_mkold`` …) are pure and count nothing.  Accesses to PTE
memory go through :mod:`ptesim.kernel.pgtable`, TLB instructions through :mod:`ptesim.hw.cpu`, and
those are the only places anything is counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.events import emit, kfunc
from ptesim.kernel.pgtable import GEOMETRY_4K, Geometry, Ptep, ptep_load, ptep_store

if TYPE_CHECKING:
    from ptesim.hw.cpu import Hardware
    from ptesim.kernel.config import KernelConfig
    from ptesim.kernel.mm import MmStruct, Vma
    from ptesim.kernel.mmu_gather import MmuGather


class Pmdp:
    """``pmd_t *``: an upper table (the PMD level) and an index."""

    __slots__ = ("idx", "table")

    def __init__(self, table: object, idx: int) -> None:
        self.table = table
        self.idx = idx


class Arch:
    """Generic behaviour; subclasses set the bit layout and override what their arch overrides."""

    name: ClassVar[str] = "generic"

    # ---- PTE bit layout (set by subclasses) ---------------------------------------------------
    PRESENT: ClassVar[int] = 1 << 0
    WRITE: ClassVar[int] = 1 << 1
    USER: ClassVar[int] = 1 << 2
    YOUNG: ClassVar[int] = 1 << 5
    DIRTY: ClassVar[int] = 1 << 6
    SPECIAL: ClassVar[int] = 1 << 9
    UFFD_WP: ClassVar[int] = 1 << 10
    SOFT_DIRTY: ClassVar[int] = 1 << 11
    NOEXEC: ClassVar[int] = 1 << 63
    EXEC: ClassVar[int] = 0
    CONT: ClassVar[int] = 0
    PFN_SHIFT: ClassVar[int] = 12
    PFN_BITS: ClassVar[int] = 40
    #: bits the hardware walker may set on access (AF, dirty)
    HW_ACCESS_BITS: ClassVar[int] = YOUNG | DIRTY

    def __init__(
        self, cfg: KernelConfig, hw: Hardware, features: frozenset[str], geometry: Geometry = GEOMETRY_4K
    ) -> None:
        self.cfg = cfg
        self.hw = hw
        self.features = features
        self.geometry = geometry
        self.page_shift = geometry.page_shift
        self.page_size = geometry.page_size
        self.ptrs_per_pte = geometry.ptrs_per_pte
        #: Entries per contiguous block when the contiguous layer is active; 1 if there is none.
        self.cont_ptes = 1
        self.pfn_mask = ((1 << self.PFN_BITS) - 1) << self.PFN_SHIFT

    # ---- pure value helpers -------------------------------------------------------------------
    def pte_pfn(self, pte: int) -> int:
        return (pte & self.pfn_mask) >> self.PFN_SHIFT

    def pte_pgprot(self, pte: int) -> int:
        return pte & ~self.pfn_mask

    def pfn_pte(self, pfn: int, prot: int) -> int:
        return (prot & ~self.pfn_mask) | ((pfn << self.PFN_SHIFT) & self.pfn_mask)

    def pte_advance_pfn(self, pte: int, nr: int) -> int:
        return self.pfn_pte(self.pte_pfn(pte) + nr, self.pte_pgprot(pte))

    def pte_none(self, pte: int) -> bool:
        return pte == 0

    def pte_present(self, pte: int) -> bool:
        return bool(pte & self.PRESENT)

    def pte_valid(self, pte: int) -> bool:
        return bool(pte & self.PRESENT)

    def pte_write(self, pte: int) -> bool:
        return bool(pte & self.WRITE)

    def pte_dirty(self, pte: int) -> bool:
        return bool(pte & self.DIRTY)

    def pte_young(self, pte: int) -> bool:
        return bool(pte & self.YOUNG)

    def pte_special(self, pte: int) -> bool:
        return bool(pte & self.SPECIAL)

    def pte_uffd_wp(self, pte: int) -> bool:
        return bool(pte & self.UFFD_WP)

    def pte_soft_dirty(self, pte: int) -> bool:
        return bool(pte & self.SOFT_DIRTY)

    def pte_cont(self, pte: int) -> bool:
        return bool(self.CONT and pte & self.CONT)

    def pte_valid_cont(self, pte: int) -> bool:
        return self.pte_valid(pte) and self.pte_cont(pte)

    def pte_wrprotect(self, pte: int) -> int:
        return pte & ~self.WRITE

    def pte_mkwrite(self, pte: int) -> int:
        return pte | self.WRITE

    def pte_mkdirty(self, pte: int) -> int:
        return pte | self.DIRTY | self.SOFT_DIRTY

    def pte_mkclean(self, pte: int) -> int:
        return pte & ~self.DIRTY

    def pte_mkold(self, pte: int) -> int:
        return pte & ~self.YOUNG

    def pte_mkyoung(self, pte: int) -> int:
        return pte | self.YOUNG

    def pte_mkspecial(self, pte: int) -> int:
        return pte | self.SPECIAL

    def pte_mkuffd_wp(self, pte: int) -> int:
        return self.pte_wrprotect(pte) | self.UFFD_WP

    def pte_clear_uffd_wp(self, pte: int) -> int:
        return pte & ~self.UFFD_WP

    def pte_clear_soft_dirty(self, pte: int) -> int:
        return pte & ~self.SOFT_DIRTY

    def pte_mknoncont(self, pte: int) -> int:
        return pte & ~self.CONT if self.CONT else pte

    def pte_mkcont(self, pte: int) -> int:
        return pte | self.CONT

    def pte_modify(self, pte: int, newprot: int) -> int:
        """pte_modify(): new protections, keeping the PFN and the bits software tracks."""
        keep = self.pfn_mask | self.YOUNG | self.DIRTY | self.SPECIAL | self.SOFT_DIRTY | self.UFFD_WP
        return (pte & keep) | (newprot & ~keep)

    def pte_cont_key(self, pte: int) -> int:
        """The bits that must agree across a contiguous block: all but PFN, access and dirty."""
        return self.pte_pgprot(self.pte_mkold(self.pte_mkclean(pte)))

    def pte_same(self, a: int, b: int) -> bool:
        return a == b

    def vm_get_page_prot(self, read: bool, write: bool, exec_: bool, shared: bool) -> int:
        """protection_map[] (mm/mmap.c): private writable mappings start read-only (COW)."""
        prot = self.PRESENT | self.USER
        if write and shared:
            prot |= self.WRITE
        if exec_:
            prot |= self.EXEC
        else:
            prot |= self.NOEXEC
        return prot

    def maybe_mkwrite(self, pte: int, vma: Vma) -> int:
        """maybe_mkwrite() (include/linux/mm.h): writable only if the VMA is."""
        from ptesim.kernel.mm import VM_WRITE

        return self.pte_mkwrite(pte) if vma.flags & VM_WRITE else pte

    # ---- hardware walker ------------------------------------------------------------------------
    def hw_access(self, pte: int, write: bool) -> int | None:
        """What the MMU does on a walk: None if the access faults, else the entry with the
        access (and, for writes, dirty) bits the hardware sets.  The hardware's own valid bit
        decides (pte_valid), not pte_present(): a PROT_NONE entry is present to the kernel only."""
        if not self.pte_valid(pte) or not pte & self.USER:
            return None
        if write and not self.pte_write(pte):
            return None
        pte = pte | self.YOUNG
        if write:
            pte |= self.DIRTY
        return pte

    def hw_tlb_writable(self, pte: int) -> bool:
        """Whether a TLB entry filled from ``pte`` permits writes without another walk."""
        return self.pte_write(pte) and self.pte_dirty(pte)

    def tlb_span(self, pte: int) -> int:
        """Pages one TLB entry filled from ``pte`` may cover (contiguous hint)."""
        return 1

    def ptes_linear(self, folio_pages: int) -> bool:
        """Whether the stored entries mapping a folio of ``folio_pages`` pages step by one PFN each
        (the form the fast engine keeps tables in; see ``ptesim.fast.footprint``)."""
        return True

    # ---- generic page-table API (include/linux/pgtable.h) --------------------------------------
    @kfunc
    def ptep_get(self, ptep: Ptep) -> int:
        return ptep_load(ptep)

    def ptep_get_lockless(self, ptep: Ptep) -> int:
        return self.ptep_get(ptep)

    def _set_pte(self, ptep: Ptep, pte: int) -> None:
        ptep_store(ptep, pte)

    @kfunc
    def set_ptes(self, mm: MmStruct, addr: int, ptep: Ptep, pte: int, nr: int) -> None:
        """Map ``nr`` consecutive pages; for nr > 1 every target must be not present."""
        for i in range(nr):
            self._set_pte(ptep + i, pte)
            pte = self.pte_advance_pfn(pte, 1)

    def set_pte_at(self, mm: MmStruct, addr: int, ptep: Ptep, pte: int) -> None:
        self.set_ptes(mm, addr, ptep, pte, 1)

    @kfunc
    def pte_clear(self, mm: MmStruct, addr: int, ptep: Ptep) -> None:
        ptep_store(ptep, 0)

    @kfunc
    def ptep_get_and_clear(self, mm: MmStruct, addr: int, ptep: Ptep) -> int:
        pte = ptep_load(ptep)
        ptep_store(ptep, 0)
        return pte

    def ptep_get_and_clear_full(self, mm: MmStruct, addr: int, ptep: Ptep, full: bool) -> int:
        """Every modelled arch defines __HAVE_ARCH_PTEP_GET_AND_CLEAR_FULL (x86: native xchg;
        arm64 and riscv: the contpte layer's), so there is no generic one here."""
        raise NotImplementedError(f"{type(self).__name__} must define ptep_get_and_clear_full")

    @kfunc
    def get_and_clear_full_ptes(self, mm: MmStruct, addr: int, ptep: Ptep, nr: int, full: bool) -> int:
        """Clear ``nr`` PTEs; return the first, with the dirty/young of all of them."""
        pte = self.ptep_get_and_clear_full(mm, addr, ptep, full)
        for i in range(1, nr):
            tmp = self.ptep_get_and_clear_full(mm, addr + i * self.page_size, ptep + i, full)
            if self.pte_dirty(tmp):
                pte = self.pte_mkdirty(pte)
            if self.pte_young(tmp):
                pte = self.pte_mkyoung(pte)
        return pte

    @kfunc
    def clear_full_ptes(self, mm: MmStruct, addr: int, ptep: Ptep, nr: int, full: bool) -> None:
        for i in range(nr):
            self.ptep_get_and_clear_full(mm, addr + i * self.page_size, ptep + i, full)

    def ptep_set_wrprotect(self, mm: MmStruct, addr: int, ptep: Ptep) -> None:
        """Every modelled arch defines __HAVE_ARCH_PTEP_SET_WRPROTECT (x86: an atomic clear of
        _PAGE_RW; arm64 and riscv: the contpte layer's), so there is no generic one here."""
        raise NotImplementedError(f"{type(self).__name__} must define ptep_set_wrprotect")

    @kfunc
    def wrprotect_ptes(self, mm: MmStruct, addr: int, ptep: Ptep, nr: int) -> None:
        for i in range(nr):
            self.ptep_set_wrprotect(mm, addr + i * self.page_size, ptep + i)

    def pte_batch_hint(self, ptep: Ptep, pte: int) -> int:
        return 1

    def ptep_set_access_flags(self, vma: Vma, addr: int, ptep: Ptep, entry: int, dirty: bool) -> bool:
        """Every modelled arch defines __HAVE_ARCH_PTEP_SET_ACCESS_FLAGS (arch/x86/mm/pgtable.c,
        arch/arm64/mm/fault.c, arch/riscv/mm/pgtable.c), so mm/pgtable-generic.c's is not here."""
        raise NotImplementedError(f"{type(self).__name__} must define ptep_set_access_flags")

    def ptep_test_and_clear_young(self, vma: Vma, addr: int, ptep: Ptep) -> bool:
        """Every modelled arch defines __HAVE_ARCH_PTEP_TEST_AND_CLEAR_YOUNG, so there is no
        generic one here."""
        raise NotImplementedError(f"{type(self).__name__} must define ptep_test_and_clear_young")

    @kfunc
    def clear_young_dirty_ptes(self, vma: Vma, addr: int, ptep: Ptep, nr: int, flags: int) -> None:
        """include/linux/pgtable.h (v6.10, MADV_FREE): per entry get-and-clear, then store it back
        old and/or clean (young only: ptep_test_and_clear_young)."""
        from ptesim.arch.arm64.contpte import CYDP_CLEAR_DIRTY, CYDP_CLEAR_YOUNG

        for i in range(nr):
            a, p = addr + i * self.page_size, ptep + i
            if flags == CYDP_CLEAR_YOUNG:
                self.ptep_test_and_clear_young(vma, a, p)
                continue
            pte = self.ptep_get_and_clear(vma.mm, a, p)
            if flags & CYDP_CLEAR_YOUNG:
                pte = self.pte_mkold(pte)
            if flags & CYDP_CLEAR_DIRTY:
                pte = self.pte_mkclean(pte)
            self.set_pte_at(vma.mm, a, p, pte)

    def update_mmu_cache_range(self, vma: Vma, addr: int, ptep: Ptep | None, nr: int) -> None:
        """Called after a fault installed or changed ``nr`` PTEs from ``addr`` (and, as
        ``update_mmu_tlb``, when a fault found its PTE already changed).  A no-op on x86 and
        arm64; riscv overrides it."""

    def update_mmu_cache_pmd(self, vma: Vma, addr: int) -> None:
        """After a fault installed or changed a PMD leaf; a no-op unless the arch overrides it."""

    def hw_keeps_permission_faults(self) -> bool:
        """Whether a TLB entry whose permissions made an access fault may stay cached (so the
        kernel must invalidate it when it grants the permission)."""
        return False

    @kfunc
    def ptep_clear_flush(self, vma: Vma, addr: int, ptep: Ptep) -> int:
        """mm/pgtable-generic.c: clear, and flush the page if it may be cached."""
        pte = self.ptep_get_and_clear(vma.mm, addr, ptep)
        if self.pte_present(pte):
            self.flush_tlb_page(vma, addr)
        return pte

    def ptep_modify_prot_start(self, vma: Vma, addr: int, ptep: Ptep) -> int:
        return self.ptep_get_and_clear(vma.mm, addr, ptep)

    def ptep_modify_prot_commit(self, vma: Vma, addr: int, ptep: Ptep, old: int, pte: int) -> None:
        self.set_pte_at(vma.mm, addr, ptep, pte)

    @kfunc
    def modify_prot_start_ptes(self, vma: Vma, addr: int, ptep: Ptep, nr: int) -> int:
        """include/linux/pgtable.h (v6.17, 0aa3657df3ec / LKML 20250718090244.21092-4): a loop of
        ptep_modify_prot_start, gathering young and dirty into the first entry."""
        pte = self.ptep_modify_prot_start(vma, addr, ptep)
        for i in range(1, nr):
            tmp = self.ptep_modify_prot_start(vma, addr + i * self.page_size, ptep + i)
            if self.pte_dirty(tmp):
                pte = self.pte_mkdirty(pte)
            if self.pte_young(tmp):
                pte = self.pte_mkyoung(pte)
        return pte

    @kfunc
    def modify_prot_commit_ptes(self, vma: Vma, addr: int, ptep: Ptep, old: int, pte: int, nr: int) -> None:
        """include/linux/pgtable.h (v6.17): a loop of ptep_modify_prot_commit, advancing the PFN."""
        for i in range(nr):
            self.ptep_modify_prot_commit(vma, addr + i * self.page_size, ptep + i, old, pte)
            old = self.pte_advance_pfn(old, 1)
            pte = self.pte_advance_pfn(pte, 1)

    def pte_needs_flush(self, oldpte: int, newpte: int) -> bool:
        """include/asm-generic/tlb.h: without an arch definition every changed PTE is flushed."""
        return True

    def pte_mksoft_dirty(self, pte: int) -> int:
        return pte | self.SOFT_DIRTY

    # ---- PMD leaves (PMD-mapped THP); same bit layout as PTEs ---------------------------------
    def pmdp_get(self, pmdp: Pmdp) -> int:
        emit("pmd_read")
        v = pmdp.table.entries.get(pmdp.idx, 0)  # type: ignore[attr-defined]
        return v if isinstance(v, int) else 0

    def set_pmd_at(self, mm: MmStruct, addr: int, pmdp: Pmdp, pmd: int) -> None:
        emit("pmd_write", mm=mm)
        pmdp.table.entries[pmdp.idx] = pmd  # type: ignore[attr-defined]

    @kfunc
    def pmdp_set_wrprotect(self, mm: MmStruct, addr: int, pmdp: Pmdp) -> None:
        emit("pmd_rmw", mm=mm)
        entries = pmdp.table.entries  # type: ignore[attr-defined]
        entries[pmdp.idx] = self.pte_wrprotect(entries[pmdp.idx])

    @kfunc
    def pmdp_huge_get_and_clear_full(self, mm: MmStruct, addr: int, pmdp: Pmdp, full: bool) -> int:
        emit("pmd_rmw", mm=mm)
        entries = pmdp.table.entries  # type: ignore[attr-defined]
        old: int = entries.pop(pmdp.idx)
        return old

    # ---- TLB maintenance (abstract) ------------------------------------------------------------
    def flush_tlb_mm(self, mm: MmStruct) -> None:
        raise NotImplementedError

    def flush_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        raise NotImplementedError

    def flush_tlb_page(self, vma: Vma, addr: int) -> None:
        self.flush_tlb_range(vma, addr, addr + self.page_size)

    def flush_pmd_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        self.flush_tlb_range(vma, start, end)

    def flush_tlb_fix_spurious_fault(self, vma: Vma, addr: int) -> None:
        """Generic: a full flush_tlb_page.  Arches whose hardware never caches a faulting entry
        define it as a no-op."""
        self.flush_tlb_page(vma, addr)

    def tlb_flush(self, tlb: MmuGather) -> None:
        """The arch's mmu_gather flush (include/asm-generic/tlb.h)."""
        raise NotImplementedError

    def switch_mm(self, mm: MmStruct, cpu: int) -> None:
        """Run ``mm`` on ``cpu``: load its ASID; remember the CPU in mm_cpumask."""
        self.hw.cpus[cpu].current_asid = mm.asid
        mm.cpumask.add(cpu)

    def vpn(self, addr: int) -> int:
        return addr >> self.page_shift
