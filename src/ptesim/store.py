"""The results store: every ``--save``d run in one SQLite file, listed by ``ptesim runs`` and compared
by ``ptesim compare`` (in the manner of mmtests' compare-kernels).

The file is ``$PTESIM_DB`` or ``runs.sqlite`` in the user data directory (platformdirs:
``~/.local/share/ptesim/runs.sqlite`` on Linux).  A run records the command line, the ptesim version
and ``git describe`` of the source tree, the SHA-256 of every profile file the run named, host
information (kernel, machine, CPUs) and the results: the command's JSON document, or its printed text
for commands without one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ptesim import __version__
from ptesim.errors import UsageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    command TEXT NOT NULL,
    argv TEXT NOT NULL,
    version TEXT NOT NULL,
    git TEXT,
    profiles TEXT NOT NULL,
    host TEXT NOT NULL,
    results TEXT NOT NULL
)
"""


def db_path() -> Path:
    """``$PTESIM_DB``, else ``runs.sqlite`` in the platform's user data directory."""
    env = os.environ.get("PTESIM_DB")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("ptesim")) / "runs.sqlite"


def _connect(path: Path | None = None, *, create: bool = True) -> sqlite3.Connection:
    path = path or db_path()
    if not create and not path.exists():
        raise UsageError(f"no saved runs: {path} does not exist (save one with --save)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path)
        con.execute(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(f"cannot open the results store {path}: {exc}") from None
    return con


def git_describe() -> str | None:
    """``git describe --always --dirty`` of the tree ptesim runs from, or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        p = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def host_info() -> dict[str, Any]:
    """The machine a run ran on (what a host-mode comparison needs to be honest)."""
    return {
        "node": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def profile_hashes(names: Sequence[str]) -> dict[str, str]:
    """SHA-256 of each named profile's file (shipped or a path), so that a saved price can be trusted."""
    from importlib import resources

    out: dict[str, str] = {}
    for name in names:
        path = Path(name)
        data: bytes | None = None
        if path.suffix == ".toml" and path.is_file():
            data = path.read_bytes()
        else:
            res = resources.files("ptesim.cost").joinpath("profiles", f"{name}.toml")
            if res.is_file():
                data = res.read_bytes()
        if data is not None:
            out[name] = hashlib.sha256(data).hexdigest()
    return out


@dataclass(frozen=True)
class Run:
    """One saved run."""

    id: int
    created: str
    command: str
    argv: list[str]
    version: str
    git: str | None
    profiles: dict[str, str]
    host: dict[str, Any]
    results: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "command": self.command,
            "argv": self.argv,
            "version": self.version,
            "git": self.git,
            "profiles": self.profiles,
            "host": self.host,
            "results": self.results,
        }


def save_run(argv: Sequence[str], command: str, results: Any, profiles: Sequence[str] = ()) -> int:
    """Record a run; returns its id."""
    con = _connect()
    with con:
        cur = con.execute(
            "INSERT INTO runs (created, command, argv, version, git, profiles, host, results)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                datetime.now(UTC).isoformat(timespec="seconds"),
                command,
                json.dumps(list(argv)),
                __version__,
                git_describe(),
                json.dumps(profile_hashes(profiles)),
                json.dumps(host_info()),
                json.dumps(results),
            ),
        )
    con.close()
    assert cur.lastrowid is not None
    return cur.lastrowid


def _row(r: tuple[Any, ...]) -> Run:
    return Run(
        id=r[0],
        created=r[1],
        command=r[2],
        argv=json.loads(r[3]),
        version=r[4],
        git=r[5],
        profiles=json.loads(r[6]),
        host=json.loads(r[7]),
        results=json.loads(r[8]),
    )


def list_runs() -> list[Run]:
    con = _connect(create=False)
    rows = con.execute("SELECT * FROM runs ORDER BY id").fetchall()
    con.close()
    return [_row(r) for r in rows]


def get_run(run_id: str) -> Run:
    """The run with id ``run_id`` (``-1``, ``-2``: the latest, the one before)."""
    try:
        n = int(run_id)
    except ValueError:
        raise UsageError(
            f"bad run id {run_id!r}: a number from 'ptesim runs' (or -1 for the latest)"
        ) from None
    con = _connect(create=False)
    if n < 0:
        rows = con.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1 OFFSET ?", (-n - 1,)).fetchall()
    else:
        rows = con.execute("SELECT * FROM runs WHERE id = ?", (n,)).fetchall()
    con.close()
    if not rows:
        raise UsageError(f"no saved run {run_id} in {db_path()}")
    return _row(rows[0])


# -- compare ---------------------------------------------------------------------------------------

#: Fields that identify a row of a results list (so that rows of two runs are matched by meaning).
ROW_KEYS = (
    "config",
    "op",
    "scenario",
    "arch",
    "preset",
    "granule",
    "folio",
    "size",
    "mem",
    "granule_bytes",
    "folio_bytes",
    "mem_bytes",
    "cpus",
    "primitive",
    "label",
    "variant",
    "name",
)


def _row_label(d: Mapping[str, Any], drop: frozenset[str] = frozenset()) -> str:
    if isinstance(d.get("stack"), list):
        return " <- ".join(reversed([str(f) for f in d["stack"]]))
    parts = [
        f"{k}={d[k]}" for k in ROW_KEYS if k in d and k not in drop and not isinstance(d[k], dict | list)
    ]
    return ",".join(parts)


def _key_values(doc: Any) -> dict[str, set[str]]:
    """Every value each row key takes in the rows of ``doc``."""
    out: dict[str, set[str]] = {}
    if isinstance(doc, dict):
        for v in doc.values():
            for k, vals in _key_values(v).items():
                out.setdefault(k, set()).update(vals)
    elif isinstance(doc, list):
        for row in doc:
            if isinstance(row, dict):
                for k in ROW_KEYS:
                    if k in row and not isinstance(row[k], dict | list):
                        out.setdefault(k, set()).add(str(row[k]))
            for k, vals in _key_values(row).items():
                out.setdefault(k, set()).update(vals)
    return out


def compared_keys(a: Any, b: Any) -> frozenset[str]:
    """The row keys that name what two runs compare: one value throughout each run, different
    between them (two kernels' presets, two profiles ...).  Rows are matched without them."""
    ka, kb = _key_values(a), _key_values(b)
    return frozenset(k for k in ka.keys() & kb.keys() if len(ka[k]) == len(kb[k]) == 1 and ka[k] != kb[k])


def cells(
    doc: Any, prefix: str = "", drop: frozenset[str] = frozenset()
) -> Iterator[tuple[str, float | list[float]]]:
    """Every numeric leaf of a results document by path; rows of a list are named by their keys
    (less ``drop``).  Lists of numbers (samples) are one cell holding the list.
    """
    if isinstance(doc, bool):
        return
    if isinstance(doc, int | float):
        if math.isfinite(doc):
            yield prefix, float(doc)
        return
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k in ROW_KEYS or k in ("columns", "sweep"):
                continue
            yield from cells(v, f"{prefix}.{k}" if prefix else k, drop)
        return
    if isinstance(doc, list):
        if doc and all(isinstance(x, int | float) and not isinstance(x, bool) for x in doc):
            yield prefix, [float(x) for x in doc]
            return
        for i, v in enumerate(doc):
            label = _row_label(v, drop) if isinstance(v, dict) else ""
            yield from cells(v, f"{prefix}[{label or i}]", drop)


@dataclass(frozen=True)
class Delta:
    """One cell of a comparison."""

    cell: str
    a: float | None
    b: float | None
    #: Mann-Whitney U two-sided p-value when both runs hold samples for this cell
    p_value: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def delta_pct(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0:
            return None
        return 100.0 * (self.b - self.a) / abs(self.a)

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < 0.05

    def to_json(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "a": self.a,
            "b": self.b,
            "delta": self.delta,
            "delta_pct": None if self.delta_pct is None else round(self.delta_pct, 3),
            "p_value": self.p_value,
            "significant": self.significant,
        }


def compare(a: Run, b: Run, *, changed_only: bool = False) -> list[Delta]:
    """Per-cell deltas of two runs' results; samples are compared by median and Mann-Whitney U.
    Rows are matched by their keys, less those that name what differs between the runs (e.g. the
    preset of two kernels' runs: :func:`compared_keys`), as mmtests' compare puts kernels side by side."""
    drop = compared_keys(a.results, b.results)
    ca, cb = dict(cells(a.results, drop=drop)), dict(cells(b.results, drop=drop))
    out = []
    for key in list(ca) + [k for k in cb if k not in ca]:
        va, vb = ca.get(key), cb.get(key)
        p = None
        if isinstance(va, list) or isinstance(vb, list):
            if isinstance(va, list) and isinstance(vb, list) and len(va) >= 2 and len(vb) >= 2:
                from scipy.stats import mannwhitneyu

                p = float(mannwhitneyu(va, vb, alternative="two-sided").pvalue)
            va, vb = _median(va), _median(vb)
            key += " (median)"
        if changed_only and va == vb:
            continue
        out.append(Delta(key, va, vb, p))
    return out


def _median(v: float | list[float] | None) -> float | None:
    if v is None or isinstance(v, float):
        return v
    s = sorted(v)
    n = len(s)
    if not n:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# -- commands: runs, compare -----------------------------------------------------------------------


def _cmd_runs(args: Any) -> int:
    from ptesim.report.tidy import Column, Tidy, emit

    if args.id is not None:
        run = get_run(args.id)
        if args.json:
            print(json.dumps(run.to_json(), indent=2))
            return 0
        print(f"run {run.id}, {run.created}: {' '.join(['ptesim', *run.argv])}")
        print(f"ptesim {run.version}" + (f" ({run.git})" if run.git else ""))
        print("host: " + ", ".join(f"{k} {v}" for k, v in run.host.items()))
        for name, digest in run.profiles.items():
            print(f"profile {name}: sha256 {digest[:16]}")
        res = run.results
        print(res["text"] if isinstance(res, dict) and set(res) == {"text"} else json.dumps(res, indent=2))
        return 0
    runs = list_runs()
    table = Tidy(
        [Column("id", "id", str), Column("created"), Column("command"), Column("version"), Column("git")],
        [
            {
                "id": r.id,
                "created": r.created,
                "command": " ".join(["ptesim", *r.argv]),
                "version": r.version,
                "git": r.git,
            }
            for r in runs
        ],
        title=f"saved runs in {db_path()}",
    )
    emit(args, table)
    return 0


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _cmd_compare(args: Any) -> int:
    from ptesim.report.tidy import Column, Tidy, emit

    a, b = get_run(args.a), get_run(args.b)
    deltas = compare(a, b, changed_only=not args.all)
    table = Tidy(
        [
            Column("cell"),
            Column("a", f"run {a.id}", _num),
            Column("b", f"run {b.id}", _num),
            Column("delta", "delta", _num),
            Column("delta_pct", "delta %", lambda v: "-" if v is None else f"{v:+.2f}%"),
            Column("p_value", "p (M-W)", lambda v: "-" if v is None else f"{v:.3g}"),
            Column("significant", "sig", lambda v: "-" if v is None else ("yes" if v else "no")),
        ],
        [d.to_json() for d in deltas],
        title=(
            f"run {a.id} ({' '.join(a.argv)}) -> run {b.id} ({' '.join(b.argv)})"
            + ("" if args.all else "; changed cells only (--all for every cell)")
        ),
        notes=["p: two-sided Mann-Whitney U over the samples of both runs; sig: p < 0.05"]
        if any(d.p_value is not None for d in deltas)
        else [],
    )
    emit(args, table)
    return 0


def register(sub: Any) -> None:
    from ptesim.report.tidy import add_output_options

    p = sub.add_parser("runs", help="list the runs saved with --save, or show one")
    p.add_argument("id", nargs="?", help="a run id (or -1 for the latest) to show in full")
    add_output_options(p)
    p.set_defaults(handler=_cmd_runs)

    p = sub.add_parser("compare", help="per-cell differences between two saved runs (with significance)")
    p.add_argument("a", help="the first run's id (-1: the latest)")
    p.add_argument("b", help="the second run's id")
    p.add_argument("--all", action="store_true", help="show unchanged cells too")
    add_output_options(p)
    p.set_defaults(handler=_cmd_compare)
