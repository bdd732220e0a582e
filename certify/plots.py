"""PNG plots from summary rows: bypass rate against budget, and utility cost against bypass.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
Abstaining rows (n_valid == 0) are left out of the curves, never drawn as zero.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from certify.files import write_bytes_atomic
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
