"""``mm/memory.c``: copying page tables at fork, zapping them, and the anonymous fault paths.

Functions follow the kernel's control flow and names (v6.9 unless a flag selects an older or newer
form; see :mod:`ptesim.kernel.config`).  Counts arise only from the primitives the paths execute.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ptesim.events import emit, kfunc
from ptesim.fast.memo import memoised_table_op
from ptesim.kernel.folio import Folio, folio_get, folio_ref_add, folio_ref_sub
from ptesim.kernel.mm import (
    MM_ANONPAGES,
    MM_SHMEMPAGES,
    VM_PFNMAP,
    VM_SHARED,
    VM_SOFTDIRTY,
    VM_UFFD_WP,
    VM_WRITE,
    MmStruct,
    Vma,
    is_cow_mapping,
)
from ptesim.kernel.mmu_gather import (
    MmuGather,
    __tlb_remove_folio_pages,
    pmd_free_tlb,
    pte_free_tlb,
    pud_free_tlb,
    tlb_delay_rmap,
    tlb_end_vma,
    tlb_flush_mmu,
    tlb_flush_mmu_tlbonly,
    tlb_flush_rmaps,
)
from ptesim.kernel.pgtable import Ptep, PteTable
from ptesim.kernel.rmap import (
    folio_add_file_rmap_ptes,
    folio_add_new_anon_rmap,
    folio_dup_file_rmap_ptes,
    folio_remove_rmap_pte,
    folio_remove_rmap_ptes,
    folio_try_dup_anon_rmap_pte,
    folio_try_dup_anon_rmap_ptes,
)

if TYPE_CHECKING:
    from ptesim.arch.base import Arch

EAGAIN = -11

FPB_IGNORE_DIRTY = 1 << 0
FPB_IGNORE_SOFT_DIRTY = 1 << 1
#: v6.17 (57fae936b40c 'mm: introduce FPB_RESPECT_WRITE for PTE batching infrastructure'): the
#: batch also stops where the write bit differs (before, folio_pte_batch ignored it and reported
#: any_writable).  v6.17 spells dirty/soft-dirty the other way round (FPB_RESPECT_DIRTY /
#: FPB_RESPECT_SOFT_DIRTY); the model keeps the v6.9 FPB_IGNORE_* names for those two.
FPB_RESPECT_WRITE = 1 << 2


def vm_normal_page(vma: Vma, addr: int, pte: int) -> tuple[Folio, int] | None:
    """The folio and page index a present PTE maps, or None for special mappings (zero page)."""
    arch = vma.mm.kernel.arch
    if arch.pte_special(pte):
        return None
    pfn = arch.pte_pfn(pte)
    folio = vma.mm.kernel.pages.pfn_to_folio(pfn)
    if folio is None:
        raise AssertionError(f"present PTE at {addr:#x} of {vma.mm!r} maps free PFN {pfn:#x}")
    return folio, pfn - folio.pfn


def userfaultfd_wp(vma: Vma) -> bool:
    return bool(vma.flags & VM_UFFD_WP)


def vma_soft_dirty_enabled(vma: Vma) -> bool:
    """include/linux/mm.h: soft-dirty is tracked while VM_SOFTDIRTY is clear."""
    return not vma.flags & VM_SOFTDIRTY


# =============================================================================================
# fork: copy_page_range and below
# =============================================================================================


def vma_needs_copy(dst_vma: Vma, src_vma: Vma) -> bool:
    """Copy page tables only where faulting them in later would not do (uffd-wp, PFN maps, anon)."""
    if userfaultfd_wp(dst_vma):
        return True
    if src_vma.flags & VM_PFNMAP:
        return True
    return src_vma.anon_vma


@kfunc
def copy_page_range(dst_vma: Vma, src_vma: Vma) -> int:
    """Copy the page tables of ``src_vma`` into ``dst_vma`` (the child's copy of it)."""
    from ptesim.kernel.huge_memory import copy_huge_pmd

    if not vma_needs_copy(dst_vma, src_vma):
        return 0
    src_mm = src_vma.mm
    g = src_mm.kernel.arch.geometry
    is_cow = is_cow_mapping(src_vma.flags)
    if is_cow:
        # mmu_notifier_invalidate_range_start + raw_write_seqcount_begin(&src_mm->write_protect_seq)
        src_mm.write_protect_seq += 1
    addr = src_vma.start
    while addr < src_vma.end:
        nxt = min((addr | (g.pmd_size - 1)) + 1, src_vma.end)
        entry = src_mm.pmd_entry(addr)
        if isinstance(entry, int):
            if copy_huge_pmd(dst_vma, src_vma, addr) == 0:
                addr = nxt
                continue
            entry = src_mm.pmd_entry(addr)  # split: fall through to the PTE table
        if isinstance(entry, PteTable):
            copy_pte_range(dst_vma, src_vma, addr, nxt)
        addr = nxt
    if is_cow:
        src_mm.write_protect_seq += 1
    return 0


@memoised_table_op("copy")
@kfunc
def copy_pte_range(dst_vma: Vma, src_vma: Vma, addr: int, end: int) -> None:
    """Copy the PTEs of ``[addr, end)`` (within one PMD) from parent to child."""
    kernel = src_vma.mm.kernel
    arch, cfg = kernel.arch, kernel.cfg
    src_mm, dst_mm = src_vma.mm, dst_vma.mm
    page_size = arch.page_size
    prealloc: Folio | None = None
    while True:  # again:
        rss: Counter[str] = Counter()
        dst_pte = dst_mm.pte_alloc(addr)
        src_pte = src_mm.pte_offset(addr)
        assert dst_pte is not None and src_pte is not None
        ret = 0
        while True:
            nr = 1
            ptent = arch.ptep_get(src_pte)
            if arch.pte_none(ptent):
                pass
            else:
                if cfg.fork_batch == "none":
                    ret, prealloc = copy_present_pte(dst_vma, src_vma, dst_pte, src_pte, addr, rss, prealloc)
                    nr = 1
                else:
                    max_nr = (end - addr) // page_size
                    ret, prealloc = copy_present_ptes(
                        dst_vma, src_vma, dst_pte, src_pte, ptent, addr, max_nr, rss, prealloc
                    )
                    nr = ret
                if ret == EAGAIN:
                    break
                if prealloc is not None:
                    kernel.pages.folio_put(prealloc, mm=dst_mm)
                    prealloc = None
            dst_pte, src_pte, addr = dst_pte + nr, src_pte + nr, addr + nr * page_size
            if addr == end:
                break
        add_mm_rss_vec(dst_mm, rss)
        if ret == EAGAIN:
            prealloc = folio_prealloc(dst_vma)
        if addr == end:
            break
    if prealloc is not None:
        kernel.pages.folio_put(prealloc, mm=dst_mm)


def add_mm_rss_vec(mm: MmStruct, rss: Counter[str]) -> None:
    emit("rss_flush", mm=mm)
    mm.rss.update(rss)


@kfunc
def folio_prealloc(vma: Vma) -> Folio:
    """An order-0 folio for copying a possibly pinned page, allocated with the locks dropped."""
    return vma.mm.kernel.pages.folio_alloc(0, mm=vma.mm)


@kfunc
def copy_present_page(
    dst_vma: Vma,
    src_vma: Vma,
    dst_pte: Ptep,
    src_pte: Ptep,
    addr: int,
    rss: Counter[str],
    prealloc: Folio | None,
    folio: Folio,
    page: int,
) -> tuple[int, Folio | None]:
    """The child gets its own copy of a possibly pinned, exclusive page; the parent's PTE stays
    writable.  Returns (-EAGAIN, None) when no page was preallocated yet, else (0, None)."""
    kernel = dst_vma.mm.kernel
    arch = kernel.arch
    if prealloc is None:
        return EAGAIN, None
    new = prealloc
    emit("page_copy", mm=dst_vma.mm)
    new.data[0] = folio.data[page]
    folio_add_new_anon_rmap(new, dst_vma, addr)
    rss[MM_ANONPAGES] += 1
    pte = arch.pfn_pte(new.pfn, dst_vma.page_prot)
    pte = arch.maybe_mkwrite(arch.pte_mkdirty(pte), dst_vma)
    src = arch.ptep_get(src_pte)  # userfaultfd_pte_wp(dst_vma, ptep_get(src_pte))
    if userfaultfd_wp(dst_vma) and arch.pte_uffd_wp(src):
        pte = arch.pte_mkuffd_wp(pte)
    arch.set_pte_at(dst_vma.mm, addr, dst_pte, pte)
    return 0, None


@kfunc
def copy_present_pte(
    dst_vma: Vma,
    src_vma: Vma,
    dst_pte: Ptep,
    src_pte: Ptep,
    addr: int,
    rss: Counter[str],
    prealloc: Folio | None,
) -> tuple[int, Folio | None]:
    """<= v6.8: copy one present PTE (second ptep_get, folio_get, rmap dup, wrprotect, set_pte_at).

    Returns (0 or -EAGAIN, the preallocated folio if it was not consumed)."""
    kernel = src_vma.mm.kernel
    arch = kernel.arch
    src_mm, dst_mm = src_vma.mm, dst_vma.mm
    pte = arch.ptep_get(src_pte)
    hit = vm_normal_page(src_vma, addr, pte)
    if hit is not None:
        folio, page = hit
        folio_get(folio, mm=dst_mm)
        if folio.anon:
            if folio_try_dup_anon_rmap_pte(folio, page, src_vma, dst_mm):
                kernel.pages.folio_put(folio, mm=dst_mm)
                return copy_present_page(dst_vma, src_vma, dst_pte, src_pte, addr, rss, prealloc, folio, page)
            rss[MM_ANONPAGES] += 1
        else:
            folio_dup_file_rmap_ptes(folio, page, 1, dst_mm)
            rss[MM_SHMEMPAGES] += 1
    if is_cow_mapping(src_vma.flags) and arch.pte_write(pte):
        arch.ptep_set_wrprotect(src_mm, addr, src_pte)
        pte = arch.pte_wrprotect(pte)
    pte = _child_pte(arch, dst_vma, src_vma, pte)
    arch.set_pte_at(dst_mm, addr, dst_pte, pte)
    return 0, prealloc


def _child_pte(arch: Arch, dst_vma: Vma, src_vma: Vma, pte: int) -> int:
    """The child's PTE: clean if shared, always old, uffd-wp only if the child VMA tracks it."""
    if src_vma.flags & VM_SHARED:
        pte = arch.pte_mkclean(pte)
    pte = arch.pte_mkold(pte)
    if not userfaultfd_wp(dst_vma):
        pte = arch.pte_clear_uffd_wp(pte)
    return pte


@kfunc
def copy_present_ptes(
    dst_vma: Vma,
    src_vma: Vma,
    dst_pte: Ptep,
    src_pte: Ptep,
    pte: int,
    addr: int,
    max_nr: int,
    rss: Counter[str],
    prealloc: Folio | None,
) -> tuple[int, Folio | None]:
    """v6.9 (f8d937761d65), or Ryan Roberts' batch-copy when ``fork_batch == 'cont_mapped'``.

    Returns (nr copied or -EAGAIN, the preallocated folio if it was not consumed).
    """
    kernel = src_vma.mm.kernel
    arch, cfg = kernel.arch, kernel.cfg
    dst_mm = dst_vma.mm
    if cfg.fork_batch == "cont_mapped":
        pte = arch.ptep_get(src_pte)  # v1/v2 re-read the first entry inside copy_present_ptes
    hit = vm_normal_page(src_vma, addr, pte)
    if hit is None:
        __copy_present_ptes(dst_vma, src_vma, dst_pte, src_pte, pte, addr, 1)
        return 1, prealloc
    folio, page = hit
    if prealloc is None and folio.large and max_nr != 1:
        if cfg.fork_batch == "cont_mapped":
            return _copy_present_ptes_cont_mapped(
                dst_vma, src_vma, dst_pte, src_pte, pte, addr, max_nr, rss, folio, page
            )
        flags = 0
        if src_vma.flags & VM_SHARED:
            flags |= FPB_IGNORE_DIRTY
        if not vma_soft_dirty_enabled(src_vma):
            flags |= FPB_IGNORE_SOFT_DIRTY
        nr, any_writable = folio_pte_batch(arch, cfg, folio, addr, src_pte, pte, max_nr, flags)
        folio_ref_add(folio, nr, mm=dst_mm)
        if folio.anon:
            if folio_try_dup_anon_rmap_ptes(folio, page, nr, src_vma, dst_mm):
                folio_ref_sub(folio, nr, mm=dst_mm)
                return EAGAIN, prealloc
            rss[MM_ANONPAGES] += nr
        else:
            folio_dup_file_rmap_ptes(folio, page, nr, dst_mm)
            rss[MM_SHMEMPAGES] += nr
        if any_writable:
            pte = arch.pte_mkwrite(pte)
        __copy_present_ptes(dst_vma, src_vma, dst_pte, src_pte, pte, addr, nr)
        return nr, prealloc

    folio_get(folio, mm=dst_mm)
    if folio.anon:
        if folio_try_dup_anon_rmap_pte(folio, page, src_vma, dst_mm):
            kernel.pages.folio_put(folio, mm=dst_mm)
            err, _ = copy_present_page(dst_vma, src_vma, dst_pte, src_pte, addr, rss, prealloc, folio, page)
            return (err, prealloc) if err else (1, None)
        rss[MM_ANONPAGES] += 1
    else:
        folio_dup_file_rmap_ptes(folio, page, 1, dst_mm)
        rss[MM_SHMEMPAGES] += 1
    __copy_present_ptes(dst_vma, src_vma, dst_pte, src_pte, pte, addr, 1)
    return 1, prealloc


def _copy_present_ptes_cont_mapped(
    dst_vma: Vma,
    src_vma: Vma,
    dst_pte: Ptep,
    src_pte: Ptep,
    pte: int,
    addr: int,
    max_nr: int,
    rss: Counter[str],
    folio: Folio,
    page: int,
) -> tuple[int, Folio | None]:
    """Ryan Roberts' batch copy (contpte v1 #13 / v2 #01): batch = folio_nr_pages_cont_mapped(),
    one folio_ref_add, per-page rmap dup (stop at the first page that must be copied), one
    write-protect call over the batch, child = mkold(mkclean(pte)) + mkdirty if any was dirty."""
    kernel = src_vma.mm.kernel
    arch = kernel.arch
    dst_mm = dst_vma.mm
    nr, any_dirty = folio_nr_pages_cont_mapped(arch, folio, src_pte, pte, max_nr)
    folio_ref_add(folio, nr, mm=dst_mm)
    done = 0
    for i in range(nr):
        if folio_try_dup_anon_rmap_pte(folio, page + i, src_vma, dst_mm):
            break
        done += 1
    if done == 0:
        folio_ref_sub(folio, nr, mm=dst_mm)
        return EAGAIN, None
    if done < nr:
        folio_ref_sub(folio, nr - done, mm=dst_mm)
        nr = done
    rss[MM_ANONPAGES] += nr
    if is_cow_mapping(src_vma.flags) and arch.pte_write(pte):
        arch.wrprotect_ptes(src_vma.mm, addr, src_pte, nr)
        pte = arch.pte_wrprotect(pte)
    pte = arch.pte_mkold(arch.pte_mkclean(pte))
    if not src_vma.flags & VM_SHARED and any_dirty:
        pte = arch.pte_mkdirty(pte)
    if not userfaultfd_wp(dst_vma):
        pte = arch.pte_clear_uffd_wp(pte)
    arch.set_ptes(dst_mm, addr, dst_pte, pte, nr)
    return nr, None


@kfunc
def folio_nr_pages_cont_mapped(
    arch: Arch, folio: Folio, ptep: Ptep, pte: int, max_nr: int
) -> tuple[int, bool]:
    """contpte v2 #01: how many following PTEs map consecutive pages of ``folio`` with the same
    protections (ignoring access and dirty), reading each with ptep_get; records any dirty."""
    limit = min(max_nr, folio.end_pfn - arch.pte_pfn(pte))
    pfn = arch.pte_pfn(pte)
    prot = arch.pte_pgprot(arch.pte_mkold(arch.pte_mkclean(pte)))
    any_dirty = arch.pte_dirty(pte)
    nr = 1
    while nr < limit:
        p = arch.ptep_get(ptep + nr)
        if not arch.pte_present(p) or arch.pte_pfn(p) != pfn + nr:
            break
        if arch.pte_pgprot(arch.pte_mkold(arch.pte_mkclean(p))) != prot:
            break
        any_dirty = any_dirty or arch.pte_dirty(p)
        nr += 1
    return nr, any_dirty


@kfunc
def __copy_present_ptes(
    dst_vma: Vma, src_vma: Vma, dst_pte: Ptep, src_pte: Ptep, pte: int, addr: int, nr: int
) -> None:
    arch = src_vma.mm.kernel.arch
    if is_cow_mapping(src_vma.flags) and arch.pte_write(pte):
        arch.wrprotect_ptes(src_vma.mm, addr, src_pte, nr)
        pte = arch.pte_wrprotect(pte)
    pte = _child_pte(arch, dst_vma, src_vma, pte)
    arch.set_ptes(dst_vma.mm, addr, dst_pte, pte, nr)


def _fpb_clear_ignored(arch: Arch, pte: int, flags: int) -> int:
    if flags & FPB_IGNORE_DIRTY:
        pte = arch.pte_mkclean(pte)
    if flags & FPB_IGNORE_SOFT_DIRTY:
        pte = arch.pte_clear_soft_dirty(pte)
    pte = arch.pte_mkold(pte)
    return pte if flags & FPB_RESPECT_WRITE else arch.pte_wrprotect(pte)


@kfunc
def folio_pte_batch(
    arch: Arch,
    cfg: object,
    folio: Folio,
    addr: int,
    start_ptep: Ptep,
    pte: int,
    max_nr: int,
    flags: int,
) -> tuple[int, bool]:
    """mm/memory.c (v6.9): how many PTEs from ``start_ptep`` map consecutive pages of ``folio``
    with identical bits apart from those ignored; also whether any of them is writable."""
    folio_end_pfn = folio.end_pfn
    use_hint = getattr(cfg, "fpb_batch_hint", True)
    if getattr(cfg, "fpb_clamp_max_nr", False):
        max_nr = min(max_nr, folio_end_pfn - arch.pte_pfn(pte))
    any_writable = arch.pte_write(pte)
    nr = arch.pte_batch_hint(start_ptep, pte) if use_hint else 1
    expected = _fpb_clear_ignored(arch, arch.pte_advance_pfn(pte, nr), flags)
    ptep = start_ptep + nr
    end_idx = start_ptep.idx + max_nr
    while ptep.idx < end_idx:
        p = arch.ptep_get(ptep)
        writable = arch.pte_write(p)
        if _fpb_clear_ignored(arch, p, flags) != expected:
            break
        if not getattr(cfg, "fpb_clamp_max_nr", False) and arch.pte_pfn(p) >= folio_end_pfn:
            break
        any_writable = any_writable or writable
        nr = arch.pte_batch_hint(ptep, p) if use_hint else 1
        expected = arch.pte_advance_pfn(expected, nr)
        ptep = ptep + nr
    return min(ptep.idx - start_ptep.idx, max_nr), any_writable


# =============================================================================================
# zap: unmap_vmas and below
# =============================================================================================


@kfunc
def unmap_page_range(tlb: MmuGather, vma: Vma, start: int, end: int) -> None:
    """Walk [start, end) of ``vma`` and zap every PMD leaf and PTE table."""
    from ptesim.kernel.huge_memory import __split_huge_pmd, zap_huge_pmd

    mm = vma.mm
    g = mm.kernel.arch.geometry
    addr = start
    while addr < end:
        nxt = min((addr | (g.pmd_size - 1)) + 1, end)
        entry = mm.pmd_entry(addr)
        if isinstance(entry, int):
            if nxt - addr == g.pmd_size:
                zap_huge_pmd(tlb, vma, addr)
                addr = nxt
                continue
            __split_huge_pmd(vma, addr)
            entry = mm.pmd_entry(addr)
        if isinstance(entry, PteTable):
            a = addr
            while a != nxt:
                a = zap_pte_range(tlb, vma, a, nxt)
        addr = nxt


@memoised_table_op("zap")
@kfunc
def zap_pte_range(tlb: MmuGather, vma: Vma, addr: int, end: int) -> int:
    """Clear the PTEs of [addr, end) within one PMD; returns where it stopped.

    mm/memory.c (v6.9): ``force_flush`` (a dirty shared folio whose rmap removal was delayed, or a
    full gather batch) flushes the TLB and the delayed rmaps before the PTL is dropped, then frees
    the gathered pages; only ``force_break`` (a full batch) stops the walk early."""
    mm = vma.mm
    kernel = mm.kernel
    arch, cfg = kernel.arch, kernel.cfg
    rss: Counter[str] = Counter()
    pte = mm.pte_offset(addr)
    assert pte is not None
    force_flush = False
    while True:
        nr = 1
        ptent = arch.ptep_get(pte)
        if not arch.pte_none(ptent):
            max_nr = (end - addr) >> arch.page_shift
            nr, flush, force_break = zap_present_ptes(tlb, vma, pte, ptent, max_nr, addr, rss, cfg.zap_batch)
            force_flush = force_flush or flush
            if force_break:
                addr += nr << arch.page_shift
                break
        pte, addr = pte + nr, addr + (nr << arch.page_shift)
        if addr == end:
            break
    add_mm_rss_vec(mm, Counter({k: -v for k, v in rss.items()}))
    if force_flush:
        tlb_flush_mmu_tlbonly(tlb)
        tlb_flush_rmaps(tlb, vma)
        tlb_flush_mmu(tlb)
    return addr


@kfunc
def zap_present_ptes(
    tlb: MmuGather, vma: Vma, pte: Ptep, ptent: int, max_nr: int, addr: int, rss: Counter[str], batch: bool
) -> tuple[int, bool, bool]:
    """v6.9: batch the PTEs of one large folio (FPB_IGNORE_DIRTY | FPB_IGNORE_SOFT_DIRTY);
    <= v6.8 (``batch`` False): one PTE at a time.  Returns (nr, force_flush, force_break)."""
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    hit = vm_normal_page(vma, addr, ptent)
    if hit is None:
        arch.ptep_get_and_clear_full(mm, addr, pte, tlb.fullmm)
        tlb.tlb_remove_tlb_entries(addr, 1)
        return 1, False, False
    folio, page = hit
    if batch and folio.large and max_nr != 1:
        nr, _ = folio_pte_batch(
            arch, kernel.cfg, folio, addr, pte, ptent, max_nr, FPB_IGNORE_DIRTY | FPB_IGNORE_SOFT_DIRTY
        )
        return (nr, *zap_present_folio_ptes(tlb, vma, folio, page, pte, ptent, nr, addr, rss))
    return (1, *zap_present_folio_ptes(tlb, vma, folio, page, pte, ptent, 1, addr, rss))


@kfunc
def zap_present_folio_ptes(
    tlb: MmuGather,
    vma: Vma,
    folio: Folio,
    page: int,
    pte: Ptep,
    ptent: int,
    nr: int,
    addr: int,
    rss: Counter[str],
) -> tuple[bool, bool]:
    """Clear ``nr`` PTEs of one folio and queue it; returns (force_flush, force_break).

    A dirty PTE of a shared (file/shmem) folio marks the folio dirty and, since tlb_delay_rmap()
    is true on SMP, keeps its rmap until after the TLB flush and forces that flush at the end of
    this PTE table: writeback must not see the folio unmapped while a CPU may still write it."""
    mm = vma.mm
    arch = mm.kernel.arch
    delay_rmap = False
    force_flush = False
    force_break = False
    if not folio.anon:
        if nr == 1:
            ptent = arch.ptep_get_and_clear_full(mm, addr, pte, tlb.fullmm)
        else:
            ptent = arch.get_and_clear_full_ptes(mm, addr, pte, nr, tlb.fullmm)
        if arch.pte_dirty(ptent):
            folio_mark_dirty(folio)
            if tlb_delay_rmap(tlb):
                delay_rmap = True
                force_flush = True
        rss[MM_SHMEMPAGES] += nr
    else:
        if nr == 1:
            arch.ptep_get_and_clear_full(mm, addr, pte, tlb.fullmm)
        else:
            arch.clear_full_ptes(mm, addr, pte, nr, tlb.fullmm)
        rss[MM_ANONPAGES] += nr
    tlb.tlb_remove_tlb_entries(addr, nr)
    # v6.9 hands the batch on as one folio range; the contpte series' zap batching (v4 03/16)
    # cleared the batch at once but then removed the rmap and queued the page one page at a time.
    per_folio = nr == 1 or mm.kernel.cfg.zap_batch_folio
    for first, n in ((page, nr),) if per_folio else ((page + i, 1) for i in range(nr)):
        if delay_rmap:
            tlb.delayed_rmaps.append((folio, first, n))
        else:
            folio_remove_rmap_ptes(folio, first, n, vma)
        if __tlb_remove_folio_pages(tlb, folio, n, delay_rmap):
            force_flush = True
            force_break = True
    return force_flush, force_break


def folio_mark_dirty(folio: Folio) -> None:
    """The data of a shared folio must be written back: the dirty PTE bit moves to the folio."""
    folio.dirty = True


@kfunc
def unmap_vmas(tlb: MmuGather, vmas: list[Vma], start: int, end: int) -> None:
    for vma in vmas:
        s, e = max(start, vma.start), min(end, vma.end)
        if s < e:
            unmap_single_vma(tlb, vma, s, e)


@kfunc
def unmap_single_vma(tlb: MmuGather, vma: Vma, start: int, end: int) -> None:
    unmap_page_range(tlb, vma, start, end)
    tlb_end_vma(tlb)


@kfunc
def free_pgtables(tlb: MmuGather, mm: MmStruct, start: int, end: int, keep: list[Vma]) -> None:
    """Free PTE tables (and emptied upper tables) in [start, end) no longer covered by ``keep``.

    Each freed table goes through ``pte_free_tlb`` / ``pmd_free_tlb`` / ``pud_free_tlb``
    (include/asm-generic/tlb.h, v6.9), which record a one-page range at the table's base and set
    ``freed_tables``: the gather's final flush then also covers the walk caches."""
    from ptesim.kernel.pgtable import UpperTable

    g = mm.kernel.arch.geometry
    pmd_level = g.levels - 2  # the table whose entries are PTE tables

    def covered(lo: int, hi: int) -> bool:
        return any(v.start < hi and v.end > lo for v in keep)

    def walk(table: UpperTable) -> None:
        span = 1 << g.shifts[table.level]
        for idx in list(table.entries):
            child = table.entries[idx]
            lo = table.base + idx * span
            hi = lo + span
            if hi <= start or lo >= end:
                continue
            if isinstance(child, UpperTable):
                walk(child)
                if not child.entries and not covered(lo, hi):
                    del table.entries[idx]
                    emit("pgtable_free", mm=mm)
                    if child.level == pmd_level:
                        pmd_free_tlb(tlb, lo)
                    else:
                        pud_free_tlb(tlb, lo)
            elif isinstance(child, PteTable) and not covered(lo, hi):
                if any(child.entries):
                    raise AssertionError(f"freeing a PTE table of {mm!r} at {lo:#x} that still maps pages")
                del table.entries[idx]
                mm.nr_ptes -= 1
                emit("pgtable_free", mm=mm)
                pte_free_tlb(tlb, lo)

    walk(mm.pgd)
    mm.forget_tables()


# =============================================================================================
# faults
# =============================================================================================


@kfunc
def handle_mm_fault(vma: Vma, addr: int, write: bool) -> None:
    """__handle_mm_fault + handle_pte_fault for anonymous and shmem memory."""
    from ptesim.kernel.huge_memory import do_huge_pmd_anonymous_page, do_huge_pmd_wp_page

    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    emit("fault", mm=mm)
    entry = mm.pmd_entry(addr)
    if entry is None and vma.file is None and do_huge_pmd_anonymous_page(vma, addr):
        return
    if isinstance(entry, int):
        if write and not arch.pte_write(entry):
            do_huge_pmd_wp_page(vma, addr)
            if isinstance(mm.pmd_entry(addr), int):
                return
        else:
            return
    ptep = mm.pte_offset(addr)
    orig = 0
    if ptep is not None:
        orig = arch.ptep_get_lockless(ptep)
    if ptep is None or arch.pte_none(orig):
        if vma.file is not None:
            do_shmem_fault(vma, addr, write)
        else:
            do_anonymous_page(vma, addr, write)
        return
    # spin_lock(vmf->ptl); recheck
    if not arch.pte_same(arch.ptep_get(ptep), orig):
        arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)  # update_mmu_tlb
        return
    entry_pte = orig
    if write:
        if not arch.pte_write(entry_pte):
            do_wp_page(vma, addr, ptep, orig)
            return
        entry_pte = arch.pte_mkdirty(entry_pte)
    entry_pte = arch.pte_mkyoung(entry_pte)
    if arch.ptep_set_access_flags(vma, addr & ~(arch.page_size - 1), ptep, entry_pte, write):
        arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)
    elif write:
        arch.flush_tlb_fix_spurious_fault(vma, addr)


def thp_orders_allowed(vma: Vma) -> list[int]:
    """thp_vma_allowable_orders(): orders enabled by the mTHP settings for this VMA, highest first."""
    from ptesim.kernel.mm import VM_HUGEPAGE, VM_NOHUGEPAGE

    kernel = vma.mm.kernel
    if vma.flags & VM_NOHUGEPAGE:
        return []
    out = []
    for order in sorted(kernel.thp.orders, reverse=True):
        mode = kernel.thp.mode(order)
        if mode == "always" or (mode == "madvise" and vma.flags & VM_HUGEPAGE):
            out.append(order)
    return out


def thp_vma_suitable(vma: Vma, addr: int, order: int, page_size: int) -> bool:
    size = page_size << order
    haddr = addr & ~(size - 1)
    return haddr >= vma.start and haddr + size <= vma.end


@kfunc
def pte_range_none(arch: Arch, ptep: Ptep, nr: int) -> bool:
    return all(arch.pte_none(arch.ptep_get(ptep + i)) for i in range(nr))


@kfunc
def alloc_anon_folio(vma: Vma, addr: int) -> Folio:
    """Pick the largest enabled mTHP order whose aligned range lies in the VMA and is wholly
    unpopulated, falling back order by order to a single page."""
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    pmd_order = arch.geometry.pmd_order
    orders = [o for o in thp_orders_allowed(vma) if 0 < o < pmd_order]
    orders = [o for o in orders if thp_vma_suitable(vma, addr, o, arch.page_size)]
    ptep = mm.pte_offset(addr)
    assert ptep is not None
    for order in orders:
        nr = 1 << order
        start_idx = ptep.idx & ~(nr - 1)
        if pte_range_none(arch, Ptep(ptep.table, start_idx), nr):
            return kernel.pages.folio_alloc(order, mm=mm)
    return kernel.pages.folio_alloc(0, mm=mm)


@kfunc
def do_anonymous_page(vma: Vma, addr: int, write: bool) -> None:
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    ptep = mm.pte_alloc(addr)
    assert ptep is not None
    if not write:
        entry = arch.pte_mkspecial(arch.pfn_pte(0, vma.page_prot))
        if not arch.pte_none(arch.ptep_get(ptep)):
            arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)  # update_mmu_tlb
            return
        arch.set_pte_at(mm, addr & ~(arch.page_size - 1), ptep, entry)
        arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)
        return
    folio = alloc_anon_folio(vma, addr)
    nr = folio.nr_pages
    emit("page_zero", nr, mm=mm)
    haddr = addr & ~((arch.page_size << folio.order) - 1)
    start = mm.pte_offset(haddr)
    assert start is not None
    entry = arch.pfn_pte(folio.pfn, vma.page_prot)
    entry = arch.pte_mkyoung(entry)
    if vma.flags & VM_WRITE:
        entry = arch.pte_mkwrite(arch.pte_mkdirty(entry))
    if nr == 1:
        if not arch.pte_none(arch.ptep_get(start)):
            arch.update_mmu_cache_range(vma, haddr, start, 1)  # update_mmu_tlb
            kernel.pages.folio_put(folio, mm=mm)
            return
    elif not pte_range_none(arch, start, nr):
        for i in range(nr):  # update_mmu_tlb per entry
            arch.update_mmu_cache_range(vma, haddr + i * arch.page_size, start + i, 1)
        kernel.pages.folio_put(folio, mm=mm)
        return
    if nr > 1:
        folio_ref_add(folio, nr - 1, mm=mm)
    mm.rss[MM_ANONPAGES] += nr
    folio_add_new_anon_rmap(folio, vma, haddr)
    arch.set_ptes(mm, haddr, start, entry, nr)
    arch.update_mmu_cache_range(vma, haddr, start, nr)


@kfunc
def do_shmem_fault(vma: Vma, addr: int, write: bool) -> None:
    """shmem_fault + finish_fault: find or allocate the page-cache folio and map it."""
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    assert vma.file is not None
    idx = vma.linear_page_index(addr, arch.page_shift)
    folio = vma.file.pages.get(idx)
    if folio is None:
        folio = kernel.pages.folio_alloc(0, mm=mm)
        emit("page_zero", mm=mm)
        vma.file.pages[idx] = folio  # the page cache holds the allocation reference
    folio_get(folio, mm=mm)
    ptep = mm.pte_alloc(addr)
    assert ptep is not None
    if not arch.pte_none(arch.ptep_get(ptep)):
        arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)  # update_mmu_tlb
        kernel.pages.folio_put(folio, mm=mm)
        return
    entry = arch.pte_mkyoung(arch.pfn_pte(folio.pfn, vma.page_prot))
    if write:
        entry = arch.pte_mkdirty(entry)
    folio_add_file_rmap_ptes(folio, 0, 1, vma)
    mm.rss[MM_SHMEMPAGES] += 1
    arch.set_pte_at(mm, addr & ~(arch.page_size - 1), ptep, entry)
    arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)  # set_pte_range


def wp_can_reuse_anon_folio(folio: Folio, vma: Vma) -> bool:
    """v6.9: never reuse a large folio; a small one when we hold the only reference."""
    if folio.large:
        return (
            bool(vma.mm.kernel.cfg.wp_reuse_large)
            and folio.refcount == folio.total_mapcount() == sum(1 for m in folio.mapcount if m)
            and not folio.maybe_dma_pinned()
        )
    return folio.refcount == 1 and folio.pincount == 0


@kfunc
def do_wp_page(vma: Vma, addr: int, ptep: Ptep, orig: int) -> None:
    """Write fault on a present, write-protected PTE: reuse the page or copy it."""
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    arch.ptep_get(ptep)  # userfaultfd_pte_wp(vma, ptep_get(vmf->pte))
    hit = vm_normal_page(vma, addr, orig)
    if vma.flags & VM_SHARED:
        wp_page_reuse(vma, addr, ptep, orig)
        return
    if hit is not None:
        folio, page = hit
        if folio.anon and (folio.anon_exclusive[page] or wp_can_reuse_anon_folio(folio, vma)):
            if not folio.anon_exclusive[page]:
                emit("anon_exclusive", mm=mm)
                folio.anon_exclusive[page] = True
            wp_page_reuse(vma, addr, ptep, orig)
            return
        folio_get(folio, mm=mm)
    wp_page_copy(vma, addr, ptep, orig, hit)


@kfunc
def wp_page_reuse(vma: Vma, addr: int, ptep: Ptep, orig: int) -> None:
    arch = vma.mm.kernel.arch
    entry = arch.maybe_mkwrite(arch.pte_mkdirty(arch.pte_mkyoung(orig)), vma)
    if arch.ptep_set_access_flags(vma, addr & ~(arch.page_size - 1), ptep, entry, True):
        arch.update_mmu_cache_range(vma, addr & ~(arch.page_size - 1), ptep, 1)


@kfunc
def wp_page_copy(vma: Vma, addr: int, ptep: Ptep, orig: int, old: tuple[Folio, int] | None) -> None:
    """Copy the page for the writer and switch its PTE with a break-before-make flush."""
    mm = vma.mm
    kernel = mm.kernel
    arch = kernel.arch
    addr &= ~(arch.page_size - 1)
    new = kernel.pages.folio_alloc(0, mm=mm)
    if old is None:
        emit("page_zero", mm=mm)
    else:
        emit("page_copy", mm=mm)
        new.data[0] = old[0].data[old[1]]
    if not arch.pte_same(arch.ptep_get(ptep), orig):
        arch.update_mmu_cache_range(vma, addr, ptep, 1)  # update_mmu_tlb
        kernel.pages.folio_put(new, mm=mm)
        if old is not None:
            kernel.pages.folio_put(old[0], mm=mm)
        return
    entry = arch.pfn_pte(new.pfn, vma.page_prot)
    entry = arch.maybe_mkwrite(arch.pte_mkdirty(entry), vma)
    entry = arch.pte_mkyoung(entry)
    arch.ptep_clear_flush(vma, addr, ptep)
    folio_add_new_anon_rmap(new, vma, addr)
    if old is None:
        mm.rss[MM_ANONPAGES] += 1
    arch.set_pte_at(mm, addr, ptep, entry)
    arch.update_mmu_cache_range(vma, addr, ptep, 1)
    if old is not None:
        folio_remove_rmap_pte(old[0], old[1], vma)
        kernel.pages.folio_put(old[0], mm=mm)  # the reference do_wp_page took
        kernel.pages.folio_put(old[0], mm=mm)  # the mapping's reference


__all__ = [
    "copy_page_range",
    "copy_pte_range",
    "do_anonymous_page",
    "do_wp_page",
    "folio_pte_batch",
    "free_pgtables",
    "handle_mm_fault",
    "unmap_vmas",
    "vm_normal_page",
    "zap_pte_range",
]
