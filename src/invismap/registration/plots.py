"""Figures for displacement statistics (paper Figure 6: x and y displacement histograms).

Built on ``matplotlib.figure.Figure`` directly (no pyplot, no global state) and written atomically.
Everything is drawn from the histogram counts stored in ``displacement.json``, so a figure can be
redrawn without recomputing any flow.

Example:
    >>> plot_displacement_histograms(s["hist_x"], s["hist_y"], "fig6.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from invismap.io import save_figure
from invismap.registration.displacement import HIST_EDGES, histogram_stats

__all__ = ["plot_displacement_histograms", "plot_row_profile", "save_figure"]


def plot_displacement_histograms(hist_x: Sequence[int], hist_y: Sequence[int], path: str | Path, *,
                                 title: str = "", big: float = 5.0, limit: float = 15.0) -> Path:
    """Two panels, x and y displacement of color relative to thermal (share of counted pixels).

    Args:
        hist_x: counts on :data:`~invismap.registration.displacement.HIST_EDGES` for dx.
        hist_y: counts for dy.
        path: output PNG.
        title: figure title.
        big: draw dashed lines at ``+-big`` pixels.
        limit: x-axis range ``[-limit, limit]`` pixels (overflow bins are reported in the legend).

    Returns:
        the written path.
    """
    fig = Figure(figsize=(10, 3.6))
    stats = histogram_stats(np.asarray(hist_x), np.asarray(hist_y), big=big)
    centers = (HIST_EDGES[1:-2] + HIST_EDGES[2:-1]) / 2  # finite bins only
    width = HIST_EDGES[2] - HIST_EDGES[1]
    for i, (h, axis) in enumerate(((np.asarray(hist_x), "x"), (np.asarray(hist_y), "y"))):
        ax = fig.add_subplot(1, 2, i + 1)
        total = max(int(h.sum()), 1)
        share = h[1:-1] / total
        ax.bar(centers, share, width=width, color="tab:blue" if axis == "x" else "tab:orange")
        med = stats[f"median_d{axis}"]
        ax.axvline(0, color="k", lw=0.8)
        for s in (-big, big):
            ax.axvline(s, color="gray", ls="--", lw=0.8)
        if np.isfinite(med):
            ax.axvline(med, color="r", lw=1.2, label=f"median {med:+.2f} px")
        out = (h[0] + h[-1]) / total
        ax.plot([], [], " ", label=f"|d{axis}| >= {big:g} px: {100 * stats[f'share_{axis}_ge_big']:.1f}%")
        ax.plot([], [], " ", label=f"beyond +-20 px: {100 * out:.1f}%")
        ax.set_xlim(-limit, limit)
        ax.set_xlabel(f"{axis} displacement, color minus thermal (px)"
                      + (" (< 0: color above)" if axis == "y" else ""))
        ax.set_ylabel("share of edge pixels")
        ax.legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_row_profile(bands: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Median dx and dy per horizontal band of the image (rows top to bottom).

    Args:
        bands: dicts with ``rows`` ``[start, stop)``, ``median_dx``, ``median_dy``, ``n_pixels``.
        path: output PNG.
        title: figure title.

    Returns:
        the written path.
    """
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    mid = [(b["rows"][0] + b["rows"][1]) / 2 for b in bands]
    ax.plot([b["median_dy"] for b in bands], mid, "o-", color="tab:orange", label="median dy")
    ax.plot([b["median_dx"] for b in bands], mid, "s--", color="tab:blue", label="median dx")
    ax.axvline(0, color="k", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("displacement, color minus thermal (px)")
    ax.set_ylabel("image row (band centre)")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return save_figure(fig, path)
