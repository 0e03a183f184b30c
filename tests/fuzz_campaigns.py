"""The CI fuzz budget: every campaign run once per session, two at a time (one per core), in the
background while the rest of the suite runs."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ptesim.fuzz import Target, fuzz

#: programs per mutant; the clean model must pass the same budget on each mutant's target
MUTANT_BUDGET = 200
SEED = 0


@dataclass(frozen=True)
class Campaign:
    target: Target
    examples: int
    seed: int = SEED
    diff: str | None = None

    @property
    def key(self) -> str:
        d = f" vs {self.diff}" if self.diff else ""
        return f"{self.target.label()}{d} seed {self.seed}"


@dataclass(frozen=True)
class Outcome:
    campaign: Campaign
    examples: int
    seconds: float
    check: str | None
    detail: str | None
    program: str | None
    steps: int | None
    program_json: str | None = None


ARM_NOHAFDBS = Target("arm64", "v6.9", features=("no-hafdbs",))

CAMPAIGNS = [
    # x86: 500 programs
    Campaign(Target("x86", "v6.9"), MUTANT_BUDGET),
    Campaign(Target("x86", "v6.9"), 150, seed=1),
    Campaign(Target("x86", "v6.8"), 150),
    # arm64: 500 programs over the presets that matter, fewer for the big granules
    Campaign(Target("arm64", "v6.9"), MUTANT_BUDGET),
    Campaign(ARM_NOHAFDBS, MUTANT_BUDGET),
    Campaign(Target("arm64", "contpte-v1-before-opt"), 30),
    Campaign(Target("arm64", "contpte-v1-after-opt"), 30),
    Campaign(Target("arm64", "contpte-basic"), 20),
    Campaign(Target("arm64", "v6.17", features=("bbml2",)), 20),
    Campaign(Target("arm64", "v6.19-local-tlbi"), 15),
    Campaign(Target("arm64", "v6.9", granule=16384), 10),
    Campaign(Target("arm64", "v6.9", granule=65536), 10),
    # riscv: 500 programs
    Campaign(Target("riscv", "v6.9"), 200),
    Campaign(Target("riscv", "v6.9-svnapot"), 300),
    Campaign(Target("riscv", "v7.0-svnapot"), 15),
    # differential: a per-PTE kernel against a batched one, in lockstep
    Campaign(Target("x86", "v6.8"), 30, diff="v6.9"),
    Campaign(Target("arm64", "v6.8"), 15, diff="v6.9"),
    Campaign(Target("arm64", "contpte-v1-before-opt"), 15, diff="contpte-v1-after-opt"),
    Campaign(Target("arm64", "contpte-basic"), 15, diff="v6.9"),
    Campaign(Target("riscv", "v6.8"), 15, diff="v6.9-svnapot"),
    Campaign(Target("arm64", "v6.16"), 10, diff="v6.17"),
    # presets that run the same code and differ in one behaviour: folding, large mapcounts
    Campaign(Target("arm64", "contpte-batch"), 15, diff="v6.9"),
    Campaign(Target("x86", "v6.9"), 15, diff="v6.11"),
]


def run_campaign(c: Campaign) -> Outcome:
    r = fuzz(c.target, c.examples, seed=c.seed, shrink=False, diff=c.diff)
    v = r.violation
    return Outcome(
        c,
        r.examples,
        r.seconds,
        v.check if v else None,
        v.detail if v else None,
        v.program.text() if v else None,
        len(v.program.steps) if v else None,
        v.program.dumps() if v else None,
    )


def hunt(name: str) -> Outcome:
    from ptesim.mutants import MUTANTS

    m = MUTANTS[name]
    c = Campaign(m.hunt_target(), MUTANT_BUDGET)
    out = run_campaign(c)
    return Outcome(
        c, out.examples, out.seconds, out.check, out.detail, out.program, out.steps, out.program_json
    )


def _jobs() -> list[tuple[str, Callable[[], Outcome]]]:
    """Every campaign and every mutant hunt, with the key its result is read by."""
    from ptesim.mutants import MUTANTS

    jobs: list[tuple[str, Callable[[], Outcome]]] = [
        (c.key, functools.partial(run_campaign, c)) for c in CAMPAIGNS
    ]
    jobs += [(name, functools.partial(hunt, name)) for name, m in MUTANTS.items() if not m.count_only]
    return jobs


def _run_all() -> dict[str, Outcome]:
    """The whole budget here and now, two jobs at a time (one per core)."""
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        futures = {key: pool.submit(fn) for key, fn in _jobs()}
        return {k: f.result() for k, f in futures.items()}


class _Background:
    """The budget run beside the rest of the suite.

    Started when the session has collected its tests: one process less than the machine has
    cores takes jobs one at a time from a shared counter, so the suite's own tests keep a core;
    when the suite reaches the budget's tests (they come last), it takes the jobs nobody has
    claimed yet itself.  Each job's outcome is a file; every job runs exactly once."""

    def __init__(self) -> None:
        self.jobs = _jobs()
        self.dir = tempfile.mkdtemp(prefix="ptesim-fuzz-budget-")
        ctx = multiprocessing.get_context("fork")
        self.next = ctx.Value("i", 0)  # the next job to claim (with its own lock)
        workers = max(1, (os.cpu_count() or 2) - 1)
        self.proc = ctx.Process(target=self._serve, args=(workers,))
        self.proc.start()

    def _claim(self) -> int | None:
        with self.next.get_lock():
            i = int(self.next.value)
            if i >= len(self.jobs):
                return None
            self.next.value = i + 1
        return i

    def _work(self) -> None:
        while (i := self._claim()) is not None:
            key, fn = self.jobs[i]
            try:
                out: object = fn()
            except BaseException:  # the suite reports it where the result is read
                out = RuntimeError(f"{key}: {traceback.format_exc()}")
            tmp = os.path.join(self.dir, f"{i}.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(out, f)
            os.replace(tmp, os.path.join(self.dir, f"{i}.pickle"))

    def _serve(self, workers: int) -> None:
        os.setpgrp()  # one process group: stop() ends the workers too
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=self._work) for _ in range(workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()

    def collect(self) -> dict[str, Outcome]:
        self._work()
        self.proc.join()
        out: dict[str, Outcome] = {}
        for i, (key, _fn) in enumerate(self.jobs):
            path = os.path.join(self.dir, f"{i}.pickle")
            if not os.path.exists(path):
                raise RuntimeError(f"the fuzz budget's job {key!r} left no result (a worker died)")
            with open(path, "rb") as f:
                res = pickle.load(f)
            if isinstance(res, BaseException):
                raise res
            out[key] = res
        return out

    def stop(self) -> None:
        if self.proc.is_alive() and self.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.join()
        shutil.rmtree(self.dir, ignore_errors=True)


_background: _Background | None = None


def start_in_background() -> None:
    """Start the budget beside the rest of the suite (see :class:`_Background`)."""
    global _background
    if _background is None:
        _background = _Background()


def stop_background() -> None:
    """End the background budget if it still runs (a session stopped early); remove its files."""
    global _background
    if _background is not None:
        _background.stop()
        _background = None


@functools.cache
def results() -> dict[str, Outcome]:
    """Every campaign and every mutant hunt, keyed by campaign key or mutant name: from the
    background run when the session started one, else run here."""
    if _background is None:
        return _run_all()
    return _background.collect()
