"""The arm64 backend: 4K, 16K and 64K granules, PTE_CONT managed transparently for user mappings
(``arch/arm64/mm/contpte.c``), and broadcast TLB maintenance.

* :mod:`~ptesim.arch.arm64.pgtable` — descriptor bits, value helpers, the raw ``__`` primitives;
* :mod:`~ptesim.arch.arm64.contpte` — the contpte layer and the public wrappers over it;
* :mod:`~ptesim.arch.arm64.tlbflush` — ``tlbflush.h`` / ``tlb.h``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.arch.arm64.pgtable import CONT_PTES_BY_GRANULE, PTE_DIRTY, PTE_SPECIAL, PTE_UFFD_WP, PTE_VALID
from ptesim.arch.arm64.tlbflush import Arm64TlbFlush
from ptesim.errors import UsageError
from ptesim.events import kfunc
from ptesim.kernel.pgtable import GEOMETRY_4K, GEOMETRY_16K, GEOMETRY_64K, Ptep

if TYPE_CHECKING:
    from ptesim.hw.cpu import Hardware
    from ptesim.kernel.config import KernelConfig
    from ptesim.kernel.mm import Vma

#: PTE_SWBITS_MASK: bit 63 and bits 58:55 (the model uses 55 dirty, 56 special, 58 uffd-wp).
PTE_SWBITS_MASK = (1 << 63) | PTE_DIRTY | PTE_SPECIAL | (1 << 57) | PTE_UFFD_WP

GEOMETRY_BY_GRANULE = {4096: GEOMETRY_4K, 16384: GEOMETRY_16K, 65536: GEOMETRY_64K}


class Arm64(Arm64TlbFlush):
    """arm64 with ``CONFIG_ARM64_CONTPTE`` (CONT_PTES 16/128/32 for 4K/16K/64K) when ``cfg.contpte``."""

    name: ClassVar[str] = "arm64"

    def __init__(
        self, cfg: KernelConfig, hw: Hardware, features: frozenset[str], granule: int = 4096
    ) -> None:
        geometry = GEOMETRY_BY_GRANULE.get(granule)
        if geometry is None:
            raise UsageError(f"arm64 granule must be 4K, 16K or 64K, not {granule}")
        super().__init__(cfg, hw, features, geometry)
        self._init_layout()
        self._init_contpte(CONT_PTES_BY_GRANULE[granule], cfg.contpte)

    # ---- arch/arm64/mm/mmu.c (v6.17, 7efa1cd5f89b) -------------------------------------------
    @kfunc
    def modify_prot_start_ptes(self, vma: Vma, addr: int, ptep: Ptep, nr: int) -> int:
        """get_and_clear_ptes(): whole contpte blocks are cleared in place, only a partly covered
        block at either end is unfolded (the 2645198 erratum flush is not modelled)."""
        if not self.cfg.contpte_modify_prot:
            return super().modify_prot_start_ptes(vma, addr, ptep, nr)
        return self.get_and_clear_full_ptes(vma.mm, addr, ptep, nr, False)

    @kfunc
    def modify_prot_commit_ptes(self, vma: Vma, addr: int, ptep: Ptep, old: int, pte: int, nr: int) -> None:
        """set_ptes(): whole blocks are written back with PTE_CONT directly."""
        if not self.cfg.contpte_modify_prot:
            super().modify_prot_commit_ptes(vma, addr, ptep, old, pte, nr)
            return
        self.set_ptes(vma.mm, addr, ptep, pte, nr)

    def pte_needs_flush(self, oldpte: int, newpte: int) -> bool:
        """v6.19 (c320dbb7c80d): no flush when the old entry was invalid or only software bits
        changed.  Before it arm64 has no pte_needs_flush() and flushes every changed PTE."""
        if not self.cfg.arm64_pte_needs_flush:
            return True
        if not oldpte & PTE_VALID:
            return False
        return bool((oldpte ^ newpte) & ~PTE_SWBITS_MASK)


__all__ = ["GEOMETRY_BY_GRANULE", "Arm64"]
