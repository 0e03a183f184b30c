"""The arm64 backend: 4K, 16K and 64K granules, PTE_CONT managed transparently for user mappings
(``arch/arm64/mm/contpte.c``), and broadcast TLB maintenance.

* :mod:`~ptesim.arch.arm64.pgtable` — descriptor bits, value helpers, the raw ``__`` primitives;
* :mod:`~ptesim.arch.arm64.contpte` — the contpte layer and the public wrappers over it;
* :mod:`~ptesim.arch.arm64.tlbflush` — ``tlbflush.h`` / ``tlb.h``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ptesim.arch.arm64.pgtable import CONT_PTES_BY_GRANULE
from ptesim.arch.arm64.tlbflush import Arm64TlbFlush
from ptesim.errors import UsageError
from ptesim.kernel.pgtable import GEOMETRY_4K, GEOMETRY_16K, GEOMETRY_64K

if TYPE_CHECKING:
    from ptesim.hw.cpu import Hardware
    from ptesim.kernel.config import KernelConfig

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


__all__ = ["GEOMETRY_BY_GRANULE", "Arm64"]
