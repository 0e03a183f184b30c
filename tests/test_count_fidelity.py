"""Counts held to the v6.9 source, one test per kernel function the model once got wrong.

Each test names the kernel function whose behaviour it pins and asserts the count that function
produces, from running the model.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ptesim.arch.arm64.tlbflush import MAX_TLBI_RANGE_PAGES, tlbi_range_num
from ptesim.events import with_aggregates
from ptesim.kernel.core import Kernel, Task
from ptesim.kernel.mmap import MMAP_BASE
from ptesim.kernel.mmu_gather import (
    MMU_GATHER_BUNDLE,
    __tlb_remove_folio_pages,
    max_gather_batch,
    max_gather_batch_count,
    tlb_gather_mmu,
)
from ptesim.workloads.scenarios import SCENARIOS, ModelSpec, run_scenario

KiB = 1024
MiB = 1 << 20


def totals(k: Kernel) -> Counter[str]:
    return Counter(with_aggregates(k.sink.totals()))


def with_neighbour(
    arch: str, length: int, folio: int, preset: str = "v6.9", **kw: object
) -> tuple[Kernel, Task, int]:
    """A populated mapping of ``length`` at the top of the mmap area, plus a populated 64K
    neighbour 16M below it, so that munmap frees the mapping's PTE tables but keeps the PMD table
    (both lie in one 1G PUD range)."""
    k = Kernel(arch, preset, checks=True, **kw)  # type: ignore[arg-type]
    k.set_folio_size(folio)
    t = k.spawn(0)
    a = t.mmap(length)
    b = t.mmap(64 * KiB, addr=(MMAP_BASE - 16 * MiB))
    t.populate(a, length)
    t.populate(b, 64 * KiB)
    k.sink.reset()
    return k, t, a


# ---- 1. free_pte_range -> pte_free_tlb -> tlb_flush_pmd_range ----------------------------------


def test_arm64_munmap_flushes_freed_pte_table() -> None:
    """pte_free_tlb() (include/asm-generic/tlb.h) records [table base, +PAGE_SIZE) as a PMD-level
    range and sets freed_tables; tlb_finish_mmu's arm64 tlb_flush then issues one non-last-level
    TLBI VAE1IS at the PMD-aligned base (stride PMD_SIZE from tlb_get_unmap_shift).  Before: the
    freed table was flushed over an empty range (256 TLBIs in all), now 256 + 1."""
    k, t, a = with_neighbour("arm64", MiB, 64 * KiB)
    t.munmap(a, MiB)
    c = totals(k)
    assert c["pgtable_free"] == 1  # the PTE table only; the neighbour keeps the PMD table
    assert c["tlbi_page_bcast"] == 256 + 1  # tlb_end_vma: 256 VALE1IS; tlb_finish_mmu: 1 VAE1IS
    assert c["tlbi_asid"] == 0
    assert c["dsb_ishst"] == 2 and c["dsb_ish"] == 2


def test_x86_munmap_flushes_freed_pte_table() -> None:
    """x86 tlb_flush(): the freed PTE table's one-page range with stride PMD_SHIFT is one INVLPG
    (flush_tlb_mm_range).  Before: none; now 16 (the 64K at tlb_end_vma) + 1."""
    k, t, a = with_neighbour("x86", 64 * KiB, 64 * KiB)
    t.munmap(a, 64 * KiB)
    c = totals(k)
    assert c["pgtable_free"] == 1
    assert c["tlbi_page_local"] == 16 + 1
    assert c["tlbi_asid"] == 0


def test_arm64_freed_tables_far_apart_become_flush_tlb_mm() -> None:
    """When the mapping was the mm's only one, free_pgtables also frees the PMD and PUD tables;
    pmd_free_tlb / pud_free_tlb widen the range down to the PUD/P4D-aligned base, the span reaches
    MAX_DVM_OPS strides and __flush_tlb_range_nosync falls back to flush_tlb_mm."""
    res = run_scenario(ModelSpec(arch="arm64", folio=64 * KiB, mem=MiB, checks=True), "munmap")
    c = Counter(with_aggregates(res.sink.totals()))
    assert c["pgtable_free"] == 3
    assert c["tlbi_page_bcast"] == 256 and c["tlbi_asid_bcast"] == 1


# ---- 2. tlb_get_unmap_shift, x86 flush_tlb_mm_range stride --------------------------------------


def test_x86_munmap_pmd_thp_one_invlpg_per_pmd() -> None:
    """tlb_get_unmap_shift() returns PMD_SHIFT when only PMDs were cleared, and x86
    flush_tlb_func() steps 1 << stride_shift: 4M of PMD-mapped THP is 2 INVLPGs (was 1024)."""
    k, t, a = with_neighbour("x86", 4 * MiB, 2 * MiB)
    t.munmap(a, 4 * MiB)
    c = totals(k)
    assert c["tlbi_page_local"] == 2
    assert c["tlbi_asid"] == 0


def test_arm64_munmap_pmd_thp_plus_tail() -> None:
    """2112K = one PMD THP + a 64K PTE tail: cleared_ptes makes tlb_get_unmap_shift() PAGE_SHIFT,
    so tlb_end_vma's __flush_tlb_range covers 528 pages at 4K stride (>= MAX_DVM_OPS: one
    flush_tlb_mm), then one VAE1IS for the freed tail PTE table.  Before, the stride stuck at
    PMD_SIZE and the tail's TLB entries survived the munmap (the model's tlb_coherence check)."""
    k, t, a = with_neighbour("arm64", 2112 * KiB, 2 * MiB)
    t.munmap(a, 2112 * KiB)
    c = totals(k)
    assert c["tlbi_asid_bcast"] == 1
    assert c["tlbi_page_bcast"] == 1


@pytest.mark.parametrize("arch", ["x86", "arm64", "riscv"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_scenario_checks_clean_on_pmd_thp_plus_tail(arch: str, scenario: str) -> None:
    """Every scenario, every invariant (--check), on 2112K: a PMD-mapped 2M THP (as the fault path
    maps it) plus a PTE-mapped tail."""
    res = run_scenario(ModelSpec(arch=arch, folio=2 * MiB, mem=2112 * KiB, checks=True), scenario)
    assert res.sink.totals()  # the scenario ran and counted something


# ---- 8. MAX_GATHER_BATCH / MAX_GATHER_BATCH_COUNT from PAGE_SIZE, per-batch full check ---------


@pytest.mark.parametrize(
    "granule,slots,count",
    [(4 * KiB, 510, 19), (16 * KiB, 2046, 4), (64 * KiB, 8190, 1)],
)
def test_gather_batch_geometry(granule: int, slots: int, count: int) -> None:
    """MAX_GATHER_BATCH = (PAGE_SIZE - sizeof(struct mmu_gather_batch)) / sizeof(void *) and
    MAX_GATHER_BATCH_COUNT = 10000 / MAX_GATHER_BATCH (include/asm-generic/tlb.h)."""
    assert max_gather_batch(granule) == slots
    assert max_gather_batch_count(granule) == count


@pytest.mark.parametrize(
    "granule,single_pages",
    # local batch keeps 7 (MMU_GATHER_BUNDLE - 1); each batch page keeps MAX_GATHER_BATCH - 1
    [(4 * KiB, 7 + 19 * 509), (16 * KiB, 7 + 4 * 2045), (64 * KiB, 7 + 1 * 8189)],
)
def test_gather_batch_full_is_per_batch_page(granule: int, single_pages: int) -> None:
    """__tlb_remove_folio_pages_size (mm/mmu_gather.c): after each add, a batch with
    nr >= max - 1 moves on (tlb_next_batch); the caller must flush only when no batch page is left.
    Small folios: the single_pages-th add reports full (was 9697 for every granule)."""
    k = Kernel("arm64", "v6.9", granule=granule)
    t = k.spawn(0)
    with k.operation(t, "setup"):
        folio = k.pages.folio_alloc(0, mm=t.mm)
    tlb = tlb_gather_mmu(t.mm)
    tlb.tlb_flush_pte_range(0, granule)
    with k.operation(t, "munmap"):  # each queued entry is counted (tlb_page)
        full_at = next(i for i in range(1, 20000) if __tlb_remove_folio_pages(tlb, folio, 1))
    assert full_at == single_pages
    assert k.sink.totals()["tlb_page"] == single_pages
    assert len(tlb.batches) == 1 + max_gather_batch_count(granule)
    assert tlb.batches[0].max == MMU_GATHER_BUNDLE


def test_gather_large_folio_entries_take_two_slots() -> None:
    """A large-folio entry is an encoded page + nr_pages (two slots): three adds fill 6 of the
    local batch's 8 slots; the fourth makes nr = 8 >= max - 1 and tlb_next_batch() moves on."""
    k = Kernel("x86", "v6.9")
    t = k.spawn(0)
    with k.operation(t, "setup"):
        folio = k.pages.folio_alloc(4, mm=t.mm)
    tlb = tlb_gather_mmu(t.mm)
    tlb.tlb_flush_pte_range(0, 4096)
    with k.operation(t, "munmap"):
        for _ in range(3):
            assert not __tlb_remove_folio_pages(tlb, folio, 16)
        assert tlb.active == 0 and tlb.batches[0].nr == 6
        assert not __tlb_remove_folio_pages(tlb, folio, 16)
    assert tlb.active == 1 and tlb.batches[0].nr == 8


# ---- 5. zap_present_folio_ptes: delay_rmap + force_flush for dirty shared folios ----------------


def test_dirty_shmem_zap_flushes_per_pte_table() -> None:
    """zap_present_folio_ptes (mm/memory.c): a dirty PTE of a shmem folio marks it dirty and, as
    tlb_delay_rmap() is true on SMP, delays its rmap and forces a TLB flush at the end of that
    zap_pte_range: MADV_DONTNEED of 4M of written shared memory flushes twice (one per PTE
    table; x86: 512 pages > ceiling, so full flushes), where the model used to flush once."""
    k = Kernel("x86", "v6.9", checks=True)
    k.set_folio_size(4 * KiB)
    t = k.spawn(0)
    a = t.mmap(4 * MiB, shared=True)
    with k.checks_deferred():
        t.populate(a, 4 * MiB)
    k.sink.reset()
    t.madvise(a, 4 * MiB, "dontneed")
    c = totals(k)
    assert c["tlbi_asid_local"] == 2
    assert c["mapcount"] == 1024  # the delayed rmaps are still removed, after the flush


def test_delayed_rmaps_may_fill_batch_pages_past_the_local_batch() -> None:
    """mm/mmu_gather.c tlb_next_batch(): with delayed rmaps pending, the gather refuses a new batch
    page only when the active batch is not the on-stack local one.  Zapping 64 dirty shmem pages
    overflows the 8-slot local batch into a batch page and flushes once, forced at the end of the
    PTE table (64 pages > tlb_single_page_flush_ceiling: one full flush), not every time the local
    batch fills."""
    k = Kernel("x86", "v6.9", checks=True)
    k.set_folio_size(4 * KiB)
    t = k.spawn(0)
    a = t.mmap(64 * 4 * KiB, shared=True)
    t.populate(a, 64 * 4 * KiB)
    k.sink.reset()
    t.madvise(a, 64 * 4 * KiB, "dontneed")
    c = totals(k)
    assert (c["tlbi_asid_local"], c["tlbi_page_local"]) == (1, 0)
    assert c["mapcount"] == 64


def test_clean_shmem_zap_is_not_forced() -> None:
    """Read-only (clean) shared PTEs need no forced flush: one flush at tlb_end_vma."""
    k = Kernel("x86", "v6.9", checks=True)
    k.set_folio_size(4 * KiB)
    t = k.spawn(0)
    a = t.mmap(4 * MiB, shared=True)
    with k.checks_deferred():
        for off in range(0, 4 * MiB, 4 * KiB):
            t.read(a + off)
    k.sink.reset()
    t.madvise(a, 4 * MiB, "dontneed")
    assert totals(k)["tlbi_asid_local"] == 1


# ---- 3. x86 ptep_set_wrprotect: READ_ONCE + try_cmpxchg (v6.6+) --------------------------------


def test_x86_fork_wrprotect_reads_then_cmpxchg() -> None:
    """ptep_set_wrprotect (arch/x86/include/asm/pgtable.h, v6.6+) reads the PTE and write-protects
    it with try_cmpxchg: first fork of 1M of 64K folios on v6.9 is one cmpxchg and one extra read
    per PTE (was one clear_bit and no read)."""
    res = run_scenario(ModelSpec(arch="x86", folio=64 * KiB, mem=MiB, checks=True), "fork-first")
    c = Counter(with_aggregates(res.sink.totals()))
    n, blocks = 256, 16
    assert c["pte_cmpxchg"] == n and c["pte_bitop"] == 0
    assert c["pte_read"] == n + (blocks - 1) + n  # folio_pte_batch + probes + wrprotect reads


def test_x86_pmd_wrprotect_reads_then_cmpxchg() -> None:
    """pmdp_set_wrprotect: the same READ_ONCE + try_cmpxchg on the PMD leaf at fork."""
    res = run_scenario(ModelSpec(arch="x86", folio=2 * MiB, mem=2 * MiB, checks=True), "fork-first")
    c = res.sink.totals()
    assert c["pmd_rmw"] == 1
    assert c["pmd_read"] >= 2  # copy_huge_pmd's pmdp_get + the wrprotect's READ_ONCE


# ---- 4. __folio_remove_rmap: _nr_pages_mapped per page -----------------------------------------


def test_munmap_large_folio_two_mapcount_atomics_per_page() -> None:
    """__folio_remove_rmap(RMAP_LEVEL_PTE) (mm/rmap.c): a page of a large folio losing its last
    mapping costs atomic_add_negative on _mapcount and atomic_dec_return_relaxed on
    _nr_pages_mapped: munmap of 1M of 64K folios is 512 mapcount atomics (was 256)."""
    res = run_scenario(ModelSpec(arch="arm64", folio=64 * KiB, mem=MiB, checks=True), "munmap")
    assert res.sink.totals()["mapcount"] == 2 * 256


def test_shared_large_folio_unmap_keeps_nr_pages_mapped() -> None:
    """When the child still maps the pages, the parent's mapcount drop is not the last one: no
    _nr_pages_mapped atomic (exit of the child of a fork: one atomic per page)."""
    res = run_scenario(ModelSpec(arch="arm64", folio=64 * KiB, mem=MiB, checks=True), "exit-child")
    assert res.sink.totals()["mapcount"] == 256


def test_munmap_pmd_thp_entire_and_nr_pages_mapped() -> None:
    """RMAP_LEVEL_PMD: _entire_mapcount and, for the last PMD mapping, _nr_pages_mapped -=
    ENTIRELY_MAPPED: 2 atomics per PMD THP."""
    res = run_scenario(ModelSpec(arch="x86", folio=2 * MiB, mem=2 * MiB, checks=True), "munmap")
    assert res.sink.totals()["mapcount"] == 2


@pytest.mark.parametrize("preset,atomics", [("v6.9", 0), ("v6.11", 1)])
def test_munmap_pmd_thp_large_mapcount_once_per_pmd(preset: str, atomics: int) -> None:
    """__folio_remove_rmap(RMAP_LEVEL_PMD) (mm/rmap.c): from v6.11 ('mm: track mapcount of large
    folios in single value') removing a PMD mapping also subtracts the folio's pages from
    _large_mapcount, one atomic per PMD; before, there is no such counter."""
    res = run_scenario(
        ModelSpec(arch="x86", preset=preset, folio=2 * MiB, mem=4 * MiB, checks=True), "munmap"
    )
    totals = res.sink.totals()
    assert totals["large_mapcount"] == 2 * atomics
    assert totals["mapcount"] == 2 * 2  # _entire_mapcount and _nr_pages_mapped, as before


@pytest.mark.parametrize("preset", ["v6.8", "contpte-v2-01-13", "v6.9"])
def test_fork_charges_the_childs_folio_references_to_the_child(preset: str) -> None:
    """copy_present_ptes() (mm/memory.c; Ryan Roberts' batch-copy in contpte v2 #01-#13 takes the
    references in one folio_ref_add() per contiguous block): every folio reference fork takes
    is for a PTE of the child, so all of them are ``fork_child`` work -- one per page (v6.8)
    or one per 64K folio (batched) -- and none is the parent's."""
    k = Kernel("arm64", preset, checks=True)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(MiB)
    t.populate(a, MiB)
    k.sink.reset()
    t.fork(1)
    phases = k.sink.by_phase()
    per = 1 if preset == "v6.8" else 16
    assert phases["fork_child"]["folio_ref"] == MiB // (4 * KiB) // per
    assert phases["fork_parent"]["folio_ref"] == 0


def test_every_event_belongs_to_a_known_phase() -> None:
    """Each syscall's kernel work is charged to its own phase (events.PHASES, the phases the cost
    model prices); set-up work -- switch_mm, pin bookkeeping -- to ``setup``."""
    from ptesim.events import PHASES

    k = Kernel("arm64", "v6.9", checks=True)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(MiB)
    t.populate(a, MiB)
    pfn = t.pin(a)
    t.unpin(pfn)
    t.migrate(1)
    k.sink.reset()
    t.madvise(a, 256 * KiB, "dontneed")
    assert set(k.sink.by_phase()) == {"madvise"}
    th = t.thread(2)
    pfn = th.pin(a + 512 * KiB)
    t.unpin(pfn)
    c = t.fork(3)
    t.mprotect(a, MiB, "r")
    t.mremap(a + 512 * KiB, 64 * KiB, a + 4 * MiB)
    t.munmap(a + 256 * KiB, 64 * KiB)
    c.exit()
    phases = k.sink.by_phase()
    assert set(phases) <= set(PHASES)
    assert phases["setup"]["folio_ref"] == 1  # unpin_user_page() drops the pin's reference


@pytest.mark.parametrize("preset,per_block", [("v6.11", 16 + 16), ("v6.12", 16 + 1)])
def test_munmap_nr_pages_mapped_once_per_batch_from_v6_12(preset: str, per_block: int) -> None:
    """__folio_remove_rmap(RMAP_LEVEL_PTE) (mm/rmap.c): up to v6.11 each of the 16 pages of a 64K
    folio that loses its last mapping costs atomic_add_negative on _mapcount plus
    atomic_dec_return_relaxed on _nr_pages_mapped; from v6.12 (43c9074e6f09, LKML
    20240807115515.1640951-1) the loop only counts them and one atomic_sub_return_relaxed updates
    _nr_pages_mapped for the batch.  _large_mapcount stays one atomic_sub per batch."""
    res = run_scenario(ModelSpec(arch="arm64", preset=preset, folio=64 * KiB, mem=MiB, checks=True), "munmap")
    c = res.sink.totals()
    blocks = MiB // (64 * KiB)
    assert c["mapcount"] == per_block * blocks
    assert c["large_mapcount"] == blocks


# ---- 6. arm64 ptep_get_lockless on a CONT entry ------------------------------------------------


def contpte_kernel(preset: str = "v6.9") -> tuple[Kernel, Task, int]:
    k = Kernel("arm64", preset, checks=True)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(64 * KiB)
    t.populate(a, 64 * KiB)
    k.sink.reset()
    return k, t, a


def test_arm64_ptep_get_lockless_cont_reads() -> None:
    """ptep_get_lockless (arch/arm64/include/asm/pgtable.h) reads the entry; a valid CONT entry
    goes to contpte_ptep_get_lockless (arch/arm64/mm/contpte.c), which reads it again at retry:
    and then all 16: 18 reads (was 17)."""
    k, t, a = contpte_kernel()
    ptep = t.mm.pte_offset(a)
    assert ptep is not None
    with k.operation(t, "probe"):
        pte = k.arch.ptep_get_lockless(ptep + 3)
    assert k.arch.pte_valid_cont(pte)
    assert k.sink.totals()["pte_read"] == 18


@pytest.mark.parametrize("which,reads", [("ptep_get", 1 + 2), ("ptep_get_lockless", 1 + 1 + 2)])
def test_arm64_early_exit_rereads_first_dirty_entry(which: str, reads: int) -> None:
    """Mainline early exit (~v6.17): on a dirty entry the inner loop restarts at the same index,
    so a block whose first entry is dirty and young costs 2 gather reads (entry 0 twice), plus
    the wrapper's read and, lockless, the retry: read."""
    k, t, a = contpte_kernel("v6.9")
    k.arch.cfg = k.arch.cfg.replace(contpte_get_early_exit=True)
    ptep = t.mm.pte_offset(a)
    assert ptep is not None
    with k.operation(t, "probe"):
        pte = getattr(k.arch, which)(ptep)
    assert k.arch.pte_dirty(pte) and k.arch.pte_young(pte)
    assert k.sink.totals()["pte_read"] == reads


# ---- 7. __flush_tlb_range_nosync: pages >= MAX_TLBI_RANGE_PAGES, __TLBI_RANGE_NUM with min() ----


def test_arm64_range_flush_at_max_tlbi_range_pages_falls_back() -> None:
    """__flush_tlb_range_nosync (arch/arm64/include/asm/tlbflush.h, v6.9): with FEAT_TLBIRANGE,
    pages >= MAX_TLBI_RANGE_PAGES (2^21) is one flush_tlb_mm; one page fewer is range TLBIs.
    (The model used '>' and masked __TLBI_RANGE_NUM with 0x1F: at exactly 2^21 it never made
    progress.)"""
    k = Kernel("arm64", "v6.9", cpu_features=frozenset({"tlbi-range"}))
    t = k.spawn(0)
    arch = k.arch
    with k.operation(t, "probe"):
        arch.raw_flush_tlb_range(t.mm, 0, MAX_TLBI_RANGE_PAGES << 12, 4096, True, None)
    assert with_aggregates(k.sink.totals())["tlbi_asid_bcast"] == 1
    k.sink.reset()
    with k.operation(t, "probe"):
        arch.raw_flush_tlb_range(t.mm, 0, (MAX_TLBI_RANGE_PAGES - 1) << 12, 4096, True, None)
    c = k.sink.totals()
    assert c.get("tlbi_asid_bcast", 0) == 0
    # 2^21 - 1 = 31 units of 2^16 + 31 of 2^11 + 31 of 2^6 + 31 of 2 + 1 single page
    assert c["tlbi_range_bcast"] == 4 and c["tlbi_page_bcast"] == 1


def test_tlbi_range_num_clamps() -> None:
    """__TLBI_RANGE_NUM(pages, scale) = min(pages, __TLBI_RANGE_PAGES(31, scale)) >> (5*scale+1) - 1."""
    assert tlbi_range_num(MAX_TLBI_RANGE_PAGES, 3) == 31
    assert tlbi_range_num(MAX_TLBI_RANGE_PAGES - 1, 3) == 30
    assert tlbi_range_num(1, 0) == -1


# ---- 9. riscv update_mmu_cache_range: one local sfence.vma per installed PTE ------------------


def test_riscv_fault_sfences_each_installed_pte() -> None:
    """update_mmu_cache_range (arch/riscv/include/asm/pgtable.h, v6.9) issues one local
    sfence.vma per PTE a fault installed: populating 1M of 64K folios (16 faults of 16 PTEs)
    is 256 local page sfences (was 0)."""
    res = run_scenario(ModelSpec(arch="riscv", folio=64 * KiB, mem=MiB, checks=True), "populate")
    c = Counter(with_aggregates(res.sink.totals()))
    assert c["fault"] == 16
    assert c["tlbi_page_local"] == 256


def test_riscv_pmd_fault_sfences_once() -> None:
    """A PMD THP fault: update_mmu_cache_pmd -> update_mmu_cache: one local sfence.vma."""
    res = run_scenario(ModelSpec(arch="riscv", folio=2 * MiB, mem=2 * MiB, checks=True), "populate")
    assert Counter(with_aggregates(res.sink.totals()))["tlbi_page_local"] == 1


def test_x86_and_arm64_update_mmu_cache_is_a_noop() -> None:
    """x86 and arm64 define update_mmu_cache_range as nothing: populate issues no TLBI."""
    for arch in ("x86", "arm64"):
        res = run_scenario(ModelSpec(arch=arch, folio=64 * KiB, mem=MiB, checks=True), "populate")
        c = Counter(with_aggregates(res.sink.totals()))
        assert c["tlbi_page"] == 0 and c["tlbi_asid"] == 0


# ---- 6. per-page zap work that v6.9's batching removes ------------------------------------------


@pytest.mark.parametrize(
    "preset,overrides,per_page",
    [
        ("v6.8", {}, True),  # zap_pte_range one PTE at a time
        ("v6.9", {"contpte": "n"}, False),  # zap_present_folio_ptes: one batch per folio
        # contpte v4 03/16 (LKML 20231218105100.172635-4): clear_ptes batched, rmap + gather per page
        ("contpte-v2-01-13", {"contpte": "n", "zap_batch": "y"}, True),
    ],
)
def test_munmap_statistic_and_gather_entry_per_page_or_per_batch(
    preset: str, overrides: dict[str, str], per_page: bool
) -> None:
    """__folio_remove_rmap (mm/rmap.c v6.9) updates the mapped-page statistic
    (__lruvec_stat_mod_folio) once per call that unmapped pages, and every call of
    __tlb_remove_folio_pages queues one gather entry: a munmap of 4M of PTE-mapped 2M folios is 1024
    of each per page-wise zap and 2 (one per folio) with v6.9's batching."""
    spec = ModelSpec(
        arch="arm64",
        preset=preset,
        overrides=overrides,
        folio=2 * MiB,
        mem=4 * MiB,
        mapping="pte",
        checks=True,
    )
    c = run_scenario(spec, "munmap").sink.totals()
    want = 1024 if per_page else 2
    assert c["rmap_stat"] == want
    assert c["tlb_page"] == want
    assert c["mapcount"] == 2 * 1024  # _mapcount and _nr_pages_mapped per page either way (v6.9)
