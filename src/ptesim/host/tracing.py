"""Counting the kernel's TLB flushes and THP events around a measurement.

* ``tlb:tlb_flush`` (``include/trace/events/tlb.h``) fires on x86 once per flush with the reason of
  ``enum tlb_flush_reason`` (``include/linux/mm_types.h``).  ptesim enables it in a private tracefs
  *instance* (``Documentation/trace/ftrace.rst``, "Instances"), so the global trace buffer and event
  settings are never touched, and the measuring process switches that instance's ``tracing_on`` on
  only around each timed operation.  Events are counted system-wide during those windows (the remote
  shootdown is logged in whatever task the IPI interrupts), so a quiet machine gives clean numbers.
  If tracefs is not mounted, ptesim mounts it at a private directory for the run and unmounts it after.
* ``/proc/vmstat`` ``thp_*`` counters and the per-size ``hugepages-*/stats/`` counters are read before
  and after, and reported as deltas.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ptesim.errors import UsageError
from ptesim.host.sysfs import HostSession, run_undo, state_dir

#: ``enum tlb_flush_reason`` in ``include/linux/mm_types.h``, in order.
TLB_FLUSH_REASONS: tuple[str, ...] = (
    "TLB_FLUSH_ON_TASK_SWITCH",
    "TLB_REMOTE_SHOOTDOWN",
    "TLB_LOCAL_SHOOTDOWN",
    "TLB_LOCAL_MM_SHOOTDOWN",
    "TLB_REMOTE_SEND_IPI",
    "TLB_REMOTE_WRONG_CPU",
)
_STANDARD_MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_REASON_RE = re.compile(r"reason:.*\((\d+)\)")


def parse_reasons(text: str) -> list[str]:
    """Validate a comma list of reasons (``TLB_REMOTE_SHOOTDOWN`` or ``remote_shootdown``).

    >>> parse_reasons("local_mm_shootdown")
    ['TLB_LOCAL_MM_SHOOTDOWN']
    """
    out = []
    for part in text.split(","):
        name = part.strip().upper()
        if not name.startswith("TLB_"):
            name = "TLB_" + name
        if name not in TLB_FLUSH_REASONS:
            raise UsageError(
                f"unknown TLB flush reason {part.strip()!r}: expected one of " + ", ".join(TLB_FLUSH_REASONS)
            )
        out.append(name)
    return out


def find_tracefs() -> Path | None:
    """A mounted tracefs, from ``/proc/self/mounts``."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    tracefs = [m[1] for m in mounts if len(m) > 2 and m[2] == "tracefs"]
    for p in _STANDARD_MOUNTS:
        if p in tracefs:
            return Path(p)
    return Path(tracefs[0]) if tracefs else None


def tracefs_supported() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == ["tracefs"] for line in f)


def tlb_event_status() -> str:
    """For ``host info``: available, unavailable, or why it cannot be told."""
    root = find_tracefs()
    if root is None:
        if not tracefs_supported():
            return "unavailable (no tracefs)"
        return "tracefs not mounted (ptesim mounts it for a run as root)"
    if (root / "events" / "tlb" / "tlb_flush").is_dir():
        return f"available ({root}/events/tlb/tlb_flush)"
    if not os.access(root, os.R_OK | os.X_OK):
        return "unknown (tracefs not readable)"
    return "unavailable (no tlb:tlb_flush on this architecture/kernel)"


@dataclass
class TlbTrace:
    """An enabled ``tlb:tlb_flush`` in a private tracefs instance, with tracing initially off."""

    instance: Path

    def clear(self) -> None:
        (self.instance / "trace").write_text("")

    def lost(self) -> int:
        """Events lost to a full buffer (``per_cpu/cpuN/stats`` overrun)."""
        total = 0
        for stats in (self.instance / "per_cpu").glob("cpu*/stats"):
            for line in stats.read_text().splitlines():
                if line.startswith("overrun:"):
                    total += int(line.split()[1])
        return total

    def counts(self, mark: str | None = None) -> tuple[dict[str, int], dict[str, int]]:
        """Events in the buffer by reason name: (before ``mark``, after it).

        Without a mark (or if it never appears) everything counts as after.
        """
        before = dict.fromkeys(TLB_FLUSH_REASONS, 0)
        after = dict.fromkeys(TLB_FLUSH_REASONS, 0)
        lines = (self.instance / "trace").read_text().splitlines()
        seen = mark is None or not any(mark in line for line in lines)
        for line in lines:
            if line.startswith("#"):
                continue
            if not seen and mark is not None and mark in line:
                seen = True
                continue
            m = _REASON_RE.search(line)
            if m:
                idx = int(m.group(1))
                name = TLB_FLUSH_REASONS[idx] if idx < len(TLB_FLUSH_REASONS) else f"REASON_{idx}"
                out = after if seen else before
                out[name] = out.get(name, 0) + 1
        return before, after


@contextlib.contextmanager
def tlb_trace(session: HostSession, buffer_kb: int = 4096) -> Iterator[TlbTrace | None]:
    """A private instance with ``tlb:tlb_flush`` enabled, or None where that cannot be had.

    The instance directory and any mount made for it are recorded in the session's saved state, so
    ``ptesim host restore`` removes them if this process is killed before it can.
    """
    if not session.writable:
        yield None
        return
    root = find_tracefs()
    mounted: str | None = None
    if root is None:
        if not tracefs_supported():
            yield None
            return
        state_dir().mkdir(parents=True, exist_ok=True)
        mounted = tempfile.mkdtemp(prefix="tracefs-", dir=state_dir())
        session.record_undo("umount", mounted)
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", mounted], capture_output=True, text=True)
        if r.returncode != 0:
            _undo(session, "umount", mounted)
            yield None
            return
        root = Path(mounted)
    try:
        if not (root / "events" / "tlb" / "tlb_flush").is_dir():
            yield None
            return
        inst = root / "instances" / f"ptesim-{os.getpid()}"
        session.record_undo("rmdir", str(inst))
        try:
            inst.mkdir()
            (inst / "buffer_size_kb").write_text(str(buffer_kb))
            (inst / "tracing_on").write_text("0")
            (inst / "events" / "tlb" / "tlb_flush" / "enable").write_text("1")
        except OSError:
            _undo(session, "rmdir", str(inst))
            yield None
            return
        try:
            yield TlbTrace(inst)
        finally:
            with contextlib.suppress(OSError):
                (inst / "tracing_on").write_text("0")
                (inst / "events" / "tlb" / "tlb_flush" / "enable").write_text("0")
            _undo(session, "rmdir", str(inst))
    finally:
        if mounted is not None:
            _undo(session, "umount", mounted)


def _undo(session: HostSession, kind: str, path: str) -> None:
    """Undo now if possible; if not, the session retries at its end (or ``host restore`` later)."""
    try:
        run_undo({"kind": kind, "path": path})
    except OSError:
        return
    session.forget_undo(kind, path)


def vmstat() -> dict[str, int]:
    """The THP-related counters of ``/proc/vmstat`` (``thp_*``, ``nr_anon_transparent_hugepages``)."""
    out: dict[str, int] = {}
    with open("/proc/vmstat") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key.startswith("thp_") or key == "nr_anon_transparent_hugepages":
                out[key] = int(value)
    return out


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Non-zero differences, key by key."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
