"""Random programs with every invariant checked after each step (the CI budget: at least 500
programs per architecture), differential runs of a per-PTE and a batched kernel, replayable
programs, and the regressions the fuzzer found."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fuzz_campaigns import CAMPAIGNS, results
from ptesim.errors import InvariantViolation
from ptesim.fuzz import DiffRunner, Program, Runner, Step, Target
from ptesim.kernel.check import validate_all
from ptesim.kernel.core import Kernel

KiB = 1024
S = Step.make


@pytest.mark.fuzz_budget
@pytest.mark.parametrize("campaign", CAMPAIGNS, ids=lambda c: c.key)
def test_campaign_finds_no_violation(campaign: object) -> None:
    """Each fuzz campaign of the CI budget runs its programs without a violation."""
    out = results()[campaign.key]  # type: ignore[attr-defined]
    assert out.check is None, f"{out.check}: {out.detail}\n{out.program}"


@pytest.mark.fuzz_budget
def test_at_least_500_programs_per_arch() -> None:
    """The budget covers every architecture with at least 500 single-kernel programs."""
    per_arch: Counter[str] = Counter()
    for c in CAMPAIGNS:
        if c.diff is None:
            per_arch[c.target.arch] += results()[c.key].examples
    assert all(per_arch[a] >= 500 for a in ("x86", "arm64", "riscv")), per_arch


def test_program_json_round_trip(tmp_path: Path) -> None:
    """A program saved as JSON replays step for step; the CLI replays it too."""
    p = Program(
        Target("arm64", "v6.9"),
        [
            S("folio", order=4),
            S("mmap", region=0, off=0, pages=32, shared=False),
            S("populate", region=0, off=0, pages=32, value=1),
            S("fork", cpu=1),
            S("write", 1, region=0, page=3, value=9),
            S("read", 0, region=0, page=3),
        ],
    )
    q = Program.from_json(json.loads(p.dumps()))
    assert q.steps == p.steps and q.target == p.target
    q.replay()
    f = tmp_path / "prog.json"
    f.write_text(p.dumps())
    out = subprocess.run(
        [sys.executable, "-m", "ptesim.cli", "fuzz", "--replay", str(f)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "passes" in out.stdout


def test_flag_overrides_reach_the_fuzzed_kernel(tmp_path: Path) -> None:
    """``fuzz --set`` fuzzes the preset with the flag changed: the kernel a program runs on has it, a
    saved program keeps it, and the per-PTE fork it selects really runs (one folio_ref per page of
    the folio instead of one folio_ref_add for the batch)."""
    steps = [
        S("folio", order=4),
        S("mmap", region=0, off=0, pages=16, shared=False),
        S("populate", region=0, off=0, pages=16, value=1),
        S("fork", cpu=1),
    ]
    refs = {}
    for overrides in ((), ("fork_batch=none",)):
        p = Program(Target("arm64", "v6.9", overrides=overrides), list(steps))
        q = Program.from_json(json.loads(p.dumps()))
        assert q.target == p.target
        r = q.replay()
        assert r.kernel.cfg.fork_batch == ("none" if overrides else "folio_pte_batch")
        refs[overrides] = r.kernel.sink.totals().get("folio_ref", 0)
    assert refs[("fork_batch=none",)] > refs[()]
    f = tmp_path / "prog.json"
    f.write_text(Program(Target("arm64", "v6.9", overrides=("fork_batch=none",)), steps).dumps())
    out = subprocess.run(
        [sys.executable, "-m", "ptesim.cli", "fuzz", "--replay", str(f)], capture_output=True, text=True
    )
    assert out.returncode == 0 and "fork_batch=none" in out.stdout + out.stderr


def test_python_snippet_replays() -> None:
    """The printed Python snippet is a program that replays (and fails where the run failed)."""
    p = Program(
        Target("x86", "v6.9", mutant="fork-keeps-anon-exclusive"),
        [
            S("mmap", region=0, off=0, pages=4, shared=False),
            S("write", region=0, page=0, value=1),
            S("fork", cpu=1),
        ],
    )
    with pytest.raises(InvariantViolation, match="anon_exclusive"):
        exec(p.python(), {})


def test_differential_sees_a_semantic_difference() -> None:
    """The lockstep comparison is not vacuous: a kernel that reuses exclusively owned large folios
    on write faults differs from v6.9 in refcounts and mappings after the first COW fault."""
    import ptesim.kernel.config as config

    steps = [
        S("folio", order=4),
        S("mmap", region=0, off=0, pages=16, shared=False),
        S("populate", region=0, off=0, pages=16, value=1),
        S("fork", cpu=1),
        S("exit", 1),
        S("write", 0, region=0, page=2, value=5),
    ]
    config.PRESETS["v6.9-reuse"] = config.PRESETS["v6.9"].replace(name="v6.9-reuse", wp_reuse_large=True)
    try:
        d = DiffRunner(Target("x86", "v6.9"), Target("x86", "v6.9-reuse"))
        with pytest.raises(InvariantViolation, match="differential"):
            for s in steps:
                d.run(s)
    finally:
        del config.PRESETS["v6.9-reuse"]


def test_differential_allows_cont_and_gathered_bits() -> None:
    """v6.8 (no contiguous layer) against v6.9 on arm64: CONT blocks and gathered dirty/young
    differ, and nothing else does."""
    d = DiffRunner(Target("arm64", "v6.8"), Target("arm64", "v6.9"))
    for s in [
        S("folio", order=4),
        S("mmap", region=0, off=0, pages=48, shared=False),
        S("populate", region=0, off=0, pages=48, value=1),
        S("free", region=0, off=0, pages=16),
        S("write", region=0, page=3, value=7),
        S("mprotect", region=0, off=4, pages=4, prot="r"),
        S("fork", cpu=2),
        S("write", 1, region=0, page=20, value=8),
        S("munmap", 0, region=0, off=8, pages=16),
    ]:
        d.run(s)
    a, b = (r.kernel.arch for r in d.runners)
    assert a.cont_ptes == 1 and b.cont_ptes == 16


def test_skipped_steps_are_skipped_the_same_way() -> None:
    """Steps that make no sense in their state are skipped, deterministically."""
    r = Runner(Target("x86", "v6.9"))
    assert not r.run(S("write", region=0, page=0, value=1))  # nothing mapped
    assert not r.run(S("exit"))  # the last task stays
    assert r.run(S("mmap", region=0, off=0, pages=4, shared=False))
    assert not r.run(S("mmap", region=0, off=2, pages=4, shared=False))  # overlaps
    assert not r.run(S("unpin", pin=0))


# ---- regressions found by the fuzzer ------------------------------------------------------------


def test_last_munmap_of_shared_memory_frees_its_page_cache() -> None:
    """Unmapping the last mapping of a shared anonymous object evicts its page cache: no folio
    is left holding a reference nobody owns."""
    k = Kernel("x86", "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(64 * KiB, shared=True)
    t.write(a, 5)
    c = t.fork(1)
    t.munmap(a, 64 * KiB)  # the child still maps it: the page stays
    assert c.read(a) == 5
    c.exit()  # the last user: the page cache is dropped
    validate_all(k)
    assert k.pages.allocated == 0


@pytest.mark.parametrize("shared", [False, True])
def test_a_page_freed_while_mapped_is_a_violation(shared: bool) -> None:
    """A folio freed while a PTE still maps it (a lost reference) is reported as mapped_free_page,
    for private and shared (shmem) mappings alike."""
    from ptesim.kernel.folio import PageAllocator

    r = Runner(Target("x86", "v6.9"))
    r.run(S("mmap", region=0, off=0, pages=4, shared=shared))
    r.run(S("populate", region=0, off=0, pages=4, value=1))
    k = r.kernel
    table = next(iter(r.tasks[0].mm.pte_tables()))
    pfn = k.arch.pte_pfn(next(p for p in table.entries if p))
    folio = k.pages.pfn_to_folio(pfn)
    assert folio is not None
    with k.sink.operation("setup"):
        PageAllocator.free_folio(k.pages, folio)  # behind the model's back: no unmap, no refcount
    with pytest.raises(InvariantViolation) as exc:
        validate_all(k)
    assert exc.value.check == "mapped_free_page"
