"""Deliberately broken variants of the model: the bugs the real series had, and plausible ones.

Each :class:`Mutant` patches the model while its :meth:`Mutant.applied` context is active and
restores it afterwards; no model code knows about mutants.  ``ptesim mutants`` runs the fuzzer
against each and reports which check caught it: a check that no mutant trips is a check nobody has
shown can fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ptesim.arch.arm64.contpte as contpte
import ptesim.kernel.config as config
import ptesim.kernel.fork as fork
import ptesim.kernel.huge_memory as huge_memory
import ptesim.kernel.memory as memory
import ptesim.kernel.mmap as mmap
import ptesim.kernel.mmu_gather as mmu_gather
from ptesim.errors import UsageError
from ptesim.events import kfunc
from ptesim.fuzz.program import Target

Patch = tuple[object, str, object]


@contextmanager
def patched(patches: list[Patch]) -> Iterator[None]:
    """setattr each (object, name, value); restore the originals on the way out."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            setattr(obj, name, old)


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    #: where the fuzzer hunts it (the mutated code must run there)
    target: Target
    #: "historical" (a bug a posted series had) or "plausible"
    kind: str
    patches: Callable[[], list[Patch]]
    #: a bug that changes only counts, not behaviour: the fuzzer cannot see it; ``detect`` (a
    #: count property, also in ``tests/test_properties.py``) returns what it found wrong, or None
    count_only: bool = False
    detect: Callable[[], str | None] | None = None

    @contextmanager
    def applied(self) -> Iterator[None]:
        with patched(self.patches()):
            yield

    def hunt_target(self) -> Target:
        t = self.target
        return Target(t.arch, t.preset, t.granule, t.features, self.name)


# ---- the broken functions ---------------------------------------------------------------------


def _preset_patch(name: str, **flags: Any) -> list[Patch]:
    return [(_PRESETS_VIEW, name, config.PRESETS[name].replace(**flags))]


class _PresetsView:
    """setattr/getattr access to config.PRESETS, so a preset can be patched like an attribute."""

    def __getattr__(self, name: str) -> Any:
        return config.PRESETS[name]

    def __setattr__(self, name: str, value: Any) -> None:
        config.PRESETS[name] = value


_PRESETS_VIEW = _PresetsView()


def _convert(drop_dirty: bool = False, flush: bool = True, from_addr: bool = False) -> Callable[..., None]:
    """contpte_convert with its dirty gathering or its break-before-make flush removed, or (with
    ``from_addr``) flushing from the faulting address instead of the block start."""

    @kfunc
    def contpte_convert(arch: Any, mm: Any, addr: int, ptep: Any, pte: int) -> None:
        n = arch.contpte_nr
        size = n * arch.page_size
        start_ptep = ptep.align_down(n)
        start_addr = addr & ~(size - 1)
        pte = arch.pfn_pte(arch.pte_pfn(pte) & ~(n - 1), arch.pte_pgprot(pte))
        if drop_dirty:
            pte = arch.pte_mkclean(pte)
        for i in range(n):
            old = arch.raw_ptep_get_and_clear(mm, start_addr + i * arch.page_size, start_ptep + i)
            if arch.pte_dirty(old) and not drop_dirty:
                pte = arch.pte_mkdirty(pte)
            if arch.pte_young(old):
                pte = arch.pte_mkyoung(pte)
        if arch.convert_flushes():
            lo = addr & ~(arch.page_size - 1) if from_addr else start_addr
            if flush:
                arch.raw_flush_tlb_range(mm, lo, start_addr + size, arch.page_size, True, 3)
            arch.hw.flush_point(mm, lo, start_addr + size, "contpte_convert")
        arch.raw_set_ptes(mm, start_addr, start_ptep, pte, n)

    return contpte_convert


def _fpb_crossing() -> list[Patch]:
    orig = memory.folio_pte_batch

    class _Endless:
        end_pfn = 1 << 62

    @kfunc
    def folio_pte_batch(arch: Any, cfg: Any, folio: Any, *rest: Any) -> tuple[int, bool]:
        return orig(arch, cfg.replace(fpb_clamp_max_nr=False), _Endless(), *rest)  # type: ignore[arg-type]

    return [(memory, "folio_pte_batch", folio_pte_batch)]


def _fpb_ignoring_uffd_wp() -> list[Patch]:
    orig = memory._fpb_clear_ignored

    def _fpb_clear_ignored(arch: Any, pte: int, flags: int) -> int:
        return int(orig(arch, arch.pte_clear_uffd_wp(pte), flags))

    return [(memory, "_fpb_clear_ignored", _fpb_clear_ignored)]


def _wrprotect_partial() -> list[Patch]:
    @kfunc
    def contpte_wrprotect_ptes(arch: Any, mm: Any, addr: int, ptep: Any, nr: int) -> None:
        arch.raw_wrprotect_ptes(mm, addr, ptep, nr)  # no contpte_try_unfold_partial

    return [(contpte, "contpte_wrprotect_ptes", contpte_wrprotect_ptes)]


def _fork_keeps_exclusive() -> list[Patch]:
    from ptesim.events import emit

    @kfunc
    def folio_try_dup_anon_rmap_ptes(folio: Any, page: int, nr: int, src_vma: Any, dst_mm: Any) -> int:
        if src_vma.mm.has_pinned and folio.maybe_dma_pinned() and any(folio.anon_exclusive[page : page + nr]):
            return -16
        for i in range(page, page + nr):  # PageAnonExclusive left set
            emit("mapcount", mm=dst_mm)
            folio.mapcount[i] += 1
        if dst_mm.kernel.cfg.large_mapcount and folio.large:
            folio.large_mapcount += nr
        return 0

    def one(folio: Any, page: int, src_vma: Any, dst_mm: Any) -> int:
        return folio_try_dup_anon_rmap_ptes(folio, page, 1, src_vma, dst_mm)

    @kfunc
    def folio_try_dup_anon_rmap_pmd(folio: Any, src_vma: Any, dst_mm: Any) -> int:
        if src_vma.mm.has_pinned and folio.maybe_dma_pinned() and any(folio.anon_exclusive):
            return -16
        folio.entire_mapcount += 1
        if dst_mm.kernel.cfg.large_mapcount:
            folio.large_mapcount += folio.nr_pages
        return 0

    return [
        (memory, "folio_try_dup_anon_rmap_ptes", folio_try_dup_anon_rmap_ptes),
        (memory, "folio_try_dup_anon_rmap_pte", one),
        (huge_memory, "folio_try_dup_anon_rmap_pmd", folio_try_dup_anon_rmap_pmd),
    ]


def _gather_frees_early() -> list[Patch]:
    orig = mmu_gather.MmuGather.__init__

    def __init__(self: Any, mm: Any, fullmm: bool) -> None:
        orig(self, mm, fullmm)
        self.free_before_flush = True

    return [(mmu_gather.MmuGather, "__init__", __init__)]


def _zap_loses_dirty() -> list[Patch]:
    def folio_mark_dirty(folio: Any) -> None:
        pass

    return [(memory, "folio_mark_dirty", folio_mark_dirty)]


def _fork_no_flush() -> list[Patch]:
    original = fork.dup_mmap

    def dup_mmap(mm: Any, oldmm: Any) -> None:
        # flush_tlb_mm(oldmm) forgotten; dup_mmap still relies on it at its end
        arch = oldmm.kernel.arch
        arch.flush_tlb_mm = lambda _mm: None
        try:
            original(mm, oldmm)
        finally:
            del arch.flush_tlb_mm

    return [(fork, "dup_mmap", dup_mmap)]


def _mprotect_no_flush() -> list[Patch]:
    @kfunc
    def change_pte_range(tlb: Any, vma: Any, addr: int, end: int) -> None:
        arch = vma.mm.kernel.arch
        ptep = vma.mm.pte_offset(addr)
        try_writable = bool(vma.flags & 0x2)
        while addr < end:
            oldpte = arch.ptep_get(ptep)
            if arch.pte_present(oldpte):
                oldpte = arch.ptep_modify_prot_start(vma, addr, ptep)
                ptent = arch.pte_modify(oldpte, vma.page_prot)
                if (
                    try_writable
                    and not arch.pte_write(ptent)
                    and mmap.can_change_pte_writable(vma, addr, ptent)
                ):
                    ptent = arch.pte_mkwrite(ptent)
                arch.ptep_modify_prot_commit(vma, addr, ptep, oldpte, ptent)
                # tlb_flush_pte_range() forgotten: the gather never learns the range changed
            ptep = ptep + 1
            addr += arch.page_size

    return [(mmap, "change_pte_range", change_pte_range)]


def _cow_reuses_shared() -> list[Patch]:
    def wp_can_reuse_anon_folio(folio: Any, vma: Any) -> bool:
        return True

    return [(memory, "wp_can_reuse_anon_folio", wp_can_reuse_anon_folio)]


def _child_keeps_shared_dirty() -> list[Patch]:
    def _child_pte(arch: Any, dst_vma: Any, src_vma: Any, pte: int) -> int:
        pte = arch.pte_mkold(pte)  # the VM_SHARED pte_mkclean() forgotten
        if not memory.userfaultfd_wp(dst_vma):
            pte = arch.pte_clear_uffd_wp(pte)
        return int(pte)

    return [(memory, "_child_pte", _child_pte)]


def _unfold_partial_mask() -> list[Patch]:
    @kfunc
    def contpte_try_unfold_partial(arch: Any, mm: Any, addr: int, ptep: Any, nr: int) -> None:
        n = arch.contpte_nr
        if ptep.idx & n or nr < n:  # the block size where the mask n - 1 belongs
            contpte.contpte_try_unfold(arch, mm, addr, ptep, arch.raw_ptep_get(ptep))
        if (ptep.idx + nr) & n:
            last = ptep + (nr - 1)
            contpte.contpte_try_unfold(
                arch, mm, addr + (nr - 1) * arch.page_size, last, arch.raw_ptep_get(last)
            )

    return [(contpte, "contpte_try_unfold_partial", contpte_try_unfold_partial)]


def _ptep_get_15() -> list[Patch]:
    @kfunc
    def contpte_ptep_get(arch: Any, ptep: Any, orig: int) -> int:
        n = arch.contpte_nr
        for pte in arch.raw_ptep_get_block(ptep.align_down(n), n - 1):  # off by one: the last entry
            if arch.pte_dirty(pte):
                orig = arch.pte_mkdirty(orig)
            if arch.pte_young(pte):
                orig = arch.pte_mkyoung(orig)
        return orig

    return [(contpte, "contpte_ptep_get", contpte_ptep_get)]


def _cow_reuses_some_exclusive() -> list[Patch]:
    orig = memory.wp_can_reuse_anon_folio

    def wp_can_reuse_anon_folio(folio: Any, vma: Any) -> bool:
        return any(folio.anon_exclusive) or bool(orig(folio, vma))  # some page, not this page

    return [(memory, "wp_can_reuse_anon_folio", wp_can_reuse_anon_folio)]


def _broadcast_misses_a_cpu() -> list[Patch]:
    from ptesim.events import emit
    from ptesim.hw.cpu import Hardware

    def tlbi(
        self: Any,
        kind: Any,
        *,
        broadcast: bool,
        asid: int | None = None,
        vpn: int = 0,
        npages: int = 1,
        mm: object | None = None,
        count: int = 1,
    ) -> None:
        emit(f"tlbi_{kind}_{'bcast' if broadcast else 'local'}", count, mm=mm)
        last = self.cpus[-1].id
        targets = (
            [c for c in self.cpus if c.id != last or c.id == self.current]
            if broadcast
            else [self.cpus[self.current]]
        )
        for cpu in targets:
            self._apply(cpu, kind, asid, vpn, npages)

    return [(Hardware, "tlbi", tlbi)]


def _pti_twin_once() -> list[Patch]:
    from ptesim.arch.x86 import X86

    orig = X86.flush_tlb_func

    def flush_tlb_func(self: Any, mm: Any, full: bool, vpns: list[int], twin: int) -> None:
        orig(self, mm, full, vpns, 1)  # the user-PCID twin not counted

    return [(X86, "flush_tlb_func", flush_tlb_func)]


def pti_doubles_local_flushes(
    scenario: str = "fork-first", folio: int = 64 << 10, mem: int = 256 << 10
) -> str | None:
    """The x86 PTI count property: turning on ``pti`` doubles exactly the local invalidations
    (the kernel-PCID flush and its user-PCID twin, flush_tlb_func / invalidate_user_asid) and
    changes no other count.  Returns the first count that breaks it, or None."""
    from ptesim.workloads.scenarios import ModelSpec, run_scenario

    def totals(features: frozenset[str]) -> dict[str, int]:
        spec = ModelSpec(arch="x86", preset="v6.9", folio=folio, mem=mem, cpu_features=features)
        return dict(run_scenario(spec, scenario).sink.totals())

    plain, pti = totals(frozenset()), totals(frozenset({"pti"}))
    for key in sorted(set(plain) | set(pti)):
        want = plain.get(key, 0) * (2 if key.startswith("tlbi_") and key.endswith("_local") else 1)
        if pti.get(key, 0) != want:
            return f"{scenario}: {key} is {pti.get(key, 0)} with pti, {plain.get(key, 0)} without"
    return None


A64 = Target("arm64", "v6.9")
X86 = Target("x86", "v6.9")

MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in [
        Mutant(
            "v1-access-flags-no-tlbi",
            "contpte_ptep_set_access_flags sets dirty on all 16 entries without invalidating the block "
            "(contpte v1; 'fixed missing TLBIs' in v2): a stale read-only contiguous TLB entry makes the "
            "write fault forever on a CPU without hardware dirty management",
            Target("arm64", "v6.9", features=("no-hafdbs",)),
            "historical",
            lambda: _preset_patch("v6.9", contpte_access_flags_flush=False),
        ),
        Mutant(
            "fold-drops-dirty",
            "contpte_convert (fold or unfold) does not gather the dirty bit of the entries it clears: a "
            "page written after MADV_FREE looks clean and reclaim would discard it",
            A64,
            "plausible",
            lambda: [(contpte, "contpte_convert", _convert(drop_dirty=True))],
        ),
        Mutant(
            "convert-no-flush",
            "contpte_convert skips the TLB invalidation between break and make (what BBML2_NOABORT "
            "permits, done on a CPU without it)",
            A64,
            "plausible",
            lambda: [(contpte, "contpte_convert", _convert(flush=False))],
        ),
        Mutant(
            "wrprotect-partial-keeps-cont",
            "contpte_wrprotect_ptes write-protects a batch that covers only part of a contiguous block "
            "in place, without unfolding it (the Arm ARM contiguous-bit rule)",
            A64,
            "plausible",
            _wrprotect_partial,
        ),
        Mutant(
            "fpb-crosses-folio-end",
            "folio_pte_batch neither clamps max_nr nor stops at the folio's last PFN, so a batch runs "
            "into the next folio when its PFNs happen to follow (the ~v6.15 'Fixes: f8d937761d65' class)",
            X86,
            "historical",
            _fpb_crossing,
        ),
        Mutant(
            "fpb-ignores-uffd-wp",
            "folio_pte_batch masks the uffd-wp bit along with dirty/young, so fork copies a mix of "
            "protected and unprotected PTEs with the first one's uffd-wp state",
            X86,
            "plausible",
            _fpb_ignoring_uffd_wp,
        ),
        Mutant(
            "fork-keeps-anon-exclusive",
            "fork duplicates anonymous rmaps without clearing PageAnonExclusive (folio_try_dup_anon_rmap)",
            X86,
            "plausible",
            _fork_keeps_exclusive,
        ),
        Mutant(
            "fork-no-flush-oldmm",
            "dup_mmap forgets flush_tlb_mm(oldmm): the parent keeps writable TLB entries for pages it "
            "now shares read-only with the child",
            X86,
            "plausible",
            _fork_no_flush,
        ),
        Mutant(
            "gather-frees-before-flush",
            "the mmu_gather releases each page as it is queued, before the TLB flush (free_before_flush)",
            X86,
            "plausible",
            _gather_frees_early,
        ),
        Mutant(
            "zap-shared-loses-dirty",
            "zapping a shared mapping drops the PTE dirty bit instead of moving it to the folio "
            "(folio_mark_dirty) — the batched zap's duty since 10ebac4f95e7; shmem folios are order-0 "
            "in the model, so every batch is one PTE",
            X86,
            "plausible",
            _zap_loses_dirty,
        ),
        Mutant(
            "mprotect-no-flush",
            "change_pte_range forgets tlb_flush_pte_range, so mprotect's gather flushes nothing and "
            "writable TLB entries survive PROT_READ",
            X86,
            "plausible",
            _mprotect_no_flush,
        ),
        Mutant(
            "fork-shared-child-dirty",
            "copy_present_ptes forgets pte_mkclean() for a VM_SHARED mapping: the child's entry is "
            "dirty, so the shared page is written back from two mappings' dirty state",
            X86,
            "plausible",
            _child_keeps_shared_dirty,
        ),
        Mutant(
            "convert-flush-from-addr",
            "contpte_convert invalidates from the faulting address to the block end instead of the "
            "whole block: a fold from the last entry flushes 1 of 16 pages, other CPUs keep "
            "single-page entries beside the new contiguous one (a TLB conflict)",
            A64,
            "plausible",
            lambda: [(contpte, "contpte_convert", _convert(from_addr=True))],
        ),
        Mutant(
            "unfold-partial-mask",
            "contpte_try_unfold_partial tests alignment with the block size instead of size - 1, so "
            "a range that starts or ends inside a block leaves that block folded",
            A64,
            "plausible",
            _unfold_partial_mask,
        ),
        Mutant(
            "ptep-get-15-of-16",
            "contpte_ptep_get gathers access/dirty from the first 15 entries of the block only",
            A64,
            "plausible",
            _ptep_get_15,
        ),
        Mutant(
            "cow-reuse-some-exclusive",
            "the write fault reuses a page of a large folio because some page of the folio is "
            "AnonExclusive, not the faulting one",
            X86,
            "plausible",
            _cow_reuses_some_exclusive,
        ),
        Mutant(
            "tlbi-bcast-misses-cpu",
            "a broadcast TLB invalidation does not reach the last CPU (unless it issued it)",
            A64,
            "plausible",
            _broadcast_misses_a_cpu,
        ),
        Mutant(
            "pti-twin-counted-once",
            "with PTI, flush_tlb_func issues and counts one invalidation per page instead of the "
            "kernel and user PCID pair (a count bug: behaviour is unchanged)",
            Target("x86", "v6.9", features=("pti",)),
            "plausible",
            _pti_twin_once,
            count_only=True,
            detect=pti_doubles_local_flushes,
        ),
        Mutant(
            "cow-reuses-shared-page",
            "the write fault reuses an anonymous page that another process still maps (the COW "
            "reuse test ignores the reference count)",
            X86,
            "plausible",
            _cow_reuses_shared,
        ),
    ]
}


def mutant(name: str) -> Mutant:
    try:
        return MUTANTS[name]
    except KeyError:
        raise UsageError(f"unknown mutant {name!r}; known: {', '.join(MUTANTS)}") from None


__all__ = ["MUTANTS", "Mutant", "mutant", "patched"]
