"""arm64 TLB maintenance: ``arch/arm64/include/asm/tlbflush.h`` and ``asm/tlb.h : tlb_flush``
(v6.9: d9d8dc2bd3fb split ``__flush_tlb_range_nosync``; the scale-down range loop of the v6.9
``__flush_tlb_range_op``), plus the Nov-2025 local forms (Huang Ying, LKML 20251104095516.7912-3).

Every user invalidation is inner-shareable broadcast (arm64 does not filter by mm_cpumask).  Each
``__tlbi`` is one TLBI; with KPTI ``__tlbi_user`` issues the user-ASID twin (``count=2``); with the
``ARM64_WORKAROUND_REPEAT_TLBI`` erratum each becomes ``TLBI; DSB ISH; TLBI``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.arch.arm64.contpte import kname
from ptesim.arch.arm64.pgtable import Arm64Pgtable
from ptesim.events import kfunc

if TYPE_CHECKING:
    from ptesim.hw.cpu import Kind
    from ptesim.kernel.mm import MmStruct, Vma
    from ptesim.kernel.mmu_gather import MmuGather


#: __TLBI_RANGE_PAGES(num, scale) = (num + 1) << (5 * scale + 1)
def tlbi_range_pages(num: int, scale: int) -> int:
    return (num + 1) << (5 * scale + 1)


#: MAX_TLBI_RANGE_PAGES = __TLBI_RANGE_PAGES(31, 3): 2^21 pages.
MAX_TLBI_RANGE_PAGES = tlbi_range_pages(31, 3)


def tlbi_range_num(pages: int, scale: int) -> int:
    """__TLBI_RANGE_NUM (v6.9): ``min(pages, __TLBI_RANGE_PAGES(31, scale)) >> (5 * scale + 1)``
    minus one, so 0..31, or -1 if not even one unit fits.  (Older kernels masked with
    ``& TLBI_RANGE_MASK`` instead of clamping.)"""
    return (min(pages, tlbi_range_pages(31, scale)) >> (5 * scale + 1)) - 1


class Arm64TlbFlush(Arm64Pgtable):
    """TLB-maintenance functions of the arm64 backend."""

    @property
    def max_dvm_ops(self) -> int:
        """MAX_DVM_OPS = PTRS_PER_PTE (MAX_TLBI_OPS before 2024)."""
        return self.ptrs_per_pte

    def system_supports_tlb_range(self) -> bool:
        return "tlbi-range" in self.features

    def _tlbi(self, kind: Kind, mm: MmStruct, *, vpn: int = 0, npages: int = 1, local: bool = False) -> None:
        """``__tlbi`` + ``__tlbi_user``: one instruction, its KPTI user twin, and the repeat
        erratum's ``TLBI; DSB ISH; TLBI``."""
        twins = 2 if "kpti" in self.features else 1
        hw = self.hw
        if "repeat-tlbi" in self.features:
            for _ in range(twins):
                hw.tlbi(kind, broadcast=not local, asid=mm.asid, vpn=vpn, npages=npages, mm=mm)
                hw.barrier("dsb_ish", mm=mm)
                hw.tlbi(kind, broadcast=not local, asid=mm.asid, vpn=vpn, npages=npages, mm=mm)
        else:
            hw.tlbi(kind, broadcast=not local, asid=mm.asid, vpn=vpn, npages=npages, mm=mm, count=twins)

    def flush_tlb_user_pre(self, mm: MmStruct) -> bool:
        """DSB ISHST before a user invalidation.  WHAT-IF ``local_tlbi_single_cpu`` (Ryan Roberts'
        RFC, 20250829153510.2401161-3): if the mm has only ever been active on this CPU (the
        model's mm_cpumask is exactly that: CPUs ever switched to, never cleared), a DSB ISH and
        local TLBIs instead.  A child mm during fork has never run: it still broadcasts."""
        local = self.cfg.local_tlbi_single_cpu and mm.cpumask == {self.hw.current}
        self.hw.barrier("dsb_ish" if local else "dsb_ishst", mm=mm)
        return bool(local)

    @kfunc
    def flush_tlb_mm(self, mm: MmStruct) -> None:
        """DSB ISHST; TLBI ASIDE1IS; DSB ISH."""
        local = self.flush_tlb_user_pre(mm)
        self._tlbi("asid", mm, local=local)
        self.hw.barrier("dsb_ish", mm=mm)

    @kname("__flush_tlb_page_nosync")
    def raw_flush_tlb_page_nosync(self, mm: MmStruct, addr: int) -> None:
        local = self.flush_tlb_user_pre(mm)
        self._tlbi("page", mm, vpn=addr >> self.page_shift, local=local)

    @kfunc
    def flush_tlb_page_nosync(self, vma: Vma, addr: int) -> None:
        self.raw_flush_tlb_page_nosync(vma.mm, addr)

    @kfunc
    def flush_tlb_page(self, vma: Vma, addr: int) -> None:
        self.raw_flush_tlb_page_nosync(vma.mm, addr)
        self.hw.barrier("dsb_ish", mm=vma.mm)

    @kname("__flush_tlb_range_op")
    def _flush_tlb_range_op(self, mm: MmStruct, start: int, pages: int, stride: int, local: bool) -> None:
        """v6.9 loop: single TLBIs without FEAT_TLBIRANGE (or for a last odd page); otherwise range
        TLBIs from scale 3 downwards, each covering (num + 1) << (5 * scale + 1) pages."""
        scale = 3
        shift = self.page_shift
        range_ok = self.system_supports_tlb_range()
        while pages > 0:
            if not range_ok or pages == 1:
                self._tlbi("page", mm, vpn=start >> shift, local=local)
                start += stride
                pages -= stride >> shift
                continue
            num = tlbi_range_num(pages, scale)
            if num >= 0:
                n = tlbi_range_pages(num, scale)
                self._tlbi("range", mm, vpn=start >> shift, npages=n, local=local)
                start += n << shift
                pages -= n
            scale -= 1

    @kname("__flush_tlb_range_nosync")
    def raw_flush_tlb_range_nosync(
        self, mm: MmStruct, start: int, end: int, stride: int, last_level: bool, level: int | None
    ) -> None:
        """From MAX_DVM_OPS strides without range TLBIs, or from MAX_TLBI_RANGE_PAGES pages with
        them (``>=``, v6.9), one ASID flush replaces the loop.  ``last_level`` picks VALE1IS over
        VAE1IS (same count)."""
        start = start & ~(stride - 1)
        end = (end + stride - 1) & ~(stride - 1)
        pages = (end - start) >> self.page_shift
        if (not self.system_supports_tlb_range() and (end - start) >= self.max_dvm_ops * stride) or (
            pages >= MAX_TLBI_RANGE_PAGES
        ):
            self.flush_tlb_mm(mm)
            return
        local = self.flush_tlb_user_pre(mm)
        self._flush_tlb_range_op(mm, start, pages, stride, local=local)

    @kname("__flush_tlb_range")
    def raw_flush_tlb_range(
        self, mm: MmStruct, start: int, end: int, stride: int, last_level: bool, level: int | None
    ) -> None:
        """nosync + DSB ISH.  (In v6.9 the trailing DSB ISH also follows the ASID-flush fallback.)"""
        self.raw_flush_tlb_range_nosync(mm, start, end, stride, last_level, level)
        self.hw.barrier("dsb_ish", mm=mm)

    @kfunc
    def flush_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        """Non-leaf: also walk caches (VAE1IS), level unknown."""
        self.raw_flush_tlb_range(vma.mm, start, end, self.page_size, False, None)

    @kfunc
    def flush_pmd_tlb_range(self, vma: Vma, start: int, end: int) -> None:
        self.raw_flush_tlb_range(vma.mm, start, end, self.geometry.pmd_size, False, 2)

    @kfunc
    def local_flush_tlb_page(self, vma: Vma, addr: int) -> None:
        """Nov-2025: DSB NSHST; TLBI VALE1; DSB NSH (this CPU only)."""
        self.hw.barrier("dsb_nshst", mm=vma.mm)
        self._tlbi("page", vma.mm, vpn=addr >> self.page_shift, local=True)
        self.hw.barrier("dsb_nsh", mm=vma.mm)

    @kfunc
    def local_flush_tlb_contpte(self, vma: Vma, addr: int) -> None:
        """Nov-2025: DSB NSHST; the range loop over one block with local VALE1/RVALE1; DSB NSH."""
        size = self.contpte_nr * self.page_size
        start = addr & ~(size - 1)
        self.hw.barrier("dsb_nshst", mm=vma.mm)
        self._flush_tlb_range_op(vma.mm, start, self.contpte_nr, self.page_size, local=True)
        self.hw.barrier("dsb_nsh", mm=vma.mm)

    def flush_tlb_fix_spurious_fault(self, vma: Vma, addr: int) -> None:
        """A no-op on arm64 (the faulting entry is never cached); with the Nov-2025 patch a local
        flush (``local_flush_tlb_page_nonotify``), since remote CPUs may keep a stale read-only entry."""
        if self.cfg.local_wp_flush:
            self.local_flush_tlb_page(vma, addr)

    def convert_flushes(self) -> bool:
        """v6.17 (83bbd6be7d17): contpte_convert elides the flush when system_supports_bbml2_noabort()."""
        return not (self.cfg.bbml2_aware and "bbml2" in self.features)

    @kfunc
    def tlb_flush(self, tlb: MmuGather) -> None:
        """asm/tlb.h: a full-mm gather invalidates only if page tables were freed (walk caches; the
        ASID is never reused without a full flush); otherwise __flush_tlb_range of the gathered
        range with the stride and level the gather recorded."""
        last_level = not tlb.freed_tables
        if tlb.fullmm:
            if not last_level:
                self.flush_tlb_mm(tlb.mm)
            return
        stride = 1 << tlb.tlb_get_unmap_shift()
        self.raw_flush_tlb_range(tlb.mm, tlb.start, tlb.end, stride, last_level, tlb.tlb_get_level())
