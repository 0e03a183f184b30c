"""riscv: atomic wrprotect / xchg, sfence.vma / IPI / SBI flushing filtered by mm_cpumask, the
64-entry full-flush threshold, and the Svnapot what-if through the shared contpte layer."""

from __future__ import annotations

from collections import Counter

from ptesim.arch.riscv import NAPOT_PTE_NUM, Riscv
from ptesim.events import with_aggregates
from ptesim.kernel.core import Kernel, Task

KiB = 1024
MiB = 1 << 20
B = 16
N = 16 * B


def setup(preset: str = "v6.9", **kw: object) -> tuple[Kernel, Task, int]:
    k = Kernel("riscv", preset, checks=True, **kw)  # type: ignore[arg-type]
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(MiB)
    t.populate(a, MiB)
    k.sink.reset()
    return k, t, a


def totals(k: Kernel) -> Counter[str]:
    return Counter(with_aggregates(k.sink.totals()))


def test_first_fork_mainline() -> None:
    """No contiguous layer: one read per PTE + 15 probes, one amoand per PTE, one local ASID
    sfence (the parent ran only on this CPU)."""
    k, t, _a = setup()
    t.fork(1)
    c = totals(k)
    assert c["pte_read"] == N + (B - 1)
    assert c["pte_bitop"] == N and c["pte_cmpxchg"] == 0 and c["pte_write"] == N
    assert c["tlbi_asid_local"] == 1 and c["ipi"] == 0 and c["tlbi_bcast"] == 0
    assert c["folio_ref"] == B


def test_fork_remote_flush_by_ipi_or_sbi() -> None:
    """With the parent also run on CPU 1: one IPI to it (and a local flush), or one SBI RFENCE call
    reaching both harts of the mask."""
    k, t, _ = setup()
    t.migrate(1)
    t.migrate(0)
    k.sink.reset()
    t.fork(2)
    c = totals(k)
    assert c["ipi"] == 1 and c["tlbi_asid_local"] == 1
    k, t, _a = setup(cpu_features=frozenset({"sbi-rfence"}))
    t.migrate(1)
    t.migrate(0)
    k.sink.reset()
    t.fork(2)
    c = totals(k)
    assert c["sbi_rfence"] == 1 and c["sbi_rfence_target"] == 2 and c["ipi"] == 0


def test_flush_threshold() -> None:
    """64 pages -> 64 sfence.vma; 65 -> one ASID sfence (tlb_flush_all_threshold)."""
    for pages, want in [(64, {"tlbi_page_local": 64}), (65, {"tlbi_asid_local": 1})]:
        k, t, a = setup()
        t.munmap(a, pages * 4096)
        c = totals(k)
        assert {key: c[key] for key in want} == want
        assert c["tlbi_asid_local"] + c["tlbi_page_local"] == sum(want.values())


def test_svnapot_encoding_and_real_pfn() -> None:
    """WHAT-IF: NAPOT entries hold PPN[3:0] = 0b1000 in memory; core mm reads the real PFN."""
    k, t, a = setup("v6.9-svnapot")
    arch = k.arch
    assert isinstance(arch, Riscv) and arch.cont_ptes == NAPOT_PTE_NUM
    ptep = t.mm.pte_offset(a)
    assert ptep is not None
    for i in range(NAPOT_PTE_NUM):
        raw = (ptep + i).peek()
        assert raw >> 63 & 1 and (raw >> 10) & 0xF == 0b1000
        assert arch.pte_pfn(raw) == t.translate(a + i * 4096)
    with k.sink.operation("setup"):
        got = arch.ptep_get(ptep + 3)
    assert arch.pte_pfn(got) == t.translate(a + 3 * 4096)


def test_svnapot_fork_counts() -> None:
    """The arm64 v6.9 algorithm on Svnapot: 17-read gathers (+ probes), whole blocks wrprotected in
    place with one amoand per entry, child written NAPOT directly, no per-block flush."""
    k, t, a = setup("v6.9-svnapot")
    child = t.fork(1)
    c = totals(k)
    assert c["pte_read"] == 17 * B + 17 * (B - 1)
    assert c["pte_bitop"] == N and c["pte_xchg"] == 0 and c["pte_write"] == N
    assert c["tlbi_page_local"] == 0 and c["tlbi_asid_local"] == 1
    cptep = child.mm.pte_offset(a)
    assert cptep is not None and all(k.arch.pte_valid_cont((cptep + i).peek()) for i in range(16))


def test_svnapot_cow_unfolds_block() -> None:
    """First COW in a NAPOT block: break-before-make over 16 entries (16 sfence.vma, below the
    threshold) + the page's own flush + update_mmu_cache's local sfence for the new PTE; later
    faults: the page's flush and update_mmu_cache's sfence."""
    k, t, a = setup("v6.9-svnapot")
    t.fork(1)
    k.sink.reset()
    t.write(a, 1)
    c = totals(k)
    assert c["tlbi_page_local"] == 17 + 1 and c["pte_xchg"] == 17
    k.sink.reset()
    t.write(a + 4096, 2)
    assert totals(k)["tlbi_page_local"] == 1 + 1
