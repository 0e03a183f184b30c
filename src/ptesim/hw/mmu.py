"""The MMU: TLB lookup, hardware table walk (with hardware access/dirty updates), faults.

Nothing here is a kernel primitive, so nothing is counted except the faults it raises, which run
the kernel's fault handler as a ``fault`` operation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.errors import InvariantViolation
from ptesim.kernel.pgtable import PteTable

if TYPE_CHECKING:
    from ptesim.kernel.core import Kernel, Task
    from ptesim.kernel.mm import MmStruct


def walk(kernel: Kernel, mm: MmStruct, addr: int) -> tuple[int | None, int, int]:
    """Walk ``mm``'s tables for ``addr``: (leaf entry or None, PFN of the page, span in pages of a
    TLB entry filled from it)."""
    arch = kernel.arch
    g = arch.geometry
    entry = mm.pmd_entry(addr)
    if isinstance(entry, int):
        if not arch.pte_present(entry):
            return None, 0, 1
        off = (addr & (g.pmd_size - 1)) >> g.page_shift
        return entry, arch.pte_pfn(entry) + off, 1 << g.pmd_order
    if not isinstance(entry, PteTable):
        return None, 0, 1
    pte = entry.entries[(addr >> g.page_shift) & (g.ptrs_per_pte - 1)]
    if not arch.pte_present(pte):
        return None, 0, 1
    return pte, arch.pte_pfn(pte), arch.tlb_span(pte)


def _store_leaf(kernel: Kernel, mm: MmStruct, addr: int, value: int) -> None:
    g = kernel.arch.geometry
    entry = mm.pmd_entry(addr)
    if isinstance(entry, PteTable):
        entry.entries[(addr >> g.page_shift) & (g.ptrs_per_pte - 1)] = value
    else:
        table = mm.pmd_table(addr, False)
        assert table is not None
        table.entries[g.index(g.levels - 2, addr)] = value


def access(task: Task, addr: int, *, write: bool, value: int = 0) -> int:
    """One load or store by ``task`` on its CPU.  Returns the value read (or written)."""
    from ptesim.kernel.memory import handle_mm_fault

    kernel = task.kernel
    arch = kernel.arch
    mm = task.mm
    cpu = kernel.hw.cpus[task.cpu]
    if cpu.current_asid != mm.asid:
        arch.switch_mm(mm, task.cpu)
    vpn = addr >> arch.page_shift
    for _ in range(4):
        hit = cpu.tlb.lookup(mm.asid, vpn)
        if hit is not None:
            key, e = hit
            if not (write and not e.writable):
                return _touch(kernel, task, e.pfn + (vpn - key[1]), write, value)
            if arch.hw_keeps_permission_faults():
                # the stale read-only entry stays: only the kernel's invalidation removes it
                vma = task._vma(addr, write)
                with kernel.operation(task, "fault"):
                    handle_mm_fault(vma, addr, write)
                continue
            cpu.tlb.drop(key)  # a permission fault does not leave the entry cached
        pte, pfn, span = walk(kernel, mm, addr)
        new = arch.hw_access(pte, write) if pte is not None else None
        if new is None:
            cacheable = pte is not None and arch.hw_access(pte, False) is not None  # valid, accessed
            if write and cacheable and arch.hw_keeps_permission_faults():
                cpu.tlb.insert(mm.asid, vpn, span, pfn - (vpn & (span - 1)), False)
            vma = task._vma(addr, write)
            with kernel.operation(task, "fault"):
                handle_mm_fault(vma, addr, write)
            continue
        assert pte is not None
        if new != pte:
            _store_leaf(kernel, mm, addr, new)
        writable = arch.hw_tlb_writable(new)
        first = pfn - (vpn & (span - 1))
        cpu.tlb.insert(mm.asid, vpn, span, first, writable)
        return _touch(kernel, task, pfn, write, value)
    raise InvariantViolation("fault_loop", f"access to {addr:#x} by {task!r} keeps faulting")


def _touch(kernel: Kernel, task: Task, pfn: int, write: bool, value: int) -> int:
    folio = kernel.pages.pfn_to_folio(pfn)
    if folio is None:
        raise InvariantViolation("tlb_coherence", f"{task!r} accessed freed PFN {pfn:#x} through its TLB")
    idx = pfn - folio.pfn
    if write:
        if folio.zero_page:
            raise InvariantViolation("tlb_coherence", f"{task!r} wrote the shared zero page")
        folio.data[idx] = value
        return value
    return folio.data[idx]
