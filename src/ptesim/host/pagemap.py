"""How much of a buffer is really backed by folios of the size asked for.

Reads ``/proc/self/pagemap`` (one 64-bit entry per virtual page) and ``/proc/kpageflags`` (one
64-bit flag word per physical page), as documented in ``Documentation/admin-guide/mm/pagemap.rst``:

* pagemap bit 63 = present, bits 0–54 = PFN (zero unless the reader has CAP_SYS_ADMIN);
* kpageflags ``KPF_COMPOUND_HEAD`` = 15, ``KPF_COMPOUND_TAIL`` = 16, ``KPF_THP`` = 22.

A folio of 2^order pages appears as one head page followed by 2^order - 1 tail pages at consecutive
PFNs.  A run of the buffer counts as backed by a folio of the requested size when it is naturally
aligned both virtually and physically, maps head and tails in order, and the page after the last tail
is not a tail (the folio is not larger).  For order 0 a page counts when it is neither head nor tail.
``tools/mm/thpmaps`` in the kernel tree walks the same two files the same way.  Whether a PMD-size
folio is mapped by a PMD (rather than by 512 PTEs) is read from the ``AnonHugePages`` line of the
buffer's VMA in ``/proc/self/smaps`` (``fs/proc/task_mmu.c``), and only PMD-mapped pages with
``KPF_THP`` count for the PMD size.

Standard library only: this runs inside the lean measuring process.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import asdict, dataclass
from typing import Any

PM_PRESENT = 1 << 63
PM_PFN_MASK = (1 << 55) - 1

KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_THP = 22

_HEAD = 1 << KPF_COMPOUND_HEAD
_TAIL = 1 << KPF_COMPOUND_TAIL
_THP = 1 << KPF_THP


@dataclass(frozen=True)
class Backing:
    """The result of :func:`verify_backing` for one buffer."""

    folio_size: int
    pages: int
    present: int
    matched: int
    pct: float | None
    pmd_mapped_pct: float | None
    verified: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_pagemap(addr: int, length: int, page_size: int) -> array[int]:
    """The pagemap entries of ``[addr, addr + length)``."""
    n = length // page_size
    out: array[int] = array("Q")
    with open("/proc/self/pagemap", "rb") as f:
        data = os.pread(f.fileno(), n * 8, (addr // page_size) * 8)
    out.frombytes(data)
    return out


def read_kpageflags(fd: int, pfn: int, count: int) -> array[int]:
    """Flags of ``count`` physical pages from ``pfn`` (fewer at the end of memory)."""
    out: array[int] = array("Q")
    out.frombytes(os.pread(fd, count * 8, pfn * 8))
    return out


def anon_huge_bytes(addr: int) -> int | None:
    """``AnonHugePages`` of the VMA containing ``addr``, from ``/proc/self/smaps``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("AnonHugePages:"):
                return int(line.split()[1]) * 1024
    return None


def verify_backing(addr: int, length: int, folio_size: int, page_size: int, pmd_size: int) -> Backing:
    """Count the pages of ``[addr, addr + length)`` backed by folios of exactly ``folio_size``."""
    nr = folio_size // page_size
    pages = length // page_size
    entries = read_pagemap(addr, length, page_size)
    present = sum(1 for e in entries if e & PM_PRESENT)
    pfns = [e & PM_PFN_MASK if e & PM_PRESENT else 0 for e in entries]
    if present and not any(pfns):
        return Backing(folio_size, pages, present, 0, None, None, False, "PFNs hidden (not root)")
    try:
        fd = os.open("/proc/kpageflags", os.O_RDONLY)
    except OSError as exc:
        return Backing(folio_size, pages, present, 0, None, None, False, f"kpageflags: {exc}")
    try:
        flags = _flags_for(fd, pfns)
    finally:
        os.close(fd)

    pmd_pct: float | None = None
    if folio_size == pmd_size:
        huge = anon_huge_bytes(addr) or 0
        pmd_pct = 100.0 * min(huge, length) / length if length else 0.0

    matched = 0
    vpage0 = addr // page_size
    i = 0
    while i < pages:
        pfn = pfns[i]
        if not pfn:
            i += 1
            continue
        if nr == 1:
            if not flags[i][0] & (_HEAD | _TAIL):
                matched += 1
            i += 1
            continue
        if (vpage0 + i) % nr or pfn % nr or i + nr > pages:
            i += 1
            continue
        ok = flags[i][0] & _HEAD and not flags[i][0] & _TAIL
        j = 1
        while ok and j < nr:
            ok = pfns[i + j] == pfn + j and bool(flags[i + j][0] & _TAIL)
            j += 1
        ok = ok and not flags[i + nr - 1][1] & _TAIL  # the page after the folio is not a tail
        if ok and folio_size == pmd_size:
            ok = bool(flags[i][0] & _THP)
        if ok:
            matched += nr
            i += nr
        else:
            i += 1
    if pmd_pct is not None:
        matched = min(matched, int(pages * pmd_pct / 100.0))
    pct = 100.0 * matched / pages if pages else 0.0
    return Backing(folio_size, pages, present, matched, round(pct, 2), pmd_pct, True, "")


def _flags_for(fd: int, pfns: list[int]) -> list[tuple[int, int]]:
    """For each page: (flags of its PFN, flags of PFN + 1), reading contiguous PFN runs at once."""
    out: list[tuple[int, int]] = [(0, 0)] * len(pfns)
    i = 0
    n = len(pfns)
    while i < n:
        if not pfns[i]:
            i += 1
            continue
        j = i + 1
        while j < n and pfns[j] == pfns[j - 1] + 1:
            j += 1
        run = read_kpageflags(fd, pfns[i], j - i + 1)
        for k in range(j - i):
            nxt = run[k + 1] if k + 1 < len(run) else 0
            out[i + k] = (run[k], nxt)
        i = j
    return out
