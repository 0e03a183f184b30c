"""Host measurements: fork, munmap, dontneed and COW latency per folio size, and will-it-scale.

For each folio size the driver here

1. pushes the THP settings that make anonymous faults allocate exactly that size
   (:func:`ptesim.host.sysfs.settings_for_size`), or, without root, keeps the current ones and notes
   which sizes could not be set;
2. starts the lean measuring process :mod:`ptesim.host.runner`, pinned to one CPU with
   ``sched_setaffinity``, which maps, populates and verifies the buffer
   (:func:`ptesim.host.pagemap.verify_backing`) before timing anything, and refuses to time a size
   whose backing is below the threshold;
3. counts ``tlb:tlb_flush`` by reason and ``/proc/vmstat``/mTHP ``stats/`` deltas around it;
4. pops the settings and computes median, min, max and the 95% confidence half-width of the mean
   (Student's t, ``scipy.stats.t``), keeping every sample.

The JSON objects built here are the stable script interface documented in ``docs/host.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ptesim.errors import UsageError
from ptesim.host import tracing
from ptesim.host.runner import TIMED_MARK
from ptesim.host.sysfs import (
    HostSession,
    Settings,
    ThpSysfs,
    is_root,
    meminfo,
    settings_for_size,
    size_dir_name,
)
from ptesim.progress import progress
from ptesim.units import format_size, parse_size

OPS: tuple[str, ...] = ("fork", "munmap", "dontneed", "cow")
MODEL_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv"}

Notify = Callable[[str], None]


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def kernel_release() -> str:
    return platform.release()


def machine() -> str:
    return platform.machine()


def supported_sizes(sysfs: ThpSysfs) -> list[int]:
    """Order 0 plus every size with an anonymous ``enabled`` file."""
    return [page_size(), *sysfs.mthp_sizes()]


def parse_sizes(text: str, sysfs: ThpSysfs) -> list[int]:
    """``4K,64K,2M`` or ``all``; each must be order 0 or an mTHP size this kernel offers."""
    supported = supported_sizes(sysfs)
    if text.strip().lower() == "all":
        return supported
    out: list[int] = []
    for part in text.split(","):
        size = parse_size(part, what="folio size")
        if size not in supported:
            raise UsageError(
                f"unsupported folio size {part.strip()}: this kernel offers "
                + ",".join(format_size(s) for s in supported)
                + (f" (no {size_dir_name(size)}/enabled)" if size > page_size() else "")
            )
        if size not in out:
            out.append(size)
    return sorted(out)


def check_memory(need: int, what: str) -> None:
    """Refuse a run that would take more than half of MemAvailable."""
    avail = meminfo().get("MemAvailable", 0)
    if need > avail // 2:
        raise UsageError(
            f"{what} needs {format_size(need)}, more than half of MemAvailable "
            f"({format_size(avail // (1 << 20) * (1 << 20))})"
        )


def check_mem_multiple(mem: int, sizes: list[int]) -> None:
    biggest = max(sizes)
    if mem < biggest or mem % biggest:
        raise UsageError(
            f"bad --mem {format_size(mem)}: must be a multiple of the largest folio size "
            f"{format_size(biggest)}"
        )


def pick_cpu(cpu: int | None) -> int:
    """The CPU to pin the measuring process to: the one asked for, else the last allowed one."""
    allowed = sorted(os.sched_getaffinity(0))
    if cpu is None:
        return allowed[-1]
    if cpu not in allowed:
        raise UsageError(f"bad --cpu {cpu}: allowed CPUs are {allowed}")
    return cpu


def summarize(samples_ms: list[float]) -> dict[str, float | None]:
    """Median, min, max and the 95% confidence half-width of the mean (t distribution)."""
    import numpy as np
    from scipy import stats

    a = np.asarray(samples_ms, dtype=float)
    if a.size == 0:
        return {"median_ms": None, "min_ms": None, "max_ms": None, "ci95_ms": None}
    ci: float | None = None
    if a.size >= 2:
        sem = float(stats.sem(a))
        lo, hi = stats.t.interval(0.95, a.size - 1, loc=float(a.mean()), scale=sem)
        ci = float(hi - lo) / 2 if sem > 0 else 0.0
    return {
        "median_ms": round(float(np.median(a)), 6),
        "min_ms": round(float(a.min()), 6),
        "max_ms": round(float(a.max()), 6),
        "ci95_ms": None if ci is None else round(ci, 6),
    }


def run_runner(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run :mod:`ptesim.host.runner` with ``spec``; kill and reap it on any exit path."""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptesim.host.runner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    except OSError as exc:
        raise UsageError(f"cannot start the measuring process {sys.executable}: {exc.strerror}") from None
    try:
        out, err = proc.communicate(json.dumps(dict(spec, parent=os.getpid())))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise UsageError(f"measurement failed: {last}")
    result: dict[str, Any] = json.loads(out)
    return result


@dataclass
class Plan:
    """What to measure; validated by :func:`plan`."""

    op: str
    sizes: list[int]
    mem: int
    reps: int
    warmup: int
    cpu: int
    mode: str
    threshold: float
    trace: bool
    reasons: list[str] | None


def plan(
    op: str,
    sizes: str,
    mem: str,
    *,
    reps: int = 10,
    warmup: int = 2,
    cpu: int | None = None,
    mode: str = "always",
    threshold: float = 90.0,
    trace: bool = True,
    reasons: str | None = None,
    sysfs: ThpSysfs | None = None,
) -> Plan:
    """Check every argument against this machine before anything is changed."""
    sysfs = sysfs or ThpSysfs()
    sysfs.require()
    if op not in OPS:
        raise UsageError(f"unknown host operation {op!r}: expected one of {', '.join(OPS)}")
    if reps < 1:
        raise UsageError(f"bad --reps {reps}: must be at least 1")
    if warmup < 0:
        raise UsageError(f"bad --warmup {warmup}: must be 0 or more")
    if not 0 <= threshold <= 100:
        raise UsageError(f"bad --threshold {threshold:g}: must be a percentage")
    if mode not in ("always", "madvise"):
        raise UsageError(f"bad --mode {mode!r}: expected always or madvise")
    size_list = parse_sizes(sizes, sysfs)
    nbytes = parse_size(mem, what="--mem")
    check_mem_multiple(nbytes, size_list)
    check_memory(2 * nbytes if op == "cow" else nbytes, f"host {op} --mem {format_size(nbytes)}")
    return Plan(
        op=op,
        sizes=size_list,
        mem=nbytes,
        reps=reps,
        warmup=warmup,
        cpu=pick_cpu(cpu),
        mode=mode,
        threshold=threshold,
        trace=trace,
        reasons=tracing.parse_reasons(reasons) if reasons else None,
    )


def _madvise_for(size: int, mode: str, session: HostSession) -> str | None:
    """The advice for the buffer: NOHUGEPAGE for 4K; HUGEPAGE in madvise mode, or, when the
    settings cannot be changed, wherever the current setting of the size is ``madvise``."""
    if size == page_size():
        return "nohugepage"
    if not session.writable and session.sysfs.effective_mode(size, page_size()) == "madvise":
        return "hugepage"
    return "hugepage" if mode == "madvise" else None


def _unsettable(sysfs: ThpSysfs, sizes: list[int], mode: str) -> list[str]:
    """Sizes whose required settings differ from the current ones (reported without root)."""
    current = sysfs.read_all()
    out = []
    for size in sizes:
        if size == page_size():
            continue  # MADV_NOHUGEPAGE gives order 0 whatever the settings
        want = settings_for_size(sysfs, size, page_size(), mode)
        if any(current.get(k) != v for k, v in want.items()):
            out.append(format_size(size))
    return out


def _header(session: HostSession, **extra: Any) -> dict[str, Any]:
    return {
        "kernel": kernel_release(),
        "arch": machine(),
        **extra,
        "root": session.writable,
        "page_size": page_size(),
    }


def _tlb_per_iter(counts: Mapping[str, int], iterations: int, reasons: list[str] | None) -> dict[str, float]:
    names = reasons or list(counts)
    return {r: round(counts.get(r, 0) / max(iterations, 1), 3) for r in names}


def measure(p: Plan, session: HostSession, notify: Notify | None = None) -> dict[str, Any]:
    """Run plan ``p`` inside an entered :class:`HostSession`; return the JSON object."""
    notify = notify or (lambda msg: None)
    sysfs = session.sysfs
    pmd = sysfs.pmd_size()
    unset = [] if session.writable else _unsettable(sysfs, p.sizes, p.mode)
    results: list[dict[str, Any]] = []
    trace_cm: contextlib.AbstractContextManager[tracing.TlbTrace | None] = (
        tracing.tlb_trace(session) if p.trace else contextlib.nullcontext(None)
    )
    with trace_cm as tr:
        for size in progress(p.sizes, f"host {p.op}"):
            name = format_size(size)
            notify(f"{p.op} {name}: {p.warmup} warm-up + {p.reps} timed on CPU {p.cpu}")
            spec = {
                "op": p.op,
                "mem": p.mem,
                "folio_size": size,
                "page_size": page_size(),
                "pmd_size": pmd,
                "madvise": _madvise_for(size, p.mode, session),
                "warmup": p.warmup,
                "reps": p.reps,
                "cpu": p.cpu,
                "threshold": p.threshold,
                "verify": True,
                "trace_instance": str(tr.instance) if tr else None,
            }
            if session.writable:
                session.push(settings_for_size(sysfs, size, page_size(), p.mode))
            try:
                vm0, st0 = tracing.vmstat(), sysfs.stats()
                if tr:
                    tr.clear()
                raw = run_runner(spec)
                vm1, st1 = tracing.vmstat(), sysfs.stats()
                tlb = base_tlb = None
                lost = 0
                if tr:
                    before, after = tr.counts(TIMED_MARK)
                    tlb = _tlb_per_iter(after, p.reps, p.reasons)
                    if p.op == "fork":
                        base_tlb = _tlb_per_iter(before, p.reps, p.reasons)
                    lost = tr.lost()
            finally:
                if session.writable:
                    session.pop()
            res = _result(name, raw, tlb, lost, vm0, vm1, st0, st1, size in pmd_sizes(pmd))
            res["baseline_tlb_flush_events"] = base_tlb
            results.append(res)
    return {
        **_header(
            session,
            op=p.op,
            mem=p.mem,
            cpu=p.cpu,
            reps=p.reps,
            warmup=p.warmup,
            mode=p.mode,
            threshold_pct=p.threshold,
        ),
        "results": results,
        "unset_sizes": unset,
        "settings_before": session.settings_before,
        "settings_after": None,  # filled in by finish() once the session has restored
    }


def pmd_sizes(pmd: int) -> tuple[int, ...]:
    return (pmd,) if pmd else ()


def _result(
    name: str,
    raw: Mapping[str, Any],
    tlb: dict[str, float] | None,
    lost: int,
    vm0: Mapping[str, int],
    vm1: Mapping[str, int],
    st0: Mapping[str, Mapping[str, int]],
    st1: Mapping[str, Mapping[str, int]],
    is_pmd: bool,
) -> dict[str, Any]:
    samples = [ns / 1e6 for ns in raw.get("samples_ns", [])]
    baseline = [ns / 1e6 for ns in raw.get("baseline_ns", [])]
    backing = raw.get("backing") or {}
    summary = summarize(samples)
    base_med = summarize(baseline)["median_ms"] if baseline else None
    med = summary["median_ms"]
    net = None if med is None else round(med - (base_med or 0.0), 6)
    stats_delta = {size: d for size in st1 if (d := tracing.delta(st0.get(size, {}), st1[size]))}
    return {
        "size": name,
        "backing_pct": backing.get("pct"),
        "pmd_mapped_pct": backing.get("pmd_mapped_pct") if is_pmd else None,
        "backing_verified": bool(backing.get("verified")),
        **summary,
        "samples_ms": [round(s, 6) for s in samples],
        "baseline_ms": base_med,
        "net_ms": net,
        "tlb_flush_events": tlb,
        "tlb_events_lost": lost,
        "vmstat_delta": tracing.delta(vm0, vm1),
        "thp_stats_delta": stats_delta,
        "skipped": raw.get("skipped"),
    }


def finish(doc: dict[str, Any], session: HostSession) -> dict[str, Any]:
    """Add ``settings_after`` (read after the session restored and verified everything)."""
    doc["settings_after"] = session.settings_after
    return doc


# ----------------------------------------------------------------------------------------------
# will-it-scale "fork and exit"


@dataclass
class WisPlan:
    size: int
    mem: int
    cpus: list[int]
    duration: float
    mode: str
    threshold: float
    trace: bool


def wis_plan(
    size: str,
    mem: str,
    cpus: list[int],
    *,
    duration: float = 5.0,
    mode: str = "always",
    threshold: float = 90.0,
    trace: bool = True,
    sysfs: ThpSysfs | None = None,
) -> WisPlan:
    sysfs = sysfs or ThpSysfs()
    sysfs.require()
    sizes = parse_sizes(size, sysfs)
    if len(sizes) != 1:
        raise UsageError(f"bad --size {size!r}: wis takes one folio size")
    nbytes = parse_size(mem, what="--mem")
    check_mem_multiple(nbytes, sizes)
    if duration <= 0:
        raise UsageError(f"bad --duration {duration:g}: must be positive")
    if mode not in ("always", "madvise"):
        raise UsageError(f"bad --mode {mode!r}: expected always or madvise")
    allowed = len(os.sched_getaffinity(0))
    if max(cpus) > allowed:
        raise UsageError(f"bad --cpus: {max(cpus)} workers but only {allowed} CPUs are allowed")
    check_memory(nbytes * max(cpus), f"host wis with {max(cpus)} workers of {format_size(nbytes)}")
    return WisPlan(sizes[0], nbytes, cpus, duration, mode, threshold, trace)


def measure_wis(p: WisPlan, session: HostSession, notify: Notify | None = None) -> dict[str, Any]:
    """For each worker count: N pinned processes fork-and-exit for ``duration`` seconds."""
    notify = notify or (lambda msg: None)
    sysfs = session.sysfs
    allowed = sorted(os.sched_getaffinity(0))
    unset = [] if session.writable else _unsettable(sysfs, [p.size], p.mode)
    results: list[dict[str, Any]] = []
    backing: dict[str, Any] | None = None
    skipped: str | None = None
    trace_cm: contextlib.AbstractContextManager[tracing.TlbTrace | None] = (
        tracing.tlb_trace(session) if p.trace else contextlib.nullcontext(None)
    )
    if session.writable:
        session.push(settings_for_size(sysfs, p.size, page_size(), p.mode))
    try:
        with trace_cm as tr:
            for n in progress(p.cpus, "host wis"):
                notify(f"wis {format_size(p.size)}: {n} worker(s) for {p.duration:g}s")
                spec = {
                    "op": "wis",
                    "mem": p.mem,
                    "folio_size": p.size,
                    "page_size": page_size(),
                    "pmd_size": sysfs.pmd_size(),
                    "madvise": _madvise_for(p.size, p.mode, session),
                    "workers": n,
                    "cpus": allowed[:n],
                    "duration": p.duration,
                    "threshold": p.threshold,
                    "verify": True,
                    "trace_instance": str(tr.instance) if tr else None,
                }
                if tr:
                    tr.clear()
                raw = run_runner(spec)
                backing = raw.get("backing") or backing
                if raw.get("skipped"):
                    skipped = raw["skipped"]
                    break
                per = [round(x, 3) for x in raw["per_worker"]]
                tlb = None
                if tr:
                    tlb = _tlb_per_iter(tr.counts()[1], raw.get("iterations", 0), None)
                results.append(
                    {
                        "cpus": n,
                        "iterations_per_s": round(sum(per), 3),
                        "per_worker": per,
                        "iterations": raw.get("iterations"),
                        "tlb_flush_events": tlb,
                        "tlb_events_lost": tr.lost() if tr else 0,
                    }
                )
    finally:
        if session.writable:
            session.pop()
    return {
        **_header(
            session,
            op="wis",
            size=format_size(p.size),
            mem=p.mem,
            duration_s=p.duration,
            mode=p.mode,
            threshold_pct=p.threshold,
        ),
        "backing_pct": (backing or {}).get("pct"),
        "skipped": skipped,
        "results": results,
        "unset_sizes": unset,
        "settings_before": session.settings_before,
        "settings_after": None,
    }


# ----------------------------------------------------------------------------------------------
# Discovery and model comparison


def info(sysfs: ThpSysfs | None = None) -> dict[str, Any]:
    """The facts of ``ptesim host info``."""
    from ptesim.host.sysfs import STATE_FILE_NAME, state_dir

    sysfs = sysfs or ThpSysfs()
    thp = sysfs.available()
    sizes: list[dict[str, Any]] = []
    settings: Settings = {}
    if thp:
        settings = sysfs.read_all()
        for size, name in sysfs.mthp_sizes().items():
            sizes.append(
                {
                    "size": format_size(size),
                    "dir": name,
                    "enabled": settings.get(f"{name}/enabled"),
                    "shmem_enabled": settings.get(f"{name}/shmem_enabled"),
                    "effective": sysfs.effective_mode(size, page_size()),
                    "pmd": size == sysfs.pmd_size(),
                }
            )
    leftover = state_dir() / STATE_FILE_NAME
    return {
        "kernel": kernel_release(),
        "arch": machine(),
        "cpus": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "page_size": page_size(),
        "pmd_size": sysfs.pmd_size() if thp else None,
        "root": is_root(),
        "thp_available": thp,
        "enabled": settings.get("enabled"),
        "defrag": settings.get("defrag"),
        "shmem_enabled": settings.get("shmem_enabled"),
        "sizes": sizes,
        "sizes_without_enabled": [format_size(s) for s in sysfs.sizes_without_enabled()] if thp else [],
        "khugepaged": {k.split("/", 1)[1]: v for k, v in settings.items() if k.startswith("khugepaged/")},
        "settings": settings,
        "stats": sysfs.stats() if thp else {},
        "vmstat": tracing.vmstat(),
        "tlb_flush_tracepoint": tracing.tlb_event_status(),
        "mem_available": meminfo().get("MemAvailable"),
        "leftover_saved_state": str(leftover) if leftover.exists() else None,
    }


def load_model() -> Callable[[str, str, str, str, int], float | None]:
    """``ptesim.workloads.latency.predict(op, arch, profile, size, mem) -> ms``, imported lazily."""
    try:
        latency = importlib.import_module("ptesim.workloads.latency")
    except ImportError as exc:
        raise UsageError(f"model comparison unavailable: {exc}") from None
    predict = getattr(latency, "predict", None)
    if not callable(predict):
        raise UsageError("model comparison unavailable: ptesim.workloads.latency has no predict()")
    fn: Callable[[str, str, str, str, int], float | None] = predict
    return fn


def compare_model(doc: dict[str, Any], profile: str) -> None:
    """Add ``model_ms`` and ``model_error_pct`` to each result, from the model's latency workload.

    The model predicts the cost of the operation on the buffer alone, so a fork is compared with
    ``net_ms`` (the runner's own fork baseline taken off).
    """
    predict = load_model()
    arch = MODEL_ARCH.get(doc["arch"], doc["arch"])
    doc["model"] = {"profile": profile, "arch": arch}
    for r in doc["results"]:
        measured = r.get("net_ms")
        try:
            predicted = predict(doc["op"], arch, profile, r["size"], doc["mem"])
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"model comparison unavailable: {exc}") from None
        r["model_ms"] = None if predicted is None else round(float(predicted), 6)
        r["model_error_pct"] = (
            round(100.0 * (float(predicted) - measured) / measured, 2)
            if predicted is not None and measured
            else None
        )
