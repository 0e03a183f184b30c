"""ptesim: an executable model of the Linux page-table layer, and a host mode that measures the real one.

The model mirrors ``mm/memory.c``, ``kernel/fork.c`` and the arch page-table code of x86-64, arm64
(contpte) and riscv (Svnapot).  Every PTE access, atomic, TLB invalidation and barrier is counted where
the model's primitives execute it; a separate cost model turns those counts into time.
"""

__version__ = "0.1.0"

from ptesim.api import (
    Counts,
    Price,
    TraceRecord,
    Validation,
    count,
    latency,
    machine,
    price,
    sweep,
    to_bytes,
    trace,
    validate,
    validation,
    wis,
)

__all__ = [
    "Counts",
    "Price",
    "TraceRecord",
    "Validation",
    "__version__",
    "count",
    "latency",
    "machine",
    "price",
    "sweep",
    "to_bytes",
    "trace",
    "validate",
    "validation",
    "wis",
]
