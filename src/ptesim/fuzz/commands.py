"""``ptesim fuzz`` (random programs, replay of a saved one) and ``ptesim mutants`` (the catalogue
of broken variants, each hunted by the fuzzer)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptesim.arch import ARCHES
from ptesim.errors import UsageError
from ptesim.fuzz.program import Program, Target
from ptesim.kernel.config import PRESETS
from ptesim.options import add_options, combinations
from ptesim.report.tidy import add_scheduler_option

if TYPE_CHECKING:
    from ptesim.fuzz.machine import FuzzResult

#: a saved program is a few KiB; a bigger --replay file is refused before it is parsed
PROGRAM_MAX_BYTES = 16 << 20


def _int(text: str, what: str, lo: int, hi: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: not an integer") from None
    if not lo <= n <= hi:
        raise UsageError(f"bad {what} {n}: between {lo} and {hi}")
    return n


def targets_from_args(a: argparse.Namespace) -> list[Target]:
    """One target per combination of ``--arch --preset --granule`` (comma lists sweep)."""
    combos = combinations(a, fields=("arch", "preset", "granule"))
    if a.mutant is not None:
        from ptesim.mutants import mutant

        mutant(a.mutant)
    return [Target(c.arch, c.preset, c.granule, c.cpu_features, a.mutant, c.overrides) for c in combos]


def _violation_json(res: FuzzResult) -> list[dict[str, Any]]:
    return [res.violation.to_json()] if res.violation else []


def _print_violation(res: FuzzResult) -> None:
    v = res.violation
    assert v is not None
    print(f"VIOLATION {v.check}: {v.detail}")
    print(f"minimal program ({len(v.program.steps)} steps):")
    print(v.program.text())
    print("\nreplay with 'ptesim fuzz --replay FILE' (FILE from --save-program), or in Python:\n")
    print(v.program.python())


#: Programs per cell of a long campaign: ``fuzz --examples N`` above this runs ceil(N / CELL)
#: independent campaigns (seeds SEED, SEED+1, ...) on the local process pool or a Dask cluster.
CAMPAIGN_CELL = 250


def _campaign_cell(task: tuple[Target, int, int | None, int, bool, str | None]) -> FuzzResult:
    from ptesim.fuzz.machine import fuzz

    target, n, seed, steps, shrink, diff = task
    return fuzz(target, n, seed=seed, steps=steps, shrink=shrink, diff=diff)


def campaigns(
    targets: list[Target],
    examples: int,
    *,
    seed: int | None,
    steps: int,
    shrink: bool,
    diff: str | None,
) -> list[FuzzResult]:
    """``examples`` random programs on each target.  One target and up to :data:`CAMPAIGN_CELL`
    programs run in this process (a bar counts the programs); otherwise every target's programs
    are split into independent cells of that many, all run on the local process pool or a Dask
    cluster (a bar counts the cells).  A target's violation is that of its first failing cell in
    seed order, so that a seed gives the same answer on any number of workers."""
    import time

    from ptesim.fuzz.machine import FuzzResult, fuzz
    from ptesim.parallel import map_cells
    from ptesim.progress import bar

    if len(targets) == 1 and examples <= CAMPAIGN_CELL:
        with bar(f"fuzz {targets[0].label()}", examples) as advance:
            return [
                fuzz(
                    targets[0], examples, seed=seed, steps=steps, shrink=shrink, diff=diff, on_example=advance
                )
            ]
    sizes = [CAMPAIGN_CELL] * (examples // CAMPAIGN_CELL) + [examples % CAMPAIGN_CELL] * bool(
        examples % CAMPAIGN_CELL
    )
    tasks = [
        (target, n, None if seed is None else (seed + i) % 2**32, steps, shrink, diff)
        for target in targets
        for i, n in enumerate(sizes)
    ]
    t0 = time.perf_counter()
    results = map_cells(_campaign_cell, tasks, what=f"fuzz ({CAMPAIGN_CELL} programs a cell)")
    seconds = time.perf_counter() - t0
    out = []
    for k, target in enumerate(targets):
        done, found = 0, None
        for r in results[k * len(sizes) : (k + 1) * len(sizes)]:
            if r.violation is not None:
                first = done + (r.first_failure_example or r.examples)
                found = FuzzResult(target, first, seconds, r.violation, first, diff)
                break
            done += r.examples
        out.append(found or FuzzResult(target, done, seconds, None, None, diff))
    return out


def cmd_fuzz(a: argparse.Namespace) -> int:
    if a.replay is not None:
        return _replay(a)
    targets = targets_from_args(a)
    examples = _int(a.examples, "--examples", 1, 1_000_000)
    steps = _int(a.steps, "--steps", 1, 1000)
    seed = None if a.seed is None else _int(a.seed, "--seed", 0, 2**32 - 1)
    if a.diff is not None:
        if a.diff not in PRESETS:
            raise UsageError(f"unknown --diff preset {a.diff!r}; known: {', '.join(PRESETS)}")
        if a.mutant is not None:
            raise UsageError("--diff and --mutant contradict: a differential run compares two clean kernels")
    results = campaigns(targets, examples, seed=seed, steps=steps, shrink=not a.no_shrink, diff=a.diff)
    failed = [r for r in results if r.violation]
    if a.save_program and failed:
        Path(a.save_program).write_text(failed[0].violation.program.dumps() + "\n")  # type: ignore[union-attr]
    docs = [
        {
            "target": r.target.label(),
            "diff": a.diff,
            "examples": r.examples,
            "seconds": round(r.seconds, 3),
            "violations": _violation_json(r),
        }
        for r in results
    ]
    if a.json:
        print(json.dumps(docs[0] if len(docs) == 1 else {"campaigns": docs}, indent=2))
    else:
        vs = f" against {a.diff}" if a.diff else ""
        for res in results:
            print(f"{res.examples} programs on {res.target.label()}{vs} in {res.seconds:.1f}s")
            if res.violation:
                _print_violation(res)
            else:
                print("no violation")
    return 1 if failed else 0


def _replay(a: argparse.Namespace) -> int:
    from ptesim.fuzz.machine import classify

    path = Path(a.replay)
    try:
        with path.open("rb") as f:
            raw = f.read(PROGRAM_MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > PROGRAM_MAX_BYTES:
        raise UsageError(f"{path}: larger than {PROGRAM_MAX_BYTES >> 20} MiB, not a saved program")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"{path}: not a JSON program ({str(exc).splitlines()[0]})") from None
    try:
        prog = Program.from_json(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    t = prog.target
    if t.arch not in ARCHES or t.preset not in PRESETS:
        raise UsageError(f"{path}: unknown arch or preset ({t.arch}, {t.preset})")
    if t.mutant is not None:
        from ptesim.mutants import mutant

        mutant(t.mutant)
    try:
        prog.replay()
        check, detail = None, None
    except UsageError:
        raise
    except Exception as exc:
        check, detail = classify(exc)
    if a.json:
        v = [{"check": check, "detail": detail, "steps": len(prog.steps)}] if check else []
        print(json.dumps({"examples": 1, "violations": v}, indent=2))
    else:
        print(
            f"replayed {len(prog.steps)} steps on {t.label()}: "
            + (f"{check}: {detail}" if check else "passes")
        )
    return 1 if check else 0


def _hunt(task: tuple[str, int, int, bool]) -> dict[str, Any]:
    """One mutant's campaign (a worker process runs it): a count property for a count bug, else the
    fuzzer on the mutated model until the first violation or the budget."""
    from ptesim.fuzz.machine import fuzz
    from ptesim.mutants import MUTANTS

    n, budget, seed, shrink = task
    m = MUTANTS[n]
    row: dict[str, Any] = {
        "name": n,
        "description": m.description,
        "kind": m.kind,
        "target": m.target.label(),
    }
    if m.count_only and m.detect is not None:
        with m.applied():
            found = m.detect()
        return {
            **row,
            "caught": found is not None,
            "check": "count property" if found else None,
            "steps": None,
            "programs": 0,
        }
    res = fuzz(m.hunt_target(), budget, seed=seed, shrink=shrink)
    v = res.violation
    return {
        **row,
        "caught": v is not None,
        "check": v.check if v else None,
        "steps": len(v.program.steps) if v else None,
        "programs": res.first_failure_example if v else res.examples,
    }


def _clean_run(task: tuple[Any, int, int]) -> Any:
    """The clean model's campaign on one target, with the mutants' budget and seed."""
    from ptesim.fuzz.machine import fuzz

    target, budget, seed = task
    return fuzz(target, budget, seed=seed, shrink=False)


def cmd_mutants(a: argparse.Namespace) -> int:
    from ptesim.mutants import MUTANTS, mutant

    budget = _int(a.budget, "--budget", 1, 100_000)
    seed = _int(a.seed, "--seed", 0, 2**32 - 1)
    names = list(MUTANTS) if not a.only else [mutant(n).name for n in a.only.split(",") if n.strip()]
    if a.list:
        for n in names:
            m = MUTANTS[n]
            print(f"{n:28s} {m.kind:10s} {m.target.label():30s} {m.description}")
        return 0
    from ptesim.parallel import map_cells

    # Every mutant's hunt, and the clean model's run on each target, is an independent campaign:
    # they run on the local process pool (or the --scheduler cluster), one bar for all of them.
    rows = map_cells(_hunt, [(n, budget, seed, not a.no_shrink) for n in names], what="mutants")
    if not a.json and not a.quiet:
        for r in rows:
            how = "a count property" if r["check"] == "count property" else r["check"]
            print(f"  {r['name']}: {'caught by ' + how if r['caught'] else 'not caught'}", file=sys.stderr)
    targets = sorted({MUTANTS[n].target for n in names if not MUTANTS[n].count_only}, key=lambda t: t.label())
    clean: dict[str, bool] = {}
    for t, res in zip(
        targets, map_cells(_clean_run, [(t, budget, seed) for t in targets], what="clean model"), strict=True
    ):
        clean[t.label()] = res.violation is None
        if res.violation and not a.json:
            print(f"clean model fails on {t.label()}:", file=sys.stderr)
            _print_violation(res)
    clean_passed = all(clean.values())
    if a.json:
        print(
            json.dumps(
                {"budget": budget, "clean_passed": clean_passed, "clean": clean, "mutants": rows}, indent=2
            )
        )
    elif a.csv:
        from ptesim.report.tidy import Column, Tidy, emit

        emit(a, Tidy([Column(k) for k in rows[0]], rows))
    else:
        from ptesim.report.tables import markdown_table

        table = [
            [
                r["name"],
                "yes" if r["caught"] else "no",
                r["check"] or "-",
                str(r["steps"]) if r["steps"] is not None else "-",
                str(r["programs"]),
                r["target"],
            ]
            for r in rows
        ]
        print(markdown_table(["mutant", "caught", "by check", "steps", "programs", "hunted on"], table))
        state = "passes" if clean_passed else "FAILS"
        print(f"\nclean model {state} the same budget ({budget} programs) on: {', '.join(sorted(clean))}")
    return 0 if clean_passed and all(r["caught"] for r in rows) else 1


def register(sub: Any) -> None:
    p = sub.add_parser("fuzz", help="random programs on the model, every invariant checked after each step")
    add_options(p, "arch", "preset", "set", "cpu_features", "granule")
    p.add_argument("--examples", default="200", help="programs to run (default 200)")
    p.add_argument("--steps", default="25", help="most steps per program (default 25)")
    p.add_argument("--seed", default="0", help="random seed (default 0)")
    p.add_argument(
        "--mutant", default=None, help="run against a broken variant (see 'ptesim mutants --list')"
    )
    p.add_argument("--diff", default=None, metavar="PRESET", help="run PRESET in lockstep and compare")
    p.add_argument("--no-shrink", action="store_true", help="report the first failing program unshrunk")
    p.add_argument("--save-program", metavar="FILE", help="write the minimal failing program (JSON) to FILE")
    p.add_argument("--replay", metavar="FILE", help="replay a saved program instead of fuzzing")
    p.add_argument("--json", action="store_true", help='print {"examples", "violations": [...]}')
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar on stderr")
    add_scheduler_option(p)
    p.set_defaults(handler=cmd_fuzz)

    p = sub.add_parser("mutants", help="hunt every deliberately broken variant with the fuzzer")
    p.add_argument(
        "--budget", default="300", help="programs per mutant, and for the clean model (default 300)"
    )
    p.add_argument("--seed", default="0", help="random seed (default 0)")
    p.add_argument("--only", default=None, help="comma-separated mutant names")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--no-shrink", action="store_true", help="count steps of the first failing program")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or lines on stderr")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print the documented JSON object")
    g.add_argument("--csv", action="store_true", help="print one line per mutant")
    add_scheduler_option(p)
    p.set_defaults(handler=cmd_mutants)
