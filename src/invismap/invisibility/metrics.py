"""How well an invisibility map points at the objects the color camera misses (pure numpy).

An invisibility map gives every pixel of a color image a score in [0, 1]. Flagging the pixels with
score >= τ is a detector of "the color image cannot be trusted here"; two numbers describe it:

    coverage(τ) = share of object pixels with score >= τ        (recall over the object pixels)
    flagged(τ)  = share of all pixels   with score >= τ        (how much of the image is flagged)

The paper (Pixel Invisibility, Section 4) reports a single operating point, 77.5% coverage of the
objects the color detector misses at 35.9% of pixels flagged. Sweeping τ gives a coverage-vs-flagged
curve (an ROC-like curve whose x axis counts all pixels, objects included); a map that is random
noise lies on the diagonal coverage = flagged. The summaries here:

- :meth:`ScoreHistogram.coverage_at_flagged`: the curve read at a matched flagged share (e.g. the
  paper's 35.9%), so maps with different score scales are compared at equal cost;
- :meth:`ScoreHistogram.normalised_area`: area under the curve for flagged in [0, 0.30], divided by
  0.30 (random map 0.15; a perfect map ``1 - p / 0.6`` for an object pixel share ``p``, so 1 as p -> 0);
- :meth:`ScoreHistogram.auroc`: pixel AUROC, object pixels positive and all other pixels negative.

Over a dataset, scores are pooled in fixed histograms (1001 bins on [0, 1]) so that the curves are
exact at the bins' resolution (0.001) and memory does not grow with the number of images.

Example:
    >>> h = ScoreHistogram()
    >>> _ = h.add(np.array([[0.9, 0.1]]), np.array([[True, False]]))
    >>> h.coverage(0.5), h.flagged(0.5), h.auroc()
    (1.0, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BINS = 1001  # bin k holds k/1000 <= s < (k+1)/1000; the last bin holds exactly 1.0
_EPS = 1e-6  # a score within 1e-6 below τ counts as reaching it (float32 0.35 is 0.3499999940...)


def object_pixel_mask(boxes_xyxy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of boxes as a boolean ``(H, W)`` mask.

    A pixel belongs to a box when its center ``(col + 0.5, row + 0.5)`` lies inside it, i.e. columns
    ``round(x1) .. round(x2) - 1``; a box thinner than one pixel still marks the pixel its center is in.
    Boxes are clipped to the image; empty or degenerate (x2 <= x1) boxes mark nothing.

    Args:
        boxes_xyxy: ``(N, 4)`` pixel boxes ``[x1, y1, x2, y2]`` (``(N, 5)`` ``[cls, x1, y1, x2, y2]`` is
            accepted too: the class column is ignored).
        height, width: image size.

    Returns:
        ``(H, W)`` bool.

    Example:
        >>> object_pixel_mask(np.array([[1, 0, 3, 2]]), 3, 4).astype(int)
        array([[0, 1, 1, 0],
               [0, 1, 1, 0],
               [0, 0, 0, 0]])
    """
    b = np.asarray(boxes_xyxy, np.float64)
    if b.size and (b.ndim != 2 or b.shape[1] not in (4, 5)):
        raise ValueError(f"boxes must be (N, 4) xyxy or (N, 5) [cls, x1, y1, x2, y2], got {b.shape}")
    b = b.reshape(-1, b.shape[-1] if b.size else 4)[:, -4:]
    mask = np.zeros((int(height), int(width)), bool)
    for x1, y1, x2, y2 in b:
        if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
            continue
        c0, c1 = _pixel_span(x1, x2, width)
        r0, r1 = _pixel_span(y1, y2, height)
        mask[r0:r1, c0:c1] = True
    return mask


def box_means(score: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
    """Mean score inside each box: one number per object, whatever its size (object-level metrics).

    A box covers the pixels :func:`object_pixel_mask` gives it (pixel centers inside, at least one pixel).

    Args:
        score: ``(H, W)`` map.
        boxes_xyxy: ``(N, 4)`` pixel boxes (``(N, 5)`` with a leading class column is accepted).

    Returns:
        ``(N,)`` float64; NaN for a box that is degenerate or entirely outside the image.

    Example:
        >>> box_means(np.array([[0.0, 1.0], [0.0, 0.5]]), np.array([[1, 0, 2, 2], [0, 0, 1, 1]])).tolist()
        [0.75, 0.0]
    """
    score = np.asarray(score)
    b = np.asarray(boxes_xyxy, np.float64)
    b = b.reshape(-1, b.shape[-1] if b.size else 4)[:, -4:]
    h, w = score.shape
    out = np.full(len(b), np.nan)
    for i, (x1, y1, x2, y2) in enumerate(b):
        if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
            continue
        c0, c1 = _pixel_span(x1, x2, w)
        r0, r1 = _pixel_span(y1, y2, h)
        if c1 > c0 and r1 > r0:
            out[i] = float(score[r0:r1, c0:c1].mean())
    return out


def _pixel_span(lo: float, hi: float, n: int) -> tuple[int, int]:
    """Pixels whose centers lie in ``[lo, hi)``, at least the one holding the box center, clipped."""
    a, b = int(np.floor(lo + 0.5)), int(np.floor(hi + 0.5))
    if b <= a:  # thinner than a pixel: keep the pixel its center falls in
        a = int(np.floor((lo + hi) / 2))
        b = a + 1
    return max(a, 0), min(b, n)


def coverage_flagged(score: np.ndarray, object_mask: np.ndarray,
                     thresholds: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact coverage and flagged share of one map at each threshold.

    Args:
        score: ``(H, W)`` scores in [0, 1].
        object_mask: ``(H, W)`` bool, the object pixels.
        thresholds: ``(T,)`` values of τ.

    Returns:
        ``(coverage, flagged)``, each ``(T,)`` float64: share of object pixels with ``score >= τ`` (NaN
        when the mask is empty) and share of all pixels with ``score >= τ``; a score 1e-6 or less below τ
        counts as reaching it (float32 rounding), as in :class:`ScoreHistogram`.

    Example:
        >>> coverage_flagged(np.array([[0.2, 0.6, 0.9, 0.0]]), np.array([[1, 1, 0, 0]], bool), [0.5])
        (array([0.5]), array([0.5]))
    """
    score, object_mask = _check_map(score, object_mask)
    t = np.asarray(thresholds, np.float64).reshape(-1) - _EPS
    all_sorted = np.sort(score.reshape(-1))
    obj_sorted = np.sort(score[object_mask])
    # count of values >= τ = n - (number of values < τ)
    flagged = (all_sorted.size - np.searchsorted(all_sorted, t, side="left")) / max(all_sorted.size, 1)
    if obj_sorted.size:
        coverage = (obj_sorted.size - np.searchsorted(obj_sorted, t, side="left")) / obj_sorted.size
    else:
        coverage = np.full(t.shape, np.nan)
    return coverage.astype(np.float64), flagged.astype(np.float64)


def _check_map(score: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    score = np.asarray(score)
    if score.ndim != 2:
        raise ValueError(f"score map must be (H, W), got shape {score.shape}")
    if mask is None:
        mask = np.zeros(score.shape, bool)
    mask = np.asarray(mask)
    if mask.shape != score.shape:
        raise ValueError(f"object mask shape {mask.shape} differs from the score map's {score.shape}")
    if mask.dtype != bool:
        mask = mask.astype(bool)
    return score, mask


class ScoreHistogram:
    """Pooled histograms of all-pixel and object-pixel scores, and the curves read from them.

    Object pixels are a subset of all pixels (every :meth:`add` counts the whole map in the all-pixel
    histogram and the masked pixels in the object histogram), so the negatives of :meth:`auroc` are the
    all-pixel counts minus the object counts. Thresholds are on the bin grid ``k / (bins - 1)``; a τ between
    grid points acts as the next grid point above it.

    Args:
        bins: number of bins; bin ``k`` (``k < bins - 1``) holds ``k/K <= s < (k+1)/K`` with ``K = bins - 1``,
            and the last bin holds ``s = 1`` exactly.
    """

    def __init__(self, bins: int = DEFAULT_BINS):
        if bins < 2:
            raise ValueError(f"need at least 2 bins, got {bins}")
        self.bins = int(bins)
        self.all_counts = np.zeros(self.bins, np.int64)
        self.obj_counts = np.zeros(self.bins, np.int64)
        # exact moments of the all-pixel scores (the histogram would round them to the bin grid)
        self._sum = 0.0
        self._sumsq = 0.0

    @classmethod
    def from_counts(cls, all_counts: np.ndarray, obj_counts: np.ndarray | None = None, score_sum: float = 0.0,
                    score_sumsq: float = 0.0) -> ScoreHistogram:
        """A histogram holding given counts (e.g. per-image counts summed over a set of images).

        ``score_sum`` and ``score_sumsq`` are the exact sum and sum of squares of the scores, for
        :meth:`mean` and :meth:`std`.
        """
        h = cls(len(all_counts))
        h.all_counts = np.asarray(all_counts, np.int64).copy()
        if obj_counts is not None:
            h.obj_counts = np.asarray(obj_counts, np.int64).copy()
        if h.obj_counts.shape != h.all_counts.shape or (h.obj_counts > h.all_counts).any():
            raise ValueError("object counts must have the all-pixel counts' bins and not exceed them")
        h._sum, h._sumsq = float(score_sum), float(score_sumsq)
        return h

    @property
    def n_pixels(self) -> int:
        return int(self.all_counts.sum())

    @property
    def n_object_pixels(self) -> int:
        return int(self.obj_counts.sum())

    def bin_index(self, score: np.ndarray) -> np.ndarray:
        """Bin of each score (scores are clipped to [0, 1] first)."""
        k = self.bins - 1
        s = np.clip(np.asarray(score, np.float64), 0.0, 1.0)
        return np.minimum(np.floor((s + _EPS) * k), k).astype(np.intp)

    def add(self, score: np.ndarray, mask: np.ndarray | None = None,
            bin_index: np.ndarray | None = None) -> ScoreHistogram:
        """Count one map: all its pixels, and those under ``mask`` as object pixels.

        Args:
            score: ``(H, W)`` scores in [0, 1] (finite; values a hair outside [0, 1] are clipped).
            mask: ``(H, W)`` bool object pixels, or None (no objects in this image).
            bin_index: ``self.bin_index(score)`` when already computed (several histograms sharing one
                map bin it once).

        Returns:
            self, so calls chain.
        """
        score, mask = _check_map(score, mask)
        if not np.isfinite(score).all():
            raise ValueError("score map holds NaN or inf values")
        if bin_index is not None and np.shape(bin_index) != score.shape:
            raise ValueError(f"bin_index shape {np.shape(bin_index)} differs from the map's {score.shape}")
        idx = self.bin_index(score) if bin_index is None else bin_index
        self.all_counts += np.bincount(idx.reshape(-1), minlength=self.bins)
        if mask.any():
            self.obj_counts += np.bincount(idx[mask], minlength=self.bins)
        s = score.astype(np.float64)
        self._sum += float(s.sum())
        self._sumsq += float(np.square(s).sum())
        return self

    def merge(self, other: ScoreHistogram) -> ScoreHistogram:
        """Add another histogram's counts (same bins) to this one."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {other.bins} and {self.bins} bins")
        self.all_counts += other.all_counts
        self.obj_counts += other.obj_counts
        self._sum += other._sum
        self._sumsq += other._sumsq
        return self

    def _at_or_above(self, counts: np.ndarray) -> np.ndarray:
        """``(bins + 1,)`` counts with score >= grid point k, for k = 0..bins (the last is 0)."""
        return np.concatenate([np.cumsum(counts[::-1])[::-1], [0]])

    def _grid_index(self, tau: float) -> int:
        k = self.bins - 1
        return int(np.clip(np.ceil((float(tau) - _EPS) * k), 0, self.bins))

    def coverage(self, tau: float) -> float:
        """Share of object pixels with score >= τ (NaN when no object pixel was added)."""
        n = self.n_object_pixels
        if n == 0:
            return float("nan")
        return float(self._at_or_above(self.obj_counts)[self._grid_index(tau)] / n)

    def flagged(self, tau: float) -> float:
        """Share of all pixels with score >= τ (NaN when nothing was added)."""
        n = self.n_pixels
        if n == 0:
            return float("nan")
        return float(self._at_or_above(self.all_counts)[self._grid_index(tau)] / n)

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coverage-vs-flagged curve over every grid threshold.

        Returns:
            ``(thresholds, flagged, coverage)``, each ``(bins + 1,)``, ordered by increasing flagged
            share: from τ above 1 (nothing flagged, point (0, 0)) down to τ = 0 (everything, (1, 1)).
            Coverage is NaN throughout when no object pixel was added.
        """
        if self.n_pixels == 0:
            raise ValueError("empty histogram: add at least one map first")
        k = self.bins - 1
        taus = np.arange(self.bins + 1, dtype=np.float64) / k  # the last (> 1) flags nothing
        flagged = self._at_or_above(self.all_counts) / self.n_pixels
        n_obj = self.n_object_pixels
        coverage = (self._at_or_above(self.obj_counts) / n_obj) if n_obj else np.full(taus.shape, np.nan)
        return taus[::-1].copy(), flagged[::-1].copy(), coverage[::-1].copy()

    def coverage_at_flagged(self, flagged_share: float | np.ndarray) -> float | np.ndarray:
        """Coverage read off the curve at given flagged shares, interpolated linearly between grid points.

        Linear interpolation is what a map achieves by flagging a random part of the pixels in the bin
        that straddles the requested share, so it is attainable, not an optimistic guess.

        Args:
            flagged_share: a share in [0, 1], or an array of them.

        Returns:
            A float for a scalar input, else an array of the input's shape (NaN without object pixels).
        """
        if self.n_pixels == 0:
            raise ValueError("empty histogram: add at least one map first")
        out = coverage_at_flagged_from_counts(self.all_counts, self.obj_counts, flagged_share)
        return float(out) if out.ndim == 0 else out

    def normalised_area(self, max_flagged: float = 0.30) -> float:
        """Area under coverage-vs-flagged for flagged in ``[0, max_flagged]``, divided by ``max_flagged``.

        A random map scores ``max_flagged / 2`` (0.15 at 0.30); a perfect binary map scores
        ``1 - p / (2 * max_flagged)`` for an object pixel share ``p <= max_flagged`` (it must flag ``p``
        of the image to cover every object pixel), so 1 only as ``p -> 0``.
        """
        if not 0.0 < max_flagged <= 1.0:
            raise ValueError(f"max_flagged must be in (0, 1], got {max_flagged}")
        _, f, c = self.curve()
        if np.isnan(c).all():
            return float("nan")
        f, c = _dedupe(f, c)
        keep = f < max_flagged
        fx = np.concatenate([f[keep], [max_flagged]])
        cx = np.concatenate([c[keep], [np.interp(max_flagged, f, c)]])
        return float(np.trapezoid(cx, fx) / max_flagged)

    def auroc(self) -> float:
        """Pixel AUROC: P(score of an object pixel > score of a non-object pixel), ties (same bin) count 0.5.

        NaN when there are no object pixels or no non-object pixels.
        """
        return auroc_from_counts(self.obj_counts, self.all_counts - self.obj_counts)

    def mean(self) -> float:
        """Exact mean of all added pixel scores."""
        n = self.n_pixels
        return self._sum / n if n else float("nan")

    def std(self) -> float:
        """Exact (population) standard deviation of all added pixel scores."""
        n = self.n_pixels
        if not n:
            return float("nan")
        return float(np.sqrt(max(self._sumsq / n - (self._sum / n) ** 2, 0.0)))

    def histogram(self, bins: int = 100, objects: bool = False) -> np.ndarray:
        """All-pixel (or object-pixel) counts regrouped into ``bins`` equal bins on [0, 1].

        ``bins`` must divide ``self.bins - 1``; scores of exactly 1 go to the last bin.
        """
        k = self.bins - 1
        if bins < 1 or k % bins:
            raise ValueError(f"{bins} bins do not divide the {k} fine bins")
        counts = self.obj_counts if objects else self.all_counts
        out = counts[:k].reshape(bins, k // bins).sum(1)
        out[-1] += counts[k]
        return out


def auroc_from_counts(pos_counts: np.ndarray, neg_counts: np.ndarray) -> float | np.ndarray:
    """AUROC from histograms of positive and negative scores on the same increasing bins.

    ``P(pos > neg) + 0.5 P(pos, neg in the same bin)``: the trapezoidal area under the ROC curve. NaN when
    either histogram is empty. Leading axes are a batch (e.g. bootstrap replicates): ``(..., bins)`` inputs
    give ``(...)`` AUROCs; 1-D inputs give a float.

    Example:
        >>> auroc_from_counts(np.array([0, 1, 1]), np.array([1, 1, 0]))  # (1 + 1 + 0.5 + 1) / 4
        0.875
        >>> auroc_from_counts(np.array([[0, 1], [1, 0]]), np.array([[1, 0], [1, 0]])).tolist()
        [1.0, 0.5]
    """
    pos = np.asarray(pos_counts, np.float64)
    neg = np.asarray(neg_counts, np.float64)
    if pos.shape != neg.shape:
        raise ValueError(f"histograms have different bins: {pos.shape} vs {neg.shape}")
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    neg_below = np.cumsum(neg, -1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (pos * (neg_below + 0.5 * neg)).sum(-1) / (n_pos * n_neg)
    out = np.where((n_pos == 0) | (n_neg == 0), np.nan, out)
    return float(out) if out.ndim == 0 else out


def coverage_at_flagged_from_counts(all_counts: np.ndarray, obj_counts: np.ndarray,
                                    flagged_share: float | np.ndarray) -> np.ndarray:
    """Coverage at given flagged shares from binned all-pixel and object-pixel counts.

    The curve is that of :meth:`ScoreHistogram.curve` (one point per grid threshold), read by linear
    interpolation. Leading axes of the counts are a batch (e.g. bootstrap replicates).

    Args:
        all_counts, obj_counts: ``(..., bins)`` counts on the same increasing bins.
        flagged_share: a share in [0, 1] or an array ``(F,)`` of them.

    Returns:
        ``(...)`` for a scalar share, else ``(..., F)``; NaN where a row has no object pixels.

    Example:
        >>> coverage_at_flagged_from_counts(np.array([2, 2]), np.array([0, 1]), 0.5).item()
        1.0
    """
    x = np.asarray(flagged_share, np.float64)
    if ((x < 0) | (x > 1) | ~np.isfinite(x)).any():
        raise ValueError(f"flagged shares must be in [0, 1], got {flagged_share}")
    a = np.asarray(all_counts, np.float64)
    o = np.asarray(obj_counts, np.float64)
    if a.shape != o.shape:
        raise ValueError(f"histograms have different bins: {a.shape} vs {o.shape}")
    batch = a.shape[:-1]
    a, o = a.reshape(-1, a.shape[-1]), o.reshape(-1, o.shape[-1])
    out = np.full((len(a), x.size), np.nan)
    for r in range(len(a)):
        n, n_obj = a[r].sum(), o[r].sum()
        if n == 0 or n_obj == 0:
            continue
        # points (flagged, coverage) from tau above 1 (0, 0) down to tau = 0 (1, 1)
        f = np.concatenate([[0.0], np.cumsum(a[r][::-1])]) / n
        c = np.concatenate([[0.0], np.cumsum(o[r][::-1])]) / n_obj
        out[r] = np.interp(x.reshape(-1), *_dedupe(f, c))
    return out.reshape(batch + x.shape)


def _dedupe(f: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated flagged values (empty bins), keeping one point per distinct x for interpolation.

    Object pixels are a subset of all pixels, so an empty all-pixel bin is an empty object bin too and
    repeated x values carry the same coverage.
    """
    keep = np.concatenate([[True], np.diff(f) > 0])
    return f[keep], c[keep]


def gaussian_fit(values: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood normal fit: ``(mean, std)`` (population std) of finite values.

    Example:
        >>> gaussian_fit(np.array([1.0, 3.0]))
        (2.0, 1.0)
    """
    v = np.asarray(values, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("gaussian_fit needs at least one finite value")
    return float(v.mean()), float(v.std())


def distribution_overlap(h1: np.ndarray, h2: np.ndarray) -> dict[str, float | np.ndarray]:
    """How much two score distributions overlap, from histograms on the same bins.

    Both histograms are normalised to sum 1 first. Leading axes are a batch (e.g. bootstrap replicates):
    ``(..., bins)`` inputs give ``(...)`` arrays.

    Returns:
        ``overlap``: overlap coefficient ``sum_k min(p_k, q_k)`` (1 identical, 0 disjoint);
        ``bhattacharyya``: Bhattacharyya coefficient ``sum_k sqrt(p_k q_k)`` (1 identical, 0 disjoint).

    Example:
        >>> distribution_overlap(np.array([1, 1, 0]), np.array([0, 1, 1]))
        {'overlap': 0.5, 'bhattacharyya': 0.5}
    """
    p = np.asarray(h1, np.float64)
    q = np.asarray(h2, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms have different bins: {p.shape} vs {q.shape}")
    if (p < 0).any() or (q < 0).any() or (p.sum(-1) <= 0).any() or (q.sum(-1) <= 0).any():
        raise ValueError("histograms must be non-negative and non-empty")
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    out = {"overlap": np.minimum(p, q).sum(-1), "bhattacharyya": np.sqrt(p * q).sum(-1)}
    return {k: float(v) if v.ndim == 0 else v for k, v in out.items()}


__all__ = ["DEFAULT_BINS", "ScoreHistogram", "auroc_from_counts", "box_means",
           "coverage_at_flagged_from_counts", "coverage_flagged", "distribution_overlap",
           "gaussian_fit", "object_pixel_mask"]
