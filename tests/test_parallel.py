"""Sweeps run their cells on a local process pool, or on a Dask cluster with --scheduler: same numbers."""

from __future__ import annotations

import json

import pytest

from ptesim import parallel
from ptesim.cli import main


def _square(x: int) -> int:
    return x * x


def test_local_pool_keeps_order() -> None:
    """map_cells returns results in the order of the items, with one worker or several."""
    assert parallel.map_cells(_square, [3, 1, 2], jobs=1) == [9, 1, 4]
    assert parallel.map_cells(_square, [3, 1, 2], jobs=2) == [9, 1, 4]


def test_dask_local_cluster_equals_local_run(capsys: pytest.CaptureFixture[str]) -> None:
    """An explain sweep on a Dask LocalCluster prints exactly what the local run prints."""
    distributed = pytest.importorskip("distributed")
    argv = [
        "explain",
        "--arch",
        "x86",
        "--preset",
        "v6.8,v6.9",
        "--folio",
        "16K,64K",
        "--mem",
        "256K",
        "--json",
    ]
    assert main(argv) == 0
    local = json.loads(capsys.readouterr().out)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        try:
            assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
        finally:
            parallel.configure(scheduler=None)
    remote = json.loads(capsys.readouterr().out)
    assert remote == local


def test_unreachable_scheduler_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A scheduler that does not answer: one line, exit 2, after Dask's connect timeout."""
    pytest.importorskip("distributed")
    import dask

    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
            rc = main(
                [
                    "explain",
                    "--arch",
                    "x86",
                    "--folio",
                    "16K,64K",
                    "--mem",
                    "256K",
                    "--scheduler",
                    "tcp://127.0.0.1:9",
                ]
            )
    finally:
        parallel.configure(scheduler=None)
    assert rc == 2
    assert "scheduler" in capsys.readouterr().err
