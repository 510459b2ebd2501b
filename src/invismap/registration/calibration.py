"""Color/thermal rig calibration from checkerboard images (paper Section 3.1, registration step).

Three steps, each a pure function on arrays:

1. :func:`find_board_corners` finds the inner corners of a checkerboard. Thermal boards are seen through
   emitted heat: the pattern is usually inverted, low-contrast and blurry, so thermal images are
   stretched, inverted and equalised (CLAHE) first (:func:`enhance_thermal_board`), and both polarities
   are tried. OpenCV's sector-based detector (``findChessboardCornersSB``) is tried first, the classic
   one second; corners are refined with ``cornerSubPix``.
2. :func:`calibrate_camera` estimates each camera's intrinsics ``K`` and distortion (OpenCV model
   ``k1 k2 p1 p2 k3``) and reports the RMS reprojection error.
3. :func:`estimate_homography` maps the *undistorted* color image onto the *undistorted* thermal image
   plane, fitted with RANSAC to corresponding corners of all views seen by both cameras. A homography is
   exact only for one scene plane (or for a rig whose cameras share a centre); when the boards sit at
   different depths, :func:`stereo_extrinsics` + :func:`plane_homography` give the homography induced
   by any chosen plane (e.g. the road scene's typical depth, or infinity).

Conventions: pixel coordinates follow OpenCV (pixel centres at integers). ``H`` maps undistorted color
pixel coordinates to undistorted thermal pixel coordinates. ``R, T`` map color-camera coordinates to
thermal-camera coordinates: ``X_thr = R X_rgb + T`` (metres, the board's unit).

Example:
    >>> calib, report = calibrate_rig(color_imgs, thermal_imgs, pattern=(9, 6), square=0.04)  # doctest: +SKIP
    >>> save_calibration("rig.yaml", calib)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import yaml

from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write

__all__ = [
    "CameraModel",
    "RigCalibration",
    "board_object_points",
    "calibrate_camera",
    "calibrate_rig",
    "calibration_from_dict",
    "calibration_to_dict",
    "enhance_thermal_board",
    "estimate_homography",
    "find_board_corners",
    "load_calibration",
    "plane_homography",
    "save_calibration",
    "stereo_extrinsics",
    "undistort_points",
    "with_homography",
]


@dataclass(frozen=True)
class CameraModel:
    """One calibrated camera.

    Attributes:
        K: 3x3 intrinsic matrix (pixels).
        dist: distortion coefficients ``(k1, k2, p1, p2, k3)``.
        size: image ``(width, height)`` the calibration holds for.
        rms: RMS reprojection error of the calibration, pixels (NaN if unknown).
        n_views: number of board views used.
    """

    K: np.ndarray
    dist: np.ndarray
    size: tuple[int, int]
    rms: float = float("nan")
    n_views: int = 0

    @staticmethod
    def ideal(size: tuple[int, int], focal: float | None = None) -> CameraModel:
        """A distortion-free camera with the principal point at the centre (for already rectified data)."""
        w, h = size
        f = float(focal if focal is not None else max(w, h))
        return CameraModel(np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]]), np.zeros(5),
                           (int(w), int(h)))


@dataclass(frozen=True)
class RigCalibration:
    """Both cameras and the color-to-thermal homography.

    Attributes:
        color: color camera.
        thermal: thermal camera.
        H: 3x3 homography, undistorted color pixels to undistorted thermal pixels.
        H_rms: RMS error (thermal pixels) of ``H`` on the corners it was fitted to (inliers).
        H_method: ``"corners"`` (RANSAC on corners), ``"plane"`` (from R, T and a plane) or ``"manual"``.
        R: 3x3 rotation color frame to thermal frame, or None if not estimated.
        T: translation color frame to thermal frame (board units, metres), or None.
        plane_depth: depth of the plane ``H`` was computed for (``"plane"`` method), metres.
        extras: free-form metadata written along (pattern, square, stereo RMS, ...).
    """

    color: CameraModel
    thermal: CameraModel
    H: np.ndarray
    H_rms: float = float("nan")
    H_method: str = "corners"
    R: np.ndarray | None = None
    T: np.ndarray | None = None
    plane_depth: float | None = None
    extras: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Corner detection


def board_object_points(pattern: tuple[int, int], square: float) -> np.ndarray:
    """Inner-corner coordinates on the board plane ``(N, 3)`` float32, row by row, z = 0."""
    cols, rows = pattern
    xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
    return np.stack([xs.ravel() * square, ys.ravel() * square, np.zeros(cols * rows)], 1).astype(np.float32)


def _to_u8_gray(image: np.ndarray) -> np.ndarray:
    """uint8 gray from gray/RGB of any dtype, with a 0.5..99.5 percentile stretch for non-uint8."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img.astype(np.float32) if img.dtype != np.uint8 else img, cv2.COLOR_RGB2GRAY)
    if img.dtype == np.uint8:
        return img
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    return np.clip((img.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def enhance_thermal_board(image: np.ndarray, *, invert: bool = True, clip_limit: float = 3.0) -> np.ndarray:
    """Make a thermal board image look like a normal checkerboard: stretch, invert, CLAHE.

    Args:
        image: thermal image ``(H, W)`` uint8 or uint16 (or 3 identical channels).
        invert: invert the contrast (a heated board shows black squares bright).
        clip_limit: CLAHE clip limit.

    Returns:
        uint8 ``(H, W)``.
    """
    g = _to_u8_gray(image).astype(np.float32)
    lo, hi = np.percentile(g, [1, 99])
    g = np.clip((g - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    g = cv2.GaussianBlur(g, (3, 3), 0)  # thermal noise breaks corner tests
    if invert:
        g = 255 - g
    tiles = max(2, min(8, min(g.shape) // 64))
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles)).apply(g)


def _canonical_order(corners: np.ndarray, pattern: tuple[int, int]) -> np.ndarray:
    """Reorder corners so the first one is the top-left-most (removes the detector's 180 deg ambiguity).

    Both cameras of a rig see the board in nearly the same orientation, so this gives the same order in
    color and thermal, which the homography and the stereo fit need.
    """
    c = corners.reshape(-1, 2)
    if c[0].sum() > c[-1].sum():
        c = c[::-1]
    return np.ascontiguousarray(c, np.float32)


def _subpix_window(corners: np.ndarray, pattern: tuple[int, int]) -> int:
    cols, _ = pattern
    grid = corners.reshape(-1, cols, 2)
    spacing = min(np.linalg.norm(np.diff(grid, axis=1), axis=2).min(),
                  np.linalg.norm(np.diff(grid, axis=0), axis=2).min() if grid.shape[0] > 1 else np.inf)
    return int(np.clip(spacing * 0.4, 2, 11))


def find_board_corners(image: np.ndarray, pattern: tuple[int, int], *, thermal: bool = False
                       ) -> np.ndarray | None:
    """Inner corners of a checkerboard, refined to sub-pixel accuracy.

    Args:
        image: ``(H, W)`` gray or ``(H, W, 3)`` RGB; uint8 or uint16.
        pattern: inner corners ``(columns, rows)``; use a non-square pattern (e.g. 9x6).
        thermal: enhance as a thermal image (inverted polarity tried first, then normal).

    Returns:
        float32 ``(N, 2)`` corners, row by row from the top-left-most, or None if not found.
    """
    pattern = (int(pattern[0]), int(pattern[1]))
    if thermal:
        candidates = [enhance_thermal_board(image, invert=True), enhance_thermal_board(image, invert=False)]
    else:
        candidates = [_to_u8_gray(image)]
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-4)
    for gray in candidates:
        ok, corners = cv2.findChessboardCornersSB(
            gray, pattern,
            flags=cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY)
        if not ok:
            ok, corners = cv2.findChessboardCorners(
                gray, pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE)
        if not ok or corners is None:
            continue
        corners = corners.reshape(-1, 1, 2).astype(np.float32)
        win = _subpix_window(corners, pattern)
        # Refine on a lightly smoothed image: cornerSubPix fits gradients, noise biases it.
        smooth = cv2.GaussianBlur(gray, (0, 0), 0.8)
        corners = cv2.cornerSubPix(smooth, corners, (win, win), (-1, -1), crit)
        return _canonical_order(corners, pattern)
    return None


# --------------------------------------------------------------------------------------------------
# Single-camera calibration


def calibrate_camera(image_points: Sequence[np.ndarray], pattern: tuple[int, int], square: float,
                     image_size: tuple[int, int], *, flags: int = 0) -> tuple[CameraModel, np.ndarray]:
    """Intrinsics and distortion from board corners in several views (Zhang's method, OpenCV).

    Args:
        image_points: per view, ``(N, 2)`` corners from :func:`find_board_corners`.
        pattern: inner corners ``(columns, rows)``.
        square: square side (any unit; it fixes the unit of translations).
        image_size: ``(width, height)``.
        flags: extra ``cv2.CALIB_*`` flags (e.g. ``cv2.CALIB_FIX_K3``).

    Returns:
        ``(camera, per_view_rms)``: the :class:`CameraModel` (with ``rms``) and ``(V,)`` per-view RMS.

    Raises:
        ValueError: fewer than 3 views.
    """
    if len(image_points) < 3:
        raise ValueError(f"need at least 3 board views to calibrate, got {len(image_points)}")
    obj = board_object_points(pattern, square)
    objs = [obj] * len(image_points)
    imgs = [np.asarray(p, np.float32).reshape(-1, 1, 2) for p in image_points]
    w, h = image_size
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(objs, imgs, (int(w), int(h)), None, None, flags=flags)
    per_view = []
    for p, rv, tv in zip(imgs, rvecs, tvecs):
        proj, _ = cv2.projectPoints(obj, rv, tv, K, dist)
        per_view.append(float(np.sqrt(np.mean(np.sum((proj - p) ** 2, axis=2)))))
    cam = CameraModel(K, dist.ravel()[:5] if dist.size >= 5 else np.pad(dist.ravel(), (0, 5 - dist.size)),
                      (int(w), int(h)), float(rms), len(imgs))
    return cam, np.array(per_view)


def undistort_points(points: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Pixel coordinates ``(N, 2)`` in the undistorted image (same ``K``) of distorted pixels ``(N, 2)``."""
    pts = np.asarray(points, np.float64).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-9)
    return cv2.undistortPoints(pts, camera.K, camera.dist, None, None, camera.K, crit).reshape(-1, 2)


# --------------------------------------------------------------------------------------------------
# Color-to-thermal mapping


def estimate_homography(src: np.ndarray, dst: np.ndarray, *, ransac_thresh: float = 2.0
                        ) -> tuple[np.ndarray, np.ndarray, float]:
    """RANSAC homography ``dst ~ H src`` from corresponding points.

    Args:
        src: ``(N, 2)`` points (undistorted color pixels).
        dst: ``(N, 2)`` points (undistorted thermal pixels).
        ransac_thresh: inlier threshold, ``dst`` pixels.

    Returns:
        ``(H, inliers, rms)``: 3x3 float64, bool ``(N,)`` inlier mask, RMS error of inliers in ``dst``
        pixels.

    Raises:
        ValueError: fewer than 4 points, or no homography found.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 4:
        raise ValueError(f"need >= 4 corresponding points of equal shape, got {src.shape} and {dst.shape}")
    H, inl = cv2.findHomography(src, dst, cv2.RANSAC, ransac_thresh, maxIters=5000, confidence=0.999)
    if H is None:
        raise ValueError("no homography found (degenerate points)")
    inl = inl.ravel().astype(bool)
    # Least-squares refinement on the inliers (findHomography already does LM; this also fixes scale).
    H, _ = cv2.findHomography(src[inl], dst[inl], 0)
    H = H / H[2, 2]
    err = _homography_errors(H, src[inl], dst[inl])
    return H, inl, float(np.sqrt(np.mean(err ** 2)))


def _homography_errors(H: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    p = cv2.perspectiveTransform(src.reshape(-1, 1, 2), H).reshape(-1, 2)
    return np.linalg.norm(p - dst, axis=1)


def stereo_extrinsics(image_points_rgb: Sequence[np.ndarray], image_points_thr: Sequence[np.ndarray],
                      pattern: tuple[int, int], square: float, color: CameraModel, thermal: CameraModel
                      ) -> tuple[np.ndarray, np.ndarray, float]:
    """Relative pose of the thermal camera, intrinsics held fixed (OpenCV ``stereoCalibrate``).

    Args:
        image_points_rgb: per common view, ``(N, 2)`` color corners.
        image_points_thr: per common view, ``(N, 2)`` thermal corners, same order.
        pattern: inner corners ``(columns, rows)``.
        square: square side (unit of ``T``).
        color: calibrated color camera.
        thermal: calibrated thermal camera.

    Returns:
        ``(R, T, rms)`` with ``X_thr = R X_rgb + T`` and the stereo RMS reprojection error (pixels).
    """
    obj = board_object_points(pattern, square)
    n = len(image_points_rgb)
    ip_c = [np.asarray(p, np.float32).reshape(-1, 1, 2) for p in image_points_rgb]
    ip_t = [np.asarray(p, np.float32).reshape(-1, 1, 2) for p in image_points_thr]
    rms, *_, R, T, _, _ = cv2.stereoCalibrate(
        [obj] * n, ip_c, ip_t, color.K, color.dist, thermal.K, thermal.dist, color.size,
        flags=cv2.CALIB_FIX_INTRINSIC)
    return R, T.ravel(), float(rms)


def plane_homography(K_rgb: np.ndarray, K_thr: np.ndarray, R: np.ndarray, T: np.ndarray,
                     depth: float, normal: np.ndarray | None = None) -> np.ndarray:
    """Homography induced by a scene plane, undistorted color pixels to undistorted thermal pixels.

    For the plane ``n . X = depth`` in the color frame, ``H = K_thr (R + T n^T / depth) K_rgb^-1``.
    ``depth = inf`` gives the infinite homography ``K_thr R K_rgb^-1`` (distant scenes).

    Args:
        K_rgb: color intrinsics 3x3.
        K_thr: thermal intrinsics 3x3.
        R: rotation color to thermal frame.
        T: translation color to thermal frame (same unit as ``depth``).
        depth: plane distance from the color camera centre (> 0, may be inf).
        normal: unit plane normal in the color frame (default: optical axis, a fronto-parallel plane).

    Returns:
        3x3 float64 homography normalised to ``H[2, 2] = 1``.
    """
    if not depth > 0:
        raise ValueError(f"plane depth must be > 0, got {depth}")
    n = np.array([0.0, 0.0, 1.0]) if normal is None else np.asarray(normal, np.float64).ravel()
    M = np.asarray(R, np.float64)
    if math.isfinite(depth):
        M = M + np.outer(np.asarray(T, np.float64).ravel(), n) / depth
    H = np.asarray(K_thr, np.float64) @ M @ np.linalg.inv(np.asarray(K_rgb, np.float64))
    return H / H[2, 2]


def calibrate_rig(color_images: Sequence[np.ndarray], thermal_images: Sequence[np.ndarray],
                  pattern: tuple[int, int], square: float, *, homography: str = "corners",
                  plane_depth: float | None = None, ransac_thresh: float = 2.0, flags: int = 0
                  ) -> tuple[RigCalibration, dict]:
    """Calibrate both cameras and the color-to-thermal homography from board images.

    ``color_images[i]`` and ``thermal_images[i]`` are taken at the same time (synchronised pairs); a view
    where only one camera finds the board still counts for that camera's intrinsics.

    Args:
        color_images: color views ``(Hc, Wc, 3)`` or ``(Hc, Wc)``.
        thermal_images: thermal views ``(Ht, Wt)``, same count and order.
        pattern: inner corners ``(columns, rows)``.
        square: square side, metres.
        homography: ``"corners"`` (RANSAC on undistorted corners of all common views) or ``"plane"``
            (from the stereo pose and a fronto-parallel plane at ``plane_depth``).
        plane_depth: plane distance for ``"plane"``, metres; default the median board depth; ``inf``
            allowed.
        ransac_thresh: RANSAC threshold for ``"corners"``, thermal pixels.
        flags: extra ``cv2.CALIB_*`` flags for the intrinsic calibration.

    Returns:
        ``(calibration, report)``; ``report`` holds per-view detection flags, per-view RMS and errors.

    Raises:
        ValueError: too few views with a detected board.
    """
    if len(color_images) != len(thermal_images):
        raise ValueError(f"{len(color_images)} color images but {len(thermal_images)} thermal images")
    if homography not in ("corners", "plane"):
        raise ValueError(f"homography must be 'corners' or 'plane', got '{homography}'")
    det_c = [find_board_corners(im, pattern) for im in color_images]
    det_t = [find_board_corners(im, pattern, thermal=True) for im in thermal_images]
    size_c = _size_of(color_images)
    size_t = _size_of(thermal_images)
    views_c = [p for p in det_c if p is not None]
    views_t = [p for p in det_t if p is not None]
    if len(views_c) < 3 or len(views_t) < 3:
        raise ValueError(f"board found in {len(views_c)} color and {len(views_t)} thermal views; "
                         "need at least 3 each (check --pattern: inner corners, columns x rows)")
    cam_c, pv_c = calibrate_camera(views_c, pattern, square, size_c, flags=flags)
    cam_t, pv_t = calibrate_camera(views_t, pattern, square, size_t, flags=flags)
    common = [i for i, (a, b) in enumerate(zip(det_c, det_t)) if a is not None and b is not None]
    if len(common) < 1:
        raise ValueError("no view where both cameras found the board; cannot relate the two cameras")
    R, T, stereo_rms = stereo_extrinsics([det_c[i] for i in common], [det_t[i] for i in common], pattern,
                                         square, cam_c, cam_t)
    src = np.concatenate([undistort_points(det_c[i], cam_c) for i in common])
    dst = np.concatenate([undistort_points(det_t[i], cam_t) for i in common])
    depths = _board_depths([det_c[i] for i in common], pattern, square, cam_c)
    if homography == "corners":
        H, inl, h_rms = estimate_homography(src, dst, ransac_thresh=ransac_thresh)
        depth_used = None
        inlier_share = float(inl.mean())
    else:
        depth_used = float(np.median(depths)) if plane_depth is None else float(plane_depth)
        H = plane_homography(cam_c.K, cam_t.K, R, T, depth_used)
        err = _homography_errors(H, src, dst)
        h_rms = float(np.sqrt(np.mean(err ** 2)))
        inlier_share = float((err < ransac_thresh).mean())
    calib = RigCalibration(cam_c, cam_t, H, h_rms, homography, R, T, depth_used,
                           {"pattern": list(pattern), "square": float(square), "stereo_rms": stereo_rms,
                            "n_common_views": len(common)})
    report = {
        "color_found": [p is not None for p in det_c],
        "thermal_found": [p is not None for p in det_t],
        "color_rms": cam_c.rms, "thermal_rms": cam_t.rms,
        "color_view_rms": pv_c.tolist(), "thermal_view_rms": pv_t.tolist(),
        "stereo_rms": stereo_rms, "homography_rms": h_rms, "homography_inlier_share": inlier_share,
        "board_depths": depths.tolist(), "n_common_views": len(common),
    }
    return calib, report


def _size_of(images: Sequence[np.ndarray]) -> tuple[int, int]:
    sizes = {(im.shape[1], im.shape[0]) for im in images}
    if len(sizes) != 1:
        raise ValueError(f"calibration images of one camera must share one size, got {sorted(sizes)}")
    return sizes.pop()


def _board_depths(views: Sequence[np.ndarray], pattern: tuple[int, int], square: float,
                  cam: CameraModel) -> np.ndarray:
    """Distance of each board's centre from the camera (units of ``square``)."""
    obj = board_object_points(pattern, square)
    centre = obj.mean(0)
    out = []
    for p in views:
        _, rv, tv = cv2.solvePnP(obj, np.asarray(p, np.float32).reshape(-1, 1, 2), cam.K, cam.dist)
        R, _ = cv2.Rodrigues(rv)
        out.append(float((R @ centre + tv.ravel())[2]))
    return np.array(out)


# --------------------------------------------------------------------------------------------------
# YAML file


def calibration_to_dict(calib: RigCalibration) -> dict:
    """Plain-Python (YAML-ready) form of a :class:`RigCalibration`."""

    def cam(c: CameraModel) -> dict:
        return {"image_size": [int(c.size[0]), int(c.size[1])], "K": np.asarray(c.K, float).tolist(),
                "dist": np.asarray(c.dist, float).ravel().tolist(), "rms": _num(c.rms),
                "n_views": int(c.n_views)}

    out = {
        "format": "invismap-rig-calibration/1",
        "color": cam(calib.color),
        "thermal": cam(calib.thermal),
        "homography": {
            "H": np.asarray(calib.H, float).tolist(),
            "maps": "undistorted color pixels -> undistorted thermal pixels",
            "method": calib.H_method,
            "rms": _num(calib.H_rms),
            "plane_depth": _num(calib.plane_depth),
        },
    }
    if calib.R is not None and calib.T is not None:
        out["extrinsics"] = {"R": np.asarray(calib.R, float).tolist(),
                             "T": np.asarray(calib.T, float).ravel().tolist(),
                             "maps": "X_thermal = R X_color + T"}
    if calib.extras:
        out["extras"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in calib.extras.items()}
    return out


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf"
    return v


def _matrix(d: dict, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        a = np.asarray(d[key], np.float64)
    except KeyError:
        raise InvismapError(f"{where}: missing '{key}'") from None
    except (TypeError, ValueError):
        raise InvismapError(f"{where}: '{key}' is not a numeric array") from None
    if a.shape != shape and not (len(shape) == 1 and a.size == shape[0]):
        raise InvismapError(f"{where}: '{key}' has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all():
        raise InvismapError(f"{where}: '{key}' holds NaN or inf")
    return a.reshape(shape)


def calibration_from_dict(d: dict, where: str = "calibration") -> RigCalibration:
    """Inverse of :func:`calibration_to_dict`, validating every field (errors name ``where``)."""
    if not isinstance(d, dict):
        raise InvismapError(f"{where}: not a calibration mapping")

    def cam(key: str) -> CameraModel:
        c = d.get(key)
        if not isinstance(c, dict):
            raise InvismapError(f"{where}: missing '{key}' camera section")
        w = f"{where} [{key}]"
        size = c.get("image_size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0
                                                                             for v in size)):
            raise InvismapError(f"{w}: 'image_size' must be [width, height] positive integers")
        dist = np.asarray(c.get("dist", [0] * 5), np.float64).ravel()
        dist = np.pad(dist, (0, max(0, 5 - dist.size)))
        rms = c.get("rms")
        return CameraModel(_matrix(c, "K", (3, 3), w), dist, (size[0], size[1]),
                           float(rms) if rms is not None else float("nan"), int(c.get("n_views") or 0))

    hom = d.get("homography")
    if not isinstance(hom, dict):
        raise InvismapError(f"{where}: missing 'homography' section")
    H = _matrix(hom, "H", (3, 3), f"{where} [homography]")
    if abs(np.linalg.det(H)) < 1e-12:
        raise InvismapError(f"{where} [homography]: H is singular")
    R = T = None
    if isinstance(d.get("extrinsics"), dict):
        R = _matrix(d["extrinsics"], "R", (3, 3), f"{where} [extrinsics]")
        T = _matrix(d["extrinsics"], "T", (3,), f"{where} [extrinsics]")
    depth = hom.get("plane_depth")
    return RigCalibration(cam("color"), cam("thermal"), H / H[2, 2],
                          float(hom["rms"]) if hom.get("rms") is not None else float("nan"),
                          str(hom.get("method", "manual")), R, T,
                          float(depth) if depth is not None else None, dict(d.get("extras") or {}))


def save_calibration(path: str | Path, calib: RigCalibration) -> Path:
    """Write the calibration as YAML, atomically."""
    path = Path(path)
    with atomic_write(path, "w") as f:
        f.write("# invismap rig calibration: intrinsics, distortion (k1 k2 p1 p2 k3) and the homography\n"
                "# mapping the undistorted color image onto the undistorted thermal image.\n")
        yaml.safe_dump(calibration_to_dict(calib), f, sort_keys=False, default_flow_style=None, width=120)
    return path


def load_calibration(path: str | Path) -> RigCalibration:
    """Read a calibration YAML written by :func:`save_calibration` (or by hand, same keys)."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "calibration file not found", "run 'invismap calibrate' first")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise file_error(path, f"not valid YAML ({type(e).__name__})") from None
    return calibration_from_dict(d, str(path))


def with_homography(calib: RigCalibration, H: np.ndarray, method: str = "manual") -> RigCalibration:
    """A copy of ``calib`` with another homography (e.g. a plane homography at another depth)."""
    H = np.asarray(H, np.float64)
    return replace(calib, H=H / H[2, 2], H_method=method)
