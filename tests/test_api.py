"""The Python API is what the CLI runs: same numbers, sizes as "64K" or ints."""

from __future__ import annotations

import json

import pytest

import ptesim
from ptesim.cli import main
from ptesim.errors import UsageError
from ptesim.workloads.scenarios import ModelSpec


def test_count_equals_explain_json(capsys: pytest.CaptureFixture[str]) -> None:
    """ptesim.count(...).totals equals the totals of the same `ptesim explain --json`."""
    c = ptesim.count(arch="x86", preset="v6.9", folio="64K", mem="1M", scenario="fork-first")
    argv = ["explain", "--arch", "x86", "--preset", "v6.9", "--folio", "64K", "--mem", "1M"]
    assert main([*argv, "--scenario", "fork-first", "--json"]) == 0
    assert c.totals == json.loads(capsys.readouterr().out)["totals"]


def test_sizes_as_strings_or_ints() -> None:
    """ModelSpec and the API take "64K" or 65536 alike; a bad size names itself."""
    assert ModelSpec(folio="64K", mem="1M").folio == 65536  # type: ignore[arg-type]
    a = ptesim.count(arch="x86", folio="64K", mem="256K")
    b = ptesim.count(arch="x86", folio=65536, mem=256 << 10)
    assert a.totals == b.totals
    with pytest.raises(UsageError, match="folio"):
        ptesim.machine(folio="48Q")


def test_price_uses_the_arch_profile() -> None:
    """price() with no profile uses the arch's default; categories add up to the time."""
    p = ptesim.price(ptesim.count(arch="arm64", mem="256K"))
    assert p.profile == "altra"
    assert sum(p.by_category_ns.values()) == pytest.approx(p.time_ns, rel=1e-9)


def test_sweep_rows() -> None:
    """sweep() gives one row per combination of the list-valued options."""
    rows = ptesim.sweep(
        arch="x86", preset=["v6.8", "v6.9"], folio=["16K", "64K"], mem="256K", primitives=["folio_ref"]
    )
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert [(r["preset"], r["folio"]) for r in records] == [
        ("v6.8", 16384),
        ("v6.8", 65536),
        ("v6.9", 16384),
        ("v6.9", 65536),
    ]
    assert records[3]["folio_ref"] < records[2]["folio_ref"]


def test_api_docstring_examples_run() -> None:
    """The examples in ptesim.api's docstrings run (docs/api.md is collected by pytest itself)."""
    import doctest

    import ptesim.api

    result = doctest.testmod(ptesim.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0
