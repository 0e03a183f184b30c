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


def sweep_plot(
    table: Any,
    path: str | Path,
    *,
    x: str | None = None,
    y: str | None = None,
    ylabel: str | None = None,
    err: tuple[str, str] | None = None,
    published: str | None = None,
    bars: bool = False,
) -> None:
    """A tidy table as lines: ``x`` (default: the first size or CPU key column; log2 for sizes) on the
    x axis, one line per combination of the other key columns, ``y`` (default: the first few value
    columns) on the y axis.  ``err`` names the low and high columns of an interval drawn as bars;
    ``published`` a column of published values drawn as unjoined markers where a row has one;
    ``bars`` draws one bar per row instead (no x axis)."""
    rows = table.rows
    keys = [c.key for c in table.columns if c.key in _KEY_LABELS]
    values = [c.key for c in table.columns if c.key not in _KEY_LABELS and c.key not in _TEXT_COLUMNS]
    numeric_keys = [k for k in keys if k not in ("arch", "preset", "config")]
    xkey = None if bars else x if x is not None else (numeric_keys[0] if numeric_keys else None)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ys = [y] if y else values[:6]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys if k != xkey), []).append(r)
    bar_rows: list[tuple[str, float]] = []
    for gkey, grows in groups.items():
        glabel = ", ".join(_label(k, v) for k, v in zip([k for k in keys if k != xkey], gkey, strict=True))
        for col in ys:
            label = ", ".join(s for s in (glabel, col if len(ys) > 1 else "") if s) or col
            if xkey:
                xs = [r[xkey] for r in grows]
                vs = [r.get(col) or 0 for r in grows]
                if err and all(r.get(err[0]) is not None for r in grows):
                    lo = [v - r[err[0]] for v, r in zip(vs, grows, strict=True)]
                    hi = [r[err[1]] - v for v, r in zip(vs, grows, strict=True)]
                    line = ax.errorbar(xs, vs, yerr=[lo, hi], fmt="o-", capsize=3, label=label)
                    color = line.lines[0].get_color()
                else:
                    (line2d,) = ax.plot(xs, vs, "o-", label=label)
                    color = line2d.get_color()
                pub = [(r[xkey], r[published]) for r in grows if published and r.get(published) is not None]
                if pub:
                    ax.plot(
                        [p[0] for p in pub],
                        [p[1] for p in pub],
                        "s",
                        mfc="none",
                        color=color,
                        markersize=8,
                        label=f"{label} (published)",
                    )
            else:
                bar_rows.append((label, float(grows[0].get(col) or 0)))
    if bar_rows:
        fig.set_size_inches(7, 0.3 * len(bar_rows) + 1.8)
        ax.barh([b[0] for b in bar_rows], [b[1] for b in bar_rows])
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(ylabel or (y if y else "count per run"))
    else:
        ax.set_ylabel(ylabel or (y if y else "count per run"))
    if xkey:
        ax.set_xlabel(_KEY_LABELS.get(xkey, xkey))
        if xkey.endswith("_bytes"):
            ax.set_xscale("log", base=2)
    if table.title:
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(table.title.splitlines()[0], 100)), fontsize=8)
    if xkey:
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(path))


def counts_plot(by_phase: Mapping[str, Mapping[str, int]], path: str | Path, *, title: str = "") -> None:
    """One scenario's counted primitives as horizontal bars (log scale), stacked by phase."""
    from ptesim.events import AGGREGATES

    prims = sorted(
        {k for c in by_phase.values() for k, v in c.items() if v and k not in AGGREGATES},
        key=lambda k: -sum(c.get(k, 0) for c in by_phase.values()),
    )
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(prims) + 1.5))
    left = [0.0] * len(prims)
    for phase, c in sorted(by_phase.items()):
        vals = [float(c.get(k, 0)) for k in prims]
        if any(vals):
            ax.barh(prims, vals, left=left, label=phase)
            left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(left=0.5)
    ax.set_xlabel("count per run (log scale)")
    ax.set_ylabel("primitive")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(path))


def _label(key: str, value: Any) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        from ptesim.units import format_size

        return f"{key.removesuffix('_bytes')} {format_size(value)}"
    if key == "cpus":
        return f"{value} CPUs"
    return str(value)


def published_plot(panels: Sequence[tuple[Sequence[Mapping[str, Any]], str, str]], path: str | Path) -> None:
    """Published against predicted, one panel per ``(rows, unit, title)``: a point per cell with its
    90% interval as a bar, coloured by role, and the diagonal where they agree.  ``rows`` have
    ``published``, ``predicted``, ``lo``, ``hi`` (in ``unit``) and ``role``."""
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(6 * max(len(panels), 1), 5.5), squeeze=False)
    colors = {"fitted": "tab:blue", "held-out": "tab:orange", "unseen": "tab:green"}
    for ax, (rows, unit, title) in zip(axes[0], panels, strict=False):
        for role in dict.fromkeys(r["role"] for r in rows):
            group = [r for r in rows if r["role"] == role]
            ax.errorbar(
                [r["published"] for r in group],
                [r["predicted"] for r in group],
                yerr=[
                    [max(r["predicted"] - r["lo"], 0.0) for r in group],
                    [max(r["hi"] - r["predicted"], 0.0) for r in group],
                ],
                fmt="o",
                capsize=2,
                markersize=4,
                color=colors.get(role),
                label=f"{role} ({len(group)} cells)",
            )
        vals = [v for r in rows for v in (r["published"], r["predicted"])]
        lo, hi = min(vals), max(vals)
        ax.plot([lo, hi], [lo, hi], "-", color="grey", lw=0.8, label="predicted = published")
        if unit == "ns":
            ax.set_xscale("log")
            ax.set_yscale("log")
        elif hi - lo > 500:
            ax.set_xscale("symlog", linthresh=20)
            ax.set_yscale("symlog", linthresh=20)
        ax.set_xlabel(f"published ({unit})")
        ax.set_ylabel(f"predicted, with 90% interval ({unit})")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(path))


#: Non-numeric value columns a plot never draws.
_TEXT_COLUMNS = ("config", "profile", "baseline", "mapping", "op", "scenario", "description")

_KEY_LABELS = {
    "arch": "arch",
    "preset": "preset",
    "granule_bytes": "granule (bytes)",
    "folio_bytes": "folio size (bytes)",
    "mem_bytes": "mapping size (bytes)",
    "cpus": "CPUs",
    "config": "configuration",
}


def _save(fig: Any, path: Path) -> None:
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        from ptesim.errors import UsageError

        raise UsageError(f"cannot write plot {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        plt.close(fig)
