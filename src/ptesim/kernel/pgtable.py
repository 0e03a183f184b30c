"""Page-table memory: the tables, entry pointers, and the raw accesses that are counted.

The model's page tables are real tables: a PTE table is a list of integer entries laid out by the
arch's bit format, and upper levels hold child tables or leaf entries (a PMD-mapped THP).  A
:class:`Ptep` is the model's ``pte_t *``: a table and an index, with pointer arithmetic.

Only four functions touch PTE memory on behalf of the kernel, and each emits exactly one primitive:
:func:`ptep_load` (``READ_ONCE``), :func:`ptep_store` (``WRITE_ONCE``), :func:`ptep_xchg` and
:func:`ptep_cmpxchg` / :func:`ptep_bitop`.  The hardware walker (``ptesim.hw``) reads and updates
entries directly, without counting: that is the MMU, not the kernel.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ptesim.events import emit

if TYPE_CHECKING:
    from ptesim.kernel.mm import MmStruct


@dataclass(frozen=True)
class Geometry:
    """Translation-table geometry of one granule: the shift of each level, top to bottom.

    ``shifts[-1]`` is PAGE_SHIFT (PTE level), ``shifts[-2]`` is PMD_SHIFT.
    """

    page_shift: int
    shifts: tuple[int, ...]
    va_bits: int
    _masks: tuple[int, ...] = ()

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @property
    def ptrs_per_table(self) -> int:
        return 1 << (self.page_shift - 3)

    @property
    def ptrs_per_pte(self) -> int:
        return self.ptrs_per_table

    @property
    def pmd_shift(self) -> int:
        return self.shifts[-2]

    @property
    def pmd_size(self) -> int:
        return 1 << self.pmd_shift

    @property
    def pmd_order(self) -> int:
        return self.pmd_shift - self.page_shift

    @property
    def levels(self) -> int:
        return len(self.shifts)

    def entries_at(self, level: int) -> int:
        """Entries in a table of ``level`` (0 = top)."""
        if level == 0:
            return 1 << (self.va_bits - self.shifts[0])
        return self.ptrs_per_table

    def index(self, level: int, addr: int) -> int:
        return (addr >> self.shifts[level]) & self._masks[level]

    def __post_init__(self) -> None:
        masks = tuple(self.entries_at(level) - 1 for level in range(len(self.shifts)))
        object.__setattr__(self, "_masks", masks)


#: 4-level tables for a 4K granule (x86-64, arm64 4K, riscv Sv48).
GEOMETRY_4K = Geometry(page_shift=12, shifts=(39, 30, 21, 12), va_bits=48)
#: arm64 16K granule, 48-bit VA: 4 levels, 2048 entries per table, PMD maps 32M.
GEOMETRY_16K = Geometry(page_shift=14, shifts=(47, 36, 25, 14), va_bits=48)
#: arm64 64K granule, 48-bit VA: 3 levels, 8192 entries per table, PMD maps 512M.
GEOMETRY_64K = Geometry(page_shift=16, shifts=(42, 29, 16), va_bits=48)


class PteTable:
    """One PTE table page: ``ptrs_per_pte`` entries, owned by one mm.

    The fast engine may hold a table whose entries are ``first + i * step`` (consecutive PFNs, the
    same bits; or, with ``step`` 0, a table a zap emptied) as just ``linear = (first, step, n)``,
    with the ``entries`` slot empty: the first
    read of ``entries`` builds the list (``__getattr__`` runs only for an empty slot, so a table
    in list form costs nothing extra).  A table that is linear only over ``[lo, hi)`` and holds
    ``fill`` elsewhere (one an mremap moved a part of, into or out of) is held as ``window =
    (fill, lo, hi, first, step, n)`` (``linear`` None), expanded the same way."""

    __slots__ = ("base", "entries", "linear", "mm", "window")

    def __init__(self, mm: MmStruct, base: int, n: int) -> None:
        self.mm = mm
        self.base = base
        self.entries: list[int] = [0] * n
        self.linear: tuple[int, int, int] | None = None
        self.window: tuple[int, int, int, int, int, int] | None = None

    def __getattr__(self, name: str) -> list[int]:
        lin = self.linear if name == "entries" else None
        if lin is None:
            win = self.window if name == "entries" else None
            if win is None:
                raise AttributeError(name)
            fill, lo, hi, first, step, n = win
            self.window = None
            ents = [fill] * n
            ents[lo:hi] = range(first + lo * step, first + hi * step, step)
            self.entries = ents
            fast = self.mm.kernel.fast
            if fast is not None:
                fast.materialised_tables.append(self)
            return ents
        first, step, n = lin
        self.linear = None
        if not step:  # n equal entries (an emptied table): nothing to compact again
            self.entries = [first] * n
            return self.entries
        self.entries = list(range(first, first + n * step, step))
        fast = self.mm.kernel.fast
        if fast is not None:
            fast.materialised_tables.append(self)
        return self.entries

    def make_linear(self, first: int, step: int, n: int) -> None:
        """Hold the entries ``first + i * step`` (i < n) in compact form (fast engine only)."""
        with contextlib.suppress(AttributeError):  # an empty slot (already compact)
            del self.entries
        self.window = None
        self.linear = (first, step, n)

    def make_window(self, fill: int, lo: int, hi: int, first: int, step: int, n: int) -> None:
        """Hold entries ``first + i * step`` for ``lo <= i < hi`` and ``fill`` elsewhere in compact
        form (fast engine only)."""
        with contextlib.suppress(AttributeError):
            del self.entries
        self.linear = None
        self.window = (fill, lo, hi, first, step, n)

    def __repr__(self) -> str:
        return f"<PteTable {self.base:#x} of mm{self.mm.id}>"


class UpperTable:
    """A PGD/PUD/PMD table.  Entries are child tables, or integers for leaf (huge) entries."""

    __slots__ = ("base", "entries", "level", "mm")

    def __init__(self, mm: MmStruct, level: int, base: int) -> None:
        self.mm = mm
        self.level = level
        self.base = base
        self.entries: dict[int, UpperTable | PteTable | int] = {}


class Ptep:
    """``pte_t *``: a PTE table and an index into it.  ``ptep + n`` is pointer arithmetic."""

    __slots__ = ("idx", "table")

    def __init__(self, table: PteTable, idx: int) -> None:
        self.table = table
        self.idx = idx

    def __add__(self, n: int) -> Ptep:
        return Ptep(self.table, self.idx + n)

    def __sub__(self, other: Ptep) -> int:
        assert other.table is self.table
        return self.idx - other.idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ptep) and other.table is self.table and other.idx == self.idx

    def __hash__(self) -> int:
        return hash((id(self.table), self.idx))

    def __repr__(self) -> str:
        return f"<ptep {self.table.base:#x}[{self.idx}]>"

    def peek(self) -> int:
        """The entry's value without counting: for checks and the hardware walker only."""
        return self.table.entries[self.idx]

    def align_down(self, n: int) -> Ptep:
        return Ptep(self.table, self.idx & ~(n - 1))


# ---------------------------------------------------------------------------------------------
# Counted accesses to PTE memory.
# ---------------------------------------------------------------------------------------------


def ptep_load(ptep: Ptep) -> int:
    """``READ_ONCE(*ptep)``: one counted PTE read."""
    emit("pte_read", mm=ptep.table.mm)
    return ptep.table.entries[ptep.idx]


def ptep_load_block(ptep: Ptep, nr: int) -> list[int]:
    """``nr`` consecutive ``READ_ONCE`` loads from ``ptep``: ``nr`` counted PTE reads, recorded at
    once (the contpte gather loop is the model's hottest path)."""
    emit("pte_read", nr, mm=ptep.table.mm)
    return ptep.table.entries[ptep.idx : ptep.idx + nr]


def ptep_store(ptep: Ptep, pte: int) -> None:
    """``WRITE_ONCE(*ptep, pte)``: one counted PTE store."""
    emit("pte_write", mm=ptep.table.mm)
    ptep.table.entries[ptep.idx] = pte


def ptep_xchg(ptep: Ptep, pte: int) -> int:
    """``xchg_relaxed(&ptep->pte, pte)``: one counted atomic exchange; returns the old value."""
    emit("pte_xchg", mm=ptep.table.mm)
    old = ptep.table.entries[ptep.idx]
    ptep.table.entries[ptep.idx] = pte
    return old


def ptep_cmpxchg(ptep: Ptep, old: int, new: int) -> int:
    """``cmpxchg_relaxed``: one counted attempt; returns the value found (== ``old`` on success)."""
    emit("pte_cmpxchg", mm=ptep.table.mm)
    found = ptep.table.entries[ptep.idx]
    if found == old:
        ptep.table.entries[ptep.idx] = new
    return found


def ptep_bitop(ptep: Ptep, clear: int = 0, set_: int = 0) -> int:
    """One atomic bit operation (x86 ``clear_bit``, riscv ``amoand``/``amoor``); returns the old value."""
    emit("pte_bitop", mm=ptep.table.mm)
    old = ptep.table.entries[ptep.idx]
    ptep.table.entries[ptep.idx] = (old & ~clear) | set_
    return old
