"""Synthetic data with known geometry: a checkerboard seen by a color/thermal rig, and weak misalignment.

Two generators, both pure and seeded through a ``numpy.random.Generator``:

* :func:`render_rig_views` renders a planar checkerboard seen by two virtual pinhole cameras with known
  intrinsics, radial/tangential distortion and relative pose. The thermal rendering is inverted,
  low-contrast, blurred, noisy and lower resolution, like a heated board in a real LWIR camera. Used to
  test calibration against ground truth.
* :func:`random_displacement_field` and :func:`apply_displacement` make a color image weakly misaligned
  with its thermal partner: a global shift, a small rotation and a smooth elastic field, with the exact
  displacement (in the thermal frame) returned as ground truth. Used to test displacement estimators
  and aligners (registration here, AlignGAN later).

Example:
    >>> rig = default_rig()
    >>> views = render_rig_views(rig, n_views=3, generator=np.random.default_rng(0))
    >>> views[0].color.shape, views[0].thermal.shape
    ((480, 640), (256, 320))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "RigView",
    "VirtualCamera",
    "VirtualRig",
    "apply_displacement",
    "board_points",
    "cross_modal_pair",
    "default_rig",
    "invert_displacement",
    "random_displacement_field",
    "random_scene",
    "render_rig_views",
]


@dataclass(frozen=True)
class VirtualCamera:
    """A pinhole camera with OpenCV distortion ``(k1, k2, p1, p2, k3)``.

    Attributes:
        K: 3x3 intrinsic matrix.
        dist: 5 distortion coefficients.
        size: image ``(width, height)``.
    """

    K: np.ndarray
    dist: np.ndarray
    size: tuple[int, int]


@dataclass(frozen=True)
class VirtualRig:
    """Two cameras and the thermal camera's pose in the color camera frame (``X_t = R X_c + t``).

    Attributes:
        color: the color camera.
        thermal: the thermal camera.
        R: 3x3 rotation, color frame to thermal frame.
        t: translation (metres), color frame to thermal frame.
        pattern: inner corners ``(columns, rows)`` of the board.
        square: board square side, metres.
    """

    color: VirtualCamera
    thermal: VirtualCamera
    R: np.ndarray
    t: np.ndarray
    pattern: tuple[int, int] = (9, 6)
    square: float = 0.04


@dataclass
class RigView:
    """One rendered view: both images (uint8 gray) and the board pose in the color frame."""

    color: np.ndarray
    thermal: np.ndarray
    rvec: np.ndarray
    tvec: np.ndarray
    extras: dict = field(default_factory=dict)


def default_rig() -> VirtualRig:
    """A 640x480 color camera and a 320x256 thermal camera 4 cm to its right, slightly rotated."""
    color = VirtualCamera(np.array([[620.0, 0, 322.0], [0, 615.0, 238.0], [0, 0, 1]]),
                          np.array([-0.28, 0.11, 0.0008, -0.0005, 0.0]), (640, 480))
    thermal = VirtualCamera(np.array([[340.0, 0, 158.0], [0, 342.0, 131.0], [0, 0, 1]]),
                            np.array([-0.18, 0.05, -0.0006, 0.0004, 0.0]), (320, 256))
    R, _ = cv2.Rodrigues(np.array([0.01, -0.02, 0.005]))
    return VirtualRig(color, thermal, R, np.array([-0.04, 0.003, 0.002]))


def board_points(pattern: tuple[int, int], square: float) -> np.ndarray:
    """Inner-corner coordinates on the board plane ``(N, 3)`` float32, row by row, z = 0."""
    cols, rows = pattern
    xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
    return np.stack([xs.ravel() * square, ys.ravel() * square, np.zeros(cols * rows)], 1).astype(np.float32)


def _undistorted_rays(cam: VirtualCamera, ss: int) -> np.ndarray:
    """Normalised undistorted coordinates ``(h*ss, w*ss, 2)`` float32 of every supersampled pixel centre."""
    w, h = cam.size
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = np.stack([gx.ravel(), gy.ravel()], 1).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
    und = cv2.undistortPoints(pts, cam.K, cam.dist, None, None, None, crit).reshape(h, w, 2)
    if ss == 1:
        return und.astype(np.float32)
    # Distortion is smooth: bilinear upsampling (pixel-centre aligned, as the supersampling is) is exact
    # to far below a thousandth of a pixel.
    return cv2.resize(und, (w * ss, h * ss), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def _render(rays: np.ndarray, R: np.ndarray, t: np.ndarray, pattern: tuple[int, int], square: float,
            ss: int, cam: VirtualCamera) -> np.ndarray:
    """Board reflectance in 0..1 ``(H, W)`` for a board at pose (R, t) in this camera's frame."""
    w, h = cam.size
    img = np.full((h, w), 0.45)
    cols, rows = pattern
    # Only the board's bounding box (plus a margin) is ray-traced: the rest is the gray background.
    plate = np.array([[-2.2, -2.2, 0], [cols + 1.2, -2.2, 0],
                      [cols + 1.2, rows + 1.2, 0], [-2.2, rows + 1.2, 0]])
    corners, _ = cv2.projectPoints(plate * square, cv2.Rodrigues(R)[0], t, cam.K, cam.dist)
    x0, y0 = np.floor(corners.reshape(-1, 2).min(0)).astype(int) - 3
    x1, y1 = np.ceil(corners.reshape(-1, 2).max(0)).astype(int) + 4
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return img
    rays = rays[y0 * ss:y1 * ss, x0 * ss:x1 * ss]
    # Intersect each ray (x, y, 1) with the board plane n.X = n.t (n = board normal), then express the
    # hit point in board coordinates R^T (X - t), in squares.
    rx, ry = rays[..., 0], rays[..., 1]
    n = R[:, 2]
    d = rx * np.float32(n[0]) + ry * np.float32(n[1]) + np.float32(n[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.float32(n @ t) / d  # depth along each ray
    px, py, pz = s * rx - np.float32(t[0]), s * ry - np.float32(t[1]), s - np.float32(t[2])
    a, b = (R[:, 0] / square).astype(np.float32), (R[:, 1] / square).astype(np.float32)
    u = px * a[0] + py * a[1] + pz * a[2]
    v = px * b[0] + py * b[1] + pz * b[2]
    valid = (s > 0) & np.isfinite(u) & np.isfinite(v)
    # Squares span -1..cols and -1..rows; a white margin surrounds them on a gray plate.
    on_squares = valid & (u >= -1) & (u < cols) & (v >= -1) & (v < rows)
    on_plate = valid & (u >= -2.2) & (u < cols + 1.2) & (v >= -2.2) & (v < rows + 1.2)
    with np.errstate(invalid="ignore"):
        black = (np.floor(u) + np.floor(v)) % 2 == 0
    sub = np.full(u.shape, 0.45, np.float32)
    sub[on_plate] = 0.95
    sub[on_squares & black] = 0.05
    img[y0:y1, x0:x1] = cv2.resize(sub, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return img


def _random_pose(rig: VirtualRig, rng: np.random.Generator, depth: tuple[float, float]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A board pose (rvec, tvec in the color frame) with the board centred near both optical axes."""
    cols, rows = rig.pattern
    centre = np.array([(cols - 1) / 2 * rig.square, (rows - 1) / 2 * rig.square, 0.0])
    ang = np.deg2rad(rng.uniform(-30, 30, 3) * np.array([1.0, 1.0, 0.5]))
    R, _ = cv2.Rodrigues(ang)
    z = rng.uniform(*depth)
    target = np.array([rng.uniform(-0.12, 0.12) * z, rng.uniform(-0.08, 0.08) * z, z])
    tvec = target - R @ centre
    return cv2.Rodrigues(R)[0].ravel(), tvec


def render_rig_views(rig: VirtualRig, n_views: int = 12, *, depth: tuple[float, float] = (0.7, 1.0),
                     supersample: int = 3, thermal_contrast: float = 0.35, thermal_blur: float = 0.8,
                     thermal_noise: float = 3.0, color_noise: float = 2.0,
                     generator: np.random.Generator | None = None) -> list[RigView]:
    """Render ``n_views`` board poses seen by both cameras of ``rig``.

    Color: black squares dark, white squares bright, mild noise. Thermal: inverted (the heated black
    squares emit more), contrast reduced to ``thermal_contrast``, Gaussian blur ``thermal_blur`` pixels,
    noise ``thermal_noise`` gray levels.

    Args:
        rig: cameras, relative pose and board.
        n_views: number of views.
        depth: range of board distances from the color camera, metres.
        supersample: anti-aliasing factor (rendering happens at this many times the resolution).
        thermal_contrast: board contrast in the thermal image, 0..1.
        thermal_blur: thermal optics blur sigma, pixels.
        thermal_noise: thermal noise sigma, gray levels.
        color_noise: color noise sigma, gray levels.
        generator: random generator (poses and noise); default seeded 0.

    Returns:
        list of :class:`RigView` with ``color`` ``(Hc, Wc)`` and ``thermal`` ``(Ht, Wt)`` uint8 images.
    """
    rng = generator if generator is not None else np.random.default_rng(0)
    rays_c = _undistorted_rays(rig.color, supersample)
    rays_t = _undistorted_rays(rig.thermal, supersample)
    views = []
    for _ in range(n_views):
        rvec, tvec = _random_pose(rig, rng, depth)
        Rb, _ = cv2.Rodrigues(rvec)
        col = _render(rays_c, Rb, tvec, rig.pattern, rig.square, supersample, rig.color)
        thr = _render(rays_t, rig.R @ Rb, rig.R @ tvec + rig.t, rig.pattern, rig.square, supersample,
                      rig.thermal)
        col = col * 255 + rng.normal(0, color_noise, col.shape)
        thr = 0.5 + (0.5 - thr) * thermal_contrast  # inverted, low contrast around mid-gray
        if thermal_blur > 0:
            thr = cv2.GaussianBlur(thr, (0, 0), thermal_blur)
        thr = thr * 255 + rng.normal(0, thermal_noise, thr.shape)
        views.append(RigView(np.clip(col + 0.5, 0, 255).astype(np.uint8),
                             np.clip(thr + 0.5, 0, 255).astype(np.uint8), rvec, tvec))
    return views


# --------------------------------------------------------------------------------------------------
# Weak misalignment with known displacement


def random_displacement_field(shape: tuple[int, int], *, max_shift: float = 6.0, max_rot_deg: float = 1.5,
                              elastic_amp: float = 2.0, elastic_sigma: float = 48.0,
                              generator: np.random.Generator | None = None) -> np.ndarray:
    """A smooth random displacement field: shift + rotation about the centre + elastic part.

    Args:
        shape: ``(H, W)``.
        max_shift: global shift drawn uniformly in ``[-max_shift, max_shift]`` per axis, pixels.
        max_rot_deg: rotation drawn uniformly in ``[-max_rot_deg, max_rot_deg]`` degrees.
        elastic_amp: the elastic part's largest magnitude, pixels (0 disables it).
        elastic_sigma: smoothness (Gaussian sigma, pixels) of the elastic part.
        generator: random generator; default seeded 0.

    Returns:
        float32 ``(H, W, 2)`` field ``g`` such that thermal content at ``x`` sits at ``x + g(x)`` in the
        misaligned color image made by :func:`apply_displacement`.
    """
    rng = generator if generator is not None else np.random.default_rng(0)
    h, w = shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    a = np.deg2rad(rng.uniform(-max_rot_deg, max_rot_deg))
    cx, cy = (w - 1) / 2, (h - 1) / 2
    sx, sy = rng.uniform(-max_shift, max_shift, 2)
    gx = np.cos(a) * (xs - cx) - np.sin(a) * (ys - cy) + cx - xs + sx
    gy = np.sin(a) * (xs - cx) + np.cos(a) * (ys - cy) + cy - ys + sy
    if elastic_amp > 0:
        # Smooth noise on a coarse grid, upsampled: cheap and free of border effects.
        step = max(int(elastic_sigma / 2), 1)
        coarse = rng.normal(size=(h // step + 3, w // step + 3, 2)).astype(np.float32)
        coarse = cv2.GaussianBlur(coarse, (0, 0), 2.0)
        ex = cv2.resize(coarse, (w + 3 * step, h + 3 * step), interpolation=cv2.INTER_CUBIC)[:h, :w]
        ex *= elastic_amp / (np.abs(ex).max() + 1e-9)
        gx += ex[..., 0]
        gy += ex[..., 1]
    return np.stack([gx, gy], -1).astype(np.float32)


def invert_displacement(g: np.ndarray, iters: int = 20) -> np.ndarray:
    """The backward field ``h`` with ``y - h(y) = x`` wherever ``y = x + g(x)`` (fixed point).

    Args:
        g: forward field ``(H, W, 2)``, smooth, with gradient well below 1.
        iters: fixed-point iterations.

    Returns:
        float32 ``(H, W, 2)`` field ``h`` on the target grid, so that an image ``I`` warped as
        ``J(y) = I(y - h(y))`` shows ``I(x)`` at ``x + g(x)``.
    """
    h_, w = g.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h_, dtype=np.float32))
    hfield = g.astype(np.float32).copy()
    for _ in range(iters):
        # h(y) = g(y - h(y)): sample g where the content of y came from.
        hfield = cv2.remap(g.astype(np.float32), xs - hfield[..., 0], ys - hfield[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)
    return hfield


def apply_displacement(image: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Warp ``image`` so that its content at ``x`` moves to ``x + g(x)``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``.
        g: forward displacement ``(H, W, 2)`` on the same grid (see :func:`random_displacement_field`).

    Returns:
        warped image, same shape and dtype; areas with no source are filled by edge replication.
    """
    hb = invert_displacement(g)
    h, w = g.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, xs - hb[..., 0], ys - hb[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def random_scene(shape: tuple[int, int] = (240, 320), n_shapes: int = 60,
                 generator: np.random.Generator | None = None) -> np.ndarray:
    """A gray ``(H, W)`` uint8 scene of random discs and rectangles: edges everywhere, for tests."""
    rng = generator if generator is not None else np.random.default_rng(0)
    h, w = shape
    img = np.full((h, w), 90, np.uint8)
    for _ in range(n_shapes):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        col = int(rng.integers(0, 256))
        if rng.random() < 0.5:
            cv2.circle(img, c, int(rng.integers(4, 25)), col, -1)
        else:
            cv2.rectangle(img, c, (c[0] + int(rng.integers(5, 40)), c[1] + int(rng.integers(5, 40))), col, -1)
    return img


def cross_modal_pair(scene: np.ndarray, generator: np.random.Generator | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(thermal (H, W), color (H, W, 3))`` renderings of one scene that share only its edges.

    The thermal rendering remaps intensities by a random permutation (so no intensity relation
    survives), blurs, lowers contrast and adds noise; the color one maps the scene to three
    different channels with noise.
    """
    rng = generator if generator is not None else np.random.default_rng(1)
    lut = rng.permutation(256).astype(np.uint8)
    thermal = cv2.GaussianBlur(lut[scene], (0, 0), 1.2).astype(np.float32) * 0.4 + 20
    thermal = np.clip(thermal + rng.normal(0, 2, thermal.shape), 0, 255).astype(np.uint8)
    color = np.stack([scene, 255 - scene, (scene // 2 + 60)], -1).astype(np.float32)
    color = np.clip(color + rng.normal(0, 3, color.shape), 0, 255).astype(np.uint8)
    return thermal, color
