"""Profiles load, validate and round-trip; every bad value is a one-line UsageError."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ptesim.cost.profile import dump_profile, load_profile, profile_from_dict, profile_to_dict, shipped_profiles
from ptesim.errors import UsageError


def test_shipped_profiles_load_with_provenance() -> None:
    names = shipped_profiles()
    assert "altra" in names
    for name in names:
        p = load_profile(name)
        assert set(p.provenance) == set(p.parameters())


def test_round_trip(tmp_path: Path) -> None:
    p = load_profile("altra")
    path = tmp_path / "x.toml"
    path.write_text(dump_profile(p))
    q = load_profile(str(path))
    assert q.parameters() == pytest.approx(p.parameters())


def _doc() -> dict[str, object]:
    return profile_to_dict(load_profile("altra"))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d["local_ns"].__setitem__("pte_raed", 1.0), "unknown key local_ns.pte_raed"),
        (lambda d: d["local_ns"].__setitem__("pte_read", -1.0), "negative"),
        (lambda d: d["local_ns"].__setitem__("pte_read", "fast"), "expected a number"),
        (lambda d: d["local_ns"].pop("pte_read"), "missing local_ns.pte_read"),
        (lambda d: d["shared"].__setitem__("resource", "bus"), "shared.resource"),
        (lambda d: d.__setitem__("extra", {}), "unknown section"),
        (lambda d: d["provenance"].pop("local_ns.pte_read"), "missing provenance"),
        (lambda d: d["profile"].__setitem__("arch", "sparc"), "profile.arch"),
    ],
)
def test_validation(mutate: object, needle: str) -> None:
    d = _doc()
    mutate(d)  # type: ignore[operator]
    with pytest.raises(UsageError) as exc:
        profile_from_dict(d)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_bad_toml_and_unknown_name(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[profile\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_profile(str(bad))
    with pytest.raises(UsageError, match="unknown profile"):
        load_profile("no-such-machine")
    assert tomllib  # tomllib is the loader
