"""The Hypothesis state machine that writes random programs, and the driver that runs it.

Rules draw the arguments of a :class:`~ptesim.fuzz.program.Step`; the machine resolves them to
literal values (a live task, a value never written before) and hands the step to a
:class:`~ptesim.fuzz.program.Runner`, which runs it with every invariant checked.  When a check
fails, Hypothesis shrinks the program, and the last machine it ran holds the minimal failing one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ptesim.errors import InvariantViolation
from ptesim.fuzz.program import BASE, NCPUS, REGIONS, DiffRunner, Program, Runner, Step, Target
from ptesim.kernel.core import SegmentationFault
from ptesim.kernel.mm import VM_UFFD_WP

tasks = st.integers(0, 15)
regions = st.integers(0, REGIONS - 1)
cpus = st.integers(0, NCPUS - 1)
vmas = st.integers(0, 7)
pages_ = st.integers(0, 511)
#: madvise advice -> (step, its 'on' argument)
ADVICE: dict[str, tuple[str, bool | None]] = {
    "dontneed": ("dontneed", None),
    "free": ("free", None),
    "hugepage": ("hugepage", True),
    "nohugepage": ("hugepage", False),
    "dontfork": ("dontfork", True),
    "dofork": ("dontfork", False),
}
advices = st.sampled_from(list(ADVICE))
#: offsets and lengths in units of a contiguous block, with the page remainder drawn apart
fracs = st.integers(0, 47)
#: how a program may start by changing part of a block: an index into the spans of ``partial``
#: and the change (the half block holding the block's last entry made read-only and back, so the
#: fold runs from that entry; zaps from a quarter in over more than a block; ...)
PARTIAL_STARTS = (
    (2, "mprotect"),
    (5, "dontneed"),
    (2, "mprotect"),
    (7, "munmap"),
    (1, "free"),
    (0, "mprotect"),
    (6, "dontneed"),
    (3, "munmap"),
)


@dataclass
class Violation:
    """A failed check: which, why, and the minimal program that shows it."""

    check: str
    detail: str
    program: Program

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "detail": self.detail,
            "steps": len(self.program.steps),
            "program": self.program.to_json(),
        }


@dataclass
class FuzzResult:
    target: Target
    examples: int
    seconds: float
    violation: Violation | None = None
    first_failure_example: int | None = None
    diff: str | None = None
    programs: list[int] = field(default_factory=list)


def classify(exc: BaseException) -> tuple[str, str]:
    """The check that failed (a model assertion or crash counts as one too)."""
    if isinstance(exc, InvariantViolation):
        return exc.check, exc.detail
    return f"crash:{type(exc).__name__}", str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Holder:
    def __init__(self, on_example: Callable[[int], None] | None = None) -> None:
        self.on_example = on_example
        self.machines = 0
        self.last: Runner | DiffRunner | None = None
        self.first_failure: int | None = None


def make_machine(target: Target, holder: _Holder, diff: str | None = None) -> type[RuleBasedStateMachine]:
    """A state machine class generating programs for ``target`` (and a second preset in lockstep
    when ``diff`` names one)."""

    class FuzzMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            holder.machines += 1
            if holder.on_example is not None:
                holder.on_example(1)
            if diff is None:
                self.r: Runner | DiffRunner = Runner(target)
                first = self.r
            else:
                self.r = DiffRunner(target, replace(target, preset=diff, mutant=None))
                first = self.r.runners[0]
            holder.last = self.r
            self.first = first
            self.value = 0
            self.block = first.block

        # ---- helpers ----------------------------------------------------------------------------
        def tid(self, task: int) -> int:
            live = self.first.live()
            return live[task % len(live)]

        def run(self, op: str, task: int = 0, **kw: Any) -> None:
            """Run ``op`` for live task number ``task`` (any integer: taken modulo the live tasks)."""
            step = Step.make(op, self.tid(task), **kw)
            try:
                self.r.run(step)
            except SegmentationFault as exc:  # the runner skips what would fault: a fuzzer bug
                raise AssertionError(f"fuzzer made a faulting access: {exc}") from None
            except BaseException:
                if holder.first_failure is None:
                    holder.first_failure = holder.machines
                raise

        def span(self, off: int, pages: int) -> dict[str, int]:
            """Offsets and lengths on a grid of quarter blocks, nudged by a page either way:
            partial blocks and partial folios are common, whole aligned ones too."""
            q = max(1, self.block // 4)
            nudge = (0, 1, -1, 2)
            return {
                "off": max(0, (off % 12) * q + nudge[(off // 12) % 4]),
                "pages": max(1, (pages % 12 + 1) * q + nudge[(pages // 12) % 4]),
            }

        def within(self, task: int, vma: int, off: int, pages: int, clip: bool = False) -> dict[str, int]:
            """A range that starts inside one of the task's VMAs (picked by ``vma``), at a grid
            offset from its start; it may run past the VMA's end unless ``clip``."""
            r = self.first
            vmas = r.tasks[self.tid(task)].mm.vmas
            if not vmas:
                return {"region": 0, **self.span(off, pages)}
            v = vmas[vma % len(vmas)]
            first = (v.start - BASE) // r.page
            region, vpage = divmod(first, r.region_span // r.page)
            sp = self.span(off, pages)
            size = (v.end - v.start) // r.page
            start = sp["off"] % size
            n = min(sp["pages"], size - start) if clip else sp["pages"]
            return {"region": region, "off": vpage + start, "pages": n}

        def page_in(self, task: int, vma: int, page: int) -> dict[str, int]:
            sp = self.within(task, vma, 0, 0)
            r = self.first
            vmas = r.tasks[self.tid(task)].mm.vmas
            size = (vmas[vma % len(vmas)].end - vmas[vma % len(vmas)].start) // r.page if vmas else 1
            return {"region": sp["region"], "page": sp["off"] + page % size}

        def next_value(self) -> int:
            self.value += 1000
            return self.value

        def registered(self) -> bool:
            return any(v.flags & VM_UFFD_WP for t in self.first.tasks.values() for v in t.mm.vmas)

        # ---- rules ------------------------------------------------------------------------------
        @initialize(
            order=st.integers(0, 9),
            off=fracs,
            pages=fracs,
            extra=st.sampled_from(["", "free", "uffd", "shared", "partial", "partial"]),
            part=st.integers(0, 7),
            split=st.sampled_from(["", "dontfork", "hugepage"]),
            sub=fracs,
            subpages=fracs,
            fork=st.booleans(),
        )
        def start(
            self,
            order: int,
            off: int,
            pages: int,
            extra: str,
            split: str,
            sub: int,
            subpages: int,
            fork: bool,
            part: int,
        ) -> None:
            """Most programs begin as the cow.c selftests do: populated memory of one folio size,
            often block-aligned, sometimes shared, lazily freed and touched again, or registered
            for uffd-wp with part of it protected; sometimes split into VMAs without touching a
            PTE (so that fork copies partial folios and partial blocks), and often forked."""
            self.folio(order)
            sp = self.span(0 if off % 2 else off % 4, pages)
            sp["pages"] = max(1, self.block * (1 + pages % 3) + (0, 0, 3, -2)[(pages // 12) % 4])
            if extra in ("partial", "free"):  # block-aligned folios of one or two blocks
                block_order = self.block.bit_length() - 1
                two = extra == "partial" or order % 2
                self.run("folio", order=min(block_order + int(two), max(self.first.orders)))
                sp = {"off": 0, "pages": self.block * (2 << (pages % 2))}
            self.run("mmap", region=0, shared=extra == "shared", **sp)
            self.run("populate", region=0, value=self.next_value(), **sp)
            if extra == "uffd":
                self.run("uffd_register", region=0, **sp)
                self.run("uffd_wp", on=True, **self.within(0, 0, sub, subpages, clip=True))
            elif extra == "free":  # then reuse it, as an allocator does
                self.run("free", region=0, **sp)
                self.run("read", region=0, page=sp["off"])
                # a store to the last page of a block: the only dirty entry of a clean block
                last = (sp["off"] // self.block + 1) * self.block - 1
                self.run("write", region=0, page=last, value=self.next_value())
            elif extra == "shared" and sub % 2:  # shmem registered for uffd-wp: fork copies its PTEs
                self.run("uffd_register", region=0, **sp)
            elif extra == "partial":  # change part of a block that other CPUs cache
                p, op = PARTIAL_STARTS[part]
                self.partial(0, 0, 0, p, op, "write" if fork else "read")
            wpage = sp["off"]
            if split:
                where = self.within(0, 0, sub + 1, subpages, clip=True)
                self.run(split, on=True, **where)
                wpage = max(sp["off"], where["off"] - 1)  # beside the split: often the same folio
            if fork or extra == "free":  # lazily freed memory is inherited too
                self.run("fork", cpu=1)
                if split or subpages % 2:  # the parent writes first, as cow.c does
                    self.run("write", 0, region=0, page=wpage, value=self.next_value())

        @rule(order=st.integers(0, 9))
        def folio(self, order: int) -> None:
            """Block-sized folios twice as often as the other sizes."""
            orders = self.first.orders
            block = self.block.bit_length() - 1
            choice = [block, *orders]
            self.run("folio", order=choice[order % len(choice)])

        @rule(
            task=tasks, region=regions, off=fracs, pages=fracs, shared=st.sampled_from([False, False, True])
        )
        def mmap(self, task: int, region: int, off: int, pages: int, shared: bool) -> None:
            self.run("mmap", task, region=region, shared=shared, **self.span(off, pages))

        @precondition(lambda self: self.first.kernel.arch.page_shift == 12)
        @rule(task=tasks, region=regions)
        def mmap_pmd(self, task: int, region: int) -> None:
            n = 1 << self.first.kernel.arch.geometry.pmd_order
            self.run("mmap", task, region=region, off=0, pages=n, shared=False)

        @rule(task=tasks, vma=vmas, off=fracs, pages=fracs)
        def populate(self, task: int, vma: int, off: int, pages: int) -> None:
            self.run("populate", task, value=self.next_value(), **self.within(task, vma, off, pages))

        @rule(task=tasks, vma=vmas, page=pages_, kind=st.sampled_from(["update", "read", "write"]))
        def access(self, task: int, vma: int, page: int, kind: str) -> None:
            """A load, a store, or a load then a store of the same page (the commonest pattern)."""
            where = self.page_in(task, vma, page)
            if kind != "write":
                self.run("read", task, **where)
            if kind != "read":
                self.run("write", task, value=self.next_value(), **where)

        @precondition(lambda self: len(self.first.tasks) < 5)
        @rule(task=tasks, cpu=cpus)
        def fork(self, task: int, cpu: int) -> None:
            self.run("fork", task, cpu=cpu)

        @precondition(lambda self: len(self.first.tasks) > 1)
        @rule(task=tasks)
        def exit(self, task: int) -> None:
            self.run("exit", task)

        @rule(task=tasks, cpu=cpus)
        def migrate(self, task: int, cpu: int) -> None:
            self.run("migrate", task, cpu=cpu)

        @rule(task=tasks, vma=vmas, off=fracs, pages=fracs)
        def munmap(self, task: int, vma: int, off: int, pages: int) -> None:
            self.run("munmap", task, **self.within(task, vma, off, pages))

        @rule(
            task=tasks,
            vma=vmas,
            blk=st.integers(0, 7),
            part=st.integers(0, 7),
            op=st.sampled_from(["mprotect", "dontneed", "munmap", "free"]),
            then=st.sampled_from(["read", "write", "fork"]),
        )
        def partial_block(self, task: int, vma: int, blk: int, part: int, op: str, then: str) -> None:
            self.partial(task, vma, blk, part, op, then)

        def partial(self, task: int, vma: int, blk: int, part: int, op: str, then: str) -> None:
            """The task reads a block on the other CPUs (so their TLBs cache it), changes part of
            the block from its own CPU (mprotect to read-only and back, MADV_DONTNEED, munmap or
            MADV_FREE), and touches the block from the other CPUs after each change: whatever the
            flush range, every CPU must have lost every entry the change made stale."""
            r = self.first
            t = r.tasks[self.tid(task)]
            if not t.mm.vmas:
                return
            v = t.mm.vmas[vma % len(t.mm.vmas)]
            first = (v.start - BASE) // r.page
            region, vpage = divmod(first, r.region_span // r.page)
            n = self.block
            q = max(1, n // 4)
            base = (vpage + n - 1) // n * n + blk % max(1, (v.end - v.start) // r.page // n) * n
            spans = (
                (0, n // 2),
                (q, n // 2),
                (n // 2, n // 2),
                (q, 1),
                (n - 1, 1),
                (q, n + q),
                (q, n + q),
                (q, 2 * n),
            )
            off, pages = spans[part]
            where = {"region": region, "off": base + off, "pages": pages}
            home = t.cpu
            others = [c for c in range(NCPUS) if c != home]

            def touch(write: bool) -> None:
                for c in others:
                    self.run("migrate", task, cpu=c)
                    for p in (base, base + n // 2, base + n - 1):
                        if write:
                            self.run("write", task, region=region, page=p, value=self.next_value())
                        else:
                            self.run("read", task, region=region, page=p)
                self.run("migrate", task, cpu=home)

            touch(False)
            if op == "mprotect":
                self.run("mprotect", task, prot="r", **where)
                touch(False)
                self.run("mprotect", task, prot="rw", **where)
            else:
                self.run(op, task, **where)
            touch(then == "write")
            if then == "fork" and len(r.tasks) < 5:
                self.run("fork", task, cpu=others[0])

        @rule(task=tasks, vma=vmas, off=fracs, pages=fracs, prot=st.sampled_from(["r", "rw"]))
        def mprotect(self, task: int, vma: int, off: int, pages: int, prot: str) -> None:
            self.run("mprotect", task, prot=prot, **self.within(task, vma, off, pages))

        @rule(task=tasks, vma=vmas, off=fracs, pages=fracs, advice=advices)
        def madvise(self, task: int, vma: int, off: int, pages: int, advice: str) -> None:
            where = self.within(task, vma, off, pages)
            op, on = ADVICE[advice]
            if on is None:
                self.run(op, task, **where)
            else:
                self.run(op, task, on=on, **where)

        @rule(task=tasks, vma=vmas, page=pages_)
        def pin(self, task: int, vma: int, page: int) -> None:
            self.run("pin", task, **self.page_in(task, vma, page))

        @precondition(lambda self: any(p is not None for p in self.first.pins))
        @rule(task=tasks, pin=st.integers(0, 7))
        def unpin(self, task: int, pin: int) -> None:
            live = [i for i, p in enumerate(self.first.pins) if p is not None]
            self.run("unpin", task, pin=live[pin % len(live)])

        @rule(
            task=tasks, vma=vmas, off=fracs, pages=fracs, action=st.sampled_from(["wp", "unwp", "register"])
        )
        def uffd(self, task: int, vma: int, off: int, pages: int, action: str) -> None:
            """Register part of a VMA for uffd-wp, or write-protect / unprotect part of a registered one."""
            if action == "register":
                self.run("uffd_register", task, **self.within(task, vma, off, pages, clip=True))
                return
            t = self.first.tasks[self.tid(task)]
            regs = [i for i, v in enumerate(t.mm.vmas) if v.flags & VM_UFFD_WP]
            if regs:
                where = self.within(task, regs[vma % len(regs)], off, pages, clip=True)
                self.run("uffd_wp", task, on=action == "wp", **where)

    FuzzMachine.__name__ = "FuzzMachine"
    return FuzzMachine


def fuzz(
    target: Target,
    examples: int,
    *,
    seed: int | None = 0,
    steps: int = 25,
    shrink: bool = True,
    diff: str | None = None,
    on_example: Callable[[int], None] | None = None,
) -> FuzzResult:
    """Run up to ``examples`` random programs on ``target``; stop at the first violation and
    return it with its minimal program.  ``seed=None`` draws a fresh seed.  ``on_example(1)`` is
    called as each program starts (a progress bar's advance)."""
    holder = _Holder(on_example)
    machine = make_machine(target, holder, diff)
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    cfg = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=False,
        phases=phases,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )

    if seed is not None:
        machine = hypothesis.seed(seed)(machine)
    t0 = time.perf_counter()
    result = FuzzResult(target, 0, 0.0, diff=diff)
    with target.applied():
        try:
            run_state_machine_as_test(machine, settings=cfg)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            check, detail = classify(exc)
            last = holder.last
            assert last is not None
            result.violation = Violation(check, detail, Program(target, list(last.steps)))
            result.first_failure_example = holder.first_failure
    result.seconds = time.perf_counter() - t0
    result.examples = (
        holder.first_failure or holder.machines if result.violation else min(holder.machines, examples)
    )
    return result
