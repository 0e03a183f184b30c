"""The contention model: exact MVA, the finite-source solution for gamma service, and a simpy
simulation of the same system (same distributions, same per-active-CPU stretch), 1-64 CPUs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ptesim.cost.contention as ct
from ptesim.cost.contention import ClosedNetwork, finite_source, fluid_bound, mva, simulate, solve
from ptesim.errors import UsageError

CPUS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)

#: The seed's mechanism at the scale of the calibrated altra profile (per visit: think ~1.4 us,
#: lone DVM time ~19 ns, +9 ns per other busy CPU up to 16 of them, scv ~4).
SEED_LIKE = dict(think_ns=1400.0, demand_ns=19.0, visits=1, sync_per_active_cpu_ns=9.0, active_cpu_cap=16)


def _agree(net: ClosedNetwork, tol: float, visits: int = 60000) -> None:
    for n in CPUS:
        exact = solve(net, n).throughput_per_ns
        sim = simulate(net, n, visits_per_worker=max(800, visits // n), seed=n).throughput_per_ns
        assert abs(exact / sim - 1) <= tol, (n, exact, sim)


def test_exponential_service_with_stretch_matches_simulation_within_2pct() -> None:
    """Exponential service (MVA exact), sync stretched by busy CPUs up to the cap: within 2%."""
    _agree(ClosedNetwork(scv=1.0, **SEED_LIKE), 0.02)


@pytest.mark.parametrize("scv", [0.5, 4.0])
def test_gamma_service_with_stretch_matches_simulation_within_5pct(scv: float) -> None:
    """Gamma service (finite-source solution), same stretch: within 5% from 1 to 64 CPUs."""
    _agree(ClosedNetwork(scv=scv, **SEED_LIKE), 0.05, visits=25000)


@pytest.mark.parametrize("scv", [0.0, 0.5, 1.0, 2.0, 4.0, 20.0])
def test_finite_source_reduces_to_mva_for_exponential_and_is_ordered_in_scv(scv: float) -> None:
    """At scv=1 the finite-source solution is exact MVA; more variability never helps throughput."""
    base = ClosedNetwork(think_ns=1000.0, demand_ns=90.0, visits=3, scv=1.0)
    net = ClosedNetwork(think_ns=1000.0, demand_ns=90.0, visits=3, scv=scv)
    for n in CPUS:
        e, m = finite_source(net, n).throughput_per_ns, mva(base, n).throughput_per_ns
        if scv == 1.0:
            assert e == pytest.approx(m, rel=1e-9)
        elif scv > 1.0:
            assert e <= m * (1 + 1e-9)
        else:
            assert e >= m * (1 - 1e-9)
        assert e <= fluid_bound(net, n) * (1 + 1e-9)


def test_quadrature_is_converged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gamma average over 64 nodes equals the one over 256 nodes to 1e-6."""
    net = ClosedNetwork(scv=4.0, **SEED_LIKE)
    coarse = [finite_source(net, n).throughput_per_ns for n in CPUS]
    monkeypatch.setattr(ct, "QUAD_NODES", 256)
    ct._gamma_rule.cache_clear()
    fine = [finite_source(net, n).throughput_per_ns for n in CPUS]
    ct._gamma_rule.cache_clear()
    np.testing.assert_allclose(coarse, fine, rtol=1e-6)


def test_limits_and_stretch() -> None:
    """One CPU: cycle = Z + D(1); many CPUs: throughput -> 1/D(N); the stretch stops at the cap."""
    net = ClosedNetwork(think_ns=1000.0, demand_ns=100.0, visits=4, scv=0.3, sync_per_active_cpu_ns=2.0)
    assert finite_source(net, 1).cycle_ns == pytest.approx(1100.0)
    capped = ClosedNetwork(
        think_ns=1000.0, demand_ns=100.0, visits=4, sync_per_active_cpu_ns=2.0, active_cpu_cap=16
    )
    assert capped.demand_at(1) == 100.0
    assert capped.demand_at(9) == pytest.approx(100.0 + 4 * 2.0 * 8)
    assert capped.demand_at(17) == capped.demand_at(64) == pytest.approx(100.0 + 4 * 2.0 * 16)
    big = solve(capped, 200)
    assert big.throughput_per_ns == pytest.approx(1 / capped.demand_at(200), rel=1e-3)
    assert big.stretch_ns == pytest.approx(4 * 2.0 * 16)
    assert big.waiting_ns > 0
    assert solve(ClosedNetwork(think_ns=50.0, demand_ns=0.0, visits=0), 8).cycle_ns == 50.0
    assert math.isinf(ClosedNetwork(think_ns=1.0, demand_ns=1.0, visits=1).active_cpu_cap)


def test_bad_network_is_a_usage_error() -> None:
    """Negative or non-finite inputs, a demand without visits and CPU counts below 1 are refused."""
    with pytest.raises(UsageError):
        ClosedNetwork(think_ns=-1.0, demand_ns=1.0, visits=1)
    with pytest.raises(UsageError):
        ClosedNetwork(think_ns=1.0, demand_ns=math.nan, visits=1)
    with pytest.raises(UsageError):
        ClosedNetwork(think_ns=1.0, demand_ns=1.0, visits=0)
    with pytest.raises(UsageError):
        ClosedNetwork(think_ns=1.0, demand_ns=1.0, visits=1, scv=1000.0)
    with pytest.raises(UsageError):
        mva(ClosedNetwork(think_ns=1.0, demand_ns=1.0, visits=1), 0)
    with pytest.raises(UsageError):
        simulate(ClosedNetwork(think_ns=1.0, demand_ns=0.0, visits=0), 2)


@pytest.mark.parametrize("think_ns", [0.25, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("cpus", [1, 4])
def test_no_shared_demand_means_no_contention(think_ns: float, cpus: int) -> None:
    """Without demand at the shared resource every worker only thinks: cpus / think iterations
    per ns, whatever the time unit makes of the think time (a think time below 1 is still a time)."""
    for solver in (mva, solve):
        s = solver(ClosedNetwork(think_ns=think_ns, demand_ns=0.0, visits=0), cpus)
        assert s.throughput_per_ns == pytest.approx(cpus / think_ns)
        assert s.cycle_ns == pytest.approx(think_ns)
        assert s.waiting_ns == 0.0 and s.queue == 0.0


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_workers_that_never_think_queue_behind_each_other(cpus: int) -> None:
    """Zero think time: every worker is always at the resource, which is always busy; one
    iteration completes per service demand, and each worker waits for the other cpus - 1 visits
    (a lone CPU waits for nothing)."""
    d = 7.0
    s = mva(ClosedNetwork(think_ns=0.0, demand_ns=d, visits=1), cpus)
    assert s.throughput_per_ns == pytest.approx(1 / d)
    assert s.service_ns == pytest.approx(d) and s.lone_service_ns == pytest.approx(d)
    assert s.waiting_ns == pytest.approx((cpus - 1) * d)
    assert s.utilization == 1.0 and s.queue == cpus


@pytest.mark.parametrize("visits", [1, 4])
def test_simulation_splits_the_demand_over_the_visits(visits: int) -> None:
    """``demand_ns`` is per iteration, spread over ``visits`` visits (as is ``think_ns``): the
    simulated throughput of 4 CPUs agrees with exact MVA for one visit or several."""
    net = ClosedNetwork(think_ns=300.0, demand_ns=60.0, visits=visits)
    exact = mva(net, 4).throughput_per_ns
    sim = simulate(net, 4, visits_per_worker=1500, seed=1).throughput_per_ns
    assert sim == pytest.approx(exact, rel=0.06)


def test_network_limits_are_inclusive_and_named() -> None:
    """ClosedNetwork: the supported variability MAX_SCV itself is accepted (only beyond it is
    refused), and a shared demand without a visit is refused with a message that says so."""
    ClosedNetwork(think_ns=100.0, demand_ns=10.0, visits=1, scv=ct.MAX_SCV)
    with pytest.raises(UsageError, match="beyond"):
        ClosedNetwork(think_ns=100.0, demand_ns=10.0, visits=1, scv=ct.MAX_SCV * 1.01)
    with pytest.raises(UsageError, match="visit"):
        ClosedNetwork(think_ns=100.0, demand_ns=10.0, visits=0)


def test_no_shared_demand_leaves_the_resource_idle() -> None:
    """Without shared demand nobody visits the resource: no utilisation, no queue, no waiting,
    at any CPU count."""
    net = ClosedNetwork(think_ns=250.0, demand_ns=0.0, visits=0)
    for n in (1, 8):
        s = solve(net, n)
        assert (s.utilization, s.queue, s.waiting_ns) == (0.0, 0.0, 0.0)
