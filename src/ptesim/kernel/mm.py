"""``struct mm_struct``, ``struct vm_area_struct``, shared anonymous memory, and the page-table walk.

VM_* flag values are the kernel's (``include/linux/mm.h``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ptesim.events import emit
from ptesim.kernel.folio import Folio
from ptesim.kernel.pgtable import Ptep, PteTable, UpperTable

if TYPE_CHECKING:
    from ptesim.arch.base import Pmdp
    from ptesim.kernel.core import Kernel

VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_PFNMAP = 0x00000400
VM_UFFD_WP = 0x00001000
VM_DONTCOPY = 0x00020000
VM_WIPEONFORK = 0x02000000
VM_SOFTDIRTY = 0x08000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000

MM_ANONPAGES = "anon"
MM_SHMEMPAGES = "shmem"


def is_cow_mapping(flags: int) -> bool:
    """include/linux/mm.h: private and may be written."""
    return (flags & (VM_SHARED | VM_MAYWRITE)) == VM_MAYWRITE


class ShmemFile:
    """The shmem object behind a shared anonymous mapping: a page cache of order-0 folios."""

    _next = 0

    def __init__(self, nr_pages: int) -> None:
        ShmemFile._next += 1
        self.id = ShmemFile._next
        self.nr_pages = nr_pages
        self.pages: dict[int, Folio] = {}
        self.users = 0

    def put(self, kernel: Kernel) -> None:
        """fput() of one mapping's reference.  The last one evicts the inode (shmem_evict_inode ->
        shmem_truncate_range): every page-cache folio loses the page cache's reference."""
        self.users -= 1
        if self.users == 0:
            for folio in self.pages.values():
                kernel.pages.folio_put(folio)
            self.pages.clear()


@dataclass(eq=False)
class Vma:
    """``struct vm_area_struct``: [start, end) of one mm with one set of flags."""

    mm: MmStruct
    start: int
    end: int
    flags: int
    page_prot: int
    anon_vma: bool = False
    file: ShmemFile | None = None
    pgoff: int = 0  # page offset into ``file``

    def __repr__(self) -> str:
        return f"<vma {self.start:#x}-{self.end:#x} flags={self.flags:#x} mm{self.mm.id}>"

    @property
    def shared(self) -> bool:
        return bool(self.flags & VM_SHARED)

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    def linear_page_index(self, addr: int, page_shift: int) -> int:
        return self.pgoff + ((addr - self.start) >> page_shift)


def vm_area_dup(orig: Vma, mm: MmStruct | None = None) -> Vma:
    """kernel/fork.c : vm_area_dup(): a copy of ``orig`` (for ``mm``, by default the same one),
    holding its own reference on the shmem object behind it."""
    new = dataclasses.replace(orig, mm=orig.mm if mm is None else mm)
    if new.file is not None:
        new.file.users += 1
    return new


class MmStruct:
    """One address space: VMAs, page tables, RSS counters, ASID, mm_cpumask, MMF_HAS_PINNED."""

    def __init__(self, kernel: Kernel, mm_id: int, asid: int) -> None:
        self.kernel = kernel
        self.id = mm_id
        self.asid = asid
        self.vmas: list[Vma] = []
        g = kernel.arch.geometry
        self.pgd = UpperTable(self, 0, 0)
        self.rss: Counter[str] = Counter()
        self.cpumask: set[int] = set()
        self.has_pinned = False  # MMF_HAS_PINNED
        #: tasks (threads) using this mm (mm_users)
        self.users = 1
        #: x86 broadcast ASID (arch/x86/mm/tlb.c, v6.15): handed out to an mm active on > 3 CPUs
        self.global_asid = False
        #: CPUs still running this mm on their per-CPU ASID since it got the global one
        self.asid_transition: set[int] = set()
        self.write_protect_seq = 0
        self.dead = False
        self.nr_ptes = 0
        self._geometry = g
        #: PMD tables by the address range they cover (a lookup cache; dropped when tables are freed)
        self._pmd_cache: dict[int, UpperTable] = {}
        self._pud_shift = g.shifts[g.levels - 3]

    def __repr__(self) -> str:
        return f"<mm{self.id} asid={self.asid}>"

    # ---- VMAs -------------------------------------------------------------------------------
    def find_vma(self, addr: int) -> Vma | None:
        for vma in self.vmas:
            if vma.start <= addr < vma.end:
                return vma
        return None

    def sort_vmas(self) -> None:
        self.vmas.sort(key=lambda v: v.start)

    # ---- page-table walk (uncounted: table pointers, not entries) ------------------------------
    def pmd_table(self, addr: int, alloc: bool) -> UpperTable | None:
        """The PMD-level table covering ``addr`` (pgd/p4d/pud_alloc when ``alloc``)."""
        cached = self._pmd_cache.get(addr >> self._pud_shift)
        if cached is not None:
            return cached
        g = self._geometry
        table = self.pgd
        for level in range(g.levels - 2):
            idx = g.index(level, addr)
            nxt = table.entries.get(idx)
            if nxt is None:
                if not alloc:
                    return None
                base = addr & ~((1 << g.shifts[level]) - 1)
                nxt = UpperTable(self, level + 1, base)
                emit("pgtable_alloc", mm=self)
                table.entries[idx] = nxt
            assert isinstance(nxt, UpperTable)
            table = nxt
        self._pmd_cache[addr >> self._pud_shift] = table
        return table

    def forget_tables(self) -> None:
        """Drop the lookup cache after upper-level tables were freed."""
        self._pmd_cache.clear()

    def pmdp(self, addr: int, alloc: bool) -> Pmdp | None:
        from ptesim.arch.base import Pmdp

        table = self.pmd_table(addr, alloc)
        if table is None:
            return None
        return Pmdp(table, self._geometry.index(self._geometry.levels - 2, addr))

    def pmd_entry(self, addr: int) -> PteTable | int | None:
        """What the PMD for ``addr`` holds: a PTE table, a huge leaf value, or None."""
        table = self.pmd_table(addr, False)
        if table is None:
            return None
        v = table.entries.get(self._geometry.index(self._geometry.levels - 2, addr))
        assert not isinstance(v, UpperTable)
        return v

    def pte_offset(self, addr: int) -> Ptep | None:
        """pte_offset_map(): the PTE for ``addr`` if a PTE table exists."""
        v = self.pmd_entry(addr)
        if not isinstance(v, PteTable):
            return None
        return Ptep(v, (addr >> self._geometry.page_shift) & (self._geometry.ptrs_per_pte - 1))

    def pte_alloc(self, addr: int) -> Ptep | None:
        """pte_alloc_map(): allocate the PTE table if needed; None if the PMD is a huge leaf."""
        g = self._geometry
        table = self.pmd_table(addr, True)
        assert table is not None
        idx = g.index(g.levels - 2, addr)
        v = table.entries.get(idx)
        if v is None:
            v = PteTable(self, addr & ~(g.pmd_size - 1), g.ptrs_per_pte)
            emit("pgtable_alloc", mm=self)
            self.nr_ptes += 1
            table.entries[idx] = v
        if not isinstance(v, PteTable):
            return None
        return Ptep(v, (addr >> g.page_shift) & (g.ptrs_per_pte - 1))

    def pte_tables(self) -> list[PteTable]:
        out: list[PteTable] = []

        def walk(t: UpperTable) -> None:
            for v in t.entries.values():
                if isinstance(v, UpperTable):
                    walk(v)
                elif isinstance(v, PteTable):
                    out.append(v)

        walk(self.pgd)
        return out

    def pmd_leaves(self) -> list[tuple[int, int]]:
        """(address, value) of every PMD-mapped THP."""
        g = self._geometry
        out: list[tuple[int, int]] = []

        def walk(t: UpperTable) -> None:
            for idx, v in t.entries.items():
                if isinstance(v, UpperTable):
                    walk(v)
                elif isinstance(v, int) and t.level == g.levels - 2:
                    out.append((t.base + (idx << g.pmd_shift), v))

        walk(self.pgd)
        return out
