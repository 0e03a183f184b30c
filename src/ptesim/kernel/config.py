"""Kernel feature flags and the named presets built from them.

A preset is data: a :class:`KernelConfig` whose every field is one behaviour of the fork/exit/COW path
that changed in a specific patch.  Model code asks ``cfg.<flag>``; it never asks for a version.  Each
flag's metadata cites the series, patch or commit that introduced it (see ``docs/presets.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ptesim.errors import UsageError

ForkBatch = Literal["none", "cont_mapped", "folio_pte_batch"]
FoldPolicy = Literal["none", "every_set", "set_ptes_nr1"]
WrprotectImpl = Literal["generic", "set_wrprotects", "contpte_wrprotect_ptes"]
SetPtesImpl = Literal["v1", "v6.9"]
ExitImpl = Literal["none", "full_no_unfold", "clear_full_ptes"]


def _flag(default: Any, doc: str, cite: str) -> Any:
    return field(default=default, metadata={"doc": doc, "cite": cite})


@dataclass(frozen=True)
class KernelConfig:
    """One kernel: which fork/zap/contpte behaviours it has.  Immutable; see :func:`preset`."""

    name: str = "custom"
    description: str = ""

    # ---- core mm (mm/memory.c) -----------------------------------------------------------------
    fork_batch: ForkBatch = _flag(
        "folio_pte_batch",
        "How copy_pte_range copies present PTEs: 'none' = copy_present_pte one PTE at a time (<= v6.8); "
        "'cont_mapped' = Ryan Roberts' batch-copy, batch length from folio_nr_pages_cont_mapped(); "
        "'folio_pte_batch' = copy_present_ptes + folio_pte_batch (v6.9).",
        "none: mm/memory.c <= v6.8; cont_mapped: contpte v1 #13 / v2 #01 (LKML 20231115163018.1303287-2); "
        "folio_pte_batch: f8d937761d65 'mm/memory: optimize fork() with PTE-mapped THP' (v6.9)",
    )
    fpb_clamp_max_nr: bool = _flag(
        False,
        "folio_pte_batch clamps max_nr to the folio's remaining PFNs, so it never reads the PTE after "
        "the folio (no 'probe' read).",
        "'mm: fix folio_pte_batch() on XEN PV' / Fixes: f8d937761d65 (approximately v6.15, Cc stable)",
    )
    fpb_batch_hint: bool = _flag(
        True,
        "folio_pte_batch strides by pte_batch_hint() instead of one PTE at a time.",
        "c6ec76a2ebc5 'mm: add pte_batch_hint() to reduce scanning in folio_pte_batch()' (v6.9)",
    )
    zap_batch: bool = _flag(
        True,
        "zap_pte_range batches present PTEs of one large folio (zap_present_ptes + clear_full_ptes).",
        "10ebac4f95e7 'mm/memory: optimize unmap/zap with PTE-mapped THP' (v6.9)",
    )
    zap_batch_folio: bool = _flag(
        True,
        "A zap batch leaves the PTE clear as one folio range too: one folio_remove_rmap_ptes(nr) and "
        "one __tlb_remove_folio_pages(nr) entry per batch (v6.9).  Off: the contpte series' own zap "
        "batching (v3 02/15, v4 03/16), which batches only clear_ptes and still calls "
        "page_remove_rmap and __tlb_remove_page for every page.  Read only with zap_batch.",
        "on: 10ebac4f95e7 'mm/memory: optimize unmap/zap with PTE-mapped THP' and 'mm/mmu_gather: add "
        "__tlb_remove_folio_pages()' (LKML 20240214204435.167852-9; v6.9); off: LKML 20231218105100.172635-4 "
        "(v4 03/16 'mm: Batch-clear PTE ranges during zap_pte_range()')",
    )
    large_mapcount: bool = _flag(
        False,
        "Large folios keep a total mapcount (_large_mapcount) updated beside per-page mapcounts.",
        "'mm: track mapcount of large folios in single value' (v6.11)",
    )
    nr_pages_mapped_batch: bool = _flag(
        False,
        "__folio_add_rmap/__folio_remove_rmap(RMAP_LEVEL_PTE) sum the pages of a batch that became "
        "first-mapped / unmapped and update _nr_pages_mapped once per batch "
        "(atomic_add/sub_return_relaxed) instead of one atomic_inc/dec_return_relaxed per page.",
        "David Hildenbrand, 43c9074e6f09 'mm/rmap: minimize folio->_nr_pages_mapped updates when "
        "batching PTE (un)mapping' (LKML 20240807115515.1640951-1; v6.12)",
    )
    no_page_mapcount: bool = _flag(
        False,
        "CONFIG_NO_PAGE_MAPCOUNT: large folios keep no per-page _mapcount, so PTE (un)mapping a batch "
        "updates only the folio-wide counters (_large_mapcount and the MM owner's mapcount).  The "
        "option is EXPERIMENTAL and off by default, so no preset sets it; use --set.",
        "David Hildenbrand, 'MM owner tracking for large folios (+ CONFIG_NO_PAGE_MAPCOUNT)' (LKML "
        "20250303163014.1128035-1, v6.15)",
    )
    wp_reuse_large: bool = _flag(
        False,
        "do_wp_page may reuse an exclusively owned large anonymous folio instead of copying (one PTE "
        "at a time: the folio is reused when this mm owns it and maps every reference).",
        "David Hildenbrand, 'MM owner tracking for large folios (+ CONFIG_NO_PAGE_MAPCOUNT)', patch "
        "'mm: COW reuse support for PTE-mapped THP with CONFIG_MM_ID' (LKML 20250303163014.1128035-1, v6.15)",
    )

    mprotect_batch: bool = _flag(
        False,
        "change_pte_range batches the PTEs of one large folio (mprotect_folio_pte_batch with "
        "FPB_RESPECT_SOFT_DIRTY | FPB_RESPECT_WRITE, modify_prot_start_ptes / modify_prot_commit_ptes, "
        "one tlb_flush_pte_range per batch; AnonExclusive sub-batches when making PTEs writable).",
        "Dev Jain, cac1db8c3aad 'mm: optimize mprotect() by PTE batching' (LKML "
        "20250718090244.21092-7, series 20250718090244.21092-1; v6.17)",
    )
    mremap_batch: bool = _flag(
        False,
        "move_ptes moves the PTEs of one large folio at once (mremap_folio_pte_batch, "
        "get_and_clear_full_ptes, set_ptes) instead of ptep_get_and_clear + set_pte_at per PTE.",
        "Dev Jain, f822a9a81a31 'mm: optimize mremap() by PTE batching' (LKML 20250610035043.75448-3; v6.17)",
    )

    broadcast_tlb_flush: bool = _flag(
        False,
        "x86 CONFIG_BROADCAST_TLB_FLUSH: on CPUs with INVLPGB (CPU feature invlpgb) an mm seen active "
        "on more than 3 CPUs at a remote flush gets a global ASID, and its later flushes are INVLPGB "
        "broadcasts + one TLBSYNC instead of IPIs.",
        "Rik van Riel, 4afeb0ed1753 'x86/mm: Enable broadcast TLB invalidation for multi-threaded "
        "processes' (LKML 20250226030129.530345-11, tip x86/core for v6.15); 4a02ed8e1cc3 'x86/mm: "
        "Consolidate full flush threshold decision'",
    )

    # ---- contiguous-PTE layer (arm64 arch/arm64/mm/contpte.c; riscv what-if) -------------------
    contpte: bool = _flag(
        False,
        "The arch's transparent contiguous-PTE layer is wired up for user mappings (arm64 PTE_CONT).",
        "4602e5757bcc 'arm64/mm: wire up PTE_CONT for user mappings' (v6.9); contpte v1 #11 / v2 #12",
    )
    svnapot_thp: bool = _flag(
        False,
        "riscv uses Svnapot 64K mappings transparently for user memory through a generic contpte "
        "layer.  WHAT-IF: not in mainline.",
        "Alexandre Ghiti, 'Make riscv use THP contpte support for arm64' (8 May 2024, unmerged)",
    )
    contpte_fold: FoldPolicy = _flag(
        "set_ptes_nr1",
        "When a block is folded automatically: 'every_set' = contpte_try_fold after every set_pte_at "
        "and ptep_set_wrprotect (v1/v2); 'none' = never (v3-v5); 'set_ptes_nr1' = only from "
        "set_ptes(nr == 1) on the last entry of a block (v6.9).",
        "every_set: contpte v1 #11 / v2 #12; none: v3-v5; set_ptes_nr1: f0c2264958e9 "
        "'arm64/mm: automatically fold contpte mappings' (v6.9)",
    )
    contpte_wrprotect: WrprotectImpl = _flag(
        "contpte_wrprotect_ptes",
        "How a batch of PTEs is write-protected: 'generic' = loop of ptep_set_wrprotect (unfold each "
        "block); 'set_wrprotects' = ptep_set_wrprotects, whole blocks in place, partial chunks "
        "unfold+refold (v1 #14, v2 #13); 'contpte_wrprotect_ptes' = whole blocks in place, partial "
        "blocks unfolded, never refolded (v6.9).",
        "set_wrprotects: LKML 20230622144210.2623299-15 / 20231115163018.1303287-14; "
        "contpte_wrprotect_ptes: 311a6cf29690 'arm64/mm: wire up ... wrprotect_ptes()' (v6.9)",
    )
    contpte_set_ptes: SetPtesImpl = _flag(
        "v6.9",
        "contpte_set_ptes(nr > 1): 'v1' also reads the target and every entry to check for valid "
        "entries (and unfolds partial blocks); 'v6.9' relies on the 'all not present' spec.",
        "v1: contpte v1 #11 / v2 #12; v6.9: 'mm: Clarify the spec for set_ptes()' (v5 #1) + 4602e5757bcc",
    )
    contpte_exit: ExitImpl = _flag(
        "clear_full_ptes",
        "How teardown clears contiguous blocks: 'none' = ptep_get_and_clear unfolds every block; "
        "'full_no_unfold' = contpte_ptep_get_and_clear_full skips the unfold when the whole mm is "
        "going away (v1 #12); 'clear_full_ptes' = batched clear_full_ptes, whole blocks cleared in "
        "place (v6.9).",
        "full_no_unfold: LKML 20230622144210.2623299-13 (v1 #12) / v2 #14; clear_full_ptes: "
        "6b1e4efb6f54 'arm64/mm: wire up [get_and_]clear_full_ptes()' (v6.9)",
    )
    pte_batch_hint: bool = _flag(
        True,
        "The arch implements pte_batch_hint() (arm64: entries left in the CONT block).",
        "fb5451e5f72b 'arm64/mm: implement pte_batch_hint()' (v6.9)",
    )
    contpte_get_early_exit: bool = _flag(
        False,
        "contpte_ptep_get stops reading once both dirty and young have been seen.",
        "Xavier Xia, 093ae7a033cf 'arm64/mm: Optimize loop to reduce redundant operations of "
        "contpte_ptep_get' (arm64 pull for v6.17)",
    )
    contpte_access_flags_flush: bool = _flag(
        True,
        "contpte_ptep_set_access_flags flushes the block when it sets dirty on all 16 entries.",
        "contpte v2 changelog: 'fixed missing TLBIs in contpte_ptep_set_access_flags()' (v1 lacked it)",
    )
    contpte_modify_prot: bool = _flag(
        False,
        "arm64 overrides modify_prot_start_ptes with get_and_clear_full_ptes and "
        "modify_prot_commit_ptes with set_ptes, so a batched mprotect of whole contpte blocks clears "
        "and rewrites them in place (no unfold, no fold).  Without it the generic per-PTE loops run.",
        "Dev Jain, 7efa1cd5f89b 'arm64: add batched versions of ptep_modify_prot_start/commit' (LKML "
        "20250718090244.21092-8; v6.17)",
    )
    arm64_pte_needs_flush: bool = _flag(
        False,
        "arm64 implements pte_needs_flush(): no TLB flush after change_pte_range when the old entry "
        "was invalid or only software bits changed (e.g. PROT_NONE -> PROT_READ|PROT_WRITE).  "
        "Without it arm64 flushes every changed PTE; x86 has its own pte_needs_flush() in every preset.",
        "Dev Jain, c320dbb7c80d 'arm64/mm: Elide TLB flush in certain pte protection transitions' "
        "(LKML 20251017160251.96717-1; v6.19)",
    )
    local_tlbi_single_cpu: bool = _flag(
        False,
        "arm64 flush_tlb_mm, __flush_tlb_page_nosync and __flush_tlb_range_nosync invalidate with "
        "local (non-shareable) TLBIs, after a DSB ISH, when the mm has only ever been active on the "
        "current CPU (mm_context_t::active_cpu).  WHAT-IF: not in mainline.",
        "Ryan Roberts, RFC 'Don't broadcast TLBI if mm was only active on local CPU' (LKML "
        "20250829153510.2401161-1, patch 2/2 20250829153510.2401161-3); v2 by Linu Cherian (May 2026)",
    )
    bbml2_aware: bool = _flag(
        False,
        "contpte_convert skips its break-before-make TLB flush when the CPU has BBML2_NOABORT.",
        "Mikołaj Lenczewski, 83bbd6be7d17 'arm64/mm: Elide tlbi in contpte_convert() under BBML2' "
        "(LKML 20250625113435.26849-5; arm64 pull for v6.17)",
    )
    local_wp_flush: bool = _flag(
        False,
        "Write-fault reuse and spurious-fault fixups flush the local TLB only (local_flush_tlb_page, "
        "local_flush_tlb_contpte) instead of broadcasting.",
        "Huang Ying, cb1fa2e99955 'arm64, tlbflush: don't TLBI broadcast if page reused in write "
        "fault' (LKML 20251104095516.7912-3 / v6 20251114085403.101552-3; v6.19)",
    )

    #: CPU features a preset implies unless the command line says otherwise.
    default_cpu_features: frozenset[str] = frozenset()

    def replace(self, **changes: Any) -> KernelConfig:
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: Mapping[str, str]) -> KernelConfig:
        """Apply ``--set flag=value`` overrides given as text, with type checking."""
        changes: dict[str, Any] = {}
        for key, text in overrides.items():
            changes[key] = _parse_flag_value(key, text)
        return self.replace(**changes, name=f"{self.name}+" + ",".join(sorted(overrides)))

    def flags(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in FLAG_FIELDS}


FLAG_FIELDS = tuple(f for f in dataclasses.fields(KernelConfig) if "doc" in f.metadata)
_FLAG_BY_NAME = {f.name: f for f in FLAG_FIELDS}
#: flags read only by some architectures' code (every other flag is read by the generic mm)
FLAG_ARCHES: dict[str, tuple[str, ...]] = {
    "contpte": ("arm64",),
    "svnapot_thp": ("riscv",),
    # the contpte layer (arch/arm64/mm/contpte.c), which the riscv Svnapot what-if reuses
    "contpte_fold": ("arm64", "riscv"),
    "contpte_wrprotect": ("arm64", "riscv"),
    "contpte_set_ptes": ("arm64", "riscv"),
    "contpte_exit": ("arm64", "riscv"),
    "contpte_get_early_exit": ("arm64", "riscv"),
    "contpte_access_flags_flush": ("arm64", "riscv"),
    "pte_batch_hint": ("arm64", "riscv"),
    # arch/arm64/include/asm/tlbflush.h and the arm64 fault fixups
    "bbml2_aware": ("arm64",),
    "local_wp_flush": ("arm64",),
    "local_tlbi_single_cpu": ("arm64",),
    # arch/arm64/mm/mmu.c and tlbflush.h (v6.17, v6.19)
    "contpte_modify_prot": ("arm64",),
    "arm64_pte_needs_flush": ("arm64",),
    # arch/x86/mm/tlb.c (v6.15)
    "broadcast_tlb_flush": ("x86",),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "fork_batch": ("none", "cont_mapped", "folio_pte_batch"),
    "contpte_fold": ("none", "every_set", "set_ptes_nr1"),
    "contpte_wrprotect": ("generic", "set_wrprotects", "contpte_wrprotect_ptes"),
    "contpte_set_ptes": ("v1", "v6.9"),
    "contpte_exit": ("none", "full_no_unfold", "clear_full_ptes"),
}


def _parse_flag_value(key: str, text: str) -> Any:
    f = _FLAG_BY_NAME.get(key)
    if f is None:
        raise UsageError(f"unknown kernel flag {key!r} (see 'ptesim presets --flags')")
    if isinstance(f.default, bool):
        low = text.strip().lower()
        if low in ("1", "y", "yes", "true", "on"):
            return True
        if low in ("0", "n", "no", "false", "off"):
            return False
        raise UsageError(f"flag {key} takes a boolean (y/n), not {text!r}")
    choices = _CHOICES[key]
    if text not in choices:
        raise UsageError(f"flag {key} takes one of {', '.join(choices)}, not {text!r}")
    return text


_PER_PTE: dict[str, Any] = dict(
    fork_batch="none", zap_batch=False, fpb_batch_hint=False, pte_batch_hint=False
)
_V1_CONTPTE: dict[str, Any] = dict(
    contpte=True,
    zap_batch_folio=False,
    contpte_fold="every_set",
    contpte_wrprotect="generic",
    contpte_set_ptes="v1",
    contpte_exit="full_no_unfold",
    contpte_access_flags_flush=True,
    pte_batch_hint=False,
)

_BASE = KernelConfig()

PRESETS: dict[str, KernelConfig] = {}


def _add(name: str, description: str, base: KernelConfig = _BASE, **flags: Any) -> None:
    PRESETS[name] = base.replace(name=name, description=description, **flags)


_add(
    "v6.8",
    "Mainline v6.8: fork and zap one PTE at a time; no contiguous-PTE layer.",
    **_PER_PTE,
)
_add(
    "contpte-v1-base",
    "Ampere Altra baseline of the seed table: v6.4-rc6 + contpte v1 with PTE_CONT off "
    "(per-PTE fork and exit, no contiguous mappings).",
    **_PER_PTE,
)
_add(
    "contpte-v1-before-opt",
    "Seed 'before opt': contpte v1 #1-#12 (PTE_CONT on, per-PTE fork copy, fold attempted from every "
    "set_pte_at and ptep_set_wrprotect, exit without unfold).",
    **{**_PER_PTE, **_V1_CONTPTE},
)
_add(
    "contpte-v1-after-opt",
    "Seed 'after opt': contpte v1 #1-#14 (+ #13 batch-copy during fork, + #14 ptep_set_wrprotects).",
    **{**_PER_PTE, **_V1_CONTPTE, "fork_batch": "cont_mapped", "contpte_wrprotect": "set_wrprotects"},
)
_add(
    "contpte-v2-01-12",
    "contpte v2 #01-#12 on v6.7-rc1: batch-copy in core mm, generic per-PTE wrprotect loop with "
    "v2 unfold/refold, no exit optimisation yet (#14).",
    **{**_PER_PTE, **_V1_CONTPTE, "fork_batch": "cont_mapped", "contpte_exit": "none"},
)
_add(
    "contpte-v2-01-13",
    "contpte v2 #01-#13: + #13 ptep_set_wrprotects (whole blocks write-protected in place).",
    **{
        **_PER_PTE,
        **_V1_CONTPTE,
        "fork_batch": "cont_mapped",
        "contpte_exit": "none",
        "contpte_wrprotect": "set_wrprotects",
    },
)
_add(
    "contpte-basic",
    "contpte v5/v6 'contpte-basic' on the v6.9 core: PTE_CONT wired up, generic wrprotect loop, "
    "no pte_batch_hint, no batched clear, no automatic fold.",
    contpte=True,
    contpte_fold="none",
    contpte_wrprotect="generic",
    contpte_exit="none",
    pte_batch_hint=False,
    fpb_batch_hint=False,
)
_add(
    "contpte-batch",
    "contpte v5/v6 'contpte-batch': + wrprotect_ptes, [get_and_]clear_full_ptes, pte_batch_hint; "
    "no automatic fold.",
    contpte=True,
    contpte_fold="none",
)
_add(
    "contpte-fold",
    "contpte v6 complete: + automatic fold from set_ptes(nr == 1) (f0c2264958e9).",
    contpte=True,
)
_add(
    "v6.9",
    "Mainline v6.9: batched fork and zap (folio_pte_batch), arm64 contpte with batched APIs and "
    "automatic fold.  On x86 and riscv the contiguous layer does not exist.",
    contpte=True,
)
_add(
    "v6.11",
    "v6.9 + _large_mapcount on large folios ('mm: track mapcount of large folios in single value').",
    contpte=True,
    large_mapcount=True,
)
_add(
    "v6.12",
    "v6.11 + batched rmap (un)mapping updates _nr_pages_mapped once per batch of a large folio, "
    "not once per page (43c9074e6f09, 20240807115515.1640951-1).",
    contpte=True,
    large_mapcount=True,
    nr_pages_mapped_batch=True,
)
_V6_15: dict[str, Any] = dict(
    contpte=True,
    large_mapcount=True,
    nr_pages_mapped_batch=True,
    fpb_clamp_max_nr=True,
    wp_reuse_large=True,
    broadcast_tlb_flush=True,
)
_add(
    "v6.15",
    "v6.12 + MM owner tracking: a write fault reuses an exclusively owned PTE-mapped large folio "
    "(20250303163014.1128035-1); folio_pte_batch clamps max_nr to the folio, no probe read past it "
    "('mm: fix folio_pte_batch() on XEN PV', approximately v6.15).  x86: INVLPGB broadcast "
    "invalidation for mms active on 4 or more CPUs (4afeb0ed1753; needs CPU feature invlpgb).",
    **_V6_15,
)
_add(
    "v6.16",
    "v6.15: no change in the paths the model counts (the mprotect/mremap batching, the BBML2 "
    "contpte_convert TLBI elision and the contpte_ptep_get loop change were all merged for v6.17).",
    **_V6_15,
)
_V6_17: dict[str, Any] = dict(
    _V6_15,
    bbml2_aware=True,
    contpte_get_early_exit=True,
    mprotect_batch=True,
    contpte_modify_prot=True,
    mremap_batch=True,
)
_add(
    "v6.17",
    "v6.16 + mprotect and mremap batch the PTEs of a large folio (cac1db8c3aad, f822a9a81a31; on "
    "arm64 whole contpte blocks are cleared and rewritten in place, 7efa1cd5f89b).  arm64: "
    "contpte_convert elides its TLBI on BBML2_NOABORT CPUs (83bbd6be7d17; needs CPU feature "
    "bbml2), contpte_ptep_get stops once dirty and young are seen (093ae7a033cf).  "
    "folio_pte_batch()/folio_pte_batch_flags() split with FPB_RESPECT_* flags (no count change in "
    "the model).",
    **_V6_17,
)
_V6_19: dict[str, Any] = dict(_V6_17, local_wp_flush=True, arm64_pte_needs_flush=True)
_add(
    "v6.19",
    "v6.17 + arm64: write-fault reuse and spurious-fault fixups flush the local TLB only (cb1fa2e99955).",
    **_V6_19,
)
_add(
    "v6.19-local-tlbi",
    "WHAT-IF (arm64): v6.19 + Ryan Roberts' RFC 'Don't broadcast TLBI if mm was only active on local "
    "CPU' (20250829153510.2401161-1, Aug 2025; v2 by Linu Cherian, May 2026; not merged): user TLB "
    "invalidations of an mm that never ran on another CPU are local TLBIs after a DSB ISH.",
    **dict(_V6_19, local_tlbi_single_cpu=True),
)
_add(
    "v7.0-svnapot",
    "WHAT-IF (riscv, approximately a v7.0 base): Yunhui Cui's 'riscv: add Svnapot-based contiguous PTE "
    "support' (linux-riscv, 21 Apr 2026, v1, not merged) on the v6.19 core: Svnapot 64K blocks "
    "folded and unfolded transparently by riscv's own wrappers, with batched range clearing, "
    "wrprotect_ptes and pte_batch_hint (modelled with the contpte layer, as the 2024 what-if).  "
    "Unlike arm64 the series does not override modify_prot_start_ptes/modify_prot_commit_ptes, so "
    "the v6.17 mprotect batch still unfolds and refolds each block; the arm64-only v6.17-v6.19 "
    "contpte changes (early-exit gather, local write-fault flush) are not assumed.",
    **dict(
        _V6_19,
        svnapot_thp=True,
        contpte_modify_prot=False,
        contpte_get_early_exit=False,
        local_wp_flush=False,
        bbml2_aware=False,
        arm64_pte_needs_flush=False,
    ),
)
_add(
    "v6.9-svnapot",
    "WHAT-IF (riscv): v6.9 with Svnapot 64K used transparently for user mappings through the "
    "generic contpte layer proposed by Alexandre Ghiti (May 2024, not merged).",
    contpte=True,
    svnapot_thp=True,
)


def preset(name: str) -> KernelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def parse_overrides(items: list[str] | None, arch: str | None = None) -> dict[str, str]:
    """Parse repeated ``--set flag=value`` options: each flag at most once, and with ``arch``, no
    flag that only another architecture's code reads (it would be silently ignored)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --set {item!r}: expected flag=value")
        key = key.strip().replace("-", "_")
        if key in out:
            raise UsageError(f"bad --set {item!r}: flag {key} is set more than once")
        only = FLAG_ARCHES.get(key)
        if arch is not None and only is not None and arch not in only:
            raise UsageError(
                f"bad --set {item!r}: flag {key} does not apply to {arch}, only to {', '.join(only)}"
            )
        out[key] = value.strip()
    return out
