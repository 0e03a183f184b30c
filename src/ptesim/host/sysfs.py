"""Transparent-huge-page knobs: discovery, save, nested push/pop, restore on every exit path.

The knobs are those of ``Documentation/admin-guide/mm/transhuge.rst``: the global
``/sys/kernel/mm/transparent_hugepage/{enabled,defrag,shmem_enabled,use_zero_page,...}``, one
``hugepages-<size>kB/{enabled,shmem_enabled}`` directory per mTHP size (v6.8+; a size may exist for
shmem only and then has no ``enabled`` file), and ``khugepaged/*``.

The save/push/pop discipline follows the kernel's own selftest helper
``tools/testing/selftests/mm/thp_settings.c``: every knob is read once before anything is written
(``thp_save_settings``), a measurement pushes the full set it needs on top of the current one
(``thp_push_settings``), pops back to the previous set when done (``thp_pop_settings``), and the saved
set is written back at the end (``thp_restore_settings``).  Unlike the selftest, ptesim discovers the
knobs instead of listing them, writes only the knobs whose value differs, reads every knob back after
the restore and raises if any differs, and keeps a saved-state file so that a run killed with SIGKILL
can be undone later with ``ptesim host restore``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from ptesim.errors import UsageError
from ptesim.units import KiB, format_size

THP_ROOT = Path("/sys/kernel/mm/transparent_hugepage")
STATE_DIR_ENV = "PTESIM_STATE_DIR"
DEFAULT_STATE_DIR = Path("/run/ptesim")
STATE_FILE_NAME = "saved-settings.json"
LOCK_FILE_NAME = "host.lock"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

#: A set of knob values, keyed by the knob's path relative to :data:`THP_ROOT`.
Settings = dict[str, str]


class SettingsNotRestored(UsageError):
    """A knob read back after the restore differs from the value saved before the run."""


class HostInterrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived while host settings were changed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def state_dir() -> Path:
    """Where the lock and the saved-state file live (``$PTESIM_STATE_DIR`` or ``/run/ptesim``).

    ``/run`` is a tmpfs, like sysfs forgotten at reboot, so a leftover file never outlives the
    settings it describes.
    """
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def is_root() -> bool:
    return os.geteuid() == 0


def parse_knob(text: str) -> str:
    """The value of a knob file: the bracketed choice of ``always [madvise] never``, else the text.

    >>> parse_knob("always [madvise] never\\n")
    'madvise'
    >>> parse_knob("511\\n")
    '511'
    """
    start = text.find("[")
    end = text.find("]", start + 1)
    if start >= 0 and end > start:
        return text[start + 1 : end]
    return text.strip()


def parse_choices(text: str) -> list[str] | None:
    """The choices a multiple-choice knob offers, or None for a numeric knob."""
    if "[" not in text:
        return None
    return [word.strip("[]") for word in text.split()]


def size_dir_name(size: int) -> str:
    """``hugepages-64kB`` for 64 KiB (the kernel names every size in kB)."""
    return f"hugepages-{size // KiB}kB"


@dataclass(frozen=True)
class ThpSysfs:
    """The ``transparent_hugepage`` directory of sysfs (a different root is accepted for tests)."""

    root: Path = THP_ROOT

    def available(self) -> bool:
        return (self.root / "enabled").is_file()

    def require(self) -> None:
        if not self.available():
            raise UsageError(f"transparent huge pages unavailable: no {self.root}/enabled")

    def knobs(self) -> list[str]:
        """Every writable knob: global files, ``hugepages-*/`` files and ``khugepaged/`` files.

        The ``stats/`` counters and read-only files (``hpage_pmd_size``, ``khugepaged/full_scans``)
        are facts, not settings, and are left out.
        """
        out: list[str] = []
        dirs = [self.root, self.root / "khugepaged", *sorted(self.root.glob("hugepages-*kB"))]
        for d in dirs:
            if not d.is_dir():
                continue
            for p in sorted(d.iterdir()):
                if p.is_file() and p.stat().st_mode & 0o222:
                    out.append(str(p.relative_to(self.root)))
        return out

    def read_raw(self, name: str) -> str:
        return (self.root / name).read_text()

    def read(self, name: str) -> str:
        return parse_knob(self.read_raw(name))

    def read_all(self, names: list[str] | None = None) -> Settings:
        return {name: self.read(name) for name in (self.knobs() if names is None else names)}

    def write(self, name: str, value: str) -> None:
        path = self.root / name
        try:
            with path.open("w") as f:
                f.write(value)
        except PermissionError:
            raise UsageError(f"cannot change {path}: permission denied (run as root)") from None
        except OSError as exc:
            raise UsageError(f"cannot write {value!r} to {path}: {exc.strerror}") from None

    def choices(self, name: str) -> list[str] | None:
        return parse_choices(self.read_raw(name))

    def pmd_size(self) -> int:
        path = self.root / "hpage_pmd_size"
        return int(path.read_text()) if path.is_file() else 0

    def mthp_sizes(self) -> dict[int, str]:
        """Sizes (bytes) whose ``hugepages-<size>kB`` directory has an anonymous ``enabled`` file."""
        out: dict[int, str] = {}
        for d in self.root.glob("hugepages-*kB"):
            if (d / "enabled").is_file():
                out[int(d.name[len("hugepages-") : -2]) * KiB] = d.name
        return dict(sorted(out.items()))

    def sizes_without_enabled(self) -> list[int]:
        """Sizes exposed for shmem only (no ``enabled`` file), e.g. order 1 on x86-64."""
        out = []
        for d in self.root.glob("hugepages-*kB"):
            if not (d / "enabled").is_file():
                out.append(int(d.name[len("hugepages-") : -2]) * KiB)
        return sorted(out)

    def stats(self) -> dict[str, dict[str, int]]:
        """The per-size ``stats/`` counters (v6.10+), keyed by size name (``64K``)."""
        out: dict[str, dict[str, int]] = {}
        for d in sorted(self.root.glob("hugepages-*kB")):
            sd = d / "stats"
            if not sd.is_dir():
                continue
            size = format_size(int(d.name[len("hugepages-") : -2]) * KiB)
            counters: dict[str, int] = {}
            for p in sorted(sd.iterdir()):
                with contextlib.suppress(OSError, ValueError):
                    counters[p.name] = int(p.read_text())
            out[size] = counters
        return out

    def effective_mode(self, size: int, page_size: int) -> str:
        """What anonymous faults get for ``size`` now: always, madvise or never (inherit resolved)."""
        if size == page_size:
            return "always"
        name = self.mthp_sizes().get(size)
        if name is None:
            return "never"
        mode = self.read(f"{name}/enabled")
        return self.read("enabled") if mode == "inherit" else mode


def settings_for_size(sysfs: ThpSysfs, size: int, page_size: int, mode: str) -> Settings:
    """The knob changes that make anonymous faults allocate folios of exactly ``size``.

    The size under test gets ``mode`` (``always``, or ``madvise`` together with MADV_HUGEPAGE) and every
    other size ``never``, so no larger order can win the fallback search of
    ``mm/memory.c:alloc_anon_folio`` and no smaller one is tried first.  For order 0 (4K) every size
    and the global ``enabled`` are ``never``.  The PMD size is the ``hugepages-2048kB`` entry on x86-64.
    """
    if mode not in ("always", "madvise"):
        raise UsageError(f"bad THP mode {mode!r}: expected always or madvise")
    changes: Settings = {}
    for sz, name in sysfs.mthp_sizes().items():
        changes[f"{name}/enabled"] = mode if sz == size else "never"
    if size == page_size:
        changes["enabled"] = "never"
    return changes


# --------------------------------------------------------------------------------------------
# Undo actions other than knob values (tracefs instances and mounts), recorded in the state file.


def run_undo(action: Mapping[str, str]) -> None:
    """Undo one recorded side effect; already-undone ones are not an error."""
    kind, path = action["kind"], action["path"]
    if kind == "rmdir":
        # A tracefs instance is busy while any process (a dying child of the measuring process
        # that inherited its tracing_on descriptor) still has one of its files open: wait a little.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    elif kind == "umount":
        if _is_mountpoint(path):
            subprocess.run(["umount", path], check=False, capture_output=True)
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(path)
    else:
        raise ValueError(f"unknown undo action {kind!r}")


def _is_mountpoint(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f if len(line.split()) > 1)


# --------------------------------------------------------------------------------------------
# The settings stack and the session that owns it.


@dataclass
class SettingsStack:
    """Save once, push/pop nested sets, restore and verify (``thp_settings.c``, extended).

    ``push`` takes only the knobs to change; the rest keep the value of the set below.
    """

    sysfs: ThpSysfs
    saved: Settings = field(default_factory=dict)
    _stack: list[Settings] = field(default_factory=list)

    def save(self) -> Settings:
        self.saved = self.sysfs.read_all()
        self._stack.clear()
        return dict(self.saved)

    @property
    def depth(self) -> int:
        return len(self._stack)

    def current(self) -> Settings:
        return dict(self._stack[-1] if self._stack else self.saved)

    def push(self, changes: Mapping[str, str]) -> None:
        if not self.saved:
            raise RuntimeError("SettingsStack.push before save")
        unknown = sorted(set(changes) - set(self.saved))
        if unknown:
            raise UsageError(f"unknown THP knob {unknown[0]!r} under {self.sysfs.root}")
        target = self.current()
        target.update(changes)
        self._stack.append(target)
        self.apply(target)

    def pop(self) -> None:
        if not self._stack:
            raise RuntimeError("SettingsStack.pop with nothing pushed")
        self._stack.pop()
        self.apply(self.current())

    def apply(self, target: Mapping[str, str]) -> None:
        """Write the knobs of ``target`` whose current value differs (global ``enabled`` last)."""
        names = sorted(target, key=lambda n: (n == "enabled", n))
        for name in names:
            if self.sysfs.read(name) != target[name]:
                self.sysfs.write(name, target[name])

    def restore(self) -> None:
        self._stack.clear()
        if self.saved:
            self.apply(self.saved)
            self.verify()

    def verify(self) -> None:
        """Raise :class:`SettingsNotRestored` unless every knob reads back as saved."""
        now = self.sysfs.read_all(list(self.saved))
        diff = [n for n in self.saved if now[n] != self.saved[n]]
        if diff:
            n = diff[0]
            raise SettingsNotRestored(
                f"THP settings not restored: {n} is {now[n]!r}, saved {self.saved[n]!r} "
                f"({len(diff)} knob(s) differ); run 'ptesim host restore'"
            )


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"unreadable saved-state file {path}: {exc}") from None
    return data


def _write_state(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class HostSession:
    """Ownership of the THP knobs for one run: lock, saved state, signals, restore.

    Use as a context manager.  On entry (when ``writable``) it takes an exclusive ``flock`` on
    ``<state dir>/host.lock`` (so two runs never save each other's changes), refuses to start if a
    saved-state file was left behind by a run that died, saves every knob, writes the saved-state file
    and turns SIGINT, SIGTERM and SIGHUP into :class:`HostInterrupted`.  On exit — normal, exception or
    signal — it undoes recorded side effects, restores every knob, verifies it, removes the state file
    and puts the signal handlers back, with those signals blocked meanwhile.

    Without ``writable`` (not root) it only reads: ``push`` is refused and nothing is saved.
    """

    def __init__(
        self,
        sysfs: ThpSysfs | None = None,
        *,
        writable: bool | None = None,
        lock_timeout: float = 600.0,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.sysfs = sysfs or ThpSysfs()
        self.writable = is_root() if writable is None else writable
        self.stack = SettingsStack(self.sysfs)
        self.lock_timeout = lock_timeout
        self.notify = notify or (lambda msg: None)
        self.settings_before: Settings = {}
        self.settings_after: Settings = {}
        self._undo: list[dict[str, str]] = []
        self._lock: IO[str] | None = None
        self._old_handlers: dict[int, Any] = {}
        self._owner = os.getpid()
        self._active = False

    # -- entry ---------------------------------------------------------------------------------
    def __enter__(self) -> HostSession:
        self.sysfs.require()
        if self.writable:
            self._acquire_lock()
            try:
                leftover = _read_state(self.state_file)
                if leftover is not None:
                    raise UsageError(
                        f"THP settings saved by an earlier run (pid {leftover.get('pid')}) were never "
                        f"restored ({self.state_file}); run 'ptesim host restore' first"
                    )
                self.settings_before = self.stack.save()
                self._write_state()
                self._install_signals()
                self._active = True
            except BaseException:
                self._release_lock()
                raise
        else:
            self.settings_before = self.sysfs.read_all()
        return self

    @property
    def state_file(self) -> Path:
        return state_dir() / STATE_FILE_NAME

    def _acquire_lock(self) -> None:
        d = state_dir()
        d.mkdir(parents=True, exist_ok=True)
        f = (d / LOCK_FILE_NAME).open("a+")
        deadline = time.monotonic() + self.lock_timeout
        told = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    f.close()
                    raise UsageError(
                        "another ptesim host run holds the THP settings; gave up waiting"
                    ) from None
                if not told:
                    f.seek(0)
                    self.notify(f"waiting for another ptesim host run (pid {f.read().strip()})")
                    told = True
                time.sleep(0.2)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _write_state(self) -> None:
        _write_state(
            self.state_file,
            {
                "pid": os.getpid(),
                "started": time.time(),
                "root": str(self.sysfs.root),
                "settings": self.stack.saved,
                "undo": self._undo,
            },
        )

    def _install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            raise HostInterrupted(signum)

        for sig in HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, handler)

    # -- during --------------------------------------------------------------------------------
    def push(self, changes: Mapping[str, str]) -> None:
        if not self.writable:
            raise UsageError("changing THP settings needs root")
        self.stack.push(changes)

    def pop(self) -> None:
        self.stack.pop()

    @contextlib.contextmanager
    def pushed(self, changes: Mapping[str, str]) -> Iterator[None]:
        self.push(changes)
        try:
            yield
        finally:
            self.pop()

    def record_undo(self, kind: str, path: str) -> None:
        """Remember a side effect (``rmdir`` a directory, ``umount`` a mount) to undo at the end."""
        self._undo.append({"kind": kind, "path": path})
        if self._active:
            self._write_state()

    def forget_undo(self, kind: str, path: str) -> None:
        """The side effect was undone already."""
        with contextlib.suppress(ValueError):
            self._undo.remove({"kind": kind, "path": path})
        if self._active:
            self._write_state()

    # -- exit ----------------------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        if os.getpid() != self._owner:
            return  # a forked child never restores the parent's settings
        if not self._active:
            self.settings_after = self.sysfs.read_all()
            return
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            failed: list[tuple[dict[str, str], OSError]] = []
            for action in reversed(self._undo):
                try:
                    run_undo(action)
                except OSError as exc:
                    failed.append((action, exc))
            self._undo = [action for action, _ in failed]
            self.stack.restore()
            self.settings_after = self.sysfs.read_all()
            self._active = False
            if failed:
                self._write_state()
                first, error = failed[0]
                raise UsageError(
                    f"THP settings restored, but could not {first['kind']} {first['path']}: "
                    f"{error.strerror}; run 'ptesim host restore'"
                )
            self.state_file.unlink(missing_ok=True)
        finally:
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)
            self._old_handlers.clear()
            self._release_lock()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def restore_saved_state(sysfs: ThpSysfs | None = None) -> str:
    """``ptesim host restore``: undo what a killed run left behind.  Returns a one-line report."""
    sysfs = sysfs or ThpSysfs()
    if not is_root():
        raise UsageError("restoring THP settings needs root")
    path = state_dir() / STATE_FILE_NAME
    d = state_dir()
    if not d.is_dir():
        return "nothing to restore: no saved THP settings"
    with (d / LOCK_FILE_NAME).open("a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            raise UsageError(
                f"a ptesim host run (pid {lock.read().strip()}) is active and restores its own settings"
            ) from None
        state = _read_state(path)
        if state is None:
            return "nothing to restore: no saved THP settings"
        root = Path(state.get("root", str(sysfs.root)))
        stack = SettingsStack(ThpSysfs(root))
        for action in reversed(state.get("undo", [])):
            run_undo(action)
        known = set(stack.sysfs.knobs())
        stack.saved = {k: str(v) for k, v in state["settings"].items() if k in known}
        changed = [k for k, v in stack.saved.items() if stack.sysfs.read(k) != v]
        stack.restore()
        path.unlink()
        return f"restored {len(changed)} THP knob(s) saved by pid {state.get('pid')}" + (
            f": {', '.join(changed)}" if changed else ""
        )


def quiescent_settings(sysfs: ThpSysfs | None = None, timeout: float = 120.0) -> Settings:
    """Every knob, read while no ptesim host run holds the settings (waits for one to finish).

    This is the value a run would save; tests compare it before and after to prove a restore.
    """
    sysfs = sysfs or ThpSysfs()
    d = state_dir()
    if not d.is_dir() or not is_root():
        return sysfs.read_all()
    deadline = time.monotonic() + timeout
    with (d / LOCK_FILE_NAME).open("a+") as lock:
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UsageError("another ptesim host run holds the THP settings") from None
                time.sleep(0.1)
        try:
            return sysfs.read_all()
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * (KiB if len(parts) > 1 else 1)
    return out
