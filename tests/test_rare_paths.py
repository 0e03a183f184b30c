"""Kernel paths the rest of the suite never executes (found by mutation testing: a mutant there
could not be killed because no test ran the line).  Each test drives the path through the
model's syscalls and asserts what the kernel guarantees, with every invariant checked."""

from __future__ import annotations

from typing import Any

import pytest

from ptesim.kernel.core import Kernel, SegmentationFault

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
