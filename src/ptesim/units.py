"""Sizes, orders and page-size helpers.

Sizes are written as the kernel's sysfs names are: ``4K``, ``64K``, ``2M``, ``1G`` (binary units).
"""

from __future__ import annotations

import re

from ptesim.errors import UsageError

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

#: the largest mapping the model is asked to populate; below it, a mapping whose model state would
#: not fit in this machine's memory is refused by :func:`ptesim.fast.footprint.check_fits`
MODEL_MEM_MAX = 64 * GiB


def parse_size(text: str, *, what: str = "size") -> int:
    """Parse ``"64K"``, ``"2M"``, ``"1G"`` or a byte count into bytes.

    >>> parse_size("64K")
    65536
    >>> parse_size("2MiB")
    2097152
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected a number with an optional K/M/G suffix")
    value = int(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise UsageError(f"bad {what} {text!r}: must be positive")
    return value


def format_size(nbytes: int) -> str:
    """The sysfs spelling of a size: 4096 -> ``4K``, 2 MiB -> ``2M``.

    >>> format_size(65536)
    '64K'
    """
    for suffix, unit in (("G", GiB), ("M", MiB), ("K", KiB)):
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return f"{nbytes}B"


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def size_to_order(nbytes: int, page_size: int) -> int:
    """The folio order of a size: ``size_to_order(64K, 4K) == 4``."""
    if nbytes < page_size or nbytes % page_size or not is_power_of_two(nbytes // page_size):
        raise UsageError(
            f"bad folio size {format_size(nbytes)}: must be a power-of-two multiple of the "
            f"{format_size(page_size)} page size"
        )
    return (nbytes // page_size).bit_length() - 1


def parse_folio_size(text: str, page_size: int, max_order: int) -> int:
    """Parse a folio size and return its order, rejecting sizes the page tables cannot map."""
    nbytes = parse_size(text, what="folio size")
    order = size_to_order(nbytes, page_size)
    if order > max_order:
        raise UsageError(
            f"bad folio size {text}: larger than the PMD size {format_size(page_size << max_order)}"
        )
    return order


#: the largest CPU count any command accepts
MAX_CPUS = 4096


def parse_cpu_list(text: str) -> list[int]:
    """Parse ``"1,8,16"`` or ``"1-4,8"`` into a sorted list of distinct positive CPU counts.

    Every element is checked against :data:`MAX_CPUS` before any range is expanded.
    """
    if len(text) > 10_000:
        raise UsageError(f"bad CPU list {text[:20]!r}...: longer than 10000 characters")
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise UsageError(f"bad CPU list {text!r}: empty element")
        lo_s, dash, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise UsageError(f"bad CPU list {text!r}: {part!r} is not a number") from None
        if lo < 1:
            raise UsageError(f"bad CPU list {text!r}: CPU counts start at 1")
        if hi > MAX_CPUS:
            raise UsageError(f"bad CPU list {text!r}: more than {MAX_CPUS} CPUs")
        if lo > hi:
            raise UsageError(f"bad CPU list {text!r}: range {part} is backwards")
        out.update(range(lo, hi + 1))
    return sorted(out)
