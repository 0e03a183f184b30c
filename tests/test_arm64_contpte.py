"""arm64 contpte behaviour beyond the per-block tables: partial blocks, BBML2, COW after fork,
16K/64K granules, the __flush_tlb_range algorithm, and checks that fail when they should."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import ptesim.arch.arm64.contpte as contpte
from ptesim.arch.arm64 import Arm64
from ptesim.errors import InvariantViolation
from ptesim.events import with_aggregates
from ptesim.kernel.core import Kernel, Task

KiB = 1024
MiB = 1 << 20


def setup(
    preset: str = "v6.9", *, mem: int = MiB, folio: int = 64 * KiB, **kw: object
) -> tuple[Kernel, Task, int]:
    k = Kernel("arm64", preset, checks=True, **kw)  # type: ignore[arg-type]
    k.set_folio_size(folio)
    t = k.spawn(0)
    a = t.mmap(mem)
    t.populate(a, mem)
    k.sink.reset()
    return k, t, a


def totals(k: Kernel) -> Counter[str]:
    return Counter(with_aggregates(k.sink.totals()))


def cont_blocks(k: Kernel, t: Task, a: int, mem: int) -> list[bool]:
    """For each block of [a, a + mem): is every entry valid with PTE_CONT?"""
    arch = k.arch
    n = arch.cont_ptes
    out = []
    for blk in range(a, a + mem, n * arch.page_size):
        ptep = t.mm.pte_offset(blk)
        assert ptep is not None
        out.append(all(arch.pte_valid_cont((ptep + i).peek()) for i in range(n)))
    return out


def test_populate_builds_cont_blocks() -> None:
    k, t, a = setup()
    assert all(cont_blocks(k, t, a, MiB))


def test_partial_block_unfolds_once() -> None:
    """§9.2 note (c2): a batch ending inside a CONT block (here a VMA boundary 8 pages into the
    block) unfolds that block: +16 xchg, +16 stores, +16 TLBI, +2 DSB compared with no split."""
    k, t, _a = setup()
    t.fork(1)
    base = totals(k)
    k2, t2, a2 = setup()
    t2.madvise(a2 + 8 * 4096, MiB - 8 * 4096, "hugepage")  # splits the VMA, touches no PTE
    k2.sink.reset()
    t2.fork(1)
    c = totals(k2)
    assert c["tlbi_page_bcast"] - base["tlbi_page_bcast"] == 16
    assert c["dsb"] - base["dsb"] == 2
    assert c["pte_xchg"] - base["pte_xchg"] == 16
    parent = k2.sink.by_phase()["fork_parent"]
    assert parent["pte_write"] == 16
    assert cont_blocks(k2, t2, a2, MiB) == [False] + [True] * 15


def test_bbml2_elides_convert_flush() -> None:
    """With BBML2_NOABORT every contpte_convert drops its TLBI range and both DSBs."""
    k, t, a = setup("v6.17", cpu_features=frozenset({"bbml2"}))
    t.madvise(a + 8 * 4096, MiB - 8 * 4096, "hugepage")
    k.sink.reset()
    t.fork(1)
    c = totals(k)
    assert c["pte_xchg"] == 16
    assert c["tlbi_page"] == 0 and c["tlbi_asid_bcast"] == 1 and c["dsb"] == 2


def test_cow_in_parent_first_fault_unfolds() -> None:
    """§6.3: first COW fault in a CONT block 17 TLBI + 4 DSB; later ones 1 TLBI + 2 DSB."""
    k, t, a = setup()
    t.fork(1)
    k.sink.reset()
    t.write(a, 7)
    c = totals(k)
    assert c["tlbi_page_bcast"] == 17 and c["dsb"] == 4
    # four gathers while CONT (lockless entry, PTL recheck, do_wp_page, wp_page_copy recheck), the
    # lockless entry's second read of the target at contpte_ptep_get_lockless's retry:, the unfold
    # test in ptep_get_and_clear, and the unfold test in set_pte_at of the new page
    assert c["pte_xchg"] == 17 and c["pte_read"] == 4 * 17 + 1 + 2
    k.sink.reset()
    t.write(a + 4096, 8)
    c = totals(k)
    assert c["tlbi_page_bcast"] == 1 and c["dsb"] == 2
    assert cont_blocks(k, t, a, MiB)[0] is False


def test_cow_in_child_old_entries_need_no_page_flush() -> None:
    """The child's entries are old (fork clears AF) and arm64 pte_accessible() is valid && young:
    ptep_clear_flush skips flush_tlb_page, so only the unfold's 16 TLBI + 2 DSB remain."""
    k, t, a = setup()
    c_task = t.fork(1)
    k.sink.reset()
    c_task.write(a, 7)
    c = totals(k)
    assert c["tlbi_page_bcast"] == 16 and c["dsb"] == 2
    k.sink.reset()
    c_task.write(a + 4096, 8)
    assert totals(k)["tlbi_page"] == 0


@pytest.mark.parametrize("granule,folio", [(16 * KiB, 2 * MiB), (64 * KiB, 2 * MiB)])
def test_big_granules_v69_keep_cont(granule: int, folio: int) -> None:
    """A 2M folio forked under v6.9 keeps CONT in parent and child; no TLBI per block."""
    mem = 4 * MiB
    k, t, a = setup("v6.9", mem=mem, folio=folio, granule=granule)
    assert k.arch.cont_ptes == {16 * KiB: 128, 64 * KiB: 32}[granule]
    child = t.fork(1)
    c = totals(k)
    assert c["tlbi_page"] == 0 and c["tlbi_asid_bcast"] == 1
    assert all(cont_blocks(k, t, a, mem)) and all(cont_blocks(k, child, a, mem))


@pytest.mark.parametrize("granule", [16 * KiB, 64 * KiB])
def test_big_granules_basic_unfolds_each_block_once(granule: int) -> None:
    mem = 4 * MiB
    k, t, a = setup("contpte-basic", mem=mem, folio=2 * MiB, granule=granule)
    t.fork(1)
    c = totals(k)
    blocks = mem // (k.arch.cont_ptes * k.arch.page_size)
    assert c["tlbi_page_bcast"] == blocks * k.arch.cont_ptes
    assert c["dsb"] == 2 * blocks + 2
    assert not any(cont_blocks(k, t, a, mem))


def test_flush_tlb_range_algorithm() -> None:
    """§4.2: 16 pages -> 16 VALE1IS, or one RVALE1IS (scale 0, num 7) with FEAT_TLBIRANGE; >= 512
    pages without it -> one ASID flush (v6.9 adds its trailing DSB ISH); odd ranges end with a
    single TLBI; 2^21 + 1 pages -> ASID flush even with range support."""
    for feats, pages, want in [
        (frozenset(), 16, {"tlbi_page_bcast": 16, "dsb_ishst": 1, "dsb_ish": 1}),
        (frozenset({"tlbi-range"}), 16, {"tlbi_range_bcast": 1, "dsb_ishst": 1, "dsb_ish": 1}),
        (frozenset(), 512, {"tlbi_asid_bcast": 1, "dsb_ishst": 1, "dsb_ish": 2}),
        (frozenset({"tlbi-range"}), 512, {"tlbi_range_bcast": 1, "dsb_ishst": 1, "dsb_ish": 1}),
        (
            frozenset({"tlbi-range"}),
            17,
            {"tlbi_range_bcast": 1, "tlbi_page_bcast": 1, "dsb_ishst": 1, "dsb_ish": 1},
        ),
        (frozenset({"tlbi-range"}), (1 << 21) + 1, {"tlbi_asid_bcast": 1, "dsb_ishst": 1, "dsb_ish": 2}),
        (frozenset({"repeat-tlbi"}), 2, {"tlbi_page_bcast": 4, "dsb_ishst": 1, "dsb_ish": 3}),
        (frozenset({"kpti", "tlbi-range"}), 16, {"tlbi_range_bcast": 2, "dsb_ishst": 1, "dsb_ish": 1}),
    ]:
        k = Kernel("arm64", "v6.9", cpu_features=feats)
        t = k.spawn(0)
        arch = k.arch
        assert isinstance(arch, Arm64)
        with k.sink.operation("munmap"):
            arch.raw_flush_tlb_range(t.mm, 0, pages * 4096, 4096, True, 3)
        got = dict(k.sink.totals())
        # t's mm is live on the issuing CPU: every page/range TLBI also carries the qualifier.
        live = got.pop("tlbi_live_asid", 0)
        assert live == got.get("tlbi_page_bcast", 0) + got.get("tlbi_range_bcast", 0), (feats, pages)
        assert got.pop("dsb_live_asid", 0) == got.get("dsb_ish", 0), (feats, pages)
        assert got == want, (feats, pages)


def test_live_asid_qualifier_follows_the_issuing_cpu() -> None:
    """A flush for the mm the issuing CPU runs carries ``tlbi_live_asid``; one for a child mm that
    has never run (the fold of a child block in dup_mmap) does not."""
    k = Kernel("arm64", "v6.9")
    parent = k.spawn(0)
    arch = k.arch
    assert isinstance(arch, Arm64)
    child_mm = k.new_mm()
    with k.operation(parent, "fork", child_mm=child_mm):
        arch.raw_flush_tlb_range(child_mm, 0, 16 * 4096, 4096, True, 3)
        arch.raw_flush_tlb_range(parent.mm, 0, 16 * 4096, 4096, True, 3)
    by_phase = k.sink.by_phase()
    assert by_phase["fork_child"]["tlbi_page_bcast"] == 16
    assert by_phase["fork_child"]["tlbi_live_asid"] == 0
    assert by_phase["fork_parent"]["tlbi_live_asid"] == 16
    assert by_phase["fork_child"]["dsb_live_asid"] == 0 and by_phase["fork_parent"]["dsb_live_asid"] == 1


def test_convert_without_flush_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A contpte_convert that skips its invalidation leaves TLB entries for a block it has just made
    invalid: the break-before-make flush point reports it."""
    k, t, _a = setup("contpte-v2-01-12")
    assert isinstance(k.arch, Arm64)
    monkeypatch.setattr(k.arch, "raw_flush_tlb_range", lambda *args, **kw: None)
    with pytest.raises(InvariantViolation, match="contpte_convert"):
        t.fork(1)


def test_partial_wrprotect_keeping_cont_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write-protecting part of a block without unfolding it breaks the Arm ARM contiguous rule."""
    k, t, a = setup()
    arch = k.arch
    blk = 16 * 4096
    ptep = t.mm.pte_offset(a + blk)
    assert ptep is not None
    with k.operation(t, "mprotect"):  # the real code unfolds block 1 first: the checks pass
        arch.wrprotect_ptes(t.mm, a + blk, ptep, 8)
    assert cont_blocks(k, t, a, 2 * blk) == [True, False]
    monkeypatch.setattr(contpte, "contpte_try_unfold_partial", lambda *args, **kw: None)
    ptep = t.mm.pte_offset(a)
    assert ptep is not None
    with pytest.raises(InvariantViolation) as exc, k.operation(t, "mprotect"):
        arch.wrprotect_ptes(t.mm, a, ptep, 8)
    assert exc.value.check == "cont_block"


def test_explain_chain_for_v1_child_fold() -> None:
    """Every TLBI of the v1 child fold comes from contpte_convert <- __contpte_try_fold <- set_ptes
    <- copy_present_pte."""
    k, t, _a = setup("contpte-v1-before-opt")
    t.fork(1).exit()
    k.sink.reset()
    t.fork(1)
    stacks = [s for s, c in k.sink.by_stack(("fork_child",)).items() if c["tlbi_page_bcast"]]
    assert stacks
    for s in stacks:
        i = s.index("contpte_convert")
        assert s[i - 3 : i + 1] == ("copy_present_pte", "set_ptes", "__contpte_try_fold", "contpte_convert")
        assert s[-1] == "__flush_tlb_range_op"


def test_exit_tears_down_contiguous_blocks_without_unfolding() -> None:
    """contpte v1 (#14, 'arm64/mm: ptep_get_and_clear_full() optimization'): when the whole mm is
    torn down (tlb->fullmm) ptep_get_and_clear_full() clears a contiguous block entry by entry
    without unfolding it first -- no CPU can use the mm any more, so no break-before-make and no
    TLBI; v2 #01-#13 still unfolds every block."""

    def converts(preset: str) -> int:
        k = Kernel("arm64", preset, checks=True)
        k.set_folio_size(64 * KiB)
        t = k.spawn(0)
        a = t.mmap(256 * KiB)
        t.populate(a, 256 * KiB)
        k.sink.reset()
        t.exit()
        return sum(sum(c.values()) for st, c in k.sink.by_stack().items() if "contpte_convert" in st)

    assert converts("contpte-v1-after-opt") == 0
    assert converts("contpte-v2-01-13") > 0


PAGE = 4096


def test_v2_fork_write_protects_a_block_split_by_madv_dontfork(monkeypatch: pytest.MonkeyPatch) -> None:
    """contpte v2 #13 (ptep_set_wrprotects, contpte_set_wrprotects): a 64K block whose middle was
    MADV_DONTFORK'd is copied in two partial chunks; each is unfolded, write-protected and offered
    a refold.  The child sees the pages it inherited and not the others; the parent's
    DONTFORK'd pages stay writable (no fault), its copied ones break COW on a write."""
    import ptesim.arch.arm64.contpte as contpte
    from ptesim.kernel.core import SegmentationFault

    calls: list[int] = []
    real = contpte.contpte_set_wrprotects

    def spy(arch: Any, mm: Any, addr: int, ptep: Any, nr: int) -> None:
        calls.append(nr)
        real(arch, mm, addr, ptep, nr)

    monkeypatch.setattr(contpte, "contpte_set_wrprotects", spy)
    k = Kernel("arm64", "contpte-v2-01-13", checks=True)
    k.set_folio_size(64 * 1024)
    t = k.spawn(0)
    a = t.mmap(16 * PAGE)
    for i in range(16):
        t.write(a + i * PAGE, 1000 + i)
    t.madvise(a + 4 * PAGE, 4 * PAGE, "dontfork")
    child = t.fork(1)
    assert sorted(calls) == [4, 8]
    assert [child.read(a + i * PAGE) for i in (0, 3, 8, 15)] == [1000, 1003, 1008, 1015]
    with pytest.raises(SegmentationFault):
        child.read(a + 4 * PAGE)
    k.sink.reset()
    t.write(a + 5 * PAGE, 5)
    assert k.sink.totals()["fault"] == 0
    t.write(a, 7)
    assert k.sink.totals()["fault"] == 1
    assert child.read(a) == 1000 and t.read(a) == 7
    k.set_folio_size(PAGE)  # an order-0 page: fork write-protects its single entry (nr == 1)
    b = t.mmap(PAGE)
    t.write(b, 9)
    calls.clear()
    child2 = t.fork(2)
    assert child2.read(b) == 9 and child2.translate(b) == t.translate(b)
    k.sink.reset()
    t.write(b, 10)
    assert k.sink.totals()["fault"] == 1 and child2.read(b) == 9


def test_local_tlbi_what_if_flushes_the_written_block_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """v6.19-local-tlbi without FEAT_HAFDBS: a store to a clean (MADV_FREE'd) writable contiguous
    block takes a permission fault; contpte_ptep_set_access_flags() marks every entry of the block
    dirty and young and, under the what-if, flushes the block from this CPU's TLB only
    (local_flush_tlb_contpte at the block's start), and the store lands."""
    calls: list[int] = []
    k = Kernel("arm64", "v6.19-local-tlbi", checks=True, cpu_features=frozenset({"no-hafdbs"}))
    real = k.arch.local_flush_tlb_contpte

    def spy(vma: Any, addr: int) -> None:
        calls.append(addr)
        real(vma, addr)

    monkeypatch.setattr(k.arch, "local_flush_tlb_contpte", spy)
    k.set_folio_size(64 * 1024)
    t = k.spawn(0)
    a = t.mmap(32 * PAGE)
    for i in range(32):
        t.write(a + i * PAGE, 1000 + i)
    t.madvise(a, 32 * PAGE, "free")
    assert t.read(a) == 1000
    t.write(a + 15 * PAGE, 2000)
    assert calls == [a]
    assert t.read(a + 15 * PAGE) == 2000 and t.read(a + 14 * PAGE) == 1014


def test_batch_copy_stops_at_a_pinned_exclusive_page() -> None:
    """contpte v1 #13 batch copy (copy_present_ptes with folio_nr_pages_cont_mapped): the rmap dup
    of each page of the batch fails at a page of a pinned folio that is PageAnonExclusive
    (folio_try_dup_anon_rmap_pte), so the batch ends there, the references taken for the rest
    are given back, and that page is copied for the child (copy_present_page) while the others
    stay shared.  (An exclusive page among shared ones needs large-folio reuse, so the what-if
    --set wp_reuse_large=1.)"""
    from ptesim.kernel.config import preset

    k = Kernel("arm64", preset("contpte-v1-after-opt").with_overrides({"wp_reuse_large": "1"}), checks=True)
    k.set_folio_size(64 * 1024)
    t = k.spawn(0)
    a = t.mmap(16 * PAGE)
    for i in range(16):
        t.write(a + i * PAGE, 100 + i)
    t.fork(1).exit()
    t.write(a + 5 * PAGE, 55)  # reused: page 5 alone is exclusive again
    pfn = t.pin(a + 5 * PAGE)
    child = t.fork(1)
    shared = [child.translate(a + i * PAGE) == t.translate(a + i * PAGE) for i in range(16)]
    assert shared == [i != 5 for i in range(16)]
    assert [child.read(a + i * PAGE) for i in range(16)] == [55 if i == 5 else 100 + i for i in range(16)]
    t.unpin(pfn)
    child.exit()
