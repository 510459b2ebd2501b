"""Registration stage entry points: the file-reading, file-writing side of calibration and registration.

* :func:`run_calibrate`: board image folders to ``rig.yaml`` (+ ``rig.report.json``).
* :func:`run_register`: raw color/thermal folders or videos, paired by name or time, to a registered pair
  dataset (``color/``, ``thermal/``, ``manifest.csv``).
* :func:`register_manifest` / :func:`correct_offset`: re-warp an existing pair dataset (a homography, a
  calibration, or a measured global offset), moving color labels along.
* :func:`run_displacement`: residual-misalignment statistics of a pair dataset (``displacement.json``,
  ``pairs.csv``, Figure-6-style histograms).

The geometry lives in pure modules (:mod:`.calibration`, :mod:`.warp`, :mod:`.displacement`); this module
only reads, loops and writes. Every file is written atomically.

Example:
    >>> run_displacement(load_manifest("runs/msrs"), "runs/msrs_disp", split="test")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from invismap.data.manifest import (
    Manifest,
    Sample,
    evenly,
    read_yolo_labels,
    refuse_writing_over,
    save_manifest,
    write_yolo_labels,
    yolo_to_xyxy,
)
from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write, json_safe, read_color, read_thermal, write_image, write_json
from invismap.registration import calibration as calib_mod
from invismap.registration.calibration import CameraModel, RigCalibration
from invismap.registration.displacement import (
    DEFAULT_PARAMS,
    HIST_EDGES,
    DisplacementParams,
    box_shifts,
    dense_displacement,
    displacement_stats,
    estimate_translation,
    histogram_stats,
    label_offsets,
)
from invismap.registration.pairing import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    pair_by_name,
    pair_by_time,
    pair_streams,
    parse_timestamp,
)
from invismap.registration.warp import (
    color_maps,
    color_points_to_registered,
    offset_correction,
    output_size,
    thermal_maps,
    thermal_points_to_registered,
    transform_boxes,
    transform_points,
)

__all__ = [
    "correct_offset",
    "identity_calibration",
    "list_images",
    "load_offset",
    "read_thermal_raw",
    "register_manifest",
    "run_calibrate",
    "run_displacement",
    "run_register",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Reading


def read_thermal_raw(path: str | Path) -> np.ndarray:
    """A thermal frame ``(H, W)``: 16-bit frames kept as uint16 (radiometric counts), others as uint8."""
    path = Path(path)
    try:
        raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    except OSError:
        raw = None
    if raw is not None and raw.dtype == np.uint16 and raw.ndim == 2:
        return raw
    return read_thermal(path)  # validates and explains anything unusual


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise file_error(folder, "not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise file_error(folder, "holds no images", f"expected {', '.join(IMAGE_SUFFIXES)} files")
    return files


def _pair_folders(color_dir: Path, thermal_dir: Path, pair_by: str, tolerance: float,
                  time_regex: str | None, time_unit: str, offset: float
                  ) -> list[tuple[str, Path, Path, float | None]]:
    """``(name, color_path, thermal_path, thermal_time)`` for two image folders."""
    cf, tf = list_images(color_dir), list_images(thermal_dir)
    if pair_by == "name":
        pairs = [(stem, cf[i], tf[j],
                  parse_timestamp(tf[j].name, time_regex, time_unit) if time_regex else None)
                 for i, j, stem in pair_by_name([p.name for p in cf], [p.name for p in tf])]
        if not pairs:
            raise InvismapError(f"{color_dir} and {thermal_dir}: no file names in common "
                                "(use --pair-by time to pair by timestamps in the names)")
        return pairs
    if pair_by != "time":
        raise InvismapError(f"--pair-by must be 'name' or 'time', got '{pair_by}'")

    def times(files: list[Path]) -> list[float]:
        out = []
        for p in files:
            try:
                t = parse_timestamp(p.name, time_regex, time_unit)
            except (ValueError, IndexError) as e:
                raise InvismapError(f"--time-regex/--time-unit: {e}") from None
            if t is None:
                raise file_error(p, "file name holds no timestamp",
                                 "pass --time-regex with a group (?P<t>...)")
            out.append(t)
        return out

    tc, tt = times(cf), times(tf)
    matched = pair_by_time(tc, tt, tolerance, offset)
    if not matched:
        raise InvismapError(f"{color_dir} and {thermal_dir}: no frames within {tolerance} s of each other "
                            f"(color {min(tc):.3f}..{max(tc):.3f} s, thermal {min(tt):.3f}..{max(tt):.3f} s; "
                            "check --time-unit, --offset, --tolerance)")
    return [(tf[j].stem, cf[i], tf[j], tt[j]) for i, j, _ in matched]


def _video_frames(path: Path, every: int, gray: bool) -> Iterator[tuple[float, tuple[int, np.ndarray]]]:
    """``(time_s, (index, frame))`` of a video; RGB for color, one channel for thermal."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise file_error(path, "cannot open video", "check the file, or extract frames to a folder")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    idx = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if (t <= 0 and idx > 0) or not math.isfinite(t):
                t = idx / fps if fps > 0 else float(idx)
            if idx % every == 0:
                if gray:
                    f = frame if frame.ndim == 2 else frame[:, :, 0]
                else:
                    f = (cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3
                         else np.repeat(frame[..., None], 3, 2))
                yield t, (idx, f)
            idx += 1
    finally:
        cap.release()


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES


# --------------------------------------------------------------------------------------------------
# Calibration


def run_calibrate(color_dir: str | Path, thermal_dir: str | Path, out: str | Path, pattern: tuple[int, int],
                  square: float, *, homography: str = "corners", plane_depth: float | None = None,
                  pair_by: str = "name", tolerance: float = 0.05, time_regex: str | None = None,
                  time_unit: str = "auto", fix_k3: bool = True, ransac_thresh: float = 2.0
                  ) -> tuple[RigCalibration, dict]:
    """Calibrate a rig from two folders of synchronised board images; write YAML and a JSON report.

    Args:
        color_dir: color board images.
        thermal_dir: thermal board images (8- or 16-bit).
        out: output YAML path (the report goes to ``<out stem>.report.json`` beside it).
        pattern: inner corners ``(columns, rows)``.
        square: square side, metres.
        homography: ``"corners"`` or ``"plane"`` (see :func:`~.calibration.calibrate_rig`).
        plane_depth: plane distance for ``"plane"``, metres (inf allowed).
        pair_by: ``"name"`` or ``"time"``.
        tolerance: time pairing tolerance, seconds.
        time_regex: timestamp regex for ``"time"``.
        time_unit: timestamp unit.
        fix_k3: keep the 6th-order radial term at 0 (recommended unless lenses are very wide).
        ransac_thresh: homography RANSAC threshold, thermal pixels.

    Returns:
        ``(calibration, report)``.
    """
    pairs = _pair_folders(Path(color_dir), Path(thermal_dir), pair_by, tolerance, time_regex, time_unit, 0.0)
    color = [read_color(p) for _, p, _, _ in pairs]
    thermal = [read_thermal_raw(p) for _, _, p, _ in pairs]
    try:
        calib, report = calib_mod.calibrate_rig(color, thermal, pattern, square, homography=homography,
                                                plane_depth=plane_depth, ransac_thresh=ransac_thresh,
                                                flags=cv2.CALIB_FIX_K3 if fix_k3 else 0)
    except ValueError as e:
        raise InvismapError(f"{color_dir} + {thermal_dir}: {e}") from None
    report["pairs"] = [name for name, *_ in pairs]
    used = {p for _, c, t, _ in pairs for p in (c, t)}  # board views without a twin, named in the report
    report["unpaired"] = [str(p) for d in (color_dir, thermal_dir) for p in list_images(Path(d))
                          if p not in used]
    out = Path(out)
    calib_mod.save_calibration(out, calib)
    write_json(out.with_name(out.stem + ".report.json"), report)
    return calib, report


# --------------------------------------------------------------------------------------------------
# Registration of raw pairs


def identity_calibration(color_size: tuple[int, int], thermal_size: tuple[int, int]) -> RigCalibration:
    """A distortion-free "calibration" that only rescales the color image onto the thermal grid."""
    (wc, hc), (wt, ht) = color_size, thermal_size
    sx, sy = wt / wc, ht / hc
    # Pixel-centre aligned scaling: (x + 0.5) * s - 0.5.
    H = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return RigCalibration(CameraModel.ideal(color_size), CameraModel.ideal(thermal_size), H,
                          H_method="identity")


def run_register(color_src: str | Path, thermal_src: str | Path, out_dir: str | Path, *,
                 calib: RigCalibration | None = None, scale: float = 1.0, pair_by: str = "name",
                 tolerance: float = 0.02, time_regex: str | None = None, time_unit: str = "auto",
                 offset: float = 0.0, every: int = 1, max_pairs: int | None = None,
                 condition: str = "unknown", split: str = "all", progress: bool = True) -> Manifest:
    """Undistort and warp every raw pair onto the thermal grid; write a pair dataset.

    Sources are two image folders (paired by file name, or by timestamps in the names) or two videos
    (paired by frame time). Each color frame is used at most once; unpaired frames are skipped.

    Args:
        color_src: folder of color images or a color video.
        thermal_src: folder of thermal images or a thermal video.
        out_dir: output dataset folder (``color/``, ``thermal/``, ``manifest.csv``, ``registration.json``).
        calib: rig calibration; None rescales the color image to the thermal size (no undistortion).
        scale: registered grid = thermal size times ``scale``.
        pair_by: folders: ``"name"`` or ``"time"``; videos are always paired by time.
        tolerance: largest time difference of a pair, seconds.
        time_regex: regex for timestamps in file names (group ``t``); default the last number.
        time_unit: unit of file-name timestamps (``auto``, ``s``, ``ms``, ``us``, ``ns``).
        offset: seconds added to color times to put them on the thermal clock.
        every: keep every ``every``-th thermal frame (videos) or pair (folders).
        max_pairs: stop after this many pairs.
        condition: condition written for every pair (day, night, ...).
        split: split written for every pair.
        progress: tqdm bar.

    Returns:
        the written :class:`~invismap.data.manifest.Manifest`.
    """
    color_src, thermal_src, out_dir = Path(color_src), Path(thermal_src), Path(out_dir)
    if every < 1:
        raise InvismapError(f"--every must be >= 1, got {every}")
    if scale <= 0:
        raise InvismapError(f"--scale must be > 0, got {scale}")
    videos = _is_video(color_src), _is_video(thermal_src)
    if any(videos) and not all(videos):
        raise InvismapError(f"{color_src} / {thermal_src}: give two folders or two videos, not one of each")
    if all(videos):
        pairs_iter = ((f"{thermal_src.stem}_{ti:06d}", cf, tf, t_thr)
                      for _, t_thr, (ci, cf), (ti, tf) in pair_streams(
                          _video_frames(color_src, 1, gray=False),
                          _video_frames(thermal_src, every, gray=True),
                          tolerance, offset))
        total = None
    else:
        pairs = _pair_folders(color_src, thermal_src, pair_by, tolerance, time_regex, time_unit, offset)
        pairs = pairs[::every]
        total = len(pairs) if max_pairs is None else min(len(pairs), max_pairs)
        pairs_iter = ((n, c, t, ts) for n, c, t, ts in pairs)

    samples: list[Sample] = []
    maps: dict = {}
    bar = tqdm(total=total, desc="register", unit="pair", disable=not progress)
    for name, c, t, ts in pairs_iter:
        if max_pairs is not None and len(samples) >= max_pairs:
            break
        color = read_color(c) if isinstance(c, Path) else c
        thermal = read_thermal_raw(t) if isinstance(t, Path) else t
        cal = calib or identity_calibration((color.shape[1], color.shape[0]),
                                            (thermal.shape[1], thermal.shape[0]))
        if (color.shape[1], color.shape[0]) != tuple(cal.color.size) or \
                (thermal.shape[1], thermal.shape[0]) != tuple(cal.thermal.size):
            where = c if isinstance(c, Path) else color_src
            raise file_error(where, f"pair '{name}' is color {color.shape[1]}x{color.shape[0]}, thermal "
                             f"{thermal.shape[1]}x{thermal.shape[0]}; the calibration expects "
                             f"{cal.color.size[0]}x{cal.color.size[1]} and "
                             f"{cal.thermal.size[0]}x{cal.thermal.size[1]}",
                             "recalibrate, or check --color/--thermal")
        key = (cal.color.size, cal.thermal.size)
        if key not in maps:
            maps[key] = (color_maps(cal, scale), thermal_maps(cal, scale))
        (cmx, cmy), (tmx, tmy) = maps[key]
        reg_c = cv2.remap(color, cmx, cmy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        reg_t = cv2.remap(thermal, tmx, tmy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        cp, tp = out_dir / "color" / f"{name}.png", out_dir / "thermal" / f"{name}.png"
        write_image(cp, reg_c)
        write_image(tp, reg_t)
        samples.append(Sample(name, cp, tp, condition, split, ts))
        bar.update(1)
    bar.close()
    if not samples:
        raise InvismapError(f"{color_src} / {thermal_src}: no pairs found (check --tolerance, --offset)")
    manifest = Manifest(samples, out_dir.resolve())
    save_manifest(manifest, out_dir / "manifest.csv")
    info = {"color_src": str(color_src), "thermal_src": str(thermal_src), "n_pairs": len(samples),
            "pair_by": "time" if all(videos) else pair_by, "tolerance_s": tolerance, "offset_s": offset,
            "scale": scale, "output_size": list(output_size(calib, scale)) if calib else None,
            "calibration": calib_mod.calibration_to_dict(calib) if calib else "identity (rescale only)"}
    write_json(out_dir / "registration.json", info)
    return manifest


# --------------------------------------------------------------------------------------------------
# Re-registering a pair dataset (labels move along)


def _boxes_through(label_path: Path | None, out_path: Path, size_in: tuple[int, int],
                   size_out: tuple[int, int], point_fn: Callable[[np.ndarray], np.ndarray]) -> Path | None:
    """Map a YOLO label file's boxes through ``point_fn`` (input pixels to output pixels)."""
    if label_path is None:
        return None
    labels = read_yolo_labels(label_path)
    xyxy = yolo_to_xyxy(labels, *size_in)
    boxes = transform_boxes(xyxy[:, 1:5], point_fn)
    write_yolo_labels(out_path, boxes, labels[:, 0].astype(int), *size_out)
    return out_path


def register_manifest(manifest: Manifest, out_dir: str | Path, *, H: np.ndarray | None = None,
                      calib: RigCalibration | None = None, scale: float = 1.0, split: str | None = None,
                      progress: bool = True, info: dict | None = None) -> Manifest:
    """Warp the color image of every pair (and with ``calib``, undistort the thermal one); move labels.

    Exactly one of ``H`` and ``calib``:

    * ``H``: a homography applied to the color image *in place* (color pixels to color pixels of the
      same grid, e.g. :func:`~.warp.offset_correction`). Thermal images and labels are left where they
      are (the new manifest points at them).
    * ``calib``: full registration of raw pairs (both images and both label sets are written).

    Args:
        manifest: pair dataset.
        out_dir: output folder (``color/``, ``thermal/``, ``labels/{color,thermal}/``, ``manifest.csv``).
        H: 3x3 color-to-color homography.
        calib: rig calibration for raw pairs.
        scale: registered grid scale (``calib`` only).
        split: only pairs of this split (None: all).
        progress: tqdm bar.
        info: extra metadata written to ``registration.json``.

    Returns:
        the written manifest.
    """
    if (H is None) == (calib is None):
        raise ValueError("give exactly one of H and calib")
    refuse_writing_over(manifest, out_dir)
    out_dir = Path(out_dir)
    samples = list(manifest.select(split=split)) if split else list(manifest)
    if not samples:
        raise InvismapError(f"{manifest.root}: no pairs with split={split}")
    out: list[Sample] = []
    if calib is not None:
        mc, mt = color_maps(calib, scale), thermal_maps(calib, scale)
        size_o = output_size(calib, scale)
    for s in tqdm(samples, desc="register", unit="pair", disable=not progress):
        color = read_color(s.color)
        hc, wc = color.shape[:2]
        cp = out_dir / "color" / f"{s.name}.png"
        cl = out_dir / "labels" / "color" / f"{s.name}.txt"
        if H is not None:
            warped = cv2.warpPerspective(color, np.asarray(H, np.float64), (wc, hc), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_CONSTANT)
            write_image(cp, warped)
            new_cl = _boxes_through(s.color_labels, cl, (wc, hc), (wc, hc), lambda p: transform_points(p, H))
            out.append(replace(s, color=cp, color_labels=new_cl))
            continue
        thermal = read_thermal_raw(s.thermal)
        size_t = (thermal.shape[1], thermal.shape[0])
        if (wc, hc) != tuple(calib.color.size) or size_t != tuple(calib.thermal.size):
            raise file_error(s.color, f"pair '{s.name}' sizes {wc}x{hc} / {size_t[0]}x{size_t[1]} "
                             "do not match the calibration", "recalibrate for this dataset")
        tp = out_dir / "thermal" / f"{s.name}.png"
        tl = out_dir / "labels" / "thermal" / f"{s.name}.txt"
        write_image(cp, cv2.remap(color, *mc, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT))
        write_image(tp, cv2.remap(thermal, *mt, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT))
        new_cl = _boxes_through(s.color_labels, cl, (wc, hc), size_o,
                                lambda p: color_points_to_registered(p, calib, scale))
        new_tl = _boxes_through(s.thermal_labels, tl, size_t, size_o,
                                lambda p: thermal_points_to_registered(p, calib, scale))
        out.append(replace(s, color=cp, thermal=tp, color_labels=new_cl, thermal_labels=new_tl))
    result = Manifest(out, out_dir.resolve())
    save_manifest(result, out_dir / "manifest.csv")
    meta = {"source": str(manifest.root), "n_pairs": len(out),
            "H_color": None if H is None else np.asarray(H, float).tolist(),
            "calibration": None if calib is None else calib_mod.calibration_to_dict(calib), "scale": scale}
    meta.update(info or {})
    write_json(out_dir / "registration.json", meta)
    return result


def correct_offset(manifest: Manifest, dx: float, dy: float, out_dir: str | Path, *, split: str | None = None,
                   progress: bool = True) -> Manifest:
    """Remove a global color offset ``(dx, dy)`` (color position minus thermal) from a pair dataset.

    The color image of every pair is shifted by ``(-dx, -dy)`` onto the thermal content, and its color
    labels with it; thermal images and thermal labels are untouched (referenced, not copied).

    Args:
        manifest: pair dataset.
        dx: measured x offset, pixels (e.g. ``global_offset`` of ``displacement.json``).
        dy: measured y offset, pixels (``dy < 0``: color content sits above thermal).
        out_dir: output dataset folder.
        split: only pairs of this split (None: all).
        progress: tqdm bar.

    Returns:
        the written manifest.
    """
    return register_manifest(manifest, out_dir, H=offset_correction(dx, dy), split=split, progress=progress,
                             info={"offset_removed": {"dx": float(dx), "dy": float(dy)}})


# the offsets a displacement.json may hold (load_offset's keys)
OFFSET_KEYS = ("global", "pooled_flow", "phase", "ecc", "edge_ncc_per_box", "labels")


def load_offset(path: str | Path, key: str = "global") -> tuple[float, float]:
    """An offset ``(dx, dy)`` from a ``displacement.json`` (or its folder).

    Args:
        path: the file or its folder.
        key: ``"global"`` (``global_offset``, the pooled flow median) or a key of ``offsets``
            (``pooled_flow``, ``phase``, ``ecc``, ``edge_ncc_per_box``, ``labels``).
    """
    import json

    path = Path(path)
    if path.is_dir():
        path = path / "displacement.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise file_error(path, "not found", "run 'invismap displacement' first") from None
    except (ValueError, UnicodeDecodeError):
        raise file_error(path, "is not JSON",
                         "use the displacement.json of 'invismap displacement'") from None
    if not isinstance(d, dict) or not ("global_offset" in d or d.get("offsets")):
        raise file_error(path, "holds no offsets", "use the displacement.json of 'invismap displacement'")
    try:
        off = d["global_offset"] if key == "global" else d["offsets"][key]
        dx, dy = float(off["dx"]), float(off["dy"])
    except KeyError:
        have = (["global"] if "global_offset" in d else []) + sorted((d.get("offsets") or {}).keys())
        raise file_error(path, f"has no offset '{key}'", f"available: {', '.join(have)}") from None
    except (ValueError, TypeError):
        raise file_error(path, f"offset '{key}' is missing or not finite (no trusted pixels?)") from None
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise file_error(path, "global_offset is not finite (no trusted pixels were found)")
    return dx, dy


# --------------------------------------------------------------------------------------------------
# Displacement statistics


N_BANDS = 8


def _pooled(hx: np.ndarray, hy: np.ndarray, n: int, n_big: int, big: float) -> dict:
    s = histogram_stats(hx, hy, big=big)
    return {"n_pixels": int(n), "median_dx": s["median_dx"], "median_dy": s["median_dy"],
            "share_ge_big": n_big / n if n else float("nan"), "share_x_ge_big": s["share_x_ge_big"],
            "share_y_ge_big": s["share_y_ge_big"]}


def run_displacement(manifest: Manifest, out_dir: str | Path | None, *, split: str | None = None,
                     params: DisplacementParams = DEFAULT_PARAMS, big: float = 5.0,
                     translation_methods: Sequence[str] = ("phase", "ecc"), max_pairs: int | None = None,
                     progress: bool = True) -> dict:
    """Residual misalignment of registered pairs: per-pair and pooled displacement statistics.

    For each pair, dense flow between the thermal and the color edge images
    (:func:`~.displacement.dense_displacement`) gives the displacement of color content relative to
    thermal (``dy < 0``: color above). Only trusted pixels count (strong thermal edge, matching color
    edge, forward/backward consistent). Written to ``out_dir``: ``displacement.json`` (summary, pooled
    histograms, per-pair rows), ``pairs.csv``, ``displacement_hist.png`` (paper Figure 6 style) and
    ``displacement_rows.png`` (median per horizontal band).

    Args:
        manifest: registered pair dataset (color and thermal of equal size).
        out_dir: output folder, or None to write nothing.
        split: only pairs of this split (None: all).
        params: edge/flow/mask settings.
        big: threshold, pixels, for the "displaced" shares.
        translation_methods: extra per-pair global-translation estimators (``phase``, ``ecc``).
        max_pairs: at most this many pairs (evenly spaced), for quick looks.
        progress: tqdm bar.

    Returns:
        the summary dict (as written to ``displacement.json``).
    """
    samples = list(manifest.select(split=split)) if split else list(manifest)
    if not samples:
        raise InvismapError(f"{manifest.root}: no pairs with split={split}")
    if max_pairs is not None:
        samples = evenly(samples, max_pairs)
    for m in translation_methods:
        if m not in ("phase", "ecc", "flow"):
            raise InvismapError(f"unknown translation method '{m}' (choose from phase, ecc)")
    nb = len(HIST_EDGES) - 1
    hx, hy, n_all, n_big = np.zeros(nb, np.int64), np.zeros(nb, np.int64), 0, 0
    band_hx, band_hy = np.zeros((N_BANDS, nb), np.int64), np.zeros((N_BANDS, nb), np.int64)
    box_hx, box_hy, box_n, box_big, have_boxes = np.zeros(nb, np.int64), np.zeros(nb, np.int64), 0, 0, False
    rows = []
    obj_shifts: list[np.ndarray] = []
    lab_offsets: list[np.ndarray] = []
    height = None
    for s in tqdm(samples, desc="displacement", unit="pair", disable=not progress):
        thermal = read_thermal(s.thermal)
        color = read_color(s.color)
        if thermal.shape[:2] != color.shape[:2]:
            raise file_error(s.color, f"pair '{s.name}': color {color.shape[1]}x{color.shape[0]} and thermal "
                             f"{thermal.shape[1]}x{thermal.shape[0]} differ", "register the pairs first "
                             "('invismap register')")
        flow, mask = dense_displacement(thermal, color, params)
        st = displacement_stats(flow, mask, big=big)
        hx += st["hist_x"]
        hy += st["hist_y"]
        n_all += st["n_pixels"]
        norm = np.hypot(flow[..., 0], flow[..., 1])
        n_big += int((norm[mask] >= big).sum())
        h = mask.shape[0]
        height = h
        ys = np.nonzero(mask)[0]
        band_of = np.minimum(ys * N_BANDS // h, N_BANDS - 1)
        fx, fy = flow[..., 0][mask], flow[..., 1][mask]
        for b in range(N_BANDS):
            sel = band_of == b
            band_hx[b] += np.histogram(fx[sel], HIST_EDGES)[0]
            band_hy[b] += np.histogram(fy[sel], HIST_EDGES)[0]
        row = {"name": s.name, "condition": s.condition, "split": s.split}
        row.update({k: v for k, v in st.items() if not k.startswith("hist")})
        if s.thermal_labels is not None:
            have_boxes = True
            boxes = yolo_to_xyxy(read_yolo_labels(s.thermal_labels), thermal.shape[1], thermal.shape[0])
            obj = box_shifts(thermal, color, boxes[:, 1:5], params=params)
            obj_shifts.append(obj[np.isfinite(obj[:, 0])])
            if s.color_labels is not None:
                cboxes = yolo_to_xyxy(read_yolo_labels(s.color_labels), color.shape[1], color.shape[0])
                lab_offsets.append(label_offsets(cboxes, boxes))
            inbox = np.zeros_like(mask)
            for _, x1, y1, x2, y2 in boxes:
                inbox[max(int(y1), 0):max(math.ceil(y2), 0), max(int(x1), 0):max(math.ceil(x2), 0)] = True
            inbox &= mask
            box_hx += np.histogram(flow[..., 0][inbox], HIST_EDGES)[0]
            box_hy += np.histogram(flow[..., 1][inbox], HIST_EDGES)[0]
            box_n += int(inbox.sum())
            box_big += int((norm[inbox] >= big).sum())
            row["n_box_pixels"] = int(inbox.sum())
        for m in translation_methods:
            dx, dy, q = estimate_translation(thermal, color, method=m, params=params)
            row.update({f"{m}_dx": dx, f"{m}_dy": dy, f"{m}_quality": q})
        rows.append(row)

    def med(key: str) -> float:
        v = np.array([r[key] for r in rows], float)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else float("nan")

    pooled = _pooled(hx, hy, n_all, n_big, big)
    bands = []
    for b in range(N_BANDS):
        hs = histogram_stats(band_hx[b], band_hy[b], big=big)
        r0, r1 = b * height // N_BANDS, (b + 1) * height // N_BANDS
        bands.append({"rows": [int(r0), int(r1)], "n_pixels": int(band_hx[b].sum()),
                      "median_dx": hs["median_dx"], "median_dy": hs["median_dy"]})
    translation = {"flow_median_per_pair": {"dx": med("median_dx"), "dy": med("median_dy")}}
    for m in translation_methods:
        translation[m] = {"dx": med(f"{m}_dx"), "dy": med(f"{m}_dy"),
                          "note": "median over pairs of one global shift per pair"}
    objects = None
    if have_boxes:
        objects = {"flow_in_thermal_boxes": _pooled(box_hx, box_hy, box_n, box_big, big),
                   "edge_ncc_per_box": _offset_stats(np.concatenate(obj_shifts) if obj_shifts else None, big,
                                                     "each thermal box's edge image matched in the "
                                                     "color edge image (NCC, +-8 px); one shift per object"),
                   "labels": _offset_stats(np.concatenate(lab_offsets) if lab_offsets else None, big,
                                           "centres of boxes drawn separately on color and thermal, matched "
                                           "by class and IoU >= 0.5")}
    offsets = {"pooled_flow": {"dx": pooled["median_dx"], "dy": pooled["median_dy"]}}
    offsets.update({m: {"dx": t["dx"], "dy": t["dy"]} for m, t in translation.items()
                    if m != "flow_median_per_pair"})
    if objects:
        for key in ("edge_ncc_per_box", "labels"):
            if objects[key]["n"]:
                offsets[key] = {"dx": objects[key]["median_dx"], "dy": objects[key]["median_dy"]}
    summary = {
        "n_pairs": len(rows),
        "split": split or "all",
        "sign": "dx, dy = color position minus thermal position, pixels; dy < 0: color content above thermal",
        "mask": (f"only trusted pixels count: thermal edge value > {params.edge_thresh}, color edge value > "
                 f"{params.edge_thresh} at the matched position, forward/backward flow error < "
                 f"{params.fb_thresh} px, not within {params.border} px of the border"),
        "params": asdict(params),
        "big_px": big,
        "pooled": pooled,
        "per_pair_median": {"median_dx": med("median_dx"), "median_dy": med("median_dy"),
                            "share_ge_big": med("share_ge_big")},
        "translation": translation,
        "global_offset": {"dx": pooled["median_dx"], "dy": pooled["median_dy"],
                          "method": "pooled median of the trusted edge flow over all pairs"},
        "offsets": offsets,
        "by_row_band": bands,
        "objects": objects,
        "hist_edges": HIST_EDGES.tolist(),
        "hist_x": hx.tolist(),
        "hist_y": hy.tolist(),
        "pairs": rows,
    }
    if out_dir is not None:
        _write_displacement(Path(out_dir), summary, rows, big)
    return summary


def _offset_stats(d: np.ndarray | None, big: float, how: str) -> dict:
    if d is None or not len(d):
        return {"n": 0, "median_dx": float("nan"), "median_dy": float("nan"), "share_ge_big": float("nan"),
                "method": how}
    return {"n": len(d), "median_dx": float(np.median(d[:, 0])), "median_dy": float(np.median(d[:, 1])),
            "share_ge_big": float((np.hypot(d[:, 0], d[:, 1]) >= big).mean()), "method": how}


def _write_displacement(out_dir: Path, summary: dict, rows: list[dict], big: float) -> None:
    from invismap.registration.plots import plot_displacement_histograms, plot_row_profile

    # Strict JSON has no NaN/inf: NaN becomes null, the histogram's overflow edges become strings.
    js = json_safe(summary)
    js["hist_edges"] = ["-inf"] + summary["hist_edges"][1:-1] + ["inf"]
    write_json(out_dir / "displacement.json", js)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_write(out_dir / "pairs.csv", "w") as f:
        f.write(buf.getvalue())
    p = summary["pooled"]
    title = (f"{summary['n_pairs']} pairs ({summary['split']}): median dx {p['median_dx']:+.2f}, "
             f"dy {p['median_dy']:+.2f} px; >= {big:g} px: {100 * p['share_ge_big']:.1f}%")
    plot_displacement_histograms(summary["hist_x"], summary["hist_y"], out_dir / "displacement_hist.png",
                                 title=title, big=big)
    plot_row_profile(summary["by_row_band"], out_dir / "displacement_rows.png", title="by image row")
