"""Residual color/thermal misalignment: dense displacement on edge images, and its statistics.

Color and thermal images do not share intensities, but they do share edges (object outlines, road
borders, poles). We therefore compare *edge images*: the gradient magnitude of each modality, divided by
its local average so that a faint thermal edge and a strong color edge look alike. Dense optical flow
(OpenCV DIS, or Farneback) between the two edge images gives, for every thermal pixel ``x``, the
displacement ``d(x)`` such that the color content seen at ``x`` in thermal sits at ``x + d(x)`` in color.
Sign convention used everywhere in this package: ``dy < 0`` means color content sits *above* thermal.

Flow is only meaningful where both images have structure, so statistics are computed on a mask of
pixels with a strong thermal edge, a matching color edge, and a forward/backward consistent flow.

This measures the displacement histograms of the paper's Figure 6 (Section 4.4, "Pixel Invisibility:
Detect Object Unseen in Color Domain").

Example:
    >>> flow, mask = dense_displacement(thermal, color)  # doctest: +SKIP
    >>> stats = displacement_stats(flow, mask)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "DEFAULT_PARAMS",
    "HIST_EDGES",
    "DisplacementParams",
    "box_shifts",
    "dense_displacement",
    "densify_flow",
    "displacement_mask",
    "displacement_stats",
    "edge_image",
    "estimate_translation",
    "fit_homography_to_flow",
    "histogram_stats",
    "homography_flow",
    "label_offsets",
    "measure_residual",
    "to_gray",
    "translation_flow",
]

# Histogram bins (pixels) shared by per-pair and pooled histograms: 0.25 px wide, -20..20 px,
# plus two overflow bins so that every masked pixel is counted.
HIST_EDGES = np.concatenate([[-np.inf], np.arange(-20.0, 20.0 + 1e-9, 0.25), [np.inf]])


@dataclass(frozen=True)
class DisplacementParams:
    """Settings of the edge-image flow.

    Attributes:
        method: ``"dis"`` (OpenCV DIS optical flow, default) or ``"farneback"``.
        sigma: Gaussian blur (pixels) before the gradient; removes sensor noise.
        norm_window: side (pixels) of the box over which gradient magnitude is normalised.
        edge_thresh: a pixel counts as an edge when its normalised edge value exceeds this (0..1).
        fb_thresh: forward/backward consistency limit (pixels) for a pixel to be kept in the mask.
        border: pixels within this distance of the image border are never counted.
        finest_scale: DIS pyramid level where the search stops (0 = full resolution, 1 = half, ...).
        patch_size: DIS patch side, pixels (at the finest level used).
        patch_stride: DIS patch stride, pixels.
        var_iters: DIS variational refinement iterations (smoothing), 0 to disable.
    """

    method: str = "dis"
    sigma: float = 1.0
    norm_window: int = 31
    edge_thresh: float = 0.35
    fb_thresh: float = 1.0
    border: int = 16
    finest_scale: int = 1
    patch_size: int = 8
    patch_stride: int = 4
    var_iters: int = 5


DEFAULT_PARAMS = DisplacementParams()


def to_gray(image: np.ndarray) -> np.ndarray:
    """Gray float32 image ``(H, W)`` from ``(H, W)`` or RGB ``(H, W, 3)`` input of any numeric dtype."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"expected an image (H, W) or (H, W, 3), got shape {image.shape}")
    return image.astype(np.float32)


def edge_image(image: np.ndarray, *, sigma: float = 1.0, norm_window: int = 31) -> np.ndarray:
    """Locally normalised gradient magnitude, comparable across color and thermal.

    The gradient magnitude of the blurred image is divided by its local mean (box of ``norm_window``
    pixels) plus a small floor, then squashed to 0..1 with ``m / (m + 1)``. Contrast polarity, the
    global gain and slow illumination changes therefore do not matter, only where edges are.

    Args:
        image: gray ``(H, W)`` or RGB ``(H, W, 3)``, any numeric dtype.
        sigma: Gaussian blur before the Sobel gradient, in pixels.
        norm_window: side of the local normalisation box, in pixels.

    Returns:
        float32 ``(H, W)`` edge image in ``[0, 1)``.
    """
    g = to_gray(image)
    if sigma > 0:
        g = cv2.GaussianBlur(g, (0, 0), sigma)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.sqrt(gx * gx + gy * gy)
    local = cv2.blur(mag, (norm_window, norm_window))
    # The floor keeps flat, noisy regions (sky, dark thermal background) from being blown up to edges.
    floor = 0.25 * float(np.mean(mag)) + 1e-6
    m = mag / (local + floor)
    return (m / (m + 1.0)).astype(np.float32)


def _to_u8(e: np.ndarray) -> np.ndarray:
    return np.clip(e * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _flow(src: np.ndarray, dst: np.ndarray, params: DisplacementParams) -> np.ndarray:
    """Flow ``(H, W, 2)`` with ``src(x) ~ dst(x + flow(x))`` between two uint8 edge images."""
    method = params.method
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        dis.setFinestScale(params.finest_scale)
        dis.setPatchSize(params.patch_size)
        dis.setPatchStride(params.patch_stride)
        dis.setGradientDescentIterations(25)
        dis.setVariationalRefinementIterations(params.var_iters)
        dis.setVariationalRefinementAlpha(20.0)
        return dis.calc(src, dst, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(src, dst, None, 0.5, 4, 21, 5, 7, 1.5, 0)
    raise ValueError(f"unknown flow method '{method}', expected 'dis' or 'farneback'")


def _sample(field: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``field(x + flow(x))`` by bilinear sampling; ``field`` is ``(H, W)`` or ``(H, W, C)``."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(field, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def displacement_mask(edges_thr: np.ndarray, edges_rgb: np.ndarray, flow: np.ndarray,
                      back_flow: np.ndarray | None, params: DisplacementParams = DEFAULT_PARAMS
                      ) -> np.ndarray:
    """Pixels whose displacement is trustworthy.

    A pixel is kept when (1) the thermal edge image exceeds ``edge_thresh`` there, (2) the color edge
    image exceeds it at the matched position ``x + flow(x)``, (3) going forward then backward returns
    within ``fb_thresh`` pixels (if ``back_flow`` is given), and (4) it is not near the border.

    Args:
        edges_thr: thermal edge image ``(H, W)`` from :func:`edge_image`.
        edges_rgb: color edge image ``(H, W)``.
        flow: thermal-to-color displacement ``(H, W, 2)``.
        back_flow: color-to-thermal displacement ``(H, W, 2)`` or None.
        params: thresholds.

    Returns:
        bool ``(H, W)`` mask.
    """
    mask = edges_thr > params.edge_thresh
    mask &= _sample(edges_rgb, flow) > params.edge_thresh
    if back_flow is not None:
        fb = flow + _sample(back_flow, flow)
        mask &= np.hypot(fb[..., 0], fb[..., 1]) < params.fb_thresh
    b = params.border
    if b > 0:
        mask[:b] = mask[-b:] = False
        mask[:, :b] = mask[:, -b:] = False
    return mask


def dense_displacement(thermal: np.ndarray, color: np.ndarray,
                       params: DisplacementParams = DEFAULT_PARAMS) -> tuple[np.ndarray, np.ndarray]:
    """Dense displacement of color content relative to thermal, from edge images.

    Args:
        thermal: thermal image ``(H, W)`` (any numeric dtype).
        color: registered color image ``(H, W, 3)`` RGB or ``(H, W)``, same size as ``thermal``.
        params: flow and mask settings.

    Returns:
        ``(flow, mask)``: float32 ``(H, W, 2)`` with ``flow[..., 0] = dx``, ``flow[..., 1] = dy`` (color
        position minus thermal position, pixels), and bool ``(H, W)`` mask of trustworthy pixels.
    """
    if thermal.shape[:2] != color.shape[:2]:
        raise ValueError(f"thermal {thermal.shape[:2]} and color {color.shape[:2]} differ in size; "
                         "register the color image onto the thermal image first")
    e_thr = edge_image(thermal, sigma=params.sigma, norm_window=params.norm_window)
    e_rgb = edge_image(color, sigma=params.sigma, norm_window=params.norm_window)
    u_thr, u_rgb = _to_u8(e_thr), _to_u8(e_rgb)
    flow = _flow(u_thr, u_rgb, params)
    back = _flow(u_rgb, u_thr, params)
    mask = displacement_mask(e_thr, e_rgb, flow, back, params)
    return flow, mask


def displacement_stats(flow: np.ndarray, mask: np.ndarray | None = None, *, big: float = 5.0) -> dict:
    """Statistics of a displacement field on the masked pixels.

    Args:
        flow: ``(H, W, 2)`` displacement (dx, dy) in pixels.
        mask: bool ``(H, W)``; None counts every pixel.
        big: threshold (pixels) for "displaced" shares.

    Returns:
        dict with ``n_pixels``, ``mask_fraction``, ``median_dx``, ``median_dy``, ``mean_dx``, ``mean_dy``,
        ``share_ge_big`` (Euclidean norm >= big), ``share_x_ge_big`` (``|dx| >= big``), ``share_y_ge_big``,
        and ``hist_x``/``hist_y`` (counts on :data:`HIST_EDGES`). Values are NaN when no pixel is kept.
    """
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected flow (H, W, 2), got shape {flow.shape}")
    m = np.ones(flow.shape[:2], bool) if mask is None else mask.astype(bool)
    dx, dy = flow[..., 0][m].astype(np.float64), flow[..., 1][m].astype(np.float64)
    n = int(dx.size)
    nan = float("nan")
    norm = np.hypot(dx, dy)
    return {
        "n_pixels": n,
        "mask_fraction": n / m.size,
        "median_dx": float(np.median(dx)) if n else nan,
        "median_dy": float(np.median(dy)) if n else nan,
        "mean_dx": float(dx.mean()) if n else nan,
        "mean_dy": float(dy.mean()) if n else nan,
        "share_ge_big": float((norm >= big).mean()) if n else nan,
        "share_x_ge_big": float((np.abs(dx) >= big).mean()) if n else nan,
        "share_y_ge_big": float((np.abs(dy) >= big).mean()) if n else nan,
        "hist_x": np.histogram(dx, HIST_EDGES)[0].astype(np.int64),
        "hist_y": np.histogram(dy, HIST_EDGES)[0].astype(np.int64),
    }


def _hist_quantile(counts: np.ndarray, q: float) -> float:
    """Quantile of a histogram on :data:`HIST_EDGES` (linear within a bin; overflow bins clamp)."""
    total = counts.sum()
    if total == 0:
        return float("nan")
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * total, side="left"))
    lo, hi = HIST_EDGES[i], HIST_EDGES[i + 1]
    if not np.isfinite(lo):
        return float(hi)
    if not np.isfinite(hi):
        return float(lo)
    before = cum[i - 1] if i > 0 else 0
    frac = (q * total - before) / max(counts[i], 1)
    return float(lo + frac * (hi - lo))


def histogram_stats(hist_x: np.ndarray, hist_y: np.ndarray, *, big: float = 5.0) -> dict:
    """Median and share ``|d| >= big`` per axis from pooled histograms on :data:`HIST_EDGES`.

    Used for pooled statistics over many pairs without keeping every pixel. The share of Euclidean
    displacement ``>= big`` needs joint values and is pooled separately (pixel-weighted).
    """
    centers_lo = HIST_EDGES[:-1]
    centers_hi = HIST_EDGES[1:]

    def share(h: np.ndarray) -> float:
        tot = h.sum()
        if tot == 0:
            return float("nan")
        # A bin counts when it lies entirely at |d| >= big (bin edges fall on multiples of 0.25 px).
        big_bins = (centers_hi <= -big) | (centers_lo >= big)
        return float(h[big_bins].sum() / tot)

    return {"median_dx": _hist_quantile(hist_x, 0.5), "median_dy": _hist_quantile(hist_y, 0.5),
            "share_x_ge_big": share(hist_x), "share_y_ge_big": share(hist_y)}


def translation_flow(shape: tuple[int, int], dx: float, dy: float) -> np.ndarray:
    """Constant displacement field ``(H, W, 2)`` for a global translation."""
    out = np.empty((*shape, 2), np.float32)
    out[..., 0], out[..., 1] = dx, dy
    return out


def homography_flow(shape: tuple[int, int], H: np.ndarray) -> np.ndarray:
    """Displacement field ``(H, W, 2)`` ``H(x) - x`` of a 3x3 homography over an image grid."""
    h, w = shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.asarray(H, np.float64).T  # (H, W, 3)
    out = pts[..., :2] / pts[..., 2:3]
    out[..., 0] -= xs
    out[..., 1] -= ys
    return out.astype(np.float32)


def densify_flow(flow: np.ndarray, mask: np.ndarray, sigma: float = 12.0) -> np.ndarray:
    """Fill a displacement field from its trusted pixels only (normalised convolution).

    Every pixel gets the Gaussian-weighted mean of the masked flow around it. Where no trusted pixel is
    within about ``2 sigma``, a 4x wider kernel is used, and where none is within that, the median of
    all trusted pixels. The result is smooth and free of the garbage flow in textureless regions.

    Args:
        flow: ``(H, W, 2)`` displacement.
        mask: bool ``(H, W)`` trusted pixels.
        sigma: Gaussian sigma, pixels.

    Returns:
        float32 ``(H, W, 2)``; zeros if the mask is empty.
    """
    m = mask.astype(np.float32)
    if not m.any():
        return np.zeros(flow.shape, np.float32)
    h, w = m.shape
    # The result is smooth at scale sigma: work on a grid `step` times coarser (area-averaged), which is
    # the same normalised convolution up to the small extra blur, and far cheaper for large sigmas.
    step = int(max(1, min(sigma // 3, min(h, w) // 16)))
    hs, ws = max(h // step, 1), max(w // step, 1)
    m_s = cv2.resize(m, (ws, hs), interpolation=cv2.INTER_AREA)
    fm_s = cv2.resize(flow.astype(np.float32) * m[..., None], (ws, hs), interpolation=cv2.INTER_AREA)
    out = np.empty((hs, ws, 2), np.float32)
    out[...] = np.median(flow[mask], axis=0)
    # Coarse first, fine over it where it has support.
    for s_, min_weight in ((4 * sigma, 1e-3), (sigma, 1e-2)):
        den = cv2.GaussianBlur(m_s, (0, 0), s_ / step)
        num = cv2.GaussianBlur(fm_s, (0, 0), s_ / step)
        ok = den > min_weight
        out[ok] = num[ok] / den[ok][:, None]
    if step == 1:
        return out
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def fit_homography_to_flow(flow: np.ndarray, mask: np.ndarray, *, method: str = "ransac",
                           max_points: int = 4000, ransac_thresh: float = 2.0, grid_step: int = 16,
                           sigma: float = 24.0, generator: np.random.Generator | None = None
                           ) -> tuple[np.ndarray | None, float]:
    """Homography that best explains a displacement field on the trusted pixels.

    Args:
        flow: ``(H, W, 2)`` thermal-to-color displacement.
        mask: bool ``(H, W)`` trusted pixels.
        method: ``"ransac"``: robust fit (OpenCV USAC MAGSAC) to a random subsample of the trusted
            pixels; ``"dense"``: least squares on a regular grid of the smoothly filled field
            (:func:`densify_flow`), which weighs the image area evenly instead of by edge density and is
            more stable when the true misalignment is not a homography (parallax).
        max_points: subsample size for ``"ransac"``.
        ransac_thresh: inlier threshold, pixels (``"ransac"``).
        grid_step: grid spacing, pixels (``"dense"``).
        sigma: smoothing of the filled field, pixels (``"dense"``).
        generator: numpy random generator for the subsample (default: seeded 0).

    Returns:
        ``(H, inlier_share)``: 3x3 float64 mapping thermal pixel coordinates to color pixel coordinates
        (``inlier_share`` is 1 for ``"dense"``), or ``(None, 0.0)`` with fewer than 8 trusted pixels or
        when the fit fails.
    """
    ys, xs = np.nonzero(mask)
    if xs.size < 8:
        return None, 0.0
    if method == "dense":
        dense = densify_flow(flow, mask, sigma)
        h, w = mask.shape
        gy, gx = np.mgrid[grid_step // 2:h:grid_step, grid_step // 2:w:grid_step]
        src = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
        dst = src + dense[gy.ravel(), gx.ravel()]
        H, _ = cv2.findHomography(src, dst, 0)
        return (None, 0.0) if H is None else (H / H[2, 2], 1.0)
    if method != "ransac":
        raise ValueError(f"unknown homography fit '{method}', expected 'ransac' or 'dense'")
    rng = generator if generator is not None else np.random.default_rng(0)
    if xs.size > max_points:
        keep = rng.choice(xs.size, max_points, replace=False)
        xs, ys = xs[keep], ys[keep]
    src = np.stack([xs, ys], 1).astype(np.float32)
    dst = src + flow[ys, xs].astype(np.float32)
    H, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, ransac_thresh, maxIters=2000, confidence=0.995)
    if H is None:
        return None, 0.0
    return H / H[2, 2], float(inl.mean())


def estimate_translation(thermal: np.ndarray, color: np.ndarray, *, method: str = "flow",
                         params: DisplacementParams = DEFAULT_PARAMS) -> tuple[float, float, float]:
    """One global translation (dx, dy) of color content relative to thermal.

    Args:
        thermal: ``(H, W)`` thermal image.
        color: ``(H, W, 3)`` or ``(H, W)`` registered color image of the same size.
        method: ``"flow"`` (median of the masked edge flow), ``"phase"`` (phase correlation of the edge
            images) or ``"ecc"`` (ECC maximisation, translation only, on blurred edge images).
        params: edge and flow settings.

    Returns:
        ``(dx, dy, quality)``: pixels (color position minus thermal position) and a method-specific
        confidence (mask fraction, phase-correlation peak response, ECC correlation). NaN when the
        method fails.
    """
    if method == "flow":
        flow, mask = dense_displacement(thermal, color, params)
        if not mask.any():
            return float("nan"), float("nan"), 0.0
        return (float(np.median(flow[..., 0][mask])), float(np.median(flow[..., 1][mask])),
                float(mask.mean()))
    e_thr = edge_image(thermal, sigma=params.sigma, norm_window=params.norm_window)
    e_rgb = edge_image(color, sigma=params.sigma, norm_window=params.norm_window)
    if method == "phase":
        h, w = e_thr.shape
        win = cv2.createHanningWindow((w, h), cv2.CV_64F)
        (sx, sy), resp = cv2.phaseCorrelate(e_thr.astype(np.float64), e_rgb.astype(np.float64), win)
        # phaseCorrelate(a, b) returns the shift that moves a onto b: color = thermal moved by (sx, sy).
        return float(sx), float(sy), float(resp)
    if method == "ecc":
        warp = np.eye(2, 3, dtype=np.float32)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
        try:
            cc, warp = cv2.findTransformECC(e_thr, e_rgb, warp, cv2.MOTION_TRANSLATION, crit, None, 5)
        except cv2.error:
            return float("nan"), float("nan"), 0.0
        # ECC finds W with thermal(x) ~ color(W x): W's translation is the color offset.
        return float(warp[0, 2]), float(warp[1, 2]), float(cc)
    raise ValueError(f"unknown translation method '{method}', expected 'flow', 'phase' or 'ecc'")


def box_shifts(thermal: np.ndarray, color: np.ndarray, boxes_xyxy: np.ndarray, *, radius: int = 8,
               margin: int = 4, min_ncc: float = 0.3, min_area: int = 400,
               params: DisplacementParams = DEFAULT_PARAMS) -> np.ndarray:
    """Shift of each object: the thermal edge image inside a box, matched in the color edge image.

    For every box (object on the thermal image), the thermal edge crop (box plus ``margin``) is slid
    over the color edge image within ``radius`` pixels (normalised cross-correlation); the best
    position, refined to sub-pixel by a parabola, is the object's color offset. Matches whose peak is
    weak (``< min_ncc``) or on the search border, and boxes smaller than ``min_area``, give NaN.

    Args:
        thermal: ``(H, W)`` thermal image.
        color: ``(H, W, 3)`` or ``(H, W)`` registered color image.
        boxes_xyxy: ``(N, 4)`` pixel boxes on the thermal image.
        radius: search radius, pixels.
        margin: pixels added around each box.
        min_ncc: weakest accepted correlation peak.
        min_area: smallest box area, pixels.
        params: edge settings.

    Returns:
        float64 ``(N, 3)``: ``dx, dy`` (color minus thermal) and the peak correlation, NaN when rejected.
    """
    e_thr = edge_image(thermal, sigma=params.sigma, norm_window=params.norm_window)
    e_rgb = edge_image(color, sigma=params.sigma, norm_window=params.norm_window)
    h, w = e_thr.shape
    pad = cv2.copyMakeBorder(e_rgb, radius, radius, radius, radius, cv2.BORDER_REFLECT)
    out = np.full((len(boxes_xyxy), 3), np.nan)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes_xyxy, float).reshape(-1, 4)):
        x1, y1 = max(int(np.floor(x1)) - margin, 0), max(int(np.floor(y1)) - margin, 0)
        x2, y2 = min(int(np.ceil(x2)) + margin, w), min(int(np.ceil(y2)) + margin, h)
        if (x2 - x1) * (y2 - y1) < min_area:
            continue
        tpl = e_thr[y1:y2, x1:x2]
        if float(tpl.std()) < 1e-3:
            continue
        res = cv2.matchTemplate(pad[y1:y2 + 2 * radius, x1:x2 + 2 * radius], tpl, cv2.TM_CCOEFF_NORMED)
        iy, ix = np.unravel_index(int(res.argmax()), res.shape)
        peak = float(res[iy, ix])
        if peak < min_ncc or iy in (0, res.shape[0] - 1) or ix in (0, res.shape[1] - 1):
            continue
        out[i] = (ix - radius + _parabola(res[iy, ix - 1], peak, res[iy, ix + 1]),
                  iy - radius + _parabola(res[iy - 1, ix], peak, res[iy + 1, ix]), peak)
    return out


def _parabola(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of a peak ``b`` between neighbours ``a`` and ``c``."""
    d = a - 2 * b + c
    return 0.0 if abs(d) < 1e-12 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))


def label_offsets(color_boxes: np.ndarray, thermal_boxes: np.ndarray, iou_min: float = 0.5) -> np.ndarray:
    """Centre offsets of boxes labelled on both images (same object, drawn separately on each).

    Boxes are matched greedily by IoU (same class, ``IoU >= iou_min``).

    Args:
        color_boxes: ``(N, 5)`` pixel ``[class, x1, y1, x2, y2]`` on the color image.
        thermal_boxes: ``(M, 5)`` the same on the thermal image.
        iou_min: least IoU of a match.

    Returns:
        float64 ``(K, 2)``: ``dx, dy`` of matched box centres, color minus thermal.
    """
    c = np.asarray(color_boxes, float).reshape(-1, 5)
    t = np.asarray(thermal_boxes, float).reshape(-1, 5)
    if not len(c) or not len(t):
        return np.zeros((0, 2))
    x1 = np.maximum(c[:, None, 1], t[None, :, 1])
    y1 = np.maximum(c[:, None, 2], t[None, :, 2])
    x2 = np.minimum(c[:, None, 3], t[None, :, 3])
    y2 = np.minimum(c[:, None, 4], t[None, :, 4])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_c = (c[:, 3] - c[:, 1]) * (c[:, 4] - c[:, 2])
    area_t = (t[:, 3] - t[:, 1]) * (t[:, 4] - t[:, 2])
    iou = inter / np.maximum(area_c[:, None] + area_t[None, :] - inter, 1e-9)
    iou[c[:, None, 0] != t[None, :, 0]] = 0
    out = []
    while iou.size and iou.max() >= iou_min:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        out.append(((c[i, 1] + c[i, 3] - t[j, 1] - t[j, 3]) / 2, (c[i, 2] + c[i, 4] - t[j, 2] - t[j, 4]) / 2))
        iou[i, :] = 0
        iou[:, j] = 0
    return np.array(out, float).reshape(-1, 2)


def measure_residual(reference: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    """Displacement ``(H, W, 2)`` of ``aligned`` relative to ``reference`` (same modality, DIS flow)."""
    a = cv2.cvtColor(reference, cv2.COLOR_RGB2GRAY) if reference.ndim == 3 else reference
    b = cv2.cvtColor(aligned, cv2.COLOR_RGB2GRAY) if aligned.ndim == 3 else aligned
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    return dis.calc(np.ascontiguousarray(a, np.uint8), np.ascontiguousarray(b, np.uint8), None)
