"""What the faster predictors cost in invisibility metrics: coverage at tau = 0.35, AUROC of missed objects.

The headline evaluation (``invismap eval-invisibility --split test``) of the same trained predictor run four
ways: eager PyTorch (the reference, unoptimised), conv+BN fused PyTorch, ONNX Runtime float32, and ONNX
Runtime int8 (static QDQ, calibrated on train-split frames only, with each activation range estimator).
Differences are in points (percentage points for coverage, 0.01 for AUROC); the acceptance is within 1 point.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_accuracy.py [--predictor runs/predictor/headline/predictor.pt]
        [--data runs/msrs] [--split test] [--calibration-frames 32] [--quick]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from common import assets_env, base_parser, print_machine, setup_torch, table


def map_sources(args, tmp: Path) -> dict:
    """``name -> (model, input size)`` for every way of running the predictor."""
    from invismap.invisibility.export import (
        OnnxPredictor,
        calibration_frames,
        export_predictor,
        fuse_conv_bn,
        optimize_for_inference,
        quantize_predictor,
    )
    from invismap.invisibility.predictor import load_predictor

    model, meta = load_predictor(args.predictor)
    size = int(meta["input_size"])
    fp32 = export_predictor(args.predictor, tmp / "predictor.onnx")
    models = {"eager (reference)": model, "eager conv+BN fused": fuse_conv_bn(model),
              "eager fused + channels-last": optimize_for_inference(model),
              "ORT fp32": OnnxPredictor(fp32, args.threads)}
    frames = calibration_frames(args.data, size, count=args.calibration_frames)
    for method in args.methods:
        out = quantize_predictor(fp32, tmp / f"int8_{method}.onnx", frames, method=method)
        models[f"ORT int8 {method}"] = OnnxPredictor(out, args.threads)
    return {name: (m, size) for name, m in models.items()}


def evaluate(args, sources: dict) -> dict[str, dict]:
    """``evaluate_maps`` of every source on the same pairs and teacher detections."""
    from invismap.data.manifest import load_manifest
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.evaluate import color_map_source, evaluate_maps, teacher_detections
    from invismap.invisibility.predict import predict_image

    manifest = load_manifest(args.data).select(split=args.split, condition=["day", "night"])
    if args.quick:
        manifest = type(manifest)(manifest.samples[::6], manifest.root)
    detections = teacher_detections(manifest, load_detector("yolov5n"))
    results, maps = {}, {}
    for name, (model, size) in sources.items():
        def fn(rgb: np.ndarray, model=model, size=size, name=name) -> np.ndarray:
            heat = predict_image(model, rgb, size)
            maps.setdefault(name, []).append(heat)
            return heat

        results[name] = evaluate_maps(manifest, color_map_source(fn), detections, conditions=("day", "night"))
    ref = maps["eager (reference)"]
    for name, res in results.items():
        res["max_map_diff"] = max(float(np.abs(a - b).max()) for a, b in zip(maps[name], ref))
    return results


def metrics_table(results: dict[str, dict]) -> str:
    """Per source and condition: coverage at tau and AUROC of missed objects, and their change in points."""
    ref = results["eager (reference)"]["conditions"]
    rows = []
    for name, res in results.items():
        for cond, c in res["conditions"].items():
            s, r = c["sets"]["missed"], ref[cond]["sets"]["missed"]
            rows.append([name, cond, f"{100 * s['coverage_at_tau']:.1f}%", f"{s['auroc']:.3f}",
                         f"{100 * (s['coverage_at_tau'] - r['coverage_at_tau']):+.2f}",
                         f"{100 * (s['auroc'] - r['auroc']):+.2f}", f"{100 * s['flagged_at_tau']:.1f}%",
                         f"{res['max_map_diff']:.1e}"])
    head = ["predictor run as", "cond", "coverage@0.35 (missed)", "AUROC (missed)", "d coverage (points)",
            "d AUROC (points)", "flagged@0.35", "max |map - ref|"]
    return table(head, rows)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--predictor", default="runs/predictor/headline/predictor.pt")
    p.add_argument("--data", default="runs/msrs", help="imported pair dataset (invismap data import msrs)")
    p.add_argument("--split", default="test", help="evaluation split (calibration always uses train)")
    p.add_argument("--calibration-frames", type=int, default=32, help="train frames for the int8 ranges")
    p.add_argument("--methods", nargs="+", default=["minmax", "percentile", "entropy"],
                   help="int8 activation range estimators to compare")
    args = p.parse_args()
    assets_env()
    setup_torch(args.threads)
    print_machine(f"bench_accuracy: {args.predictor} on {args.data} split {args.split}")
    with tempfile.TemporaryDirectory() as tmp:
        results = evaluate(args, map_sources(args, Path(tmp)))
    print(f"\n{metrics_table(results)}")
    ref = results["eager (reference)"]["conditions"]
    worst = max(abs(100 * (c["sets"]["missed"][k] - ref[cond]["sets"]["missed"][k]))
                for res in results.values() for cond, c in res["conditions"].items()
                for k in ("coverage_at_tau", "auroc"))
    print(f"\nlargest change against the unoptimised model: {worst:.2f} points (acceptance: within 1 point)")


if __name__ == "__main__":
    main()
