"""MVA against a simpy simulation of the same closed network, 1–64 CPUs."""

from __future__ import annotations

import pytest

from ptesim.cost.contention import ClosedNetwork, fluid_bound, mva, simulate
from ptesim.errors import UsageError

CPUS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def _agree(net: ClosedNetwork, tol: float) -> None:
    for n in CPUS:
        m = mva(net, n).throughput_per_ns
        s = simulate(net, n, visits_per_worker=max(400, 30000 // n), seed=n).throughput_per_ns
        assert abs(m / s - 1) <= tol, (n, m, s)


def test_exact_mva_matches_simulation_for_exponential_service() -> None:
    _agree(ClosedNetwork(think_ns=1000.0, demand_ns=90.0, visits=1, scv=1.0), 0.02)


@pytest.mark.parametrize("scv", [0.5, 2.0])
def test_residual_mva_matches_simulation_for_general_service(scv: float) -> None:
    _agree(ClosedNetwork(think_ns=1000.0, demand_ns=90.0, visits=1, scv=scv), 0.05)


def test_sync_waiting_for_active_cpus_matches_simulation() -> None:
    _agree(ClosedNetwork(think_ns=1000.0, demand_ns=40.0, visits=1, scv=1.0, sync_per_active_cpu_ns=2.0), 0.02)


def test_mva_limits() -> None:
    net = ClosedNetwork(think_ns=1000.0, demand_ns=100.0, visits=4, scv=0.3)
    assert mva(net, 1).cycle_ns == pytest.approx(1100.0)
    for n in CPUS:
        assert mva(net, n).throughput_per_ns <= fluid_bound(net, n) * (1 + 1e-9)
    assert mva(net, 200).throughput_per_ns == pytest.approx(1 / 100.0, rel=1e-3)


def test_bad_network_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        ClosedNetwork(think_ns=-1.0, demand_ns=1.0, visits=1)
    with pytest.raises(UsageError):
        mva(ClosedNetwork(think_ns=1.0, demand_ns=1.0, visits=1), 0)
