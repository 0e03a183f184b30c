"""Contention for the shared broadcast-invalidation resource, as a closed queueing network.

N will-it-scale workers run the same loop.  Per iteration a worker spends ``think_ns`` of CPU-local
time (PTE accesses, atomics, TLBI *issue*, process costs) and makes ``visits`` visits to one shared
resource, each visit ending in a completion wait:

* arm64: the DVM path of the interconnect.  Every ``TLBI …IS`` is a DVM message that every PE must
  act on; the ``DSB ISH`` that follows (``arch/arm64/include/asm/tlbflush.h : __flush_tlb_range``)
  becomes a DVM Sync, which completes only when every PE has acknowledged that the preceding
  invalidations are done.  A requester may have one DVM Sync outstanding, and the interconnect's DVM
  node handles them one at a time, so the syncs of different CPUs queue (FCFS).  One visit = the TLBIs
  of one ``__flush_tlb_range``/``flush_tlb_mm`` plus its ``DSB ISH``.
* x86: IPI delivery and the remote ``flush_tlb_func`` (``arch/x86/mm/tlb.c : flush_tlb_multi``).
* riscv: the SBI remote fence or IPI path (``arch/riscv/mm/tlbflush.c : __flush_tlb_range``).

The network is a delay station (the CPU-local work, one per worker) and one FCFS station (the
resource).  Three physical properties of the resource are modelled:

1. **The sync stretches with the number of busy CPUs.**  An idle PE acknowledges a DVM Sync at once;
   a PE running a worker first has to drain the memory accesses it has in flight that could use the
   invalidated translations.  So each visit occupies the resource for its lone service time plus
   ``sync_per_active_cpu_ns`` for every *other* CPU running a worker, counted up to
   ``active_cpu_cap`` (``k``): beyond ``k`` acknowledgements the stretch stops growing (the
   acknowledgements are collected concurrently).  With N workers the demand per iteration is
   ``D(N) = demand_ns + visits * sync_per_active_cpu_ns * min(N - 1, k)`` -- it depends on the
   population, not on the queue, so every population is a separate network with constant demand.
2. **Service-time variability.**  How long one sync waits for the slowest acknowledgement depends on
   what the busy PEs are doing at that moment, so one visit's service time is gamma distributed with
   squared coefficient of variation ``scv`` (``scv = 1``: exponential; ``0``: deterministic).
3. **Queueing** behind the syncs of other CPUs (FCFS).

Solution methods, both exact for the model as stated:

* :func:`mva` -- exact mean value analysis; valid when service is exponential (``scv == 1``), where
  the network is product-form.
* :func:`finite_source` -- the machine-repairman (M/G/1//N) model for any gamma ``scv``: the number at
  the station just after each departure is a Markov chain; during one service each of the ``m`` CPUs
  still working arrives with probability ``1 - exp(-t / z)`` (exponential per-visit think time ``z``),
  averaged over the gamma service density by generalised Gauss-Laguerre quadrature.  For ``scv == 1``
  it reproduces :func:`mva` to rounding.

:func:`solve` picks the right one.  :func:`simulate` is a simpy discrete-event model of the same
system -- exponential think time per visit, gamma service with the same mean (including the
per-active-CPU stretch) and ``scv`` -- used by the tests to check the analysis: agreement within 2% for
exponential service and 5% otherwise, 1-64 CPUs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ptesim.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

#: Quadrature nodes for the gamma service density (checked against 4x as many in the tests).
QUAD_NODES = 64
#: Largest squared coefficient of variation accepted (gamma shape 0.01).
MAX_SCV = 100.0


@dataclass(frozen=True)
class ClosedNetwork:
    """One worker's loop: CPU-local think time and visits to the shared resource, per iteration."""

    think_ns: float
    demand_ns: float
    visits: float
    scv: float = 1.0
    sync_per_active_cpu_ns: float = 0.0
    active_cpu_cap: float = math.inf

    def __post_init__(self) -> None:
        for name in ("think_ns", "demand_ns", "visits", "scv", "sync_per_active_cpu_ns"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise UsageError(f"closed network: {name} must be a finite non-negative number (got {v})")
        if not self.active_cpu_cap >= 0:
            raise UsageError(
                f"closed network: active_cpu_cap must be non-negative (got {self.active_cpu_cap})"
            )
        if self.scv > MAX_SCV:
            raise UsageError(f"closed network: scv {self.scv} is beyond the supported {MAX_SCV:g}")
        if self.demand_ns > 0 and self.visits <= 0:
            raise UsageError("closed network: a shared demand needs at least one visit per iteration")

    def stretch_at(self, active: int) -> float:
        """Extra demand per iteration from the other ``active - 1`` busy CPUs (up to the cap)."""
        return self.visits * self.sync_per_active_cpu_ns * min(max(active - 1, 0), self.active_cpu_cap)

    def demand_at(self, active: int) -> float:
        """Service demand per iteration at the shared resource with ``active`` CPUs running workers."""
        return self.demand_ns + self.stretch_at(active)


@dataclass(frozen=True)
class Solution:
    """Steady state of the network with ``cpus`` workers (per-iteration quantities per worker)."""

    cpus: int
    throughput_per_ns: float  # iterations per ns, summed over all workers
    cycle_ns: float  # one worker's iteration time
    response_ns: float  # time per iteration at the shared resource (waiting + service)
    service_ns: float  # service demand per iteration at this population, D(N)
    lone_service_ns: float  # service demand per iteration of a lone worker, D(1)
    utilization: float
    queue: float  # mean number of workers at the shared resource
    method: str  # "mva" | "finite-source" | "none"

    @property
    def waiting_ns(self) -> float:
        """Time per iteration spent waiting behind other CPUs' visits (not in service)."""
        return max(self.response_ns - self.service_ns, 0.0)

    @property
    def stretch_ns(self) -> float:
        """Service time per iteration added by the other busy CPUs (``D(N) - D(1)``)."""
        return self.service_ns - self.lone_service_ns

    @property
    def iterations_per_s(self) -> float:
        return self.throughput_per_ns * 1e9


def _check_cpus(cpus: int) -> None:
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise UsageError(f"CPU count must be a positive integer (got {cpus!r})")


def _trivial(net: ClosedNetwork, cpus: int) -> Solution | None:
    d = net.demand_at(cpus)
    z = net.think_ns
    if d == 0.0:
        x = cpus / z if z > 0 else math.inf
        return Solution(cpus, x, z, 0.0, 0.0, 0.0, 0.0, 0.0, "none")
    if z == 0.0:  # every worker always at the resource
        x = 1.0 / d
        return Solution(cpus, x, cpus / x, cpus / x, d, net.demand_at(1), 1.0, float(cpus), "none")
    return None


def mva(net: ClosedNetwork, cpus: int) -> Solution:
    """Exact mean value analysis of ``cpus`` identical workers with exponential service.

    The arrival theorem: a visit arriving with ``n`` workers in the network finds the station as it
    is with ``n - 1``, so ``R(n) = D (1 + Q(n-1))``, ``X(n) = n / (Z + R(n))``, ``Q(n) = X(n) R(n)``.
    ``scv`` is ignored here (see :func:`finite_source`)."""
    _check_cpus(cpus)
    triv = _trivial(net, cpus)
    if triv is not None:
        return triv
    d = net.demand_at(cpus)
    z = net.think_ns
    q = 0.0
    x = 0.0
    r = d
    for n in range(1, cpus + 1):
        r = d * (1.0 + q)
        x = n / (r + z)
        q = x * r
    return Solution(cpus, x, cpus / x, r, d, net.demand_at(1), min(x * d, 1.0), q, "mva")


@lru_cache(maxsize=64)
def _gamma_rule(scv: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (in units of the mean) and weights of a gamma(mean 1, ``scv``) expectation."""
    import numpy as np
    from scipy.special import gammaln, roots_genlaguerre

    if scv == 0.0:
        return np.array([1.0]), np.array([1.0])
    shape = 1.0 / scv
    x, w = roots_genlaguerre(QUAD_NODES, shape - 1.0)
    return np.asarray(x) * scv, np.asarray(w) / math.exp(float(gammaln(shape)))


@lru_cache(maxsize=256)
def _log_binom(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``log C(m, k)`` for 0 <= k <= m < n (``-inf`` above the diagonal), and the m, k grids."""
    import numpy as np
    from scipy.special import gammaln

    m = np.arange(n)[:, None].astype(float)
    k = np.arange(n)[None, :].astype(float)
    with np.errstate(invalid="ignore"):
        lc = gammaln(m + 1) - gammaln(k + 1) - gammaln(np.maximum(m - k, 0) + 1)
    lc = np.where(k <= m, lc, -np.inf)
    return lc, m, k


@lru_cache(maxsize=256)
def _binom_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``C(m, k)`` for 0 <= k <= m < n (0 above the diagonal), the powers 0..n-1, and the grids
    ``k`` and ``m - k`` (clipped at 0) as indices."""
    import numpy as np

    lc, m, k = _log_binom(n)
    kk = np.broadcast_to(k, (n, n)).astype(np.intp)
    return np.exp(lc), np.arange(n, dtype=float), kk, np.maximum(m - k, 0).astype(np.intp)


def _arrivals(n: int, t_over_z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``a[m, k]`` = P(k of m working CPUs arrive during one service), averaged over the service
    density given by quadrature nodes ``t / z`` and weights: ``C(m, k) sum_i w_i p_i^k q_i^(m-k)``
    with ``p = 1 - e^{-t/z}`` and ``q = e^{-t/z}``.  Both powers are at most 1 (they underflow to 0,
    never overflow), so no logarithms are needed, and the node sum for every (k, m - k) pair is
    one matrix product of the two power tables."""
    import numpy as np

    binom, powers, kk, d = _binom_grid(n)
    with np.errstate(divide="ignore"):
        log_p = np.log(-np.expm1(-t_over_z))
    pk = weights[:, None] * _exp_or_zero(log_p[:, None] * powers)
    qd = _exp_or_zero(-t_over_z[:, None] * powers)
    s = pk.T @ qd  # s[k, j] = sum_i w_i p_i^k q_i^j
    return np.asarray(binom * s[kk, d])


def _exp_or_zero(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` with every value below the smallest normal double (x < -708) set to 0: subnormal
    results are slow to compute and carry no weight next to the other terms."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        low = ~(x > -708.0)  # also 0 * -inf (a power 0 of p = 0) is NaN here: handled below
    out = np.exp(np.where(low, 0.0, x))
    out[low] = 0.0
    out[np.isnan(x)] = 1.0  # p^0 = 1
    return out


def finite_source(net: ClosedNetwork, cpus: int) -> Solution:
    """Exact solution of the machine-repairman model (M/G/1//N) with gamma service.

    Per visit a worker thinks for an exponential time of mean ``z = Z / V`` and then needs a service of
    mean ``s = D(N) / V`` (gamma, ``scv``).  Let ``i`` be the number left at the station just after a
    departure.  The next service starts with ``j = max(i, 1)`` present; during it each of the
    ``N - j`` working CPUs arrives with probability ``p(t) = 1 - exp(-t / z)``, so the next state is
    ``j - 1 + A`` with ``A ~ Binomial(N - j, p(t))`` averaged over the service density.  From the
    stationary distribution ``pi`` of that chain, the mean time between departures is
    ``s + pi_0 z / N`` (after leaving the station empty it idles until the first of N arrivals)."""
    import numpy as np

    _check_cpus(cpus)
    triv = _trivial(net, cpus)
    if triv is not None:
        return triv
    d = net.demand_at(cpus)
    visits = net.visits if net.visits > 0 else 1.0
    z = net.think_ns / visits
    s = d / visits
    n = cpus
    if n == 1:
        lam = 1.0 / (z + s)
    else:
        nodes, weights = _gamma_rule(net.scv)
        a = _arrivals(n, nodes * (s / z), weights)
        trans = np.zeros((n, n))
        for i in range(n):
            j = max(i, 1)
            mm = n - j
            trans[i, j - 1 : j + mm] = a[mm, : mm + 1]
        trans /= trans.sum(axis=1, keepdims=True)
        eq = trans.T - np.eye(n)
        eq[-1, :] = 1.0
        rhs = np.zeros(n)
        rhs[-1] = 1.0
        pi = np.linalg.solve(eq, rhs)
        lam = 1.0 / (s + max(float(pi[0]), 0.0) * z / n)
    x = lam / visits  # iterations per ns, all workers
    cycle = n / x
    r = cycle - net.think_ns
    return Solution(n, x, cycle, r, d, net.demand_at(1), min(x * d, 1.0), x * r, "finite-source")


def solve(net: ClosedNetwork, cpus: int) -> Solution:
    """Exact MVA for exponential service, the finite-source solution otherwise."""
    if net.scv == 1.0:
        return mva(net, cpus)
    return finite_source(net, cpus)


def fluid_bound(net: ClosedNetwork, cpus: int) -> float:
    """Asymptotic upper bound on throughput (iterations per ns): min(N / (Z + D), 1 / D)."""
    d = net.demand_at(cpus)
    bound = cpus / (net.think_ns + d)
    return min(bound, 1.0 / d) if d > 0 else bound


# -- discrete-event cross-check -----------------------------------------------------------------


def _sampler(mean: float, scv: float) -> tuple[str, float, float]:
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
    """Simulate the same closed network with simpy.

    ``cpus`` workers alternate a think period (mean ``think_ns / visits``, squared coefficient of
    variation ``think_scv``) and one FCFS visit to the shared resource.  A visit's service time is
    drawn from the gamma distribution with mean ``demand_at(cpus) / visits`` -- the lone service plus
    the stretch from the other busy CPUs -- and squared coefficient of variation ``net.scv``.  The run
    is bounded by the number of visits; the first 10% is discarded as warm-up."""
    import simpy  # local import: only the cross-check needs it

    _check_cpus(cpus)
    if net.visits <= 0:
        raise UsageError("simulate: the network has no visits to the shared resource")
    rng = random.Random(seed)
    think = _sampler(net.think_ns / net.visits, think_scv)
    service = _sampler(net.demand_at(cpus) / net.visits, net.scv)
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    total = visits_per_worker * cpus
    warm = total // 10
    state = {"done": 0, "t_warm": 0.0, "t_end": 0.0}

    def worker(env: simpy.Environment) -> Generator[Any, Any, None]:
        yield env.timeout(rng.random() * net.think_ns / net.visits)  # desynchronise the start
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
