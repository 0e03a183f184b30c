"""Every model command of the README's tour runs as written (on small sizes; host mode is covered by
its own tests, since it measures this machine)."""

from __future__ import annotations

import glob
import os
import re
import shlex
from pathlib import Path

import pytest

from ptesim.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

#: Options the test shrinks so that the whole tour runs in seconds (the README's sizes are the
#: published ones); everything else is run exactly as the README writes it.
SHRINK = {"--mem": "2M", "--examples": "10", "--cpus": "1,8", "--budget": "20"}
EXTRA = {
    "whatif": ["--fork-mem", "4M", "--mem", "2M"],
    "mutants": ["--only", "fold-drops-dirty", "--budget", "20"],
    "reproduce": ["--mem", "2M"],
}


def tour() -> list[str]:
    text = README.read_text()
    block = text.split("## A tour", 1)[1].split("```", 2)[1]
    lines = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("ptesim ") and not line.startswith("ptesim host"):
            lines.append(re.sub(r"\s*\[[^\]]*\]", "", line))
    return lines


def shrink(argv: list[str]) -> list[str]:
    out: list[str] = []
    for a in argv:  # the shell's glob expansion
        out += sorted(glob.glob(a)) if "*" in a else [a]
    for i, a in enumerate(out[:-1]):
        if a in SHRINK:
            out[i + 1] = SHRINK[a]
    if "--folio" in out and out[out.index("--folio") + 1] == "2M" and "--mem" in out:
        out[out.index("--mem") + 1] = "4M"
    for opt, val in zip(EXTRA.get(out[0], [])[::2], EXTRA.get(out[0], [])[1::2], strict=True):
        if opt not in out:
            out += [opt, val]
    return out


def test_tour_is_found() -> None:
    """The tour block lists the model commands."""
    names = {line.split()[1] for line in tour()}
    assert {"presets", "explain", "trace", "reproduce", "wis", "latency", "whatif", "calibrate"} <= names


#: Tour lines that run every published table (minutes): run with PTESIM_SLOW_TESTS=1.
LONG = ("ptesim validate", "--cross-validate")


def params() -> list[object]:
    long = pytest.mark.skipif(
        not os.environ.get("PTESIM_SLOW_TESTS"), reason="runs every published table; PTESIM_SLOW_TESTS=1"
    )
    return [
        pytest.param(line, marks=[pytest.mark.slow, long]) if any(k in line for k in LONG) else line
        for line in tour()
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One results store for the whole tour, so that its --save lines feed its runs and compare."""
    return tmp_path_factory.mktemp("store") / "runs.sqlite"


@pytest.mark.parametrize("line", params())
def test_tour_command_runs(
    line: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: Path,
) -> None:
    """The command exits 0 and prints something (fuzz and mutants: the clean model passes).
    Plots are written to a temporary directory; ``compare`` finds the two runs it needs."""
    monkeypatch.chdir(README.parent)
    monkeypatch.setenv("PTESIM_DB", str(store))
    argv = shrink(shlex.split(line)[1:])
    if "--plot" in argv:
        i = argv.index("--plot") + 1
        argv[i] = str(tmp_path / Path(argv[i]).name)
    if argv[0] in ("runs", "compare"):  # the tour's two --save lines, when run on their own
        from ptesim import store as results

        for preset in ("v6.8", "v6.9")[len(results.list_runs()) if store.exists() else 0 :]:
            assert main(["explain", "--arch", "x86", "--preset", preset, "--mem", "1M", "--save"]) == 0
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 0, (argv, err)
    assert out.strip(), argv
