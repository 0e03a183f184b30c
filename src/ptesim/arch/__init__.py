"""Architecture backends: the page-table API the core calls, by the kernel's names.

``base.Arch`` carries the generic fallbacks of ``include/linux/pgtable.h``; each arch overrides what
its ``asm/pgtable.h`` overrides, exactly as the kernel's ``#ifndef __HAVE_ARCH_*`` pattern does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptesim.errors import UsageError

if TYPE_CHECKING:
    from ptesim.arch.base import Arch
    from ptesim.hw.cpu import Hardware
    from ptesim.kernel.config import KernelConfig

ARCHES = ("x86", "arm64", "riscv")

#: CPU features each arch understands (``--cpu-features``).
CPU_FEATURES: dict[str, dict[str, str]] = {
    "x86": {
        "pti": "page-table isolation: user and kernel PCIDs, each flush done for both",
        "invlpgb": "AMD INVLPGB: broadcasts instead of IPIs for an mm active on 4+ CPUs (v6.15+)",
    },
    "arm64": {
        "tlbi-range": "FEAT_TLBIRANGE (ARMv8.4): TLBI RVALE1IS covers a range in one instruction",
        "kpti": "kernel page-table isolation: every user TLBI issued twice (user ASID twin)",
        "bbml2": "BBML2_NOABORT: contiguous bit may change without break-before-make",
        "repeat-tlbi": "ARM64_WORKAROUND_REPEAT_TLBI erratum: TLBI; DSB ISH; TLBI",
        "no-hafdbs": "no FEAT_HAFDBS (ARMv8.0 cores): access flag and dirty state managed by software "
        "through faults; an entry that took a permission fault may stay in the TLB",
    },
    "riscv": {
        "sbi-rfence": "remote fences through the SBI RFENCE call instead of direct IPIs",
        "svinval": "Svinval: sinval.vma with sfence.w.inval / sfence.inval.ir",
    },
}


def make_arch(
    name: str, cfg: KernelConfig, hw: Hardware, *, granule: int = 4096, features: frozenset[str] = frozenset()
) -> Arch:
    """Build the backend ``name`` for kernel ``cfg`` on ``hw``."""
    if name not in ARCHES:
        raise UsageError(f"unknown arch {name!r}; known: {', '.join(ARCHES)}")
    unknown = sorted(set(features) - set(CPU_FEATURES[name]))
    if unknown:
        raise UsageError(
            f"unknown CPU feature {unknown[0]!r} for {name}; known: {', '.join(CPU_FEATURES[name])}"
        )
    if name != "arm64" and granule != 4096:
        raise UsageError(f"{name} has only a 4K granule, not {granule // 1024}K")
    if name == "x86":
        from ptesim.arch.x86 import X86

        return X86(cfg, hw, features)
    if name == "arm64":
        from ptesim.arch.arm64 import Arm64

        return Arm64(cfg, hw, features, granule=granule)
    from ptesim.arch.riscv import Riscv

    return Riscv(cfg, hw, features)
