"""Cost profiles: nanoseconds per counted primitive, process costs, and the shared invalidation path.

A profile is data (TOML, read with :mod:`tomllib`) and is validated on load: an unknown section or key,
a value of the wrong type, a negative number or a missing required value is a
:class:`~ptesim.errors.UsageError` with a one-line message.  Profiles ship in ``ptesim/cost/profiles``
and are found by name (``altra``); any other argument containing ``/`` or ending in ``.toml`` is read
as a path.

Layout of a profile file::

    [profile]       name, arch ("arm64" | "x86" | "riscv"), description, cpu_features (list of strings),
                    optionally preset (the kernel preset of the machine, used by latency predictions)
    [local_ns]      CPU-local nanoseconds per fine primitive of :data:`ptesim.events.PRIMITIVES`
                    (every primitive must be priced; the issue cost of a TLBI, the local part of a DSB)
    [process_ns]    fork, exit: fixed per-process costs (task/mm/VMA duplication, scheduling, waitpid)
    [shared]        the resource every broadcast invalidation goes through:
                    resource ("dvm" | "ipi" | "sbi" | "invlpgb"), occupancy in ns per broadcast primitive
                    (service_ns table), scv (squared coefficient of variation of one visit's service
                    time), sync_per_active_cpu_ns (extra occupancy of each completion wait per other
                    CPU running a worker: a DSB ISH / IPI wait completes only when every CPU has
                    answered, and busy CPUs answer later than idle ones), active_cpu_cap (the number
                    of other busy CPUs beyond which the stretch stops growing)
    [provenance]    "section.key" = "calibrated: ..." | "assumed: ..." for every number above
    [bounds]        optional: "section.key" = {lo = x, hi = y, source = "..."} -- the physical range of
                    a value (ns; for `[profile] clock_ghz` profiles also {cycles = [a, b], ...}),
                    which a fit cannot leave; the shipped profiles give one for every value
    [fit]           optional, written by `ptesim calibrate --tables`: parameters (the fitted names),
                    covariance (of their natural logarithms), residual_sd (of the fitted cells, on
                    the log scale of ptesim.cost.tables), tables (fitted table ids), held_out (table
                    ids or cell ids left out), command; with --cross-validate also the between-table
                    discrepancy of ptesim.cost.discrepancy: discrepancy_sd (log scale),
                    discrepancy_df (its degrees of freedom), discrepancy_from ("machine/table" of
                    the leave-one-table-out residuals it was estimated from)

The ``[provenance]`` table is required for every numeric value so that reports can say which numbers
were fitted and which were assumed.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ptesim.cost.contention import MAX_SCV
from ptesim.errors import UsageError
from ptesim.events import PRIMITIVES

ARCHES = ("arm64", "x86", "riscv")
RESOURCES = ("dvm", "ipi", "sbi", "invlpgb")
#: Primitives that occupy the shared invalidation resource.
SHARED_PRIMITIVES = (
    "tlbi_page_bcast",
    "tlbi_range_bcast",
    "tlbi_asid_bcast",
    "tlbi_all_bcast",
    "invlpgb",
    "invlpgb_pcid",
    "tlbsync",
    "dsb_ish",
    "ipi",
    "sbi_rfence",
    "sbi_rfence_target",
)
#: Primitives that end one visit to the shared resource (the issuer waits for completion there).
SYNC_PRIMITIVES = ("dsb_ish", "ipi", "sbi_rfence", "tlbsync")

_SECTIONS = ("profile", "local_ns", "process_ns", "shared", "provenance")
_OPTIONAL_SECTIONS = ("bounds", "fit")
_PROFILE_KEYS = {"name": str, "arch": str, "description": str, "cpu_features": list}
_PROFILE_OPTIONAL = {"preset": str, "clock_ghz": float}
_PROCESS_KEYS = ("fork", "exit")
_SHARED_SCALARS = ("scv", "sync_per_active_cpu_ns", "active_cpu_cap")


@dataclass(frozen=True)
class SharedResource:
    """The shared broadcast-invalidation path (arm64 DVM, x86 IPI delivery, riscv SBI/IPI)."""

    resource: str
    service_ns: dict[str, float]
    scv: float
    sync_per_active_cpu_ns: float
    active_cpu_cap: float


@dataclass(frozen=True)
class Bound:
    """The physical range of one parameter, in ns (or the parameter's own unit), and its source."""

    lo: float
    hi: float
    source: str


@dataclass(frozen=True)
class FitInfo:
    """What a table fit left in the profile: enough to give every prediction an interval."""

    parameters: tuple[str, ...]
    covariance: tuple[tuple[float, ...], ...]  # of ln(parameter)
    residual_sd: float  # of the fitted cells, log scale
    tables: tuple[str, ...]
    held_out: tuple[str, ...]
    command: str = ""
    #: Between-table model discrepancy (log scale) added to predictions of cells the fit did not see
    #: (roles ``held-out`` and ``unseen``), estimated from leave-one-table-out residuals
    #: (:mod:`ptesim.cost.discrepancy`); 0 when the fit was not cross-validated.
    discrepancy_sd: float = 0.0
    discrepancy_df: int = 0
    discrepancy_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A validated cost profile."""

    name: str
    arch: str
    description: str
    cpu_features: frozenset[str]
    local_ns: dict[str, float]
    process_ns: dict[str, float]
    shared: SharedResource
    provenance: dict[str, str] = field(default_factory=dict)
    source: str = ""
    preset: str = ""
    clock_ghz: float = 0.0
    bounds: dict[str, Bound] = field(default_factory=dict)
    fit: FitInfo | None = None

    # -- parameters by dotted name, for calibration and `whatif` labels ------------------------
    def parameters(self) -> dict[str, float]:
        """Every numeric value by its dotted name (``local_ns.pte_read``, ``shared.scv`` …)."""
        out: dict[str, float] = {}
        for k, v in self.local_ns.items():
            out[f"local_ns.{k}"] = v
        for k, v in self.process_ns.items():
            out[f"process_ns.{k}"] = v
        for k, v in self.shared.service_ns.items():
            out[f"shared.service_ns.{k}"] = v
        out["shared.scv"] = self.shared.scv
        out["shared.sync_per_active_cpu_ns"] = self.shared.sync_per_active_cpu_ns
        out["shared.active_cpu_cap"] = self.shared.active_cpu_cap
        return out

    def get(self, name: str) -> float:
        params = self.parameters()
        key = resolve_parameter(name, params)
        return params[key]

    def with_values(self, values: Mapping[str, float]) -> Profile:
        """A copy with some parameters replaced (names as in :meth:`parameters`, or short aliases)."""
        params = self.parameters()
        local = dict(self.local_ns)
        process = dict(self.process_ns)
        service = dict(self.shared.service_ns)
        scv = self.shared.scv
        sync = self.shared.sync_per_active_cpu_ns
        cap = self.shared.active_cpu_cap
        for name, value in values.items():
            key = resolve_parameter(name, params)
            v = float(value)
            if v < 0:
                raise UsageError(f"parameter {key} must not be negative (got {v})")
            section, _, rest = key.partition(".")
            if section == "local_ns":
                local[rest] = v
            elif section == "process_ns":
                process[rest] = v
            elif rest.startswith("service_ns."):
                service[rest.removeprefix("service_ns.")] = v
            elif rest == "scv":
                scv = v
            elif rest == "active_cpu_cap":
                cap = v
            else:
                sync = v
        return Profile(
            name=self.name,
            arch=self.arch,
            description=self.description,
            cpu_features=self.cpu_features,
            local_ns=local,
            process_ns=process,
            shared=SharedResource(self.shared.resource, service, scv, sync, cap),
            provenance=dict(self.provenance),
            source=self.source,
            preset=self.preset,
            clock_ghz=self.clock_ghz,
            bounds=dict(self.bounds),
            fit=self.fit,
        )

    def is_calibrated(self, name: str) -> bool:
        return self.provenance.get(resolve_parameter(name, self.parameters()), "").startswith("calibrated")


#: Short names accepted on the command line.
ALIASES = {
    "dvm_service_ns": "shared.service_ns.tlbi_page_bcast",
    "tlbi_service_ns": "shared.service_ns.tlbi_page_bcast",
    "sync_service_ns": "shared.service_ns.dsb_ish",
    "ipi_service_ns": "shared.service_ns.ipi",
    "sbi_service_ns": "shared.service_ns.sbi_rfence",
    "scv": "shared.scv",
    "dvm_scv": "shared.scv",
    "sync_per_active_cpu_ns": "shared.sync_per_active_cpu_ns",
    "active_cpu_cap": "shared.active_cpu_cap",
    "k": "shared.active_cpu_cap",
    "fork_ns": "process_ns.fork",
    "exit_ns": "process_ns.exit",
}


def resolve_parameter(name: str, params: Mapping[str, float]) -> str:
    """Map a user-supplied parameter name to its dotted profile name.

    Accepts the dotted name, an alias from :data:`ALIASES`, a bare primitive name (``pte_read``), or
    ``<primitive>_ns`` (``pte_read_ns`` = ``local_ns.pte_read``)."""
    if name in params:
        return name
    if name in ALIASES:
        return ALIASES[name]
    for cand in (f"local_ns.{name}", f"local_ns.{name.removesuffix('_ns')}"):
        if cand in params:
            return cand
    raise UsageError(f"unknown profile parameter {name!r} (try e.g. pte_read_ns, dvm_service_ns, scv)")


# -- loading -------------------------------------------------------------------------------------


def _num(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if v < 0:
        raise UsageError(f"{where}: must not be negative (got {value})")
    if v != v or v == float("inf"):
        raise UsageError(f"{where}: must be finite")
    return v


def _numbers(
    where: str, section: str, raw: object, keys: Iterable[str], unknown_hint: str = ""
) -> dict[str, float]:
    """A table of exactly ``keys``, each a valid number: unknown and missing keys are errors."""
    table = _table(f"{where} [{section}]", raw)
    wanted = list(keys)
    for k in table:
        if k not in wanted:
            raise UsageError(f"{where}: unknown key {section}.{k}{unknown_hint}")
    out: dict[str, float] = {}
    for k in wanted:
        if k not in table:
            raise UsageError(f"{where}: missing {section}.{k}")
        out[k] = _num(f"{where}: {section}.{k}", table[k])
    return out


def _table(where: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected a table")
    return value


def profile_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Profile:
    """Validate a parsed TOML document and build a :class:`Profile`."""
    where = source
    for sec in data:
        if sec not in _SECTIONS and sec not in _OPTIONAL_SECTIONS:
            known = ", ".join(_SECTIONS + _OPTIONAL_SECTIONS)
            raise UsageError(f"{where}: unknown section [{sec}] (expected one of {known})")
    for sec in _SECTIONS:
        if sec not in data:
            raise UsageError(f"{where}: missing section [{sec}]")
    prof = _table(f"{where} [profile]", data["profile"])
    for k in prof:
        if k not in _PROFILE_KEYS and k not in _PROFILE_OPTIONAL:
            raise UsageError(f"{where}: unknown key profile.{k}")
    for k, typ in _PROFILE_KEYS.items():
        if k not in prof:
            raise UsageError(f"{where}: missing profile.{k}")
        if not isinstance(prof[k], typ):
            raise UsageError(f"{where}: profile.{k} must be a {typ.__name__}")
    if prof["arch"] not in ARCHES:
        raise UsageError(f"{where}: profile.arch must be one of {', '.join(ARCHES)} (got {prof['arch']!r})")
    clock = prof.get("clock_ghz", 0.0)
    if isinstance(clock, bool) or not isinstance(clock, int | float) or not 0 <= clock < 10:
        raise UsageError(f"{where}: profile.clock_ghz must be a number of GHz")
    preset_name = prof.get("preset", "")
    if not isinstance(preset_name, str):
        raise UsageError(f"{where}: profile.preset must be a str")
    if preset_name:
        from ptesim.kernel.config import PRESETS

        if preset_name not in PRESETS:
            raise UsageError(f"{where}: profile.preset {preset_name!r} is not a known preset")
    feats = prof["cpu_features"]
    if not all(isinstance(f, str) for f in feats):
        raise UsageError(f"{where}: profile.cpu_features must be a list of strings")
    from ptesim.arch import CPU_FEATURES

    unknown = sorted(set(feats) - set(CPU_FEATURES[prof["arch"]]))
    if unknown:
        raise UsageError(f"{where}: unknown CPU feature {unknown[0]!r} for {prof['arch']}")

    local = _numbers(where, "local_ns", data["local_ns"], PRIMITIVES, " (not a primitive of ptesim.events)")
    process = _numbers(where, "process_ns", data["process_ns"], _PROCESS_KEYS)

    sh = _table(f"{where} [shared]", data["shared"])
    for k in sh:
        if k not in ("resource", "service_ns", *_SHARED_SCALARS):
            raise UsageError(f"{where}: unknown key shared.{k}")
    for k in ("resource", "service_ns", *_SHARED_SCALARS):
        if k not in sh:
            raise UsageError(f"{where}: missing shared.{k}")
    if sh["resource"] not in RESOURCES:
        raise UsageError(f"{where}: shared.resource must be one of {', '.join(RESOURCES)}")
    svc_t = _table(f"{where} [shared.service_ns]", sh["service_ns"])
    for k in svc_t:
        if k not in SHARED_PRIMITIVES:
            raise UsageError(
                f"{where}: unknown key shared.service_ns.{k} (expected one of {', '.join(SHARED_PRIMITIVES)})"
            )
    service: dict[str, float] = {}
    for k in SHARED_PRIMITIVES:
        if k not in svc_t:
            raise UsageError(f"{where}: missing shared.service_ns.{k}")
        service[k] = _num(f"{where}: shared.service_ns.{k}", svc_t[k])
    shared = SharedResource(
        resource=sh["resource"],
        service_ns=service,
        scv=_num(f"{where}: shared.scv", sh["scv"]),
        sync_per_active_cpu_ns=_num(f"{where}: shared.sync_per_active_cpu_ns", sh["sync_per_active_cpu_ns"]),
        active_cpu_cap=_num(f"{where}: shared.active_cpu_cap", sh["active_cpu_cap"]),
    )
    if shared.scv > MAX_SCV:
        raise UsageError(f"{where}: shared.scv must be at most {MAX_SCV:g} (got {shared.scv:g})")

    prov_t = _table(f"{where} [provenance]", data["provenance"])
    profile = Profile(
        name=prof["name"],
        arch=prof["arch"],
        description=prof["description"],
        cpu_features=frozenset(feats),
        local_ns=local,
        process_ns=process,
        shared=shared,
        provenance={},
        source=source,
        preset=preset_name,
    )
    params = profile.parameters()
    provenance: dict[str, str] = {}
    for k, v in prov_t.items():
        if k not in params:
            raise UsageError(f"{where}: provenance for unknown parameter {k!r}")
        if not isinstance(v, str) or not v.startswith(("calibrated", "assumed")):
            raise UsageError(f"{where}: provenance.{k} must be a string starting 'calibrated' or 'assumed'")
        provenance[k] = v
    for k in params:
        if k not in provenance:
            raise UsageError(f"{where}: missing provenance for {k}")
    object.__setattr__(profile, "provenance", provenance)
    object.__setattr__(profile, "clock_ghz", float(clock))
    object.__setattr__(profile, "bounds", _bounds(where, data.get("bounds", {}), params, float(clock)))
    object.__setattr__(profile, "fit", _fit_info(where, data.get("fit"), params))
    return profile


def _bounds(where: str, raw: object, params: Mapping[str, float], clock: float) -> dict[str, Bound]:
    table = _table(f"{where} [bounds]", raw)
    out: dict[str, Bound] = {}
    for k, v in table.items():
        if k not in params:
            raise UsageError(f"{where}: bounds for unknown parameter {k!r}")
        spec = _table(f"{where}: bounds.{k}", v)
        extra = set(spec) - {"lo", "hi", "cycles", "source"}
        if extra:
            raise UsageError(f"{where}: bounds.{k}: unknown key {sorted(extra)[0]!r}")
        source = spec.get("source")
        if not isinstance(source, str) or not source:
            raise UsageError(f"{where}: bounds.{k} needs a source")
        if "cycles" in spec:
            cyc = spec["cycles"]
            if not clock:
                raise UsageError(f"{where}: bounds.{k} in cycles needs profile.clock_ghz")
            if not isinstance(cyc, list) or len(cyc) != 2:
                raise UsageError(f"{where}: bounds.{k}.cycles must be [low, high]")
            lo = _num(f"{where}: bounds.{k}.cycles", cyc[0]) / clock
            hi = _num(f"{where}: bounds.{k}.cycles", cyc[1]) / clock
        else:
            if "lo" not in spec or "hi" not in spec:
                raise UsageError(f"{where}: bounds.{k} needs lo and hi (or cycles)")
            lo = _num(f"{where}: bounds.{k}.lo", spec["lo"])
            hi = _num(f"{where}: bounds.{k}.hi", spec["hi"])
        if lo > hi:
            raise UsageError(f"{where}: bounds.{k}: lo {lo:g} is above hi {hi:g}")
        val = params[k]
        if not lo * (1 - 1e-6) <= val <= hi * (1 + 1e-6):
            raise UsageError(f"{where}: {k} = {val:g} is outside its physical range [{lo:g}, {hi:g}]")
        out[k] = Bound(lo, hi, source)
    return out


def _fit_info(where: str, raw: object, params: Mapping[str, float]) -> FitInfo | None:
    if raw is None:
        return None
    t = _table(f"{where} [fit]", raw)
    extra = set(t) - {
        "parameters",
        "covariance",
        "residual_sd",
        "tables",
        "held_out",
        "command",
        "discrepancy_sd",
        "discrepancy_df",
        "discrepancy_from",
    }
    if extra:
        raise UsageError(f"{where}: unknown key fit.{sorted(extra)[0]}")
    names = t.get("parameters", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n in params for n in names):
        raise UsageError(f"{where}: fit.parameters must list parameters of this profile")
    cov = t.get("covariance", [])
    if (
        not isinstance(cov, list)
        or len(cov) != len(names)
        or not all(isinstance(r, list) and len(r) == len(names) for r in cov)
    ):
        raise UsageError(f"{where}: fit.covariance must be a {len(names)}x{len(names)} matrix")
    matrix = tuple(tuple(float(x) for x in r) for r in cov)
    sd = t.get("residual_sd", 0.0)
    if isinstance(sd, bool) or not isinstance(sd, int | float) or sd < 0:
        raise UsageError(f"{where}: fit.residual_sd must be a non-negative number")
    dsd = t.get("discrepancy_sd", 0.0)
    if isinstance(dsd, bool) or not isinstance(dsd, int | float) or not 0 <= dsd < math.inf:
        raise UsageError(f"{where}: fit.discrepancy_sd must be a non-negative number")
    ddf = t.get("discrepancy_df", 0)
    if isinstance(ddf, bool) or not isinstance(ddf, int) or ddf < 0 or (dsd > 0 and ddf < 1):
        raise UsageError(f"{where}: fit.discrepancy_df must be a positive integer when discrepancy_sd > 0")
    lists = {}
    for key in ("tables", "held_out", "discrepancy_from"):
        v = t.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UsageError(f"{where}: fit.{key} must be a list of strings")
        lists[key] = tuple(v)
    cmd = t.get("command", "")
    if not isinstance(cmd, str):
        raise UsageError(f"{where}: fit.command must be a string")
    return FitInfo(
        tuple(names),
        matrix,
        float(sd),
        lists["tables"],
        lists["held_out"],
        cmd,
        discrepancy_sd=float(dsd),
        discrepancy_df=ddf,
        discrepancy_from=lists["discrepancy_from"],
    )


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with ptesim."""
    root = resources.files("ptesim.cost") / "profiles"
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name, or a profile file by path."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        try:
            with path.open("rb") as f:
                raw = f.read(PROFILE_MAX_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read profile {name_or_path}: {exc.strerror}") from None
        if len(raw) > PROFILE_MAX_BYTES:
            raise UsageError(f"profile {name_or_path}: larger than {PROFILE_MAX_BYTES // 1024} KiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"profile {name_or_path}: not UTF-8 text (byte {exc.start})") from None
        source = str(path)
    else:
        res = resources.files("ptesim.cost") / "profiles" / f"{name_or_path}.toml"
        if not res.is_file():
            raise UsageError(
                f"unknown profile {name_or_path!r} (shipped: {', '.join(shipped_profiles())}; or give a path)"
            )
        text = res.read_text(encoding="utf-8")
        source = f"{name_or_path}.toml"
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: an integer of 4300+ digits
        raise UsageError(f"{source}: not valid TOML: {str(exc).splitlines()[0]}") from None
    _check_numbers(source, data)
    return profile_from_dict(data, source)


#: a profile file is a few KiB; anything larger (or a device) is refused before it is read
PROFILE_MAX_BYTES = 256 * 1024
#: no profile number is near this (nanoseconds, a coefficient of variation, a CPU count)
PROFILE_NUMBER_MAX = 1e12


def _check_numbers(where: str, value: object, key: str = "") -> None:
    """Every number of a parsed profile is finite and of a sane magnitude (before any float())."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(where, v, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_numbers(where, v, f"{key}[{i}]")
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (abs(value) > PROFILE_NUMBER_MAX or not math.isfinite(value))
    ):
        shown = f"{value:.3g}" if isinstance(value, float) else f"a {len(str(abs(value)))}-digit integer"
        raise UsageError(f"{where}: {key} = {shown} is out of range (at most {PROFILE_NUMBER_MAX:g})")


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The TOML-document form of a profile (round-trips through :func:`profile_from_dict`)."""
    head: dict[str, Any] = {
        "name": profile.name,
        "arch": profile.arch,
        "description": profile.description,
        "cpu_features": sorted(profile.cpu_features),
    }
    if profile.preset:
        head["preset"] = profile.preset
    if profile.clock_ghz:
        head["clock_ghz"] = profile.clock_ghz
    out: dict[str, Any] = {
        "profile": head,
        "local_ns": dict(profile.local_ns),
        "process_ns": dict(profile.process_ns),
        "shared": {
            "resource": profile.shared.resource,
            "service_ns": dict(profile.shared.service_ns),
            "scv": profile.shared.scv,
            "sync_per_active_cpu_ns": profile.shared.sync_per_active_cpu_ns,
            "active_cpu_cap": profile.shared.active_cpu_cap,
        },
        "provenance": copy.deepcopy(profile.provenance),
    }
    if profile.bounds:
        out["bounds"] = {k: {"lo": b.lo, "hi": b.hi, "source": b.source} for k, b in profile.bounds.items()}
    if profile.fit is not None:
        f = profile.fit
        out["fit"] = {
            "parameters": list(f.parameters),
            "covariance": [list(r) for r in f.covariance],
            "residual_sd": f.residual_sd,
            "tables": list(f.tables),
            "held_out": list(f.held_out),
            "command": f.command,
        }
        if f.discrepancy_sd > 0:
            out["fit"] |= {
                "discrepancy_sd": f.discrepancy_sd,
                "discrepancy_df": f.discrepancy_df,
                "discrepancy_from": list(f.discrepancy_from),
            }
    return out


def _fmt(v: object) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def dump_profile(profile: Profile) -> str:
    """Write a profile as TOML, each value followed by its provenance as a comment."""
    d = profile_to_dict(profile)
    lines: list[str] = []
    lines.append("[profile]")
    for k, v in d["profile"].items():
        lines.append(f"{k} = {_fmt(v)}")
    for sec, prefix in (("local_ns", "local_ns"), ("process_ns", "process_ns")):
        lines.append("")
        lines.append(f"[{sec}]")
        for k, v in d[sec].items():
            lines.append(f"{k} = {_fmt(v)}  # {profile.provenance.get(f'{prefix}.{k}', '')}")
    lines.append("")
    lines.append("[shared]")
    lines.append(f"resource = {_fmt(d['shared']['resource'])}")
    for k in _SHARED_SCALARS:
        lines.append(f"{k} = {_fmt(d['shared'][k])}  # {profile.provenance.get(f'shared.{k}', '')}")
    lines.append("")
    lines.append("[shared.service_ns]")
    for k, v in d["shared"]["service_ns"].items():
        lines.append(f"{k} = {_fmt(v)}  # {profile.provenance.get(f'shared.service_ns.{k}', '')}")
    lines.append("")
    lines.append("[provenance]")
    for k, v in d["provenance"].items():
        lines.append(f'"{k}" = {_fmt(v)}')
    if "bounds" in d:
        lines.append("")
        lines.append("[bounds]")
        for k, b in d["bounds"].items():
            lines.append(
                f'"{k}" = {{lo = {_fmt(b["lo"])}, hi = {_fmt(b["hi"])}, source = {_fmt(b["source"])}}}'
            )
    if "fit" in d:
        f = d["fit"]
        lines.append("")
        lines.append("[fit]")
        lines.append(f"command = {_fmt(f['command'])}")
        lines.append(f"tables = {_fmt(f['tables'])}")
        lines.append(f"held_out = {_fmt(f['held_out'])}")
        lines.append(f"residual_sd = {_fmt(float(f['residual_sd']))}")
        if "discrepancy_sd" in f:
            lines.append(f"discrepancy_sd = {_fmt(float(f['discrepancy_sd']))}")
            lines.append(f"discrepancy_df = {_fmt(int(f['discrepancy_df']))}")
            lines.append(f"discrepancy_from = {_fmt(f['discrepancy_from'])}")
        lines.append(f"parameters = {_fmt(f['parameters'])}")
        lines.append("covariance = [")
        for r in f["covariance"]:
            lines.append("  [" + ", ".join(repr(float(f"{x:.6g}")) for x in r) + "],")
        lines.append("]")
    return "\n".join(lines) + "\n"
