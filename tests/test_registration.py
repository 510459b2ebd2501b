"""Registration: calibration on a rendered rig, warping, pairing, displacement statistics."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from invismap.errors import InvismapError
from invismap.registration.calibration import (
    CameraModel,
    RigCalibration,
    calibrate_rig,
    estimate_homography,
    find_board_corners,
    load_calibration,
    plane_homography,
    save_calibration,
)
from invismap.registration.displacement import (
    HIST_EDGES,
    dense_displacement,
    densify_flow,
    displacement_stats,
    edge_image,
    estimate_translation,
    fit_homography_to_flow,
    histogram_stats,
    homography_flow,
)
from invismap.registration.pairing import pair_by_name, pair_by_time, pair_streams, parse_timestamp
from invismap.registration.synthetic import (
    apply_displacement,
    cross_modal_pair,
    default_rig,
    invert_displacement,
    random_displacement_field,
    random_scene,
    render_rig_views,
)
from invismap.registration.warp import (
    color_points_to_registered,
    offset_correction,
    transform_boxes,
    transform_points,
    translation_homography,
    warp_color_to_thermal,
    warp_image,
)

# --------------------------------------------------------------------------------------------------
# Calibration on a synthetic rig with known geometry


@pytest.fixture(scope="module")
def rig_views():
    rig = default_rig()
    # Boards at 0.80..0.95 m: one homography is then nearly exact (corners method), and the
    # plane method is checked at the median board depth.
    views = render_rig_views(rig, 12, depth=(0.8, 0.95), generator=np.random.default_rng(3))
    return rig, views


def _plane_points(rig, depth):
    """Ground-truth correspondences for a fronto-parallel plane at ``depth`` (undistorted pixels)."""
    xs, ys = np.meshgrid(np.linspace(-0.3, 0.3, 15), np.linspace(-0.22, 0.22, 11))
    X = np.stack([xs.ravel() * depth, ys.ravel() * depth, np.full(xs.size, depth)], 1)
    pc = X @ rig.color.K.T
    pc = pc[:, :2] / pc[:, 2:]
    Xt = X @ rig.R.T + rig.t
    pt = Xt @ rig.thermal.K.T
    pt = pt[:, :2] / pt[:, 2:]
    (wc, hc), (wt, ht) = rig.color.size, rig.thermal.size
    keep = ((pc[:, 0] >= 0) & (pc[:, 0] < wc) & (pc[:, 1] >= 0) & (pc[:, 1] < hc)
            & (pt[:, 0] >= 0) & (pt[:, 0] < wt) & (pt[:, 1] >= 0) & (pt[:, 1] < ht))
    return pc[keep], pt[keep]


def test_synthetic_rig_calibration(rig_views):
    """Acceptance: focal lengths within 2 %, homography error < 1 px on a plane at the board depth."""
    rig, views = rig_views
    calib, rep = calibrate_rig([v.color for v in views], [v.thermal for v in views], rig.pattern, rig.square,
                               homography="corners", flags=cv2.CALIB_FIX_K3)
    assert all(rep["color_found"]) and all(rep["thermal_found"])  # thermal: inverted + CLAHE works
    for est, true in ((calib.color, rig.color), (calib.thermal, rig.thermal)):
        assert abs(est.K[0, 0] / true.K[0, 0] - 1) < 0.02
        assert abs(est.K[1, 1] / true.K[1, 1] - 1) < 0.02
        assert est.rms < 0.5
    assert est.size == (320, 256)
    assert np.linalg.norm(calib.T - rig.t) < 0.005  # stereo pose, metres
    depth = float(np.median(rep["board_depths"]))
    src, dst = _plane_points(rig, depth)
    assert len(src) > 50
    # corners: one RANSAC homography for all boards (0.80..0.95 m, tilted): close, not exact.
    err = np.linalg.norm(transform_points(src, calib.H) - dst, axis=1)
    assert np.sqrt(np.mean(err ** 2)) < 1.0
    # plane: from the recovered stereo pose, exact for that plane up to calibration error.
    H_plane = plane_homography(calib.color.K, calib.thermal.K, calib.R, calib.T, depth)
    err = np.linalg.norm(transform_points(src, H_plane) - dst, axis=1)
    assert err.max() < 1.0


def test_thermal_board_needs_enhancement(rig_views):
    rig, views = rig_views
    th = views[0].thermal
    assert find_board_corners(th, rig.pattern, thermal=True) is not None
    c = find_board_corners(views[0].color, rig.pattern)
    assert c.shape == (rig.pattern[0] * rig.pattern[1], 2)
    assert c[0].sum() < c[-1].sum()  # canonical order: starts top-left
    assert find_board_corners(np.full((100, 120), 128, np.uint8), rig.pattern) is None


def test_plane_homography_infinity_is_rotation_only():
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    R = cv2.Rodrigues(np.array([0.0, 0.02, 0.0]))[0]
    H_inf = plane_homography(K, K, R, np.array([0.1, 0, 0]), math.inf)
    assert np.allclose(H_inf, K @ R @ np.linalg.inv(K) / (K @ R @ np.linalg.inv(K))[2, 2])
    H_near = plane_homography(K, K, np.eye(3), np.array([0.1, 0, 0]), 2.0)
    # Pure baseline 0.1 m at 2 m: disparity f * b / Z = 25 px.
    assert np.allclose(transform_points(np.array([[320.0, 240.0]]), H_near), [[345.0, 240.0]])
    with pytest.raises(ValueError):
        plane_homography(K, K, R, np.zeros(3), 0.0)


def test_estimate_homography_rejects_outliers():
    rng = np.random.default_rng(0)
    H = np.array([[0.5, 0.01, 4.0], [-0.02, 0.52, -3.0], [1e-5, 2e-5, 1.0]])
    src = rng.uniform(0, 640, (200, 2))
    dst = transform_points(src, H)
    dst[:20] += rng.uniform(20, 50, (20, 2))
    H2, inl, rms = estimate_homography(src, dst)
    assert inl[20:].all() and not inl[:20].any()
    assert rms < 1e-4
    assert np.allclose(H2, H, atol=1e-6)


def test_calibration_yaml_roundtrip(tmp_path):
    cam = CameraModel(np.array([[600.0, 0, 320], [0, 601, 240], [0, 0, 1]]), np.array([-0.2, 0.05, 0, 0, 0]),
                      (640, 480), 0.12, 10)
    calib = RigCalibration(cam, CameraModel.ideal((320, 256)), np.diag([0.5, 0.5, 1.0]), 0.3, "corners",
                           np.eye(3), np.array([-0.04, 0, 0]), None, {"pattern": [9, 6]})
    path = save_calibration(tmp_path / "rig.yaml", calib)
    back = load_calibration(path)
    assert np.allclose(back.color.K, cam.K) and np.allclose(back.color.dist, cam.dist)
    assert back.color.size == (640, 480) and back.thermal.size == (320, 256)
    assert np.allclose(back.H, calib.H) and back.H_method == "corners"
    assert np.allclose(back.T, calib.T) and back.color.rms == pytest.approx(0.12)
    bad = tmp_path / "bad.yaml"
    bad.write_text("color: {K: [[1, 0], [0, 1]]}\n")
    with pytest.raises(InvismapError, match=r"bad.yaml"):
        load_calibration(bad)
    with pytest.raises(InvismapError, match="not found"):
        load_calibration(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------------------------------
# Warping


def _scene(h=240, w=320, seed=0):
    return random_scene((h, w), generator=np.random.default_rng(seed))


def _cross_modal(scene, seed=1):
    return cross_modal_pair(scene, np.random.default_rng(seed))


def test_warp_color_matches_warp_perspective_without_distortion():
    color = np.dstack([_scene(480, 640)] * 3)
    H = np.array([[0.5, 0.01, 3.0], [0.02, 0.48, -5.0], [1e-5, 2e-5, 1.0]])
    calib = RigCalibration(CameraModel.ideal((640, 480)), CameraModel.ideal((320, 256)), H)
    a = warp_color_to_thermal(color, calib)
    b = cv2.warpPerspective(color, H, (320, 256))
    assert a.shape == (256, 320, 3)
    assert np.abs(a.astype(int) - b)[4:-4, 4:-4].max() <= 1
    assert warp_color_to_thermal(color, calib, scale=2).shape == (512, 640, 3)
    p = np.array([[100.0, 200.0]])
    assert np.allclose(color_points_to_registered(p, calib), transform_points(p, H))
    with pytest.raises(ValueError, match="calibration"):
        warp_color_to_thermal(color[:100], calib)


def test_warp_with_distortion_is_consistent_with_points():
    """A bright dot lands where the point mapping says, through distortion and homography."""
    cam_c = CameraModel(np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]]),
                        np.array([-0.25, 0.08, 0, 0, 0]), (640, 480))
    H = np.array([[0.5, 0.0, 5.0], [0.0, 0.5, 2.0], [0, 0, 1.0]])
    calib = RigCalibration(cam_c, CameraModel.ideal((320, 256)), H)
    img = np.zeros((480, 640), np.float32)
    x, y = 560.0, 90.0  # far from the centre: distortion matters here
    cv2.circle(img, (int(x), int(y)), 6, 255, -1)
    out = warp_color_to_thermal(img, calib)
    ys, xs = np.nonzero(out > 128)
    expected = color_points_to_registered(np.array([[x, y]]), calib)[0]
    assert abs(xs.mean() - expected[0]) < 0.6 and abs(ys.mean() - expected[1]) < 0.6
    plain = transform_points(np.array([[x, y]]), H)[0]
    assert np.linalg.norm(plain - expected) > 3  # undistortion did something


def test_translation_and_boxes():
    img = np.zeros((50, 60), np.uint8)
    img[10:20, 30:40] = 255
    moved = warp_image(img, translation_homography(3, -2))
    assert moved[8:18, 33:43].min() == 255 and moved.sum() == img.sum()
    boxes = transform_boxes(np.array([[30.0, 10, 40, 20]]),
                            lambda p: transform_points(p, offset_correction(-3, 2)))
    assert np.allclose(boxes, [[33, 8, 43, 18]])
    assert transform_boxes(np.zeros((0, 4)), lambda p: p).shape == (0, 4)


# --------------------------------------------------------------------------------------------------
# Pairing


def test_parse_timestamp():
    assert parse_timestamp("cam_1570722156.952177.png") == pytest.approx(1570722156.952177)
    assert parse_timestamp("1570722156952.jpg") == pytest.approx(1570722156.952)  # ms, auto
    assert parse_timestamp("frame_0012.png", unit="ms") == pytest.approx(0.012)
    assert parse_timestamp("x_17_t0.5_y.png", pattern=r"t(?P<t>[\d.]+)") == pytest.approx(0.5)
    assert parse_timestamp("noname.png") is None
    with pytest.raises(ValueError):
        parse_timestamp("a1.png", unit="minutes")


def test_pair_by_time_tolerance_offset_uniqueness():
    color = [0.0, 0.033, 0.066, 0.1, 0.133, 0.5]
    thermal = [0.01, 0.02, 0.11, 0.3]
    pairs = pair_by_time(color, thermal, tolerance=0.02)
    assert [(c, t) for c, t, _ in pairs] == [(0, 0), (1, 1), (3, 2)]  # 0.3 has no partner
    assert all(abs(dt) <= 0.02 for *_, dt in pairs)
    # A clock offset of +0.2 s on color moves every match.
    shifted = pair_by_time([t - 0.2 for t in color], thermal, tolerance=0.02, offset=0.2)
    assert [(c, t) for c, t, _ in shifted] == [(0, 0), (1, 1), (3, 2)]
    # Unsorted input, streams give the same.
    assert pair_by_time(color[::-1], thermal, 0.02)[0][0] == len(color) - 1
    assert len(list(pair_streams(((t, i) for i, t in enumerate(color)),
                                 ((t, i) for i, t in enumerate(thermal)), 0.02))) == 3


def test_pair_by_name():
    assert pair_by_name(["a.png", "b.png", "c.jpg"], ["c.png", "a.tiff", "z.png"]) == [(2, 0, "c"),
                                                                                       (0, 1, "a")]


# --------------------------------------------------------------------------------------------------
# Displacement


def test_displacement_stats_by_hand():
    flow = np.zeros((10, 10, 2), np.float32)
    flow[:5, :, 1] = -6.0  # top half: color 6 px above
    flow[5:, :, 0] = 2.0
    s = displacement_stats(flow)
    assert s["n_pixels"] == 100 and s["share_ge_big"] == 0.5 and s["share_y_ge_big"] == 0.5
    assert s["share_x_ge_big"] == 0.0
    assert s["hist_x"].sum() == 100 and len(s["hist_x"]) == len(HIST_EDGES) - 1
    h = histogram_stats(s["hist_x"], s["hist_y"])
    assert h["share_y_ge_big"] == 0.5 and h["share_x_ge_big"] == 0.0
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    s2 = displacement_stats(flow, mask)
    assert s2["median_dy"] == -6.0 and s2["mask_fraction"] == 0.5
    assert math.isnan(displacement_stats(flow, np.zeros((10, 10), bool))["median_dx"])


def test_homography_flow_fit_roundtrip():
    H = np.array([[1.01, 0.005, -2.0], [-0.004, 0.99, 3.0], [1e-5, -2e-5, 1.0]])
    flow = homography_flow((120, 160), H)
    assert np.allclose(homography_flow((5, 5), np.eye(3)), 0)
    mask = np.ones((120, 160), bool)
    for method, tol in (("ransac", 0.05), ("dense", 0.25)):  # dense: smoothing bias at the borders
        H2, _ = fit_homography_to_flow(flow, mask, method=method)
        assert np.abs(homography_flow((120, 160), H2) - flow).max() < tol
    assert fit_homography_to_flow(flow, np.zeros_like(mask)) == (None, 0.0)


def test_densify_flow_fills_holes():
    flow = np.zeros((60, 80, 2), np.float32)
    flow[..., 1] = -3.0
    flow[20:40, 30:50] = 99.0  # garbage where the mask is off
    mask = np.ones((60, 80), bool)
    mask[20:40, 30:50] = False
    d = densify_flow(flow, mask)
    assert np.allclose(d[..., 1], -3.0, atol=1e-4)
    assert np.allclose(densify_flow(flow, np.zeros_like(mask)), 0)


@pytest.mark.parametrize("method", ["flow", "phase", "ecc"])
def test_estimate_translation_cross_modal(method):
    """Known shift between two renderings that share only edges, sign convention included."""
    scene = _scene(240, 320, seed=4)
    thermal, color = _cross_modal(scene)
    d = (2.5, -3.0)  # color content 3 px above thermal
    color = warp_image(color, translation_homography(*d), border="replicate")
    dx, dy, _ = estimate_translation(thermal, color, method=method)
    tol = 0.6 if method == "phase" else 0.35  # phase correlation's sub-pixel peak is the coarsest
    assert abs(dx - d[0]) < tol and abs(dy - d[1]) < tol, (dx, dy)


def test_dense_displacement_recovers_smooth_field():
    scene = _scene(240, 320, seed=5)
    thermal, color = _cross_modal(scene, seed=2)
    g = random_displacement_field((240, 320), max_shift=4, max_rot_deg=1.0, elastic_amp=2.0,
                                  generator=np.random.default_rng(0))
    moved = apply_displacement(color, g)
    flow, mask = dense_displacement(thermal, moved)
    assert mask.mean() > 0.03
    err = np.hypot(*(flow - g)[mask].T)
    assert np.median(err) < 0.5
    assert edge_image(thermal).max() < 1.0


def test_apply_displacement_moves_content_by_g():
    img = np.zeros((80, 100), np.float32)
    img[40, 50] = 1.0
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    g = np.zeros((80, 100, 2), np.float32)
    g[..., 0], g[..., 1] = 3.0, -2.0
    out = apply_displacement(img, g)
    y, x = np.unravel_index(out.argmax(), out.shape)
    assert (x, y) == (53, 38)
    assert np.allclose(invert_displacement(g), g)
