"""``invismap calibrate | register | displacement``: rig calibration, registration, residual misalignment.

Each subcommand parses its flags and calls one function of :mod:`invismap.registration.run`.

Examples::

    invismap calibrate --color boards/rgb --thermal boards/ir --pattern 9x6 --square 0.04 --out rig.yaml
    invismap register --color raw/rgb --thermal raw/ir --calib rig.yaml --out runs/pairs
    invismap register --color rgb.mp4 --thermal ir.mp4 --calib rig.yaml --tolerance 0.02 --out runs/pairs
    invismap displacement --data runs/msrs --split test --out runs/msrs_disp
    invismap register --data runs/msrs --offset-from runs/msrs_disp --out runs/msrs_corrected
"""

from __future__ import annotations

import argparse
import logging
import math

from invismap.data.manifest import SPLITS

log = logging.getLogger(__name__)


def _pattern(text: str) -> tuple[int, int]:
    try:
        c, r = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("pattern must look like 9x6 (inner corners), "
                                         f"got '{text}'") from None
    if c < 2 or r < 2 or c == r:
        raise argparse.ArgumentTypeError(f"pattern {c}x{r}: need >= 2 corners per side and columns != rows "
                                         "(a square pattern's orientation is ambiguous)")
    return c, r


def _positive(text: str) -> float:
    v = float(text)
    if not (v > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _square(text: str) -> float:
    v = _positive(text)
    if v > 1:  # a checkerboard square is centimetres wide; 40 is almost surely millimetres
        raise argparse.ArgumentTypeError(f"the square side is in metres: {text} m is not a board's square "
                                         f"(for {text} mm write {v / 1000:g})")
    return v


def _depth(text: str) -> float:
    v = float(text)  # "inf" allowed
    if not (v > 0):
        raise argparse.ArgumentTypeError(f"plane depth must be > 0 (or inf), got {text}")
    return v


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``calibrate``, ``register`` and ``displacement`` to the ``invismap`` subcommands."""
    # -- calibrate ---------------------------------------------------------------------------------
    p = sub.add_parser(
        "calibrate", help="calibrate a color/thermal rig from checkerboard images (intrinsics + homography)",
        description="Find the board in every color and thermal image (thermal: contrast inverted, CLAHE), "
                    "calibrate both cameras (K, distortion; RMS reprojection error per camera) and fit the "
                    "homography from the undistorted color image to the undistorted thermal image. Writes "
                    "OUT (YAML) and OUT's stem + .report.json.")
    p.add_argument("--color", required=True, help="folder of color board images")
    p.add_argument("--thermal", required=True,
                   help="folder of thermal board images, taken with the color ones")
    p.add_argument("--pattern", type=_pattern, required=True, help="inner corners COLSxROWS, e.g. 9x6")
    p.add_argument("--square", type=_square, required=True, help="square side in metres, e.g. 0.04")
    p.add_argument("--out", required=True, help="output calibration YAML")
    p.add_argument("--homography", choices=("corners", "plane"), default="corners",
                   help="corners: RANSAC fit to the corners of all views (exact when boards sit at one depth "
                        "or the baseline is tiny); plane: from the stereo pose for a plane at --plane-depth")
    p.add_argument("--plane-depth", type=_depth, default=None,
                   help="plane distance in metres for --homography plane (default: median board distance; "
                        "'inf' for distant scenes)")
    p.add_argument("--pair-by", choices=("name", "time"), default="name", help="how to pair the two folders")
    p.add_argument("--tolerance", type=_positive, default=0.05, help="time pairing tolerance, seconds")
    p.add_argument("--time-regex", default=None, help="regex for timestamps in file names (group 't')")
    p.add_argument("--time-unit", default="auto", choices=("auto", "s", "ms", "us", "ns"))
    p.add_argument("--free-k3", action="store_true", help="also estimate k3 (default: fixed at 0)")
    p.set_defaults(func=_calibrate)

    # -- register ----------------------------------------------------------------------------------
    p = sub.add_parser(
        "register", help="undistort + warp raw pairs onto the thermal image (folders or videos), or "
                         "re-warp a pair dataset (a measured offset, a homography, a calibration)",
        description="Raw mode (--color/--thermal): pair two image folders by name or by timestamps in the "
                    "names, or two videos by frame time, undistort both and map the color image onto the "
                    "thermal grid; writes OUT/{color,thermal}/, OUT/manifest.csv. Dataset mode (--data): "
                    "re-warp the color image of every pair by --shift, --offset-from or --homography-file "
                    "(labels of the color image move along), or register raw pairs with --calib.")
    src = p.add_argument_group("raw pairs")
    src.add_argument("--color", help="folder of color images, or a color video")
    src.add_argument("--thermal", help="folder of thermal images, or a thermal video")
    src.add_argument("--pair-by", choices=("name", "time"), default="name",
                     help="folders: pair by identical file stem or by timestamp in the names (videos: time)")
    src.add_argument("--tolerance", type=_positive, default=0.02, help="largest time gap of a pair, seconds")
    src.add_argument("--time-regex", default=None,
                     help="regex for the timestamp in file names (named group 't'); default: last number")
    src.add_argument("--time-unit", default="auto", choices=("auto", "s", "ms", "us", "ns"))
    src.add_argument("--offset", type=float, default=0.0, help="seconds added to color times (clock offset)")
    src.add_argument("--every", type=int, default=1, help="keep every N-th thermal frame / pair")
    src.add_argument("--max-pairs", type=int, default=None)
    src.add_argument("--condition", default="unknown", help="condition written for every pair")
    src.add_argument("--pair-split", default="all", choices=SPLITS, help="split written for every pair")
    ds = p.add_argument_group("pair dataset")
    ds.add_argument("--data", help="manifest.csv (or its folder) of an existing pair dataset")
    ds.add_argument("--split", default=None, choices=SPLITS, help="only pairs of this split")
    ds.add_argument("--shift", type=float, nargs=2, metavar=("DX", "DY"),
                    help="remove this color offset (color minus thermal, px): color moves by (-DX, -DY)")
    ds.add_argument("--offset-from", metavar="DISPLACEMENT_JSON",
                    help="remove the global_offset measured by 'invismap displacement' (file or folder)")
    ds.add_argument("--offset-key", default="global",
                    help="which offset of --offset-from: global (pooled flow median, default), phase, ecc, "
                         "edge_ncc_per_box, labels")
    ds.add_argument("--homography-file", help="3x3 color-to-color homography (text, 9 numbers)")
    p.add_argument("--calib", help="calibration YAML from 'invismap calibrate' (raw mode: optional; without "
                                   "it the color image is only rescaled to the thermal size)")
    p.add_argument("--plane-depth", type=_depth, default=None,
                   help="recompute the homography for this plane depth (needs extrinsics in --calib)")
    p.add_argument("--scale", type=_positive, default=1.0, help="output grid = thermal size x SCALE")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.set_defaults(func=_register)

    # -- displacement ------------------------------------------------------------------------------
    p = sub.add_parser(
        "displacement", help="residual color/thermal misalignment: dense edge flow statistics (paper Fig. 6)",
        description="Dense optical flow between thermal and color edge images of every pair; x/y "
                    "displacement histograms, medians and the share displaced by >= BIG px, on trusted "
                    "edge pixels only. Writes OUT/displacement.json, pairs.csv, displacement_hist.png, "
                    "displacement_rows.png.")
    p.add_argument("--data", required=True, help="manifest.csv (or its folder) of registered pairs")
    p.add_argument("--split", default=None, choices=SPLITS, help="only pairs of this split (e.g. test)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=("dis", "farneback"), default="dis", help="dense flow algorithm")
    p.add_argument("--big", type=_positive, default=5.0, help="'displaced' threshold, pixels")
    p.add_argument("--translation", default="phase,ecc",
                   help="comma list of extra per-pair global-shift estimators (phase, ecc; '' for none)")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most N pairs (quick look)")
    p.add_argument("--correct", metavar="OUT_DATASET", default=None,
                   help="also write a corrected dataset with the measured global offset removed")
    p.add_argument("--correct-with", default="global",
                   help="offset used by --correct: global (pooled flow median), phase, ecc, "
                        "edge_ncc_per_box, labels")
    p.set_defaults(func=_displacement)


def _calibrate(args: argparse.Namespace) -> int:
    from invismap.io import check_output_file
    from invismap.registration.run import run_calibrate

    check_output_file(args.out, (".yaml", ".yml"))
    calib, rep = run_calibrate(args.color, args.thermal, args.out, args.pattern, args.square,
                               homography=args.homography, plane_depth=args.plane_depth, pair_by=args.pair_by,
                               tolerance=args.tolerance, time_regex=args.time_regex, time_unit=args.time_unit,
                               fix_k3=not args.free_k3)
    n = len(rep["pairs"])
    if rep["unpaired"]:
        print(f"note: {len(rep['unpaired'])} image(s) without a twin in the other folder were not used "
              f"(e.g. {rep['unpaired'][0]}; the full list is in the report)")
    print(f"board found in {sum(rep['color_found'])}/{n} color and "
          f"{sum(rep['thermal_found'])}/{n} thermal images")
    print(f"color   RMS reprojection error {rep['color_rms']:.3f} px  fx={calib.color.K[0, 0]:.1f} "
          f"fy={calib.color.K[1, 1]:.1f}")
    print(f"thermal RMS reprojection error {rep['thermal_rms']:.3f} px  fx={calib.thermal.K[0, 0]:.1f} "
          f"fy={calib.thermal.K[1, 1]:.1f}")
    print(f"homography ({calib.H_method}) RMS {rep['homography_rms']:.3f} px, inliers "
          f"{100 * rep['homography_inlier_share']:.0f}%; stereo RMS {rep['stereo_rms']:.3f} px")
    if calib.H_method == "corners" and (rep["homography_rms"] > 1.0 or rep["homography_inlier_share"] < 0.9):
        depths = rep["board_depths"]
        print(f"note: boards at {min(depths):.2f}..{max(depths):.2f} m do not share one plane (parallax); "
              "consider --homography plane --plane-depth D at your scene's working distance")
    print(f"wrote {args.out}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from invismap.errors import InvismapError
    from invismap.registration import run
    from invismap.registration.calibration import load_calibration, plane_homography, with_homography

    calib = load_calibration(args.calib) if args.calib else None
    if args.plane_depth is not None:
        if calib is None or calib.R is None:
            raise InvismapError("--plane-depth needs --calib with extrinsics (from 'invismap calibrate')")
        calib = with_homography(calib, plane_homography(calib.color.K, calib.thermal.K, calib.R, calib.T,
                                                        args.plane_depth), "plane")
    if args.data:
        if args.color or args.thermal:
            raise InvismapError("give either --data or --color/--thermal, not both")
        from invismap.data.manifest import load_manifest

        manifest = load_manifest(args.data)
        chosen = [x for x in (args.shift, args.offset_from, args.homography_file, calib) if x is not None]
        if len(chosen) != 1:
            raise InvismapError("with --data give exactly one of --shift, --offset-from, --homography-file, "
                                "--calib")
        if args.shift or args.offset_from:
            dx, dy = args.shift or run.load_offset(args.offset_from, args.offset_key)
            out = run.correct_offset(manifest, dx, dy, args.out, split=args.split)
            print(f"removed color offset dx={dx:+.2f} dy={dy:+.2f} px from {len(out)} pairs; wrote "
                  f"{args.out}/manifest.csv")
            return 0
        if args.homography_file:
            H = _read_matrix(args.homography_file)
            out = run.register_manifest(manifest, args.out, H=H, split=args.split)
        else:
            out = run.register_manifest(manifest, args.out, calib=calib, scale=args.scale, split=args.split)
        print(f"registered {len(out)} pairs; wrote {args.out}/manifest.csv")
        return 0
    if not (args.color and args.thermal):
        raise InvismapError("give --color and --thermal (folders or videos), or --data MANIFEST")
    out = run.run_register(args.color, args.thermal, args.out, calib=calib, scale=args.scale,
                           pair_by=args.pair_by, tolerance=args.tolerance, time_regex=args.time_regex,
                           time_unit=args.time_unit, offset=args.offset, every=args.every,
                           max_pairs=args.max_pairs, condition=args.condition, split=args.pair_split)
    if calib is None:
        print("note: no --calib: color images were only rescaled to the thermal size (no undistortion)")
    print(f"registered {len(out)} pairs; wrote {args.out}/manifest.csv")
    return 0


def _read_matrix(path: str):
    import numpy as np

    from invismap.errors import file_error

    try:
        with open(path, encoding="utf-8") as f:
            vals = np.array([float(v) for v in f.read().replace(",", " ").split()])
    except FileNotFoundError:
        raise file_error(path, "not found") from None
    except ValueError:
        raise file_error(path, "holds something other than numbers", "write 9 numbers, row by row") from None
    if vals.size != 9 or not np.isfinite(vals).all() or abs(np.linalg.det(vals.reshape(3, 3))) < 1e-12:
        raise file_error(path, f"expected an invertible 3x3 matrix (9 numbers), got {vals.size} numbers")
    return vals.reshape(3, 3)


def _displacement(args: argparse.Namespace) -> int:
    from invismap.data.manifest import load_manifest
    from invismap.registration.displacement import DisplacementParams
    from invismap.registration.run import correct_offset, run_displacement

    manifest = load_manifest(args.data)
    methods = tuple(m.strip() for m in args.translation.split(",") if m.strip())
    s = run_displacement(manifest, args.out, split=args.split, params=DisplacementParams(method=args.method),
                         big=args.big, translation_methods=methods, max_pairs=args.max_pairs)
    p = s["pooled"]
    print(f"{s['n_pairs']} pairs, {p['n_pixels']} trusted edge pixels")
    print(f"pooled median dx {p['median_dx']:+.2f} px, dy {p['median_dy']:+.2f} px "
          "(dy < 0: color above thermal)")
    print(f"share displaced >= {args.big:g} px: {100 * p['share_ge_big']:.1f}% "
          f"(x: {100 * p['share_x_ge_big']:.1f}%, y: {100 * p['share_y_ge_big']:.1f}%)")
    for m, t in s["translation"].items():
        print(f"global shift by {m}: dx {t['dx']:+.2f}, dy {t['dy']:+.2f} px")
    if s["objects"]:
        b = s["objects"]["flow_in_thermal_boxes"]
        print(f"flow inside thermal boxes: median dx {b['median_dx']:+.2f}, dy {b['median_dy']:+.2f} px "
              f"({b['n_pixels']} px)")
        for key in ("edge_ncc_per_box", "labels"):
            o = s["objects"][key]
            if o["n"]:
                print(f"objects by {key}: median dx {o['median_dx']:+.2f}, dy {o['median_dy']:+.2f} px over "
                      f"{o['n']} objects, {100 * o['share_ge_big']:.0f}% >= {args.big:g} px")
    print(f"wrote {args.out}/displacement.json, displacement_hist.png")
    if args.correct:
        from invismap.errors import InvismapError

        off = s["global_offset"] if args.correct_with == "global" else s["offsets"].get(args.correct_with)
        if off is None:
            raise InvismapError(f"--correct-with {args.correct_with}: not measured (available: global, "
                                f"{', '.join(s['offsets'])})")
        if not (math.isfinite(off["dx"]) and math.isfinite(off["dy"])):
            raise InvismapError("no trusted pixels: cannot estimate an offset to correct")
        out = correct_offset(manifest, off["dx"], off["dy"], args.correct, split=args.split)
        print(f"wrote corrected dataset ({len(out)} pairs) to {args.correct}/manifest.csv")
    return 0
