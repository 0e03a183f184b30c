"""CPUs, ASIDs, and the invalidation instructions as the hardware executes them.

Every TLB-maintenance instruction the kernel model issues goes through :class:`Hardware`, which
counts it (the only place TLBIs and barriers are counted) and applies its architectural effect:
a broadcast (inner-shareable) invalidation reaches every CPU's TLB, a local one only the issuing
CPU's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ptesim.events import emit
from ptesim.hw.tlb import Tlb

Kind = Literal["page", "range", "asid", "all"]


class Cpu:
    def __init__(self, cpu_id: int, tlb_capacity: int) -> None:
        self.id = cpu_id
        self.tlb = Tlb(tlb_capacity)
        self.current_asid: int | None = None

    def __repr__(self) -> str:
        return f"<cpu{self.id} asid={self.current_asid}>"


class Hardware:
    """The CPUs of one machine and the instructions that act on their TLBs."""

    def __init__(self, ncpus: int = 4, tlb_capacity: int = 4096) -> None:
        if ncpus < 1:
            raise ValueError("a machine needs at least one CPU")
        self.cpus = [Cpu(i, tlb_capacity) for i in range(ncpus)]
        #: The CPU executing kernel code right now (the faulting or syscalling task's CPU).
        self.current = 0
        #: Called with (mm, start, end, reason) at points where the kernel relies on a flush having
        #: completed; the kernel model installs its coherence check here when checking is on.
        self.on_flush_point: Callable[[object, int, int, str], None] | None = None

    @property
    def ncpus(self) -> int:
        return len(self.cpus)

    def tlbi(
        self,
        kind: Kind,
        *,
        broadcast: bool,
        asid: int | None = None,
        vpn: int = 0,
        npages: int = 1,
        mm: object | None = None,
        count: int = 1,
    ) -> None:
        """Issue ``count`` identical invalidation instructions (count > 1: the KPTI user twin or a
        repeat erratum) and apply their effect."""
        emit(f"tlbi_{kind}_{'bcast' if broadcast else 'local'}", count, mm=mm)
        if (
            broadcast
            and kind in ("page", "range")
            and asid is not None
            and self.cpus[self.current].current_asid == asid
        ):
            # The issuing CPU is running this address space: its own TLB and walk caches may
            # hold the entries being invalidated.  A qualifier, counted besides the instruction.
            emit("tlbi_live_asid", count, mm=mm)
        targets = self.cpus if broadcast else [self.cpus[self.current]]
        for cpu in targets:
            self._apply(cpu, kind, asid, vpn, npages)

    def invlpgb(
        self, asid: int, *, vpn: int = 0, npages: int | None = None, mm: object | None = None, count: int = 1
    ) -> None:
        """``count`` INVLPGBs (count 2: the PTI user-PCID twin) of ``npages`` pages from ``vpn``, or
        of the whole PCID (``npages`` None), reaching every CPU's TLB."""
        if npages is None:
            emit("invlpgb_pcid", count, mm=mm)
            for cpu in self.cpus:
                self._apply(cpu, "asid", asid, 0, 1)
        else:
            emit("invlpgb", count, mm=mm)
            for cpu in self.cpus:
                self._apply(cpu, "range", asid, vpn, npages)

    def remote_flush(self, cpu_id: int, kind: Kind, asid: int | None, vpn: int = 0, npages: int = 1) -> None:
        """The flush a remote CPU performs in its IPI or SBI handler (counted by the sender)."""
        self._apply(self.cpus[cpu_id], kind, asid, vpn, npages)

    @staticmethod
    def _apply(cpu: Cpu, kind: Kind, asid: int | None, vpn: int, npages: int) -> None:
        if kind == "all":
            cpu.tlb.invalidate_all()
        elif kind == "asid":
            assert asid is not None
            cpu.tlb.invalidate_asid(asid)
        else:
            cpu.tlb.invalidate_range(asid, vpn, npages)

    def barrier(self, name: str, mm: object | None = None) -> None:
        """A counted barrier: ``dsb_ishst``, ``dsb_ish``, ``dsb_nshst``, ``dsb_nsh``, ``isb``,
        ``tlbsync``."""
        emit(name, mm=mm)
        asid = getattr(mm, "asid", None)
        if name == "dsb_ish" and asid is not None and self.cpus[self.current].current_asid == asid:
            # The completion wait of invalidations for the address space this CPU is running.
            emit("dsb_live_asid", mm=mm)

    def ipi(self, cpu_id: int, mm: object | None = None) -> None:
        emit("ipi", mm=mm)

    def flush_point(self, mm: object, start: int, end: int, reason: str) -> None:
        if self.on_flush_point is not None:
            self.on_flush_point(mm, start, end, reason)
