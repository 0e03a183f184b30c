"""Kernel paths the rest of the suite never executes (found by mutation testing: a mutant there
could not be killed because no test ran the line).  Each test drives the path through the
model's syscalls and asserts what the kernel guarantees, with every invariant checked."""

from __future__ import annotations

from typing import Any

import pytest

from ptesim.kernel.core import Kernel, SegmentationFault, Task

PAGE = 4096


def spy(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[tuple[Any, ...]]:
    """Record the calls of ``obj.name`` (still calling it), so that a test can show it reached
    the path it is about."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(obj, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_spurious_write_fault_on_a_stale_read_only_entry_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    """mm/memory.c handle_pte_fault(): a write fault on an entry that is already writable, dirty
    and young changes nothing, so ptep_set_access_flags() returns 0 and the kernel calls
    flush_tlb_fix_spurious_fault().  On arm64 without FEAT_HAFDBS a TLB may keep the read-only
    entry that faulted, and with the Nov-2025 local-TLBI patch (preset v6.19-local-tlbi) making
    an entry writable-dirty invalidates only the local CPU's TLB: another thread of the mm on
    another CPU then takes exactly this fault, and its write must complete (at most four
    faults: the ``fault_loop`` check) and every CPU must read the last value written.  (x86 and
    riscv drop a faulting entry, so the model never reaches this path there.)"""
    k = Kernel("arm64", "v6.19-local-tlbi", checks=True, cpu_features=frozenset({"no-hafdbs"}))
    k.set_folio_size(PAGE)
    t = k.spawn(0)
    a = t.mmap(PAGE)
    t.write(a, 1)
    t.fork(2).exit()  # fork write-protected the parent's entry; the page is ours alone again
    th = t.thread(1)
    assert t.read(a) == 1 and th.read(a) == 1  # both CPUs cache the read-only entry
    calls = spy(monkeypatch, k.arch, "flush_tlb_fix_spurious_fault")
    t.write(a, 2)  # CPU 0: do_wp_page reuses the page and makes the entry writable
    th.write(a, 3)  # CPU 1: its stale read-only entry faults on an entry that is already writable
    assert [c[1] for c in calls] == [a]
    assert t.read(a) == 3 and th.read(a) == 3


def test_pmd_aligned_mremap_moves_a_pmd_mapped_thp_whole() -> None:
    """mm/mremap.c move_page_tables(): with both ends PMD-aligned, a PMD-mapped THP moves whole
    (move_huge_pmd: get-and-clear the old PMD leaf, set it at the new address, flush the old
    PMD range): the same pages, still PMD-mapped, at the new address, and nothing at the old
    one, not even in the TLB of the CPU that used it."""
    MiB = 1 << 20
    k = Kernel("x86", "v6.9", checks=True)
    k.set_folio_size(2 * MiB)
    t = k.spawn(0)
    a = t.mmap(4 * MiB)
    offsets = range(0, 4 * MiB, 64 * 1024)
    for off in offsets:
        t.write(a + off, off)
    thps = (0, 2 * MiB)
    assert all(isinstance(t.mm.pmd_entry(a + off), int) for off in thps)  # PMD-mapped
    pfns = [t.translate(a + off) for off in thps]
    new = a + 8 * MiB
    assert t.mremap(a, 4 * MiB, new) == new
    assert all(isinstance(t.mm.pmd_entry(new + off), int) for off in thps)
    assert [t.translate(new + off) for off in thps] == pfns  # moved, not copied
    for off in offsets:
        assert t.read(new + off) == off
    with pytest.raises(SegmentationFault):
        t.read(a)


@pytest.mark.parametrize("arch", ["x86", "arm64", "riscv"])
def test_the_mmu_faults_on_a_prot_none_entry(arch: str) -> None:
    """mprotect(PROT_NONE) keeps the pages (pte_present() is still true for the kernel: PAGE_NONE
    on x86 is _PAGE_PROTNONE without _PAGE_PRESENT, on arm64 PTE_PRESENT_INVALID with PTE_VALID
    clear, on riscv _PAGE_PROT_NONE without _PAGE_PRESENT) but the hardware walker must fault on
    every access to them."""
    from ptesim.hw.mmu import walk

    k = Kernel(arch, "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(16 * PAGE)
    t.write(a, 5)
    t.mprotect(a, 16 * PAGE, "")
    pte, _, _ = walk(k, t.mm, a)
    assert pte is not None and k.arch.pte_present(pte)  # still mapped for the kernel
    assert k.arch.hw_access(pte, False) is None
    assert k.arch.hw_access(pte, True) is None
    t.mprotect(a, 16 * PAGE, "r")
    assert t.read(a) == 5  # the same page again


def test_madvise_hugepage_decides_thp_in_madvise_mode() -> None:
    """THP ``enabled=madvise`` (mm/huge_memory.c thp_vma_allowable_orders()): only a VMA with
    VM_HUGEPAGE (madvise(MADV_HUGEPAGE), mm/khugepaged.c hugepage_madvise()) gets a PMD-mapped
    THP on its first fault; MADV_NOHUGEPAGE takes it away again."""
    MiB = 1 << 20
    k = Kernel("x86", "v6.9", checks=True)
    k.set_folio_size(2 * MiB, mode="madvise")
    t = k.spawn(0)
    plain = t.mmap(4 * MiB)
    advised = t.mmap(4 * MiB)
    revoked = t.mmap(4 * MiB)
    t.madvise(advised, 4 * MiB, "hugepage")
    t.madvise(revoked, 4 * MiB, "hugepage")
    t.madvise(revoked, 4 * MiB, "nohugepage")
    for a in (plain, advised, revoked):
        t.write(a, 1)
    assert isinstance(t.mm.pmd_entry(advised), int)  # a PMD leaf
    assert not isinstance(t.mm.pmd_entry(plain), int)
    assert not isinstance(t.mm.pmd_entry(revoked), int)


@pytest.mark.parametrize("preset", ["v6.9", "v6.17"])
@pytest.mark.parametrize("arch", ["x86", "arm64"])
def test_mremap_moves_zero_page_mappings(arch: str, preset: str) -> None:
    """Read faults on anonymous memory map the shared zero page (do_anonymous_page()); mm/mremap.c
    move_ptes() moves those entries like any other -- v6.17's batching asks vm_normal_page()
    for the folio, which has none for the zero page, and then moves one entry at a time -- and
    the new range still reads zeros from the same zero page, the old one nothing."""
    k = Kernel(arch, preset, checks=True)
    k.set_folio_size(64 * 1024)
    t = k.spawn(0)
    a = t.mmap(16 * PAGE)
    for off in range(0, 16 * PAGE, PAGE):
        assert t.read(a + off) == 0
    zero = t.translate(a)
    new = t.mremap(a, 16 * PAGE, a + (4 << 20))
    assert all(t.translate(new + off) == zero for off in range(0, 16 * PAGE, PAGE))
    assert t.read(new + 5 * PAGE) == 0
    with pytest.raises(SegmentationFault):
        t.read(a)


# ---- each check fires on the state it exists to catch ------------------------------------------
# (the model never reaches these states by itself: a test puts it there by hand)


def _two_pages(arch: str = "x86") -> tuple[Kernel, Any, int, Any]:
    from ptesim.kernel.check import Oracle

    k = Kernel(arch, "v6.9")
    t = k.spawn(0)
    a = t.mmap(4 * PAGE)
    oracle = Oracle()
    for i in range(4):
        t.write(a + i * PAGE, 10 + i)
        oracle.write(t, a + i * PAGE, 10 + i)
    return k, t, a, oracle


def test_views_check_reads_through_the_tlb() -> None:
    """validate_views(): what a task would read goes through its CPU's TLB first -- an entry left
    pointing at another page is an isolation violation, and one pointing at a freed page a
    tlb_coherence one, even though the page tables are right."""
    from ptesim.errors import InvariantViolation
    from ptesim.kernel.check import validate_views

    k, t, a, oracle = _two_pages()
    validate_views(oracle, [t])
    tlb = k.hw.cpus[t.cpu].tlb
    vpn = a // PAGE
    tlb.insert(t.mm.asid, vpn, 1, t.translate(a + PAGE), True)  # page 0 -> page 1's frame
    with pytest.raises(InvariantViolation) as e:
        validate_views(oracle, [t])
    assert e.value.check == "isolation"
    free_pfn = max(k.pages.by_pfn) + 1000
    assert k.pages.pfn_to_folio(free_pfn) is None
    tlb.insert(t.mm.asid, vpn, 1, free_pfn, True)
    with pytest.raises(InvariantViolation) as e:
        validate_views(oracle, [t])
    assert e.value.check == "tlb_coherence"


def test_freeing_check_looks_at_live_address_spaces() -> None:
    """validate_freeing(): a folio must not be freed while a CPU still caches it for a live mm
    (tlb_flush_mmu flushes before it frees); a dead mm's entries do not count."""
    from ptesim.errors import InvariantViolation
    from ptesim.kernel.check import validate_freeing

    k, t, a, _ = _two_pages()
    folio = k.pages.pfn_to_folio(t.translate(a))
    assert folio is not None
    with pytest.raises(InvariantViolation) as e:
        validate_freeing(k, folio)  # the writing CPU's TLB still holds it
    assert e.value.check == "free_with_tlb"
    t.mm.dead = True
    validate_freeing(k, folio)


def test_anon_dirty_check_wants_written_private_pages_dirty() -> None:
    """validate_anon_dirty(): a written private anonymous page whose PTE lost its dirty bit (and
    that MADV_FREE did not clean) is lost data at reclaim."""
    from ptesim.errors import InvariantViolation
    from ptesim.hw.mmu import _store_leaf, walk
    from ptesim.kernel.check import validate_anon_dirty

    k, t, a, oracle = _two_pages()
    validate_anon_dirty(oracle, [t])
    pte, _, _ = walk(k, t.mm, a)
    assert pte is not None
    _store_leaf(k, t.mm, a, k.arch.pte_mkclean(pte))
    with pytest.raises(InvariantViolation) as e:
        validate_anon_dirty(oracle, [t])
    assert e.value.check == "anon_dirty"


def test_shared_dirty_check_wants_written_shmem_dirty_somewhere() -> None:
    """validate_shared_dirty(): a written shmem page must be dirty in its folio or in a PTE that
    maps it, or writeback would lose it."""
    from ptesim.errors import InvariantViolation
    from ptesim.hw.mmu import _store_leaf, walk
    from ptesim.kernel.check import Oracle, validate_shared_dirty

    k = Kernel("x86", "v6.9")
    t = k.spawn(0)
    a = t.mmap(PAGE, shared=True)
    t.write(a, 7)
    oracle = Oracle()
    oracle.write(t, a, 7)
    validate_shared_dirty(k, oracle)
    pte, pfn, _ = walk(k, t.mm, a)
    assert pte is not None
    _store_leaf(k, t.mm, a, k.arch.pte_mkclean(pte))
    folio = k.pages.pfn_to_folio(pfn)
    assert folio is not None
    folio.dirty = False
    with pytest.raises(InvariantViolation) as e:
        validate_shared_dirty(k, oracle)
    assert e.value.check == "shared_dirty"


def test_folio_check_counts_pmd_mappings() -> None:
    """validate_folios(): a PMD-mapped THP's _entire_mapcount is the number of PMDs mapping it."""
    from ptesim.errors import InvariantViolation
    from ptesim.kernel.check import validate_folios

    MiB = 1 << 20
    k = Kernel("x86", "v6.9")
    k.set_folio_size(2 * MiB)
    t = k.spawn(0)
    a = t.mmap(4 * MiB)
    t.write(a, 1)
    validate_folios(k)
    folio = k.pages.pfn_to_folio(t.translate(a))
    assert folio is not None and folio.entire_mapcount == 1
    folio.entire_mapcount = 2
    with pytest.raises(InvariantViolation) as e:
        validate_folios(k)
    assert e.value.check == "mapcount"


def test_a_missed_invalidation_is_caught_where_the_gather_flushes() -> None:
    """The mmu_gather's flush is a flush point (tlb_flush_mmu_tlbonly): right after it, no CPU may
    still translate the range through an entry whose PTE is gone.  With a broadcast TLBI that
    misses the last CPU (the hand-written bug ``tlbi-bcast-misses-cpu``) the check names that
    point, before the freed page could even be reused."""
    from ptesim.errors import InvariantViolation
    from ptesim.mutants import mutant

    with mutant("tlbi-bcast-misses-cpu").applied():
        k = Kernel("arm64", "v6.9", checks=True)
        t = k.spawn(0)
        a = t.mmap(16 * PAGE)
        t.populate(a, 16 * PAGE)
        t.thread(k.hw.ncpus - 1).read(a)
        with pytest.raises(InvariantViolation) as e:
            t.munmap(a, PAGE)
    assert e.value.check == "tlb_coherence"
    assert e.value.detail.startswith("after mmu_gather: ")


def test_arm64_exec_mapping_differs_only_in_user_execute_never() -> None:
    """arm64 protection_map (asm/pgtable-prot.h): PAGE_READONLY_EXEC is PAGE_READONLY without
    PTE_UXN -- user code may run from it, the kernel still may not (PTE_PXN)."""
    from ptesim.arch.arm64.pgtable import PTE_PXN, PTE_UXN
    from ptesim.hw.mmu import walk

    k = Kernel("arm64", "v6.9", checks=True)
    t = k.spawn(0)
    r = t.mmap(PAGE, "r")
    rx = t.mmap(PAGE, "rx")
    assert t.read(r) == 0 and t.read(rx) == 0  # both map the zero page
    pte_r, _, _ = walk(k, t.mm, r)
    pte_rx, _, _ = walk(k, t.mm, rx)
    assert pte_r is not None and pte_rx is not None
    assert pte_r ^ pte_rx == PTE_UXN and pte_r & PTE_UXN
    assert pte_rx & PTE_PXN
    with pytest.raises(SegmentationFault):
        t.write(rx, 1)


@pytest.mark.parametrize("arch", ["x86", "arm64", "riscv"])
def test_zap_dirties_only_the_written_shmem_pages(arch: str) -> None:
    """mm/memory.c zap_present_folio_ptes(): a shmem folio is marked dirty (folio_mark_dirty) from
    a dirty PTE only.  Sixteen shared pages read and one written: after MADV_DONTNEED the page
    cache holds exactly one dirty page (on arm64, pte_dirty() is the software PTE_DIRTY or a
    hardware-dirtied writable entry; a read-only clean entry is neither)."""
    k = Kernel(arch, "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(16 * PAGE, shared=True)
    for i in range(16):
        t.read(a + i * PAGE)
    t.write(a + 5 * PAGE, 5)
    vma = t.mm.find_vma(a)
    assert vma is not None and vma.file is not None
    t.madvise(a, 16 * PAGE, "dontneed")
    assert sorted(i for i, f in vma.file.pages.items() if f.dirty) == [5]


def test_x86_mprotect_keeps_the_soft_dirty_bit() -> None:
    """arch/x86 pte_modify(): _PAGE_CHG_MASK keeps the PFN and the software-tracked bits, among
    them _PAGE_SOFT_DIRTY (what /proc/PID/pagemap reports as written since the last clear_refs),
    so mprotect() does not forget that a page was written."""
    from ptesim.hw.mmu import walk

    k = Kernel("x86", "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(4 * PAGE)
    t.write(a, 1)
    soft_dirty = k.arch.SOFT_DIRTY
    for prot in ("r", "rw"):
        t.mprotect(a, 4 * PAGE, prot)
        pte, _, _ = walk(k, t.mm, a)
        assert pte is not None and pte & soft_dirty, prot


@pytest.mark.parametrize("arch", ["x86", "arm64", "riscv"])
def test_an_rwx_mapping_is_readable_and_writable(arch: str) -> None:
    """calc_vm_prot_bits() (include/linux/mman.h): PROT_EXEC adds VM_EXEC to PROT_READ's and
    PROT_WRITE's bits, it does not replace them -- an ``rwx`` mapping, made so by mmap or by
    mprotect, takes a store and returns it."""
    k = Kernel(arch, "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(2 * PAGE, "rwx")
    t.write(a, 5)
    assert t.read(a) == 5
    t.mprotect(a, 2 * PAGE, "r")
    t.mprotect(a, 2 * PAGE, "rwx")
    t.write(a + PAGE, 6)
    assert t.read(a + PAGE) == 6


def _a_folio_with_one_reused_page(arch: str, preset: str, page: int) -> tuple[Kernel, Task, int]:
    """A 16-page folio written, forked and the child gone; then ``page`` written again, which
    do_wp_page() reuses (the folio is mapped only here again): that entry alone is writable."""
    k = Kernel(arch, preset, checks=True)
    k.set_folio_size(16 * PAGE)
    t = k.spawn(0)
    a = t.mmap(16 * PAGE)
    for i in range(16):
        t.write(a + i * PAGE, i)
    t.fork(1).exit()
    t.write(a + page * PAGE, 100)
    return k, t, a


def test_batched_mprotect_makes_writable_exactly_the_exclusive_pages() -> None:
    """v6.17 change_pte_range() batches the PTEs of a large folio and commits them per run of
    pages with the same PageAnonExclusive (commit_anon_folio_batch, cac1db8c3aad): after fork
    and the child's exit only the page the parent wrote again is exclusive (do_wp_page reused
    it), so mprotect(PROT_READ|PROT_WRITE) makes that page's PTE, and only that one, writable
    -- whichever page of the folio it is."""
    from ptesim.hw.mmu import walk

    for page in (3, 9):
        k, t, a = _a_folio_with_one_reused_page("x86", "v6.17", page)
        t.mprotect(a, 16 * PAGE, "r")
        t.mprotect(a, 16 * PAGE, "rw")
        writable = []
        for i in range(16):
            pte, _, _ = walk(k, t.mm, a + i * PAGE)
            assert pte is not None
            writable.append(k.arch.pte_write(pte))
        assert writable == [i == page for i in range(16)]


def test_tlb_check_catches_an_entry_for_another_live_page() -> None:
    """validate_tlb(): a CPU's TLB entry that translates to a live page other than the one the
    PTE maps is a coherence violation, named with both frames."""
    from ptesim.errors import InvariantViolation
    from ptesim.kernel.check import validate_tlb

    k, t, a, _ = _two_pages()
    validate_tlb(k)
    other = t.translate(a + PAGE)
    k.hw.cpus[t.cpu].tlb.insert(t.mm.asid, a // PAGE, 1, other, False)
    with pytest.raises(InvariantViolation) as e:
        validate_tlb(k)
    assert e.value.check == "tlb_coherence"
    assert f"PTE says {t.translate(a):#x}" in e.value.detail


def test_fork_child_check_wants_the_childs_entries_old() -> None:
    """validate_fork_child(): copy_present_ptes() makes every entry it copies to the child old
    (pte_mkold), so reclaim ages the child's pages afresh; a young one is named."""

    k, t, a, _ = _two_pages()
    assert "young" in _young_child_leaf_is_named(k, t, a)


def _young_child_leaf_is_named(k: Kernel, t: Task, a: int) -> str:
    """Fork ``t``; the child's leaf at ``a`` (a PTE or a PMD) is old and validate_fork_child()
    passes; made young by hand, the check fails: its detail."""
    from ptesim.errors import InvariantViolation
    from ptesim.hw.mmu import _store_leaf, walk
    from ptesim.kernel.check import validate_fork_child

    child = t.fork(1)
    validate_fork_child(k, t.mm, child.mm)
    leaf, _, _ = walk(k, child.mm, a)
    assert leaf is not None and not k.arch.pte_young(leaf)
    _store_leaf(k, child.mm, a, k.arch.pte_mkyoung(leaf))
    with pytest.raises(InvariantViolation) as e:
        validate_fork_child(k, t.mm, child.mm)
    assert e.value.check == "fork_child_bits"
    return e.value.detail


def test_a_write_fault_maps_a_shmem_page_dirty() -> None:
    """do_shmem_fault + finish_fault: set_pte_range() makes a write fault's entry dirty
    (pte_mkdirty), so on arm64 without FEAT_HAFDBS -- where nothing else would set it -- the
    first store to a shmem page takes one fault, and only a store after a read takes a second."""
    k = Kernel("arm64", "v6.9", checks=True, cpu_features=frozenset({"no-hafdbs"}))
    t = k.spawn(0)
    a = t.mmap(2 * PAGE, shared=True)
    k.sink.reset()
    t.write(a, 5)
    assert k.sink.totals()["fault"] == 1
    k.sink.reset()
    t.read(a + PAGE)
    t.write(a + PAGE, 6)
    assert k.sink.totals()["fault"] == 2
    assert t.read(a) == 5 and t.read(a + PAGE) == 6


@pytest.mark.parametrize("arch", ["x86", "arm64", "riscv"])
def test_fork_charges_the_thp_deposit_to_the_child(arch: str) -> None:
    """copy_huge_pmd(): the page table deposited for each PMD-mapped THP is allocated for the
    child's mm (pte_alloc_one(dst_mm)), like the child's PUD and PMD tables, so fork's parent
    phase allocates no page table at all."""
    MiB = 1 << 20
    k = Kernel(arch, "v6.9", checks=True)
    k.set_folio_size(2 * MiB)
    t = k.spawn(0)
    a = t.mmap(4 * MiB)
    t.write(a, 1)
    t.write(a + 2 * MiB, 2)
    k.sink.reset()
    t.fork(1)
    ph = k.sink.by_phase()
    assert ph["fork_child"]["pgtable_alloc"] == 2 + 2  # PUD and PMD tables, two deposits
    assert ph.get("fork_parent", {}).get("pgtable_alloc", 0) == 0


def test_views_check_reads_a_pmd_mapped_thp_through_the_page_tables() -> None:
    """validate_views(): with nothing in the TLB, what a task reads from a PMD-mapped THP is the
    page at the address's offset within the PMD -- the check passes on a correct model, whatever
    page of the THP each value was written to."""
    from ptesim.kernel.check import Oracle, validate_views

    MiB = 1 << 20
    k = Kernel("x86", "v6.9")
    k.set_folio_size(2 * MiB)
    t = k.spawn(0)
    a = t.mmap(2 * MiB)
    oracle = Oracle()
    for i, v in ((0, 1), (1, 2), (3, 4), (511, 5)):
        t.write(a + i * PAGE, v)
        oracle.write(t, a + i * PAGE, v)
    assert isinstance(t.mm.pmd_entry(a), int)  # one PMD leaf
    k.hw.cpus[t.cpu].tlb.invalidate_all()
    validate_views(oracle, [t])


@pytest.mark.parametrize("arch", ["x86", "arm64"])
def test_fork_batches_a_folio_whose_entries_differ_only_in_the_write_bit(arch: str) -> None:
    """folio_pte_batch() for fork (copy_present_ptes) compares entries write-protected
    (__pte_batch_clear_ignored: pte_wrprotect(pte_mkold(pte)); FPB_RESPECT_WRITE is mprotect's
    alone), so a folio whose one reused page is writable again is still copied as one batch:
    one folio reference for all sixteen pages."""
    k, t, a = _a_folio_with_one_reused_page(arch, "v6.15", 3)
    k.sink.reset()
    child = t.fork(1)
    child_phase = k.sink.by_phase()["fork_child"]
    assert child_phase["folio_ref"] == 1 and child_phase["mapcount"] == 16
    assert child.read(a + 3 * PAGE) == 100


def test_fork_child_check_looks_at_pmd_mapped_thps() -> None:
    """validate_fork_child(): copy_huge_pmd() makes the child's PMD leaf old (pmd_mkold) too; a
    young one, wherever the THP sits in its PMD table, is named."""

    MiB = 1 << 20
    k = Kernel("x86", "v6.9")
    k.set_folio_size(2 * MiB)
    t = k.spawn(0)
    t.mmap(2 * MiB)  # the THP below is not the first entry of its PMD table
    a = t.mmap(2 * MiB)
    t.write(a, 1)
    assert a & ((1 << 30) - 1) and isinstance(t.mm.pmd_entry(a), int)
    assert f"{a:#x}" in _young_child_leaf_is_named(k, t, a)


@pytest.mark.parametrize("arch", ["x86", "arm64", "riscv"])
def test_mprotect_makes_an_exclusive_page_writable_at_once(arch: str) -> None:
    """change_pte_range() with MM_CP_TRY_CHANGE_WRITABLE: making a private mapping writable again
    maps an exclusive anonymous page writable at once (can_change_pte_writable; soft-dirty
    tracking is off), so the next store takes no fault."""
    from ptesim.hw.mmu import walk

    k = Kernel(arch, "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(2 * PAGE)
    t.write(a, 1)
    t.mprotect(a, 2 * PAGE, "r")
    t.mprotect(a, 2 * PAGE, "rw")
    pte, _, _ = walk(k, t.mm, a)
    assert pte is not None and k.arch.pte_write(pte)
    k.sink.reset()
    t.write(a, 2)
    assert k.sink.totals()["fault"] == 0 and t.read(a) == 2


def test_dontneed_clears_every_zero_page_entry() -> None:
    """zap_present_ptes(): a zero-page entry (vm_normal_page() is NULL) is cleared alone and the
    walk goes on at the very next entry, so MADV_DONTNEED of read-only-faulted pages leaves
    every entry of the range empty."""
    from ptesim.hw.mmu import walk

    k = Kernel("x86", "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(4 * PAGE)
    for i in range(3):
        assert t.read(a + i * PAGE) == 0
    t.madvise(a, 4 * PAGE, "dontneed")
    assert [walk(k, t.mm, a + i * PAGE)[0] for i in range(4)] == [None] * 4


def test_unmapping_an_order0_page_is_one_mapcount_atomic() -> None:
    """folio_remove_rmap_ptes() on an order-0 folio: one atomic on the page's _mapcount; the
    _nr_pages_mapped step exists only for large folios."""
    k = Kernel("x86", "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(4 * PAGE)
    t.write(a, 1)
    k.sink.reset()
    t.munmap(a, 4 * PAGE)
    assert k.sink.totals()["mapcount"] == 1


def test_a_munmap_beyond_the_gathers_batches_flushes_midway_and_goes_on() -> None:
    """tlb_flush_mmu(): when the gather's batches fill (MAX_GATHER_BATCH_COUNT batches of
    MAX_GATHER_BATCH pages), zap flushes the TLB, frees the gathered pages, empties the batches
    (tlb_batch_pages_flush) and goes on gathering: a 48M munmap of 4K pages frees every page."""
    k = Kernel("x86", "v6.9")
    t = k.spawn(0)
    before = len(k.pages.by_pfn)
    a = t.mmap(48 << 20)
    t.populate(a, 48 << 20)
    assert len(k.pages.by_pfn) == before + (48 << 20) // PAGE
    t.munmap(a, 48 << 20)
    assert len(k.pages.by_pfn) == before
