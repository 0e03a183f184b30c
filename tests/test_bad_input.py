"""Bad input everywhere: every command, given a bad size, preset, profile, CPU list, flag
combination or a request beyond this machine, exits with status 2 and one line on stderr that
names the problem, and never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ptesim.cli import main
from ptesim.errors import UsageError

GOOD_PROFILE = (Path(__file__).parents[1] / "src/ptesim/cost/profiles/altra.toml").read_text()
SEED_TABLE = str(Path(__file__).parents[1] / "src/ptesim/cost/data/published/altra-seed.csv")
assert re.search(r"(?m)^pte_write = ", GOOD_PROFILE) and re.search(r"(?m)^pte_read = ", GOOD_PROFILE)

PROFILES = {
    "malformed.toml": "[profile\nname = 'x'\n",
    "unknown-key.toml": GOOD_PROFILE + "\n[bogus_section]\nfoo = 1\n",
    "unknown-param.toml": re.sub(r"(?m)^\[local_ns\]$", "[local_ns]\nwarp_ns = 1.0", GOOD_PROFILE, count=1),
    "wrong-type.toml": re.sub(r"(?m)^pte_read = .*$", 'pte_read = "fast"', GOOD_PROFILE, count=1),
    "negative.toml": re.sub(r"(?m)^pte_write = .*$", "pte_write = -0.7", GOOD_PROFILE, count=1),
    "empty.toml": "",
    "binary.toml": "\x00\x01\x02",
    "not-utf8.toml": b"\x7fELF\x02\x01\x01\x00\xff\xfe",
    "huge-number.toml": re.sub(r"(?m)^pte_write = .*$", "pte_write = " + "9" * 400, GOOD_PROFILE, count=1),
    "infinite.toml": re.sub(r"(?m)^pte_write = .*$", "pte_write = inf", GOOD_PROFILE, count=1),
    "nan.toml": re.sub(r"(?m)^pte_read = .*$", "pte_read = nan", GOOD_PROFILE, count=1),
    "infinite-covariance.toml": GOOD_PROFILE.replace("covariance = [\n  [0.0,", "covariance = [\n  [inf,", 1),
    "too-big.toml": GOOD_PROFILE + "#" * (1 << 20),
    "name-not-text.toml": re.sub(r'(?m)^name = "altra"$', "name = 7", GOOD_PROFILE, count=1),
    "unknown-bound-key.toml": GOOD_PROFILE.replace(
        '"local_ns.pte_read" = {lo = 0.333333,', '"local_ns.pte_read" = {typo = 1, lo = 0.333333,', 1
    ),
    "no-pct-column.csv": "cpus,fork_change\n1,5.0\n",
    "clock-10ghz.toml": re.sub(r"(?m)^clock_ghz = .*$", "clock_ghz = 10.0", GOOD_PROFILE, count=1),
    "unknown-fit-key.toml": re.sub(r"(?m)^\[fit\]$", "[fit]\nwarp = 1", GOOD_PROFILE, count=1),
    "unknown-workload.csv": "table,machine,workload,op,mem,folio,mapping,cpus,baseline,variant,metric,value,"
    "source\nseed,altra,wis-teleport,fork-exit,128M,64K,pte,1,v6.9,v6.9,throughput_change_pct,-10.4,x\n",
}
assert (
    "covariance = [\n  [0.0," in GOOD_PROFILE
    and 'name = "altra"' in GOOD_PROFILE
    and '"local_ns.pte_read" = {lo = 0.333333,' in GOOD_PROFILE
)

#: saved fuzz programs for --replay, each broken in one field
_STEP = '{"op": "mmap", "region": 0, "off": 0, "pages": 4, "shared": false}'
PROGRAMS = {
    "bad_granule": '{"arch": "arm64", "preset": "v6.9", "granule": "big", "steps": []}',
    "odd_granule": '{"arch": "arm64", "preset": "v6.9", "granule": 8192, "steps": []}',
    "bad_region": '{"arch": "x86", "preset": "v6.9", "steps": [{"op": "read", "region": "a", "page": 1}]}',
    "far_region": '{"arch": "x86", "preset": "v6.9", "steps": [{"op": "read", "region": 7, "page": 1}]}',
    "huge_pages": '{"arch": "x86", "preset": "v6.9", "steps": ['
    + _STEP.replace('"pages": 4', '"pages": 1000000000000')
    + "]}",
    "bool_task": '{"arch": "x86", "preset": "v6.9", "steps": [{"op": "exit", "task": true}]}',
    "bad_prot": '{"arch": "x86", "preset": "v6.9", "steps": ['
    + _STEP
    + ', {"op": "mprotect", "region": 0, "off": 0, "pages": 1, "prot": "rwx"}]}',
    "extra_arg": '{"arch": "x86", "preset": "v6.9", "steps": [{"op": "exit", "cpu": 1}]}',
    "bad_arch": '{"arch": "vax", "preset": "v6.9", "steps": []}',
    "bad_features": '{"arch": "x86", "preset": "v6.9", "features": ["tlbi-range"], "steps": []}',
    "bad_mutant": '{"arch": "x86", "preset": "v6.9", "mutant": "no-such-bug", "steps": []}',
    "set_other_arch": '{"arch": "x86", "preset": "v6.9", "set": ["contpte=1"], "steps": []}',
    "set_not_list": '{"arch": "arm64", "preset": "v6.9", "set": "fork_batch=none", "steps": []}',
}

#: (argv, a word the error line must contain)
CORPUS: list[tuple[list[str], str]] = [
    # top level
    ([], "COMMAND"),
    (["frobnicate"], "frobnicate"),
    # presets / explain / trace
    (["presets", "--bogus"], "--bogus"),
    (["explain", "--preset", "v9.99"], "v9.99"),
    (["explain", "--arch", "sparc"], "sparc"),
    (["explain", "--mem=-1M"], "-1M"),
    (["explain", "--mem", "lots"], "lots"),
    (["explain", "--folio", "48K"], "48K"),
    (["explain", "--folio", "8K"], "8K"),
    (["explain", "--arch", "arm64", "--granule", "64K", "--folio", "128K"], "128K"),
    (["explain", "--folio", "4M", "--mem", "1M"], "4M"),
    (["explain", "--granule", "8K", "--arch", "arm64"], "8K"),
    (["explain", "--engine", "turbo"], "turbo"),
    (["explain", "--granule", "16K", "--arch", "x86"], "x86"),
    (["explain", "--cpu-features", "warp-drive"], "warp-drive"),
    (["explain", "--set", "no_such_flag=1"], "no_such_flag"),
    (["explain", "--set", "contpte=maybe"], "maybe"),
    (["explain", "--set", "contpte"], "contpte"),
    (["explain", "--cpus", "0"], "cpu"),
    (["explain", "--cpus", "two"], "two"),
    (["explain", "--scenario", "teleport"], "teleport"),
    (["explain", "--mem", "1T"], "64G"),
    (["explain", "--top", "-5"], "--top"),
    (["explain", "--top", "many"], "--top"),
    (["explain", "--depth", "0"], "--depth"),
    (["explain", "--ncpus", "100000"], "--ncpus"),
    (["explain", "--ncpu", "4"], "--ncpu"),
    (["explain", "--preset", "v6.9", "--preset", "v6.8"], "--preset"),
    (["explain", "--json", "--json"], "--json"),
    (["explain", "--arch", "arm64", "--set", "contpte=1", "--set", "contpte=0"], "contpte"),
    (["explain", "--arch", "x86", "--set", "contpte=1"], "contpte"),
    (["explain", "--arch", "x86", "--set", "bbml2_aware=y"], "bbml2_aware"),
    (["explain", "--arch", "riscv", "--set", "local_wp_flush=y"], "local_wp_flush"),
    (["explain", "--arch", "arm64", "--set", "svnapot_thp=y"], "svnapot_thp"),
    (["trace", "--limit", "0"], "--limit"),
    (["trace", "--mem", "0"], "0"),
    (["trace", "--preset", ""], "preset"),
    # fuzz / mutants
    (["fuzz", "--arch", "mips"], "mips"),
    (["fuzz", "--preset", "v0.1"], "v0.1"),
    (["fuzz", "--examples", "0"], "--examples"),
    (["fuzz", "--examples", "many"], "many"),
    (["fuzz", "--steps=-3"], "--steps"),
    (["fuzz", "--seed=-1"], "--seed"),
    (["fuzz", "--granule", "64K", "--arch", "riscv"], "riscv"),
    (["fuzz", "--granule", "3K"], "3K"),
    (["fuzz", "--cpu-features", "tlbi-range", "--arch", "x86"], "tlbi-range"),
    (["fuzz", "--mutant", "no-such-bug"], "no-such-bug"),
    (["fuzz", "--diff", "v6.8", "--mutant", "fold-drops-dirty"], "contradict"),
    (["fuzz", "--diff", "v99"], "v99"),
    (["fuzz", "--replay", "/nonexistent/prog.json"], "prog.json"),
    (["fuzz", "--replay", "{not_json}"], "JSON"),
    (["fuzz", "--replay", "{bad_step}"], "step"),
    (["fuzz", "--replay", "{bad_granule}"], "granule"),
    (["fuzz", "--replay", "{odd_granule}"], "granule"),
    (["fuzz", "--replay", "{bad_region}"], "region"),
    (["fuzz", "--replay", "{far_region}"], "region"),
    (["fuzz", "--replay", "{huge_pages}"], "pages"),
    (["fuzz", "--replay", "{bool_task}"], "task"),
    (["fuzz", "--replay", "{set_other_arch}"], "contpte"),
    (["fuzz", "--replay", "{set_not_list}"], "set"),
    (["fuzz", "--arch", "x86", "--set", "contpte=1"], "contpte"),
    (["fuzz", "--arch", "arm64", "--set", "fork_batch=bogus"], "bogus"),
    (["fuzz", "--replay", "{bad_prot}"], "prot"),
    (["fuzz", "--replay", "{extra_arg}"], "cpu"),
    (["fuzz", "--replay", "{bad_arch}"], "vax"),
    (["fuzz", "--replay", "{bad_features}"], "features"),
    (["fuzz", "--replay", "{bad_mutant}"], "no-such-bug"),
    (["fuzz", "--replay", "/dev/zero"], "/dev/zero"),
    (["fuzz", "--arch", "x86", "--arch", "arm64"], "--arch"),
    (["mutants", "--budget", "0"], "--budget"),
    (["mutants", "--budget", "x"], "x"),
    (["mutants", "--only", "typo-bug"], "typo-bug"),
    # cost model
    (["reproduce", "table9"], "table9"),
    (["reproduce", "seed", "--profile", "no-such-profile"], "no-such-profile"),
    (["reproduce", "seed", "--profile", "{malformed.toml}"], "TOML"),
    (["reproduce", "seed", "--profile", "{unknown-key.toml}"], "bogus_section"),
    (["reproduce", "seed", "--profile", "{unknown-param.toml}"], "warp_ns"),
    (["reproduce", "seed", "--profile", "{wrong-type.toml}"], "pte_read"),
    (["reproduce", "seed", "--profile", "{name-not-text.toml}"], "profile.name"),
    (["reproduce", "seed", "--profile", "{unknown-bound-key.toml}"], "typo"),
    (["calibrate", "--table", "{no-pct-column.csv}"], "_pct"),
    (["reproduce", "seed", "--profile", "{negative.toml}"], "pte_write"),
    (["reproduce", "seed", "--profile", "{empty.toml}"], "profile"),
    (["reproduce", "seed", "--profile", "{binary.toml}"], "binary.toml"),
    (["reproduce", "seed", "--profile", "/nonexistent/p.toml"], "p.toml"),
    (["reproduce", "seed", "--profile", "{not-utf8.toml}"], "UTF-8"),
    (["reproduce", "seed", "--profile", "/bin/ls"], "/bin/ls"),
    (["reproduce", "seed", "--profile", "/dev/zero"], "/dev/zero"),
    (["reproduce", "seed", "--profile", "{too-big.toml}"], "too-big.toml"),
    (["reproduce", "seed", "--profile", "{huge-number.toml}"], "pte_write"),
    (
        ["reproduce", "seed", "--profile", "{infinite.toml}"],
        ": local_ns.pte_write = inf",
    ),  # the key as written
    (["reproduce", "seed", "--profile", "{nan.toml}"], "pte_read"),
    (["reproduce", "seed", "--profile", "{infinite-covariance.toml}"], "fit.covariance[0][0]"),  # in a list
    (["wis", "--preset", "v6.9", "--profile", "{huge-number.toml}"], "pte_write"),
    (["wis", "--preset", "v6.9", "--cpus", "1-1000000000"], "1-1000000000"),
    (["wis", "--preset", "v6.9", "--mem", "1T"], "--mem"),
    (["wis", "--preset", "v6.9", "--preset", "v6.8"], "--preset"),
    (["latency", "fork", "--mem", "1T"], "64G"),
    (["wis", "--baseline", "v0.0"], "v0.0"),
    (["wis", "--arch", "x86", "--profile", "altra"], "altra"),
    (["wis", "--preset", "nope"], "nope"),
    (["wis", "--preset", "v6.9", "--cpus", "0"], "0"),
    (["wis", "--preset", "v6.9", "--cpus", "4-2"], "4-2"),
    (["wis", "--preset", "v6.9", "--cpus", "a,b"], "a,b"),
    (["wis", "--preset", "v6.9", "--mem=-5G"], "-5G"),
    (["wis", "--preset", "v6.9", "--folio", "3K"], "3K"),
    (["wis", "--preset", "v6.9", "--arch", "vax"], "vax"),
    (["wis", "--preset", "v6.9", "--cpu-features", "hyperdrive"], "hyperdrive"),
    (["latency", "teleport"], "teleport"),
    (["latency", "fork", "--mem", "1Q"], "1Q"),
    (["latency", "fork", "--folio", "2M", "--mapping", "sideways"], "sideways"),
    (["explain", "--mapping", "sideways"], "sideways"),
    (["latency", "fork", "--profile", "{negative.toml}"], "pte_write"),
    (["latency", "fork", "--profile", "{clock-10ghz.toml}"], "clock_ghz"),
    (["latency", "fork", "--profile", "{unknown-fit-key.toml}"], "fit.warp"),
    (["validate", "--tables", "{unknown-workload.csv}", "--csv"], "wis-teleport"),
    (["calibrate", "--tables", SEED_TABLE, "--fit", "local_ns.pte_read,local_ns.pte_read"], "twice"),
    (["calibrate", "--table", "/nonexistent/t.csv"], "t.csv"),
    (["calibrate", "--fit", "no_such_param"], "no_such_param"),
    (["calibrate", "--holdout", "x"], "x"),
    (["whatif", "--cpus", ""], "cpu list"),
    (["whatif", "--folio", "0"], "0"),
    (["calibrate", "--tables", SEED_TABLE, "--holdout", "seed:bogus=1"], "seed:bogus=1"),
    (["whatif", "--op", "bogus"], "whatif --op"),
    (["whatif", "--op", "bogus2"], "munmap, mprotect, mremap"),  # the choices, listed
    (["whatif", "--op", "mremap", "--mem", "1M"], "at least 2M"),
    (["whatif", "--arch", "vax"], "vax"),
    (["whatif", "--json", "--csv"], "--csv"),
    # sweeps and outputs of the cost commands
    (["wis", "--arch", "arm64,x86", "--profile", "altra", "--mem", "2M"], "x86"),
    (["wis", "--preset", "v6.9,v0.1"], "v0.1"),
    (["wis", "--folio", "16K,,64K"], "empty element"),
    (["latency", "fork", "--json", "--csv"], "--csv"),
    (["latency", "fork", "--mem", "4M", "--plot", "/nonexistent/dir/p.png"], "p.png"),
    (["validate", "--tables", "/nonexistent/t.csv", "--csv"], "t.csv"),
    (["validate", "--tables", "/nonexistent/t.csv", "--cross-validate"], "t.csv"),
    # host mode: validated before touching the machine
    (["host"], "SUBCOMMAND"),
    (["host", "fork", "--sizes", "3K"], "3K"),
    (["host", "fork", "--sizes", "64K", "--mem=-1G"], "-1G"),
    (["host", "fork", "--reps", "0"], "reps"),
    (["host", "fork", "--json", "--csv"], "--csv"),
    (["host", "fork", "--cpu", "100000"], "100000"),
    (["host", "munmap", "--threshold", "150"], "threshold"),
    (["host", "cow", "--mode", "sometimes"], "sometimes"),
    (["host", "dontneed", "--tlb-reasons", "made_up_reason"], "made_up_reason"),
    (["host", "wis", "--cpus", "0-100000"], "100000"),
    (["host", "wis", "--duration=-1"], "duration"),
    (["host", "wis", "--size", "1T"], "1T"),
    (["host", "fork", "--size", "64K"], "--size"),
    (["host", "wis", "--sizes", "64K"], "--sizes"),
    (["host", "fork", "--reps", "1000000000"], "--reps"),
    (["host", "fork", "--threshold", "nan"], "--threshold"),
    (["host", "wis", "--duration", "inf"], "--duration"),
    (["host", "wis", "--duration", "nan"], "--duration"),
    (["host", "wis", "--cpus", "1-1000000000"], "1-1000000000"),
    (["host", "wis", "--mem", "64M", "--mem", "1M"], "--mem"),
]


def _expand(argv: list[str], tmp: Path) -> list[str]:
    files: dict[str, str | bytes] = {**PROFILES, **PROGRAMS}
    files["not_json"] = "this is not json"
    files["bad_step"] = '{"arch": "x86", "preset": "v6.9", "steps": [{"op": "teleport"}]}'
    out = []
    for a in argv:
        if a.startswith("{") and a.endswith("}") and a[1:-1] in files:
            p = tmp / a[1:-1]
            content = files[a[1:-1]]
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
            a = str(p)
        out.append(a)
    return out


@pytest.mark.parametrize(
    "argv,word", CORPUS, ids=[" ".join(a).replace(SEED_TABLE, "SEED_TABLE") or "<none>" for a, _ in CORPUS]
)
def test_bad_invocation_is_one_line_exit_2(
    argv: list[str],
    word: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit status 2, exactly one stderr line naming the problem, no traceback."""
    monkeypatch.setenv("PTESIM_STATE_DIR", str(tmp_path))  # host mode never writes outside tmp
    try:
        rc = main(_expand(argv, tmp_path))
    except SystemExit as exc:  # argparse --help/--version only; a usage error must not exit here
        rc = exc.code if isinstance(exc.code, int) else 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("ptesim: error: ")
    assert word.lower() in lines[0].lower(), lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "--mem", "4G", "--folio", "4K", "--scenario", "cow-write", "--engine", "reference"],
        ["explain", "--mem", "4G", "--folio", "4K", "--engine", "reference"],
        ["explain", "--mem", "4G", "--folio", "4K", "--scenario", "dontneed-pages", "--engine", "reference"],
        ["trace", "--mem", "8G", "--folio", "4K"],
        # Svnapot blocks share one PPN field: no linear tables, so estimated as the reference engine
        ["explain", "--arch", "riscv", "--preset", "v6.9-svnapot", "--mem", "8G", "--folio", "64K"],
    ],
)
def test_mapping_beyond_memory_is_refused_up_front(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine with 1 GiB available, a mapping whose model state needs more is refused with
    one line naming the limit, before anything is built."""
    from ptesim.fast import footprint

    monkeypatch.setattr(footprint, "available_bytes", lambda: 1 << 30)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "limit is" in err[0] and "available" in err[0], err


@pytest.mark.parametrize(
    "scenario",
    [
        "fork-first",
        "fork-steady",
        "exit-child",
        "munmap",
        "dontneed",
        "mprotect",
        "cow-write",
        "dontneed-pages",
        "mremap",
    ],
)
def test_compact_engine_limit_reaches_64g(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 1 GiB available, the fast engine's compact state takes a fork, exit, munmap,
    MADV_DONTNEED, mprotect, COW write of every page, MADV_DONTNEED page by page or mremap of 64 GiB
    of 4K folios (a few KiB per PTE table), where the reference engine is refused at ~1 GiB (and the
    fast engine too for a run it does not know to stay compact)."""
    from ptesim.fast import footprint

    monkeypatch.setattr(footprint, "available_bytes", lambda: 1 << 30)
    footprint.check_fits(64 << 30, 4096, 4096, 2 << 20, scenario, compact=True)
    with pytest.raises(UsageError):
        footprint.check_fits(64 << 30, 4096, 4096, 2 << 20, scenario, compact=False)
    with pytest.raises(UsageError):
        footprint.check_fits(64 << 30, 4096, 4096, 2 << 20, None, compact=True)
