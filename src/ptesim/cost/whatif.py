"""Which architectures benefit from batching PTEs during fork? (Andrew Morton's question on v2 01/14.)

For each configuration -- arm64 with 4K/16K/64K granules, with and without FEAT_TLBIRANGE and BBML2;
riscv with Svnapot and remote fences by IPI or by SBI; x86-64 -- the model runs the same workloads
on a kernel without and with the batching, and the cost model prices both with the configuration's
profile:

* will-it-scale "fork and exit" (per worker ``mem`` of ``folio``-sized folios), steady state: the
  change in summed iterations/s from batching, ``T_before / T_after - 1``, at each CPU count;
* one process forking a ``fork_mem`` mapping whose PTEs are writable (the first fork), on an idle
  machine: the change in fork latency, ``t_after / t_before - 1`` (negative = faster).

The kernels compared ("before" -> "after") differ in the batching alone: "after" is the mainline form
of each architecture's kernel, "before" is the same kernel with the core fork/zap batching switched
off (``fork_batch=none``, ``zap_batch=n``, no batch hints -- what the v6.8 core does: one
``copy_present_pte`` per PTE, one ``set_ptes(nr=1)`` per child entry):

* arm64: ``v6.9`` (PTE_CONT with the batched contpte API and automatic fold); with BBML2 also
  ``bbml2_aware=y`` (``contpte_convert`` elides its break-before-make flush, v6.17).  Without
  batching the child's blocks are folded from ``set_ptes(nr=1)`` on their last entry -- the seed's
  TLBI storm in its mainline form.  One extra row prices the seed's own pair
  (``contpte-v1-before-opt`` -> ``contpte-v1-after-opt``), on which ``altra`` was calibrated.
* riscv: ``v6.9-svnapot`` (Svnapot used transparently through the shared contpte layer, as Alexandre
  Ghiti proposed; not in mainline).  There is no upstream per-PTE Svnapot kernel, so the unbatched
  twin is the only baseline that isolates the batching.
* x86-64: ``v6.9``; unbatched it is ``v6.8`` (the v6.8 preset is exactly these flags).

Folios are the architecture's contiguous block size (64K for a 4K granule, 2M for 16K and 64K
granules, 64K Svnapot), so that the contiguous layer can be used at all.

:func:`whatif_op` answers the same question for the other batched operations, one process on an
idle machine (the latency of one operation over ``mem``), with the kernel that introduced the
batching as "after" and the kernel before it as "before" (:data:`OP_KERNELS`):

* ``munmap``: the zap batching of v6.9 (10ebac4f95e7), measured on v6.17 without and with the core
  batching (so that the x86 INVLPGB path and the BBML2 elision exist in both);
* ``mprotect``: v6.16 -> v6.17 (cac1db8c3aad, 7efa1cd5f89b; one r/rw toggle as Dev Jain measures);
* ``mremap``: v6.16 -> v6.17 (f822a9a81a31; one move of the whole mapping).

Rows: arm64 4K/16K/64K with and without FEAT_TLBIRANGE and BBML2 (v6.16 does not elide the
contpte_convert TLBI, v6.17 does: the "after" kernel brings both), riscv without Svnapot, riscv with
Svnapot (Yunhui Cui's 2026 what-if ``v7.0-svnapot``; for mprotect/mremap against the same layer on
a v6.16 core), x86-64 (``x86-host``) and x86-64 with
INVLPGB (``amd-invlpgb``), single-threaded and, for munmap and mprotect, with a thread of the
process on every CPU (the only case where v6.15's INVLPGB policy broadcasts).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ptesim.cost.intervals import LogInterval, log_interval
from ptesim.cost.model import Change, Work, change
from ptesim.cost.profile import Profile, load_profile
from ptesim.cost.runs import RunSpec, prefetch
from ptesim.errors import UsageError
from ptesim.units import format_size, parse_size
from ptesim.workloads.latency import latency_spec, latency_time
from ptesim.workloads.wis import wis_spec, work_of

_NO_BATCH = {"fork_batch": "none", "zap_batch": "n", "fpb_batch_hint": "n", "pte_batch_hint": "n"}


@dataclass(frozen=True)
class Config:
    label: str
    arch: str
    granule: int
    folio: int
    features: frozenset[str]
    profile: str
    before: tuple[str, tuple[tuple[str, str], ...]]  # preset, overrides
    after: tuple[str, tuple[tuple[str, str], ...]]


def _ov(d: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(d.items()))


def configs() -> list[Config]:
    out: list[Config] = [
        Config(
            "arm64 4K, seed kernels",
            "arm64",
            4096,
            64 << 10,
            frozenset(),
            "altra",
            ("contpte-v1-before-opt", ()),
            ("contpte-v1-after-opt", ()),
        )
    ]
    for granule, folio in ((4096, 64 << 10), (16384, 2 << 20), (65536, 2 << 20)):
        for feats in ((), ("tlbi-range",), ("bbml2",), ("tlbi-range", "bbml2")):
            fs = frozenset(feats)
            extra = {"bbml2_aware": "y"} if "bbml2" in fs else {}
            name = f"arm64 {format_size(granule)}" + "".join(f" +{f}" for f in feats)
            prof = "arm64-tlbirange" if "tlbi-range" in fs else "altra"
            out.append(
                Config(
                    name,
                    "arm64",
                    granule,
                    folio,
                    fs,
                    prof,
                    ("v6.9", _ov({**_NO_BATCH, **extra})),
                    ("v6.9", _ov(extra)),
                )
            )
    for feats, how in (((), "IPI"), (("sbi-rfence",), "SBI")):
        out.append(
            Config(
                f"riscv Svnapot ({how})",
                "riscv",
                4096,
                64 << 10,
                frozenset(feats),
                "riscv-generic",
                ("v6.9-svnapot", _ov(_NO_BATCH)),
                ("v6.9-svnapot", ()),
            )
        )
    out.append(
        Config(
            "x86-64", "x86", 4096, 64 << 10, frozenset(), "xeon-4210r", ("v6.9", _ov(_NO_BATCH)), ("v6.9", ())
        )
    )
    return out


@dataclass(frozen=True)
class Row:
    config: Config
    profile: Profile
    wis: list[Change]  # after vs before, per CPU count
    fork_change_pct: float
    fork_before_ms: float
    fork_after_ms: float
    wis_intervals: list[LogInterval] = dataclasses.field(default_factory=list)
    fork_interval: LogInterval | None = None


def _specs(c: Config, mem: int, fork_mem: int) -> tuple[RunSpec, RunSpec, RunSpec, RunSpec]:
    feats = sorted(c.features)
    wb, wa = (
        wis_spec(
            c.arch, k[0], folio=c.folio, mem=mem, granule=c.granule, cpu_features=feats, overrides=dict(k[1])
        )
        for k in (c.before, c.after)
    )
    fb = _fork_spec(c, c.before, fork_mem)
    fa = _fork_spec(c, c.after, fork_mem)
    return wb, wa, fb, fa


def _fork_spec(c: Config, which: tuple[str, tuple[tuple[str, str], ...]], mem: int) -> RunSpec:
    spec = latency_spec(
        "fork", c.arch, which[0], folio=c.folio, mem=mem, granule=c.granule, cpu_features=sorted(c.features)
    )
    return dataclasses.replace(spec, overrides=which[1])


def whatif(
    cpus: Sequence[int], *, mem: str = "128M", fork_mem: str = "1G", arches: Sequence[str] | None = None
) -> list[Row]:
    """Run every configuration (of ``arches``, default all; in parallel, cached) and price it."""
    m, fm = parse_size(mem, what="--mem"), parse_size(fork_mem, what="--fork-mem")
    cfgs = [c for c in configs() if arches is None or c.arch in arches]
    specs = {c.label: _specs(c, m, fm) for c in cfgs}
    prefetch([s for ss in specs.values() for s in ss])
    rows = []
    for c in cfgs:
        prof = load_profile(c.profile)
        wb, wa, fb, fa = specs[c.label]
        before, after = work_of(wb), work_of(wa)
        wis = [change(after.steady, before.steady, prof, n) for n in cpus]
        tb = latency_time(fb, prof).cycle_ns
        ta = latency_time(fa, prof).cycle_ns
        wis_iv = [log_interval(_wis_log(after.steady, before.steady, n), prof, "throughput") for n in cpus]
        fork_iv = log_interval(_fork_log(fb, fa), prof, "change")
        rows.append(Row(c, prof, wis, 100.0 * (ta / tb - 1.0), tb / 1e6, ta / 1e6, wis_iv, fork_iv))
    return rows


#: op -> (what introduced its batching, before kernel, after kernel); munmap's pair is today's kernel
#: (v6.17, so that INVLPGB and BBML2 exist) without and with the core batching, like fork's pair.
OP_KERNELS: dict[str, tuple[str, str, str]] = {
    "munmap": ("10ebac4f95e7 (v6.9) zap batching", "v6.17", "v6.17"),
    "mprotect": ("cac1db8c3aad + 7efa1cd5f89b (v6.17)", "v6.16", "v6.17"),
    "mremap": ("f822a9a81a31 (v6.17)", "v6.16", "v6.17"),
}
THREADED_OPS = {"munmap": "munmap-threads", "mprotect": "mprotect-threads"}


@dataclass(frozen=True)
class OpConfig:
    label: str
    arch: str
    granule: int
    folio: int
    features: frozenset[str]
    profile: str
    op: str  # the latency operation run (maybe a threaded form)
    before: tuple[str, tuple[tuple[str, str], ...]]
    after: tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class OpRow:
    config: OpConfig
    profile: Profile
    before_ms: float
    after_ms: float

    @property
    def change_pct(self) -> float:
        """Latency change from the batching (negative = faster)."""
        return 100.0 * (self.after_ms / self.before_ms - 1.0)


def op_configs(op: str) -> list[OpConfig]:
    """The configurations of :func:`whatif_op` for ``op`` (munmap, mprotect or mremap)."""
    if op not in OP_KERNELS:
        raise UsageError(f"whatif --op must be fork or one of {', '.join(OP_KERNELS)}, not {op!r}")
    _, pb, pa = OP_KERNELS[op]
    zap = op == "munmap"

    def pair(extra: dict[str, str]) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
        if zap:
            return (pb, _ov({**_NO_BATCH, **extra})), (pa, _ov(extra))
        return (pb, ()), (pa, ())

    out: list[OpConfig] = []
    for granule, folio in ((4096, 64 << 10), (16384, 2 << 20), (65536, 2 << 20)):
        for feats in ((), ("tlbi-range",), ("bbml2",), ("tlbi-range", "bbml2")):
            fs = frozenset(feats)
            extra: dict[str, str] = {}
            name = f"arm64 {format_size(granule)}" + "".join(f" +{f}" for f in feats)
            prof = "arm64-tlbirange" if "tlbi-range" in fs else "altra"
            b, a = pair(extra)
            out.append(OpConfig(name, "arm64", granule, folio, fs, prof, op, b, a))
    b, a = pair({})
    out.append(OpConfig("riscv (IPI)", "riscv", 4096, 64 << 10, frozenset(), "riscv-generic", op, b, a))
    if zap:
        nap_b = ("v7.0-svnapot", _ov(_NO_BATCH))
        nap_a = ("v7.0-svnapot", ())
        nap = "riscv Svnapot (2026 what-if)"
    else:
        nap_b = ("v6.16", _ov({"svnapot_thp": "y", "contpte_modify_prot": "n"}))
        nap_a = ("v7.0-svnapot", ())
        nap = "riscv Svnapot (2026 what-if)"
    out.append(OpConfig(nap, "riscv", 4096, 64 << 10, frozenset(), "riscv-generic", op, nap_b, nap_a))
    inv = frozenset({"invlpgb"})
    out.append(OpConfig("x86-64", "x86", 4096, 64 << 10, frozenset(), "x86-host", op, b, a))
    out.append(OpConfig("x86-64 +invlpgb", "x86", 4096, 64 << 10, inv, "amd-invlpgb", op, b, a))
    if op in THREADED_OPS:
        t_op = THREADED_OPS[op]
        out.append(OpConfig("x86-64, 4 threads", "x86", 4096, 64 << 10, frozenset(), "x86-host", t_op, b, a))
        out.append(
            OpConfig("x86-64 +invlpgb, 4 threads", "x86", 4096, 64 << 10, inv, "amd-invlpgb", t_op, b, a)
        )
    return out


def _op_spec(c: OpConfig, which: tuple[str, tuple[tuple[str, str], ...]], mem: int) -> RunSpec:
    spec = latency_spec(
        c.op, c.arch, which[0], folio=c.folio, mem=mem, granule=c.granule, cpu_features=sorted(c.features)
    )
    return dataclasses.replace(spec, overrides=which[1])


def whatif_op(op: str, *, mem: str = "64M", arches: Sequence[str] | None = None) -> list[OpRow]:
    """Price one ``op`` over ``mem`` per configuration (of ``arches``, default all), before and after
    its batching."""
    m = parse_size(mem, what="--mem")
    cfgs = [c for c in op_configs(op) if arches is None or c.arch in arches]
    biggest = max(c.folio for c in cfgs)
    if m < biggest:
        least = format_size(biggest)
        raise UsageError(f"whatif --op {op}: --mem must be at least {least} (the largest folio)")
    specs = {c.label: (_op_spec(c, c.before, m), _op_spec(c, c.after, m)) for c in cfgs}
    prefetch([s for pair in specs.values() for s in pair])
    rows = []
    for c in cfgs:
        prof = load_profile(c.profile)
        sb, sa = specs[c.label]
        rows.append(
            OpRow(c, prof, latency_time(sb, prof).cycle_ns / 1e6, latency_time(sa, prof).cycle_ns / 1e6)
        )
    return rows


def _wis_log(after: Work, before: Work, cpus: int) -> Callable[[Profile], float]:
    """ln of the throughput ratio after/before, as a function of the profile (for intervals)."""

    def f(p: Profile) -> float:
        return math.log1p(change(after, before, p, cpus).change_pct / 100.0)

    return f


def _fork_log(before: RunSpec, after: RunSpec) -> Callable[[Profile], float]:
    def f(p: Profile) -> float:
        return math.log(latency_time(after, p).cycle_ns / latency_time(before, p).cycle_ns)

    return f


def calibration_label(profile: Profile) -> str:
    """``altra: 4 calibrated (seed) / 46 assumed``."""
    params = profile.parameters()
    cal = [k for k in params if profile.is_calibrated(k)]
    sources = sorted({_source(profile.provenance[k]) for k in cal})
    what = f" ({', '.join(sources)})" if sources else ""
    return f"{profile.name}: {len(cal)} calibrated{what} / {len(params) - len(cal)} assumed"


def _source(prov: str) -> str:
    text = prov.removeprefix("calibrated:").strip().lower()
    if text.startswith("tables"):
        return "tables"
    if "seed" in text:
        return "seed"
    if "host" in text:
        return "host"
    return "fit"
