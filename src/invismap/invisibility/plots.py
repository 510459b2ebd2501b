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
from matplotlib.lines import Line2D

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


INTERVAL_METRICS = {"missed_vs_detected": "missed vs detected (pixels)",
                    "invisible_vs_visible": "invisible vs visible (pixels)",
                    "missed_vs_detected_object": "missed vs detected (objects)",
                    "pixel_auroc": "missed pixels vs the rest"}


def plot_intervals(results_by_source: Mapping[str, Mapping[str, Any]], path: str | Path,
                   metrics: Mapping[str, str] = INTERVAL_METRICS, title: str | None = None) -> Path:
    """AUROCs with their 95% intervals, one panel per metric, one row per map, a marker per condition.

    0.5 (dashed) is chance: a map whose interval straddles it cannot tell the two sets apart.

    Args:
        results_by_source: ``{source: evaluate_maps result}`` (their ``metrics`` entries).
        path: PNG file to write.
        metrics: metric key -> panel title.
    """
    names = list(results_by_source)
    conds = list(dict.fromkeys(c for r in results_by_source.values() for c in r.get("conditions", {})))
    if not names or not conds:
        raise ValueError("no results to plot")
    fig = Figure(figsize=(3.6 * len(metrics), 0.36 * len(names) + 1.6))
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)[0]
    colors = {"night": "midnightblue", "day": "darkorange"}
    for ax, (key, label) in zip(axes, metrics.items()):
        for j, cond in enumerate(conds):
            offset = (j - (len(conds) - 1) / 2) * 0.22
            for i, name in enumerate(names):
                cond_metrics = results_by_source[name].get("conditions", {}).get(cond, {}).get("metrics", {})
                e = cond_metrics.get(key) or {}
                if e.get("value") is None:
                    continue
                lo, hi = e.get("lo"), e.get("hi")
                y = len(names) - 1 - i + offset
                if lo is not None and hi is not None:
                    ax.plot([lo, hi], [y, y], color=colors.get(cond, f"C{j}"), lw=1.6)
                ax.plot(e["value"], y, "o", ms=4, color=colors.get(cond, f"C{j}"))
        ax.axvline(0.5, color="gray", ls="--", lw=0.8)
        ax.set(xlim=(0.2, 1.0), title=label, xlabel="AUROC (95% interval)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names[::-1])
    # one entry per condition, drawn apart: the first map may have no value in the first panel (n/a when the
    # color detector finds no object), and the colors still need their key
    keys = [Line2D([], [], marker="o", ms=4, ls="", color=colors.get(c, f"C{j}"), label=c)
            for j, c in enumerate(conds)]
    axes[0].legend(handles=keys, fontsize=7.5, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def write_plots(results: Mapping[str, Mapping[str, Any]], out: str | Path) -> list[Path]:
    """Every figure of an evaluation into ``out``: coverage curves per condition and set, the interval plot,
    and each map's score histograms."""
    out = Path(out)
    written = []
    conditions = next(iter(results.values()))["conditions"]
    for cond in conditions:
        for set_name in ("missed", "invisible"):
            path = out / f"coverage_{cond}_{set_name}.png"
            plot_coverage_curves(curves_from_results(results, cond, set_name), path,
                                 title=f"{cond}: coverage of {set_name} objects' pixels")
            written.append(path)
    written.append(plot_intervals(results, out / "separations.png"))
    for name, res in results.items():
        dists = {cond: c["scores"] for cond, c in res["conditions"].items()}
        written.append(plot_score_histograms(dists, out / f"scores_{name.replace(' ', '_')}.png",
                                             title=f"{name}: score distribution per condition"))
    return written


__all__ = ["INTERVAL_METRICS", "PAPER_FITS", "PAPER_POINT", "curves_from_results", "plot_coverage_curves",
           "plot_intervals", "plot_score_histograms", "save_figure", "write_plots"]
