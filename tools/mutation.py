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

mutmut leaves decorated functions alone; in the copy, ``@kfunc`` / ``@kname(...)`` are moved
after the function (``f = kfunc(f)``, the same object at run time) so that the kernel functions
themselves are mutated too.  Each mutant runs the tests that reach its function (mutmut's
per-function record), cheapest first, stopping at the first failure; the first failing test of
every killed mutant is logged (``WORKDIR/kills.jsonl``) so that a kill can be traced to a test.

    python tools/mutation.py --sample 300 --seed 1    # 300 mutants drawn at random (seeded)
    python tools/mutation.py --functions 'ptesim.cost.*' --all-of-functions   # a whole package
    python tools/mutation.py --all                    # every mutant (hours on 2 cores)
    python tools/mutation.py --rerun-survivors        # after adding tests: only the survivors
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
pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "no:xdist", "-m", "not host and not slow"]
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


PYTEST_ARGS = ["--rootdir=.", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "not host and not slow"]


def coverage_run(workdir: Path, tests: list[str]) -> None:
    """Run the selected tests once on the unmutated copy under coverage, one context per test,
    recording each test's CPU time (``WORKDIR/durations.json``)."""
    e = env(workdir)
    e["PYTHONPATH"] = str(workdir / "src")
    e["PTESIM_MUTATION_COVERAGE"] = str(workdir / "durations.json")
    e.pop("PTESIM_MUTATION_KILL_LOG")
    include = ",".join(f"src/ptesim/{p}/*" for p in PACKAGES)
    cmd = [sys.executable, "-m", "coverage", "run", "--data-file=.coverage", f"--include={include}"]
    cmd += ["-m", "pytest", "-q", *PYTEST_ARGS, *pytest_selection(tests)]
    rc = subprocess.run(cmd, cwd=workdir, env=e).returncode
    if rc != 0:
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

    data = coverage.CoverageData(basename=str(workdir / ".coverage"))
    data.read()
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
        ctx = data.contexts_by_lineno(str(src.resolve()))
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
    fd = os.open(os.path.join(logs, job["mutant"] + ".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1); os.dup2(fd, 2)
    resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_limit"], job["cpu_limit"] + 5))
    set_mutant_under_test(job["mutant"])
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
                os.kill(p, signal.SIGKILL)
                job["wall_killed"] = True
        time.sleep(0.05)
        continue
    job, t0 = running.pop(pid)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = -sig
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and job.get("wall_killed")):
            st = "timeout"
        elif sig == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= job["cpu_limit"]:
            st = "timeout"
        else:
            st = "suspicious"
    else:
        code = os.WEXITSTATUS(status)
        st = {0: "survived", 1: "killed"}.get(code, "suspicious")
    rec = {"mutant": job["mutant"], "status": st, "exit": code, "tests": len(job["tests"]),
           "cpu": round(usage.ru_utime + usage.ru_stime, 2), "wall": round(time.monotonic() - t0, 2)}
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    done += 1
    line = f"[{done}/{len(todo)}] {st:10s} {rec['cpu']:7.1f}s cpu {rec['tests']:5d} tests"
    print(line, job["mutant"], flush=True)
"""


def run_mutants(workdir: Path, names: list[str], jobs: int) -> int:
    """Run each mutant's selected tests in a child forked from a process that has imported
    everything once; a mutant no test executes is recorded as "no tests" without running."""
    selection = select_tests(workdir, names)
    durations: dict[str, float] = json.loads((workdir / "durations.json").read_text())
    todo = []
    with (workdir / "results.jsonl").open("a") as f:
        for n in names:
            tests = selection[n]
            if not tests:
                f.write(json.dumps({"mutant": n, "status": "no tests", "exit": None, "tests": 0}) + "\n")
                continue
            est = sum(durations[t] for t in tests)
            cpu = math.ceil(30 + 8 * est)  # the trampolines make the model about 4x slower
            todo.append({"mutant": n, "tests": tests, "cpu_limit": cpu, "wall_limit": 3 * cpu + 120})
    (workdir / "todo.json").write_text(json.dumps(todo))
    print(f"{len(names) - len(todo)} mutants reached by no test; running {len(todo)}", flush=True)
    cmd = [sys.executable, "-c", RUNNER, str(workdir), str(jobs), *PYTEST_ARGS]
    return subprocess.run(cmd, cwd=workdir / "mutants", env=env(workdir)).returncode


def results(workdir: Path) -> dict[str, dict[str, object]]:
    """The last recorded result of each mutant."""
    out: dict[str, dict[str, object]] = {}
    path = workdir / "results.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            out[rec["mutant"]] = rec
    return out


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
    log = workdir / "kills.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
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
        "--rerun-survivors", action="store_true", help="run the surviving mutants of the last run again"
    )
    ap.add_argument("--no-diffs", action="store_true", help="--report without the survivors' diffs")
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
        names = [n for n in meta["chosen"] if n in res and res[n]["status"] not in KILLED]
        prepare(workdir, fresh=False, tests=meta["tests"], only=meta["only"])
        generate(workdir, a.jobs)
        coverage_run(workdir, meta["tests"])
        print(f"running the {len(names)} survivors again", flush=True)
        rc = run_mutants(workdir, names, a.jobs)
        text = report(workdir)
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
    rc = run_mutants(workdir, chosen, a.jobs)
    text = report(workdir)
    (workdir / "summary.md").write_text(text + "\n")
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
