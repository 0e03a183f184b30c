"""The CI fuzz budget: every campaign run once per session, two at a time (one per core)."""

from __future__ import annotations

import functools
import multiprocessing
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


@functools.cache
def results() -> dict[str, Outcome]:
    """Every campaign and every mutant hunt, keyed by campaign key or mutant name."""
    from ptesim.mutants import MUTANTS

    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        jobs = {c.key: pool.submit(run_campaign, c) for c in CAMPAIGNS}
        jobs |= {name: pool.submit(hunt, name) for name, m in MUTANTS.items() if not m.count_only}
        return {k: f.result() for k, f in jobs.items()}
