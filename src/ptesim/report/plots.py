"""Plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def seed_plot(
    rows: Sequence[Mapping[str, float]],
    path: Path,
    curves: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> None:
    """Published points and model curves of the seed table against CPUs.  ``curves`` maps
    ``before_opt``/``after_opt`` to the model at every CPU count; without it the model is drawn
    through the table's CPU counts."""
    cpus = [r["cpus"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, color in (("before", "before opt", "tab:red"), ("after", "after opt", "tab:blue")):
        ax.plot(cpus, [r[f"published_{key}"] for r in rows], "o", color=color, label=f"{label} (published)")
        curve = (curves or {}).get(f"{key}_opt")
        if curve:
            ax.plot([c for c, _ in curve], [v for _, v in curve], "-", color=color, label=f"{label} (model)")
        else:
            ax.plot(cpus, [r[f"model_{key}"] for r in rows], "-", color=color, label=f"{label} (model)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("CPUs (will-it-scale workers)")
    ax.set_ylabel("change in iterations/s vs baseline (%)")
    ax.set_title("fork and exit, arm64 contpte, Ampere Altra")
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        from ptesim.errors import UsageError

        raise UsageError(f"cannot write plot {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)


def sweep_plot(table: Any, path: str | Path, *, y: str | None = None, ylabel: str | None = None) -> None:
    """A sweep's tidy table as lines: the first varying size or CPU key on the x axis (log2 for sizes),
    one line per combination of the other keys, ``y`` (default: every count column summed per row,
    one figure line per column if few) on the y axis."""
    rows = table.rows
    keys = [c.key for c in table.columns if c.key in _KEY_LABELS]
    values = [c.key for c in table.columns if c.key not in _KEY_LABELS]
    numeric_keys = [k for k in keys if k != "arch" and k != "preset"]
    xkey = numeric_keys[0] if numeric_keys else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ys = [y] if y else values[:6]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys if k != xkey), []).append(r)
    for gkey, grows in groups.items():
        glabel = ", ".join(str(v) for v in gkey)
        for col in ys:
            label = ", ".join(s for s in (glabel, col if len(ys) > 1 else "") if s)
            if xkey:
                ax.plot([r[xkey] for r in grows], [r.get(col) or 0 for r in grows], "o-", label=label or col)
            else:
                ax.bar([label or col], [grows[0].get(col) or 0])
    if xkey:
        ax.set_xlabel(_KEY_LABELS[xkey])
        if xkey.endswith("_bytes"):
            ax.set_xscale("log", base=2)
    ax.set_ylabel(ylabel or (y if y else "count per run"))
    if table.title:
        ax.set_title(table.title, fontsize=9)
    if xkey:
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(path))


_KEY_LABELS = {
    "arch": "arch",
    "preset": "preset",
    "granule_bytes": "granule (bytes)",
    "folio_bytes": "folio size (bytes)",
    "mem_bytes": "mapping size (bytes)",
    "cpus": "CPUs",
}


def _save(fig: Any, path: Path) -> None:
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        from ptesim.errors import UsageError

        raise UsageError(f"cannot write plot {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        plt.close(fig)
