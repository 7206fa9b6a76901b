"""Plots of fault-injection campaigns (matplotlib object-oriented API, Agg canvas, no pyplot).

Using :class:`matplotlib.figure.Figure` with :class:`FigureCanvasAgg` touches no global backend
state, so plotting works headless and from several threads or tests at once.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flow.core.io import atomic_write

_DPI = 120
_SIZE_IN = (6.0, 4.0)


def _positive_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows with BER > 0 (a log axis cannot show BER 0), sorted by BER."""
    return sorted((r for r in rows if r["ber"] > 0), key=lambda r: r["ber"])


def _draw_series(ax: Axes, name: str, rows: list[dict[str, Any]],
                 clean: float | None) -> None:
    """One accuracy-vs-BER line with confidence error bars and an optional clean line."""
    x = [r["ber"] for r in rows]
    y = [100.0 * r["accuracy_mean"] for r in rows]
    below = [100.0 * (r["accuracy_mean"] - r["accuracy_low"]) for r in rows]
    above = [100.0 * (r["accuracy_high"] - r["accuracy_mean"]) for r in rows]
    bars = ax.errorbar(x, y, yerr=[below, above], marker="o", markersize=4, capsize=3,
                       linewidth=1.5, label=name)
    color = bars.lines[0].get_color()
    low = [100.0 * r["accuracy_low"] for r in rows]
    high = [100.0 * r["accuracy_high"] for r in rows]
    ax.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
    if clean is not None:
        ax.axhline(100.0 * clean, color=color, linestyle="--", linewidth=1,
                   label=f"{name} (clean)")


def plot_accuracy_vs_ber(series: Mapping[str, list[dict[str, Any]]], path: Path, *, title: str,
                         clean: Mapping[str, float] | None = None) -> Path:
    """Plot test accuracy (%) against BER (log axis) for each series and write a PNG.

    ``series`` maps a label to summary rows of :meth:`flow.reliability.store.TrialStore.summary`
    (accuracies as fractions); the band and error bars span ``accuracy_low..accuracy_high``.
    ``clean`` optionally maps a label to its fault-free accuracy, drawn as a dashed line.
    Rows with BER <= 0 are left out (the clean line stands for them). The PNG is written
    atomically; returns ``path``.

    Raises:
        ValueError: no series has a row with BER > 0.
    """
    clean = clean or {}
    drawable = {name: _positive_rows(rows) for name, rows in series.items()}
    drawable = {name: rows for name, rows in drawable.items() if rows}
    if not drawable:
        raise ValueError("plot_accuracy_vs_ber: no summary rows with BER > 0 to plot")
    fig = Figure(figsize=_SIZE_IN, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rows in drawable.items():
        _draw_series(ax, name, rows, clean.get(name))
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate (BER)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    path = Path(path)
    atomic_write(path, buf.getvalue())
    return path


def plot_bars(values: Mapping[str, float], path: Path, *, title: str, ylabel: str,
              log: bool = False) -> Path:
    """Bar chart of labelled values (e.g. RAP per configuration) written as a PNG."""
    fig = Figure(figsize=_SIZE_IN, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(values)
    ax.bar(range(len(labels)), [values[k] for k in labels], color="tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize="small")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_boxes(groups: Mapping[str, Mapping[float, list[float]]], path: Path, *,
               title: str) -> Path:
    """Box plots of per-trial accuracies (%) at each BER, one colour per group (the ZOBNN
    paper's Fig. 4); written as a PNG."""
    fig = Figure(figsize=(7.0, 4.0), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bers = sorted({b for g in groups.values() for b in g})
    n = len(groups)
    width = 0.8 / max(n, 1)
    for i, (name, by_ber) in enumerate(groups.items()):
        pos = [j + (i - (n - 1) / 2) * width for j in range(len(bers))]
        data = [[100.0 * a for a in by_ber.get(b, [])] for b in bers]
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True,
                        showfliers=True, flierprops={"markersize": 2},
                        medianprops={"color": "black"})
        color = f"C{i}"
        for box in bp["boxes"]:
            box.set_facecolor(color)
            box.set_alpha(0.5)
        ax.plot([], [], color=color, linewidth=6, alpha=0.5, label=name)
    ax.set_xticks(range(len(bers)), [f"{b:g}" for b in bers])
    ax.set_xlabel("fault rate (BER)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
