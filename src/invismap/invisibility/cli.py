"""``invismap eval-invisibility`` (and the target cache for the predictor): maps scored as the paper does."""

from __future__ import annotations

import argparse
from pathlib import Path

from invismap.data.letterbox import check_size
from invismap.data.manifest import SPLITS
from invismap.engine.rundir import add_training_arguments, config_and_run_dir, report_training
from invismap.errors import InvismapError, file_error

MAP_HELP = ("map sources: predictor:RUN/predictor.pt (or .onnx), pair:RUN/student.pt, "
            "prior:TARGETS (the fixed prior), darkness, contrast, random, oracle (uses labels); "
            "several allowed")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-invisibility", help="coverage of missed objects, separations, 95%% intervals",
                       description="Evaluate invisibility maps on a pair dataset, per condition: coverage of "
                                   "missed objects' pixels at 35.9% and 25% flagged, pixel AUROC, "
                                   "how well the map separates missed from detected and invisible from "
                                   "visible objects (pixel and object level), frame-level AUROC, "
                                   "day/night overlap; 95% bootstrap intervals "
                                   "over images and paired margins over the reference maps.")
    p.add_argument("--data", required=True, help="manifest.csv or its folder")
    p.add_argument("--maps", nargs="+", required=True, help=MAP_HELP)
    p.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate (default test)")
    p.add_argument("--condition", nargs="+", default=["day", "night"], help="conditions (default day night)")
    p.add_argument("--teacher", default="yolov5n", help="color detector that defines 'missed' objects")
    p.add_argument("--conf", type=float, default=0.25,
                   help="teacher confidence for 'detected' (default 0.25)")
    p.add_argument("--tau", type=float, default=0.35, help="score threshold (the paper's 0.35)")
    p.add_argument("--json", required=True, help="output JSON")
    p.add_argument("--plots", help="folder for coverage curves, interval plots and score histograms (PNG)")
    p.add_argument("--references", nargs="*", default=["prior", "darkness"],
                   help="maps every other map is compared with, by a paired bootstrap "
                        "(default prior darkness)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples over images (default 1000)")
    p.set_defaults(func=_eval)

    t = sub.add_parser("score-pairs", help="pair scores F of every pair (the predictor's training targets)",
                       description="Compute the invisibility score of each color/thermal pair with a "
                                   "distilled student and cache it as OUT/NAME.npy "
                                   "(float16, letterboxed canvas).")
    t.add_argument("--student", required=True, help="RUN/student.pt from 'invismap distill'")
    t.add_argument("--data", required=True, help="manifest.csv or its folder")
    t.add_argument("--out", required=True, help="target cache folder")
    t.add_argument("--split", default="train", choices=SPLITS,
                   help="which split to score (default train; never test)")
    t.add_argument("--size", type=int, default=640, help="letterbox size (same as the predictor's)")
    t.add_argument("--kind", choices=["pair", "pair+detectors"], default="pair",
                   help="pair: the pair score F; pair+detectors: F with the thermal detector's objects "
                        "set to 1 where the color detector misses them and 0 where it finds them "
                        "(targets.py)")
    t.add_argument("--light", type=float, default=0.0,
                   help="pair+detectors: weight of each frame's base rate of missed objects (default 0)")
    t.set_defaults(func=_score_pairs)

    tp = sub.add_parser("train-predictor", help="train the color-only U-Net on cached pair scores",
                        description="Writes RUN/predictor.pt (deployable) and RUN/ckpt (training state).")
    add_training_arguments(tp, "predictor", "predictor.yaml")
    tp.set_defaults(func=_train_predictor)

    ex = sub.add_parser("export", help="export the predictor or a detector to ONNX (dynamic batch and size)",
                        description="Write an ONNX model of RUN/predictor.pt "
                                    "(run it with 'invismap predict --model X.onnx'), "
                                    "or of a detector (RUN/thermal_detector.pt, yolov5n: "
                                    "raw head outputs and decoded predictions), "
                                    "with input size and normalisation in the metadata.")
    ex.add_argument("--model", required=True,
                    help="RUN/predictor.pt, RUN/thermal_detector.pt, or a detector name or file (yolov5n)")
    ex.add_argument("--out", required=True, help="output .onnx file")
    ex.add_argument("--int8", action="store_true",
                    help="predictor only: int8 static quantisation, calibrated on --calibration-data")
    ex.add_argument("--calibration-data", metavar="DATA",
                    help="pair dataset (manifest.csv or folder) whose train split calibrates --int8")
    ex.add_argument("--calibration-frames", type=int, default=32, help="frames for --int8 (default 32)")
    ex.add_argument("--size", type=int, default=None,
                    help="detector only: letterbox size recorded (default 640)")
    ex.set_defaults(func=_export)


def _checkpoint_kind(model: str) -> str | None:
    """The ``kind`` of an invismap checkpoint file, None for names and foreign files (detectors)."""
    from invismap.engine.checkpoint import load_checkpoint

    if not Path(model).is_file():
        return None
    try:
        return load_checkpoint(model).get("kind")
    except InvismapError:  # e.g. an Ultralytics .pt: load_detector reads those
        return None


def _export(args) -> None:
    import tempfile

    from invismap.detector.export import export_detector
    from invismap.invisibility.export import calibration_frames, export_predictor, quantize_predictor
    from invismap.onnx_io import onnx_metadata

    if not str(args.out).endswith(".onnx"):
        raise InvismapError(f"{args.out}: the output file must end in .onnx")
    if args.calibration_data and not args.int8:
        raise InvismapError("--calibration-data calibrates an int8 export: add --int8, or leave it out")
    check_size(args.size)
    if _checkpoint_kind(args.model) != "predictor":
        if args.int8:
            raise InvismapError("--int8 is for the predictor only (detectors export in float32)")
        size = 640 if args.size is None else args.size
        print(f"wrote {export_detector(args.model, args.out, size=size)}")
        return
    if args.size is not None:
        raise InvismapError(f"--size {args.size} is for detectors: a predictor's export records the size it "
                            "was trained at (predict --size runs it at another)")
    if not args.int8:
        print(f"wrote {export_predictor(args.model, args.out)}")
        return
    if not args.calibration_data:
        raise InvismapError("--int8 needs --calibration-data DATA (a pair dataset; its train split is used)")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_predictor(args.model, Path(tmp) / "fp32.onnx")
        size = int(onnx_metadata(fp32)["input_size"])
        frames = calibration_frames(args.calibration_data, size, args.calibration_frames)
        print(f"wrote {quantize_predictor(fp32, args.out, frames)}")


def _score_pairs(args) -> None:
    from invismap.invisibility.targets import TargetConfig, score_pairs

    if not 0 <= args.light <= 1:
        raise InvismapError(f"--light {args.light}: not allowed (a number in [0, 1], e.g. 0.5)")
    check_size(args.size)
    cfg = TargetConfig(kind=args.kind, light=args.light)
    out = score_pairs(args.student, args.data, args.out, args.split, args.size, cfg)
    print(f"targets ({cfg.kind}) cached in {out}")


def _train_predictor(args) -> None:
    from invismap.invisibility.predictor import PredictorConfig, train_predictor

    cfg, run = config_and_run_dir(PredictorConfig, args, "predictor")
    summary = train_predictor(cfg, run_dir=run, resume=args.resume, stop_at=args.stop_at)
    report_training(run, summary.steps, summary.max_steps, f"predictor: {run / 'predictor.pt'}")


def _eval(args) -> None:
    from invismap.data.manifest import load_manifest
    from invismap.invisibility.evaluate import format_table
    from invismap.invisibility.plots import write_plots
    from invismap.invisibility.sources import SOURCES, evaluate_specs
    from invismap.io import check_output_file, write_json

    check_output_file(args.json)
    if args.bootstrap < 1:
        raise InvismapError(f"--bootstrap must be at least 1, got {args.bootstrap}")
    for flag, value in (("--tau", args.tau), ("--conf", args.conf)):
        if not 0 < value < 1:
            raise InvismapError(f"{flag} {value:g}: must be a number between 0 and 1")
    unknown = [r for r in args.references if r not in SOURCES]  # a known one not in --maps is skipped
    if unknown:
        raise InvismapError(f"--references {unknown[0]}: not a map source "
                            f"(known: {', '.join(SOURCES.names())})")
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise file_error(args.plots, "is a file, not a folder", "give a folder to --plots")
    manifest = load_manifest(args.data).select(condition=args.condition, split=args.split)
    if len(manifest) == 0:
        raise InvismapError(f"{args.data}: no pairs in split '{args.split}' with condition {args.condition}")
    results = evaluate_specs(manifest, args.maps, args.teacher, conditions=args.condition, tau=args.tau,
                             conf=args.conf, references=args.references, n_boot=args.bootstrap)
    write_json(args.json, results)
    print(format_table(results))
    if args.plots:
        write_plots(results, Path(args.plots))
