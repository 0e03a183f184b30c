"""x86 INVLPGB broadcast invalidation (Rik van Riel, v6.15, arch/x86/mm/tlb.c): the policy of
flush_tlb_mm_range / consider_global_asid / broadcast_tlb_flush, with TLB coherence checked."""

from __future__ import annotations

from collections import Counter

from ptesim.events import with_aggregates
from ptesim.kernel.core import Kernel, Task
from ptesim.workloads.scenarios import ModelSpec, run_scenario

KiB = 1024
MiB = 1 << 20
INVLPGB = frozenset({"invlpgb"})


def totals(k: Kernel) -> Counter[str]:
    return Counter(with_aggregates(k.sink.totals()))


def threaded(preset: str, threads: int, features: frozenset[str] = INVLPGB) -> tuple[Kernel, Task, int]:
    k = Kernel("x86", preset, ncpus=8, checks=True, cpu_features=features)
    k.set_folio_size(64 * KiB)
    t = k.spawn(0)
    a = t.mmap(MiB)
    t.populate(a, MiB)
    for cpu in range(1, threads):
        t.thread(cpu)
    k.sink.reset()
    return k, t, a


def flush_one_page(k: Kernel, t: Task, a: int) -> Counter[str]:
    k.sink.reset()
    t.mprotect(a, 4 * KiB, "r")
    return totals(k)


def test_single_threaded_process_never_broadcasts() -> None:
    """Only an mm active on more than 3 CPUs gets a global ASID: a lone process flushes locally."""
    spec = ModelSpec(arch="x86", preset="v6.17", folio=64 * KiB, mem=MiB, cpu_features=INVLPGB, checks=True)
    plain = ModelSpec(arch="x86", preset="v6.17", folio=64 * KiB, mem=MiB, checks=True)
    for scenario in ("munmap", "mprotect", "fork-first"):
        c = Counter(with_aggregates(run_scenario(spec, scenario).sink.totals()))
        assert c["invlpgb"] == c["invlpgb_pcid"] == c["tlbsync"] == 0
        assert c == Counter(with_aggregates(run_scenario(plain, scenario).sink.totals()))


def test_global_asid_after_a_remote_flush_on_four_cpus() -> None:
    """The first remote flush still IPIs (and hands out the global ASID); the next is a broadcast
    that also IPIs the CPUs still on their old ASID (finish_asid_transition); then broadcasts only."""
    k, t, a = threaded("v6.17", 4)
    first = flush_one_page(k, t, a)
    assert first["ipi"] == 3 and first["invlpgb"] == 0
    assert t.mm.global_asid
    second = flush_one_page(k, t, a + 4 * KiB)
    assert second["invlpgb"] == 1 and second["tlbsync"] == 1 and second["ipi"] == 3
    third = flush_one_page(k, t, a + 8 * KiB)
    assert third["invlpgb"] == 1 and third["tlbsync"] == 1 and third["ipi"] == 0
    assert third["tlbi_page_local"] == 0  # INVLPGB reaches the local TLB too


def test_three_cpus_keep_ipis() -> None:
    """mm_active_cpus_exceeds(mm, 3): three CPUs are not enough."""
    k, t, a = threaded("v6.17", 3)
    for i in range(3):
        c = flush_one_page(k, t, a + i * 4 * KiB)
        assert c["ipi"] == 2 and c["invlpgb"] == 0
    assert not t.mm.global_asid


def test_ranges_are_split_at_invlpgb_count_max_and_large_ones_flush_the_pcid() -> None:
    """Up to tlb_single_page_flush_ceiling (33) pages: ceil(pages / invlpgb_count_max) INVLPGBs;
    beyond it get_flush_tlb_info makes it a full flush: one INVLPGB of the whole PCID."""
    k, t, a = threaded("v6.17", 4)
    flush_one_page(k, t, a)
    flush_one_page(k, t, a + 4 * KiB)
    k.sink.reset()
    t.munmap(a + 64 * KiB, 64 * KiB)  # 16 pages
    c = totals(k)
    count_max = k.arch.INVLPGB_COUNT_MAX  # type: ignore[attr-defined]
    assert c["invlpgb"] == -(-16 // count_max) and c["tlbsync"] == 1 and c["ipi"] == 0
    k.sink.reset()
    t.munmap(a + 512 * KiB, 512 * KiB)  # 128 pages > 33
    c = totals(k)
    assert c["invlpgb_pcid"] == 1 and c["invlpgb"] == 0 and c["tlbsync"] == 1


def test_kernels_before_v6_15_ignore_the_feature() -> None:
    k, t, a = threaded("v6.9", 4)
    for i in range(3):
        c = flush_one_page(k, t, a + i * 4 * KiB)
        assert c["ipi"] == 3 and c["invlpgb"] == 0


def test_pti_doubles_every_invlpgb() -> None:
    k, t, a = threaded("v6.17", 4, INVLPGB | {"pti"})
    flush_one_page(k, t, a)
    flush_one_page(k, t, a + 4 * KiB)
    c = flush_one_page(k, t, a + 8 * KiB)
    assert c["invlpgb"] == 2 and c["tlbsync"] == 1


def test_threaded_scenarios_reach_the_steady_state() -> None:
    base = dict(arch="x86", preset="v6.17", folio=64 * KiB, mem=MiB, checks=True)
    ipi = Counter(with_aggregates(run_scenario(ModelSpec(**base), "munmap-threads").sink.totals()))  # type: ignore[arg-type]
    bc = Counter(
        with_aggregates(run_scenario(ModelSpec(**base, cpu_features=INVLPGB), "munmap-threads").sink.totals())  # type: ignore[arg-type]
    )
    assert ipi["ipi"] == 3 and ipi["invlpgb_pcid"] == 0
    assert bc["ipi"] == 0 and bc["invlpgb_pcid"] == 1 and bc["tlbsync"] == 1
