"""Per-CPU TLBs.

An entry caches one translation of ``span`` pages for one ASID: a base page (span 1), a contiguous
block (arm64 PTE_CONT, riscv NAPOT: span = CONT_PTES) or a PMD block.  Entries remember whether they
allow writes.  The TLB is deliberately generous (a large capacity, FIFO eviction) so that stale
entries survive long enough for the coherence check to see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

Key = tuple[int, int, int]  # (asid, first vpn of the span, span in pages)


@dataclass(slots=True)
class TlbEntry:
    pfn: int  # PFN mapped by the first page of the span
    writable: bool


class Tlb:
    """One CPU's unified TLB."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self.entries: dict[Key, TlbEntry] = {}
        self.spans: set[int] = {1}

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, asid: int, vpn: int) -> tuple[Key, TlbEntry] | None:
        for span in self.spans:
            key = (asid, vpn & ~(span - 1), span)
            e = self.entries.get(key)
            if e is not None:
                return key, e
        return None

    def translations(self, asid: int) -> dict[int, int]:
        """Virtual page number -> PFN of every page ``asid`` can translate, each answered as
        :meth:`lookup` answers it (where entries of two spans overlap, the same one wins)."""
        out: dict[int, int] = {}
        order = list(self.spans)
        rank = {span: r for r, span in enumerate(order)}
        mine = sorted(
            ((k, e) for k, e in self.entries.items() if k[0] == asid), key=lambda ke: -rank[ke[0][2]]
        )
        for (_asid, first, span), e in mine:  # lookup's first span is written last
            for i in range(span):
                out[first + i] = e.pfn + i
        return out

    def insert(self, asid: int, vpn: int, span: int, pfn_base: int, writable: bool) -> None:
        key = (asid, vpn & ~(span - 1), span)
        if key not in self.entries and len(self.entries) >= self.capacity:
            del self.entries[next(iter(self.entries))]
        self.spans.add(span)
        self.entries[key] = TlbEntry(pfn_base, writable)

    def drop(self, key: Key) -> None:
        self.entries.pop(key, None)

    # -- architectural invalidation effects --------------------------------------------------
    def invalidate_range(self, asid: int | None, vpn: int, npages: int) -> int:
        """Drop every entry of ``asid`` (None: any ASID) overlapping ``[vpn, vpn + npages)``."""
        end = vpn + npages
        victims = [
            k for k in self.entries if (asid is None or k[0] == asid) and k[1] < end and k[1] + k[2] > vpn
        ]
        for k in victims:
            del self.entries[k]
        return len(victims)

    def invalidate_asid(self, asid: int) -> None:
        for k in [k for k in self.entries if k[0] == asid]:
            del self.entries[k]

    def invalidate_all(self) -> None:
        self.entries.clear()

    def items(self) -> Iterator[tuple[Key, TlbEntry]]:
        return iter(list(self.entries.items()))
