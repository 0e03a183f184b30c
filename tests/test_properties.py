"""Properties of the cost model's units and limits, and of PTI's count doubling, over random
inputs (hypothesis): a unit slip (1e6 for 1e9), queueing for a lone CPU, or a PTI twin counted
once breaks one of them whatever the workload."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptesim.cost.model import Work, iteration_time, local_by_category, shared_demand
from ptesim.cost.profile import load_profile, shipped_profiles
from ptesim.mutants import pti_doubles_local_flushes
from ptesim.workloads.scenarios import SCENARIOS

PROFILES = {name: load_profile(name) for name in shipped_profiles()}
PRIMS = sorted(next(iter(PROFILES.values())).local_ns)

works = st.builds(
    Work,
    counts=st.dictionaries(st.sampled_from(PRIMS), st.integers(0, 10**6).map(float), max_size=len(PRIMS)),
    # at least one fork: some primitives cost nothing in some profiles (altra's dsb_ish), and an
    # iteration of zero time has no rate
    forks=st.integers(1, 4).map(float),
    exits=st.integers(0, 4).map(float),
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(work=works, profile=st.sampled_from(sorted(PROFILES)), cpus=st.integers(1, 64))
def test_iterations_per_second_times_iteration_time_is_one(work: Work, profile: str, cpus: int) -> None:
    """Per worker, iterations/s × seconds per iteration = 1; summed over the workers it is the CPU
    count; the categories add up to the iteration time."""
    t = iteration_time(work, PROFILES[profile], cpus)
    assert t.cycle_ns > 0
    assert math.isclose(t.per_worker_iterations_per_s * t.cycle_ns * 1e-9, 1.0, rel_tol=1e-9)
    assert math.isclose(t.iterations_per_s * t.cycle_ns * 1e-9, cpus, rel_tol=1e-6)
    assert math.isclose(sum(t.by_category.values()), t.cycle_ns, rel_tol=1e-9)


@FAST
@given(work=works, profile=st.sampled_from(sorted(PROFILES)))
def test_a_lone_cpu_sees_no_queueing(work: Work, profile: str) -> None:
    """With one CPU nobody else visits the shared resource: no waiting, no stretch, no queueing
    share, and the iteration is exactly its local time plus its lone service demand."""
    prof = PROFILES[profile]
    t = iteration_time(work, prof, 1)
    assert t.waiting_ns <= 1e-9 * t.cycle_ns
    assert t.stretch_ns == 0
    assert abs(t.by_category["queueing"]) <= 1e-9 * t.cycle_ns
    lone = sum(local_by_category(work, prof).values()) + shared_demand(work, prof)[0]
    assert math.isclose(t.cycle_ns, lone, rel_tol=1e-9)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenario=st.sampled_from(sorted(SCENARIOS)),
    folio=st.sampled_from([4 << 10, 16 << 10, 64 << 10]),
    blocks=st.integers(1, 8),
)
def test_pti_doubles_exactly_the_local_flushes(scenario: str, folio: int, blocks: int) -> None:
    """x86 with PTI: every local invalidation has its user-PCID twin, and nothing else changes."""
    assert pti_doubles_local_flushes(scenario, folio, blocks * (64 << 10)) is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([1, 2]),  # asid
            st.integers(0, 127),  # vpn
            st.sampled_from([1, 16, 512]),  # span: a page, a contiguous block, a PMD block
            st.integers(0, 1 << 20),  # pfn
        ),
        max_size=40,
    )
)
def test_tlb_translations_answer_as_lookup_does(inserts: list[tuple[int, int, int, int]]) -> None:
    """Tlb.translations(asid) (what the views check reads) gives, for every page, the PFN that
    lookup() finds, including where entries of two spans overlap; and nothing lookup misses."""
    from ptesim.hw.tlb import Tlb

    tlb = Tlb(capacity=16)  # small: eviction happens too
    for asid, vpn, span, pfn in inserts:
        tlb.insert(asid, vpn, span, pfn, writable=False)
    for asid in (1, 2):
        got = tlb.translations(asid)
        for vpn in range(0, 1024):
            hit = tlb.lookup(asid, vpn)
            want = None if hit is None else hit[1].pfn + (vpn - hit[0][1])
            assert got.get(vpn) == want, (asid, vpn)
