"""The observable state of a model machine, for comparing two engines.

:func:`machine_state` lists every page table entry, every folio (all its fields, contents
included), every live address space's VMAs and counters, the allocator and every CPU's TLB, in a
canonical order; :func:`machine_counts` every count under its (primitive, phase, call chain) key.
Two runs agree when both are equal.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptesim.kernel.core import Kernel


def _plain(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_plain(x) for x in v)
    if isinstance(v, set | frozenset):
        return tuple(sorted(v))
    if isinstance(v, dict):
        return tuple(sorted((k, _plain(x)) for k, x in v.items()))
    return v


def machine_state(k: Kernel) -> dict[str, Any]:
    from ptesim.kernel.folio import Folio

    mms = []
    for mm in sorted(k.mms, key=lambda m: m.id):
        tables = tuple(sorted((t.base, tuple(t.entries)) for t in mm.pte_tables()))
        vmas = tuple(
            (v.start, v.end, v.flags, v.page_prot, v.anon_vma, v.file.id if v.file else None, v.pgoff)
            for v in sorted(mm.vmas, key=lambda v: v.start)
        )
        mms.append(
            (
                mm.id,
                mm.asid,
                vmas,
                tables,
                tuple(mm.pmd_leaves()),
                tuple(sorted((n, c) for n, c in mm.rss.items() if c)),
                mm.nr_ptes,
                mm.has_pinned,
                mm.write_protect_seq,
                mm.dead,
                tuple(sorted(mm.cpumask)),
            )
        )
    fields = [f for f in Folio.__slots__ if f != "pfn"]
    folios = tuple(
        (pfn, tuple(_plain(getattr(f, n)) for n in fields)) for pfn, f in sorted(k.pages.by_pfn.items())
    )
    tlbs = tuple(
        (c.id, c.current_asid, tuple(sorted((key, e.pfn, e.writable) for key, e in c.tlb.entries.items())))
        for c in k.hw.cpus
    )
    return {
        "mms": tuple(mms),
        "folios": folios,
        "allocator": (k.pages.allocated, k.pages._next_pfn, _free_lists(k)),
        "tlbs": tlbs,
    }


def _free_lists(k: Kernel) -> tuple[Any, ...]:
    """The free PFNs of each order in push order (a ``range`` the fast engine pushed at once is
    its PFNs)."""
    return tuple(
        sorted(
            (order, tuple(p for x in v for p in (x if type(x) is range else (x,))))
            for order, v in k.pages._free.items()
        )
    )


def machine_counts(k: Kernel) -> Counter[tuple[str, str, tuple[str, ...]]]:
    return k.sink.full_counts()
