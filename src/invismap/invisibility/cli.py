"""``invismap eval-invisibility`` (and the target cache for the predictor): maps scored as the paper does."""

from __future__ import annotations

import argparse
from pathlib import Path

from invismap.engine.rundir import add_training_arguments, config_and_run_dir
from invismap.errors import InvismapError

MAP_HELP = ("map sources: predictor:RUN/predictor.pt (or .onnx), pair:RUN/student.pt, darkness, contrast "
            "(several allowed)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-invisibility", help="coverage of missed objects vs share flagged, AUROC, per condition",
                       description="Evaluate invisibility maps on a pair dataset: coverage of missed / invisible "
                                   "objects' pixels against the share of the image flagged, pixel AUROC, "
                                   "score distributions per condition.")
    p.add_argument("--data", required=True, help="manifest.csv or its folder")
    p.add_argument("--maps", nargs="+", required=True, help=MAP_HELP)
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--condition", nargs="+", default=["day", "night"], help="conditions (default day night)")
    p.add_argument("--teacher", default="yolov5n", help="color detector that defines 'missed' objects")
    p.add_argument("--conf", type=float, default=0.25, help="teacher confidence for 'detected' (default 0.25)")
    p.add_argument("--tau", type=float, default=0.35, help="score threshold (the paper's 0.35)")
    p.add_argument("--json", required=True, help="output JSON")
    p.add_argument("--plots", help="folder for coverage curves and score histograms (PNG)")
    p.set_defaults(func=_eval)

    t = sub.add_parser("score-pairs", help="pair scores F of every pair (the predictor's training targets)",
                       description="Compute the invisibility score of each color/thermal pair with a distilled "
                                   "student and cache it as OUT/NAME.npy (float16, letterboxed canvas).")
    t.add_argument("--student", required=True, help="RUN/student.pt from 'invismap distill'")
    t.add_argument("--data", required=True, help="manifest.csv or its folder")
    t.add_argument("--out", required=True, help="target cache folder")
    t.add_argument("--split", default="train", help="which split to score (default train; never test)")
    t.add_argument("--size", type=int, default=640, help="letterbox size (same as the predictor's)")
    t.set_defaults(func=_score_pairs)

    tp = sub.add_parser("train-predictor", help="train the color-only U-Net on cached pair scores",
                        description="Writes RUN/predictor.pt (deployable) and RUN/ckpt (training state).")
    add_training_arguments(tp, "predictor", "predictor.yaml")
    tp.set_defaults(func=_train_predictor)

    ex = sub.add_parser("export", help="export the predictor or a detector to ONNX (dynamic batch and size)",
                        description="Write an ONNX model of RUN/predictor.pt (run it with 'invismap predict --model "
                                    "X.onnx'), or of a detector (RUN/thermal_detector.pt, yolov5n: raw head outputs "
                                    "and decoded predictions), with input size and normalisation in the metadata.")
    ex.add_argument("--model", required=True,
                    help="RUN/predictor.pt, RUN/thermal_detector.pt, or a detector name or file (yolov5n)")
    ex.add_argument("--out", required=True, help="output .onnx file")
    ex.add_argument("--int8", action="store_true",
                    help="predictor only: int8 static quantisation, calibrated on --calibration-data")
    ex.add_argument("--calibration-data", metavar="DATA",
                    help="pair dataset (manifest.csv or folder) whose train split calibrates --int8")
    ex.add_argument("--calibration-frames", type=int, default=32, help="frames for --int8 (default 32)")
    ex.add_argument("--size", type=int, default=640, help="detector only: letterbox size recorded (default 640)")
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

    from invismap.detector.export import export_detector, onnx_metadata
    from invismap.invisibility.export import calibration_frames, export_predictor, quantize_predictor

    if not str(args.out).endswith(".onnx"):
        raise InvismapError(f"{args.out}: the output file must end in .onnx")
    if _checkpoint_kind(args.model) != "predictor":
        if args.int8:
            raise InvismapError("--int8 is for the predictor only (detectors export in float32)")
        print(f"wrote {export_detector(args.model, args.out, size=args.size)}")
        return
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


def pair_target_fn(scorer):
    """``PairDataset`` item -> ``(1, H, W)`` pair score on the canvas (for :func:`cache_targets`)."""
    import torch

    device = next(scorer.teacher.parameters()).device

    def target(item: dict) -> torch.Tensor:
        f = scorer.score_canvas(item["rgb"][None].to(device), item["thermal"][None].to(device))
        return f.cpu()

    return target


def score_pairs(student: str | Path, data: str | Path, out: str | Path, split: str = "train",
                size: int = 640, progress: bool = True) -> Path:
    """Cache the pair score of every pair of ``split`` under ``out`` (the predictor's targets)."""
    from invismap.data.dataset import PairDataset
    from invismap.data.manifest import load_manifest
    from invismap.invisibility.pair import PairScorer
    from invismap.invisibility.predictor import cache_targets

    manifest = load_manifest(data).select(split=split)
    if len(manifest) == 0:
        raise InvismapError(f"{data}: no pairs in split '{split}'")
    scorer = PairScorer.from_checkpoint(student, size=size)
    return cache_targets(PairDataset(manifest, size), pair_target_fn(scorer), out, progress=progress)


def _score_pairs(args) -> None:
    out = score_pairs(args.student, args.data, args.out, args.split, args.size)
    print(f"pair scores cached in {out}")


def _train_predictor(args) -> None:
    from invismap.invisibility.predictor import PredictorConfig, train_predictor

    cfg, run = config_and_run_dir(PredictorConfig, args, "predictor")
    out = train_predictor(cfg, run_dir=run, resume=args.resume)
    print(f"predictor: {out}")


def map_source(spec: str):
    """A map source from its command-line spec (see ``MAP_HELP``); returns ``(name, source)``."""
    from invismap.invisibility.baselines import darkness_map, local_contrast_map
    from invismap.invisibility.evaluate import color_map_source

    kind, _, path = spec.partition(":")
    if kind == "darkness":
        return "darkness", color_map_source(darkness_map)
    if kind == "contrast":
        return "contrast", color_map_source(local_contrast_map)
    if kind == "pair":
        from invismap.invisibility.pair import PairScorer

        scorer = PairScorer.from_checkpoint(path)

        def pair(sample, rgb, thermal):
            return scorer.score(rgb, thermal)

        return "pair", pair
    if kind == "predictor":
        from invismap.invisibility.predict import predict_image

        if str(path).endswith(".onnx"):
            from invismap.invisibility.export import load_onnx_predictor

            model, meta = load_onnx_predictor(path)
        else:
            from invismap.invisibility.predictor import load_predictor

            model, meta = load_predictor(path)
        size = int(meta.get("input_size", 640))

        def predictor(sample, rgb, thermal):
            return predict_image(model, rgb, size)

        return "predictor", predictor
    raise InvismapError(f"unknown map source '{spec}' ({MAP_HELP})")


def _eval(args) -> None:
    from invismap.data.manifest import load_manifest
    from invismap.detector.zoo import load_inference_detector
    from invismap.invisibility.evaluate import evaluate_maps, teacher_detections
    from invismap.io import write_json

    manifest = load_manifest(args.data).select(condition=args.condition, split=args.split)
    if len(manifest) == 0:
        raise InvismapError(f"{args.data}: no pairs in split '{args.split}' with condition {args.condition}")
    sources = dict(map_source(s) for s in args.maps)
    detections = teacher_detections(manifest, load_inference_detector(args.teacher), conf=args.conf)
    results = {name: evaluate_maps(manifest, src, detections, conditions=tuple(args.condition), tau=args.tau,
                                   detection_conf=args.conf)
               for name, src in sources.items()}
    write_json(args.json, results)
    print(format_results(results))
    if args.plots:
        write_plots(results, Path(args.plots))


def format_results(results: dict) -> str:
    """A text table: per source, condition and object set, the headline figures."""
    head = (f"{'map':<10} {'cond':<6} {'set':<10} {'cov@tau':>8} {'flagged':>8} {'cov@35.9%':>9} "
            f"{'area30':>7} {'AUROC':>6}")
    lines = [head]
    fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for name, res in results.items():
        for cond, c in res["conditions"].items():
            for set_name in ("missed", "invisible", "detected"):
                s = c["sets"].get(set_name)
                if not s:
                    continue
                lines.append(f"{name:<10} {cond:<6} {set_name:<10} {fmt(s['coverage_at_tau']):>8} "
                             f"{fmt(s['flagged_at_tau']):>8} {fmt(s['coverage_at_matched_flagged']):>9} "
                             f"{fmt(s['normalised_area']):>7} {fmt(s['auroc']):>6}")
            sc = c["scores"]
            lines.append(f"{name:<10} {cond:<6} scores: mean {fmt(sc['mean'])} std {fmt(sc['std'])}")
    return "\n".join(lines)


def write_plots(results: dict, out: Path) -> list[Path]:
    from invismap.invisibility.plots import curves_from_results, plot_coverage_curves, plot_score_histograms

    written = []
    conditions = next(iter(results.values()))["conditions"]
    for cond in conditions:
        for set_name in ("missed", "invisible"):
            path = out / f"coverage_{cond}_{set_name}.png"
            plot_coverage_curves(curves_from_results(results, cond, set_name), path,
                                 title=f"{cond}: coverage of {set_name} objects' pixels")
            written.append(path)
    for name, res in results.items():
        dists = {cond: c["scores"] for cond, c in res["conditions"].items()}
        path = out / f"scores_{name}.png"
        plot_score_histograms(dists, path, title=f"{name}: score distribution per condition")
        written.append(path)
    return written
