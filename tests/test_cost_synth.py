"""Synthetic per-iteration counts built from the reference tables (kernel.md §9.3 and §6.1), used only
to exercise the cost model before and independently of the kernel model.  Nothing in ``src`` uses them."""

from __future__ import annotations

from collections import Counter

from ptesim.cost.model import Work
from ptesim.events import PRIMITIVES

BLOCKS = 2048  # 128 MiB / 64 KiB
TABLES = 64  # PTE tables per 128 MiB


def _per_iteration(fork_block: dict[str, int], exit_block: dict[str, int]) -> Counter[str]:
    c: Counter[str] = Counter()
    for k, v in fork_block.items():
        c[k] += v * BLOCKS
    for k, v in exit_block.items():
        c[k] += v * BLOCKS
    # per-iteration constants: flush_tlb_mm at the end of dup_mmap and at exit, page tables
    c["tlbi_asid_bcast"] += 2
    c["dsb_ishst"] += 2
    c["dsb_ish"] += 2
    c["pgtable_alloc"] += TABLES + 3
    c["pgtable_free"] += TABLES + 3
    c["rss_flush"] += 2 * TABLES
    return c


EXIT_BASE = {"pte_read": 16, "pte_xchg": 16, "mapcount": 16, "folio_ref": 1}
EXIT_CONT = {"pte_read": 272, "pte_xchg": 16, "mapcount": 16, "folio_ref": 1}

SYNTH: dict[str, Counter[str]] = {
    "contpte-v1-base": _per_iteration(
        {"pte_read": 32, "pte_write": 16, "folio_ref": 16, "mapcount": 16}, EXIT_BASE
    ),
    "contpte-v1-before-opt": _per_iteration(
        {
            "pte_read": 576,
            "pte_write": 32,
            "pte_xchg": 16,
            "folio_ref": 16,
            "mapcount": 16,
            "tlbi_page_bcast": 16,
            "dsb_ishst": 1,
            "dsb_ish": 1,
        },
        EXIT_CONT,
    ),
    "contpte-v1-after-opt": _per_iteration(
        {"pte_read": 306, "pte_write": 16, "folio_ref": 1, "mapcount": 16}, EXIT_CONT
    ),
}


def work(preset: str) -> Work:
    return Work(counts=SYNTH[preset])


def test_synthetic_counts_use_known_primitives() -> None:
    for counts in SYNTH.values():
        assert set(counts) <= set(PRIMITIVES)
    assert SYNTH["contpte-v1-before-opt"]["tlbi_page_bcast"] == 16 * BLOCKS
