"""Registration CLI end to end (calibrate, register, displacement) and the real-data benchmarks."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from invismap.data.manifest import Manifest, Sample, load_manifest, read_yolo_labels, save_manifest
from invismap.errors import InvismapError
from invismap.io import read_color, read_thermal, write_image
from invismap.registration import cli
from invismap.registration.calibration import load_calibration
from invismap.registration.experiment import default_estimators, flow_estimator, weak_alignment_experiment
from invismap.registration.run import load_offset, run_displacement
from invismap.registration.synthetic import default_rig, render_rig_views


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="invismap")
    sub = p.add_subparsers(dest="command")
    cli.add_parser(sub)
    return p


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_subcommands_registered():
    p = _parser()
    for cmd in ("calibrate", "register", "displacement"):
        with pytest.raises(SystemExit) as e:
            p.parse_args([cmd, "--help"])
        assert e.value.code == 0
    with pytest.raises(SystemExit):
        p.parse_args(["calibrate", "--color", "a", "--thermal", "b", "--pattern", "6x6", "--square", "0.04",
                      "--out", "x.yaml"])  # square pattern refused
    with pytest.raises(SystemExit):
        p.parse_args(["calibrate", "--color", "a", "--thermal", "b", "--pattern", "9x6", "--square", "40",
                      "--out", "x.yaml"])  # millimetres where metres are asked for


@pytest.fixture(scope="module")
def board_dirs(tmp_path_factory):
    """Synthetic board images on disk: color PNGs and 16-bit thermal PNGs, timestamped names."""
    rig = default_rig()
    views = render_rig_views(rig, 8, depth=(0.8, 0.95), generator=np.random.default_rng(7))
    root = tmp_path_factory.mktemp("boards")
    for i, v in enumerate(views):
        write_image(root / "rgb" / f"img_{i:03d}.png", np.repeat(v.color[..., None], 3, 2))
        write_image(root / "ir" / f"img_{i:03d}.png", v.thermal.astype(np.uint16) * 100 + 20000)  # raw counts
        t = 1000.0 + i * 0.5
        write_image(root / "rgb_t" / f"rgb_{t:.3f}.png", np.repeat(v.color[..., None], 3, 2))
        write_image(root / "ir_t" / f"ir_{t + 0.004:.3f}.png", v.thermal)
    return rig, root


def test_calibrate_register_cli(board_dirs, tmp_path, capsys):
    rig, root = board_dirs
    out, color = tmp_path / "rig.yaml", tmp_path / "rgb"
    shutil.copytree(root / "rgb", color)
    shutil.copy(color / "img_000.png", color / "img_999.png")  # a board view with no thermal twin
    assert _run(["calibrate", "--color", str(color), "--thermal", str(root / "ir"), "--pattern", "9x6",
                 "--square", "0.04", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "thermal RMS reprojection error" in text
    assert "1 image(s) without a twin" in text and "img_999.png" in text
    calib = load_calibration(out)
    assert abs(calib.thermal.K[0, 0] / rig.thermal.K[0, 0] - 1) < 0.02
    assert yaml.safe_load(out.read_text())["homography"]["maps"].startswith("undistorted color")
    report = json.loads((tmp_path / "rig.report.json").read_text())
    assert report["color_rms"] < 0.5 and len(report["pairs"]) == 8
    assert report["unpaired"] == [str(color / "img_999.png")]

    # Raw registration, folders paired by timestamps in the names (thermal 4 ms late).
    reg = tmp_path / "reg"
    assert _run(["register", "--color", str(root / "rgb_t"), "--thermal", str(root / "ir_t"),
                 "--pair-by", "time", "--tolerance", "0.01", "--time-unit", "s", "--calib", str(out),
                 "--scale", "2", "--out", str(reg)]) == 0
    m = load_manifest(reg)
    assert len(m) == 8 and m[0].timestamp == pytest.approx(1000.004)
    c, t = read_color(m[0].color), read_thermal(m[0].thermal)
    assert c.shape == (512, 640, 3) and t.shape == (512, 640)
    # Registered board corners coincide in both images (same plane depth as calibrated).
    from invismap.registration.calibration import find_board_corners
    pc, pt = find_board_corners(c, rig.pattern), find_board_corners(t, rig.pattern, thermal=True)
    assert np.sqrt(np.mean(np.sum((pc - pt) ** 2, 1))) < 2.5  # 2x grid: < 1.25 thermal px

    # Nothing within tolerance: clear error.
    with pytest.raises(InvismapError, match="tolerance"):
        _run(["register", "--color", str(root / "rgb_t"), "--thermal", str(root / "ir_t"),
              "--pair-by", "time", "--tolerance", "0.001", "--time-unit", "s",
              "--out", str(tmp_path / "none")])


def test_register_videos(tmp_path):
    """Two videos at different frame rates, paired by frame time."""
    def write_video(path, fps, n, size):
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        assert w.isOpened()
        for i in range(n):
            frame = np.zeros((size[1], size[0], 3), np.uint8)
            cv2.putText(frame, str(i), (5, size[1] - 5), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
            w.write(frame)
        w.release()

    write_video(tmp_path / "rgb.avi", 30, 30, (128, 96))
    write_video(tmp_path / "ir.avi", 9, 9, (64, 48))
    out = tmp_path / "pairs"
    assert _run(["register", "--color", str(tmp_path / "rgb.avi"), "--thermal", str(tmp_path / "ir.avi"),
                 "--tolerance", "0.02", "--out", str(out)]) == 0
    m = load_manifest(out)
    # Thermal frame k at k/9 s; the nearest color frame (at j/30 s) is within 0.02 s for k % 3 == 0
    # (exact) and 1/90 s for the others, so every thermal frame pairs.
    assert len(m) == 9
    assert read_color(m[3].color).shape == (48, 64, 3)  # color rescaled onto the thermal grid
    assert [s.timestamp for s in m][:2] == pytest.approx([0.0, 1 / 9], abs=1e-3)


def _tiny_dataset(root: Path, shift=(0.0, -3.0), n=3) -> Manifest:
    """Cross-modal synthetic pairs with a known color offset and one labelled object each."""
    from invismap.registration.synthetic import cross_modal_pair, random_scene
    from invismap.registration.warp import translation_homography, warp_image

    samples = []
    for i in range(n):
        scene = random_scene((240, 320), generator=np.random.default_rng(10 + i))
        thermal, color = cross_modal_pair(scene, np.random.default_rng(i))
        color = warp_image(color, translation_homography(*shift), border="replicate")
        cp, tp = root / "c" / f"p{i}.png", root / "t" / f"p{i}.png"
        write_image(cp, color)
        write_image(tp, thermal)
        lab_t, lab_c = root / "lt" / f"p{i}.txt", root / "lc" / f"p{i}.txt"
        lab_t.parent.mkdir(parents=True, exist_ok=True)
        lab_c.parent.mkdir(parents=True, exist_ok=True)
        lab_t.write_text("0 0.5 0.5 0.25 0.25\n")
        lab_c.write_text(f"0 {0.5 + shift[0] / 320:.6f} {0.5 + shift[1] / 240:.6f} 0.25 0.25\n")
        samples.append(Sample(f"p{i}", cp, tp, "day", "test", None, lab_c, lab_t))
    m = Manifest(samples, root)
    save_manifest(m, root / "manifest.csv")
    return m


def test_displacement_and_correct_cli(tmp_path, capsys):
    _tiny_dataset(tmp_path / "ds")
    out = tmp_path / "disp"
    assert _run(["displacement", "--data", str(tmp_path / "ds"), "--split", "test", "--out", str(out),
                 "--correct", str(tmp_path / "fixed")]) == 0
    printed = capsys.readouterr().out
    assert "pooled median" in printed
    s = json.loads((out / "displacement.json").read_text())
    assert s["pooled"]["median_dy"] == pytest.approx(-3.0, abs=0.3)
    assert s["pooled"]["median_dx"] == pytest.approx(0.0, abs=0.3)
    assert s["pooled"]["share_ge_big"] < 0.1
    assert s["objects"]["labels"]["median_dy"] == pytest.approx(-3.0, abs=0.01)
    assert s["objects"]["edge_ncc_per_box"]["median_dy"] == pytest.approx(-3.0, abs=0.5)
    assert set(s["offsets"]) >= {"pooled_flow", "phase", "ecc", "labels"}
    assert (out / "displacement_hist.png").stat().st_size > 1000 and (out / "displacement_rows.png").exists()
    with open(out / "pairs.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert load_offset(out) == pytest.approx((s["global_offset"]["dx"], s["global_offset"]["dy"]))
    with pytest.raises(InvismapError, match="available"):
        load_offset(out, "nope")

    # The corrected dataset: color moved onto thermal, color labels moved along, thermal untouched.
    fixed = load_manifest(tmp_path / "fixed")
    orig = load_manifest(tmp_path / "ds")
    assert fixed[0].thermal == orig[0].thermal and fixed[0].thermal_labels == orig[0].thermal_labels
    lab = read_yolo_labels(fixed[0].color_labels)
    assert lab[0, 2] == pytest.approx(0.5, abs=0.3 / 240)
    again = run_displacement(fixed, None, translation_methods=(), progress=False)
    assert abs(again["pooled"]["median_dy"]) < 0.3

    # register --data --shift does the same by hand.
    assert _run(["register", "--data", str(tmp_path / "ds"), "--shift", "0", "-3", "--out",
                 str(tmp_path / "fixed2")]) == 0
    lab2 = read_yolo_labels(load_manifest(tmp_path / "fixed2")[1].color_labels)
    assert lab2[0, 2] == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(InvismapError, match="exactly one"):
        _run(["register", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "x")])


def test_displacement_refuses_unregistered_pairs(tmp_path):
    write_image(tmp_path / "c.png", np.zeros((40, 60, 3), np.uint8))
    write_image(tmp_path / "t.png", np.zeros((30, 50), np.uint8))
    save_manifest(Manifest([Sample("a", tmp_path / "c.png", tmp_path / "t.png")], tmp_path), tmp_path)
    with pytest.raises(InvismapError, match="register"):
        _run(["displacement", "--data", str(tmp_path), "--out", str(tmp_path / "o")])


# --------------------------------------------------------------------------------------------------
# Real MSRS pairs (skipped without the shared assets)


def _msrs_pairs(msrs_dir: Path, split: str, n: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    with open(msrs_dir / "pairs.csv", newline="") as f:
        names = [r["name"] for r in csv.DictReader(f) if r["dev_split"] == split]
    pick = [names[i] for i in np.linspace(0, len(names) - 1, n).round().astype(int)]
    return [(nm, read_thermal(msrs_dir / "ir" / f"{nm}.png"), read_color(msrs_dir / "vi" / f"{nm}.png"))
            for nm in pick]


def test_weak_alignment_on_msrs(msrs_dir):
    """Known misalignment of real pairs is recovered; registration from the flow reduces it."""
    pairs = _msrs_pairs(msrs_dir, "test", 2)
    estimators = default_estimators()
    estimators["flow_fine"] = flow_estimator(sigma=6.0)  # barely smoothed: the flow's own precision
    res = weak_alignment_experiment(pairs, estimators, seed=0)
    s = res["summary"]
    assert s["before"]["after_abs_epe_edges"] > 2.0
    # Where the edge flow trusts itself, it reads the known field on top of the pair's own offsets.
    assert s["flow_fine"]["epe_rel_trusted"] < 0.9
    # Registering with a homography fitted to the flow removes most of the known misalignment.
    assert s["homography_dense"]["after_rel_epe_edges"] < 0.75 * s["before"]["after_abs_epe_edges"]
    # The homography reads the pairs' own offsets (MSRS is not perfectly aligned): a floor under 'abs'.
    assert 0 < s["homography_dense"]["floor_edges"] < s["before"]["after_abs_epe_edges"]
    assert 0 <= s["homography_dense"]["floor_share_ge5_edges"] <= 1
    assert len(res["trials"]) == 2


def test_weak_alignment_accepts_image_estimators(msrs_dir):
    """An aligner that returns an image (e.g. a GAN) is scored by same-modality flow."""
    pairs = _msrs_pairs(msrs_dir, "train", 1)
    perfect = {"identity": lambda thermal, color: color}
    res = weak_alignment_experiment(pairs, perfect, field={"max_shift": 4.0, "max_rot_deg": 0.0,
                                                           "elastic_amp": 0.0})
    s = res["summary"]
    # Doing nothing leaves the misalignment as it was.
    assert s["identity"]["after_abs_epe_all"] == pytest.approx(s["before"]["after_abs_epe_all"], abs=0.5)
    # It leaves the unperturbed pair as it is, so it reads none of the pair's own offsets.
    assert s["identity"]["floor_all"] < 0.5 and s["identity"]["floor_share_ge5_all"] < 0.01
