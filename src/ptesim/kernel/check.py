"""Executable invariants: ``validate_*`` checks that the model never reaches a state the kernel
must never reach.  Tests run :func:`validate_all` after every operation; the CLI runs them with
``--check``.  Each raises :class:`ptesim.errors.InvariantViolation` naming the check.

None of these checks count anything: they read the model's state directly.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from ptesim.errors import InvariantViolation
from ptesim.kernel.mm import MM_ANONPAGES, MM_SHMEMPAGES, VM_SHARED, MmStruct

if TYPE_CHECKING:
    from ptesim.kernel.core import Kernel, Task
    from ptesim.kernel.folio import Folio


class _Census:
    """Every mapping in every live mm, read straight from the page tables."""

    def __init__(self, kernel: Kernel) -> None:
        arch = kernel.arch
        g = arch.geometry
        self.pte_maps: Counter[tuple[int, int]] = Counter()  # (folio pfn, page) -> PTE mappings
        self.pmd_maps: Counter[int] = Counter()  # folio pfn -> PMD mappings
        self.writable: defaultdict[tuple[int, int], list[MmStruct]] = defaultdict(list)
        self.rss: dict[int, Counter[str]] = {}
        self.folios: dict[int, Folio] = {}
        for mm in kernel.mms:
            rss: Counter[str] = Counter()
            self.rss[mm.id] = rss
            for table in mm.pte_tables():
                for idx, pte in enumerate(table.entries):
                    if not arch.pte_present(pte) or arch.pte_special(pte):
                        continue
                    addr = table.base + (idx << g.page_shift)
                    pfn = arch.pte_pfn(pte)
                    folio = kernel.pages.pfn_to_folio(pfn)
                    if folio is None:
                        raise InvariantViolation(
                            "mapped_free_page", f"PTE {addr:#x} of mm{mm.id} maps freed PFN {pfn:#x}"
                        )
                    key = (folio.pfn, pfn - folio.pfn)
                    self.folios[folio.pfn] = folio
                    self.pte_maps[key] += 1
                    rss[MM_ANONPAGES if folio.anon else MM_SHMEMPAGES] += 1
                    if arch.pte_write(pte):
                        self.writable[key].append(mm)
            for addr, pmd in mm.pmd_leaves():
                pfn = arch.pte_pfn(pmd)
                folio = kernel.pages.pfn_to_folio(pfn)
                if folio is None:
                    raise InvariantViolation("mapped_free_page", f"PMD {addr:#x} of mm{mm.id} maps freed PFN")
                self.folios[folio.pfn] = folio
                self.pmd_maps[folio.pfn] += 1
                rss[MM_ANONPAGES] += folio.nr_pages
                if arch.pte_write(pmd):
                    for i in range(folio.nr_pages):
                        self.writable[(folio.pfn, i)].append(mm)


def validate_folios(kernel: Kernel, census: _Census | None = None) -> None:
    """refcount = mappings + pins + page-cache references; mapcounts = PTE/PMD mappings;
    _large_mapcount = total mapped pages; no allocated folio is leaked."""
    c = census or _Census(kernel)
    cache_refs: Counter[int] = Counter()
    for task_mm in kernel.mms:
        for vma in task_mm.vmas:
            if vma.file is not None:
                for f in vma.file.pages.values():
                    cache_refs[f.pfn] = 1
    for pfn, folio in list(kernel.pages.by_pfn.items()):
        if folio.zero_page:
            continue
        ptes = sum(c.pte_maps.get((pfn, i), 0) for i in range(folio.nr_pages))
        pmds = c.pmd_maps.get(pfn, 0)
        for i in range(folio.nr_pages):
            want = c.pte_maps.get((pfn, i), 0)
            if folio.mapcount[i] != want:
                raise InvariantViolation(
                    "mapcount", f"{folio!r} page {i}: _mapcount {folio.mapcount[i]} but {want} PTE mappings"
                )
        if folio.entire_mapcount != pmds:
            raise InvariantViolation(
                "mapcount", f"{folio!r}: entire mapcount {folio.entire_mapcount} but {pmds} PMD mappings"
            )
        if kernel.cfg.large_mapcount and folio.large:
            want_large = ptes + pmds * folio.nr_pages
            if folio.large_mapcount != want_large:
                raise InvariantViolation(
                    "large_mapcount",
                    f"{folio!r}: _large_mapcount {folio.large_mapcount}, mapped {want_large}",
                )
        want_ref = ptes + pmds + folio.pincount + cache_refs.get(pfn, 0)
        if folio.refcount != want_ref:
            raise InvariantViolation(
                "refcount",
                f"{folio!r}: refcount {folio.refcount} but {ptes} PTE + {pmds} PMD mappings + "
                f"{folio.pincount} pins + {cache_refs.get(pfn, 0)} page-cache references",
            )


def validate_anon_exclusive(kernel: Kernel, census: _Census | None = None) -> None:
    """No page is writable in two mms; a writable private anonymous page is AnonExclusive; an
    AnonExclusive page is mapped by at most one mm."""
    c = census or _Census(kernel)
    for (pfn, page), mms in c.writable.items():
        folio = c.folios[pfn]
        if len({m.id for m in mms}) > 1 and folio.anon:
            raise InvariantViolation(
                "writable_shared", f"page {page} of {folio!r} is writable in mm{mms[0].id} and mm{mms[1].id}"
            )
        if folio.anon and not folio.anon_exclusive[page]:
            raise InvariantViolation(
                "anon_exclusive", f"page {page} of {folio!r} is mapped writable but not AnonExclusive"
            )
    for pfn, folio in c.folios.items():
        if not folio.anon:
            continue
        for i in range(folio.nr_pages):
            maps = c.pte_maps.get((pfn, i), 0) + c.pmd_maps.get(pfn, 0)
            if folio.anon_exclusive[i] and maps > 1:
                raise InvariantViolation(
                    "anon_exclusive", f"page {i} of {folio!r} is AnonExclusive but mapped {maps} times"
                )


def validate_rss(kernel: Kernel, census: _Census | None = None) -> None:
    c = census or _Census(kernel)
    for mm in kernel.mms:
        want = c.rss[mm.id]
        for key in (MM_ANONPAGES, MM_SHMEMPAGES):
            if mm.rss.get(key, 0) != want.get(key, 0):
                raise InvariantViolation(
                    "rss", f"mm{mm.id} {key} RSS {mm.rss.get(key, 0)} but page tables map {want.get(key, 0)}"
                )


def validate_cont_blocks(kernel: Kernel) -> None:
    """The Arm ARM rule for the contiguous hint (and riscv NAPOT): in a block with the hint set,
    every entry is valid with the hint, PFNs are consecutive from an aligned base, and all
    attributes match apart from access and dirty."""
    arch = kernel.arch
    n = arch.cont_ptes
    if n <= 1:
        return
    for mm in kernel.mms:
        for table in mm.pte_tables():
            ents = table.entries
            for start in range(0, len(ents), n):
                block = ents[start : start + n]
                if not any(arch.pte_valid_cont(p) for p in block):
                    continue
                base = arch.pte_pfn(block[0])
                key0 = arch.pte_cont_key(block[0])
                where = f"mm{mm.id} block {table.base + (start << arch.page_shift):#x}"
                if base % n:
                    raise InvariantViolation("cont_block", f"{where}: base PFN {base:#x} not aligned")
                for i, p in enumerate(block):
                    if not arch.pte_valid_cont(p):
                        raise InvariantViolation(
                            "cont_block", f"{where}: entry {i} lacks the contiguous hint"
                        )
                    if arch.pte_pfn(p) != base + i:
                        raise InvariantViolation("cont_block", f"{where}: entry {i} PFN not consecutive")
                    if arch.pte_cont_key(p) != key0:
                        raise InvariantViolation(
                            "cont_block", f"{where}: entry {i} attributes differ ({p:#x} vs {block[0]:#x})"
                        )


def validate_tlb(kernel: Kernel, mm: MmStruct | None = None, start: int = 0, end: int = 1 << 64) -> None:
    """No CPU holds, for a live address space, a translation the page tables do not allow: a
    different page, a freed page, or write permission the PTE does not give."""
    from ptesim.hw.mmu import walk

    arch = kernel.arch
    live = {m.asid: m for m in kernel.mms if not m.dead}
    page_shift = arch.page_shift
    for cpu in kernel.hw.cpus:
        for (asid, vpn, span), e in cpu.tlb.items():
            m = live.get(asid)
            if m is None or (mm is not None and m is not mm):
                continue
            lo, hi = vpn << page_shift, (vpn + span) << page_shift
            if hi <= start or lo >= end:
                continue
            for i in range(span):
                addr = (vpn + i) << page_shift
                pte, pfn, _ = walk(kernel, m, addr)
                where = f"cpu{cpu.id} caches {addr:#x} of mm{m.id}"
                if kernel.pages.pfn_to_folio(e.pfn + i) is None:
                    raise InvariantViolation("tlb_coherence", f"{where} -> freed PFN {e.pfn + i:#x}")
                if pte is None:
                    raise InvariantViolation("tlb_coherence", f"{where} but the PTE is not present")
                if pfn != e.pfn + i:
                    raise InvariantViolation(
                        "tlb_coherence", f"{where} -> PFN {e.pfn + i:#x}, PTE says {pfn:#x}"
                    )
                if e.writable and not arch.pte_write(pte):
                    raise InvariantViolation("tlb_coherence", f"{where} writable, but the PTE is read-only")


def flush_point_check(kernel: Kernel, mm: object, start: int, end: int, why: str) -> None:
    """Installed as the hardware's flush-point hook when checks are on."""
    assert isinstance(mm, MmStruct)
    if not mm.dead:
        try:
            validate_tlb(kernel, mm, start, end)
        except InvariantViolation as exc:
            raise InvariantViolation(exc.check, f"after {why}: {exc.detail}") from None


def validate_tables(kernel: Kernel) -> None:
    """Page tables exist only under VMAs (none left behind by munmap or exit)."""
    g = kernel.arch.geometry
    for mm in kernel.mms:
        for table in mm.pte_tables():
            lo, hi = table.base, table.base + g.pmd_size
            if not any(v.start < hi and v.end > lo for v in mm.vmas):
                raise InvariantViolation(
                    "pgtable_leak", f"mm{mm.id} keeps a PTE table at {lo:#x} with no VMA"
                )
            for idx, pte in enumerate(table.entries):
                if pte and kernel.arch.pte_present(pte):
                    addr = lo + (idx << g.page_shift)
                    vma = mm.find_vma(addr)
                    if vma is None:
                        raise InvariantViolation("stray_pte", f"mm{mm.id} maps {addr:#x} outside any VMA")
                    if vma.flags & VM_SHARED and kernel.pages.pfn_to_folio(kernel.arch.pte_pfn(pte)) is None:
                        raise InvariantViolation("mapped_free_page", f"mm{mm.id} {addr:#x}")


def validate_all(kernel: Kernel) -> None:
    census = _Census(kernel)
    validate_folios(kernel, census)
    validate_anon_exclusive(kernel, census)
    validate_rss(kernel, census)
    validate_cont_blocks(kernel)
    validate_tables(kernel)
    validate_tlb(kernel)


class Oracle:
    """What each process must read: a shadow of every page's value, by address space.

    Private pages are copied at fork; shared (shmem) pages are shared by object and offset.  The
    oracle is what "data isolation" means: after any sequence of operations, every process reads
    exactly what its own history (and the shared objects it maps) wrote.
    """

    def __init__(self) -> None:
        self.private: dict[int, dict[int, int]] = {}
        self.shared: dict[tuple[int, int], int] = {}

    @staticmethod
    def _shared_key(task: Task, addr: int) -> tuple[int, int] | None:
        vma = task.mm.find_vma(addr)
        assert vma is not None, f"{addr:#x} is not mapped in {task!r}"
        if vma.file is None:
            return None
        return vma.file.id, vma.linear_page_index(addr, task.kernel.arch.page_shift)

    def write(self, task: Task, addr: int, value: int) -> None:
        key = self._shared_key(task, addr)
        if key is not None:
            self.shared[key] = value
        else:
            self.private.setdefault(task.mm.id, {})[addr >> task.kernel.arch.page_shift] = value

    def expect(self, task: Task, addr: int) -> int:
        key = self._shared_key(task, addr)
        if key is not None:
            return self.shared.get(key, 0)
        return self.private.get(task.mm.id, {}).get(addr >> task.kernel.arch.page_shift, 0)

    def fork(self, parent: Task, child: Task) -> None:
        from ptesim.kernel.mm import VM_DONTCOPY, VM_WIPEONFORK

        pm = parent.mm
        shift = parent.kernel.arch.page_shift
        out: dict[int, int] = {}
        for vpn, v in self.private.get(pm.id, {}).items():
            vma = pm.find_vma(vpn << shift)
            if vma is None or vma.flags & (VM_DONTCOPY | VM_WIPEONFORK):
                continue
            out[vpn] = v
        self.private[child.mm.id] = out

    def discard(self, task: Task, addr: int, length: int) -> None:
        """munmap / MADV_DONTNEED of private memory: the pages read zero afterwards."""
        shift = task.kernel.arch.page_shift
        d = self.private.get(task.mm.id, {})
        for vpn in range(addr >> shift, (addr + length) >> shift):
            d.pop(vpn, None)

    def exit(self, task: Task) -> None:
        self.private.pop(task.mm.id, None)


def validate_isolation(oracle: Oracle, tasks: list[Task], addrs: list[int]) -> None:
    """Every task reads, at every address it maps, exactly what the oracle says."""
    for task in tasks:
        for addr in addrs:
            if task.mm.find_vma(addr) is None:
                continue
            got = task.read(addr)
            want = oracle.expect(task, addr)
            if got != want:
                raise InvariantViolation(
                    "isolation", f"{task!r} reads {got} at {addr:#x}, its history says {want}"
                )
