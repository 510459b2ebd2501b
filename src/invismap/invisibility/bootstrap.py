"""Bootstrap over images: 95% intervals for figures pooled over a test set, and paired margins between maps.

A figure such as "coverage of missed-object pixels at 35.9% flagged" pools the pixels of ~50 night images; its
uncertainty comes from which images happened to be drawn, so images (not pixels) are resampled. Each
replicate draws, within every group (a condition), as many images as the group holds, with replacement; a
replicate is a row of multiplicities ``w`` and a pooled histogram is ``w @ per_image_counts``.

Two maps scored on the same images are compared with the *same* replicates (a paired bootstrap): the
margin ``metric(map) - metric(reference)`` is computed replicate by replicate, which cancels the
image-to-image variation both maps share and gives a much tighter interval than two separate ones.

Example:
    >>> w = resample_weights([np.arange(3)], n_boot=4, seed=0)
    >>> w.shape, w.sum(1).tolist()
    ((4, 3), [3.0, 3.0, 3.0, 3.0])
    >>> estimate(0.5, np.array([0.4, 0.5, 0.6]))
    {'value': 0.5, 'lo': 0.405, 'hi': 0.595}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

N_BOOT = 1000  # resamples: the 2.5th/97.5th percentiles of 1000 replicates move by < 0.005 between seeds
LEVEL = 0.95


def resample_weights(groups: Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Multiplicities of a stratified bootstrap over images.

    Args:
        groups: per group (e.g. condition), the indices of its images into one list of ``N`` images.
        n_boot: replicates ``R``.
        seed: fixes the draw (the same seed and groups give the same replicates for every map).

    Returns:
        ``(R, N)`` float64: how often each image is drawn in each replicate (each group's row sum is its
        size).
    """
    if n_boot < 1:
        raise ValueError(f"need at least one bootstrap replicate, got {n_boot}")
    n = sum(len(g) for g in groups)
    weights = np.zeros((n_boot, n))
    rng = np.random.default_rng(seed)
    rows = np.arange(n_boot)[:, None]
    for g in groups:
        g = np.asarray(g, np.intp)
        if len(g) == 0:
            continue
        draw = g[rng.integers(0, len(g), size=(n_boot, len(g)))]  # (R, n_g) image indices
        np.add.at(weights, (np.broadcast_to(rows, draw.shape), draw), 1.0)
    return weights


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN, NaN when fewer than half are finite)."""
    r = np.asarray(replicates, np.float64).reshape(-1)
    finite = r[np.isfinite(r)]
    if finite.size == 0 or finite.size < r.size / 2:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def estimate(value: float, replicates: np.ndarray, level: float = LEVEL) -> dict[str, float | None]:
    """``{value, lo, hi}``: a point estimate with its bootstrap interval (NaN as None, rounded to 1e-4)."""
    lo, hi = interval(replicates, level)
    return {k: (round(float(v), 4) if v is not None and math.isfinite(v) else None)
            for k, v in (("value", value), ("lo", lo), ("hi", hi))}


def format_estimate(e: dict, spec: str = ".3f") -> str:
    """``value [lo, hi]`` of an :func:`estimate`, each formatted with ``spec`` (``n/a`` without a value).

    >>> format_estimate({"value": 4.9, "lo": -1.8, "hi": 18.8}, "+.1f")
    '+4.9 [-1.8, +18.8]'
    """
    if e.get("value") is None:
        return "n/a"
    if e.get("lo") is None:
        return format(e["value"], spec)
    return f"{e['value']:{spec}} [{e['lo']:{spec}}, {e['hi']:{spec}}]"


__all__ = ["LEVEL", "N_BOOT", "estimate", "format_estimate", "interval", "resample_weights"]
