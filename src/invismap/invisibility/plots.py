"""Figures for invisibility-map evaluation, written atomically as PNG (matplotlib, Agg backend).

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global figure state and no
backend switch, so importing this module changes nothing for a notebook.

- :func:`plot_coverage_curves`: coverage vs flagged share for several map sources on one axes, with the
  random diagonal and the paper's operating point (35.9% flagged, 77.5% coverage).
- :func:`plot_score_histograms`: per-condition all-pixel score histograms with their Gaussian fits, and
  the paper's fits for reference (Figs. 4/5: day N(0.020, 0.028), night N(0.268, 0.052)).

Both take plain arrays or the dicts :func:`~invismap.invisibility.evaluate.evaluate_maps` returns (also
after a JSON round trip), so a report can be redrawn from ``metrics.json`` without recomputing anything.

Example:
    >>> curves = curves_from_results(results, "night", "missed")  # doctest: +SKIP
    >>> plot_coverage_curves(curves, "night_missed.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from invismap.io import save_figure

PAPER_POINT = (0.359, 0.775)  # (flagged share, coverage of missed-object pixels), paper Section 4
PAPER_FITS: dict[str, tuple[float, float]] = {"day": (0.020, 0.028), "night": (0.268, 0.052)}  # Figs. 4/5


def curves_from_results(results_by_source: Mapping[str, Mapping[str, Any]], condition: str,
                        object_set: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{source: evaluate_maps result}`` -> ``{label: (flagged, coverage)}`` for one condition and set.

    Sources lacking that condition or set are left out; the label carries the area and AUROC.
    """
    out = {}
    for name, res in results_by_source.items():
        s = res.get("conditions", {}).get(condition, {}).get("sets", {}).get(object_set)
        if not s or s["curve"]["coverage"] is None:
            continue
        area, auc = s.get("normalised_area"), s.get("auroc")
        label = name if area is None or auc is None else f"{name} (area {area:.2f}, AUROC {auc:.2f})"
        out[label] = (np.asarray(s["curve"]["flagged"], float), np.asarray(s["curve"]["coverage"], float))
    return out


def plot_coverage_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                         title: str | None = None, paper_point: tuple[float, float] | None = PAPER_POINT,
                         max_flagged: float | None = None) -> Path:
    """Coverage of object pixels against the share of pixels flagged, one line per map source.

    Args:
        curves: label -> ``(flagged, coverage)`` arrays, flagged increasing (e.g.
            :func:`curves_from_results`, or :meth:`ScoreHistogram.curve`'s last two outputs).
        path: PNG file to write.
        title: axes title.
        paper_point: marked as the paper's result; None to omit.
        max_flagged: draw a dotted line at the end of the normalised-area range (e.g. 0.30); None to omit.

    Returns:
        ``path``.
    """
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="random map")
    for label, (f, c) in curves.items():
        ax.plot(np.asarray(f, float), np.asarray(c, float), lw=1.6, label=label)
    if paper_point is not None:
        ax.plot(*paper_point, marker="*", ms=13, color="crimson", ls="none",
                label=f"paper ({paper_point[0]:.1%} flagged, {paper_point[1]:.1%} coverage)")
    if max_flagged is not None:
        ax.axvline(max_flagged, color="0.3", ls=":", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="share of pixels flagged", ylabel="coverage of object pixels",
           title=title or "")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7.5)
    return save_figure(fig, path)


def _gauss(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    std = max(float(std), 1e-6)
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))


def plot_score_histograms(distributions: Mapping[str, Mapping[str, Any]], path: str | Path,
                          title: str | None = None,
                          reference: Mapping[str, tuple[float, float]] | None = PAPER_FITS,
                          log_y: bool = False) -> Path:
    """Per-condition histograms of all-pixel scores (as densities) with Gaussian fits.

    Args:
        distributions: condition -> ``{"mean", "std", "histogram": {"counts": [...]} }`` (the ``scores``
            entry of an :func:`evaluate_maps` condition) or ``{"mean", "std", "counts"}``; counts are
            equal bins on [0, 1].
        path: PNG file to write.
        title: figure title.
        reference: condition -> paper's ``(mean, std)``, drawn dashed; None to omit.
        log_y: logarithmic density axis (day scores pile up near 0).

    Returns:
        ``path``.
    """
    conds = list(distributions)
    if not conds:
        raise ValueError("no distributions to plot")
    fig = Figure(figsize=(4.6 * len(conds), 3.6))
    axes = fig.subplots(1, len(conds), squeeze=False)
    x = np.linspace(0, 1, 501)
    for ax, cond in zip(axes[0], conds):
        d = distributions[cond]
        counts = np.asarray(d["histogram"]["counts"] if "histogram" in d else d["counts"], float)
        edges = np.linspace(0, 1, len(counts) + 1)
        density = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.bar(edges[:-1], density, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.55,
               label="scores")
        mean, std = float(d["mean"]), float(d["std"])
        ax.plot(x, _gauss(x, mean, std), color="tab:blue", lw=1.6, label=f"fit N({mean:.3f}, {std:.3f})")
        if reference and cond in reference:
            rm, rs = reference[cond]
            ax.plot(x, _gauss(x, rm, rs), color="crimson", ls="--", lw=1.2,
                    label=f"paper N({rm:.3f}, {rs:.3f})")
        if log_y:
            ax.set_yscale("log")
        ax.set(xlim=(0, 1), xlabel="invisibility score", ylabel="density", title=cond)
        ax.legend(fontsize=7.5)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


__all__ = ["PAPER_FITS", "PAPER_POINT", "curves_from_results", "plot_coverage_curves",
           "plot_score_histograms",
           "save_figure"]
