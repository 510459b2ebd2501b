"""Apply a registration: undistortion + homography for images, points and boxes (pure functions).

The registered pair lives on the *thermal* image plane: the thermal image is undistorted, and the color
image is undistorted and mapped through the homography ``H`` (undistorted color pixels to undistorted
thermal pixels) onto the same grid. An optional ``scale`` enlarges that common grid (e.g. 2 for a
320x256 thermal camera next to a 640x480 color camera, so no color detail is thrown away).

Everything is a single ``cv2.remap`` per image: undistortion and homography are folded into one map.

Example:
    >>> color_reg = warp_color_to_thermal(color, calib)  # doctest: +SKIP
    >>> shifted = warp_image(color, offset_correction(0.0, -3.5), (640, 480))  # doctest: +SKIP
"""

from __future__ import annotations

import cv2
import numpy as np

from invismap.registration.calibration import CameraModel, RigCalibration, undistort_points

__all__ = [
    "color_maps",
    "color_points_to_registered",
    "offset_correction",
    "output_size",
    "thermal_maps",
    "thermal_points_to_registered",
    "transform_boxes",
    "transform_points",
    "translation_homography",
    "undistort_thermal",
    "warp_color_to_thermal",
    "warp_image",
]


def translation_homography(dx: float, dy: float) -> np.ndarray:
    """3x3 homography moving image content by ``(dx, dy)`` pixels."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def offset_correction(dx: float, dy: float) -> np.ndarray:
    """Homography that removes a measured color offset ``(dx, dy)`` (color position minus thermal).

    If color content sits at ``x + d`` where thermal shows it at ``x``, moving color content by ``-d``
    puts it back on the thermal content.
    """
    return translation_homography(-dx, -dy)


def output_size(calib: RigCalibration, scale: float = 1.0) -> tuple[int, int]:
    """``(width, height)`` of the registered grid: the thermal image size times ``scale``."""
    w, h = calib.thermal.size
    return round(w * scale), round(h * scale)


def _scale_matrix(scale: float) -> np.ndarray:
    # Pixel centres at integers: a pixel x on the thermal grid is at (x + 0.5) * s - 0.5 on the scaled grid.
    off = 0.5 * scale - 0.5
    return np.array([[scale, 0, off], [0, scale, off], [0, 0, 1.0]])


def _maps_through(cam: CameraModel, P: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Maps sending each output pixel ``q`` to the raw (distorted) pixel of ``cam`` seen along ``P^-1 q``.

    ``P`` maps *undistorted* pixels of ``cam`` to output pixels.
    """
    # OpenCV computes, per output pixel q, ray = R^-1 newK^-1 q, then distorts and projects with K.
    # We want ray = K^-1 P^-1 q: take newK = K and R = K^-1 P K (any invertible 3x3 works, not only
    # rotations).
    K = np.asarray(cam.K, np.float64)
    R = np.linalg.inv(K) @ np.asarray(P, np.float64) @ K
    return cv2.initUndistortRectifyMap(K, np.asarray(cam.dist, np.float64), R, K, size, cv2.CV_32FC1)


def color_maps(calib: RigCalibration, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps ``(Ho, Wo)`` float32 from the registered grid into the raw color image."""
    return _maps_through(calib.color, _scale_matrix(scale) @ np.asarray(calib.H, np.float64),
                         output_size(calib, scale))


def thermal_maps(calib: RigCalibration, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps ``(Ho, Wo)`` float32 from the registered grid into the raw thermal image."""
    return _maps_through(calib.thermal, _scale_matrix(scale), output_size(calib, scale))


def _check_size(image: np.ndarray, cam: CameraModel, what: str) -> None:
    if (image.shape[1], image.shape[0]) != tuple(cam.size):
        raise ValueError(f"{what} image is {image.shape[1]}x{image.shape[0]} but the calibration is for "
                         f"{cam.size[0]}x{cam.size[1]}")


def warp_color_to_thermal(color: np.ndarray, calib: RigCalibration, scale: float = 1.0,
                          maps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Undistort the raw color image and map it onto the (undistorted, scaled) thermal grid.

    Args:
        color: raw color image ``(Hc, Wc, 3)`` or ``(Hc, Wc)``, the calibration's color size.
        calib: rig calibration.
        scale: registered grid = thermal size times ``scale``.
        maps: precomputed :func:`color_maps` (saves time over many frames).

    Returns:
        ``(Ho, Wo, 3)`` or ``(Ho, Wo)`` image, same dtype; pixels outside the color view are 0.
    """
    _check_size(color, calib.color, "color")
    mx, my = maps if maps is not None else color_maps(calib, scale)
    return cv2.remap(color, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def undistort_thermal(thermal: np.ndarray, calib: RigCalibration, scale: float = 1.0,
                      maps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Undistort the raw thermal image onto the (scaled) registered grid; dtype kept (uint16 too)."""
    _check_size(thermal, calib.thermal, "thermal")
    mx, my = maps if maps is not None else thermal_maps(calib, scale)
    return cv2.remap(thermal, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_image(image: np.ndarray, H: np.ndarray, size: tuple[int, int] | None = None,
               border: str = "constant") -> np.ndarray:
    """Warp an image by a homography ``H`` (source pixels to output pixels).

    Args:
        image: ``(H, W)`` or ``(H, W, C)``.
        H: 3x3 homography; :func:`translation_homography` for a plain shift.
        size: output ``(width, height)``; default the input size.
        border: ``"constant"`` (0) or ``"replicate"``.

    Returns:
        warped image, same dtype.
    """
    h, w = image.shape[:2]
    size = (w, h) if size is None else (int(size[0]), int(size[1]))
    mode = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}.get(border)
    if mode is None:
        raise ValueError(f"border must be 'constant' or 'replicate', got '{border}'")
    return cv2.warpPerspective(image, np.asarray(H, np.float64), size, flags=cv2.INTER_LINEAR,
                               borderMode=mode, borderValue=0)


def transform_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply a homography to ``(N, 2)`` points."""
    pts = np.asarray(points, np.float64).reshape(-1, 1, 2)
    if pts.size == 0:
        return np.zeros((0, 2))
    return cv2.perspectiveTransform(pts, np.asarray(H, np.float64)).reshape(-1, 2)


def color_points_to_registered(points: np.ndarray, calib: RigCalibration, scale: float = 1.0) -> np.ndarray:
    """Raw color pixels ``(N, 2)`` to registered-grid pixels (undistort, ``H``, scale)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if pts.size == 0:
        return np.zeros((0, 2))
    return transform_points(undistort_points(pts, calib.color), _scale_matrix(scale) @ calib.H)


def thermal_points_to_registered(points: np.ndarray, calib: RigCalibration, scale: float = 1.0) -> np.ndarray:
    """Raw thermal pixels ``(N, 2)`` to registered-grid pixels (undistort, scale)."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if pts.size == 0:
        return np.zeros((0, 2))
    return transform_points(undistort_points(pts, calib.thermal), _scale_matrix(scale))


def transform_boxes(boxes_xyxy: np.ndarray, point_fn, samples: int = 5) -> np.ndarray:
    """Map axis-aligned boxes through a point transform; the result is the enclosing box.

    Each box edge is sampled at ``samples`` points so that curved (distortion) or projective mappings
    are enclosed correctly.

    Args:
        boxes_xyxy: ``(N, 4)`` pixel boxes ``x1 y1 x2 y2`` (box edges, not pixel centres).
        point_fn: function ``(M, 2) -> (M, 2)`` mapping points, e.g.
            ``lambda p: transform_points(p, H)``.
        samples: points per edge (>= 2).

    Returns:
        ``(N, 4)`` float64 boxes (not clipped).
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return boxes.copy()
    t = np.linspace(0.0, 1.0, max(samples, 2))
    out = np.empty_like(boxes)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        xs = x1 + (x2 - x1) * t
        ys = y1 + (y2 - y1) * t
        # Pixel-edge coordinates to pixel-centre coordinates (-0.5) and back, so that a plain shift maps
        # a box exactly by that shift.
        pts = np.concatenate([np.stack([xs, np.full_like(xs, y1)], 1),
                              np.stack([xs, np.full_like(xs, y2)], 1),
                              np.stack([np.full_like(ys, x1), ys], 1),
                              np.stack([np.full_like(ys, x2), ys], 1)])
        m = np.asarray(point_fn(pts - 0.5), np.float64) + 0.5
        out[i] = [m[:, 0].min(), m[:, 1].min(), m[:, 0].max(), m[:, 1].max()]
    return out
