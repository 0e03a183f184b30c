"""COW isolation after fork, modelled on tools/testing/selftests/mm/cow.c: PTE-mapped THP, a
partially mprotected folio, a pinned page, and MADV_DONTNEED of part of a folio.  Every test runs
with all invariants checked after each operation and compares what each process reads with the
oracle of what its own history wrote."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ptesim.errors import InvariantViolation
from ptesim.kernel.check import Oracle, validate_isolation
from ptesim.kernel.core import Kernel, Task

KiB = 1024
MiB = 1 << 20
ARCH_PRESETS = [("x86", "v6.8"), ("x86", "v6.9")]


def fill(t: Task, oracle: Oracle, addr: int, length: int, base: int) -> list[int]:
    addrs = list(range(addr, addr + length, 4096))
    with t.kernel.checks_deferred():  # the set-up: checked once; what follows is checked per operation
        for i, a in enumerate(addrs):
            t.write(a, base + i)
            oracle.write(t, a, base + i)
    return addrs


@pytest.mark.parametrize("arch,preset", ARCH_PRESETS)
@pytest.mark.parametrize("folio", [4 * KiB, 64 * KiB, 2 * MiB])
def test_cow_isolation_after_fork(machine: Callable[..., Kernel], arch: str, preset: str, folio: int) -> None:
    """Parent and child each write after fork; neither sees the other's writes."""
    k = machine(arch, preset, folio=folio)
    o = Oracle()
    p = k.spawn(0)
    a = p.mmap(2 * MiB)
    addrs = fill(p, o, a, 2 * MiB, 100)
    c = p.fork(1)
    o.fork(p, c)
    for i, x in enumerate(addrs[::3]):
        c.write(x, 5000 + i)
        o.write(c, x, 5000 + i)
    for i, x in enumerate(addrs[1::5]):
        p.write(x, 9000 + i)
        o.write(p, x, 9000 + i)
    validate_isolation(o, [p, c], addrs)
    c.exit()
    validate_isolation(o, [p], addrs)


@pytest.mark.parametrize("arch,preset", ARCH_PRESETS)
def test_partially_mprotected_folio(machine: Callable[..., Kernel], arch: str, preset: str) -> None:
    """mprotect of half a 64K folio splits the VMA and the fork batch; COW still isolates."""
    k = machine(arch, preset, folio=64 * KiB)
    o = Oracle()
    p = k.spawn(0)
    a = p.mmap(256 * KiB)
    addrs = fill(p, o, a, 256 * KiB, 1)
    p.mprotect(a + 32 * KiB, 32 * KiB, "r")
    c = p.fork(1)
    o.fork(p, c)
    p.mprotect(a + 32 * KiB, 32 * KiB, "rw")
    for i, x in enumerate(addrs[:16]):
        p.write(x, 700 + i)
        o.write(p, x, 700 + i)
    validate_isolation(o, [p, c], addrs)


@pytest.mark.parametrize("arch,preset", ARCH_PRESETS)
@pytest.mark.parametrize("folio", [4 * KiB, 64 * KiB])
def test_pinned_page_is_copied_for_the_child(
    machine: Callable[..., Kernel], arch: str, preset: str, folio: int
) -> None:
    """A long-term pinned exclusive page is copied at fork for the child; the parent keeps its
    PTE writable (so the pinned page keeps seeing the parent's writes)."""
    k = machine(arch, preset, folio=folio)
    o = Oracle()
    p = k.spawn(0)
    a = p.mmap(128 * KiB)
    addrs = fill(p, o, a, 128 * KiB, 1)
    target = a + 5 * 4096
    pfn = p.pin(target)
    c = p.fork(1)
    o.fork(p, c)
    assert k.arch.pte_write(p.mm.pte_offset(target).peek())  # type: ignore[union-attr]
    assert c.translate(target) != pfn  # the child got its own copy
    assert p.translate(target) == pfn
    p.write(target, 4242)
    o.write(p, target, 4242)
    validate_isolation(o, [p, c], addrs)
    p.unpin(pfn)


@pytest.mark.parametrize("arch,preset", ARCH_PRESETS)
def test_dontneed_part_of_a_folio(machine: Callable[..., Kernel], arch: str, preset: str) -> None:
    """MADV_DONTNEED of 3 pages in the middle of a 64K folio: those read zero afterwards, the
    rest keep their data, and the partially mapped folio stays correctly accounted."""
    k = machine(arch, preset, folio=64 * KiB)
    o = Oracle()
    p = k.spawn(0)
    a = p.mmap(128 * KiB)
    addrs = fill(p, o, a, 128 * KiB, 10)
    c = p.fork(1)
    o.fork(p, c)
    p.madvise(a + 4 * 4096, 3 * 4096, "dontneed")
    o.discard(p, a + 4 * 4096, 3 * 4096)
    validate_isolation(o, [p, c], addrs)
    p.write(a + 5 * 4096, 77)  # refault: a fresh zeroed page
    o.write(p, a + 5 * 4096, 77)
    validate_isolation(o, [p, c], addrs)


def test_shared_mapping_is_shared_after_fork(machine: Callable[..., Kernel]) -> None:
    """MAP_SHARED anonymous memory is not copied at fork; writes are seen by both."""
    k = machine("x86", "v6.9", folio=64 * KiB)
    o = Oracle()
    p = k.spawn(0)
    a = p.mmap(64 * KiB, shared=True)
    addrs = fill(p, o, a, 64 * KiB, 1)
    c = p.fork(1)
    o.fork(p, c)
    c.write(a, 31337)
    o.write(c, a, 31337)
    assert p.read(a) == 31337
    validate_isolation(o, [p, c], addrs)


def test_broken_refcount_is_caught(machine: Callable[..., Kernel]) -> None:
    """The invariants are not vacuous: a lost reference is reported by the refcount check."""
    from ptesim.kernel.check import validate_all

    k = machine("x86", "v6.9", folio=64 * KiB)
    p = k.spawn(0)
    a = p.mmap(64 * KiB)
    p.write(a, 1)
    folio = k.pages.pfn_to_folio(p.translate(a))
    assert folio is not None
    folio.refcount -= 1
    with pytest.raises(InvariantViolation, match="refcount"):
        validate_all(k)


def test_stale_writable_tlb_entry_is_caught(machine: Callable[..., Kernel]) -> None:
    """A fork that forgets flush_tlb_mm(oldmm) leaves the parent a writable TLB entry for a
    page that is now shared read-only: the coherence check at the end of dup_mmap sees it."""
    k = machine("x86", "v6.9", folio=64 * KiB)
    p = k.spawn(0)
    a = p.mmap(64 * KiB)
    p.write(a, 1)
    k.arch.flush_tlb_mm = lambda mm: None  # type: ignore[method-assign]
    with pytest.raises(InvariantViolation, match="tlb_coherence"):
        p.fork(1)
