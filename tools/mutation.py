#!/usr/bin/env python3
"""Mutation testing of ``kernel/``, ``arch/`` and ``cost/`` with mutmut, outside the default suite.

mutmut rewrites every function of those packages into many small variants (an operator flipped,
a constant changed, a call's argument dropped) and runs, for each variant, the tests that reach the
function.  A variant that no test and no fuzz program notices *survives*; a surviving variant is a
place where the model could be wrong without anyone knowing.

The run happens in a copy of the repository (``--workdir``, default ``/tmp/ptesim-mutation``), so
the working tree is never touched.  The tests used are the default suite without host tests,
without ``tests/test_lint.py`` (ruff and mypy on mutated code say nothing about the model) and
without the process-pool fuzz campaigns, which mutmut cannot attribute to functions; instead
``tools/mutation_fuzz_test.py`` runs a smaller fuzz budget in-process on four targets.

    python tools/mutation.py --sample 200             # 200 mutants drawn at random (seeded)
    python tools/mutation.py --functions 'ptesim.arch.arm64.contpte.*' \
        --tests tests/test_arm64_contpte.py tools/mutation_fuzz_test.py   # targeted: minutes
    python tools/mutation.py --all                    # every mutant (hours on 2 cores)
    python tools/mutation.py --report                 # the score of what has run so far

The summary (score, every surviving mutant with its diff) is written to ``WORKDIR/summary.md``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernel", "arch", "cost")
#: tests that read the process-pool fuzz campaigns (each would re-run every campaign per mutant)
CAMPAIGN_TESTS = (
    "test_campaign_finds_no_violation",
    "test_at_least_500_programs_per_arch",
    "test_mutant_is_caught",
    "test_clean_model_passes_the_same_budget",
)

CONFIG = """
[tool.mutmut]
source_paths = ["src"]
only_mutate = [{only}]
also_copy = ["tools/", "docs/", "README.md"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-m", "not host and not slow"]
pytest_add_cli_args_test_selection = [{tests}, "--ignore=tests/test_lint.py", "-k", "{deselect}"]
timeout_multiplier = 4.0
"""


def mutmut() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    return str(exe) if exe.exists() else "mutmut"


def module_files(globs: list[str]) -> list[str]:
    """``src/ptesim/arch/arm64/contpte.py`` for ``ptesim.arch.arm64.contpte.*`` (the modules named by
    function globs), so that mutmut mutates only those files."""
    out = []
    for g in globs:
        parts = []
        for part in g.split("."):
            if "*" in part or part.startswith(("x_", "x\u01c1")):
                break
            parts.append(part)
        out.append("src/" + "/".join(parts) + ".py")
    return out


def prepare(workdir: Path, fresh: bool, tests: list[str], files: list[str] | None = None) -> None:
    """Copy the tracked files of the repository into ``workdir`` and configure mutmut there."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in files:
        src = ROOT / name
        if src.is_file():
            dst = workdir / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    only = ", ".join(f'"{f}"' for f in files) if files else ", ".join(f'"src/ptesim/{p}/*"' for p in PACKAGES)
    deselect = " and ".join(f"not {t}" for t in CAMPAIGN_TESTS)
    pyproject = workdir / "pyproject.toml"
    selection = ", ".join(f'"{t}"' for t in tests)
    pyproject.write_text(pyproject.read_text() + CONFIG.format(only=only, deselect=deselect, tests=selection))


def env(workdir: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("PTESIM_HOST_TESTS", None)  # never touch the machine's THP settings
    e["PYTHONPATH"] = str(workdir / "mutants" / "src")  # for tests that start `python -m ptesim.cli`
    return e


def generate(workdir: Path, jobs: int) -> list[str]:
    """Write the mutated sources (without running anything) and return every mutant name."""
    code = (
        "import os\n"
        "from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants\n"
        "from mutmut.utils.file_utils import setup_source_paths\n"
        "os.makedirs('mutants', exist_ok=True)\n"
        f"copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants({jobs})\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env(workdir), check=True)
    return sorted(statuses(workdir))


def statuses(workdir: Path) -> dict[str, int | None]:
    """Every mutant name and its mutmut exit code (None: not run yet)."""
    out: dict[str, int | None] = {}
    for pkg in PACKAGES:
        for meta in (workdir / "mutants" / "src" / "ptesim" / pkg).rglob("*.py.meta"):
            data = json.loads(meta.read_text())
            out.update(data.get("exit_code_by_key", {}))
    return out


#: mutmut's exit-code meanings (mutmut.stats.status_by_exit_code)
def status_name(code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    return "not checked" if code is None else str(status_by_exit_code.get(code, f"exit {code}"))


def report(workdir: Path, names: list[str] | None) -> str:
    st = statuses(workdir)
    chosen = names if names is not None else [n for n, c in st.items() if c is not None]
    counts: dict[str, int] = {}
    survivors: list[str] = []
    for n in chosen:
        s = status_name(st.get(n))
        counts[s] = counts.get(s, 0) + 1
        if s in ("survived", "no tests"):
            survivors.append(n)
    run = sum(v for k, v in counts.items() if k != "not checked")
    killed = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("caught by type check", 0)
    lines = [
        f"mutants generated in {', '.join(PACKAGES)}: {len(st)}",
        f"mutants run: {run} ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})",
        f"score: {killed}/{run} = {100 * killed / run:.1f}% killed" if run else "score: nothing run yet",
        "",
    ]
    per_pkg: dict[str, list[int]] = {}
    for n in chosen:
        s = status_name(st.get(n))
        if s == "not checked":
            continue
        pkg = n.split(".")[1]
        k = per_pkg.setdefault(pkg, [0, 0])
        k[1] += 1
        k[0] += s in ("killed", "timeout", "caught by type check")
    for pkg, (k, t) in sorted(per_pkg.items()):
        lines.append(f"  {pkg}: {k}/{t} killed")
    lines += ["", "## survivors", ""]
    for n in sorted(survivors):
        diff = subprocess.run(
            [mutmut(), "show", n], cwd=workdir, env=env(workdir), capture_output=True, text=True
        ).stdout
        lines += [f"### {n}", "", "```diff", diff.strip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    mode = ap.add_mutually_exclusive_group()
    ap.add_argument("--sample", type=int, metavar="N", help="run N mutants drawn at random (of --functions)")
    ap.add_argument("--functions", nargs="+", metavar="GLOB", help="only the mutants of these functions")
    mode.add_argument("--all", action="store_true", help="run every mutant")
    mode.add_argument("--report", action="store_true", help="only print the score of what has run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ptesim-mutation"))
    ap.add_argument("--resume", action="store_true", help="keep the workdir and the results in it")
    ap.add_argument(
        "--tests",
        nargs="+",
        default=["tests", "tools/mutation_fuzz_test.py"],
        help="test files or directories mutmut may run (default: all of tests/ and the in-process fuzz)",
    )
    a = ap.parse_args(argv)
    workdir: Path = a.workdir
    if a.report:
        text = report(workdir, None)
        print(text)
        return 0
    prepare(
        workdir, fresh=not a.resume, tests=a.tests, files=module_files(a.functions) if a.functions else None
    )
    names = generate(workdir, a.jobs)
    chosen = names
    if a.functions:
        chosen = [n for n in names if any(fnmatch.fnmatch(n, g) for g in a.functions)]
    if a.sample:
        chosen = sorted(random.Random(a.seed).sample(chosen, min(a.sample, len(chosen))))
    elif not (a.functions or a.all):
        ap.error("say --sample N, --functions GLOB... or --all")
    print(f"{len(names)} mutants generated; running {len(chosen)}", flush=True)
    (workdir / "chosen.json").write_text(json.dumps(chosen))
    cmd = [mutmut(), "run", "--max-children", str(a.jobs), *chosen]
    rc = subprocess.run(cmd, cwd=workdir, env=env(workdir)).returncode
    text = report(workdir, chosen)
    (workdir / "summary.md").write_text(text + "\n")
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
