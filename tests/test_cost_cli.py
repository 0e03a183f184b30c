"""The cost commands on small buffers: wis, latency, calibrate --table, whatif, and host mode's
predict(); user errors are one line with exit status 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ptesim.cost.whatif as whatif_mod
from ptesim.cli import main
from ptesim.cost.model import CATEGORIES
from ptesim.workloads.latency import predict


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def test_wis_reports_first_and_steady_with_decomposition() -> None:
    """`ptesim wis` prices both iterations; the steady contributions add up to the change."""
    rc, text = _run(
        [
            "wis",
            "--arch",
            "arm64",
            "--profile",
            "altra",
            "--preset",
            "v6.9",
            "--mem",
            "4M",
            "--cpus",
            "1,8",
            "--json",
        ]
    )
    assert rc == 0
    doc = json.loads(text)
    assert {r["baseline"] for r in doc["rows"]} == {"v6.9 without PTE_CONT"}
    assert [r["cpus"] for r in doc["rows"]] == [1, 8]
    for r in doc["rows"]:
        assert sum(r[f"{c}_pp"] for c in CATEGORIES) == pytest.approx(r["steady_change_pct"], abs=0.01)
        assert r["steady_iterations_per_s"] > 0
        assert r["mem_bytes"] == 4 << 20
    rc, text = _run(
        ["wis", "--preset", "contpte-v1-before-opt", "--baseline", "contpte-v1-base", "--mem", "2M"]
    )
    assert rc == 0 and "steady change" in text


def test_latency_and_predict() -> None:
    """`ptesim latency` gives milliseconds; predict() is what host mode's --compare-model calls and
    answers None for an arch the profile is not for."""
    rc, text = _run(
        [
            "latency",
            "fork",
            "--profile",
            "altra",
            "--preset",
            "contpte-basic",
            "--folio",
            "2M",
            "--mem",
            "8M",
            "--json",
        ]
    )
    assert rc == 0
    (row,) = json.loads(text)["rows"]
    # the row names what was priced: the arch of the profile, a 2M folio PMD-mapped, 8M
    keys = ("op", "arch", "preset", "profile", "granule_bytes", "folio_bytes", "mem_bytes", "mapping")
    assert {k: row[k] for k in keys} == {
        "op": "fork",
        "arch": "arm64",
        "preset": "contpte-basic",
        "profile": "altra",
        "granule_bytes": 4 << 10,
        "folio_bytes": 2 << 20,
        "mem_bytes": 8 << 20,
        "mapping": "pmd",
    }
    assert row["time_ns"] > 0
    parts = sum(row[f"{c}_ns"] for c in CATEGORIES)
    assert parts == pytest.approx(row["time_ns"], rel=1e-5)
    ms = predict("fork", "x86", "x86-host", "64K", 4 << 20)
    assert ms is not None and ms > 0
    assert predict("fork", "arm64", "x86-host", "64K", 4 << 20) is None
    assert predict("fork", "x86", "x86-host", "3K", 4 << 20) is None


def test_calibrate_table_with_holdout(tmp_path: Path) -> None:
    """A measured table in the seed's format calibrates the named parameters and reports held-out
    cells apart; --write gives a loadable profile whose fitted values say where they came from."""
    table = tmp_path / "measured.csv"
    table.write_text(
        "# made up\ncpus,before_opt_pct,after_opt_pct\n1,-9,-4\n8,-14,-4\n16,-30,-4\n32,-60,-5\n"
    )
    out = tmp_path / "fitted.toml"
    rc, text = _run(
        [
            "calibrate",
            "--table",
            str(table),
            "--profile",
            "altra",
            "--fit",
            "pte_read_ns,sync_per_active_cpu_ns",
            "--holdout",
            "16",
            "--mem",
            "4M",
            "--json",
            "--write",
            str(out),
        ]
    )
    assert rc == 0
    doc = json.loads(text)
    assert set(doc["fitted"]) == {"local_ns.pte_read", "shared.sync_per_active_cpu_ns"}
    assert {c["cpus"] for c in doc["cells"] if c["heldout"]} == {16}
    assert doc["max_abs_error_heldout"] is not None
    from ptesim.cost.profile import load_profile

    p = load_profile(str(out))
    assert p.provenance["local_ns.pte_read"].startswith("calibrated: table measured.csv, CPUs 1, 8, 32")


def test_whatif_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    """whatif runs each configuration without and with batching: arm64 4K gains most under
    contention, BBML2 removes the contention, x86 and riscv see no shared-resource effect."""
    keep = {"arm64 4K", "arm64 4K +bbml2", "riscv Svnapot (IPI)", "x86-64"}
    cfgs = [c for c in whatif_mod.configs() if c.label in keep]
    monkeypatch.setattr(whatif_mod, "configs", lambda: cfgs)
    rows = {r.config.label: r for r in whatif_mod.whatif([1, 32], mem="4M", fork_mem="4M")}
    assert set(rows) == keep
    arm = rows["arm64 4K"]
    assert arm.wis[1].change_pct > arm.wis[0].change_pct > 0
    bb = rows["arm64 4K +bbml2"]
    assert bb.wis[1].change_pct == pytest.approx(bb.wis[0].change_pct, abs=0.5)
    for label in ("riscv Svnapot (IPI)", "x86-64"):
        r = rows[label]
        assert r.wis[1].change_pct == pytest.approx(r.wis[0].change_pct, abs=0.01)
        assert r.fork_change_pct < 0
    label = whatif_mod.calibration_label(arm.profile)
    assert label.startswith("altra: ") and " calibrated (" in label


@pytest.mark.parametrize(
    "argv, word",
    [
        (["reproduce", "seed", "--profile", "x86-host"], "arm64"),
        (["reproduce", "seed", "--mem", "lots"], "lots"),
        (["wis", "--preset", "v6.9", "--profile", "x86-host", "--arch", "arm64"], "x86"),
        (["wis", "--preset", "v6.9", "--granule", "8K"], "8K"),
        (["wis", "--preset", "v6.9", "--folio", "1M", "--mem", "512K"], "1M"),
        (["latency", "fork", "--preset", "v0"], "v0"),
        (["latency", "cow", "--cpu-features", "tlbi-range,warp"], "warp"),
        (["calibrate", "--fit", "scv", "--holdout-sizes", "64K"], "--from-host"),
        (["calibrate", "--fit", "scv", "--table", "{bad_csv}"], "cpus"),
        (["calibrate", "--fit", "scv", "--table", "{bad_number}"], "oops"),
        (["calibrate", "--fit", "scv", "--start", "pte_read"], "name=value"),
        (["calibrate", "--from-host", "{not_json}"], "JSON"),
        (["calibrate", "--from-host", "/nonexistent/r.json"], "r.json"),
        (["calibrate", "--from-host", "{not_json}", "--table", "{bad_csv}"], "either"),
        (["whatif", "--fork-mem", "0"], "0"),
        (["whatif", "--cpus", "0"], "0"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str], word: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit status 2 and one line on stderr naming the problem."""
    files = {
        "bad_csv": "a,b\n1,2\n",
        "bad_number": "cpus,before_opt_pct\n1,oops\n",
        "not_json": "{{{",
    }
    args = []
    for a in argv:
        if a.startswith("{") and a[1:-1] in files:
            p = tmp_path / a[1:-1]
            p.write_text(files[a[1:-1]])
            a = str(p)
        args.append(a)
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("ptesim: error: ")
    assert word.lower() in err[0].lower(), err[0]


def test_calibrate_csv_has_one_line_per_cell(tmp_path: Path) -> None:
    """calibrate --csv: measured, model and error of every cell, held-out ones marked."""
    import csv

    table = tmp_path / "measured.csv"
    table.write_text("cpus,before_opt_pct,after_opt_pct\n1,-9,-4\n8,-14,-4\n32,-60,-5\n")
    argv = ["calibrate", "--table", str(table), "--profile", "altra", "--fit", "pte_read_ns"]
    rc, text = _run([*argv, "--holdout", "8", "--mem", "2M", "--csv"])
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["label"], r["cpus"]) for r in rows][:2] == [("before_opt", "1"), ("after_opt", "1")]
    assert {r["cpus"] for r in rows if r["heldout"] == "True"} == {"8"}
    assert all(
        float(r["model"]) - float(r["measured"]) == pytest.approx(float(r["error_pp"]), abs=1e-3)
        for r in rows
    )


def test_whatif_op_json_names_each_configuration() -> None:
    """`whatif --op X --json`: each row names its configuration (docs/cost.md) in one fixed order
    -- label, arch, the scenario priced, granule and folio as sizes and in bytes, CPU features,
    the before and after kernels with their overrides -- as the configuration priced has them."""
    from ptesim.units import format_size

    rc, text = _run(["whatif", "--op", "mprotect", "--mem", "4M", "--json"])
    assert rc == 0
    doc = json.loads(text)
    configs = {c.label: c for c in whatif_mod.op_configs("mprotect")}
    assert doc["op"] == "mprotect" and [r["config"] for r in doc["rows"]] == list(configs)
    for row in doc["rows"]:
        c = configs[row["config"]]
        keys = ["config", "arch", "op", "granule", "folio", "granule_bytes", "folio_bytes", "cpu_features"]
        assert list(row)[: len(keys) + 2] == [*keys, "before", "after"]
        assert row["arch"] == c.arch and row["op"] == c.op  # the scenario: mprotect or mprotect-threads
        assert row["granule"] == format_size(c.granule) and row["folio"] == format_size(c.folio)
        assert (row["granule_bytes"], row["folio_bytes"]) == (c.granule, c.folio)
        assert row["cpu_features"] == sorted(c.features)
        assert row["before"] == {"preset": c.before[0], "overrides": dict(c.before[1])}
        assert row["after"] == {"preset": c.after[0], "overrides": dict(c.after[1])}


def test_profiles_json_lists_every_shipped_profile() -> None:
    """`ptesim profiles --json`: one row per shipped profile, under the columns it announces, with
    the profile's name, arch and preset and a count of calibrated and assumed parameters that
    adds up to all of them."""
    from ptesim.cost.profile import load_profile, shipped_profiles

    rc, text = _run(["profiles", "--json"])
    assert rc == 0
    doc = json.loads(text)
    assert doc["columns"][:3] == ["name", "arch", "preset"]
    assert [r["name"] for r in doc["rows"]] == shipped_profiles()
    for row in doc["rows"]:
        assert set(row) == set(doc["columns"])
        prof = load_profile(row["name"])
        assert (row["arch"], row["preset"]) == (prof.arch, prof.preset)
        assert row["calibrated"] + row["assumed"] == len(prof.parameters())


def test_disk_cache_is_keyed_by_every_engine_file(tmp_path: Path) -> None:
    """Counts cached on disk are not reused once any code that counts has changed, the fast engine's
    included: a copy of the package with one byte added to ``fast/memo.py`` (or ``kernel/memory.py``)
    keeps its cached runs in another directory than the unchanged copy."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "src" / "ptesim"
    dirs = {}
    for changed in (None, "fast/memo.py", "kernel/memory.py"):
        tree = tmp_path / (changed or "same").replace("/", "_")
        shutil.copytree(src, tree / "ptesim", ignore=shutil.ignore_patterns("__pycache__"))
        if changed:
            with (tree / "ptesim" / changed).open("a") as f:
                f.write("\n")
        code = (
            "from ptesim.cost.runs import RunSpec, _disk_path;"
            "print(_disk_path(RunSpec('wis', 'x86', 'v6.9', 65536, 1 << 20)).parent.name)"
        )
        env = {**os.environ, "PYTHONPATH": str(tree), "PTESIM_CACHE_DIR": str(tmp_path / "cache")}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        dirs[changed] = out.stdout.strip()
    assert len(set(dirs.values())) == 3, dirs


@pytest.mark.parametrize(
    ("baseline", "same_as"), [("nocont", ["--set", "contpte=0"]), ("v6.8", ["--preset", "v6.8"])]
)
def test_latency_baseline_is_priced_as_that_kernel(baseline: str, same_as: list[str]) -> None:
    """`latency --baseline B` prices B exactly as a run of B itself: `nocont` is the same preset with
    PTE_CONT off (its override applied), a preset is that preset; the change is against that time."""
    common = ["latency", "fork", "--arch", "arm64", "--folio", "64K", "--mem", "4M", "--json", "-q"]
    rc, text = _run([*common, "--baseline", baseline])
    assert rc == 0
    row = json.loads(text)["rows"][0]
    rc, text = _run([*common, *same_as])
    assert rc == 0
    alone = json.loads(text)["rows"][0]
    assert row["baseline_time_ns"] == alone["time_ns"]
    assert row["change_pct"] == pytest.approx(100 * (row["time_ns"] / alone["time_ns"] - 1), abs=0.01)


def test_calibration_provenance_is_a_command_that_refits_the_same_values(tmp_path: Path) -> None:
    """A calibrated value's provenance ends in the calibrate command line; typed again, that command
    fits the same values (so the provenance of a shipped profile can be re-run, paths with spaces
    included)."""
    import shlex
    import tomllib

    data = (
        Path(__file__).resolve().parents[1] / "src" / "ptesim" / "cost" / "data" / "x86-host-fork-512M.json"
    )
    host = tmp_path / "a host run.json"
    host.write_bytes(data.read_bytes())
    argv = [
        "calibrate",
        "--profile",
        "x86-host",
        "--from-host",
        str(host),
        "--fit",
        "mapcount_ns,folio_ref_ns",
    ]
    argv += ["--holdout-sizes", "16K,32K", "--statistic", "min", "--write", str(tmp_path / "first.toml")]
    assert _run(argv)[0] == 0
    first = tomllib.loads((tmp_path / "first.toml").read_text(encoding="utf-8"))
    why = first["provenance"]["local_ns.mapcount"]
    again = shlex.split(why[why.index("ptesim calibrate ") :])
    assert again[0] == "ptesim" and str(host) in again
    assert _run([*again[1:], "--write", str(tmp_path / "again.toml")])[0] == 0
    second = tomllib.loads((tmp_path / "again.toml").read_text(encoding="utf-8"))
    for name in ("mapcount", "folio_ref"):
        assert second["local_ns"][name] == first["local_ns"][name]


def test_help_describes_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`ptesim --help` lists every command with a one-line description of what it does."""
    import argparse

    from ptesim.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    described = {a.dest: a.help for a in sub._choices_actions}
    assert set(described) == set(sub.choices)
    assert all(described.values()), [k for k, v in described.items() if not v]
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(f"    {name}" in out for name in sub.choices)


def test_latency_line_adds_up_to_the_total() -> None:
    """`ptesim latency` text: the time in ms, then its parts by category, also in ms, which add
    up to it (each rounded to 0.001 ms)."""
    rc, text = _run(["latency", "fork", "--arch", "arm64", "--mem", "1M"])
    assert rc == 0
    line = text.strip().splitlines()[0]
    head, _, tail = line.partition("; ")
    total = float(head.split(": ")[-1].split()[0])
    assert tail.endswith(" ms")
    parts = [p.rsplit(" ", 1) for p in tail.removesuffix(" ms").split(", ")]
    assert len(parts) >= 2 and all(name for name, _ in parts)
    assert sum(float(v) for _, v in parts) == pytest.approx(total, abs=0.0005 * (len(parts) + 1))


def test_whatif_op_json_change_is_after_over_before() -> None:
    """`whatif --op X --json`: each row's change is its after time over its before time, in %."""
    rc, text = _run(["whatif", "--op", "mremap", "--mem", "2M", "--json"])
    assert rc == 0
    rows = json.loads(text)["rows"]
    assert rows
    for r in rows:
        assert r["before_ns"] > 0 and r["after_ns"] > 0
        assert r["change_pct"] == pytest.approx(100 * (r["after_ns"] / r["before_ns"] - 1), abs=0.01)


@pytest.mark.parametrize("op", sorted(whatif_mod.OP_KERNELS))
def test_whatif_op_configurations_run_known_kernels(op: str) -> None:
    """Every configuration `whatif --op` prices names kernels that exist, for its arch: presets
    with flag overrides that apply to it (e.g. the Svnapot rows of munmap)."""
    from ptesim.kernel.config import preset

    for c in whatif_mod.op_configs(op):
        for name, overrides in (c.before, c.after):
            cfg = preset(name)
            assert all(hasattr(cfg, flag) for flag, _ in overrides), (c.label, overrides)


def test_per_command_defaults_are_the_documented_ones() -> None:
    """docs/cli.md gives each command's own default ``--mem`` and ``--cpus`` (will-it-scale's
    128M per worker on 1,8,16,24,32 CPUs for ``wis``...): the parser has exactly those."""
    import re

    from ptesim.cli import build_parser
    from ptesim.units import parse_size

    doc = (Path(__file__).parents[1] / "docs/cli.md").read_text()
    needs = {"reproduce": ["seed"], "latency": ["fork"]}
    parser = build_parser()
    checked = 0
    for opt in ("mem", "cpus"):
        row = next(line for line in doc.splitlines() if line.startswith(f"| `--{opt}` |"))
        for item in row.split("per command:")[1].rstrip(" |").split(", "):
            value = item.rsplit("`", 1)[1].split()[0]
            if opt == "cpus" and "," not in value:
                continue  # explain/trace: the model's CPU count, not a --cpus list
            want = parse_size(value) if opt == "mem" else tuple(int(c) for c in value.split(","))
            for cmd in re.findall(r"`(\w+)`", item):
                args = parser.parse_args([cmd, *needs.get(cmd, [])])
                got = getattr(args, opt)
                assert (got[0] if opt == "mem" else tuple(got)) == want, (cmd, opt, got)
                checked += 1
    assert checked >= 8


def test_profiles_shows_one_profile_value_by_value(capsys: pytest.CaptureFixture[str]) -> None:
    """`ptesim profiles NAME`: the profile's name, and one row per parameter -- its value and its
    provenance (why, and the physical range of a bounded one) -- under the columns announced."""
    import csv

    from ptesim.cost.profile import load_profile

    prof = load_profile("altra")
    rc, text = _run(["profiles", "altra", "--json"])
    assert rc == 0
    doc = json.loads(text)
    assert (doc["name"], doc["arch"], doc["preset"]) == (prof.name, prof.arch, prof.preset)
    assert {r["parameter"]: r["value"] for r in doc["parameters"]} == prof.parameters()
    rc, text = _run(["profiles", "altra", "--csv"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["parameter", "value", "provenance"]
    assert {r["parameter"]: float(r["value"]) for r in rows} == pytest.approx(prof.parameters())
    assert all(r["provenance"] for r in rows)


def test_whatif_op_heading_cites_the_kernel_change() -> None:
    """`whatif --op X` text: the heading names the operation, its size and the commit(s) whose
    batching is priced, so a reader can look the change up."""
    import re

    rc, text = _run(["whatif", "--op", "mremap", "--mem", "2M", "--arch", "riscv"])
    assert rc == 0
    heading = text.strip().splitlines()[0]
    assert "mremap" in heading and "2M" in heading
    assert re.search(r"\b[0-9a-f]{12}\b", heading), heading


def test_shipped_tables_are_the_published_csvs() -> None:
    """The published tables shipped in the package (cost/data/published) are what `calibrate
    --tables` and `validate` use by default: every CSV there, each a readable table."""
    from ptesim.cost.tables import read_tables, shipped_tables

    here = Path(__file__).parents[1] / "src/ptesim/cost/data/published"
    paths = shipped_tables()
    assert [Path(p).name for p in paths] == sorted(p.name for p in here.glob("*.csv"))
    assert read_tables(paths)


def test_wis_json_steady_change_is_the_ratio_of_its_throughputs() -> None:
    """`wis --json`: each row's steady change is its steady throughput over the baseline's, less
    one, as the row itself reports both (to the rounding of the printed numbers), and the row
    names the folio size and mapping it priced."""
    rc, text = _run(
        ["wis", "--arch", "arm64", "--profile", "altra", "--mem", "4M", "--cpus", "1,8", "--json"]
    )
    assert rc == 0
    for r in json.loads(text)["rows"]:
        ratio = r["steady_iterations_per_s"] / r["baseline_steady_iterations_per_s"]
        assert 100 * (ratio - 1) == pytest.approx(r["steady_change_pct"], abs=0.001), r
        assert r["folio_bytes"] == 64 << 10


def test_profiles_list_counts_the_parameters_each_profile_marks_calibrated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ptesim profiles`: the calibrated count of each profile is the number of its parameters
    whose provenance `ptesim profiles NAME` shows as calibrated."""
    rc, text = _run(["profiles", "--json"])
    assert rc == 0
    rows = json.loads(text)["rows"]
    assert any(r["calibrated"] for r in rows)
    for row in rows:
        rc, one = _run(["profiles", row["name"], "--json"])
        assert rc == 0
        shown = [r for r in json.loads(one)["parameters"] if r["provenance"].startswith("calibrated")]
        assert row["calibrated"] == len(shown), row["name"]


def test_disk_cache_off_writes_nothing_and_on_is_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PTESIM_CACHE_DIR=off keeps counts out of every file (not even a directory named ``off``);
    a cache directory keeps them, and a later process reads them back instead of running the
    model again."""
    import ptesim.cost.runs as runs

    spec = runs.run_spec("fork", "x86", "v6.9", folio=64 << 10, mem=1 << 20)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTESIM_CACHE_DIR", "off")
    runs.clear_cache()
    counted = runs.result(spec)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("PTESIM_CACHE_DIR", str(tmp_path / "cache"))
    runs.clear_cache()
    assert runs.result(spec) == counted
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 1
    runs.clear_cache()

    def no_model(spec: object) -> None:
        raise AssertionError("ran the model instead of reading the cache")

    monkeypatch.setattr(runs, "execute", no_model)
    assert runs.result(spec) == counted
    runs.clear_cache()


def test_cell_selector_picks_cells_by_column_value() -> None:
    """tables.matches(): ``table:column=value`` selects exactly the cells of that table with that
    value in that column (the --holdout selector)."""
    from ptesim.cost.tables import matches, read_tables, shipped_tables

    cells = read_tables(shipped_tables())
    seed = [c for c in cells if c.table == "seed"]
    assert seed
    picked = [c for c in cells if matches(c, "seed:cpus=8")]
    assert picked == [c for c in seed if c.field("cpus") == "8"] and picked
    assert [c for c in cells if matches(c, "seed")] == seed
