"""THP knob discovery, nested push/pop, restore on exceptions, leftover saved state."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptesim.errors import UsageError
from ptesim.host.sysfs import (
    STATE_FILE_NAME,
    HostSession,
    SettingsNotRestored,
    ThpSysfs,
    parse_choices,
    parse_knob,
    quiescent_settings,
    restore_saved_state,
    settings_for_size,
    state_dir,
)

THP = Path("/sys/kernel/mm/transparent_hugepage")
HOST_OK = sys.platform.startswith("linux") and os.geteuid() == 0 and any(THP.glob("hugepages-*kB/enabled"))


@pytest.fixture
def knobs_unchanged() -> Iterator[dict[str, str]]:
    """Every THP knob reads the same after the test as before it (restored if not, then fail)."""
    sysfs = ThpSysfs()
    before = quiescent_settings(sysfs)
    yield before
    after = quiescent_settings(sysfs)
    if after != before:
        for name, value in before.items():
            if sysfs.read(name) != value:
                sysfs.write(name, value)
        pytest.fail(f"THP knobs changed: {[k for k in before if after[k] != before[k]]}")
    assert not (state_dir() / STATE_FILE_NAME).exists()


def test_parse_knob_reads_bracketed_choice_or_number() -> None:
    """A choice file yields its bracketed word, a number file its number."""
    assert parse_knob("always [inherit] madvise never\n") == "inherit"
    assert parse_knob("4096\n") == "4096"
    assert parse_choices("always [madvise] never") == ["always", "madvise", "never"]
    assert parse_choices("1") is None


@pytest.mark.host
@pytest.mark.skipif(not HOST_OK, reason="needs Linux, root and mTHP sysfs")
class TestOnThisKernel:
    def test_knobs_are_the_writable_files(self) -> None:
        """Discovery lists global, per-size and khugepaged knobs, not stats or read-only facts."""
        names = set(ThpSysfs().knobs())
        assert {"enabled", "defrag", "khugepaged/max_ptes_none", "hugepages-64kB/enabled"} <= names
        assert not any("/stats/" in n for n in names)
        assert "hpage_pmd_size" not in names and "khugepaged/full_scans" not in names

    def test_sizes_need_an_enabled_file(self) -> None:
        """Only sizes with an anonymous enabled file are offered; shmem-only sizes are listed apart."""
        sysfs = ThpSysfs()
        sizes = sysfs.mthp_sizes()
        for name in sizes.values():
            assert (THP / name / "enabled").is_file()
        for size in sysfs.sizes_without_enabled():
            assert size not in sizes
        assert sysfs.pmd_size() in sizes

    def test_settings_for_a_size_enable_only_that_size(self) -> None:
        """The size under test is 'always', every other size 'never'; 4K also turns enabled off."""
        sysfs = ThpSysfs()
        want = settings_for_size(sysfs, 64 << 10, 4096, "always")
        assert want["hugepages-64kB/enabled"] == "always"
        assert all(v == "never" for k, v in want.items() if k != "hugepages-64kB/enabled")
        assert "enabled" not in want
        four_k = settings_for_size(sysfs, 4096, 4096, "always")
        assert four_k["enabled"] == "never" and set(four_k.values()) == {"never"}

    def test_nested_push_pop_returns_to_each_level(self, knobs_unchanged: dict[str, str]) -> None:
        """push/pop nest like thp_settings.c and the exit restores the saved set exactly."""
        sysfs = ThpSysfs()
        with HostSession(sysfs) as s:
            assert (state_dir() / STATE_FILE_NAME).is_file()
            s.push(settings_for_size(sysfs, 64 << 10, 4096, "always"))
            assert sysfs.read("hugepages-64kB/enabled") == "always"
            s.push(settings_for_size(sysfs, 2 << 20, 4096, "madvise"))
            assert sysfs.read("hugepages-64kB/enabled") == "never"
            assert sysfs.read("hugepages-2048kB/enabled") == "madvise"
            s.push({"khugepaged/pages_to_scan": "123"})
            assert sysfs.read("hugepages-2048kB/enabled") == "madvise"
            assert s.stack.depth == 3
            s.pop()
            assert sysfs.read("khugepaged/pages_to_scan") == knobs_unchanged["khugepaged/pages_to_scan"]
            s.pop()
            assert sysfs.read("hugepages-64kB/enabled") == "always"
        assert s.settings_after == knobs_unchanged

    def test_exception_mid_run_restores_every_knob(self, knobs_unchanged: dict[str, str]) -> None:
        """An exception with settings pushed leaves every knob as saved and no state file."""
        sysfs = ThpSysfs()
        with pytest.raises(RuntimeError, match="injected"), HostSession(sysfs) as s:
            s.push(settings_for_size(sysfs, 4096, 4096, "always"))
            s.push({"khugepaged/scan_sleep_millisecs": "12345"})
            raise RuntimeError("injected")

    def test_verify_reports_a_knob_that_differs(self, knobs_unchanged: dict[str, str]) -> None:
        """verify() names the first knob whose value is not the saved one."""
        sysfs = ThpSysfs()
        with HostSession(sysfs) as s:
            old = sysfs.read("khugepaged/pages_to_scan")
            sysfs.write("khugepaged/pages_to_scan", str(int(old) + 8))
            with pytest.raises(SettingsNotRestored, match="khugepaged/pages_to_scan"):
                s.stack.verify()

    def test_unknown_knob_is_a_usage_error(self, knobs_unchanged: dict[str, str]) -> None:
        """Pushing a knob that does not exist is refused before anything is written."""
        with HostSession() as s, pytest.raises(UsageError, match="unknown THP knob"):
            s.push({"hugepages-3kB/enabled": "always"})

    def test_leftover_state_is_refused_then_restored(self, knobs_unchanged: dict[str, str]) -> None:
        """A state file from a killed run blocks new runs until 'host restore' puts it back."""
        sysfs = ThpSysfs()
        d = state_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / STATE_FILE_NAME).write_text(
            json.dumps({"pid": 999999, "root": str(THP), "settings": knobs_unchanged, "undo": []})
        )
        try:
            other = "never" if knobs_unchanged["hugepages-64kB/enabled"] == "always" else "always"
            sysfs.write("hugepages-64kB/enabled", other)
            with pytest.raises(UsageError, match="host restore"), HostSession(sysfs):
                pass
            report = restore_saved_state(sysfs)
            assert "hugepages-64kB/enabled" in report
        finally:
            (d / STATE_FILE_NAME).unlink(missing_ok=True)
        assert restore_saved_state(sysfs).startswith("nothing to restore")
