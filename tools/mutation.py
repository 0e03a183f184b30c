#!/usr/bin/env python3
"""Mutation testing of ``kernel/``, ``arch/`` and ``cost/`` with mutmut, outside the default suite.

mutmut rewrites every function of those packages into many small variants (an operator flipped,
a constant changed, a call's argument dropped) and runs, for each variant, the tests that execute
the lines it changed.  A variant that no test and no fuzz program notices *survives*; a surviving variant is a
place where the model could be wrong without anyone knowing.

The run happens in a copy of the repository (``--workdir``, default ``/tmp/ptesim-mutation``), so
the working tree is never touched.  The tests used are the default suite without host tests,
without ``tests/test_lint.py`` (ruff and mypy on mutated code say nothing about the model) and
without the process-pool fuzz campaigns, which mutmut cannot attribute to functions; instead
``tools/mutation_fuzz_test.py`` runs a smaller fuzz budget in-process on four targets.

mutmut leaves decorated functions alone; in the copy, ``@kfunc`` / ``@kname(...)`` are moved
after the function (``f = kfunc(f)``, the same object at run time) so that the kernel functions
themselves are mutated too.  mutmut writes the mutants (all variants of a function side by side,
chosen at call time by ``MUTANT_UNDER_TEST``); the tests are chosen and run here:

* one coverage run of the unmutated copy, one context per test (and a second, in-process pass of
  the tests whose model runs go to a process pool), gives for each mutant the tests that execute
  a line it changes; a test that executes none of them cannot tell the mutant apart, and a
  mutant no test executes is "no tests" (a survivor) without running anything;
* each mutant runs in a child forked from a process that imported everything once, its tests
  cheapest first with ``-x``, under an RLIMIT_CPU of 30 s + 8x their coverage-run time;
  pytest's exit 1 (a test failed) is a kill and SIGXCPU a timeout (also a kill); a child past
  its wall-clock limit is a timeout only if it used at least half its CPU limit (on a busy
  machine a starved child is not a slow mutant); any other ending (usage or internal error,
  interrupted, another signal) is "suspicious" and never a kill; the first failing test of each kill is logged
  (``WORKDIR/kills.jsonl``) with its error line;
* ``--budget S`` runs only the cheapest tests of each mutant up to S seconds; a mutant that
  survives them is "survived (capped)" and counted as a survivor (the report also gives the
  bound if all of them fell).

A sample runs in its drawn order, so a run stopped early (``--continue`` resumes it) scores the
longest completed prefix, itself a uniform sample.

    python tools/mutation.py --sample 2000 --seed 13 --budget 10   # a seeded uniform sample
    python tools/mutation.py --functions 'ptesim.cost.model.*' --all  # every mutant of a module
    python tools/mutation.py --continue --budget 10   # resume an interrupted run
    python tools/mutation.py --rerun-survivors        # after adding tests: only the survivors
    python tools/mutation.py --rerun-survivors --keep-coverage --mutants '*.x_madvise__*'  # some
    python tools/mutation.py --rerun-survivors --keep-coverage --drawn 366-687  # a window of the sample
    python tools/mutation.py --report                 # the score of what has run so far

The summary (score with its 95% interval, per package, every surviving mutant with its diff) is
written to ``WORKDIR/summary.md``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import fnmatch
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernel", "arch", "cost")
#: tests that read the process-pool fuzz campaigns (each would re-run every campaign per mutant)
CAMPAIGN_TESTS = (
    "test_campaign_finds_no_violation",
    "test_at_least_500_programs_per_arch",
    "test_mutant_is_caught",
    "test_clean_model_passes_the_same_budget",
)
#: decorators that wrap a model function without changing what it computes (call-stack naming)
MOVABLE_DECORATORS = ("kfunc", "kname")
#: mutmut statuses that count as killed: a test failed, or the mutant ran past its CPU limit
KILLED = ("killed", "timeout")

CONFIG = """
[tool.mutmut]
source_paths = ["src"]
only_mutate = [{only}]
also_copy = ["tools/", "docs/", "README.md", "conftest.py"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-n", "0", "-m", "not host and not slow"]
pytest_add_cli_args_test_selection = [{tests}, "--ignore=tests/test_lint.py", "-k", "{deselect}"]
timeout_multiplier = 4.0
"""

#: the workdir's root conftest.  In the coverage run it names each test's coverage context after
#: the test and records its duration; in mutant runs it logs the first failing test of each mutant
#: (the evidence of a kill).
CONFTEST = """
import json
import math
import os
import time

import pytest

_DURATIONS = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cov = None
    if os.environ.get("PTESIM_MUTATION_COVERAGE"):
        import coverage

        cov = coverage.Coverage.current()
    if cov is not None:
        cov.switch_context(item.nodeid)
    t0 = time.process_time()
    yield
    _DURATIONS[item.nodeid] = time.process_time() - t0
    if cov is not None:
        cov.switch_context("")


def pytest_sessionfinish(session):
    out = os.environ.get("PTESIM_MUTATION_COVERAGE")
    if out:
        with open(out, "w") as f:
            json.dump(_DURATIONS, f)


def pytest_runtest_logreport(report):
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    log = os.environ.get("PTESIM_MUTATION_KILL_LOG")
    if not report.failed or not log or mutant in ("", "stats", "fail"):
        return
    lines = str(report.longrepr).strip().splitlines()
    with open(log, "a") as f:
        f.write(json.dumps({"mutant": mutant, "test": report.nodeid, "when": report.when,
                            "error": lines[-1][:300] if lines else ""}) + "\\n")
"""


def mutmut() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    return str(exe) if exe.exists() else "mutmut"


def module_files(globs: list[str]) -> list[str]:
    """``src/ptesim/arch/arm64/contpte.py`` for ``ptesim.arch.arm64.contpte.*`` (the modules named by
    function globs), so that mutmut mutates only those files; a glob that names a package
    (``ptesim.cost.*``) selects every module under it."""
    out = []
    for g in globs:
        parts = []
        for part in g.split("."):
            if "*" in part or part.startswith(("x_", "x\u01c1")):
                break
            parts.append(part)
        base = ROOT / "src" / Path(*parts)
        out.append(f"src/{'/'.join(parts)}/*" if base.is_dir() else f"src/{'/'.join(parts)}.py")
    return out


def undecorate(source: str) -> tuple[str, int]:
    """Move ``@kfunc`` / ``@kname(...)`` of module- and class-level functions after the function
    (``f = kfunc(f)``): the same wrapped object at run time, but a function mutmut will mutate."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    nodes: list[ast.stmt] = list(tree.body)
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef):
            nodes += cls.body
    edits = []
    for node in nodes:
        if not isinstance(node, ast.FunctionDef) or len(node.decorator_list) != 1:
            continue
        dec = node.decorator_list[0]
        head = dec.func if isinstance(dec, ast.Call) else dec
        if not (isinstance(head, ast.Name) and head.id in MOVABLE_DECORATORS):
            continue
        text = ast.get_source_segment(source, dec)
        assert text is not None and dec.end_lineno is not None and node.end_lineno is not None
        edits.append((dec.lineno, dec.end_lineno, node.end_lineno, node.col_offset, node.name, text))
    for start, end, fend, col, name, text in sorted(edits, reverse=True):
        lines.insert(fend, " " * col + f"{name} = {text}({name})\n")
        del lines[start - 1 : end]
    return "".join(lines), len(edits)


def prepare(workdir: Path, fresh: bool, tests: list[str], only: list[str] | None = None) -> None:
    """Copy the tracked files of the repository into ``workdir`` and configure mutmut there."""
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in tracked:
        src = ROOT / name
        if not src.is_file():
            continue
        dst = workdir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        text = None
        if name.endswith(".py") and any(name.startswith(f"src/ptesim/{p}/") for p in PACKAGES):
            text, _ = undecorate(src.read_text())
        if text is None:
            shutil.copy2(src, dst)
        elif not dst.exists() or dst.read_text() != text:
            dst.write_text(text)
            st = src.stat()
            os.utime(dst, (st.st_atime, st.st_mtime))  # mutmut regenerates a file only if it changed
    (workdir / "conftest.py").write_text(CONFTEST)
    globs = only or [f"src/ptesim/{p}/*" for p in PACKAGES]
    deselect = " and ".join(f"not {t}" for t in CAMPAIGN_TESTS)
    selection = ", ".join(f'"{t}"' for t in tests)
    pyproject = workdir / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + CONFIG.format(only=", ".join(f'"{g}"' for g in globs), deselect=deselect, tests=selection)
    )


def env(workdir: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("PTESIM_HOST_TESTS", None)  # never touch the machine's THP settings
    e["PYTHONPATH"] = str(workdir / "mutants" / "src")  # for tests that start `python -m ptesim.cli`
    e["PTESIM_MUTATION_KILL_LOG"] = str(workdir / "kills.jsonl")
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
    """Every mutant mutmut generated in the packages (the values are mutmut's own, unused here)."""
    out: dict[str, int | None] = {}
    for pkg in PACKAGES:
        for meta in (workdir / "mutants" / "src" / "ptesim" / pkg).rglob("*.py.meta"):
            data = json.loads(meta.read_text())
            out.update(data.get("exit_code_by_key", {}))
    return out


# --- which tests can kill which mutant -------------------------------------------------------


def pytest_selection(tests: list[str]) -> list[str]:
    deselect = " and ".join(f"not {t}" for t in CAMPAIGN_TESTS)
    return [*tests, "--ignore=tests/test_lint.py", "-k", deselect]


PYTEST_ARGS = ["--rootdir=.", "-p", "no:cacheprovider", "-n", "0", "-m", "not host and not slow"]


#: tests whose model runs go to a process pool (``ptesim.parallel.map_cells``), where coverage
#: does not follow them; a second coverage pass runs them with ``PTESIM_JOBS=1`` (in-process;
#: without the fuzz and mutant hunts, which fork by themselves)
POOL_TESTS = (
    "tests/test_readme_tour.py",
    "tests/test_cost_cli.py",
    "tests/test_calibrate.py",
    "tests/test_mprotect_mremap.py",
    "tests/test_sweeps.py",
    "tests/test_cli_model.py",
    "tests/test_options.py",
    "tests/test_tables.py",
    "tests/test_store.py",
)


def coverage_run_new(workdir: Path, tests: list[str]) -> set[str]:
    """Coverage of tests added since the run (``.coverage.new``, then ``.coverage.new2``, ...: an
    earlier batch of new tests keeps its coverage): their ids, their durations merged into
    ``durations.json``."""
    include = ",".join(f"src/ptesim/{p}/*" for p in PACKAGES)
    data = ".coverage.new"
    n = 1
    while (workdir / data).exists():
        n += 1
        data = f".coverage.new{n}"
    e = env(workdir)
    e["PYTHONPATH"] = str(workdir / "src")
    e["PTESIM_MUTATION_COVERAGE"] = str(workdir / "durations.new.json")
    e.pop("PTESIM_MUTATION_KILL_LOG")
    cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}", f"--include={include}"]
    cmd += ["-m", "pytest", "-q", *PYTEST_ARGS, *tests]
    if subprocess.run(cmd, cwd=workdir, env=e).returncode != 0:
        raise SystemExit("the new tests fail on the unmutated model; fix that first")
    new: dict[str, float] = json.loads((workdir / "durations.new.json").read_text())
    path = workdir / "durations.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | new))
    return set(new)


def coverage_run(workdir: Path, tests: list[str]) -> None:
    """Run the selected tests once on the unmutated copy under coverage, one context per test,
    recording each test's CPU time (``WORKDIR/durations.json``); then the tests that use a
    process pool again, in-process (``.coverage.inproc``; their failures there do not matter:
    only which lines each test reaches is read)."""
    include = ",".join(f"src/ptesim/{p}/*" for p in PACKAGES)
    for data, durations, extra, selection in (
        (".coverage", "durations.json", {}, pytest_selection(tests)),
        (
            ".coverage.inproc",
            "durations.inproc.json",
            {"PTESIM_JOBS": "1"},
            [*POOL_TESTS, "-k", "not fuzz and not mutants"],
        ),
    ):
        if data != ".coverage" and not any(t == "tests" or t in POOL_TESTS for t in tests):
            continue
        e = env(workdir) | extra
        e["PYTHONPATH"] = str(workdir / "src")
        e["PTESIM_MUTATION_COVERAGE"] = str(workdir / durations)
        e.pop("PTESIM_MUTATION_KILL_LOG")
        cmd = [sys.executable, "-m", "coverage", "run", f"--data-file={data}", f"--include={include}"]
        cmd += ["-m", "pytest", "-q", *PYTEST_ARGS, *selection]
        rc = subprocess.run(cmd, cwd=workdir, env=e).returncode
        if rc != 0 and data == ".coverage":
            raise SystemExit(f"the unmutated tests fail under coverage (exit {rc}); fix that first")


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Module-level functions as ``x_name`` and methods as ``xǁClassǁname`` (mutmut's names)."""
    out: dict[str, ast.FunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[f"x_{node.name}"] = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef):
                    out[f"x\u01c1{node.name}\u01c1{sub.name}"] = sub
    return out


def _statement_span(func: ast.FunctionDef, line: int) -> tuple[int, int]:
    """The lines of the innermost statement of ``func`` holding ``line`` (for a compound
    statement only its header), or the whole function for its signature."""
    if line < func.body[0].lineno:
        return func.lineno, func.end_lineno or func.lineno
    best: tuple[int, int] | None = None
    for node in ast.walk(func):
        if not isinstance(node, ast.stmt) or node is func or node.end_lineno is None:
            continue
        if not node.lineno <= line <= node.end_lineno:
            continue
        end = node.end_lineno
        bodies = [getattr(node, f, None) for f in ("body", "orelse", "finalbody", "handlers")]
        firsts = [b[0].lineno for b in bodies if isinstance(b, list) and b and isinstance(b[0], ast.AST)]
        if firsts and line < min(firsts):
            end = min(firsts) - 1
        elif firsts:
            continue  # the line is inside a body: a deeper statement holds it
        if best is None or end - node.lineno < best[1] - best[0]:
            best = (node.lineno, end)
    return best or (line, line)


def mutant_sources(workdir: Path, module: str) -> dict[str, tuple[list[str], list[str]]]:
    """For each mutant of one module: (original function lines, mutated function lines)."""
    path = workdir / "mutants" / "src" / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = path.with_suffix("") / "__init__.py"
    text = path.read_text()
    lines = text.splitlines()
    defs: dict[str, ast.FunctionDef] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and "__mutmut_" in node.name:
            defs[node.name] = node
    out = {}
    for name, node in defs.items():
        base, _, which = name.rpartition("__mutmut_")
        orig = defs.get(f"{base}__mutmut_orig")
        if which == "orig" or orig is None:
            continue
        a = lines[orig.lineno - 1 : orig.end_lineno]
        b = [ln.replace(name, f"{base}__mutmut_orig") for ln in lines[node.lineno - 1 : node.end_lineno]]
        out[f"{module}.{name}"] = (a, b)
    return out


def changed_lines(a: list[str], b: list[str]) -> list[int]:
    """0-based lines of ``a`` (the original function) that the mutant changes."""
    out: list[int] = []
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            out += list(range(i1, i2)) if i2 > i1 else [max(i1 - 1, 0)]
    return out


def select_tests(workdir: Path, names: list[str]) -> dict[str, list[str]]:
    """The tests that execute a line each mutant changes (a test that runs none of them behaves
    the same under the mutant), from the coverage run; cheapest first."""
    import coverage

    datas = []
    for path in sorted(workdir.glob(".coverage*")):
        datas.append(coverage.CoverageData(basename=str(path)))
        datas[-1].read()
    durations: dict[str, float] = json.loads((workdir / "durations.json").read_text())
    by_module: dict[str, list[str]] = {}
    for n in names:
        by_module.setdefault(n.rpartition(".")[0], []).append(n)
    out: dict[str, list[str]] = {}
    for module, mnames in by_module.items():
        src = workdir / "src" / (module.replace(".", "/") + ".py")
        if not src.exists():
            src = src.with_suffix("") / "__init__.py"
        funcs = _functions(ast.parse(src.read_text()))
        ctx: dict[int, set[str]] = {}
        for data in datas:
            for line, cs in data.contexts_by_lineno(str(src.resolve())).items():
                ctx.setdefault(line, set()).update(cs)
        sources = mutant_sources(workdir, module)
        for n in mnames:
            base = n.rpartition(".")[2].rpartition("__mutmut_")[0]
            func = funcs.get(base)
            a, b = sources[n]
            if func is None:  # not found in the copy: every test that reaches the module
                spans = [(1, 10**9)]
            else:
                spans = [_statement_span(func, func.lineno + i) for i in changed_lines(a, b)]
            tests: set[str] = set()
            for line, cs in ctx.items():
                if any(lo <= line <= hi for lo, hi in spans):
                    tests.update(c for c in cs if c)
            tests &= durations.keys()
            out[n] = sorted(tests, key=lambda t: (durations[t], t))
    return out


# --- running the mutants ----------------------------------------------------------------------

#: pytest exit codes: 1 tests failed (a kill); 0 all passed (a survivor); anything else (usage
#: error, internal error, interrupted, nothing collected, a signal) is the harness's problem and
#: is reported as "suspicious", never as a kill.
RUNNER = r"""
import json, os, resource, signal, sys, time
import pytest

workdir, jobs, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
todo = json.load(open(os.path.join(workdir, "todo.json")))
results = os.path.join(workdir, "results.jsonl")
logs = os.path.join(workdir, "logs")
os.makedirs(logs, exist_ok=True)
os.environ["MUTANT_UNDER_TEST"] = ""
os.environ["PY_IGNORE_IMPORTMISMATCH"] = "1"
files = sorted({t.split("::")[0] for job in todo for t in job["tests"]})
# import pytest's plugins, the tests and the mutated model once; every mutant forks from here
null = os.open(os.devnull, os.O_WRONLY)
saved = os.dup(1), os.dup(2)
os.dup2(null, 1); os.dup2(null, 2)
pytest.main(["--collect-only", "-q", *args, *files])
os.dup2(saved[0], 1); os.dup2(saved[1], 2)

def child(job):
    from mutmut.mutation.trampoline import set_mutant_under_test
    os.setpgid(0, 0)  # a process group: a timeout also ends the pool workers a test started
    fd = os.open(os.path.join(logs, job["mutant"] + ".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1); os.dup2(fd, 2)
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_limit"], job["cpu_limit"] + 5))
    set_mutant_under_test(job["mutant"])
    # every trampolined call asks which mutant is active; in this child the answer never changes,
    # so answer without reading os.environ (subprocesses still read MUTANT_UNDER_TEST)
    import mutmut.mutation.trampoline as trampoline
    trampoline.get_mutant_under_test = lambda name=job["mutant"]: name
    try:
        rc = int(pytest.main(["-x", "-q", *args, *job["tests"]]))
    except BaseException:
        rc = 99
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(rc)

running = {}
queue = list(todo)
done = 0
while queue or running:
    while queue and len(running) < jobs:
        job = queue.pop(0)
        pid = os.fork()
        if pid == 0:
            child(job)
        running[pid] = (job, time.monotonic())
    pid, status, usage = os.wait4(-1, os.WNOHANG)
    if pid == 0:
        now = time.monotonic()
        for p, (job, t0) in list(running.items()):
            if now - t0 > job["wall_limit"]:
                os.killpg(p, signal.SIGKILL)
                job["wall_killed"] = True
        time.sleep(0.05)
        continue
    job, t0 = running.pop(pid)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the mutant's tests left running
    except ProcessLookupError:
        pass
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = -sig
        cpu = usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= job["cpu_limit"]):
            st = "timeout"
        elif sig == signal.SIGKILL and job.get("wall_killed") and cpu >= job["cpu_limit"] / 2:
            st = "timeout"  # spinning, but slower than its CPU limit allows on a busy machine
        else:
            st = "suspicious"  # another signal, or killed while starved of CPU: not a kill
    else:
        code = os.WEXITSTATUS(status)
        st = {0: "survived", 1: "killed"}.get(code, "suspicious")
    if st == "survived" and job["all_tests"] > len(job["tests"]):
        st = "survived (capped)"
    rec = {"mutant": job["mutant"], "status": st, "exit": code, "tests": len(job["tests"]),
           "all_tests": job["all_tests"],
           "cpu": round(usage.ru_utime + usage.ru_stime, 2), "wall": round(time.monotonic() - t0, 2)}
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    done += 1
    line = f"[{done}/{len(todo)}] {st:10s} {rec['cpu']:7.1f}s cpu {rec['tests']:5d} tests"
    print(line, job["mutant"], flush=True)
"""


def run_mutants(
    workdir: Path,
    names: list[str],
    jobs: int,
    budget: float | None = None,
    only: set[str] | None = None,
    complete: set[str] | frozenset[str] = frozenset(),
) -> int:
    """Run each mutant's selected tests in a child forked from a process that has imported
    everything once; a mutant no test executes is recorded as "no tests" without running.

    With a ``budget`` (seconds of the coverage run's test time) a mutant runs only its cheapest
    tests up to that budget (at least one); if it survives them it is "survived (capped)", and
    ``--rerun-survivors --budget 0`` runs it again with every test.  With ``only`` (test ids) a
    mutant runs only those of its tests, and one that reaches none keeps its result; a mutant in
    ``complete`` already survived every other test, so surviving these too is "survived"."""
    selection = select_tests(workdir, names)
    durations: dict[str, float] = json.loads((workdir / "durations.json").read_text())
    todo = []
    with (workdir / "results.jsonl").open("a") as f:
        for n in names:
            tests = selection[n]
            if only is not None:
                tests = [t for t in tests if t in only]
                if not tests:
                    continue
            if not tests:
                f.write(json.dumps({"mutant": n, "status": "no tests", "exit": None, "tests": 0}) + "\n")
                continue
            if budget:
                total, cut = 0.0, len(tests)
                for i, t in enumerate(tests):
                    total += durations[t]
                    if total > budget and i > 0:
                        cut = i
                        break
                tests = tests[:cut]
            est = sum(durations[t] for t in tests)
            cpu = math.ceil(30 + 8 * est)  # the trampolines make the model about 4x slower
            todo.append(
                {
                    "mutant": n,
                    "tests": tests,
                    "all_tests": len(tests) if n in complete else len(selection[n]),
                    "cpu_limit": cpu,
                    "wall_limit": 20 * cpu + 600,  # only for a hang: RLIMIT_CPU is the limit
                }
            )
    (workdir / "todo.json").write_text(json.dumps(todo))
    print(f"{len(names) - len(todo)} mutants reached by no test; running {len(todo)}", flush=True)
    cmd = [sys.executable, "-c", RUNNER, str(workdir), str(jobs), *PYTEST_ARGS]
    return subprocess.run(cmd, cwd=workdir / "mutants", env=env(workdir)).returncode


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, oldest first (none if it does not exist yet)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def results(workdir: Path) -> dict[str, dict[str, object]]:
    """The last recorded result of each mutant."""
    return {rec["mutant"]: rec for rec in _records(workdir / "results.jsonl")}


# --- the score --------------------------------------------------------------------------------


def exact_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion k/n."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def package_of(name: str) -> str:
    """``arch/arm64`` for ``ptesim.arch.arm64.contpte.x_...``, ``kernel`` for ``ptesim.kernel.memory...``."""
    parts = name.split(".")
    return "arch/arm64" if parts[1:3] == ["arch", "arm64"] else parts[1]


def module_of(name: str) -> str:
    return name.rpartition(".")[0].removeprefix("ptesim.").replace(".", "/") + ".py"


def kills(workdir: Path) -> dict[str, dict[str, str]]:
    """The logged first failure of each killed mutant."""
    out: dict[str, dict[str, str]] = {}
    for rec in _records(workdir / "kills.jsonl"):
        out.setdefault(rec["mutant"], rec)
    return out


def score_lines(title: str, rows: dict[str, list[str]]) -> list[str]:
    lines = [f"| {title} | killed | run | score | 95% interval |", "|---|---:|---:|---:|---|"]
    for key, sts in sorted(rows.items()):
        k = sum(s in KILLED for s in sts)
        n = len(sts)
        lo, hi = exact_ci(k, n)
        lines.append(f"| {key} | {k} | {n} | {100 * k / n:.1f}% | {100 * lo:.1f}–{100 * hi:.1f}% |")
    return lines


def mutant_diff(workdir: Path, name: str) -> str:
    a, b = mutant_sources(workdir, name.rpartition(".")[0])[name]
    return "\n".join(difflib.unified_diff(a, b, lineterm="", n=1))


def report(workdir: Path, diffs: bool = True) -> str:
    meta = json.loads((workdir / "run.json").read_text())
    res = results(workdir)
    names: list[str] = meta["chosen"]
    done = next((i for i, n in enumerate(names) if n not in res), len(names))
    if done < len(names):  # stopped early: score the longest prefix that has run (a uniform sample)
        names = names[:done]
    counts: dict[str, int] = {}
    by_pkg: dict[str, list[str]] = {}
    by_mod: dict[str, list[str]] = {}
    survivors: list[str] = []
    for n in names:
        s = str(res[n]["status"]) if n in res else "not run"
        counts[s] = counts.get(s, 0) + 1
        if s == "not run":
            continue
        by_pkg.setdefault(package_of(n), []).append(s)
        by_mod.setdefault(module_of(n), []).append(s)
        if s not in KILLED:
            survivors.append(n)
    run = sum(v for k, v in counts.items() if k != "not run")
    killed = sum(counts.get(s, 0) for s in KILLED)
    lines = [
        f"mutants generated in {', '.join(PACKAGES)}: {meta['generated']}",
        f"chosen: {len(meta['chosen'])} ({meta['how']}); scored: the first {len(names)} drawn, {run} run",
        f"command: {meta['command']}",
        f"date: {meta['date']}",
        "statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    ]
    if run:
        lo, hi = exact_ci(killed, run)
        lines.append(
            f"score: {killed}/{run} = {100 * killed / run:.1f}% killed (a test failed, or a timeout); "
            f"95% interval (Clopper-Pearson) {100 * lo:.1f}–{100 * hi:.1f}%"
        )
        capped = counts.get("survived (capped)", 0)
        if capped:
            lo2, hi2 = exact_ci(killed + capped, run)
            lines.append(
                f"upper bound: {killed + capped}/{run} = {100 * (killed + capped) / run:.1f}% "
                f"({100 * lo2:.1f}–{100 * hi2:.1f}%) if the {capped} capped survivors fell to their "
                "remaining tests"
            )
        lines += ["", *score_lines("package", by_pkg), "", *score_lines("module", by_mod)]
    else:
        lines.append("score: nothing run yet")
    log = kills(workdir)
    by_test: dict[str, int] = {}
    for n in names:
        if n in res and res[n]["status"] == "killed":
            f = log[n]["test"].split("::")[0] if n in log else "(no failure logged)"
            by_test[f] = by_test.get(f, 0) + 1
    if by_test:
        lines += ["", "first failing test file of the killed mutants:", ""]
        lines += [f"  {v:5d} {f}" for f, v in sorted(by_test.items(), key=lambda kv: -kv[1])]
    lines += ["", "## survivors", ""]
    for n in sorted(survivors):
        lines.append(f"### {n} ({res[n]['status']}, {res[n]['tests']} tests)")
        if diffs:
            lines += ["", "```diff", mutant_diff(workdir, n), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0], allow_abbrev=False)
    mode = ap.add_mutually_exclusive_group()
    ap.add_argument("--sample", type=int, metavar="N", help="run N mutants drawn at random (of --functions)")
    ap.add_argument("--functions", nargs="+", metavar="GLOB", help="only the mutants of these functions")
    mode.add_argument("--all", action="store_true", help="run every mutant (of --functions)")
    mode.add_argument("--report", action="store_true", help="only print the score of what has run")
    mode.add_argument(
        "--continue",
        dest="cont",
        action="store_true",
        help="run the chosen mutants of an interrupted run that have no result yet",
    )
    mode.add_argument(
        "--rerun-survivors", action="store_true", help="run the surviving mutants of the last run again"
    )
    ap.add_argument(
        "--no-diffs",
        action="store_true",
        help="--report (and the summary of a run) without the survivors' diffs",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="run each mutant's cheapest tests up to this much test time (default: every test)",
    )
    ap.add_argument(
        "--new-tests",
        nargs="+",
        metavar="TEST",
        help="with --rerun-survivors: run only these (new) tests against the survivors they reach",
    )
    ap.add_argument(
        "--keep-coverage",
        action="store_true",
        help="with --rerun-survivors: the workdir as it is (no copy, no new coverage run)",
    )
    ap.add_argument(
        "--scored-only",
        action="store_true",
        help="with --rerun-survivors: only the survivors in the scored prefix of the sample",
    )
    ap.add_argument(
        "--mutants",
        nargs="+",
        metavar="GLOB",
        help="with --rerun-survivors: only the survivors whose names match (e.g. those a new test reaches)",
    )
    ap.add_argument(
        "--drawn",
        metavar="FIRST-LAST",
        help="with --rerun-survivors: only the survivors drawn in these positions of the sample "
        "(1-based, inclusive; e.g. 366-687, the mutants run after a batch was looked at)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (default 2)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ptesim-mutation"))
    ap.add_argument(
        "--tests",
        nargs="+",
        default=["tests", "tools/mutation_fuzz_test.py"],
        help="test files or directories that may kill (default: all of tests/ and the in-process fuzz)",
    )
    a = ap.parse_args(argv)
    workdir: Path = a.workdir
    if a.report:
        print(report(workdir, diffs=not a.no_diffs))
        return 0
    if a.rerun_survivors:
        meta = json.loads((workdir / "run.json").read_text())
        res = results(workdir)
        chosen = meta["chosen"]
        if a.scored_only:
            chosen = chosen[: next((i for i, n in enumerate(chosen) if n not in res), len(chosen))]
        # survivors, and timeouts too: their limits are worth a second look
        names = [n for n in chosen if n in res and res[n]["status"] != "killed"]
        if a.new_tests and not a.mutants:
            # a timeout is a kill by tests other than the new ones: running only the new ones
            # cannot take it back
            names = [n for n in names if res[n]["status"] != "timeout"]
        if a.mutants:
            names = [n for n in names if any(fnmatch.fnmatch(n, g) for g in a.mutants)]
        if a.drawn:
            first, _, last = a.drawn.partition("-")
            if not (first.isdigit() and last.isdigit() and 1 <= int(first) <= int(last)):
                ap.error(f"--drawn: {a.drawn!r} is not FIRST-LAST (1-based positions)")
            window = set(meta["chosen"][int(first) - 1 : int(last)])
            names = [n for n in names if n in window]
        if not a.keep_coverage:  # the workdir as it is: the sources it was sampled from
            prepare(workdir, fresh=False, tests=meta["tests"], only=meta["only"])
            generate(workdir, a.jobs)
        new = None
        if a.new_tests:
            new = coverage_run_new(workdir, a.new_tests)
        elif not a.keep_coverage:
            coverage_run(workdir, meta["tests"])
        print(f"running the {len(names)} survivors again", flush=True)
        complete = {n for n in names if res[n]["status"] == "survived"} if new is not None else set()
        rc = run_mutants(workdir, names, a.jobs, a.budget, only=new, complete=complete)
        text = report(workdir, diffs=not a.no_diffs)
        (workdir / "summary.md").write_text(text + "\n")
        print(text)
        return rc
    if a.cont:
        meta = json.loads((workdir / "run.json").read_text())
        res = results(workdir)
        names = [n for n in meta["chosen"] if n not in res]
        print(f"running the {len(names)} chosen mutants that have no result yet", flush=True)
        rc = run_mutants(workdir, names, a.jobs, a.budget)
        text = report(workdir, diffs=not a.no_diffs)
        (workdir / "summary.md").write_text(text + "\n")
        print(text)
        return rc
    only = module_files(a.functions) if a.functions else None
    prepare(workdir, fresh=True, tests=a.tests, only=only)
    names = generate(workdir, a.jobs)
    chosen = names
    if a.functions:
        chosen = [n for n in names if any(fnmatch.fnmatch(n, g) for g in a.functions)]
    if a.sample:
        pool = len(chosen)
        # in the drawn order, which is also the run order: any completed prefix is itself a
        # uniform sample, so a run stopped early still gives an unbiased score
        chosen = random.Random(a.seed).sample(chosen, min(a.sample, pool))
        how = f"uniform random sample, seed {a.seed}, of {pool}"
    elif a.functions or a.all:
        how = "every mutant" + (f" of {' '.join(a.functions)}" if a.functions else "")
    else:
        ap.error("say --sample N, --functions GLOB... or --all")
    print(f"{len(names)} mutants generated; running {len(chosen)}", flush=True)
    meta = {
        "chosen": chosen,
        "generated": len(names),
        "how": how,
        "tests": a.tests,
        "only": only,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python tools/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (workdir / "run.json").write_text(json.dumps(meta))
    coverage_run(workdir, a.tests)
    rc = run_mutants(workdir, chosen, a.jobs, a.budget)
    text = report(workdir, diffs=not a.no_diffs)
    (workdir / "summary.md").write_text(text + "\n")
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
