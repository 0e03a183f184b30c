"""Backing verification through /proc/self/pagemap and /proc/kpageflags, on this kernel."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptesim.host.pagemap import verify_backing
from ptesim.host.runner import MADV_HUGEPAGE, MADV_NOHUGEPAGE, Buffer
from ptesim.host.sysfs import HostSession, ThpSysfs, quiescent_settings, settings_for_size

THP = Path("/sys/kernel/mm/transparent_hugepage")
HOST_OK = sys.platform.startswith("linux") and os.geteuid() == 0 and any(THP.glob("hugepages-*kB/enabled"))
pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not HOST_OK, reason="needs Linux, root and mTHP sysfs"),
]

PAGE = 4096
PMD = 2 << 20
MEM = 32 << 20


@pytest.fixture
def session() -> Iterator[HostSession]:
    sysfs = ThpSysfs()
    before = quiescent_settings(sysfs)
    with HostSession(sysfs) as s:
        yield s
    assert quiescent_settings(sysfs) == before


def _populated(session: HostSession, size: int, advice: int | None = None) -> Buffer:
    session.push(settings_for_size(session.sysfs, size, PAGE, "always"))
    try:
        buf = Buffer(MEM, max(size, PAGE))
        if advice is not None:
            buf.madvise(advice)
        buf.populate()
    finally:
        session.pop()
    return buf


@pytest.mark.parametrize("size", [PAGE, 16 << 10, 64 << 10, PMD])
def test_buffer_is_backed_by_the_size_asked_for(session: HostSession, size: int) -> None:
    """With one size enabled, at least 90% of a populated buffer is folios of exactly that size."""
    buf = _populated(session, size, MADV_NOHUGEPAGE if size == PAGE else None)
    try:
        b = verify_backing(buf.addr, buf.length, size, PAGE, PMD)
    finally:
        buf.unmap()
    assert b.verified and b.present == b.pages == MEM // PAGE
    assert b.pct is not None and b.pct >= 90.0
    if size == PMD:
        assert b.pmd_mapped_pct is not None and b.pmd_mapped_pct >= 90.0


def test_other_sizes_are_not_counted(session: HostSession) -> None:
    """A buffer of 64K folios is not counted as 4K, 16K or 2M backing."""
    buf = _populated(session, 64 << 10)
    try:
        assert verify_backing(buf.addr, buf.length, 64 << 10, PAGE, PMD).pct == 100.0
        for other in (PAGE, 16 << 10, 128 << 10, PMD):
            assert verify_backing(buf.addr, buf.length, other, PAGE, PMD).pct == 0.0
    finally:
        buf.unmap()


def test_madvise_mode_needs_madv_hugepage(session: HostSession) -> None:
    """With the size at 'madvise', only an MADV_HUGEPAGE'd buffer gets 2M folios."""
    session.push(settings_for_size(session.sysfs, PMD, PAGE, "madvise"))
    try:
        plain = Buffer(MEM, PMD)
        plain.populate()
        advised = Buffer(MEM, PMD)
        advised.madvise(MADV_HUGEPAGE)
        advised.populate()
    finally:
        session.pop()
    try:
        assert verify_backing(plain.addr, plain.length, PMD, PAGE, PMD).pct == 0.0
        assert (verify_backing(advised.addr, advised.length, PMD, PAGE, PMD).pct or 0) >= 90.0
    finally:
        plain.unmap()
        advised.unmap()


def test_unpopulated_buffer_has_no_backing() -> None:
    """Pages never touched are not present and count for nothing."""
    buf = Buffer(1 << 20, PAGE)
    try:
        b = verify_backing(buf.addr, buf.length, PAGE, PAGE, PMD)
    finally:
        buf.unmap()
    assert b.present == 0 and b.matched == 0 and b.pct == 0.0
