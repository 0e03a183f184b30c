"""How much memory a model run needs, and refusing up front what this machine cannot hold.

The model keeps every PTE table as a list of integers and every folio as an object with per-page
lists, so its memory grows with the mapping.  Measured with tracemalloc on ``fork-steady`` (a
parent and a child mapping the same folios): about 860 bytes per 4K page with 4K folios, 294 with
64K folios, 94 with PMD-mapped 2M folios, i.e. roughly 256 bytes per page of PTE tables and
counters plus 604 bytes per folio.  A run whose estimate exceeds half of MemAvailable is refused
with one line naming the largest mapping that would fit, instead of growing until it is killed.
"""

from __future__ import annotations

from ptesim.errors import UsageError
from ptesim.units import format_size

PER_PAGE = 256  # PTE entries of two address spaces, RSS and lookup tables, per base page
PER_FOLIO = 604  # one folio object and its per-page lists and index entries
PER_PAGE_PMD_MAPPED = 100  # a PMD-mapped folio: no PTE table, only its per-page lists
GIB = 1 << 30
HEADROOM = 0.5  # of MemAvailable: the interpreter's own overhead and other users
#: scenarios that allocate a second copy of every page (COW)
COPYING = ("cow-write",)


def state_bytes(mem: int, page: int, folio: int, pmd: int, scenario: str | None = None) -> int:
    """Estimated peak bytes of model state for ``mem`` of ``folio``-sized folios."""
    pages = mem // page
    if folio >= pmd:
        est = pages * PER_PAGE_PMD_MAPPED
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


def check_fits(mem: int, page: int, folio: int, pmd: int, scenario: str | None = None) -> None:
    """Raise a one-line :class:`UsageError` if the model state would not fit in memory."""
    avail = available_bytes()
    if avail is None:
        return
    need = state_bytes(mem, page, folio, pmd, scenario)
    limit = int(avail * HEADROOM)
    if need <= limit:
        return
    per_gib = max(1, state_bytes(1 << 30, page, folio, pmd, scenario))
    fits_gib = limit / per_gib
    raise UsageError(
        f"--mem {format_size(mem)} of {format_size(folio)} folios needs about {need / GIB:.1f}G of model"
        f" state; with {avail / GIB:.1f}G available the limit is {fits_gib:.0f}G of these folios"
    )
