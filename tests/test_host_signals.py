"""Signals delivered to a running ``ptesim host`` leave every THP knob as it was, and no processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_helpers import runner_processes
from ptesim.host.sysfs import STATE_FILE_NAME, ThpSysfs, quiescent_settings, state_dir

THP = Path("/sys/kernel/mm/transparent_hugepage")
HOST_OK = sys.platform.startswith("linux") and os.geteuid() == 0 and any(THP.glob("hugepages-*kB/enabled"))
pytestmark = [
    pytest.mark.host,
    pytest.mark.skipif(not HOST_OK, reason="needs Linux, root and mTHP sysfs"),
]

LONG_RUN = ["host", "fork", "--sizes", "64K,2M", "--mem", "64M", "--reps", "500", "--warmup", "0"]


def ptesim(*argv: str, new_session: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ptesim.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def wait_until_measuring(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Until the measuring process runs (so settings are pushed), plus a little."""
    deadline = time.monotonic() + timeout
    while not runner_processes():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the measurement never started"
        time.sleep(0.05)
    assert (state_dir() / STATE_FILE_NAME).is_file()
    time.sleep(0.3)


def no_leftovers() -> None:
    deadline = time.monotonic() + 5
    while runner_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner_processes() == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str(state_dir()) not in mounts


@pytest.fixture
def knobs() -> Iterator[dict[str, str]]:
    sysfs = ThpSysfs()
    before = quiescent_settings(sysfs)
    yield before
    after = quiescent_settings(sysfs)
    if after != before:
        subprocess.run([sys.executable, "-m", "ptesim.cli", "host", "restore"], check=False)
    assert after == before


@pytest.mark.parametrize(
    ("sig", "group"),
    [
        (signal.SIGINT, False),
        (signal.SIGINT, True),
        (signal.SIGTERM, False),
        (signal.SIGHUP, False),
    ],
)
def test_signal_mid_run_restores_every_knob(knobs: dict[str, str], sig: signal.Signals, group: bool) -> None:
    """SIGINT (to the process or, like Ctrl-C, its group), SIGTERM, SIGHUP: restored, one line."""
    proc = ptesim(*LONG_RUN, new_session=group)
    try:
        wait_until_measuring(proc)
        assert ThpSysfs().read_all() != knobs or knobs["hugepages-64kB/enabled"] == "always"
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err
    assert "THP settings restored" in err
    assert ThpSysfs().read_all() == knobs
    assert not (state_dir() / STATE_FILE_NAME).exists()
    no_leftovers()


def test_sigkill_leaves_state_that_host_restore_undoes(knobs: dict[str, str]) -> None:
    """After SIGKILL the next run refuses (exit 2) until 'ptesim host restore' puts knobs back."""
    proc = ptesim(*LONG_RUN)
    try:
        wait_until_measuring(proc)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (state_dir() / STATE_FILE_NAME).is_file()
    refused = ptesim("host", "fork", "--sizes", "4K", "--mem", "32M", "--reps", "1")
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 2 and "ptesim host restore" in err and err.count("\n") == 1
    restore = ptesim("host", "restore")
    out, err = restore.communicate(timeout=30)
    assert restore.returncode == 0, err
    assert out.startswith("restored")
    assert ThpSysfs().read_all() == knobs
    assert not (state_dir() / STATE_FILE_NAME).exists()
    no_leftovers()
