"""The model commands as a user runs them: JSON schema of explain, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptesim.cli import main
from ptesim.events import SCHEMA_KEYS


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """explain --json carries the documented keys; per_block = totals / blocks."""
    code, out, _ = run(
        capsys,
        "explain",
        "--arch",
        "x86",
        "--preset",
        "v6.9",
        "--folio",
        "64K",
        "--mem",
        "1M",
        "--scenario",
        "fork-first",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    for key in (
        "arch",
        "preset",
        "scenario",
        "folio",
        "mem",
        "blocks",
        "totals",
        "per_block",
        "by_phase",
        "by_site",
    ):
        assert key in d
    assert d["blocks"] == 16
    for prim in SCHEMA_KEYS:
        assert prim in d["totals"]
        assert d["per_block"][prim] == pytest.approx(d["totals"][prim] / 16)
    assert d["per_block"]["folio_ref"] == 1
    assert set(d["by_phase"]) == {"fork_parent", "fork_child"}
    assert "copy_present_ptes" in d["by_site"] or "folio_pte_batch" in d["by_site"]


def test_explain_table_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The human table names the call chains."""
    code, out, _ = run(capsys, "explain", "--preset", "v6.8", "--scenario", "exit-child")
    assert code == 0
    assert "zap_pte_range" in out


def test_trace_lists_primitives_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """trace prints one line per primitive of the scenario's operation."""
    code, out, _ = run(capsys, "trace", "--arch", "x86", "--preset", "v6.8", "--mem", "64K", "--folio", "64K")
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert any("pte_cmpxchg" in ln and "ptep_set_wrprotect" in ln for ln in lines)
    seqs = [int(ln.split()[0]) for ln in lines if ln.split()[0].isdigit()]
    assert seqs == sorted(seqs)


def test_presets_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "presets", "--json")
    d = json.loads(out)
    assert code == 0 and "v6.8" in d and "v6.9" in d
    assert d["v6.8"]["flags"]["fork_batch"] == "none"


BAD = [
    (["explain", "--preset", "v9.99"], "unknown preset"),
    (["explain", "--folio", "1Q"], "--folio"),
    (["explain", "--folio", "48K"], "power-of-two"),
    (["explain", "--folio", "2M", "--mem", "1M"], "larger than the mapping"),
    (["explain", "--folio", "4M", "--mem", "8M"], "PMD"),
    (["explain", "--arch", "sparc"], "unknown arch"),
    (["explain", "--scenario", "nope"], "unknown scenario"),
    (["explain", "--set", "fork_batch=maybe"], "fork_batch"),
    (["explain", "--set", "no_such_flag=1"], "unknown kernel flag"),
    (["explain", "--arch", "x86", "--cpu-features", "tlbi-range"], "unknown CPU feature"),
    (["explain", "--arch", "x86", "--granule", "16K"], "4K granule"),
    (["explain", "--mem", "5000"], "not a multiple"),
    (["nonsense"], "invalid choice"),
    (["trace", "--folio", "16K,64K"], "one value of --folio"),
]


@pytest.mark.parametrize("argv,needle", BAD)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    """Every user error: exit status 2 and exactly one line on stderr naming the problem."""
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err
    assert "Traceback" not in err


def test_console_script_error_has_no_traceback() -> None:
    """The installed entry point behaves the same as main()."""
    p = subprocess.run(
        [sys.executable, "-m", "ptesim.cli", "explain", "--preset", "bogus"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_presets_doc_is_current() -> None:
    """docs/presets.md is exactly what `ptesim presets --markdown` generates."""
    from pathlib import Path

    from ptesim.commands import presets_markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "presets.md"
    assert doc.read_text() == presets_markdown(), "regenerate: ptesim presets --markdown > docs/presets.md"


def test_decomposition_columns_are_the_cost_model_categories() -> None:
    """The CLI's column order is the cost model's category order."""
    from ptesim.cost.commands import CATEGORIES
    from ptesim.cost.model import CATEGORIES as MODEL_CATEGORIES

    assert CATEGORIES == MODEL_CATEGORIES


def test_presets_default_fits_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """`ptesim presets` is one line per preset, name and description, within 80 columns."""
    code, out, _ = run(capsys, "presets")
    assert code == 0
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("v6.8 ")
    code, out, _ = run(capsys, "presets", "--wide")
    assert code == 0 and "fork_batch" in out


def test_profiles_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    """`ptesim profiles` lists the shipped profiles; NAME shows each value with its provenance."""
    code, out, _ = run(capsys, "profiles", "--json")
    assert code == 0
    names = {r["name"]: r for r in json.loads(out)["rows"]}
    assert names["altra"]["arch"] == "arm64" and names["altra"]["calibrated"] >= 1
    code, out, _ = run(capsys, "profiles", "altra", "--json")
    doc = json.loads(out)
    pte = next(r for r in doc["parameters"] if r["parameter"] == "local_ns.pte_read")
    assert pte["value"] > 0 and pte["provenance"].split(":")[0] in ("calibrated", "assumed")
