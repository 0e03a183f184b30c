"""Calibrating a profile from host-mode measurements (``ptesim host fork ... --json``).

A host run times one operation (fork, munmap, dontneed or cow) over a buffer of each folio size on
the real kernel (schema: docs/host.md).  The model runs the same operation on a mapping of the same
size and folio size with the kernel preset the profile names (``[profile] preset``), and
:func:`ptesim.cost.calibrate.fit` adjusts the chosen per-primitive costs so that the priced counts
match ``net_ms`` (the operation on the buffer alone).  Residuals are relative (% of the measurement),
so a 4K and a 2M fork weigh the same.

For fork the two costs that matter are the **per-PTE** cost and the **per-batch** cost.  In the
model's counts one ``mapcount`` atomic occurs per PTE-mapped page (``folio_try_dup_anon_rmap_ptes``
increments every page's ``_mapcount``) and one ``folio_ref`` atomic per batch
(``folio_ref_add(folio, nr)`` in ``copy_present_ptes``), so their prices carry the per-PTE and
per-batch work of the copy loop: the defaults fit ``local_ns.mapcount`` and ``local_ns.folio_ref``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ptesim.cost.calibrate import FitResult, LatencyCell, fit
from ptesim.cost.profile import Profile
from ptesim.cost.runs import prefetch
from ptesim.errors import UsageError
from ptesim.units import parse_size
from ptesim.workloads.latency import OPS, host_preset, latency_spec, latency_work

#: ``uname -m`` -> model architecture (as host mode's ``--compare-model`` maps it).
MODEL_ARCH = {"x86_64": "x86", "aarch64": "arm64", "arm64": "arm64", "riscv64": "riscv"}
#: Parameters fitted by default, by operation.
DEFAULT_FIT = {
    "fork": ("local_ns.mapcount", "local_ns.folio_ref"),
    "munmap": ("local_ns.mapcount", "local_ns.folio_ref"),
    "dontneed": ("local_ns.mapcount", "local_ns.folio_ref"),
    "cow": ("local_ns.page_copy", "local_ns.fault"),
}


def read_host_results(path: str) -> dict[str, Any]:
    """Load and check a host-mode JSON document (fork/munmap/dontneed/cow)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read host results {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected a JSON object from 'ptesim host <op> --json'")
    for key in ("arch", "op", "mem", "results"):
        if key not in doc:
            raise UsageError(f"{path}: missing {key!r} (expected the output of 'ptesim host <op> --json')")
    if doc["op"] not in OPS:
        raise UsageError(f"{path}: operation {doc['op']!r} cannot be calibrated (one of {', '.join(OPS)})")
    if not isinstance(doc["results"], list) or not doc["results"]:
        raise UsageError(f"{path}: 'results' must be a non-empty list")
    if not isinstance(doc["mem"], int) or doc["mem"] <= 0:
        raise UsageError(f"{path}: 'mem' must be a positive number of bytes")
    return doc


STATISTICS = ("median", "min")


def _measured(r: dict[str, Any], statistic: str = "median") -> float | None:
    """The operation's time on the buffer: ``net_ms`` (median less the measuring process's own
    fork), or with ``statistic="min"`` the fastest sample less the same baseline -- the better
    estimate of the uncontended cost when other work shares the machine."""
    if r.get("skipped"):
        return None
    if statistic == "min":
        lo, base = r.get("min_ms"), r.get("baseline_ms") or 0.0
        v = None if lo is None else float(lo) - float(base)
    else:
        v = r.get("net_ms")
        if v is None:
            v = r.get("median_ms")
    if v is None or not isinstance(v, int | float) or v <= 0:
        return None
    return float(v)


def host_cells(
    doc: dict[str, Any], profile: Profile, path: str = "", statistic: str = "median"
) -> list[LatencyCell]:
    """One :class:`LatencyCell` per timed size, with the model's counts for that size."""
    arch = MODEL_ARCH.get(str(doc["arch"]), str(doc["arch"]))
    if arch != profile.arch:
        raise UsageError(
            f"{path or 'host results'}: measured on {arch}, but profile {profile.name} is for {profile.arch}"
        )
    preset = host_preset(profile)
    timed = []
    for r in doc["results"]:
        if not isinstance(r, dict) or "size" not in r:
            raise UsageError(f"{path}: every result needs a 'size'")
        ms = _measured(r, statistic)
        if ms is not None:
            timed.append((str(r["size"]), ms))
    if not timed:
        raise UsageError(f"{path}: no size was timed (every result skipped or without net_ms)")
    specs = {
        size: latency_spec(doc["op"], arch, preset, folio=parse_size(size, what="folio size"), mem=doc["mem"])
        for size, _ in timed
    }
    prefetch(list(specs.values()))
    return [LatencyCell(f"{doc['op']} {size}", latency_work(specs[size]), ms) for size, ms in timed]


def fit_host(
    path: str,
    profile: Profile,
    names: Sequence[str] = (),
    *,
    holdout_sizes: Sequence[str] = (),
    statistic: str = "median",
    command: str = "",
) -> FitResult:
    """Fit ``names`` (default: the per-PTE and per-batch costs) to a host run's timings."""
    if statistic not in STATISTICS:
        raise UsageError(f"--statistic must be one of {', '.join(STATISTICS)} (got {statistic!r})")
    doc = read_host_results(path)
    cells = host_cells(doc, profile, path, statistic)
    held = {s.strip().upper() for s in holdout_sizes if s.strip()}
    known = {c.label.split()[1].upper() for c in cells}
    unknown = sorted(held - known)
    if unknown:
        raise UsageError(
            f"--holdout-sizes: {unknown[0]} was not timed in {path} (timed: {', '.join(sorted(known))})"
        )
    fit_names = list(names) or list(DEFAULT_FIT[doc["op"]])
    stat = "net median" if statistic == "median" else "fastest sample less the baseline"
    source = (
        f"host {doc['op']} timings ({stat}), {Path(path).name} (kernel {doc.get('kernel', '?')}, "
        f"{doc['mem'] // (1 << 20)} MiB, sizes {', '.join(sorted(known - held, key=parse_size))})"
    )
    if command:
        source += f", {command}"
    return fit(
        profile,
        fit_names,
        cells,
        holdout=lambda c: c.label.split()[1].upper() in held,
        source=source,
    )
