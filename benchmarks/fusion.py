"""Map-guided fusion against color only, thermal only and constant-weight fusion: AP50 with 95% intervals.

On the registered MSRS pairs: weights chosen on the train split (per condition and label set), AP50 reported
on the test split, per condition and class, against the thermal labels and the union of color and thermal
labels (:mod:`invismap.detector.fusion_eval`). Map-guided variants per map: ``linear`` (color weight
c * (1 - a * m)), ``power`` (c * (1 - m) ** a), ``boost`` (linear, and each thermal box weighs 1 + b * m);
``map:NAME`` is the variant with the best train AP50. Detections and the maps' means inside the color boxes
are computed once and cached in ``OUT/detections.npz`` (recomputed when a setting changes); the table is
printed and written to ``OUT/fusion.json``.

Usage (from the repository root)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/fusion.py --data runs/msrs/register \\
        --thermal-detector runs/msrs/distill/thermal_detector.pt \\
        --predictor runs/msrs/predictor/predictor.pt \\
        --maps predictor,pair --out runs/msrs/fusion [--n-boot 1000] [--method wbf|nms]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import assets_env, print_machine, setup_torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="runs/msrs/register",
                   help="registered pairs: manifest.csv or its folder")
    p.add_argument("--color", default="yolov5n", help="color detector (name or file)")
    p.add_argument("--thermal-detector", default="runs/msrs/distill/thermal_detector.pt",
                   help="the label-free thermal detector (also gives the pair score)")
    p.add_argument("--predictor", default="runs/msrs/predictor/predictor.pt",
                   help="the color-only map predictor")
    p.add_argument("--maps", default="predictor,pair",
                   help="maps to fuse with, comma-separated: predictor, pair")
    p.add_argument("--out", default="runs/msrs/fusion", help="output folder (detections.npz, fusion.json)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test images")
    p.add_argument("--method", choices=("wbf", "nms"), default="wbf", help="how boxes are merged")
    p.add_argument("--iou-thr", type=float, default=0.55, help="fusion IoU threshold")
    p.add_argument("--size", type=int, default=640, help="detection letterbox size")
    p.add_argument("--tta-sizes", type=int, nargs="*", default=[],
                   help="both detectors also run at these sizes, merged before NMS (multi-scale)")
    p.add_argument("--nms-iou", type=float, default=0.45, help="both detectors' NMS IoU threshold")
    p.add_argument("--strict-classes", action="store_true",
                   help="COCO classes as they are (default: truck, bus -> car, motorcycle -> bicycle)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--weights-per", choices=("condition", "all"), default="condition",
                   help="choose the weights per condition, or once for day and night together")
    return p.parse_args()


def map_specs(args: argparse.Namespace) -> dict[str, str]:
    known = {"predictor": f"predictor:{args.predictor}", "pair": f"pair:{args.thermal_detector}"}
    names = [m.strip() for m in args.maps.split(",") if m.strip()]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"--maps: unknown map(s) {unknown}; known: {', '.join(known)}")
    return {m: known[m] for m in names}


def main() -> None:
    args = parse_args()
    assets_env()
    setup_torch(args.threads)
    print_machine("Map-guided fusion (MSRS, registered pairs)")
    from invismap.data.manifest import load_manifest
    from invismap.detector.fusion import FusionParams
    from invismap.detector.fusion_eval import (
        cached_pair_records,
        evaluate_fusion,
        format_fusion_table,
        load_labels,
    )
    from invismap.detector.protocol import ScoringProtocol
    from invismap.io import write_json

    manifest = load_manifest(args.data).select(split=("train", "test"))
    specs = map_specs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    protocol = ScoringProtocol(args.size, args.tta_sizes, args.nms_iou, fold_classes=not args.strict_classes)
    records = cached_pair_records(manifest, args.color, args.thermal_detector, specs, out / "detections.npz",
                                  protocol)
    print(f"detections and maps of {len(records)} pairs: {time.perf_counter() - t0:.0f} s "
          f"(cached in {out / 'detections.npz'})")
    t0 = time.perf_counter()
    result = evaluate_fusion(records, load_labels(manifest), maps=list(specs),
                             base=FusionParams(method=args.method, iou_thr=args.iou_thr), n_boot=args.n_boot,
                             seed=args.seed, weights_per=args.weights_per)
    result["settings"].update({"data": str(Path(args.data).resolve()), "color": args.color,
                               "thermal_detector": str(args.thermal_detector), "maps_from": specs,
                               **protocol.record(), "seconds": round(time.perf_counter() - t0, 1)})
    print(f"\nAP50 in points, 95% bootstrap intervals over test images ({args.n_boot} resamples, within "
          f"condition); weights chosen on the train split per label set and "
          f"{'condition' if args.weights_per == 'condition' else 'for every condition together'} "
          f"({result['settings']['seconds']:.0f} s)")
    print(format_fusion_table(result))
    write_json(out / "fusion.json", result)
    print(f"\nwrote {out / 'fusion.json'}")


if __name__ == "__main__":
    main()
