"""mprotect and mremap, per PTE (<= v6.16) and batched (v6.17: Dev Jain, cac1db8c3aad and
f822a9a81a31), on every arch, with every invariant checked after each operation."""

from __future__ import annotations

from collections import Counter

import pytest

from ptesim.errors import UsageError
from ptesim.events import with_aggregates
from ptesim.kernel.core import Kernel, SegmentationFault
from ptesim.workloads.scenarios import ModelSpec, mremap_offset, run_scenario

KiB = 1024
MiB = 1 << 20
ARCHES = ("x86", "arm64", "riscv")


def counts(arch: str, preset: str, scenario: str, *, folio: int = 64 * KiB, mem: int = MiB) -> Counter[str]:
    r = run_scenario(ModelSpec(arch=arch, preset=preset, folio=folio, mem=mem, checks=True), scenario)
    return Counter(with_aggregates(r.sink.totals()))


def convert_tlbis(arch: str, preset: str, scenario: str) -> int:
    """TLBIs issued under contpte_convert (the fold/unfold break-before-make)."""
    r = run_scenario(ModelSpec(arch=arch, preset=preset, folio=64 * KiB, mem=MiB, checks=True), scenario)
    return sum(
        c["tlbi_page_bcast"] + c["tlbi_range_bcast"]
        for stack, c in r.sink.by_stack().items()
        if "contpte_convert" in stack
    )


@pytest.mark.parametrize("scenario", ["mprotect", "mremap"])
def test_arm64_batching_drops_every_fold_and_unfold(scenario: str) -> None:
    """v6.16 unfolds each block on its first PTE and refolds it on its last (mprotect: twice per
    toggle, once each way); v6.17 clears and rewrites whole blocks in place."""
    blocks = MiB // (64 * KiB)
    per_convert = 16  # one TLBI per page of the block, no FEAT_TLBIRANGE
    converts = 4 if scenario == "mprotect" else 2
    assert convert_tlbis("arm64", "v6.16", scenario) == blocks * converts * per_convert
    assert convert_tlbis("arm64", "v6.17", scenario) == 0


def test_x86_mprotect_batching_changes_no_count() -> None:
    """On x86 the batch reads the same PTEs folio_pte_batch now reads (Dev Jain measured no change)."""
    assert counts("x86", "v6.16", "mprotect") == counts("x86", "v6.17", "mprotect")


def test_riscv_2024_whatif_has_no_mprotect_batching() -> None:
    """The 2024 Svnapot what-if runs on a v6.9 core: mprotect unfolds and refolds every block."""
    assert convert_tlbis("riscv", "v6.9-svnapot", "mprotect") == 0  # riscv flushes are local sfences
    c = counts("riscv", "v6.9-svnapot", "mprotect")
    assert c["tlbi_page_local"] > counts("riscv", "v6.9", "mprotect")["tlbi_page_local"]


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("preset", ["v6.16", "v6.17"])
@pytest.mark.parametrize("folio", [4 * KiB, 64 * KiB, 2 * MiB])
def test_mremap_moves_the_data(arch: str, preset: str, folio: int) -> None:
    """After the move every page reads back at its new address and the old range is gone."""
    k = Kernel(arch, preset, checks=True)
    k.set_folio_size(folio)
    t = k.spawn(0)
    mem = 4 * MiB
    a = t.mmap(mem)
    page = k.arch.page_size
    with k.checks_deferred():  # the set-up; the move below is checked after every operation
        for i, addr in enumerate(range(a, a + mem, page)):
            t.write(addr, i)
    c = t.fork(1)  # a second mapper of every folio: the moved PTEs stay shared with the child
    new = a + mem + mremap_offset(k)
    assert t.mremap(a, mem, new) == new
    for i, addr in enumerate(range(new, new + mem, page)):
        assert t.read(addr) == i
    with pytest.raises(SegmentationFault):
        t.read(a)
    t.write(new, 99)  # COW against the child
    assert c.read(a) == 0
    c.exit()


def test_pmd_aligned_mremap_moves_whole_tables() -> None:
    """Both ends PMD-aligned: move_normal_pmd hands the PTE table over; no PTE is touched."""
    k = Kernel("x86", "v6.17", checks=True)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(4 * MiB)
    t.populate(a, 4 * MiB)
    k.sink.reset()
    t.mremap(a, 4 * MiB, a + 8 * MiB)
    c = Counter(with_aggregates(k.sink.totals()))
    assert c["pte_rmw"] == 0 and c["pte_write"] == 0
    assert c["pmd_write"] == 2 * 2  # clear the old PMD, populate the new one, per 2M
    assert t.read(a + 8 * MiB) == 1


def test_mremap_rejects_overlap_and_partial_ranges() -> None:
    k = Kernel("x86", "v6.17")
    t = k.spawn(0)
    a = t.mmap(MiB)
    with pytest.raises(UsageError):
        t.mremap(a, MiB, a + 4 * KiB)
    with pytest.raises(UsageError):
        t.mremap(a, 2 * MiB, a + 8 * MiB)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("preset", ["v6.16", "v6.17", "v6.19"])
def test_mprotect_sub_batches_follow_anon_exclusive(arch: str, preset: str) -> None:
    """After fork and the child's COW of one page, the parent's folio mixes exclusive and shared
    pages: mprotect(rw) makes only the exclusive ones writable, batched or not."""
    k = Kernel(arch, preset, checks=True)
    k.set_folio_size(64 * KiB)
    p = k.spawn(0)
    a = p.mmap(64 * KiB)
    p.populate(a, 64 * KiB)
    c = p.fork(1)
    p.write(a + 4 * 4096, 5)  # the parent's COW: page 4 is now a new exclusive page
    p.mprotect(a, 64 * KiB, "r")
    p.mprotect(a, 64 * KiB, "rw")
    p.write(a + 8 * 4096, 6)  # still shared with the child: must fault and copy
    assert c.read(a + 8 * 4096) == 1 and p.read(a + 8 * 4096) == 6
    c.exit()


def test_arm64_pte_needs_flush_skips_none_to_rw() -> None:
    """v6.19 (c320dbb7c80d): PROT_NONE -> PROT_READ|PROT_WRITE needs no flush (the old entries are
    invalid); v6.17 flushes every changed PTE."""

    def none_to_rw(preset: str) -> int:
        k = Kernel("arm64", preset, checks=True)
        k.set_folio_size(64 * KiB)
        t = k.spawn(0)
        a = t.mmap(MiB)
        t.populate(a, MiB)
        t.mprotect(a, MiB, "-")
        k.sink.reset()
        t.mprotect(a, MiB, "rw")
        return Counter(with_aggregates(k.sink.totals()))["tlbi_bcast"]

    assert none_to_rw("v6.19") == 0
    assert none_to_rw("v6.17") > 0


def test_whatif_op_says_who_gains() -> None:
    """whatif --op mprotect: arm64 contpte gains most, x86 and riscv without Svnapot are unchanged,
    and with 4 threads x86 with INVLPGB is faster than with IPIs (same counts, broadcast instead)."""
    from ptesim.cost.whatif import op_configs, whatif_op

    keep = {"arm64 4K", "x86-64", "x86-64, 4 threads", "x86-64 +invlpgb, 4 threads", "riscv (IPI)"}
    cfgs = [c for c in op_configs("mprotect") if c.label in keep]
    import ptesim.cost.whatif as w

    saved = w.op_configs
    w.op_configs = lambda op: cfgs  # type: ignore[assignment]
    try:
        rows = {r.config.label: r for r in whatif_op("mprotect", mem="1M")}
    finally:
        w.op_configs = saved  # type: ignore[assignment]
    assert rows["arm64 4K"].change_pct < -50
    assert abs(rows["x86-64"].change_pct) < 1 and abs(rows["riscv (IPI)"].change_pct) < 1
    assert rows["x86-64 +invlpgb, 4 threads"].after_ms < rows["x86-64, 4 threads"].after_ms


def test_local_tlbi_whatif_keeps_a_lone_process_local() -> None:
    """The arm64 local-TLBI what-if: an mm that only ran on this CPU is flushed with local TLBIs
    (TLB coherence checked on every CPU); once it ran elsewhere it broadcasts again."""
    k = Kernel("arm64", "v6.19-local-tlbi", checks=True)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(MiB)
    t.populate(a, MiB)
    k.sink.reset()
    t.mprotect(a, MiB, "r")
    c = Counter(with_aggregates(k.sink.totals()))
    assert c["tlbi_bcast"] == 0 and c["tlbi_local"] > 0
    t.migrate(1)
    k.sink.reset()
    t.mprotect(a, MiB, "rw")
    c = Counter(with_aggregates(k.sink.totals()))
    assert c["tlbi_bcast"] > 0 and c["tlbi_local"] == 0


def test_riscv_2026_whatif_still_converts_in_mprotect() -> None:
    """Yunhui Cui's series has no batched modify_prot_*: each block is unfolded and refolded."""
    assert (
        counts("riscv", "v7.0-svnapot", "mprotect")["tlbi_page_local"]
        > 4 * counts("riscv", "v6.17", "mprotect")["tlbi_page_local"]
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_prot_none_faults_every_access_and_keeps_the_pages(arch: str) -> None:
    """mprotect(PROT_NONE): every load or store is a SIGSEGV (access_error: a read needs some
    access to the VMA), yet the pages stay mapped (pte_present(): x86 _PAGE_PROTNONE, arm64
    PTE_PROT_NONE, riscv _PAGE_PROT_NONE, none of them valid to the hardware), are copied by fork,
    and read back their data once the protection returns."""
    k = Kernel(arch, "v6.9", checks=True)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(256 * KiB)
    t.populate(a, 256 * KiB, 7)
    rss = dict(t.mm.rss)
    t.mprotect(a, 64 * KiB, "")
    for access in (lambda: t.read(a), lambda: t.write(a + 4 * KiB, 1)):
        with pytest.raises(SegmentationFault):
            access()
    assert t.read(a + 64 * KiB) == 7  # the rest of the mapping is untouched
    assert dict(t.mm.rss) == rss
    ptep = t.mm.pte_offset(a)
    assert ptep is not None
    pte = ptep.peek()
    assert k.arch.pte_present(pte) and k.arch.hw_access(pte, False) is None
    c = t.fork(1)
    with pytest.raises(SegmentationFault):
        c.read(a)
    t.mprotect(a, 64 * KiB, "rw")
    assert t.read(a) == 7
    t.write(a, 8)
    c.mprotect(a, 64 * KiB, "r")
    assert c.read(a) == 7  # COW kept the child's copy
    c.exit()
