"""Published tables as input: parsing with one-line errors, pricing, joint fits that recover known
values, cross-validation, and intervals (``ptesim validate`` / ``calibrate --tables``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ptesim.cli import main
from ptesim.cost.profile import load_profile
from ptesim.cost.tables import cell_work, from_log, model_log, read_tables
from ptesim.errors import UsageError

HEADER = "table,machine,workload,op,mem,folio,mapping,cpus,baseline,variant,metric,value,source\n"
ROWS = [
    "fork-a,altra,latency,fork,4M,2M,pte,1,v6.8,contpte-v1-before-opt,runtime_change_pct,{},x",
    "fork-a,altra,latency,fork,4M,64K,pte,1,v6.8,v6.9+contpte=false,runtime_change_pct,{},x",
    "zap-b,altra,latency,munmap,4M,2M,pte,1,v6.8,contpte-v2-01-13+contpte_exit=none,runtime_change_pct,{},x",
    "zap-b,altra,latency,dontneed-pages,4M,2M,pte,1,v6.8,contpte-v2-01-13+contpte_exit=none,runtime_change_pct,{},x",
    "abs-c,altra,latency,fork,4M,4K,pte,1,,v6.8,seconds,{},x",
    "abs-c,altra,latency,munmap,4M,64K,pte,1,,v6.9,seconds,{},x",
]
TRUTH = {"local_ns.tlbi_live_asid": 400.0, "local_ns.mapcount": 30.0}


def _write(path: Path, values: list[float]) -> str:
    body = "".join(r.format(v) + "\n" for r, v in zip(ROWS, values, strict=True))
    path.write_text("# made by the model with known values\n" + HEADER + body, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def made_table(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A table whose values the model produced with :data:`TRUTH` in the shipped altra profile."""
    path = tmp_path_factory.mktemp("tables") / "made.csv"
    _write(path, [1.0] * len(ROWS))
    cells = read_tables([str(path)])
    truth = load_profile("altra").with_values(TRUTH)
    values = [from_log(c, model_log(cell_work(c, truth), truth)) for c in cells]
    return _write(path, values)


def test_cells_are_read_with_ids(made_table: str) -> None:
    cells = read_tables([made_table])
    assert [c.id for c in cells] == ["fork-a#1", "fork-a#2", "zap-b#1", "zap-b#2", "abs-c#1", "abs-c#2"]
    assert cells[0].folio == 2 << 20 and cells[0].mapping == "pte" and cells[4].metric == "seconds"


def test_fork_cell_times_the_fork_call_only(made_table: str) -> None:
    """A latency fork is the parent's fork(): mapping, population and the PMD split are set-up."""
    cells = read_tables([made_table])
    cw = cell_work(cells[4], load_profile("altra"))
    assert cw.variant.forks == 1 and cw.variant.exits == 0
    assert cw.variant.counts["page_zero"] == 0 and cw.variant.counts["fault"] == 0
    assert cw.variant.counts["mapcount"] == 1024  # one per PTE-mapped page of 4 MiB


def test_joint_fit_recovers_known_values(made_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Fitting two parameters jointly to latency changes and absolute times finds them within 1%,
    and the fitted profile predicts the held-out cells it never saw."""
    fit = ",".join(TRUTH)
    assert (
        main(
            [
                "calibrate",
                "--tables",
                made_table,
                "--profile",
                "altra",
                "--fit",
                fit,
                "--holdout",
                "zap-b#2",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)["altra"]
    for k, v in TRUTH.items():
        assert doc["fitted"][k] == pytest.approx(v, rel=0.01), k
    roles = {c["id"]: c["role"] for c in doc["cells"]}
    assert roles["zap-b#2"] == "held-out" and roles["fork-a#1"] == "fitted"
    held = next(c for c in doc["cells"] if c["id"] == "zap-b#2")
    assert held["predicted"] == pytest.approx(held["published"], abs=0.05)
    assert held["lo"] <= held["predicted"] <= held["hi"]


def test_cross_validation_predicts_each_table_unseen(
    made_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fit = ",".join(TRUTH)
    assert (
        main(
            [
                "calibrate",
                "--tables",
                made_table,
                "--profile",
                "altra",
                "--fit",
                fit,
                "--cross-validate",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)["altra"]
    folds = doc["cross_validation"]
    assert [f["table"] for f in folds] == ["fork-a", "zap-b", "abs-c"]
    # the discrepancy stored for unseen tables comes from every table's leave-one-out residuals;
    # that of a held-out table never from the table itself
    assert sorted(doc["discrepancy"]["from"]) == ["altra/abs-c", "altra/fork-a", "altra/zap-b"]
    for f in folds:
        assert f"altra/{f['table']}" not in f["discrepancy"]["from"]
        for c in f["cells"]:
            assert c["role"] == "held-out" and c["table"] == f["table"]
            assert c["lo"] <= c["predicted"] <= c["hi"]
            tol = 0.05 if c["metric"] != "seconds" else 1e-3 * c["published"]
            assert c["predicted"] == pytest.approx(c["published"], abs=tol)


def test_written_profile_gives_intervals_and_roles(
    made_table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A profile written by the fit carries its covariance: validate then prints 90% intervals and
    the roles the fit gave each cell (here through a profile file with the altra name)."""
    out = tmp_path / "altra.toml"
    fit = ",".join(TRUTH)
    assert (
        main(
            [
                "calibrate",
                "--tables",
                made_table,
                "--profile",
                "altra",
                "--fit",
                fit,
                "--holdout",
                "abs-c",
                "--write",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    prof = load_profile(str(out))
    assert prof.fit is not None and set(prof.fit.parameters) == set(TRUTH)
    assert prof.fit.tables == ("fork-a", "zap-b") and prof.fit.held_out == ("abs-c",)
    for k in TRUTH:
        assert prof.provenance[k].startswith("calibrated: tables fork-a, zap-b")
    from ptesim.cost.validate import predict_cells

    cells = read_tables([made_table])
    preds = predict_cells(cells, {"altra": prof})
    assert [p.role for p in preds] == ["fitted"] * 4 + ["held-out"] * 2
    for p in preds:
        assert p.interval.has_fit and p.lo <= p.predicted <= p.hi


def test_fit_stays_inside_physical_bounds(made_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The table wants a dearer live-ASID TLBI and cheaper rmap; fitting only pte_read, which cannot
    explain that, leaves it inside its range [1 cycle, an L2 hit] whatever the cells want."""
    assert (
        main(["calibrate", "--tables", made_table, "--profile", "altra", "--fit", "local_ns.pte_read"]) == 0
    )
    out = capsys.readouterr().out
    b = load_profile("altra").bounds["local_ns.pte_read"]
    line = next(ln for ln in out.splitlines() if ln.startswith("| local_ns.pte_read"))
    value = float(line.split("|")[3])
    assert b.lo * 0.999 <= value <= b.hi * 1.001
    if value <= b.lo * 1.01 or value >= b.hi / 1.01:
        assert "physical bound" in out


def test_every_shipped_profile_has_a_range_for_every_parameter() -> None:
    for name in ("altra", "apple-m2-vm", "xeon-4210r", "x86-host"):
        prof = load_profile(name)
        assert set(prof.bounds) == set(prof.parameters()), name
        for k, v in prof.parameters().items():
            b = prof.bounds[k]
            assert b.lo * (1 - 1e-6) <= v <= b.hi * (1 + 1e-6), (name, k)
            assert b.source


@pytest.mark.parametrize(
    "row,word",
    [
        ("t,nowhere,latency,fork,4M,4K,pte,1,,v6.8,seconds,0.01,x", "nowhere"),
        ("t,altra,latency,fork,4M,4K,pte,1,,v9.99,seconds,0.01,x", "v9.99"),
        ("t,altra,latency,fork,4M,4K,pte,1,v6.8,v6.9+warp=9,runtime_change_pct,1,x", "warp"),
        ("t,altra,latency,teleport,4M,4K,pte,1,,v6.8,seconds,0.01,x", "teleport"),
    ],
)
def test_bad_cells_are_one_line_errors_naming_the_cell(tmp_path: Path, row: str, word: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + row + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as exc:
        read_tables([str(path)])
    msg = str(exc.value)
    assert word in msg and "t#1" in msg and "\n" not in msg


def test_log_scale_round_trips(tmp_path: Path) -> None:
    from ptesim.cost.tables import published_log

    path = tmp_path / "t.csv"
    path.write_text(
        HEADER
        + "t,altra,latency,fork,4M,2M,pte,1,v6.8,contpte-v1-before-opt,runtime_change_pct,3654.4,x\n"
        + "t,altra,latency,munmap,4M,2M,pte,1,v6.8,v6.9,runtime_change_pct,-67.9,x\n",
        encoding="utf-8",
    )
    for c, v in zip(read_tables([str(path)]), (3654.4, -67.9), strict=True):
        assert from_log(c, published_log(c)) == pytest.approx(v)
        assert math.isfinite(published_log(c))


def test_cross_validation_refits_run_on_the_pool_and_on_dask(
    made_table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leave-one-table-out refits are independent cells: one process, two worker processes and
    a Dask LocalCluster give the same folds."""
    from ptesim import parallel

    argv = ["calibrate", "--tables", made_table, "--profile", "altra", "--fit", ",".join(TRUTH)]
    argv += ["--cross-validate", "--json"]
    docs = []
    for jobs in ("1", "2"):
        monkeypatch.setenv("PTESIM_JOBS", jobs)
        assert main(argv) == 0
        docs.append(json.loads(capsys.readouterr().out)["altra"]["cross_validation"])
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        try:
            assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
        finally:
            parallel.configure(scheduler=None)
    docs.append(json.loads(capsys.readouterr().out)["altra"]["cross_validation"])
    assert len(docs[0]) == 3 and docs[0] == docs[1] == docs[2]


def test_validate_cross_validate_predicts_each_table_with_a_refit_that_never_saw_it(
    made_table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """validate --cross-validate refits the parameters the machine's profile was fitted on, once per
    table without it; here altra's fit is narrowed to the two parameters the table determines."""
    import dataclasses

    import ptesim.cost.tablefit as tablefit

    altra = load_profile("altra")
    assert altra.fit is not None
    narrowed = dataclasses.replace(altra, fit=dataclasses.replace(altra.fit, parameters=tuple(TRUTH)))
    monkeypatch.setattr(tablefit, "load_profile", lambda name: narrowed)
    assert main(["validate", "--tables", made_table, "--cross-validate", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cross_validated"] is True
    assert sorted({c["table"] for c in doc["cells"]}) == ["abs-c", "fork-a", "zap-b"]
    assert {c["role"] for c in doc["cells"]} == {"held-out"}
    for c in doc["cells"]:
        tol = 0.05 if c["metric"] != "seconds" else 1e-3 * c["published"]
        assert c["predicted"] == pytest.approx(c["published"], abs=tol)


def test_a_fit_on_a_zero_floor_is_reported_on_its_bound() -> None:
    """A zero floor is searched from 1e-6 in log space: 1.01e-6 of a 0-3000 ns range is on the
    floor (and printed as such), 690 ns is not; 1% of a positive floor or ceiling is."""
    from ptesim.cost.tablefit import bound_side

    assert bound_side(1.011e-6, 0.0, 3000.0) == "lower"
    assert bound_side(690.0, 0.0, 3000.0) == ""
    assert bound_side(0.3335, 1 / 3, 4.0) == "lower"
    assert bound_side(0.34, 1 / 3, 4.0) == ""
    assert bound_side(133.3, 10 / 3, 400 / 3) == "upper"
    assert bound_side(120.0, 10 / 3, 400 / 3) == ""


def test_cell_selectors_name_exactly_the_cells_they_describe() -> None:
    """``--holdout`` selectors (docs/cost.md): ``table`` names every cell of the table,
    ``table#n`` one cell, ``table:column=value[,column=value]`` the cells whose columns all have
    those values; a column outside the format is a usage error."""
    from ptesim.cost.tables import matches, shipped_tables

    cells = read_tables(shipped_tables())
    c = cells[0]
    same_table = [x for x in cells if x.table == c.table]
    assert [x for x in cells if matches(x, c.table)] == same_table
    assert [x for x in cells if matches(x, c.id)] == [c]
    sel = f"{c.table}:folio={c.field('folio')},cpus={c.field('cpus')}"
    want = [
        x for x in same_table if x.field("folio") == c.field("folio") and x.field("cpus") == c.field("cpus")
    ]
    assert c in want and [x for x in cells if matches(x, sel)] == want
    others = [x for x in same_table if x.field("folio") != c.field("folio")]
    assert others and not any(matches(x, f"{c.table}:folio={c.field('folio')}") for x in others)
    with pytest.raises(UsageError):
        matches(c, f"{c.table}:colour=red")


def test_validation_summary_of_times_only() -> None:
    """cost/validate.py summary(): a group of cells that are all times (no percentage change) has
    an error in % of the time and none in percentage points, and its interval width as a factor."""
    import math

    from ptesim.cost.intervals import LogInterval
    from ptesim.cost.tables import shipped_tables
    from ptesim.cost.validate import ROLES, CellPrediction, summary

    times = [c for c in read_tables(shipped_tables()) if not c.percent]
    assert times
    preds = [
        CellPrediction(
            c,
            c.machine,
            LogInterval(math.log(1.1 * c.value), math.log(c.value), math.log(1.2 * c.value), True),
            ROLES[0],
        )
        for c in times
    ]
    s = summary(preds)[ROLES[0]]
    assert s["cells"] == len(times)
    assert s["max_abs_error_pp"] is None and s["median_width_pp"] is None
    assert s["max_abs_error_seconds_pct"] == pytest.approx(10.0)
    assert s["median_width_factor"] == pytest.approx(1.2)


def test_cross_validation_text_and_the_refit_command_in_the_provenance(
    made_table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`calibrate --tables ... --cross-validate` in text: the leave-one-table-out table, then one
    line summing up the held-out cells (every cell of every table once), then the discrepancy
    each fold stored.  The written profile's provenance of a fitted value ends in the calibrate
    command (tables by file name, the profile, the fitted names); typed again next to the table,
    it fits the same values."""
    import shlex
    import tomllib

    fit = ",".join(TRUTH)
    out = tmp_path / "first.toml"
    argv = ["calibrate", "--tables", made_table, "--profile", "altra", "--fit", fit, "--cross-validate"]
    assert main([*argv, "--write", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Leave-one-table-out (altra)" in text
    assert "held out: 6 cells; intervals cover " in text
    assert "stored for tables the fit has not seen: " in text
    why = tomllib.loads(out.read_text(encoding="utf-8"))["provenance"]["local_ns.mapcount"]
    again = shlex.split(why[why.index("ptesim calibrate ") :].partition(". ")[0])
    assert again[:6] == ["ptesim", "calibrate", "--tables", Path(made_table).name, "--profile", "altra"]
    monkeypatch.chdir(Path(made_table).parent)
    assert main([*again[1:], "--write", str(tmp_path / "again.toml"), "--json"]) == 0
    capsys.readouterr()
    first = tomllib.loads(out.read_text(encoding="utf-8"))["local_ns"]
    second = tomllib.loads((tmp_path / "again.toml").read_text(encoding="utf-8"))["local_ns"]
    assert second["mapcount"] == first["mapcount"] and second["tlbi_live_asid"] == first["tlbi_live_asid"]


def test_validate_text_sums_up_each_role(made_table: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`ptesim validate` in text: the cells, then per role (here every cell is unseen by the
    shipped altra fit) a line with the count, the worst errors and the interval coverage."""
    assert main(["validate", "--tables", made_table]) == 0
    text = capsys.readouterr().out
    assert "| fork-a#1 |" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("unseen: "))
    assert line.startswith("unseen: 6 cells, max |error| ") and "90% intervals cover" in line


def test_validate_prices_a_will_it_scale_cell_as_wis_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A published will-it-scale cell (workload ``wis-fork-exit``) is the steady iteration's
    throughput change: validate predicts it exactly as `ptesim wis` prices the same kernels,
    folio, mapping and CPU count."""
    path = tmp_path / "w.csv"
    path.write_text(
        HEADER + "w,altra,wis-fork-exit,fork-exit,2M,64K,pte,8,contpte-v1-base,contpte-v1-before-opt,"
        "throughput_change_pct,-10.0,x\n",
        encoding="utf-8",
    )
    assert main(["validate", "--tables", str(path), "--json"]) == 0
    (cell,) = json.loads(capsys.readouterr().out)["cells"]
    assert (cell["id"], cell["cpus"], cell["role"]) == ("w#1", 8, "unseen")
    argv = ["wis", "--profile", "altra", "--arch", "arm64", "--preset", "contpte-v1-before-opt"]
    argv += ["--baseline", "contpte-v1-base", "--mem", "2M", "--mapping", "pte", "--cpus", "8", "--json"]
    assert main(argv) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert cell["predicted"] == row["steady_change_pct"]
