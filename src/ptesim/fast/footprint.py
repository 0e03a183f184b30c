"""How much memory a model run needs, and refusing up front what this machine cannot hold.

The reference engine keeps every PTE table as a list of integers and every folio as an object
with per-page lists, so its memory grows with the mapping.  Measured with tracemalloc on
``fork-steady`` (a parent and a child mapping the same folios): about 860 bytes per 4K page with
4K folios, 294 with 64K folios, 94 with PMD-mapped 2M folios, i.e. roughly 256 bytes per page of
PTE tables and counters plus 604 bytes per folio.

The fast engine holds a uniformly populated PTE table as one linear descriptor and the folios it
maps as one run (:mod:`ptesim.fast.memo`, "Compact state"), so for the scenarios that keep that
form (populating, forks, exits, munmap, MADV_DONTNEED, mprotect and mremap of the whole range: a
zap queues each run whole in the mmu_gather, mremap moves descriptors; a COW write or
MADV_DONTNEED of every page, one page at a time, replays a per-table sweep record,
:mod:`ptesim.fast.sweep`) its memory grows with the number of PTE tables, not pages: measured
peak RSS of ``explain --arch x86 --folio 4K --scenario fork-first`` is 32 MB at 1G and 68 MB at
64G, about 1.1 KiB per 2 MiB table (parent and child); 2 KiB are assumed, plus a fixed allowance
for the tables and runs a record expands at once, plus for MADV_DONTNEED the emptied tables (a
list of zero entries each).

A run whose estimate exceeds half of MemAvailable is refused with one line naming the largest
mapping that would fit, instead of growing until it is killed.
"""

from __future__ import annotations

from ptesim.errors import UsageError
from ptesim.units import format_size

PER_PAGE = 256  # PTE entries of two address spaces, RSS and lookup tables, per base page
PER_FOLIO = 604  # one folio object and its per-page lists and index entries
PER_PAGE_PMD_MAPPED = 100  # a PMD-mapped folio: no PTE table, only its per-page lists
#: fast engine, compact scenarios: bytes per PTE table (two address spaces' tables and one run)
PER_TABLE_COMPACT = 2048
#: fast engine: expanded tables and runs alive at once (records, zaps between compactions)
COMPACT_ALLOWANCE = 256 << 20
GIB = 1 << 30
HEADROOM = 0.5  # of MemAvailable: the interpreter's own overhead and other users
#: scenarios that allocate a second copy of every page (COW)
COPYING = ("cow-write",)
#: scenarios the fast engine runs on compact state from start to end
COMPACT = (
    "populate",
    "fork-first",
    "fork-steady",
    "exit-child",
    "munmap",
    "munmap-threads",
    "dontneed",
    "mprotect",
    "mprotect-threads",
    "mremap",
    "cow-write",
    "dontneed-pages",
)
#: compact scenarios that leave every PTE table emptied in list form
EMPTIED = ("dontneed",)


def state_bytes(
    mem: int, page: int, folio: int, pmd: int, scenario: str | None = None, *, compact: bool = False
) -> int:
    """Estimated peak bytes of model state for ``mem`` of ``folio``-sized folios (``compact``:
    the fast engine runs this machine and its tables can be linear, ``Arch.ptes_linear``)."""
    pages = mem // page
    if folio >= pmd:
        est = pages * PER_PAGE_PMD_MAPPED
        if compact and scenario in COPYING:
            # the child's copies of the split THPs: tables and runs compacted as the sweep goes
            return est + (pages // (pmd // page) + 1) * PER_TABLE_COMPACT + COMPACT_ALLOWANCE
    elif compact and scenario in COMPACT:
        per_table = PER_TABLE_COMPACT + (pmd // page * 8 + 64 if scenario in EMPTIED else 0)
        return (pages // (pmd // page) + 1) * per_table + COMPACT_ALLOWANCE
    else:
        est = pages * PER_PAGE + (pages // max(1, folio // page)) * PER_FOLIO
    if scenario in COPYING:
        est += pages * (PER_PAGE + PER_FOLIO)
    return est


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(
    mem: int, page: int, folio: int, pmd: int, scenario: str | None = None, *, compact: bool = False
) -> None:
    """Raise a one-line :class:`UsageError` if the model state would not fit in memory."""
    avail = available_bytes()
    if avail is None:
        return
    need = state_bytes(mem, page, folio, pmd, scenario, compact=compact)
    limit = int(avail * HEADROOM)
    if need <= limit:
        return
    per_gib = max(1, state_bytes(1 << 30, page, folio, pmd, scenario, compact=compact))
    fits_gib = limit / per_gib
    engine = "fast engine, " if compact and scenario in COMPACT and folio < pmd else ""
    raise UsageError(
        f"--mem {format_size(mem)} of {format_size(folio)} folios needs about {need / GIB:.1f}G of model"
        f" state ({engine}{scenario or 'this run'}); with {avail / GIB:.1f}G available the limit is"
        f" {fits_gib:.0f}G of these folios"
    )
