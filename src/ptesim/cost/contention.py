"""Contention for the shared broadcast-invalidation resource, as a closed queueing network.

N will-it-scale workers run the same loop.  Each iteration a worker spends ``think_ns`` of CPU-local
time (PTE accesses, atomics, TLBI *issue*, process costs) and makes ``visits`` visits to one shared
resource, occupying it for ``demand_ns`` in total:

* arm64: the DVM path of the interconnect.  Every ``TLBI …IS`` is a DVM message that every PE must
  act on, and the ``DSB ISH`` that follows (``arch/arm64/include/asm/tlbflush.h``,
  ``__flush_tlb_range``) waits until all of them have completed everywhere.  One visit = the TLBIs of
  one ``__flush_tlb_range``/``flush_tlb_mm`` plus its ``DSB ISH``.
* x86: IPI delivery and the remote ``flush_tlb_func`` (``arch/x86/mm/tlb.c : flush_tlb_multi``).
* riscv: the SBI remote fence or IPI path (``arch/riscv/mm/tlbflush.c : __flush_tlb_range``).

The network is a delay station (think) plus one FCFS station (the resource).  Solved by mean value
analysis (MVA):

* **exact MVA** when the service time is exponential (``scv == 1``): the network is product-form.
* **approximate MVA with residual-time correction** otherwise: an arriving visit waits for the full
  service of every queued visit but only the *residual* of the one in service, whose mean is
  ``s (1 + scv) / 2`` instead of ``s`` (Reiser's correction for FCFS stations with general service).
  Low variability (a train of identical TLBIs) sharpens the knee; exponential MVA is too smooth.
* **a completion wait that waits for every active CPU**: the ``DSB ISH`` (IPI ack wait) completes only
  after every *active* CPU has answered, so each visit occupies the resource for an extra
  ``sync_per_active_cpu_ns`` per other active CPU.  With N workers running the service demand is
  ``demand_ns + visits * sync_per_active_cpu_ns * (N - 1)``.

:func:`simulate` is a simpy discrete-event model of the same system with the same distributions, used
to check the MVA (tests require agreement within 2% for exponential service, 5% otherwise, 1–64 CPUs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ptesim.errors import UsageError


@dataclass(frozen=True)
class ClosedNetwork:
    """One worker's loop: CPU-local think time and visits to the shared resource, per iteration."""

    think_ns: float
    demand_ns: float
    visits: float
    scv: float = 1.0
    sync_per_active_cpu_ns: float = 0.0

    def __post_init__(self) -> None:
        for name in ("think_ns", "demand_ns", "visits", "scv", "sync_per_active_cpu_ns"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UsageError(f"closed network: {name} must be a finite non-negative number (got {v})")
        if self.demand_ns > 0 and self.visits <= 0:
            raise UsageError("closed network: a shared demand needs at least one visit per iteration")

    def demand_at(self, active: int) -> float:
        """Service demand per iteration at the shared resource with ``active`` CPUs running workers."""
        return self.demand_ns + self.visits * self.sync_per_active_cpu_ns * max(active - 1, 0)


@dataclass(frozen=True)
class MvaResult:
    cpus: int
    throughput_per_ns: float  # iterations per ns, summed over all workers
    cycle_ns: float  # one worker's iteration time
    response_ns: float  # time per iteration at the shared resource (queueing + service)
    service_ns: float  # service demand per iteration at this population
    utilization: float
    queue: float

    @property
    def queueing_ns(self) -> float:
        """Time per iteration spent waiting for the shared resource (not in service)."""
        return self.response_ns - self.service_ns

    @property
    def iterations_per_s(self) -> float:
        return self.throughput_per_ns * 1e9


def mva(net: ClosedNetwork, cpus: int) -> MvaResult:
    """Mean value analysis of ``cpus`` identical workers.

    Exact for ``scv == 1`` (and for a single worker); the residual-time approximation otherwise."""
    if cpus < 1:
        raise UsageError(f"CPU count must be at least 1 (got {cpus})")
    d = net.demand_at(cpus)
    z = net.think_ns
    if d == 0.0:
        return MvaResult(cpus, cpus / z if z > 0 else math.inf, z, 0.0, 0.0, 0.0, 0.0)
    q = 0.0
    u = 0.0
    x = 0.0
    r = d
    for n in range(1, cpus + 1):
        # an arrival sees the station as it is with n-1 customers (arrival theorem)
        r = d * (1.0 + q - u) + u * d * (1.0 + net.scv) / 2.0
        x = n / (r + z)
        if x * d > 1.0:  # the residual approximation must not exceed the capacity bound
            x = 1.0 / d
            r = n / x - z
        q = x * r
        u = min(x * d, 1.0)
    return MvaResult(
        cpus=cpus,
        throughput_per_ns=x,
        cycle_ns=cpus / x,
        response_ns=r,
        service_ns=d,
        utilization=min(x * d, 1.0),
        queue=q,
    )


def fluid_bound(net: ClosedNetwork, cpus: int) -> float:
    """Asymptotic upper bound on throughput (iterations per ns): min(N / (Z + D), 1 / D)."""
    d = net.demand_at(cpus)
    bound = cpus / (net.think_ns + d)
    return min(bound, 1.0 / d) if d > 0 else bound


# -- discrete-event cross-check -----------------------------------------------------------------


def _sampler(mean: float, scv: float, rng: random.Random) -> tuple[str, float, float]:
    """(kind, a, b) for a distribution with the given mean and squared coefficient of variation."""
    if mean <= 0:
        return ("det", 0.0, 0.0)
    if scv == 0:
        return ("det", mean, 0.0)
    if scv == 1:
        return ("exp", mean, 0.0)
    k = 1.0 / scv  # gamma shape
    return ("gamma", k, mean / k)


def _draw(spec: tuple[str, float, float], rng: random.Random) -> float:
    kind, a, b = spec
    if kind == "det":
        return a
    if kind == "exp":
        return rng.expovariate(1.0 / a)
    return rng.gammavariate(a, b)


@dataclass(frozen=True)
class SimResult:
    cpus: int
    throughput_per_ns: float
    cycle_ns: float
    visits_completed: int


def simulate(
    net: ClosedNetwork,
    cpus: int,
    *,
    visits_per_worker: int = 4000,
    think_scv: float = 1.0,
    seed: int = 1,
) -> SimResult:
    """Simulate the same closed network with simpy: ``cpus`` workers, each alternating a think period
    (mean ``think_ns / visits``, squared coefficient of variation ``think_scv``) and one FCFS visit to
    the shared resource (mean ``demand_at(cpus) / visits``, scv ``net.scv``).  Simulated time is
    bounded by the number of visits each worker makes; the first 10% is discarded as warm-up."""
    import simpy  # local import: only the cross-check needs it

    if cpus < 1:
        raise UsageError(f"CPU count must be at least 1 (got {cpus})")
    if net.visits <= 0:
        raise UsageError("simulate: the network has no visits to the shared resource")
    rng = random.Random(seed)
    think = _sampler(net.think_ns / net.visits, think_scv, rng)
    service = _sampler(net.demand_at(cpus) / net.visits, net.scv, rng)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    total = visits_per_worker * cpus
    warm = total // 10
    state = {"done": 0, "t_warm": 0.0, "t_end": 0.0}

    def worker(env: simpy.Environment) -> Generator[Any, Any, None]:
        # desynchronise the start
        yield env.timeout(rng.random() * (think[1] if think[0] != "gamma" else think[1] * think[2]))
        while state["done"] < total:
            yield env.timeout(_draw(think, rng))
            with server.request() as req:
                yield req
                yield env.timeout(_draw(service, rng))
            state["done"] += 1
            if state["done"] == warm:
                state["t_warm"] = env.now
            if state["done"] == total:
                state["t_end"] = env.now

    for _ in range(cpus):
        env.process(worker(env))
    env.run()
    elapsed = state["t_end"] - state["t_warm"]
    visits_rate = (total - warm) / elapsed
    x = visits_rate / net.visits
    return SimResult(cpus=cpus, throughput_per_ns=x, cycle_ns=cpus / x, visits_completed=total)
