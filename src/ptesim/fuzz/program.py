"""Programs the fuzzer runs: a list of :class:`Step` values and the :class:`Runner` that executes
them on a checked machine, keeping the oracle of what every process must read.

A step names everything it needs literally (task, region, page offsets, values), so a program
replays exactly: the same steps on the same configuration give the same machine.  A step that
makes no sense in the state it meets (a write to a page that is not mapped writable, an exit of the
last task …) is skipped, the same way every time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ptesim.errors import InvariantViolation, UsageError
from ptesim.kernel.check import (
    Census,
    Oracle,
    validate_all,
    validate_anon_dirty,
    validate_fork_child,
    validate_freeing,
    validate_range,
    validate_shared_dirty,
    validate_uffd_wp,
    validate_views,
    validate_written,
)
from ptesim.kernel.config import KernelConfig, parse_overrides, preset
from ptesim.kernel.core import Kernel, Task
from ptesim.kernel.folio import Folio
from ptesim.kernel.mm import VM_UFFD_WP, VM_WRITE, Vma

Value = int | bool | str

#: where region ``r`` starts: BASE + r * (a PMD, at least)
BASE = 0x10_0000_0000
REGIONS = 2
NCPUS = 3
#: the longest program ``--replay`` accepts
MAX_PROGRAM_STEPS = 100_000


@dataclass(frozen=True)
class Step:
    """One operation of a program: ``op`` by task ``task`` with literal keyword arguments."""

    op: str
    task: int = 0
    args: tuple[tuple[str, Value], ...] = ()

    @staticmethod
    def make(op: str, task: int = 0, **kw: Value) -> Step:
        """A step with its arguments in the canonical order of :data:`OPS`."""
        order = {name: i for i, name in enumerate(OPS.get(op, ()))}
        return Step(op, task, tuple(sorted(kw.items(), key=lambda kv: order.get(kv[0], len(order)))))

    def get(self, name: str) -> Any:
        for k, v in self.args:
            if k == name:
                return v
        raise KeyError(name)

    def __str__(self) -> str:
        return f"t{self.task}.{self.op}(" + ", ".join(f"{k}={v!r}" for k, v in self.args) + ")"

    def python(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.args)
        return f"Step.make({self.op!r}, {self.task}{kw})"

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "task": self.task, **dict(self.args)}

    @staticmethod
    def from_json(d: Any, where: str = "step") -> Step:
        """A step from its JSON form, every field checked (type and range) before anything runs."""
        if not isinstance(d, dict) or not isinstance(d.get("op"), str) or d["op"] not in OPS:
            raise UsageError(f"bad {where}: needs an 'op' among {', '.join(OPS)}")
        op = d["op"]
        args = {k: v for k, v in d.items() if k not in ("op", "task")}
        unknown = sorted(set(args) - set(OPS[op]))
        if unknown:
            raise UsageError(f"bad {where} ({op}): unknown argument {unknown[0]!r}")
        missing = sorted(set(OPS[op]) - set(args))
        if missing:
            raise UsageError(f"bad {where} ({op}): missing {', '.join(missing)}")
        task = _checked_arg(where, op, "task", d.get("task", 0))
        return Step(op, int(task), tuple((k, _checked_arg(where, op, k, args[k])) for k in OPS[op]))


#: the pages a step may name: far more than any region holds, small enough to run at once
MAX_STEP_PAGES = 1 << 16
#: the range of each integer step argument
INT_ARGS: dict[str, tuple[int, int]] = {
    "task": (0, 1 << 16),
    "order": (0, 20),
    "region": (0, REGIONS - 1),
    "off": (0, MAX_STEP_PAGES),
    "page": (0, MAX_STEP_PAGES),
    "pages": (0, MAX_STEP_PAGES),
    "value": (-(1 << 62), 1 << 62),
    "cpu": (0, 1 << 16),
    "pin": (0, 1 << 20),
}
#: the choices of every other step argument
CHOICE_ARGS: dict[str, tuple[Value, ...]] = {
    "shared": (False, True),
    "on": (False, True),
    "prot": ("r", "rw"),
}


def _checked_arg(where: str, op: str, name: str, v: Any) -> Value:
    if name in INT_ARGS:
        lo, hi = INT_ARGS[name]
        if type(v) is not int:
            raise UsageError(f"bad {where} ({op}): {name} must be an integer, not {v!r}")
        if not lo <= v <= hi:
            raise UsageError(f"bad {where} ({op}): {name} {v} is out of range {lo}..{hi}")
        return v
    choices = CHOICE_ARGS[name]
    for c in choices:
        if type(v) is type(c) and v == c:
            return c
    raise UsageError(f"bad {where} ({op}): {name} must be one of {', '.join(map(repr, choices))}, not {v!r}")


#: Every operation and its arguments, in order.
OPS: dict[str, tuple[str, ...]] = {
    "folio": ("order",),
    "mmap": ("region", "off", "pages", "shared"),
    "populate": ("region", "off", "pages", "value"),
    "write": ("region", "page", "value"),
    "read": ("region", "page"),
    "fork": ("cpu",),
    "exit": (),
    "migrate": ("cpu",),
    "munmap": ("region", "off", "pages"),
    "mprotect": ("region", "off", "pages", "prot"),
    "dontneed": ("region", "off", "pages"),
    "free": ("region", "off", "pages"),
    "hugepage": ("region", "off", "pages", "on"),
    "dontfork": ("region", "off", "pages", "on"),
    "pin": ("region", "page"),
    "unpin": ("pin",),
    "uffd_register": ("region", "off", "pages"),
    "uffd_wp": ("region", "off", "pages", "on"),
}


@dataclass(frozen=True)
class Target:
    """What a program runs on: arch, kernel preset, granule, CPU features, an optional mutant, and
    ``--set`` flag overrides of the preset (``("fork_batch=none", ...)``)."""

    arch: str = "x86"
    preset: str = "v6.9"
    granule: int = 4096
    features: tuple[str, ...] | None = None
    mutant: str | None = None
    overrides: tuple[str, ...] = ()

    def label(self) -> str:
        g = f" {self.granule // 1024}K" if self.granule != 4096 else ""
        s = "".join(f" +{o}" for o in self.overrides)
        f = f" [{','.join(self.features)}]" if self.features else ""
        m = f" mutant {self.mutant}" if self.mutant else ""
        return f"{self.arch} {self.preset}{s}{g}{f}{m}"

    def config(self) -> KernelConfig:
        """The preset with the overrides applied; a flag that does not exist, does not apply to the
        arch or cannot take its value is a :class:`UsageError`."""
        cfg = preset(self.preset)
        if self.overrides:
            cfg = cfg.with_overrides(parse_overrides(list(self.overrides), self.arch))
        return cfg

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The mutant (if any) patched into the model for the duration."""
        if self.mutant is None:
            yield
            return
        from ptesim.mutants import mutant

        with mutant(self.mutant).applied():
            yield


@dataclass
class Program:
    """A replayable program: its target and steps."""

    target: Target
    steps: list[Step] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "arch": t.arch,
            "preset": t.preset,
            "granule": t.granule,
            "features": list(t.features) if t.features is not None else None,
            "mutant": t.mutant,
            "set": list(t.overrides),
            "steps": [s.to_json() for s in self.steps],
        }

    @staticmethod
    def from_json(d: Any) -> Program:
        """A program from its JSON form, every field checked before anything runs."""
        from ptesim.arch import ARCHES, CPU_FEATURES
        from ptesim.kernel.config import PRESETS

        if not isinstance(d, dict) or not isinstance(d.get("steps"), list):
            raise UsageError("a program is a JSON object with 'arch', 'preset' and a list of 'steps'")
        unknown = sorted(set(d) - {"arch", "preset", "granule", "features", "mutant", "set", "steps"})
        if unknown:
            raise UsageError(f"bad program: unknown field {unknown[0]!r}")
        arch = d.get("arch", "x86")
        if arch not in ARCHES:
            raise UsageError(f"bad program: arch {arch!r} is not one of {', '.join(ARCHES)}")
        preset = d.get("preset", "v6.9")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise UsageError(f"bad program: preset {preset!r} is not a known preset")
        granule = d.get("granule", 4096)
        granules = (4096, 16384, 65536) if arch == "arm64" else (4096,)
        if type(granule) is not int or granule not in granules:
            raise UsageError(f"bad program: granule {granule!r} is not one of {granules} for {arch}")
        feats = d.get("features")
        if feats is not None and (
            not isinstance(feats, list)
            or any(not isinstance(f, str) or f not in CPU_FEATURES[arch] for f in feats)
        ):
            raise UsageError(f"bad program: features {feats!r} are not CPU features of {arch}")
        mutant = d.get("mutant")
        if mutant is not None:
            from ptesim.mutants import MUTANTS

            if not isinstance(mutant, str) or mutant not in MUTANTS:
                raise UsageError(f"bad program: mutant {mutant!r} is not in the catalogue")
        if len(d["steps"]) > MAX_PROGRAM_STEPS:
            raise UsageError(f"bad program: more than {MAX_PROGRAM_STEPS} steps")
        overrides = d.get("set") or []
        if not isinstance(overrides, list) or any(not isinstance(o, str) for o in overrides):
            raise UsageError(f"bad program: set {overrides!r} is not a list of 'flag=value' strings")
        target = Target(
            arch, preset, granule, tuple(feats) if feats is not None else None, mutant, tuple(overrides)
        )
        try:
            target.config()
        except (UsageError, ValueError) as e:
            raise UsageError(f"bad program: {e}") from None
        return Program(target, [Step.from_json(s, f"step {i + 1}") for i, s in enumerate(d["steps"])])

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def python(self) -> str:
        """The program as a Python snippet that replays it."""
        t = self.target
        lines = [
            "from ptesim.fuzz import Program, Step, Target",
            "",
            f"target = Target(arch={t.arch!r}, preset={t.preset!r}, granule={t.granule}, "
            f"features={t.features!r}, mutant={t.mutant!r}, overrides={t.overrides!r})",
            "Program(target, [",
            *(f"    {s.python()}," for s in self.steps),
            "]).replay()",
        ]
        return "\n".join(lines)

    def text(self) -> str:
        return "\n".join(f"{i + 1:3d}  {s}" for i, s in enumerate(self.steps))

    def replay(self) -> Runner:
        """Run every step with all checks; raises InvariantViolation (or the model's own error)."""
        with self.target.applied():
            r = Runner(self.target)
            for s in self.steps:
                r.run(s)
        return r


def block_pages(kernel: Kernel) -> int:
    """Pages per contiguous block of this arch and granule (16 where there is none)."""
    return max(16, getattr(kernel.arch, "contpte_nr", 16))


class Runner:
    """Executes steps on one checked machine and checks every invariant after each."""

    def __init__(self, target: Target) -> None:
        feats = frozenset(target.features) if target.features is not None else None
        self.target = target
        self.kernel = k = Kernel(
            target.arch, target.config(), checks=True, granule=target.granule, cpu_features=feats, ncpus=NCPUS
        )
        self.oracle = Oracle()
        self.tasks: dict[int, Task] = {0: k.spawn(0)}
        self.next_tid = 1
        self.pins: list[int | None] = []
        self.page = k.arch.page_size
        self.block = block_pages(k)
        g = k.arch.geometry
        self.region_span = max(g.pmd_size, 4 * self.block * self.page)
        orders = {0, 2, self.block.bit_length() - 1, self.block.bit_length()}
        if g.page_shift == 12:
            orders.add(g.pmd_order)
        self.orders = sorted(o for o in orders if o <= g.pmd_order)
        self.steps: list[Step] = []
        self.reads: list[int] = []
        free = k.pages.free_folio

        def checked_free(folio: Folio, mm: object | None = None) -> None:
            validate_freeing(k, folio)
            free(folio, mm)

        k.pages.free_folio = checked_free  # type: ignore[method-assign]

    # ---- helpers --------------------------------------------------------------------------------
    def addr(self, region: int, page: int) -> int:
        return BASE + (region % REGIONS) * self.region_span + page * self.page

    def live(self) -> list[int]:
        return sorted(self.tasks)

    def _vma(self, t: Task, addr: int) -> Vma | None:
        return t.mm.find_vma(addr)

    def _range(self, s: Step) -> tuple[int, int]:
        pages = max(1, int(s.get("pages")))
        return self.addr(s.get("region"), int(s.get("off"))), pages * self.page

    # ---- running --------------------------------------------------------------------------------
    def run(self, s: Step) -> bool:
        """Run one step and check everything; False if the step was skipped."""
        self.steps.append(s)
        t = self.tasks.get(s.task)
        if t is None:
            return False
        done = getattr(self, f"_op_{s.op}")(t, s)
        self.check()
        return bool(done)

    def check(self) -> None:
        k = self.kernel
        tasks = [self.tasks[i] for i in self.live()]
        census = Census(k)  # one read of the page tables serves every check
        validate_all(k, census)
        validate_views(self.oracle, tasks, census)
        validate_anon_dirty(self.oracle, tasks, census)
        validate_shared_dirty(k, self.oracle, census)
        validate_uffd_wp(self.oracle, tasks, census)

    def _op_folio(self, t: Task, s: Step) -> bool:
        order = int(s.get("order"))
        if order not in self.orders and order != 0:
            return False
        self.kernel.thp.only(order or None)
        return True

    def _op_mmap(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        region_end = self.addr(s.get("region"), 0) + self.region_span
        if a + n > region_end or any(v.start < a + n and v.end > a for v in t.mm.vmas):
            return False
        t.mmap(n, "rw", shared=bool(s.get("shared")), addr=a)
        return True

    def _writable(self, t: Task, addr: int) -> bool:
        vma = self._vma(t, addr)
        if vma is None or not vma.flags & VM_WRITE:
            return False
        return addr // self.page not in self.oracle.uffd_wp.get(t.mm.id, set())

    def _write(self, t: Task, a: int, value: int) -> None:
        t.write(a, value)
        self.oracle.write(t, a, value)
        validate_written(self.kernel, t.mm, a)

    def _op_write(self, t: Task, s: Step) -> bool:
        a = self.addr(s.get("region"), int(s.get("page")))
        if not self._writable(t, a):
            return False
        self._write(t, a, int(s.get("value")))
        return True

    def _op_populate(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        done = False
        for i, x in enumerate(range(a, a + n, self.page)):
            if self._writable(t, x):
                self._write(t, x, int(s.get("value")) + i)
                done = True
        return done

    def _op_read(self, t: Task, s: Step) -> bool:
        a = self.addr(s.get("region"), int(s.get("page")))
        if self._vma(t, a) is None:
            return False
        got = t.read(a)
        self.reads.append(got)
        want = self.oracle.expect(t, a)
        if got != want:
            raise InvariantViolation("isolation", f"{t!r} reads {got} at {a:#x}, its history says {want}")
        return True

    def _op_fork(self, t: Task, s: Step) -> bool:
        c = t.fork(int(s.get("cpu")) % NCPUS)
        validate_fork_child(self.kernel, t.mm, c.mm)
        self.oracle.fork(t, c)
        self.tasks[self.next_tid] = c
        self.next_tid += 1
        return True

    def _op_exit(self, t: Task, s: Step) -> bool:
        if len(self.tasks) == 1:
            return False
        t.exit()
        self.oracle.exit(t)
        del self.tasks[s.task]
        return True

    def _op_migrate(self, t: Task, s: Step) -> bool:
        t.migrate(int(s.get("cpu")) % NCPUS)
        return True

    def _op_munmap(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        t.munmap(a, n)
        validate_range(self.kernel, t.mm, a, a + n, present=False, writable=False)
        self.oracle.discard(t, a, n)
        return True

    def _op_mprotect(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        prot = str(s.get("prot"))
        if prot not in ("r", "rw"):
            return False
        t.mprotect(a, n, prot)
        if prot == "r":
            validate_range(self.kernel, t.mm, a, a + n, present=True, writable=False)
        return True

    def _op_dontneed(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        t.madvise(a, n, "dontneed")
        validate_range(self.kernel, t.mm, a, a + n, present=False, writable=False)
        self.oracle.discard(t, a, n)
        return True

    def _op_free(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        t.madvise(a, n, "free")
        self.oracle.madv_free(t, a, n)
        return True

    def _op_hugepage(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        t.madvise(a, n, "hugepage" if s.get("on") else "nohugepage")
        return True

    def _op_dontfork(self, t: Task, s: Step) -> bool:
        a, n = self._range(s)
        t.madvise(a, n, "dontfork" if s.get("on") else "dofork")
        return True

    def _op_pin(self, t: Task, s: Step) -> bool:
        a = self.addr(s.get("region"), int(s.get("page")))
        if not self._writable(t, a):
            return False
        self.pins.append(t.pin(a))
        return True

    def _op_unpin(self, t: Task, s: Step) -> bool:
        i = int(s.get("pin"))
        if not 0 <= i < len(self.pins) or self.pins[i] is None:
            return False
        pfn = self.pins[i]
        assert pfn is not None
        self.pins[i] = None
        t.unpin(pfn)
        return True

    def _op_uffd_register(self, t: Task, s: Step) -> bool:
        from ptesim.kernel.userfaultfd import userfaultfd_register_wp

        a, n = self._range(s)
        vmas = [v for v in t.mm.vmas if v.start < a + n and v.end > a]
        if not vmas:
            return False
        with self.kernel.operation(t, "mprotect"):
            userfaultfd_register_wp(t.mm, a, n)
        return True

    def _op_uffd_wp(self, t: Task, s: Step) -> bool:
        from ptesim.kernel.userfaultfd import mwriteprotect_range

        a, n = self._range(s)
        vmas = [v for v in t.mm.vmas if v.start < a + n and v.end > a]
        if not vmas or any(not v.flags & VM_UFFD_WP for v in vmas):
            return False
        on = bool(s.get("on"))
        with self.kernel.operation(t, "mprotect"):
            mwriteprotect_range(t.mm, a, n, on)
        from ptesim.hw.mmu import walk

        shift = self.kernel.arch.page_shift
        vpns = set()
        for x in range(a, a + n, self.page):
            if not on or walk(self.kernel, t.mm, x)[0] is not None:  # the present pages only
                vpns.add(x >> shift)
        self.oracle.write_protect(t, vpns, on)
        return True


# ---- state comparison for differential runs -----------------------------------------------------


def observe(r: Runner) -> dict[str, Any]:
    """What two kernels running the same program must agree on (see docs/testing.md): every leaf
    entry up to the bits the specification lets differ, folio refcounts, mapcounts and
    AnonExclusive by canonical folio, RSS, and VMAs."""
    k = r.kernel
    arch = k.arch
    canon: dict[int, int] = {}
    folios: dict[int, tuple[Any, ...]] = {}
    tasks: dict[int, Any] = {}
    for tid in r.live():
        mm = r.tasks[tid].mm
        leaves = []
        for table in sorted(mm.pte_tables(), key=lambda tb: tb.base):
            for idx, pte in enumerate(table.entries):
                if not pte or not arch.pte_present(pte):
                    continue
                addr = table.base + (idx << arch.page_shift)
                leaves.append(_leaf(r, canon, folios, addr, pte, mm.find_vma(addr)))
        for addr, pmd in mm.pmd_leaves():
            leaves.append(("pmd", *_leaf(r, canon, folios, addr, pmd, mm.find_vma(addr))))
        vmas = [(v.start, v.end, v.flags) for v in mm.vmas]
        tasks[tid] = {"leaves": leaves, "rss": dict(+mm.rss), "vmas": vmas}
    return {"tasks": tasks, "folios": folios}


def _leaf(
    r: Runner, canon: dict[int, int], folios: dict[int, tuple[Any, ...]], addr: int, pte: int, vma: Vma | None
) -> tuple[Any, ...]:
    arch = r.kernel.arch
    norm = arch.pte_mkold(arch.pte_mkclean(arch.pte_mknoncont(pte)))
    norm = arch.pte_pgprot(arch.pte_clear_soft_dirty(norm))
    shared = vma is not None and vma.file is not None
    dirty = arch.pte_dirty(pte) if shared else None  # private anon: gathered dirty may differ
    if arch.pte_special(pte):
        return (addr, "zero", norm)
    folio = r.kernel.pages.pfn_to_folio(arch.pte_pfn(pte))
    assert folio is not None
    fid = canon.setdefault(folio.pfn, len(canon))
    folios[fid] = (
        folio.nr_pages,
        folio.refcount,
        tuple(folio.mapcount),
        folio.entire_mapcount,
        tuple(folio.anon_exclusive),
        folio.pincount,
        folio.dirty,
    )
    return (addr, fid, arch.pte_pfn(pte) - folio.pfn, norm, dirty)


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two observations differ, as a readable path, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}/{key}: only in {'the first' if key in a else 'the second'}"
            d = first_difference(a[key], b[key], f"{path}/{key}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        if len(a) != len(b):
            return f"{path}: {len(a)} entries against {len(b)}"
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


class DiffRunner:
    """The same program on two kernels in lockstep: each checked on its own, and compared."""

    def __init__(self, first: Target, second: Target) -> None:
        self.runners = [Runner(first), Runner(second)]

    @property
    def steps(self) -> list[Step]:
        return self.runners[0].steps

    def run(self, s: Step) -> bool:
        done = [r.run(s) for r in self.runners]
        a, b = self.runners
        if done[0] != done[1] or a.reads != b.reads:
            raise InvariantViolation(
                "differential", f"{s}: the kernels disagree on what the step did or read"
            )
        d = first_difference(observe(a), observe(b))
        if d:
            raise InvariantViolation(
                "differential", f"after {s}: {a.target.preset} and {b.target.preset} differ at {d}"
            )
        return done[0]
