"""arm64 fork and exit counts per 64K contpte block: every cell of kernel.md §9.2 (first fork) and
§9.3 (steady state, child exit), from running the model.

Layout: 1 MiB of 64K anon folios = 16 blocks in one PMD range; the VMA ends with the range, so the
v6.9-v6.14 ``folio_pte_batch`` probe read happens for 15 of the 16 blocks.  Totals include the
per-fork ``flush_tlb_mm(oldmm)`` (1 TLBI ASIDE1IS + DSB ISHST + DSB ISH), which the tables exclude.
"""

from __future__ import annotations

from collections import Counter

import pytest

from ptesim.events import with_aggregates
from ptesim.workloads.scenarios import ModelSpec, run_scenario

MiB = 1 << 20
B = 16  # blocks in 1 MiB
N = 16 * B  # PTEs
GATHER = 17  # a ptep_get of a CONT entry: wrapper read + 16 gathered


def counts(preset: str, scenario: str, **kw: object) -> Counter[str]:
    spec = ModelSpec(arch="arm64", preset=preset, mem=MiB, checks=True, **kw)  # type: ignore[arg-type]
    return Counter(with_aggregates(run_scenario(spec, scenario).sink.totals()))


def by_phase(preset: str, scenario: str) -> dict[str, Counter[str]]:
    spec = ModelSpec(arch="arm64", preset=preset, mem=MiB, checks=True)
    sink = run_scenario(spec, scenario).sink
    return {ph: Counter(with_aggregates(c)) for ph, c in sink.by_phase().items()}


def assert_fork_constant(c: Counter[str], blocks_converts: int = 0) -> None:
    """TLBIs beyond the one ASID flush, and DSBs beyond its two, come only from conversions."""
    assert c["tlbi_asid_bcast"] == 1
    assert c["dsb_ishst"] == 1 + blocks_converts and c["dsb_ish"] == 1 + blocks_converts


# ---- §9.2 first fork ---------------------------------------------------------------------------


def test_a1_baseline_per_pte() -> None:
    """(a1) contpte-v1-base: 32 scan reads + 16 wrprotect reads, 16 cmpxchg, 16 child stores,
    16 folio_get, 16 mapcount, 16 AnonExclusive clears per block, no TLBI."""
    ph = by_phase("contpte-v1-base", "fork-first")
    p, ch = ph["fork_parent"], ph["fork_child"]
    assert p["pte_read"] == (32 + 16) * B
    assert p["pte_cmpxchg"] == 16 * B and p["pte_xchg"] == 0 and p["pte_write"] == 0
    assert ch["pte_write"] == 16 * B and ch["pte_read"] == 0
    c = counts("contpte-v1-base", "fork-first")
    assert c["folio_ref"] == 16 * B and c["mapcount"] == N and c["anon_exclusive"] == N
    assert c["tlbi_page"] == 0 and c["tlbi_range"] == 0
    assert_fork_constant(c)


def test_a2_v69_with_contpte_off() -> None:
    """(a2) v6.9 core with CONFIG_ARM64_CONTPTE=n: 16 scan reads (+1 probe), 16 wrprotect reads,
    16 cmpxchg, 16 child stores, one folio_ref_add per folio, no TLBI."""
    spec = ModelSpec(arch="arm64", preset="v6.9", mem=MiB, checks=True, overrides={"contpte": "n"})
    ph = run_scenario(spec, "fork-first").sink.by_phase()
    p, ch = Counter(ph["fork_parent"]), Counter(ph["fork_child"])
    assert p["pte_read"] == (16 + 16) * B + (B - 1)
    assert p["pte_cmpxchg"] == N and p["pte_xchg"] == 0
    assert ch["pte_write"] == N
    assert ch["folio_ref"] == B and ch["mapcount"] == N and ch["anon_exclusive"] == N
    assert p["tlbi_page_bcast"] == 0 and p["tlbi_asid_bcast"] == 1


def test_b_v2_01_12_unfold_refold() -> None:
    """(b) v2 #01-#12: scan 289, wrprotect 64, child 17 reads; 16 cmpxchg + 32 xchg; 32 parent +
    16 child stores; 32 TLBI VALE1IS and 4 DSB; 1 folio ref; parent and child CONT."""
    ph = by_phase("contpte-v2-01-12", "fork-first")
    p, ch = ph["fork_parent"], ph["fork_child"]
    assert p["pte_read"] == (289 + 64) * B
    assert ch["pte_read"] == 17 * B
    assert p["pte_cmpxchg"] == 16 * B and p["pte_xchg"] == 32 * B
    assert p["pte_write"] == 32 * B and ch["pte_write"] == 16 * B
    assert p["tlbi_page_bcast"] == 32 * B
    c = counts("contpte-v2-01-12", "fork-first")
    assert_fork_constant(c, 2 * B)
    assert c["folio_ref"] == B and c["mapcount"] == N and c["anon_exclusive"] == N


def test_b_v2_01_12_with_tlbi_range() -> None:
    """FEAT_TLBIRANGE: each 16-page conversion flush is one TLBI RVALE1IS (2 per block)."""
    c = counts("contpte-v2-01-12", "fork-first", cpu_features=frozenset({"tlbi-range"}))
    assert c["tlbi_range_bcast"] == 2 * B and c["tlbi_page"] == 0
    assert_fork_constant(c, 2 * B)


def test_kpti_doubles_every_tlbi() -> None:
    c = counts("contpte-v2-01-12", "fork-first", cpu_features=frozenset({"kpti"}))
    assert c["tlbi_page_bcast"] == 2 * 32 * B and c["tlbi_asid_bcast"] == 2


@pytest.mark.parametrize("preset", ["contpte-v2-01-13", "contpte-v1-after-opt"])
def test_c1_batched_wrprotect(preset: str) -> None:
    """(c1) 'after opt': scan 289, wrprotect 16, child 17 reads; 16 cmpxchg; 16 CONT child stores;
    no xchg, no TLBI, no DSB per block."""
    ph = by_phase(preset, "fork-first")
    p, ch = ph["fork_parent"], ph["fork_child"]
    assert p["pte_read"] == (289 + 16) * B and ch["pte_read"] == 17 * B
    assert p["pte_cmpxchg"] == 16 * B and p["pte_xchg"] == 0 and p["pte_write"] == 0
    assert ch["pte_write"] == 16 * B
    c = counts(preset, "fork-first")
    assert c["tlbi_page"] == 0 and c["tlbi_range"] == 0
    assert_fork_constant(c)
    assert c["folio_ref"] == B and c["mapcount"] == N and c["anon_exclusive"] == N


def test_c2_v69() -> None:
    """(c2) v6.9: 17 scan reads (+17 probe for 15 of 16 blocks), 16 wrprotect reads, no child
    reads, 16 cmpxchg, 16 CONT child stores, no TLBI, 1 folio ref + 16 mapcount + 16 AE."""
    ph = by_phase("v6.9", "fork-first")
    p, ch = ph["fork_parent"], ph["fork_child"]
    assert p["pte_read"] == GATHER * B + GATHER * (B - 1) + 16 * B
    assert ch["pte_read"] == 0 and ch["pte_write"] == 16 * B
    assert p["pte_cmpxchg"] == 16 * B and p["pte_xchg"] == 0 and p["pte_write"] == 0
    c = counts("v6.9", "fork-first")
    assert c["tlbi_page"] == 0 and c["tlbi_range"] == 0
    assert_fork_constant(c)
    assert c["folio_ref"] == B and c["mapcount"] == N and c["anon_exclusive"] == N


def test_c2_v611_large_mapcount() -> None:
    c = counts("v6.11", "fork-first")
    assert c["large_mapcount"] == B


def test_b_v1_first_fork_48_tlbi() -> None:
    """§9.2 note: the v1 #1-#12 stack (no batch copy) folds the child too: 48 TLBI and 6 DSB per
    block; parent scan reads 2 x 17 on entry 0 then 2 x 1 on entries 1-15."""
    ph = by_phase("contpte-v1-before-opt", "fork-first")
    p, ch = ph["fork_parent"], ph["fork_child"]
    assert p["pte_read"] == (2 * GATHER + 2 * 15) * B + 64 * B
    assert ch["pte_read"] == (16 + 16) * B and ch["pte_xchg"] == 16 * B and ch["pte_write"] == 32 * B
    c = counts("contpte-v1-before-opt", "fork-first")
    assert c["tlbi_page_bcast"] == 48 * B
    assert_fork_constant(c, 3 * B)
    assert c["folio_ref"] == 16 * B and c["mapcount"] == N


def test_contpte_basic_unfolds_once_no_refold() -> None:
    """§9.2 note: v6.9 core with the generic wrprotect loop: entry 0 unfolds (16 TLBI + 2 DSB,
    16 xchg, 16 stores), no refold."""
    ph = by_phase("contpte-basic", "fork-first")
    p = ph["fork_parent"]
    assert p["tlbi_page_bcast"] == 16 * B and p["pte_xchg"] == 16 * B and p["pte_write"] == 16 * B
    c = counts("contpte-basic", "fork-first")
    assert_fork_constant(c, B)


# ---- §9.3 steady state ---------------------------------------------------------------------------


def test_steady_a1() -> None:
    c = counts("contpte-v1-base", "fork-steady")
    assert c["pte_read"] == 32 * B and c["pte_write"] == 16 * B and c["pte_rmw"] == 0
    assert c["folio_ref"] == 16 * B and c["mapcount"] == N and c["tlbi_page"] == 0
    assert_fork_constant(c)


def test_steady_b_v1_child_fold() -> None:
    """(b-v1) 'before opt': 544 parent reads + 16 + 16 child reads, 16 + 16 child stores, 16 xchg,
    16 TLBI and 2 DSB per block: 32,768 VALE1IS per 128 MiB iteration."""
    ph = by_phase("contpte-v1-before-opt", "fork-steady")
    p, ch = ph["fork_parent"], ph["fork_child"]
    assert p["pte_read"] == 544 * B and ch["pte_read"] == (16 + 16) * B
    assert ch["pte_write"] == (16 + 16) * B and ch["pte_xchg"] == 16 * B
    assert ch["tlbi_page_bcast"] == 16 * B
    c = counts("contpte-v1-before-opt", "fork-steady")
    assert_fork_constant(c, B)
    assert c["folio_ref"] == 16 * B and c["mapcount"] == N


@pytest.mark.parametrize("preset", ["contpte-v2-01-12", "contpte-v2-01-13", "contpte-v1-after-opt"])
def test_steady_b_v2_and_c1(preset: str) -> None:
    c = counts(preset, "fork-steady")
    assert c["pte_read"] == (289 + 17) * B
    assert c["pte_write"] == 16 * B and c["pte_rmw"] == 0 and c["tlbi_page"] == 0
    assert c["folio_ref"] == B and c["mapcount"] == N
    assert_fork_constant(c)


def test_steady_c2() -> None:
    c = counts("v6.9", "fork-steady")
    assert c["pte_read"] == GATHER * B + GATHER * (B - 1)
    assert c["pte_write"] == 16 * B and c["pte_rmw"] == 0 and c["tlbi_page"] == 0
    assert c["folio_ref"] == B and c["mapcount"] == N
    assert_fork_constant(c)


# ---- §9.3 child exit -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["v6.9", "contpte-v1-before-opt", "contpte-v1-after-opt"])
def test_exit_with_exit_optimisation(preset: str) -> None:
    """0 TLBI per block; 16 xchg and 16 mapcount decs; one TLBI ASIDE1IS + 2 DSB per exit."""
    c = counts(preset, "exit-child")
    assert c["pte_xchg"] == N and c["pte_write"] == 0 and c["mapcount"] == N
    assert c["tlbi_page"] == 0 and c["tlbi_asid_bcast"] == 1 and c["dsb"] == 2


def test_exit_v69_reads_and_folio_put() -> None:
    c = counts("v6.9", "exit-child")
    assert c["pte_read"] == GATHER * B + GATHER * (B - 1)
    assert c["folio_ref"] == B  # one folio_put_refs(16) per gathered folio


@pytest.mark.parametrize("preset", ["contpte-v2-01-12", "contpte-v2-01-13", "contpte-basic"])
def test_exit_without_exit_optimisation(preset: str) -> None:
    """+1 unfold per block at exit: 16 TLBI + 2 DSB + 16 xchg + 16 stores."""
    c = counts(preset, "exit-child")
    assert c["tlbi_page_bcast"] == 16 * B and c["dsb"] == 2 * B + 2
    assert c["pte_xchg"] == 2 * N and c["pte_write"] == N
