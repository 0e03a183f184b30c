"""The v6.19 write-fault reuse path flushes locally (Huang Ying, cb1fa2e99955 'arm64, tlbflush: don't
TLBI broadcast if page reused in write fault', LKML 20251104095516.7912-3)."""

from __future__ import annotations

from collections import Counter

from ptesim.kernel.config import preset
from ptesim.kernel.core import Kernel

KiB = 1024


def reuse_write(preset_name: str) -> Counter[str]:
    """Parent forks, the child exits, then the parent writes one page of its (now exclusively
    mapped, read-only) 64K folio: do_wp_page reuses the folio in place."""
    cfg = preset(preset_name).replace(wp_reuse_large=True)
    k = Kernel("arm64", cfg, checks=True, cpu_features=frozenset({"bbml2"}))
    k.set_folio_size(64 * KiB)
    p = k.spawn(0)
    a = p.mmap(64 * KiB)
    p.populate(a, 64 * KiB)
    p.fork(1).exit()
    k.sink.reset()
    p.write(a + 4096, 7)
    assert p.read(a + 4096) == 7
    return k.sink.totals()


def test_reuse_flushes_the_page_locally() -> None:
    """With local_wp_flush the reused page's stale read-only entry is dropped from this CPU only
    (DSB NSHST; TLBI VALE1; DSB NSH); without it the same flush is broadcast."""
    local = reuse_write("v6.19")
    assert local["tlbi_page_local"] == 1
    assert local["tlbi_page_bcast"] == 0  # BBML2: the unfold itself needs no flush either
    assert local["dsb_nshst"] == 1 and local["dsb_nsh"] == 1
    bcast = reuse_write("v6.17")
    assert bcast["tlbi_page_local"] == 0
    assert bcast["tlbi_page_bcast"] >= 1
