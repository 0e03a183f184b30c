"""The fuzzer's share of the mutation run (collected only by ``tools/mutation.py``).

The default suite runs the fuzz campaigns in a process pool, which mutmut cannot attribute to
the functions they exercise; here a smaller budget runs in-process on the three arches so that a
mutant is also hunted by every invariant after every step.
"""

from __future__ import annotations

import pytest

from ptesim.fuzz import Target, fuzz

TARGETS = [
    Target("x86", "v6.9"),
    Target("arm64", "v6.9"),
    Target("arm64", "v6.9", features=("no-hafdbs",)),
    Target("riscv", "v6.9-svnapot"),
]


@pytest.mark.parametrize("target", TARGETS, ids=[t.label() for t in TARGETS])
def test_fuzz_finds_no_violation(target: Target) -> None:
    res = fuzz(target, 15, seed=0, shrink=False)
    assert res.violation is None, (res.violation.check, res.violation.detail) if res.violation else None
