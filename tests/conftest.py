"""Shared fixtures: model machines with every invariant checked after each operation.

Host tests (marker ``host``) run on the real kernel of this machine and write its transparent
huge page settings through sysfs.  They are opt-in: plain ``pytest`` skips them unless
``PTESIM_HOST_TESTS=1`` is set, and without it any write to the real sysfs from a test fails it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest

from ptesim.host.sysfs import THP_ROOT, ThpSysfs
from ptesim.kernel.core import Kernel

# Tests run the model afresh: no counts from an earlier run's on-disk cache.
os.environ["PTESIM_CACHE_DIR"] = "off"

KiB = 1024
MiB = 1 << 20

HOST_TESTS = os.environ.get("PTESIM_HOST_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``host`` test unless ``PTESIM_HOST_TESTS=1``; start the fuzz budget in the
    background when its tests are selected, and run them last."""
    if not HOST_TESTS:
        skip = pytest.mark.skip(
            reason="host test: changes this machine's THP settings; set PTESIM_HOST_TESTS=1"
        )
        for item in items:
            if item.get_closest_marker("host") is not None:
                item.add_marker(skip)
    budget = [i for i in items if i.get_closest_marker("fuzz_budget") is not None]
    if budget and not config.option.collectonly and "PYTEST_XDIST_WORKER" not in os.environ:
        items[:] = [i for i in items if i.get_closest_marker("fuzz_budget") is None] + budget
        import fuzz_campaigns  # only a session that runs the budget pays for importing the fuzzer

        fuzz_campaigns.start_in_background()


def pytest_sessionfinish(session: pytest.Session) -> None:
    budget = sys.modules.get("fuzz_campaigns")
    if budget is not None:
        budget.stop_background()


@pytest.fixture(autouse=True)
def _no_sysfs_writes_without_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``PTESIM_HOST_TESTS=1`` a test that writes the real THP sysfs fails instead."""
    if HOST_TESTS:
        return
    real_write = ThpSysfs.write

    def guarded(self: ThpSysfs, name: str, value: str) -> None:
        if self.root == THP_ROOT:
            pytest.fail(f"wrote {THP_ROOT}/{name} without PTESIM_HOST_TESTS=1 (mark the test 'host')")
        real_write(self, name, value)

    monkeypatch.setattr(ThpSysfs, "write", guarded)


@pytest.fixture
def machine() -> Callable[..., Kernel]:
    """Build a checked model machine: ``machine("x86", "v6.9", folio=64 * KiB)``."""

    def make(arch: str = "x86", preset: str = "v6.9", *, folio: int = 64 * KiB, **kw: object) -> Kernel:
        k = Kernel(arch, preset, checks=True, **kw)  # type: ignore[arg-type]
        k.set_folio_size(folio)
        return k

    return make
