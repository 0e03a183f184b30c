"""Plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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
