"""The v6.9 -> v6.19 presets and their what-ifs: each mainline preset keeps what its predecessor
had, the what-ifs say so, and the flags they add change the counts they should."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from ptesim.events import with_aggregates
from ptesim.kernel.config import FLAG_FIELDS, PRESETS
from ptesim.workloads.scenarios import ModelSpec, run_scenario

MAINLINE = ["v6.9", "v6.11", "v6.12", "v6.15", "v6.16", "v6.17", "v6.19"]
KiB = 1024


def test_mainline_presets_only_ever_gain_behaviour() -> None:
    """Every boolean flag a mainline preset has stays on in the later ones."""
    for older, newer in pairwise(MAINLINE):
        a, b = PRESETS[older], PRESETS[newer]
        for f in FLAG_FIELDS:
            if isinstance(getattr(a, f.name), bool) and getattr(a, f.name):
                assert getattr(b, f.name), f"{newer} drops {f.name} that {older} has"


def test_whatifs_are_marked() -> None:
    for name in ("v6.9-svnapot", "v7.0-svnapot", "v6.19-local-tlbi"):
        assert PRESETS[name].description.startswith("WHAT-IF")
    for name in MAINLINE:
        assert "WHAT-IF" not in PRESETS[name].description


def test_no_page_mapcount_drops_the_per_page_atomics() -> None:
    """CONFIG_NO_PAGE_MAPCOUNT (v6.15, off by default): a fork of 64K folios updates only the
    folio-wide _large_mapcount, one per batch; every invariant still holds."""

    def fork(overrides: dict[str, str]) -> Counter[str]:
        spec = ModelSpec(
            arch="x86", preset="v6.15", folio=64 * KiB, mem=1 << 20, overrides=overrides, checks=True
        )
        return Counter(with_aggregates(run_scenario(spec, "fork-first").sink.totals()))

    with_pages, without = fork({}), fork({"no_page_mapcount": "y"})
    blocks = (1 << 20) // (64 * KiB)
    assert with_pages["mapcount"] == 16 * blocks and without["mapcount"] == 0
    assert with_pages["large_mapcount"] == without["large_mapcount"] == blocks
