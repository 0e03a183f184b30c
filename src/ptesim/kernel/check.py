"""Executable invariants: ``validate_*`` checks that the model never reaches a state the kernel
must never reach.  Tests run :func:`validate_all` after every operation; the CLI runs them with
``--check``.  Each raises :class:`ptesim.errors.InvariantViolation` naming the check.

None of these checks count anything: they read the model's state directly.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import compress
from typing import TYPE_CHECKING

from ptesim.errors import InvariantViolation
from ptesim.kernel.mm import MM_ANONPAGES, MM_SHMEMPAGES, VM_SHARED, MmStruct

if TYPE_CHECKING:
    from ptesim.kernel.core import Kernel, Task
    from ptesim.kernel.folio import Folio
    from ptesim.kernel.pgtable import PteTable


#: what a table walk returns where nothing is present
_NOT_PRESENT: tuple[None, int, int] = (None, 0, 1)


class Census:
    """Every mapping in every live mm, read straight from the page tables in one pass.

    One census serves every check run at the same moment (the fuzzer runs a dozen after each
    step): the folio and mapcount tallies, and each mm's present leaves in address order."""

    def __init__(self, kernel: Kernel) -> None:
        arch = kernel.arch
        g = arch.geometry
        shift = g.page_shift
        pfn_to_folio = kernel.pages.pfn_to_folio
        present, special, pte_pfn, pte_write = (
            arch.pte_present,
            arch.pte_special,
            arch.pte_pfn,
            arch.pte_write,
        )
        self.kernel = kernel
        self.pte_maps: dict[tuple[int, int], int] = {}  # (folio pfn, page) -> PTE mappings
        self.pmd_maps: Counter[int] = Counter()  # folio pfn -> PMD mappings
        self.writable: defaultdict[tuple[int, int], list[MmStruct]] = defaultdict(list)
        self.rss: dict[int, Counter[str]] = {}
        self.folios: dict[int, Folio] = {}
        #: mm id -> its PTE tables
        self.tables: dict[int, list[PteTable]] = {}
        #: mm id -> (address, entry, pages per leaf, PFN) of every present PTE, then every PMD leaf
        self.leaves: dict[int, list[tuple[int, int, int, int]]] = {}
        self._walks: dict[int, dict[int, tuple[int, int, int]]] = {}
        pte_maps = self.pte_maps
        folio: Folio | None = None
        kind = MM_ANONPAGES
        for mm in kernel.mms:
            rss: Counter[str] = Counter()
            self.rss[mm.id] = rss
            leaves: list[tuple[int, int, int, int]] = []
            self.leaves[mm.id] = leaves
            tables = self.tables[mm.id] = mm.pte_tables()
            for table in tables:
                base = table.base
                ents = table.entries
                # the non-zero entries with their indices, without a Python-level loop over the empty ones
                for idx, pte in zip(compress(range(len(ents)), ents), filter(None, ents), strict=True):
                    if not present(pte):
                        continue
                    addr = base + (idx << shift)
                    pfn = pte_pfn(pte)
                    leaves.append((addr, pte, 1, pfn))
                    if special(pte):
                        continue
                    if folio is None or not folio.pfn <= pfn < folio.end_pfn:
                        # neighbouring entries mostly map the same folio: look up only a new one
                        folio = pfn_to_folio(pfn)
                        if folio is None:
                            raise InvariantViolation(
                                "mapped_free_page", f"PTE {addr:#x} of mm{mm.id} maps freed PFN {pfn:#x}"
                            )
                        self.folios[folio.pfn] = folio
                        kind = MM_ANONPAGES if folio.anon else MM_SHMEMPAGES
                    key = (folio.pfn, pfn - folio.pfn)
                    pte_maps[key] = pte_maps.get(key, 0) + 1
                    rss[kind] += 1
                    if pte_write(pte):
                        self.writable[key].append(mm)
            for addr, pmd in mm.pmd_leaves():
                pfn = pte_pfn(pmd)
                huge = pfn_to_folio(pfn)  # not ``folio``: that one goes with ``kind``
                if huge is None:
                    raise InvariantViolation("mapped_free_page", f"PMD {addr:#x} of mm{mm.id} maps freed PFN")
                leaves.append((addr, pmd, 1 << g.pmd_order, pfn))
                self.folios[huge.pfn] = huge
                self.pmd_maps[huge.pfn] += 1
                rss[MM_ANONPAGES] += huge.nr_pages
                if pte_write(pmd):
                    for i in range(huge.nr_pages):
                        self.writable[(huge.pfn, i)].append(mm)

    def walks(self, mm: MmStruct) -> dict[int, tuple[int, int, int]]:
        """Virtual page number -> what :func:`ptesim.hw.mmu.walk` returns there, for every page
        a walk of ``mm`` finds present: (leaf entry, PFN, pages a TLB entry filled from it spans)."""
        m = self._walks.get(mm.id)
        if m is None:
            arch = self.kernel.arch
            shift = arch.page_shift
            m = {}
            for addr, entry, span, pfn in self.leaves[mm.id]:
                vpn = addr >> shift
                if span == 1:
                    m[vpn] = (entry, pfn, arch.tlb_span(entry))
                elif arch.pte_present(entry):  # a PMD leaf: one TLB entry of the whole block
                    for i in range(span):
                        m[vpn + i] = (entry, pfn + i, span)
            self._walks[mm.id] = m
        return m

    def present_leaves(self, mm: MmStruct) -> list[tuple[int, int, int]]:
        """(address, entry, entries per leaf) of every present PTE, and of every PMD leaf."""
        return [(addr, entry, span) for addr, entry, span, _pfn in self.leaves[mm.id]]


def validate_folios(kernel: Kernel, census: Census | None = None) -> None:
    """refcount = mappings + pins + page-cache references; mapcounts = PTE/PMD mappings;
    _large_mapcount = total mapped pages; no allocated folio is leaked."""
    c = census or Census(kernel)
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


def validate_anon_exclusive(kernel: Kernel, census: Census | None = None) -> None:
    """No page is writable in two mms; a writable private anonymous page is AnonExclusive; an
    AnonExclusive page is mapped by at most one mm."""
    c = census or Census(kernel)
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


def validate_rss(kernel: Kernel, census: Census | None = None) -> None:
    c = census or Census(kernel)
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
                if not any(block) or not any(map(arch.pte_valid_cont, block)):
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


def validate_tlb(
    kernel: Kernel,
    mm: MmStruct | None = None,
    start: int = 0,
    end: int = 1 << 64,
    census: Census | None = None,
) -> None:
    """No CPU holds, for a live address space, a translation the page tables do not allow: a
    different page, a freed page, or write permission the PTE does not give.  With a census of
    the current tables, its walks stand in for table walks."""
    from ptesim.hw.mmu import walk

    arch = kernel.arch
    live = {m.asid: m for m in kernel.mms if not m.dead}
    page_shift = arch.page_shift
    # A contiguous-bit change (fold/unfold) is break-before-make: unless the CPU tolerates both
    # sizes at once (BBML2_NOABORT), no CPU may keep an entry of the old size (Arm ARM D8.7.1).
    from ptesim.arch.arm64.contpte import ContPteArch

    spans_must_match = isinstance(arch, ContPteArch) and arch.contpte_enabled and arch.convert_flushes()
    for cpu in kernel.hw.cpus:
        for (asid, vpn, span), e in cpu.tlb.items():
            m = live.get(asid)
            if m is None or (mm is not None and m is not mm):
                continue
            lo, hi = vpn << page_shift, (vpn + span) << page_shift
            if hi <= start or lo >= end:
                continue
            walks = None if census is None else census.walks(m)
            for i in range(span):
                addr = (vpn + i) << page_shift
                if walks is None:
                    pte, pfn, now_span = walk(kernel, m, addr)
                else:
                    pte, pfn, now_span = walks.get(vpn + i, _NOT_PRESENT)
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
                if spans_must_match and now_span != span:
                    raise InvariantViolation(
                        "tlb_coherence",
                        f"{where} as a {span}-page entry, but the PTE now maps {now_span} pages "
                        "(changed without a covering flush)",
                    )


def flush_point_check(kernel: Kernel, mm: object, start: int, end: int, why: str) -> None:
    """Installed as the hardware's flush-point hook when checks are on."""
    assert isinstance(mm, MmStruct)
    if not mm.dead:
        try:
            validate_tlb(kernel, mm, start, end)
        except InvariantViolation as exc:
            raise InvariantViolation(exc.check, f"after {why}: {exc.detail}") from None


def validate_tables(kernel: Kernel, census: Census | None = None) -> None:
    """Page tables exist only under VMAs (none left behind by munmap or exit)."""
    c = census or Census(kernel)
    pmd_size = kernel.arch.geometry.pmd_size
    for mm in kernel.mms:
        vmas = mm.vmas
        for table in c.tables[mm.id]:
            lo, hi = table.base, table.base + pmd_size
            if not any(v.start < hi and v.end > lo for v in vmas):
                raise InvariantViolation(
                    "pgtable_leak", f"mm{mm.id} keeps a PTE table at {lo:#x} with no VMA"
                )
        vma = None
        for addr, _entry, span, _pfn in c.leaves[mm.id]:
            if span != 1:
                continue
            if vma is None or not vma.start <= addr < vma.end:
                vma = mm.find_vma(addr)
                if vma is None:
                    raise InvariantViolation("stray_pte", f"mm{mm.id} maps {addr:#x} outside any VMA")


def validate_all(kernel: Kernel, census: Census | None = None) -> None:
    c = census or Census(kernel)
    validate_folios(kernel, c)
    validate_anon_exclusive(kernel, c)
    validate_rss(kernel, c)
    validate_cont_blocks(kernel)
    validate_tables(kernel, c)
    validate_tlb(kernel, census=c)


class Oracle:
    """What each process must read: a shadow of every page's value, by address space.

    Private pages are copied at fork; shared (shmem) pages are shared by object and offset.  The
    oracle is what "data isolation" means: after any sequence of operations, every process reads
    exactly what its own history (and the shared objects it maps) wrote.
    """

    def __init__(self) -> None:
        self.private: dict[int, dict[int, int]] = {}
        self.shared: dict[tuple[int, int], int] = {}
        #: private pages, by mm, that MADV_FREE made clean and nothing has written since
        self.clean: dict[int, set[int]] = {}
        #: pages, by mm, that UFFDIO_WRITEPROTECT protected (present at the time)
        self.uffd_wp: dict[int, set[int]] = {}

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
            vpn = addr >> task.kernel.arch.page_shift
            self.private.setdefault(task.mm.id, {})[vpn] = value
            self.clean.get(task.mm.id, set()).discard(vpn)

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

        def copied(vpns: set[int]) -> set[int]:
            keep = set()
            for vpn in vpns:
                vma = pm.find_vma(vpn << shift)
                if vma is not None and not vma.flags & (VM_DONTCOPY | VM_WIPEONFORK):
                    keep.add(vpn)
            return keep

        self.clean[child.mm.id] = copied(self.clean.get(pm.id, set()))
        self.uffd_wp[child.mm.id] = copied(self.uffd_wp.get(pm.id, set()))

    def discard(self, task: Task, addr: int, length: int) -> None:
        """munmap / MADV_DONTNEED of private memory: the pages read zero afterwards."""
        shift = task.kernel.arch.page_shift
        d = self.private.get(task.mm.id, {})
        clean = self.clean.get(task.mm.id, set())
        wp = self.uffd_wp.get(task.mm.id, set())
        for vpn in range(addr >> shift, (addr + length) >> shift):
            d.pop(vpn, None)
            clean.discard(vpn)
            wp.discard(vpn)

    def madv_free(self, task: Task, addr: int, length: int) -> None:
        """MADV_FREE of private memory: the pages may be clean until written again.  (Reclaim is
        not modelled, so they keep their data.)"""
        shift = task.kernel.arch.page_shift
        clean = self.clean.setdefault(task.mm.id, set())
        for vpn in range(addr >> shift, (addr + length) >> shift):
            vma = task.mm.find_vma(vpn << shift)
            if vma is not None and vma.file is None:
                clean.add(vpn)

    def write_protect(self, task: Task, vpns: set[int], enable: bool) -> None:
        """UFFDIO_WRITEPROTECT of ``vpns`` (the pages present in the range)."""
        wp = self.uffd_wp.setdefault(task.mm.id, set())
        if enable:
            wp |= vpns
        else:
            wp -= vpns

    def exit(self, task: Task) -> None:
        self.private.pop(task.mm.id, None)
        self.clean.pop(task.mm.id, None)
        self.uffd_wp.pop(task.mm.id, None)


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


def validate_views(oracle: Oracle, tasks: list[Task], census: Census | None = None) -> None:
    """Data isolation without side effects: at every page of every VMA, each task would read what
    its history says — through its CPU's TLB if that caches the page, else through the page
    tables, else what a fault would map (zeroes for private memory, the page cache for shared).
    :func:`validate_isolation` checks the same through real loads."""
    for task in tasks:
        kernel, mm = task.kernel, task.mm
        shift = kernel.arch.page_shift
        tlb = kernel.hw.cpus[task.cpu].tlb
        private = oracle.private.get(mm.id, {})
        walked = (census if census is not None and mm.id in census.leaves else Census(kernel)).walks(mm)
        in_tlb = tlb.translations(mm.asid)
        for vma in mm.vmas:
            for vpn in range(vma.start >> shift, vma.end >> shift):
                addr = vpn << shift
                if vma.file is None:
                    want = private.get(vpn, 0)
                else:
                    want = oracle.shared.get((vma.file.id, vma.linear_page_index(addr, shift)), 0)
                pfn = in_tlb.get(vpn)
                if pfn is None:
                    w = walked.get(vpn)
                    pfn = None if w is None else w[1]
                if pfn is None:
                    cached = (
                        None if vma.file is None else vma.file.pages.get(vma.linear_page_index(addr, shift))
                    )
                    got = 0 if cached is None else cached.data[0]
                else:
                    folio = kernel.pages.pfn_to_folio(pfn)
                    if folio is None:
                        raise InvariantViolation(
                            "tlb_coherence", f"{task!r} would read {addr:#x} from freed PFN {pfn:#x}"
                        )
                    got = folio.data[pfn - folio.pfn]
                if got != want:
                    raise InvariantViolation(
                        "isolation", f"{task!r} would read {got} at {addr:#x}, its history says {want}"
                    )


def _present_leaves(kernel: Kernel, mm: MmStruct, census: Census | None = None) -> list[tuple[int, int, int]]:
    """(address, entry, entries per leaf) of every present PTE, and of every PMD leaf."""
    if census is None or mm.id not in census.leaves:
        census = Census(kernel)
    return census.present_leaves(mm)


def _gathered_dirty(kernel: Kernel, mm: MmStruct, addr: int, pte: int) -> bool:
    """pte_dirty() of what ptep_get() returns: a contiguous block gathers every entry's dirty."""
    arch = kernel.arch
    n = arch.cont_ptes
    if n <= 1 or not arch.pte_valid_cont(pte):
        return arch.pte_dirty(pte)
    ptep = mm.pte_offset(addr)
    assert ptep is not None
    first = ptep.align_down(n)
    return any(arch.pte_dirty((first + i).peek()) for i in range(n))


def validate_anon_dirty(oracle: Oracle, tasks: list[Task], census: Census | None = None) -> None:
    """A private anonymous page is dirty (as ptep_get() reports it) unless MADV_FREE cleaned it
    and nothing wrote it since: reclaim discards a lazily freed page whose PTE is clean, so a
    lost dirty bit there is lost data."""
    for task in tasks:
        kernel, mm = task.kernel, task.mm
        arch = kernel.arch
        clean = oracle.clean.get(mm.id, set())
        n = arch.cont_ptes
        block_dirty: dict[int, bool] = {}
        vma = None
        for addr, pte, span in _present_leaves(kernel, mm, census):
            if arch.pte_special(pte):
                continue
            if vma is None or not vma.start <= addr < vma.end:  # leaves come in address order
                vma = mm.find_vma(addr)
            if vma is None or vma.file is not None:
                continue
            vpn = addr >> arch.page_shift
            if clean and any(vpn + i in clean for i in range(span)):
                continue
            if n > 1 and arch.pte_valid_cont(pte):  # one gather per contiguous block
                block = addr & ~(n * arch.page_size - 1)
                dirty = block_dirty.get(block)
                if dirty is None:
                    dirty = block_dirty[block] = _gathered_dirty(kernel, mm, addr, pte)
            else:
                dirty = arch.pte_dirty(pte)
            if not dirty:
                raise InvariantViolation("anon_dirty", f"mm{mm.id} {addr:#x}: written private page is clean")


def validate_shared_dirty(kernel: Kernel, oracle: Oracle, census: Census | None = None) -> None:
    """A written page of shared memory is dirty in its folio or in a PTE that maps it: zap must move
    the PTE's dirty bit to the folio (folio_mark_dirty) or writeback would lose the data."""
    files = {v.file.id: v.file for m in kernel.mms for v in m.vmas if v.file is not None}
    if not files:
        return
    arch = kernel.arch
    dirty_pfns = set()
    c = census or Census(kernel)
    for m in kernel.mms:
        for _addr, pte, _span in _present_leaves(kernel, m, c):
            if arch.pte_dirty(pte):
                dirty_pfns.add(arch.pte_pfn(pte))
    for (fid, idx), value in oracle.shared.items():
        f = files.get(fid)
        if f is None:
            continue
        folio = f.pages.get(idx)
        if folio is None:
            if value:
                raise InvariantViolation(
                    "shared_dirty", f"page {idx} of shmem {fid} lost from the page cache"
                )
            continue
        if not folio.dirty and folio.pfn not in dirty_pfns:
            raise InvariantViolation("shared_dirty", f"written page {idx} of shmem {fid} is clean: {folio!r}")


def validate_uffd_wp(oracle: Oracle, tasks: list[Task], census: Census | None = None) -> None:
    """Every present PTE carries the uffd-wp bit exactly where UFFDIO_WRITEPROTECT put it (and a
    child whose VMA stays registered inherits it)."""
    for task in tasks:
        kernel, mm = task.kernel, task.mm
        arch = kernel.arch
        wp = oracle.uffd_wp.get(mm.id, set())
        for addr, pte, span in _present_leaves(kernel, mm, census):
            vpn = addr >> arch.page_shift
            bit = arch.pte_uffd_wp(pte)
            if (vpn in wp) != bit or (span > 1 and any((vpn + i in wp) != bit for i in range(span))):
                raise InvariantViolation(
                    "uffd_wp", f"mm{mm.id} {addr:#x}: uffd-wp bit {bit}, expected {vpn in wp}"
                )


def validate_freeing(kernel: Kernel, folio: Folio) -> None:
    """A folio may be freed only once no CPU can reach it through a live address space's TLB:
    the mmu_gather flushes before it releases pages (tlb_flush_mmu: tlbonly, then the batch)."""
    live = {m.asid: m for m in kernel.mms if not m.dead}
    for cpu in kernel.hw.cpus:
        for (asid, vpn, span), e in cpu.tlb.items():
            m = live.get(asid)
            if m is not None and e.pfn < folio.end_pfn and e.pfn + span > folio.pfn:
                raise InvariantViolation(
                    "free_with_tlb",
                    f"{folio!r} freed while cpu{cpu.id} caches it for "
                    f"{vpn << kernel.arch.page_shift:#x} of mm{m.id}",
                )


# ---- what each operation guarantees right after it -------------------------------------------


def _gathered(kernel: Kernel, mm: MmStruct, addr: int, pte: int, bit: Callable[[int], bool]) -> bool:
    """``bit`` of what ptep_get() must return: a contiguous block gathers every entry's bit."""
    arch = kernel.arch
    n = arch.cont_ptes
    if n <= 1 or not arch.pte_valid_cont(pte):
        return bit(pte)
    ptep = mm.pte_offset(addr)
    assert ptep is not None
    first = ptep.align_down(n)
    return any(bit((first + i).peek()) for i in range(n))


def validate_fork_child(kernel: Kernel, parent: MmStruct, child: MmStruct) -> None:
    """Right after fork every entry the child shares with the parent is old, and clean where the
    mapping is VM_SHARED (copy_present_ptes: pte_mkclean if VM_SHARED, then pte_mkold;
    copy_huge_pmd: pmd_mkold), so the dirty state of shared pages stays with the parent and reclaim
    ages the child's pages afresh.  A page copied for the child (copy_present_page, a pinned
    page) is a new mapping made young and dirty."""
    from ptesim.hw.mmu import walk

    arch = kernel.arch
    for addr, pte, _span in _present_leaves(kernel, child):
        _ppte, ppfn, _ = walk(kernel, parent, addr)
        if _ppte is None or ppfn != walk(kernel, child, addr)[1]:
            continue
        vma = child.find_vma(addr)
        if arch.pte_young(pte):
            raise InvariantViolation("fork_child_bits", f"mm{child.id} {addr:#x}: the child's entry is young")
        if vma is not None and vma.flags & VM_SHARED and arch.pte_dirty(pte):
            raise InvariantViolation(
                "fork_child_bits", f"mm{child.id} {addr:#x}: the child's entry of a shared mapping is dirty"
            )


def validate_written(kernel: Kernel, mm: MmStruct, addr: int) -> None:
    """Right after a store completes, the page's entry is present, writable, young and dirty as
    ptep_get() reports it (hardware or the fault path set access and dirty)."""
    from ptesim.hw.mmu import walk

    arch = kernel.arch
    pte, _pfn, _span = walk(kernel, mm, addr)
    where = f"mm{mm.id} {addr:#x} after a store"
    if pte is None or not arch.pte_write(pte):
        raise InvariantViolation("op_state", f"{where}: the entry is not present and writable")
    if not _gathered(kernel, mm, addr, pte, arch.pte_dirty):
        raise InvariantViolation("op_state", f"{where}: the entry is clean")
    if not _gathered(kernel, mm, addr, pte, arch.pte_young):
        raise InvariantViolation("op_state", f"{where}: the entry is old")


def validate_range(
    kernel: Kernel, mm: MmStruct, start: int, end: int, *, present: bool, writable: bool
) -> None:
    """Right after munmap or MADV_DONTNEED nothing in [start, end) is present (``present=False``);
    right after mprotect(PROT_READ) nothing there is writable (``writable=False``)."""
    arch = kernel.arch
    for addr, pte, span in _present_leaves(kernel, mm):
        hi = addr + span * arch.page_size
        if span > 1 and (addr < start or hi > end):
            continue  # a PMD leaf partly in range: its split is not modelled
        if hi <= start or addr >= end:
            continue
        if not present:
            raise InvariantViolation("op_state", f"mm{mm.id} {addr:#x}: still mapped after it was zapped")
        if not writable and arch.pte_write(pte):
            raise InvariantViolation("op_state", f"mm{mm.id} {addr:#x}: still writable after PROT_READ")
