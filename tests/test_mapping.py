"""PTE-mapped PMD-sized folios (``--mapping pte``): the PMD mapping is split after population and
the folio stays one order-9 folio, as David Hildenbrand's pte-mapped-folio benchmarks make them."""

from __future__ import annotations

import pytest

from ptesim.cli import main
from ptesim.workloads.scenarios import ModelSpec, map_and_populate


def _populated(mapping: str) -> tuple[ModelSpec, object, int]:
    spec = ModelSpec(arch="arm64", preset="v6.9", folio=2 << 20, mem=4 << 20, mapping=mapping)
    k = spec.build()
    t, addr = map_and_populate(k, spec, via="fault")
    return spec, t, addr


def test_pte_mapping_keeps_one_folio_per_pmd() -> None:
    _, t, addr = _populated("pte")
    mm = t.mm  # type: ignore[attr-defined]
    for a in (addr, addr + (2 << 20)):
        assert not isinstance(mm.pmd_entry(a), int), "the PMD still maps a leaf"
    page = 4096
    arch = t.kernel.arch  # type: ignore[attr-defined]
    pages = t.kernel.pages  # type: ignore[attr-defined]
    folios = {
        id(pages.pfn_to_folio(arch.pte_pfn(mm.pte_offset(a).peek())))
        for a in range(addr, addr + (4 << 20), page)
    }
    assert len(folios) == 2
    folio = pages.pfn_to_folio(arch.pte_pfn(mm.pte_offset(addr).peek()))
    assert folio.nr_pages == 512
    assert folio.entire_mapcount == 0 and all(m == 1 for m in folio.mapcount)


def test_pmd_mapping_is_the_default() -> None:
    _, t, addr = _populated("pmd")
    assert isinstance(t.mm.pmd_entry(addr), int)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mapping,word", [("pte", "PTE-mapped"), ("pmd", "PMD-mapped")])
def test_latency_output_names_the_mapping(
    capsys: pytest.CaptureFixture[str], mapping: str, word: str
) -> None:
    argv = ["latency", "fork", "--preset", "v6.9", "--folio", "2M", "--mem", "4M", "--mapping", mapping]
    assert main(argv) == 0
    assert word in capsys.readouterr().out


def test_pte_mapped_fork_copies_every_pte() -> None:
    """A PTE-mapped 2M folio is forked PTE by PTE (no copy_huge_pmd); a PMD-mapped one is not."""
    from ptesim.cost.model import merge_phases
    from ptesim.cost.runs import execute, run_spec

    pte = merge_phases(
        execute(run_spec("fork", "x86", "v6.8", folio=2 << 20, mem=4 << 20, mapping="pte")).first
    )
    pmd = merge_phases(
        execute(run_spec("fork", "x86", "v6.8", folio=2 << 20, mem=4 << 20, mapping="pmd")).first
    )
    assert pte["mapcount"] == 1024 and pte["pmd_rmw"] == 0
    assert pmd["mapcount"] == 2 and pmd["pmd_rmw"] == 2
