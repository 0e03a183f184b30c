"""Random programs with every invariant checked after each step, and the regressions they found."""

from __future__ import annotations

from ptesim.kernel.check import validate_all
from ptesim.kernel.core import Kernel

KiB = 1024


# ---- regressions found by the fuzzer ------------------------------------------------------------


def test_last_munmap_of_shared_memory_frees_its_page_cache() -> None:
    """Unmapping the last mapping of a shared anonymous object evicts its page cache: no folio
    is left holding a reference nobody owns."""
    k = Kernel("x86", "v6.9", checks=True)
    t = k.spawn(0)
    a = t.mmap(64 * KiB, shared=True)
    t.write(a, 5)
    c = t.fork(1)
    t.munmap(a, 64 * KiB)  # the child still maps it: the page stays
    assert c.read(a) == 5
    c.exit()  # the last user: the page cache is dropped
    validate_all(k)
    assert k.pages.allocated == 0
