"""Shared fixtures: model machines with every invariant checked after each operation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ptesim.kernel.core import Kernel

KiB = 1024
MiB = 1 << 20


@pytest.fixture
def machine() -> Callable[..., Kernel]:
    """Build a checked model machine: ``machine("x86", "v6.9", folio=64 * KiB)``."""

    def make(arch: str = "x86", preset: str = "v6.9", *, folio: int = 64 * KiB, **kw: object) -> Kernel:
        k = Kernel(arch, preset, checks=True, **kw)  # type: ignore[arg-type]
        k.set_folio_size(folio)
        return k

    return make
