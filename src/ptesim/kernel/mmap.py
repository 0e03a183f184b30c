"""Address-space system calls: mmap, munmap, mprotect, madvise (``mm/mmap.c``, ``mm/mprotect.c``,
``mm/madvise.c``), and long-term pinning (``mm/gup.c``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.arch.base import Pmdp
from ptesim.errors import UsageError
from ptesim.events import emit, kfunc
from ptesim.fast.memo import memoised_table_op
from ptesim.kernel.memory import (
    free_pgtables,
    handle_mm_fault,
    unmap_page_range,
    unmap_single_vma,
    unmap_vmas,
    vm_normal_page,
    vma_soft_dirty_enabled,
)
from ptesim.kernel.mm import (
    VM_DONTCOPY,
    VM_EXEC,
    VM_HUGEPAGE,
    VM_MAYEXEC,
    VM_MAYREAD,
    VM_MAYSHARE,
    VM_MAYWRITE,
    VM_NOHUGEPAGE,
    VM_READ,
    VM_SHARED,
    VM_SOFTDIRTY,
    VM_WRITE,
    MmStruct,
    ShmemFile,
    Vma,
    vm_area_dup,
)
from ptesim.kernel.mmu_gather import MmuGather, tlb_finish_mmu, tlb_gather_mmu
from ptesim.kernel.pgtable import PteTable

if TYPE_CHECKING:
    from ptesim.kernel.folio import Folio
    from ptesim.kernel.pgtable import Ptep, UpperTable

MMAP_BASE = 0x7F00_0000_0000


def prot_flags(prot: str) -> int:
    flags = 0
    for ch in prot:
        if ch == "r":
            flags |= VM_READ
        elif ch == "w":
            flags |= VM_WRITE
        elif ch == "x":
            flags |= VM_EXEC
        elif ch != "-":
            raise UsageError(f"bad protection {prot!r}: use letters from 'rwx'")
    return flags


def vm_page_prot(mm: MmStruct, flags: int) -> int:
    return mm.kernel.arch.vm_get_page_prot(
        bool(flags & VM_READ), bool(flags & VM_WRITE), bool(flags & VM_EXEC), bool(flags & VM_SHARED)
    )


def get_unmapped_area(mm: MmStruct, length: int, align: int) -> int:
    """Top-down search below MMAP_BASE for a gap of ``length`` aligned to ``align``."""
    top = MMAP_BASE
    for vma in sorted(mm.vmas, key=lambda v: v.start, reverse=True):
        cand = (top - length) & ~(align - 1)
        if cand >= vma.end:
            return cand
        top = min(top, vma.start)
    return (top - length) & ~(align - 1)


@kfunc
def do_mmap(
    mm: MmStruct, length: int, prot: str, shared: bool, addr: int | None = None, extra_flags: int = 0
) -> int:
    """Create an anonymous mapping (shared ones are backed by a shmem object).  Mappings of at
    least PMD size are PMD-aligned, as thp_get_unmapped_area() does for anonymous memory."""
    arch = mm.kernel.arch
    page = arch.page_size
    if length <= 0 or length % page:
        raise UsageError(f"mmap length {length} is not a positive multiple of the {page}-byte page")
    if addr is None:
        pmd = arch.geometry.pmd_size
        addr = get_unmapped_area(mm, length, pmd if length >= pmd else page)
    elif addr % page:
        raise UsageError(f"mmap address {addr:#x} is not page aligned")
    if any(v.start < addr + length and v.end > addr for v in mm.vmas):
        raise UsageError(f"mmap range {addr:#x}+{length:#x} overlaps an existing mapping")
    flags = prot_flags(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC | VM_SOFTDIRTY | extra_flags
    file = None
    if shared:
        flags |= VM_SHARED | VM_MAYSHARE
        file = ShmemFile(length // page)
        file.users = 1
    vma = Vma(mm=mm, start=addr, end=addr + length, flags=flags, page_prot=vm_page_prot(mm, flags), file=file)
    vma.anon_vma = not shared
    mm.vmas.append(vma)
    mm.sort_vmas()
    return addr


def split_vma(mm: MmStruct, vma: Vma, addr: int) -> Vma:
    """Split ``vma`` at ``addr``; returns the upper part (a new VMA)."""
    page_shift = mm.kernel.arch.page_shift
    new = vm_area_dup(vma)
    new.start = addr
    new.pgoff = vma.pgoff + ((addr - vma.start) >> page_shift)
    vma.end = addr
    mm.vmas.append(new)
    mm.sort_vmas()
    return new


def _isolate(mm: MmStruct, start: int, end: int) -> list[Vma]:
    """Split VMAs so that [start, end) is covered by whole VMAs; return those."""
    for vma in list(mm.vmas):
        if vma.start < start < vma.end:
            split_vma(mm, vma, start)
    for vma in list(mm.vmas):
        if vma.start < end < vma.end:
            split_vma(mm, vma, end)
    return [v for v in mm.vmas if v.start >= start and v.end <= end]


def _check_range(mm: MmStruct, start: int, length: int) -> int:
    page = mm.kernel.arch.page_size
    if start % page or length <= 0 or length % page:
        raise UsageError(f"range {start:#x}+{length:#x} is not page aligned")
    return start + length


@kfunc
def do_vmi_munmap(mm: MmStruct, start: int, length: int) -> None:
    """Unmap [start, start+length): split VMAs, zap, free page tables, one gather flush."""
    end = _check_range(mm, start, length)
    vmas = _isolate(mm, start, end)
    if not vmas:
        return
    tlb = tlb_gather_mmu(mm)
    unmap_vmas(tlb, vmas, start, end)
    for vma in vmas:
        mm.vmas.remove(vma)
        if vma.file is not None:
            vma.file.put(mm.kernel)
    free_pgtables(tlb, mm, start, end, keep=mm.vmas)
    tlb_finish_mmu(tlb)


@kfunc
def zap_page_range_single(vma: Vma, start: int, end: int) -> None:
    tlb = tlb_gather_mmu(vma.mm)
    unmap_single_vma(tlb, vma, start, end)
    tlb_finish_mmu(tlb)


@kfunc
def madvise(mm: MmStruct, start: int, length: int, advice: str) -> None:
    end = _check_range(mm, start, length)
    if advice == "dontneed":
        for vma in [v for v in mm.vmas if v.start < end and v.end > start]:
            zap_page_range_single(vma, max(start, vma.start), min(end, vma.end))
    elif advice == "free":
        for vma in [v for v in mm.vmas if v.start < end and v.end > start]:
            madvise_free_single_vma(vma, max(start, vma.start), min(end, vma.end))
    elif advice in ("dontfork", "dofork"):
        for vma in _isolate(mm, start, end):
            if advice == "dontfork":
                vma.flags |= VM_DONTCOPY
            else:
                vma.flags &= ~VM_DONTCOPY
    elif advice in ("hugepage", "nohugepage"):
        for vma in _isolate(mm, start, end):
            if advice == "hugepage":
                vma.flags = (vma.flags | VM_HUGEPAGE) & ~VM_NOHUGEPAGE
            else:
                vma.flags = (vma.flags | VM_NOHUGEPAGE) & ~VM_HUGEPAGE
    else:
        raise UsageError(f"unknown madvise advice {advice!r}")


@kfunc
def madvise_free_single_vma(vma: Vma, start: int, end: int) -> None:
    """MADV_FREE (mm/madvise.c, v6.10) of private anonymous memory: mark the pages lazily freeable
    by making their PTEs old and clean, under one mmu_gather.  Reclaim (not modelled) may then
    drop a page whose PTE is still clean; a write before that re-dirties it and keeps the data.
    PMD-mapped THPs are left alone, and a large folio not wholly inside the range is skipped
    (the kernel would try to split it)."""
    from ptesim.kernel.pgtable import PteTable

    if vma.file is not None or not vma.anon_vma:
        return
    mm = vma.mm
    g = mm.kernel.arch.geometry
    tlb = tlb_gather_mmu(mm)
    addr = start
    while addr < end:
        nxt = min((addr | (g.pmd_size - 1)) + 1, end)
        if isinstance(mm.pmd_entry(addr), PteTable):
            madvise_free_pte_range(tlb, vma, addr, nxt)
        addr = nxt
    tlb_finish_mmu(tlb)


@kfunc
def madvise_free_pte_range(tlb: MmuGather, vma: Vma, addr: int, end: int) -> None:
    from ptesim.arch.arm64.contpte import CYDP_CLEAR_DIRTY, CYDP_CLEAR_YOUNG
    from ptesim.kernel.memory import FPB_IGNORE_DIRTY, FPB_IGNORE_SOFT_DIRTY, folio_pte_batch

    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    ptep = mm.pte_offset(addr)
    assert ptep is not None
    while addr < end:
        nr = 1
        ptent = arch.ptep_get(ptep)
        hit = vm_normal_page(vma, addr, ptent) if arch.pte_present(ptent) else None
        if hit is not None:
            folio, page = hit
            if folio.large:
                max_nr = (end - addr) >> arch.page_shift
                flags = FPB_IGNORE_DIRTY | FPB_IGNORE_SOFT_DIRTY
                nr, _ = folio_pte_batch(arch, kernel.cfg, folio, addr, ptep, ptent, max_nr, flags)
            whole = page == 0 and nr == folio.nr_pages
            exclusive = all(m == 1 for m in folio.mapcount) and folio.entire_mapcount == 0
            if whole and exclusive and (arch.pte_young(ptent) or arch.pte_dirty(ptent)):
                arch.clear_young_dirty_ptes(vma, addr, ptep, nr, CYDP_CLEAR_YOUNG | CYDP_CLEAR_DIRTY)
                tlb.tlb_remove_tlb_entries(addr, nr)
        ptep, addr = ptep + nr, addr + (nr << arch.page_shift)


@kfunc
def mprotect(mm: MmStruct, start: int, length: int, prot: str) -> None:
    """do_mprotect_pkey + mprotect_fixup + change_protection under one mmu_gather."""
    end = _check_range(mm, start, length)
    new = prot_flags(prot)
    vmas = _isolate(mm, start, end)
    tlb = tlb_gather_mmu(mm)
    for vma in vmas:
        vma.flags = (vma.flags & ~(VM_READ | VM_WRITE | VM_EXEC)) | new
        vma.page_prot = vm_page_prot(mm, vma.flags)
        change_protection(tlb, vma, vma.start, vma.end)
    tlb_finish_mmu(tlb)


def can_change_pte_writable(vma: Vma, addr: int, pte: int) -> bool:
    """mm/mprotect.c (v6.9)."""
    arch = vma.mm.kernel.arch
    if not vma.flags & VM_WRITE:
        return False
    if vma_soft_dirty_enabled(vma) and not arch.pte_soft_dirty(pte):
        return False
    if arch.pte_uffd_wp(pte):
        return False
    if not vma.flags & VM_SHARED:
        hit = vm_normal_page(vma, addr, pte)
        return hit is not None and hit[0].anon and hit[0].anon_exclusive[hit[1]]
    return arch.pte_dirty(pte)


@kfunc
def change_protection(tlb: MmuGather, vma: Vma, start: int, end: int) -> None:
    from ptesim.kernel.huge_memory import __split_huge_pmd
    from ptesim.kernel.pgtable import PteTable

    mm = vma.mm
    arch = mm.kernel.arch
    g = arch.geometry
    addr = start
    while addr < end:
        nxt = min((addr | (g.pmd_size - 1)) + 1, end)
        entry = mm.pmd_entry(addr)
        if isinstance(entry, int):
            __split_huge_pmd(vma, addr)
            entry = mm.pmd_entry(addr)
        if isinstance(entry, PteTable):
            change_pte_range(tlb, vma, addr, nxt)
        addr = nxt


@memoised_table_op("change")
@kfunc
def change_pte_range(tlb: MmuGather, vma: Vma, addr: int, end: int) -> None:
    """mm/mprotect.c.  Per PTE (<= v6.16): ptep_modify_prot_start / pte_modify / commit, and a
    tlb_flush_pte_range when pte_needs_flush() (c9fe66560bf2, v6.0).  ``cfg.mprotect_batch``
    (cac1db8c3aad, v6.17): one batch per large folio through modify_prot_{start,commit}_ptes."""
    mm = vma.mm
    arch = mm.kernel.arch
    batch = mm.kernel.cfg.mprotect_batch
    ptep = mm.pte_offset(addr)
    assert ptep is not None
    try_writable = bool(vma.flags & VM_WRITE)
    while addr < end:
        nr = 1
        oldpte = arch.ptep_get(ptep)
        if arch.pte_present(oldpte):
            if batch:
                nr = change_present_ptes(tlb, vma, addr, ptep, oldpte, (end - addr) >> arch.page_shift)
            else:
                oldpte = arch.ptep_modify_prot_start(vma, addr, ptep)
                ptent = arch.pte_modify(oldpte, vma.page_prot)
                if try_writable and not arch.pte_write(ptent) and can_change_pte_writable(vma, addr, ptent):
                    ptent = arch.pte_mkwrite(ptent)
                arch.ptep_modify_prot_commit(vma, addr, ptep, oldpte, ptent)
                if arch.pte_needs_flush(oldpte, ptent):
                    tlb.tlb_flush_pte_range(addr, arch.page_size)
        ptep = ptep + nr
        addr += nr * arch.page_size


def change_present_ptes(tlb: MmuGather, vma: Vma, addr: int, ptep: Ptep, oldpte: int, max_nr: int) -> int:
    """The v6.17 body of change_pte_range for one present PTE and the rest of its folio batch;
    returns the batch length."""
    mm = vma.mm
    arch = mm.kernel.arch
    hit = vm_normal_page(vma, addr, oldpte)
    folio = hit[0] if hit is not None else None
    nr = mprotect_folio_pte_batch(vma, folio, addr, ptep, oldpte, max_nr)
    oldpte = arch.modify_prot_start_ptes(vma, addr, ptep, nr)
    ptent = arch.pte_modify(oldpte, vma.page_prot)
    if vma.flags & VM_WRITE and not arch.pte_write(ptent):
        set_write_prot_commit_flush_ptes(tlb, vma, hit, addr, ptep, oldpte, ptent, nr)
    else:
        prot_commit_flush_ptes(tlb, vma, addr, ptep, oldpte, ptent, nr, 0, False)
    return nr


def mprotect_folio_pte_batch(
    vma: Vma, folio: Folio | None, addr: int, ptep: Ptep, pte: int, max_nr: int
) -> int:
    """mm/mprotect.c (v6.17): batch a large folio with FPB_RESPECT_SOFT_DIRTY | FPB_RESPECT_WRITE
    (dirty and young may differ)."""
    from ptesim.kernel.memory import FPB_IGNORE_DIRTY, FPB_RESPECT_WRITE, folio_pte_batch

    if folio is None or not folio.large:
        return 1
    kernel = vma.mm.kernel
    nr, _ = folio_pte_batch(
        kernel.arch, kernel.cfg, folio, addr, ptep, pte, max_nr, FPB_IGNORE_DIRTY | FPB_RESPECT_WRITE
    )
    return nr


@kfunc
def prot_commit_flush_ptes(
    tlb: MmuGather,
    vma: Vma,
    addr: int,
    ptep: Ptep,
    oldpte: int,
    ptent: int,
    nr: int,
    idx: int,
    set_write: bool,
) -> None:
    """Commit ``nr`` entries from position ``idx`` of the batch and queue one flush for them."""
    arch = vma.mm.kernel.arch
    addr += idx * arch.page_size
    ptep = ptep + idx
    oldpte = arch.pte_advance_pfn(oldpte, idx)
    ptent = arch.pte_advance_pfn(ptent, idx)
    if set_write:
        ptent = arch.pte_mkwrite(ptent)
    arch.modify_prot_commit_ptes(vma, addr, ptep, oldpte, ptent, nr)
    if arch.pte_needs_flush(oldpte, ptent):
        tlb.tlb_flush_pte_range(addr, nr * arch.page_size)


def set_write_prot_commit_flush_ptes(
    tlb: MmuGather,
    vma: Vma,
    hit: tuple[Folio, int] | None,
    addr: int,
    ptep: Ptep,
    oldpte: int,
    ptent: int,
    nr: int,
) -> None:
    """Shared mappings: writable if dirty; private ones: maybe_change_pte_writable and, per run of
    pages with the same PageAnonExclusive, writable only if exclusive (commit_anon_folio_batch)."""
    arch = vma.mm.kernel.arch
    if vma.flags & VM_SHARED:
        set_write = maybe_change_pte_writable(vma, ptent) and arch.pte_dirty(ptent)
        prot_commit_flush_ptes(tlb, vma, addr, ptep, oldpte, ptent, nr, 0, set_write)
        return
    if not (maybe_change_pte_writable(vma, ptent) and hit is not None and hit[0].anon):
        prot_commit_flush_ptes(tlb, vma, addr, ptep, oldpte, ptent, nr, 0, False)
        return
    folio, page = hit
    idx = 0
    while idx < nr:
        exclusive = folio.anon_exclusive[page + idx]
        length = 1
        while idx + length < nr and folio.anon_exclusive[page + idx + length] == exclusive:
            length += 1
        prot_commit_flush_ptes(tlb, vma, addr, ptep, oldpte, ptent, length, idx, exclusive)
        idx += length


def maybe_change_pte_writable(vma: Vma, pte: int) -> bool:
    """mm/mprotect.c (v6.17, 45199f715b74): the VMA- and PTE-level half of can_change_pte_writable."""
    arch = vma.mm.kernel.arch
    if not vma.flags & VM_WRITE:
        return False
    if vma_soft_dirty_enabled(vma) and not arch.pte_soft_dirty(pte):
        return False
    return not arch.pte_uffd_wp(pte)


# ---- mm/mremap.c ----------------------------------------------------------------------------


@kfunc
def mremap(mm: MmStruct, old_addr: int, length: int, new_addr: int) -> int:
    """mremap(old_addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr): unmap whatever
    is at the destination, copy_vma, move_page_tables, then unmap the (now empty) old range
    (move_vma -> do_vmi_munmap, which walks and frees the old page tables).  The range must lie in
    one VMA and not overlap the destination."""
    page = mm.kernel.arch.page_size
    if new_addr % page:
        raise UsageError(f"mremap destination {new_addr:#x} is not page aligned")
    old_end = _check_range(mm, old_addr, length)
    if new_addr < old_end and old_addr < new_addr + length:
        raise UsageError("mremap source and destination overlap")
    vma = mm.find_vma(old_addr)
    if vma is None or not (vma.start <= old_addr and old_end <= vma.end):
        raise UsageError(f"mremap range {old_addr:#x}+{length:#x} is not inside one mapping")
    do_vmi_munmap(mm, new_addr, length)
    (vma,) = _isolate(mm, old_addr, old_end)
    new_vma = copy_vma(vma, new_addr)
    move_page_tables(vma, old_addr, new_vma, new_addr, length)
    do_vmi_munmap(mm, old_addr, length)
    return new_addr


def copy_vma(vma: Vma, new_addr: int) -> Vma:
    """mm/vma.c : copy_vma(): the same flags, offset, anon_vma and file at ``new_addr``."""
    new = vm_area_dup(vma)
    new.end = new_addr + (vma.end - vma.start)
    new.start = new_addr
    vma.mm.vmas.append(new)
    vma.mm.sort_vmas()
    return new


@kfunc
def move_page_tables(vma: Vma, old_addr: int, new_vma: Vma, new_addr: int, length: int) -> None:
    """mm/mremap.c: per extent (up to the next PMD boundary of either address), move a whole PMD
    (a PMD-mapped THP with move_huge_pmd, a PTE table with move_normal_pmd: HAVE_MOVE_PMD on x86,
    arm64 and riscv) when both ends are PMD-aligned, else split a THP and move_ptes."""
    from ptesim.kernel.huge_memory import __split_huge_pmd

    mm = vma.mm
    g = mm.kernel.arch.geometry
    old_end = old_addr + length
    while old_addr < old_end:
        extent = min(
            ((old_addr | (g.pmd_size - 1)) + 1) - old_addr,
            ((new_addr | (g.pmd_size - 1)) + 1) - new_addr,
            old_end - old_addr,
        )
        entry = mm.pmd_entry(old_addr)
        if isinstance(entry, int):
            if extent == g.pmd_size:
                move_huge_pmd(vma, old_addr, new_addr)
                entry = None
            else:
                __split_huge_pmd(vma, old_addr)
                entry = mm.pmd_entry(old_addr)
        elif (
            isinstance(entry, PteTable) and extent == g.pmd_size and move_normal_pmd(vma, old_addr, new_addr)
        ):
            entry = None
        if isinstance(entry, PteTable):
            mm.pte_alloc(new_addr)
            move_ptes(vma, old_addr, old_addr + extent, new_vma, new_addr)
        old_addr += extent
        new_addr += extent


def _pmd_slot(mm: MmStruct, addr: int, alloc: bool) -> tuple[UpperTable, int]:
    g = mm.kernel.arch.geometry
    table = mm.pmd_table(addr, alloc)
    assert table is not None
    return table, g.index(g.levels - 2, addr)


@kfunc
def move_normal_pmd(vma: Vma, old_addr: int, new_addr: int) -> bool:
    """Hand the whole PTE table over: read the new PMD (must be none) and the old one, clear the
    old, populate the new, flush the old range (flush_tlb_range, under the PMD lock)."""
    mm = vma.mm
    g = mm.kernel.arch.geometry
    new_tbl, new_idx = _pmd_slot(mm, new_addr, True)
    emit("pmd_read", mm=mm)
    if new_tbl.entries.get(new_idx) is not None:
        return False
    old_tbl, old_idx = _pmd_slot(mm, old_addr, False)
    emit("pmd_read", mm=mm)
    table = old_tbl.entries.pop(old_idx)
    emit("pmd_write", mm=mm)
    assert isinstance(table, PteTable)
    table.base = new_addr & ~(g.pmd_size - 1)
    new_tbl.entries[new_idx] = table
    emit("pmd_write", mm=mm)
    mm.kernel.arch.flush_tlb_range(vma, old_addr, old_addr + g.pmd_size)
    return True


@kfunc
def move_huge_pmd(vma: Vma, old_addr: int, new_addr: int) -> None:
    """mm/huge_memory.c: get-and-clear the old PMD leaf (its deposited table moves with it), set it
    at the new address, flush the old PMD range."""
    mm = vma.mm
    arch = mm.kernel.arch
    g = arch.geometry
    old_tbl, old_idx = _pmd_slot(mm, old_addr, False)
    new_tbl, new_idx = _pmd_slot(mm, new_addr, True)
    pmd = arch.pmdp_huge_get_and_clear_full(mm, old_addr, Pmdp(old_tbl, old_idx), False)
    pmd = arch.pte_mksoft_dirty(pmd)
    arch.set_pmd_at(mm, new_addr, Pmdp(new_tbl, new_idx), pmd)
    arch.flush_pmd_tlb_range(vma, old_addr, old_addr + g.pmd_size)


@memoised_table_op("move")
@kfunc
def move_ptes(vma: Vma, old_addr: int, old_end: int, new_vma: Vma, new_addr: int) -> None:
    """mm/mremap.c : move_ptes().  Per PTE (<= v6.16): ptep_get, ptep_get_and_clear, set_pte_at.
    ``cfg.mremap_batch`` (f822a9a81a31, v6.17): one batch per large folio with
    get_and_clear_full_ptes + set_ptes.  Moving a present PTE forces one flush_tlb_range of the
    old range before the PTL is dropped."""
    from ptesim.kernel.memory import FPB_IGNORE_DIRTY, FPB_IGNORE_SOFT_DIRTY, folio_pte_batch

    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    batch = kernel.cfg.mremap_batch
    length = old_end - old_addr
    old_ptep = mm.pte_offset(old_addr)
    new_ptep = mm.pte_offset(new_addr)
    assert old_ptep is not None and new_ptep is not None
    force_flush = False
    while old_addr < old_end:
        nr = 1
        old_pte = arch.ptep_get(old_ptep)
        if not arch.pte_none(old_pte):
            if arch.pte_present(old_pte):
                force_flush = True
                if batch and old_end - old_addr > arch.page_size:
                    hit = vm_normal_page(vma, old_addr, old_pte)
                    if hit is not None and hit[0].large:
                        max_nr = (old_end - old_addr) >> arch.page_shift
                        flags = FPB_IGNORE_DIRTY | FPB_IGNORE_SOFT_DIRTY
                        nr, _ = folio_pte_batch(
                            arch, kernel.cfg, hit[0], old_addr, old_ptep, old_pte, max_nr, flags
                        )
            if batch:
                pte = arch.get_and_clear_full_ptes(mm, old_addr, old_ptep, nr, False)
            else:
                pte = arch.ptep_get_and_clear(mm, old_addr, old_ptep)
            if arch.pte_present(pte):
                pte = arch.pte_mksoft_dirty(pte)
            arch.set_ptes(mm, new_addr, new_ptep, pte, nr)
        old_ptep, new_ptep = old_ptep + nr, new_ptep + nr
        old_addr += nr * arch.page_size
        new_addr += nr * arch.page_size
    if force_flush:
        arch.flush_tlb_range(vma, old_end - length, old_end)


@kfunc
def pin_user_page(mm: MmStruct, vma: Vma, addr: int) -> None:
    """pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) of one page: fault it in writable (breaking COW,
    so the page is exclusive), then take a pin; the mm is marked MMF_HAS_PINNED."""
    from ptesim.kernel.folio import folio_get

    arch = mm.kernel.arch
    for _ in range(3):
        ptep = mm.pte_offset(addr)
        pte = arch.ptep_get(ptep) if ptep is not None else 0  # follow_page_pte()
        if ptep is not None and arch.pte_present(pte) and arch.pte_write(pte):
            break
        pmd = mm.pmd_entry(addr)
        if isinstance(pmd, int) and arch.pte_write(pmd):
            pte = pmd
            break
        handle_mm_fault(vma, addr, True)
    else:
        raise AssertionError(f"could not fault in {addr:#x} for pinning")
    folio = mm.kernel.pages.pfn_to_folio(
        arch.pte_pfn(pte)
        + (
            ((addr - (addr & ~(arch.geometry.pmd_size - 1))) >> arch.page_shift)
            if isinstance(mm.pmd_entry(addr), int)
            else 0
        )
    )
    assert folio is not None
    mm.has_pinned = True
    folio_get(folio, mm=mm)
    folio.pincount += 1


@kfunc
def unpin_user_page(mm: MmStruct, folio_pfn: int) -> None:
    folio = mm.kernel.pages.pfn_to_folio(folio_pfn)
    assert folio is not None and folio.pincount > 0
    folio.pincount -= 1
    mm.kernel.pages.folio_put(folio, mm=mm)


__all__ = [
    "do_mmap",
    "do_vmi_munmap",
    "madvise",
    "mprotect",
    "mremap",
    "pin_user_page",
    "unmap_page_range",
]
