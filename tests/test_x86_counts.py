"""x86-64 fork and exit counts per 64K block: columns (a1) v6.8 and (a2) v6.9 of the reference
tables (kernel.md §9.2, §9.3), adapted to x86's primitives — all from running the model."""

from __future__ import annotations

from collections import Counter

import pytest

from ptesim.events import with_aggregates
from ptesim.kernel.core import Kernel
from ptesim.workloads.scenarios import ModelSpec, run_scenario

MiB = 1 << 20
BLOCKS = 16  # 1 MiB of 64K blocks, one PMD range


def counts(preset: str, scenario: str, folio: int = 64 * 1024, mem: int = MiB) -> dict[str, int | float]:
    res = run_scenario(ModelSpec(arch="x86", preset=preset, folio=folio, mem=mem, checks=True), scenario)
    return with_aggregates(res.sink.totals())


def test_v68_first_fork_per_pte() -> None:
    """v6.8: three reads, one folio_get, one mapcount, one AE clear, one RMW, one store per PTE."""
    c = counts("v6.8", "fork-first")
    n = 16 * BLOCKS
    assert c["pte_read"] == 3 * n  # copy_pte_range, copy_present_pte, ptep_set_wrprotect's READ_ONCE
    assert c["folio_ref"] == n
    assert c["mapcount"] == n
    assert c["anon_exclusive"] == n
    # ptep_set_wrprotect (v6.6+): READ_ONCE + try_cmpxchg, not clear_bit(_PAGE_BIT_RW)
    assert c["pte_rmw"] == c["pte_cmpxchg"] == n and c.get("pte_bitop", 0) == 0
    assert c["pte_write"] == n
    assert c["tlbi_page"] == 0 and c["tlbi_range"] == 0
    assert c["tlbi_asid"] == 1  # the single flush_tlb_mm(oldmm) at the end of dup_mmap
    assert c["ipi"] == 0  # the parent has only ever run on one CPU


def test_v69_first_fork_batched() -> None:
    """v6.9: one folio_ref_add per 64K folio; one read per PTE plus one probe read per folio
    whose PMD range continues (folio_pte_batch reads the next block's first PTE), plus the
    READ_ONCE of each ptep_set_wrprotect."""
    c = counts("v6.9", "fork-first")
    n = 16 * BLOCKS
    assert c["folio_ref"] == BLOCKS
    assert c["pte_read"] == n + (BLOCKS - 1) + n
    assert c["mapcount"] == n and c["anon_exclusive"] == n
    assert c["pte_rmw"] == n and c["pte_write"] == n
    assert c["tlbi_asid"] == 1 and c["tlbi_page"] == 0


def test_v615_clamp_removes_probe_reads() -> None:
    """With folio_pte_batch's max_nr clamp (~v6.15) the probe reads disappear (the wrprotect
    reads stay)."""
    c = counts("v6.15", "fork-first")
    assert c["pte_read"] == 2 * 16 * BLOCKS
    assert c["large_mapcount"] == BLOCKS  # v6.11: one _large_mapcount atomic per batch


@pytest.mark.parametrize("preset,refs", [("v6.8", 16 * BLOCKS), ("v6.9", BLOCKS)])
def test_steady_fork_has_no_wrprotect(preset: str, refs: int) -> None:
    """Second fork: parent PTEs are already read-only, so no RMW and no AE clears."""
    c = counts(preset, "fork-steady")
    assert c["pte_rmw"] == 0
    assert c["anon_exclusive"] == 0
    assert c["folio_ref"] == refs
    assert c["pte_write"] == 16 * BLOCKS


@pytest.mark.parametrize("preset,refs,reads", [("v6.8", 16 * BLOCKS, 32 * BLOCKS), ("v6.9", BLOCKS, None)])
def test_child_exit(preset: str, refs: int, reads: int | None) -> None:
    """Child exit: full-mm clears are plain read+store on x86, one mapcount dec per page, one
    folio_put_refs per gathered entry, and one full flush of the child's address space."""
    c = counts(preset, "exit-child")
    n = 16 * BLOCKS
    assert c["mapcount"] == n
    assert c["pte_write"] == n and c["pte_rmw"] == 0
    assert c["folio_ref"] == refs
    if reads is not None:
        assert c["pte_read"] == reads
    assert c["tlbi_asid"] == 1


def test_small_folios_batch_nothing() -> None:
    """With 4K folios v6.9 copies one PTE at a time, like v6.8 but with one read fewer (both
    also read each PTE once more to write-protect it)."""
    c9 = counts("v6.9", "fork-first", folio=4096)
    c8 = counts("v6.8", "fork-first", folio=4096)
    assert c9["folio_ref"] == c8["folio_ref"] == 256
    assert c9["pte_read"] == 512 and c8["pte_read"] == 768


def test_pmd_thp_fork() -> None:
    """A PMD-mapped THP is copied with one PMD write-protect and one child PMD store."""
    res = run_scenario(
        ModelSpec(arch="x86", preset="v6.9", folio=2 * MiB, mem=4 * MiB, checks=True), "fork-first"
    )
    t = Counter(res.sink.totals())
    assert t["pmd_rmw"] == 2 and t["pmd_write"] == 2
    assert t["pte_read"] == 0 and t["folio_ref"] == 2


def test_munmap_flushes_full_mm_beyond_ceiling() -> None:
    """munmap of 256 pages exceeds tlb_single_page_flush_ceiling (33): one full flush at
    tlb_end_vma.  The mapping was the mm's only one, so free_pgtables frees its PTE, PMD and PUD
    tables; pmd_free_tlb / pud_free_tlb (include/asm-generic/tlb.h) widen the gather to the
    P4D-aligned base, and tlb_finish_mmu's flush of the freed tables is a second full flush."""
    c = counts("v6.9", "munmap")
    assert c["tlbi_asid"] == 2 and c["tlbi_page"] == 0


def test_munmap_small_range_flushes_pages() -> None:
    """munmap of 8 pages: 8 INVLPGs at tlb_end_vma, then the full flush for the freed tables
    (see above)."""
    c = counts("v6.9", "munmap", folio=4096, mem=32 * 1024)
    assert c["tlbi_page"] == 8 and c["tlbi_asid"] == 1


def test_cow_write_counts() -> None:
    """Child writes every page after fork: 64K folios are never reused in v6.9, so every page is
    copied, each with one page flush."""
    c = counts("v6.9", "cow-write", mem=128 * 1024)
    assert c["page_copy"] == 32
    assert c["tlbi_page"] == 32


def test_remote_flush_spares_other_address_spaces() -> None:
    """arch/x86/mm/tlb.c flush_tlb_func(), run by the IPI on another CPU: with PCID the TLB keeps
    entries of several address spaces, and the INVLPGs of a munmap of one page drop that page
    of the mm being flushed only -- not the same address of another process, nor its neighbours."""
    k = Kernel("x86", "v6.9", checks=True)
    page = 4096
    a_task = k.spawn(0)
    a = a_task.mmap(16 * page)
    a_task.populate(a, 16 * page)
    a_thread = a_task.thread(1)
    b_task = k.spawn(2)
    b = b_task.mmap(16 * page)
    b_task.populate(b, 16 * page)
    assert a == b  # the same virtual address in both processes
    b_task.migrate(1)
    b_task.read(b)
    a_thread.migrate(1)
    a_thread.read(a)
    a_thread.read(a + page)
    tlb = k.hw.cpus[1].tlb
    vpn = a // page
    k.sink.reset()
    a_task.munmap(a, page)
    assert k.sink.totals()["ipi"] == 1
    assert tlb.lookup(a_task.mm.asid, vpn) is None
    assert tlb.lookup(a_task.mm.asid, vpn + 1) is not None
    assert tlb.lookup(b_task.mm.asid, vpn) is not None
