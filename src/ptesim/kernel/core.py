"""A running machine: the kernel model, its hardware, and the tasks that use it.

:class:`Kernel` owns everything a simulation mutates (page allocator, mms, CPUs, the event sink);
nothing lives in module globals.  :class:`Task` is a process: its system calls and memory accesses
run the kernel model on the task's CPU, each as one counted *operation*.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ptesim.arch import make_arch
from ptesim.errors import UsageError
from ptesim.events import EventSink, emit
from ptesim.hw.cpu import Hardware
from ptesim.kernel.config import KernelConfig, preset
from ptesim.kernel.folio import PageAllocator
from ptesim.kernel.mm import MmStruct

if TYPE_CHECKING:
    from ptesim.fast.memo import FastEngine

THP_MODES = ("always", "madvise", "inherit", "never")


@dataclass
class ThpSettings:
    """/sys/kernel/mm/transparent_hugepage: the top-level ``enabled`` and per-size ``enabled``."""

    top: str = "never"
    per_order: dict[int, str] = field(default_factory=dict)
    orders: tuple[int, ...] = ()

    def mode(self, order: int) -> str:
        m = self.per_order.get(order, "never")
        return self.top if m == "inherit" else m

    def set(self, order: int, mode: str) -> None:
        if mode not in THP_MODES:
            raise UsageError(f"bad THP mode {mode!r}; one of {', '.join(THP_MODES)}")
        if order not in self.orders:
            raise UsageError(f"unsupported mTHP order {order}")
        self.per_order[order] = mode

    def only(self, order: int | None, mode: str = "always") -> None:
        """Enable exactly one size (None or order 0: only base pages)."""
        self.per_order = {o: "never" for o in self.orders}
        if order:
            self.set(order, mode)


class Kernel:
    """One simulated machine running one kernel configuration on one architecture."""

    def __init__(
        self,
        arch: str = "x86",
        config: KernelConfig | str = "v6.9",
        *,
        ncpus: int = 4,
        granule: int = 4096,
        cpu_features: frozenset[str] | None = None,
        checks: bool = False,
        trace_limit: int = 0,
        tlb_capacity: int = 4096,
    ) -> None:
        self.cfg = preset(config) if isinstance(config, str) else config
        features = self.cfg.default_cpu_features if cpu_features is None else frozenset(cpu_features)
        if arch != "arm64":
            features = frozenset(f for f in features if f != "bbml2") if cpu_features is None else features
        self.sink = EventSink(trace_limit=trace_limit)
        self.hw = Hardware(ncpus, tlb_capacity)
        self.arch = make_arch(arch, self.cfg, self.hw, granule=granule, features=features)
        g = self.arch.geometry
        self.pages = PageAllocator(g.pmd_order)
        # THP_ORDERS_ALL_ANON (include/linux/huge_mm.h, since v6.8's "mm: thp: support allocation
        # of anonymous multi-size THP"): orders 2..PMD_ORDER; order 0 is not huge and order 1 is
        # a limitation of the THP implementation, so no hugepages-8kB knob exists for anon memory
        self.thp = ThpSettings(orders=tuple(range(2, g.pmd_order + 1)))
        self.thp.only(None)
        self.mms: list[MmStruct] = []
        self.tasks: list[Task] = []
        self._next_id = 0
        self.checks = checks
        #: The fast engine replaying per-table kernel functions (None: the reference engine only).
        self.fast: FastEngine | None = None
        if checks:
            from ptesim.kernel.check import flush_point_check

            self.hw.on_flush_point = lambda mm, s, e, why: flush_point_check(self, mm, s, e, why)

    # ---- tasks -------------------------------------------------------------------------------
    def new_mm(self) -> MmStruct:
        self._next_id += 1
        mm = MmStruct(self, self._next_id, asid=self._next_id)
        self.mms.append(mm)
        return mm

    def spawn(self, cpu: int = 0) -> Task:
        """A new process with an empty address space, running on ``cpu``."""
        self._check_cpu(cpu)
        task = Task(self, self.new_mm(), cpu)
        self.tasks.append(task)
        with self.sink.operation("setup"):
            self.arch.switch_mm(task.mm, cpu)
        return task

    def _check_cpu(self, cpu: int) -> None:
        if not 0 <= cpu < self.hw.ncpus:
            raise UsageError(f"CPU {cpu} does not exist (this machine has {self.hw.ncpus})")

    @contextmanager
    def operation(self, task: Task, op: str, child_mm: MmStruct | None = None) -> Iterator[None]:
        """Run kernel code for ``task`` on its CPU, attributing every primitive to ``op``."""
        self.hw.current = task.cpu
        try:
            with self.sink.operation(op, child_mm):
                yield
        finally:
            if self.fast is not None:
                self.fast.settle()
        if self.fast is not None:
            self.fast.compact_pending()
        if self.checks:
            from ptesim.kernel.check import validate_all

            validate_all(self)

    @contextmanager
    def checks_deferred(self) -> Iterator[None]:
        """Check every invariant once, at the end of the block, instead of after each operation
        inside it (a set-up of a thousand faults is checked once, not a thousand times; the
        flush-point checks of the TLB stay on)."""
        was = self.checks
        self.checks = False
        try:
            yield
        finally:
            self.checks = was
        if was:
            from ptesim.kernel.check import validate_all

            validate_all(self)

    def set_folio_size(self, nbytes: int, mode: str = "always") -> int:
        """Enable only anonymous folios of ``nbytes`` (base pages for the page size)."""
        from ptesim.units import format_size, size_to_order

        order = size_to_order(nbytes, self.arch.page_size)
        if order > self.arch.geometry.pmd_order:
            raise UsageError(f"folio size {nbytes} is larger than the PMD size")
        if order == 1:
            raise UsageError(f"folio size {format_size(nbytes)}: anonymous mTHP has no order-1 size")
        self.thp.only(order or None, mode)
        return order


class Task:
    """A process: an mm, a CPU it runs on, and the operations it performs."""

    def __init__(self, kernel: Kernel, mm: MmStruct, cpu: int) -> None:
        self.kernel = kernel
        self.mm = mm
        self.cpu = cpu
        self.alive = True

    def __repr__(self) -> str:
        return f"<task mm{self.mm.id} on cpu{self.cpu}>"

    def _live(self) -> None:
        if not self.alive:
            raise UsageError("the task has exited")

    # ---- system calls ---------------------------------------------------------------------------
    def mmap(self, length: int, prot: str = "rw", *, shared: bool = False, addr: int | None = None) -> int:
        from ptesim.kernel.mmap import do_mmap

        self._live()
        with self.kernel.operation(self, "setup"):
            emit("syscall", mm=self.mm)
            return do_mmap(self.mm, length, prot, shared, addr)

    def munmap(self, addr: int, length: int) -> None:
        from ptesim.kernel.mmap import do_vmi_munmap

        self._live()
        with self.kernel.operation(self, "munmap"):
            emit("syscall", mm=self.mm)
            do_vmi_munmap(self.mm, addr, length)

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        from ptesim.kernel.mmap import mprotect

        self._live()
        with self.kernel.operation(self, "mprotect"):
            emit("syscall", mm=self.mm)
            mprotect(self.mm, addr, length, prot)

    def mremap(self, addr: int, length: int, new_addr: int) -> int:
        """mremap(addr, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, new_addr)."""
        from ptesim.kernel.mmap import mremap

        self._live()
        with self.kernel.operation(self, "mremap"):
            emit("syscall", mm=self.mm)
            return mremap(self.mm, addr, length, new_addr)

    def madvise(self, addr: int, length: int, advice: str) -> None:
        from ptesim.kernel.mmap import madvise

        self._live()
        with self.kernel.operation(self, "madvise"):
            emit("syscall", mm=self.mm)
            madvise(self.mm, addr, length, advice)

    def fork(self, cpu: int | None = None) -> Task:
        """fork(): a child with a copy of this address space, running on ``cpu``."""
        from ptesim.kernel.fork import dup_mmap

        self._live()
        k = self.kernel
        cpu = self.cpu if cpu is None else cpu
        k._check_cpu(cpu)
        mm = k.new_mm()
        with k.operation(self, "fork", child_mm=mm):
            dup_mmap(mm, self.mm)
        child = Task(k, mm, cpu)
        k.tasks.append(child)
        with k.sink.operation("setup"):
            k.arch.switch_mm(mm, cpu)
        return child

    def thread(self, cpu: int) -> Task:
        """clone(CLONE_VM): a thread sharing this address space, running on ``cpu``."""
        self._live()
        k = self.kernel
        k._check_cpu(cpu)
        t = Task(k, self.mm, cpu)
        self.mm.users += 1
        k.tasks.append(t)
        with k.sink.operation("setup"):
            k.arch.switch_mm(self.mm, cpu)
        return t

    def exit(self) -> None:
        from ptesim.kernel.fork import exit_mmap

        self._live()
        k = self.kernel
        cpu = k.hw.cpus[self.cpu]
        if cpu.current_asid == self.mm.asid:
            cpu.current_asid = None
        if self.mm.users > 1:  # another thread still uses the mm: no exit_mmap
            self.mm.users -= 1
            self.alive = False
            k.tasks.remove(self)
            return
        with k.operation(self, "exit"):
            exit_mmap(self.mm)
        self.alive = False
        k.mms.remove(self.mm)
        k.tasks.remove(self)

    def migrate(self, cpu: int) -> None:
        """Context switch this task onto ``cpu`` (switch_mm there)."""
        self._live()
        self.kernel._check_cpu(cpu)
        self.cpu = cpu
        with self.kernel.sink.operation("setup"):
            self.kernel.arch.switch_mm(self.mm, cpu)

    def pin(self, addr: int) -> int:
        """Long-term pin of the page at ``addr`` (like an RDMA or vfio registration); returns its PFN."""
        from ptesim.kernel.mmap import pin_user_page

        self._live()
        vma = self._vma(addr, write=True)
        with self.kernel.operation(self, "fault"):
            pin_user_page(self.mm, vma, addr)
        pfn = self.translate(addr)
        return pfn

    def unpin(self, pfn: int) -> None:
        from ptesim.kernel.mmap import unpin_user_page

        with self.kernel.operation(self, "setup"):
            folio = self.kernel.pages.pfn_to_folio(pfn)
            assert folio is not None
            unpin_user_page(self.mm, folio.pfn)

    # ---- memory accesses ---------------------------------------------------------------------------
    def _vma(self, addr: int, write: bool):  # type: ignore[no-untyped-def]
        """The VMA a user fault at ``addr`` may be handled in, else SIGSEGV: access_error()
        (arch/x86/mm/fault.c) and do_page_fault()'s vm_flags test (arch/arm64/mm/fault.c,
        arch/riscv/mm/fault.c): a write needs VM_WRITE, a read any access (vma_is_accessible)."""
        from ptesim.kernel.mm import VM_EXEC, VM_READ, VM_WRITE

        vma = self.mm.find_vma(addr)
        if (
            vma is None
            or (write and not vma.flags & VM_WRITE)
            or not vma.flags & (VM_READ | VM_WRITE | VM_EXEC)
        ):
            raise SegmentationFault(f"{'write' if write else 'read'} at {addr:#x} in mm{self.mm.id}")
        return vma

    def read(self, addr: int) -> int:
        from ptesim.hw.mmu import access

        self._live()
        return access(self, addr, write=False)

    def write(self, addr: int, value: int) -> None:
        from ptesim.hw.mmu import access

        self._live()
        access(self, addr, write=True, value=value)

    def translate(self, addr: int) -> int:
        """The PFN the page tables map ``addr`` to (no TLB, nothing counted)."""
        from ptesim.hw.mmu import walk

        entry, pfn, _ = walk(self.kernel, self.mm, addr)
        if entry is None:
            raise SegmentationFault(f"{addr:#x} is not mapped")
        return pfn

    def populate(self, addr: int, length: int, value: int = 1) -> None:
        """memset(): write every page of [addr, addr+length) once, in order."""
        page = self.kernel.arch.page_size
        for a in range(addr, addr + length, page):
            self.write(a, value)


class SegmentationFault(Exception):
    """A user access the process has no right to make."""
