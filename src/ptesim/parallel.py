"""Independent cells of a sweep, on a local process pool or a Dask cluster.

:func:`map_cells` runs ``fn`` over ``items`` and returns the results in order.  By default the work
goes to a local process pool (``PTESIM_JOBS`` workers, default: the CPUs this process may use; one
item or one worker runs in this process); with ``--scheduler ADDRESS`` it goes to a Dask distributed
scheduler (``pip install 'ptesim[dask]'``).  ``fn`` must be a module-level function and items and
results picklable.  A progress bar follows completion on a terminal.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from ptesim.errors import UsageError
from ptesim.progress import progress

T = TypeVar("T")
R = TypeVar("R")

#: The Dask scheduler address from ``--scheduler`` (UI state, set once per command line).
_SCHEDULER: str | None = None


def configure(*, scheduler: str | None) -> None:
    """Send the cells of this process's sweeps to ``scheduler`` (None: the local pool)."""
    global _SCHEDULER
    _SCHEDULER = scheduler


def jobs_default() -> int:
    """Local worker processes: ``PTESIM_JOBS`` or the CPUs this process may use."""
    env = os.environ.get("PTESIM_JOBS", "")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise UsageError(f"PTESIM_JOBS must be an integer (got {env!r})") from None
    return max(1, len(os.sched_getaffinity(0)))


def map_cells(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    what: str = "cells",
    jobs: int | None = None,
    scheduler: str | None = None,
) -> list[R]:
    """``[fn(x) for x in items]``, the cells run in parallel (see the module docstring)."""
    scheduler = scheduler or _SCHEDULER
    if not items:
        return []
    if scheduler:
        return _map_dask(fn, items, scheduler, what)
    n = min(jobs if jobs is not None else jobs_default(), len(items))
    if n <= 1:
        return [fn(x) for x in progress(items, what)]
    out: list[Any] = [None] * len(items)
    with ProcessPoolExecutor(max_workers=n) as pool:
        futures = {pool.submit(fn, x): i for i, x in enumerate(items)}
        for fut in progress(as_completed(futures), what, total=len(futures)):
            out[futures[fut]] = fut.result()
    return out


def _map_dask(fn: Callable[[T], R], items: Sequence[T], address: str, what: str) -> list[R]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'ptesim[dask]'") from None
    try:
        # how long to try: Dask's own setting, distributed.comm.timeouts.connect (30 s unless set)
        client = Client(address)  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        futures = client.map(fn, list(items), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(items)
        for fut in progress(dask_completed(futures), what, total=len(futures)):  # type: ignore[no-untyped-call]
            out[index[fut.key]] = fut.result()
        return out
