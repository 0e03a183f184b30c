"""Profiles load, validate and round-trip; every bad value is a one-line UsageError; every value says
whether it was calibrated or assumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ptesim.cost.profile import (
    dump_profile,
    load_profile,
    profile_from_dict,
    profile_to_dict,
    shipped_profiles,
)
from ptesim.cost.seed import SEED_FIT
from ptesim.errors import UsageError


def test_the_four_profiles_ship_with_provenance_for_every_value() -> None:
    """altra, x86-host, riscv-generic and arm64-tlbirange load; each value is 'calibrated: ...' or
    'assumed: ...' with a reason."""
    names = shipped_profiles()
    assert {"altra", "x86-host", "riscv-generic", "arm64-tlbirange"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert set(p.provenance) == set(p.parameters())
        for k, v in p.provenance.items():
            assert v.startswith(("calibrated: ", "assumed: ")), (name, k)
            assert len(v) > len("assumed: ") + 5, (name, k)


def test_altra_seed_values_are_calibrated_and_the_cap_assumed() -> None:
    """The four seed parameters of altra are calibrated on tables that include the seed (the joint fit
    of every Altra table); the cap k is assumed."""
    p = load_profile("altra")
    for k in SEED_FIT:
        assert p.provenance[k].startswith("calibrated: tables") and "seed" in p.provenance[k], k
        assert p.fit is not None and k in p.fit.parameters and "seed" in p.fit.tables
    assert p.provenance["shared.active_cpu_cap"].startswith("assumed:")
    assert not load_profile("riscv-generic").is_calibrated("local_ns.pte_read")
    assert not load_profile("arm64-tlbirange").is_calibrated("shared.scv")  # carried over, so assumed


@pytest.mark.parametrize(
    "name", ["altra", "x86-host", "riscv-generic", "arm64-tlbirange", "apple-m2-vm", "xeon-4210r"]
)
def test_round_trip(tmp_path: Path, name: str) -> None:
    """dump_profile writes TOML that loads back to the same values, preset and provenance."""
    p = load_profile(name)
    path = tmp_path / "x.toml"
    path.write_text(dump_profile(p))
    q = load_profile(str(path))
    assert q.parameters() == pytest.approx(p.parameters())
    assert q.provenance == p.provenance
    assert (q.preset, q.cpu_features, q.arch) == (p.preset, p.cpu_features, p.arch)


def _doc() -> dict[str, Any]:
    return profile_to_dict(load_profile("altra"))


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d["local_ns"].__setitem__("pte_raed", 1.0), "unknown key local_ns.pte_raed"),
        (lambda d: d["local_ns"].__setitem__("pte_read", -1.0), "negative"),
        (lambda d: d["local_ns"].__setitem__("pte_read", "fast"), "expected a number"),
        (lambda d: d["local_ns"].__setitem__("pte_read", True), "expected a number"),
        (lambda d: d["local_ns"].__setitem__("pte_read", float("inf")), "finite"),
        (lambda d: d["local_ns"].pop("pte_read"), "missing local_ns.pte_read"),
        (lambda d: d["process_ns"].pop("fork"), "missing process_ns.fork"),
        (lambda d: d["shared"].__setitem__("resource", "bus"), "shared.resource"),
        (lambda d: d["shared"].pop("active_cpu_cap"), "missing shared.active_cpu_cap"),
        (lambda d: d["shared"].__setitem__("scv", 500.0), "shared.scv"),
        (lambda d: d["shared"]["service_ns"].__setitem__("tlbi_warp", 1.0), "tlbi_warp"),
        (lambda d: d.__setitem__("extra", {}), "unknown section"),
        (lambda d: d.pop("shared"), "missing section [shared]"),
        (lambda d: d["provenance"].pop("local_ns.pte_read"), "missing provenance"),
        (lambda d: d["provenance"].__setitem__("local_ns.pte_read", "guessed"), "calibrated"),
        (lambda d: d["provenance"].__setitem__("local_ns.nope", "assumed: x"), "nope"),
        (lambda d: d["profile"].__setitem__("arch", "sparc"), "profile.arch"),
        (lambda d: d["profile"].__setitem__("preset", "v9.9"), "v9.9"),
        (lambda d: d["profile"].__setitem__("cpu_features", ["warp"]), "warp"),
        (lambda d: d["profile"].__setitem__("colour", "red"), "profile.colour"),
    ],
)
def test_validation(mutate: Any, needle: str) -> None:
    """Each bad document is refused with one line naming the problem."""
    d = _doc()
    mutate(d)
    with pytest.raises(UsageError) as exc:
        profile_from_dict(d)
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_bad_toml_and_unknown_name(tmp_path: Path) -> None:
    """A file that is not TOML and an unknown profile name are one-line errors."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[profile\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_profile(str(bad))
    with pytest.raises(UsageError, match="unknown profile"):
        load_profile("no-such-machine")
    with pytest.raises(UsageError, match="cannot read profile"):
        load_profile(str(tmp_path / "missing.toml"))


def test_with_values_and_aliases() -> None:
    """Short names resolve to dotted ones; a negative value is refused."""
    p = load_profile("altra")
    q = p.with_values({"pte_read_ns": 0.5, "dvm_service_ns": 3.0, "scv": 2.0, "k": 8})
    assert q.local_ns["pte_read"] == 0.5
    assert q.shared.service_ns["tlbi_page_bcast"] == 3.0
    assert (q.shared.scv, q.shared.active_cpu_cap) == (2.0, 8)
    with pytest.raises(UsageError, match="negative"):
        p.with_values({"pte_read_ns": -1})
    with pytest.raises(UsageError, match="unknown profile parameter"):
        p.get("warp_ns")


def test_interval_ignores_parameters_the_quantity_does_not_depend_on() -> None:
    """cost/intervals.py log_interval(): the delta method over the fitted parameters.  A parameter
    the quantity does not depend on adds nothing to its interval, whatever its value -- also
    0, where no log-scale derivative exists (it is skipped, and the others still count)."""
    import math

    from ptesim.cost.intervals import log_interval

    prof = load_profile("altra")
    assert prof.fit is not None
    first = prof.fit.parameters[0]
    # a later parameter whose fitted value is uncertain (not at a bound)
    second = next(k for j, k in enumerate(prof.fit.parameters) if j and prof.fit.covariance[j][j] > 0)

    def fn(p: Any) -> float:
        return math.log(p.parameters()[second])

    iv = log_interval(fn, prof)
    zero = log_interval(fn, prof.with_values({first: 0.0}))
    alone = log_interval(lambda p: 0.0, prof)  # depends on no parameter: the scatter alone
    assert iv.has_fit and iv.hi - iv.lo > alone.hi - alone.lo
    assert (zero.lo, zero.hi) == pytest.approx((iv.lo, iv.hi))


def test_calibration_label_names_where_values_came_from() -> None:
    """whatif's calibration line: each shipped profile says how many values were calibrated and
    from what (published tables, the seed, host measurements), the rest assumed."""
    from ptesim.cost.whatif import _source, calibration_label

    assert _source("calibrated: tables core-batch-altra, v4-15") == "tables"
    assert _source("calibrated: seed fit of the 2023 fork numbers") == "seed"
    assert _source("calibrated: host fork --json, median") == "host"
    assert _source("calibrated: least squares") == "fit"
    label = calibration_label(load_profile("altra"))
    assert label.startswith("altra: ") and "(tables)" in label and label.endswith(" assumed")


def test_dump_profile_annotates_each_value_with_its_own_provenance() -> None:
    """dump_profile(): in every value section, each ``key = value`` line ends with the provenance
    of that very parameter as a comment, so a reader of the written TOML sees where each number
    came from (the [provenance] table is what loads back; these comments are for the reader)."""
    p = load_profile("altra")
    section = ""
    seen = 0
    for line in dump_profile(p).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section not in ("local_ns", "process_ns", "shared", "shared.service_ns") or " = " not in line:
            continue
        key, _, rest = line.partition(" = ")
        if "  # " not in rest:
            continue  # shared.resource: a name, not a parameter
        assert rest.partition("  # ")[2] == p.provenance.get(f"{section}.{key}", ""), line
        seen += 1
    assert seen == len(p.parameters())


def test_fit_warning_quotes_the_bound_the_value_ended_on() -> None:
    """FitResult.warnings(): a fitted value that ended on its lower physical bound is reported
    with that lower bound, one on its upper bound with the upper one."""
    from ptesim.cost.calibrate import FitResult

    p = load_profile("altra")
    (lo_key, lo_b), (hi_key, hi_b) = list(p.bounds.items())[:2]
    assert lo_b.lo != lo_b.hi and hi_b.lo != hi_b.hi
    res = FitResult(
        profile=p,
        fitted={lo_key: lo_b.lo, hi_key: hi_b.hi},
        initial={},
        cells=[],
        success=True,
        message="",
        at_bound={lo_key: "lower", hi_key: "upper"},
    )
    low, high = res.warnings()
    assert f"{lo_key} = {lo_b.lo:.4g} ended on its lower physical bound {lo_b.lo:.4g}" in low
    assert f"{hi_key} = {hi_b.hi:.4g} ended on its upper physical bound {hi_b.hi:.4g}" in high
