"""PNG plots from summary rows: bypass rate against budget, utility cost against bypass, and the frontier.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
Abstaining rows (n_valid == 0) are left out of the curves, never drawn as zero.
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from certify.files import write_bytes_atomic
from certify.frontier import FrontierPoint
from certify.stats import confidence_label
from certify.summary import SummaryRow, rows_alpha


def _figure(n_panels: int, width: float = 5.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return fig, axes


def _save(fig, path: str | os.PathLike[str]) -> Path:
    """Render to memory, then write atomically: a killed run never leaves half a PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_bytes_atomic(path, buffer.getvalue())


def _colors(defenses: Iterable[str]) -> dict[str, str]:
    """One color per defense, the same in every panel and plot."""
    return {d: f"C{i % 10}" for i, d in enumerate(sorted(set(defenses)))}


def plot_bypass_vs_budget(rows: Iterable[SummaryRow], path: str | os.PathLike[str],
                          alpha: float | None = None) -> Path | None:
    """One panel per setting: bypass rate against budget per defense, Clopper-Pearson bands at
    the rows' confidence level (or ``alpha``'s). None if empty."""
    rows = list(rows)
    level = confidence_label(rows_alpha(rows, alpha))
    curves: dict[str, dict[str, list[SummaryRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.rate is not None:
            curves[row.setting][row.defense].append(row)
    if not curves:
        return None
    settings = sorted(curves)
    colors = _colors(d for by_defense in curves.values() for d in by_defense)
    fig, axes = _figure(len(settings))
    for ax, setting in zip(axes, settings, strict=True):
        for defense in sorted(curves[setting]):
            pts = sorted(curves[setting][defense], key=lambda r: r.budget)
            x = [r.budget for r in pts]
            ax.plot(x, [r.rate for r in pts], marker="o", label=defense, color=colors[defense])
            ax.fill_between(x, [r.ci_low for r in pts], [r.ci_high for r in pts], color=colors[defense], alpha=0.18)
        ax.set_title(f"{setting}: bypass rate ({level} Clopper-Pearson)")
        ax.set_xlabel("budget (L2 radius of the perturbation ball)")
        ax.set_ylabel("recovered / valid")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_utility_vs_bypass(rows: Iterable[SummaryRow], path: str | os.PathLike[str],
                           alpha: float | None = None) -> Path | None:
    """Utility cost (delta CE) against bypass rate at each defense's largest evaluated budget.

    One color per defense, one marker shape per setting, the interval (at the rows' confidence
    level, or ``alpha``'s) as an error bar. None if no row has both a rate and a utility cost.
    """
    rows = list(rows)
    level = confidence_label(rows_alpha(rows, alpha))
    last: dict[tuple[str, str], SummaryRow] = {}
    for row in rows:
        if row.rate is None or row.delta_ce is None:
            continue
        key = (row.defense, row.setting)
        if key not in last or row.budget > last[key].budget:
            last[key] = row
    if not last:
        return None
    fig, (ax,) = _figure(1, width=5.5, height=4.0)
    markers = "osD^vP*X"
    settings = sorted({s for _, s in last})
    colors = _colors(d for d, _ in last)
    for (defense, setting), row in sorted(last.items()):
        ax.errorbar(row.delta_ce, row.rate, yerr=[[row.rate - row.ci_low], [row.ci_high - row.rate]],
                    fmt=markers[settings.index(setting) % len(markers)], color=colors[defense], capsize=3,
                    label=f"{defense} / {setting} (budget {row.budget:g})")
        ax.annotate(defense, (row.delta_ce, row.rate), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("utility cost: delta CE on benign text (nats/token)")
    ax.set_ylabel(f"bypass rate at the largest budget ({level} CI)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("utility cost against bypass (lower left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_frontier(points: Iterable[FrontierPoint], path: str | os.PathLike[str], max_budget: float | None = None) -> Path:
    """Per setting: delta CE (x) against the median minimal recovering budget (y, log), one curve per defense
    family through its strengths, the plain clamp in black as the reference, non-dominated points ringed.
    A median above the largest budget (censored) is drawn at ``max_budget`` as an upward triangle; a point
    without valid samples is left out."""
    points = [p for p in points if p.median_min_budget is not None and p.delta_ce is not None]
    settings = sorted({p.setting for p in points}) or ["(no point with valid samples)"]
    fig, axes = _figure(len(settings))
    colors = _colors(p.defense for p in points)
    top = max_budget or max((p.median_min_budget for p in points if math.isfinite(p.median_min_budget)), default=1.0)
    for ax, setting in zip(axes, settings, strict=True):
        here = [p for p in points if p.setting == setting]
        for family in sorted({p.defense for p in here}):
            curve = sorted((p for p in here if p.defense == family), key=lambda p: (p.strength is None, p.strength))
            ys = [min(p.median_min_budget, top) for p in curve]
            color = "black" if family == "clamp" else colors[family]
            ax.plot([p.delta_ce for p in curve], ys, "-", color=color, lw=2.2 if family == "clamp" else 1.2,
                    label=family)
            for p, y in zip(curve, ys, strict=True):
                ax.plot(p.delta_ce, y, "^" if math.isinf(p.median_min_budget) else "o", color=color, ms=5)
                if p.non_dominated:
                    ax.plot(p.delta_ce, y, "o", mfc="none", mec="red", ms=11, mew=1.5)
        ax.set_yscale("log")
        ax.set_xlabel("delta CE on benign text (nats)")
        ax.set_ylabel("median minimal recovering budget (relative L2)")
        ax.set_title(f"{setting} (red rings: non-dominated; ^: above {top:g})", fontsize=9)
        ax.grid(alpha=0.3)
    if points:
        axes[-1].legend(fontsize=7, loc="best")
    return _save(fig, path)
