"""The measuring process: ``python -m ptesim.host.runner`` reads a JSON spec on stdin, prints JSON.

It is a separate, small process on purpose.  fork() copies the page tables of every anonymous mapping
of the parent, so timing fork() from a process that has loaded numpy, scipy and rich would add several
milliseconds of the interpreter's own heap to every sample; this process imports only the standard
library (and :mod:`ptesim.host.pagemap`), so its own fork costs a few hundred microseconds, which is
measured separately as a baseline.

Operations, each on a fresh buffer of ``mem`` bytes mapped MAP_PRIVATE|MAP_ANONYMOUS, aligned to the
folio size, MADV_HUGEPAGE'd (or MADV_NOHUGEPAGE'd for 4K) as asked and written once per base page
(nothing of this is timed):

* ``fork``: the time of ``os.fork()`` in the parent (``kernel/fork.c:dup_mmap`` →
  ``mm/memory.c:copy_page_range``).  The child closes its end of a pipe and blocks on it, so its exit
  (and the teardown of its copy) happens after the parent has read the clock;
* ``munmap``: ``munmap()`` of the whole buffer (``mm/vma.c`` → ``unmap_vmas`` → ``zap_pte_range``);
* ``dontneed``: ``madvise(MADV_DONTNEED)`` of the whole buffer (``mm/madvise.c`` → ``zap_page_range``);
* ``cow``: after a fork whose child stays alive, the parent writes one byte per base page, taking a
  write-protect fault on each (``mm/memory.c:do_wp_page`` → ``wp_page_copy``);
* ``wis``: will-it-scale "fork and exit": N pinned workers, each with its own buffer, call fork() in a
  loop for a fixed duration; the child exits at once and the worker reaps it.

Nothing is left behind: every child is reaped, workers die with their parent (PR_SET_PDEATHSIG), and
so does this process if the ptesim that started it goes away.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import signal
import sys
import time
from typing import Any

from ptesim.host.pagemap import verify_backing

TIMED_MARK = "ptesim-timed-phase"
PR_SET_PDEATHSIG = 1
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_MAP_FAILED = ctypes.c_void_p(-1).value


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL): this process goes when its parent goes."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")


class Buffer:
    """An anonymous private mapping aligned to ``align`` (over-map, then trim both ends)."""

    def __init__(self, length: int, align: int) -> None:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        raw = _libc.mmap(None, length + align, prot, flags, -1, 0)
        if raw is None or raw == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap {length} bytes: {os.strerror(err)}")
        addr = (raw + align - 1) // align * align
        if addr > raw:
            _check(_libc.munmap(raw, addr - raw), "munmap head")
        tail = raw + length + align - (addr + length)
        if tail:
            _check(_libc.munmap(addr + length, tail), "munmap tail")
        self.addr = addr
        self.length = length
        self.mapped = True

    def madvise(self, advice: int) -> None:
        _check(_libc.madvise(self.addr, self.length, advice), "madvise")

    def populate(self) -> None:
        ctypes.memset(self.addr, 1, self.length)

    def touch_pages(self, page_size: int) -> None:
        """Write one byte in every base page (one C loop, no Python per page)."""
        view = memoryview((ctypes.c_char * self.length).from_address(self.addr)).cast("B")
        view[::page_size] = b"\x02" * (self.length // page_size)
        view.release()

    def unmap(self) -> None:
        if self.mapped:
            _check(_libc.munmap(self.addr, self.length), "munmap")
            self.mapped = False


class Tracer:
    """Switches a tracefs instance's ``tracing_on`` around each timed operation.

    :meth:`mark` writes :data:`TIMED_MARK` into the instance's ``trace_marker`` so that events of the
    baseline phase (before the mark) and of the timed phase (after it) can be told apart.
    """

    def __init__(self, instance: str | None) -> None:
        self.fd = os.open(os.path.join(instance, "tracing_on"), os.O_WRONLY) if instance else -1
        self.instance = instance

    def on(self) -> None:
        if self.fd >= 0:
            os.write(self.fd, b"1")

    def off(self) -> None:
        if self.fd >= 0:
            os.write(self.fd, b"0")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def mark(self) -> None:
        if self.instance:
            self.on()
            with open(os.path.join(self.instance, "trace_marker"), "w") as f:
                f.write(TIMED_MARK)
            self.off()


def _prepare(spec: dict[str, Any]) -> Buffer:
    buf = Buffer(spec["mem"], max(spec["folio_size"], spec["page_size"]))
    if spec.get("madvise") == "hugepage":
        buf.madvise(MADV_HUGEPAGE)
    elif spec.get("madvise") == "nohugepage":
        buf.madvise(MADV_NOHUGEPAGE)
    buf.populate()
    return buf


def _verify(spec: dict[str, Any], buf: Buffer) -> dict[str, Any]:
    return verify_backing(
        buf.addr, buf.length, spec["folio_size"], spec["page_size"], spec["pmd_size"]
    ).as_dict()


def _child_wait(r: int, w: int, tracer: Tracer) -> None:
    """In a forked child: drop what it inherited, block until released, exit."""
    try:
        os.close(w)
        tracer.close()
        os.read(r, 1)
    finally:
        os._exit(0)


def _fork_blocked(tracer: Tracer) -> tuple[int, int]:
    """fork(); the child blocks on a pipe until released.  Returns (pid, write end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child_wait(r, w, tracer)
    os.close(r)
    return pid, w


def _release(pid: int, w: int) -> None:
    os.close(w)
    os.waitpid(pid, 0)


def _time_fork(tracer: Tracer) -> int:
    r, w = os.pipe()
    tracer.on()
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        _child_wait(r, w, tracer)
    t1 = time.perf_counter_ns()
    tracer.off()
    os.close(r)
    _release(pid, w)
    return t1 - t0


def _one(spec: dict[str, Any], buf: Buffer, tracer: Tracer) -> int:
    op = spec["op"]
    if op == "fork":
        return _time_fork(tracer)
    if op == "munmap":
        tracer.on()
        t0 = time.perf_counter_ns()
        _check(_libc.munmap(buf.addr, buf.length), "munmap")
        t1 = time.perf_counter_ns()
        tracer.off()
        buf.mapped = False
        return t1 - t0
    if op == "dontneed":
        tracer.on()
        t0 = time.perf_counter_ns()
        _check(_libc.madvise(buf.addr, buf.length, MADV_DONTNEED), "madvise")
        t1 = time.perf_counter_ns()
        tracer.off()
        return t1 - t0
    if op == "cow":
        pid, w = _fork_blocked(tracer)
        try:
            tracer.on()
            t0 = time.perf_counter_ns()
            buf.touch_pages(spec["page_size"])
            t1 = time.perf_counter_ns()
            tracer.off()
        finally:
            _release(pid, w)
        return t1 - t0
    raise ValueError(f"unknown op {op!r}")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up, verify the backing of the first buffer, then ``reps`` timed iterations."""
    tracer = Tracer(spec.get("trace_instance"))
    out: dict[str, Any] = {"backing": None, "samples_ns": [], "baseline_ns": [], "skipped": None}
    if spec["op"] == "fork":
        for i in range(spec["warmup"] + spec["reps"]):
            ns = _time_fork(tracer if i >= spec["warmup"] else Tracer(None))
            if i >= spec["warmup"]:
                out["baseline_ns"].append(ns)
    tracer.mark()
    for i in range(spec["warmup"] + spec["reps"]):
        buf = _prepare(spec)
        try:
            if i == 0 and spec.get("verify", True):
                out["backing"] = backing = _verify(spec, buf)
                pct = backing["pct"]
                if pct is not None and pct < spec["threshold"]:
                    out["skipped"] = (
                        f"backing {pct:.1f}% < {spec['threshold']:g}% threshold; no timing reported"
                    )
                    return out
            ns = _one(spec, buf, tracer if i >= spec["warmup"] else Tracer(None))
        finally:
            buf.unmap()
        if i >= spec["warmup"]:
            out["samples_ns"].append(ns)
    return out


def _worker(spec: dict[str, Any], cpu: int | None, ready: int, go: int, result: int) -> None:
    """One will-it-scale process: own buffer, then fork-and-exit until the deadline."""
    die_with_parent()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    buf = _prepare(spec)
    backing = _verify(spec, buf) if spec.get("verify") else None
    os.write(ready, (json.dumps(backing) + "\n").encode())
    os.close(ready)
    os.read(go, 1)
    duration_ns = int(spec["duration"] * 1e9)
    n = 0
    t0 = time.perf_counter_ns()
    deadline = t0 + duration_ns
    now = t0
    while now < deadline:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        n += 1
        now = time.perf_counter_ns()
    os.write(result, f"{n} {now - t0}\n".encode())
    buf.unmap()


def wis(spec: dict[str, Any]) -> dict[str, Any]:
    """Start ``workers`` processes, release them together, collect iterations per second each."""
    n = spec["workers"]
    cpus: list[int] = spec.get("cpus") or []
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    res_r, res_w = os.pipe()
    pids: list[int] = []
    try:
        for i in range(n):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for fd in (ready_r, go_w, res_r):
                        os.close(fd)
                    wspec = dict(spec, verify=spec.get("verify") and i == 0)
                    _worker(wspec, cpus[i % len(cpus)] if cpus else None, ready_w, go_r, res_w)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            pids.append(pid)
        for fd in (ready_w, go_r, res_w):
            os.close(fd)
        ready_w = go_r = res_w = -1
        backing = None
        with os.fdopen(ready_r, "r", closefd=False) as f:
            for i in range(n):
                line = f.readline()
                if not line:
                    raise RuntimeError("a will-it-scale worker failed while preparing its buffer")
                if i == 0 or backing is None:
                    backing = json.loads(line)
        if backing and backing["pct"] is not None and backing["pct"] < spec["threshold"]:
            return {
                "backing": backing,
                "per_worker": [],
                "skipped": f"backing {backing['pct']:.1f}% < {spec['threshold']:g}% threshold",
            }
        tracer = Tracer(spec.get("trace_instance"))
        tracer.on()
        os.write(go_w, b"g" * n)
        per_worker: list[float] = []
        iterations = 0
        try:
            with os.fdopen(res_r, "r", closefd=False) as f:
                for _ in range(n):
                    line = f.readline()
                    if not line:
                        raise RuntimeError("a will-it-scale worker died")
                    count, ns = (int(x) for x in line.split())
                    iterations += count
                    per_worker.append(count * 1e9 / ns if ns else 0.0)
        finally:
            tracer.off()
        return {
            "backing": backing,
            "per_worker": per_worker,
            "iterations": iterations,
            "skipped": None,
        }
    finally:
        for fd in (ready_r, ready_w, go_r, go_w, res_r, res_w):
            if fd >= 0:
                os.close(fd)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    spec: dict[str, Any] = json.loads(sys.stdin.read())
    die_with_parent()
    if spec.get("parent") and os.getppid() != spec["parent"]:
        return 1
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {spec["cpu"]})
    result = wis(spec) if spec["op"] == "wis" else measure(spec)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
