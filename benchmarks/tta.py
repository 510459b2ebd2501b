"""Multi-scale test-time augmentation against one size: thermal AP50 with 95% intervals, and what it costs.

Each detector runs on the thermal images of every chosen split and condition once at ``--size`` alone and once
with ``--tta-sizes`` too (:func:`invismap.detector.postprocess.detect`: every size's candidates, in original
pixels, go through one NMS). Printed side by side from this one run: AP50 (mean over person/bicycle/car,
thermal labels) of both, the paired gain with its 95% interval (1000 bootstrap resamples of the images, the
same resamples for both), and milliseconds per image of both with their ratio (median of interleaved rounds
over the first ``--time-images`` images).

Usage (from the repository root)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/tta.py \\
        --detectors yolov5n runs/msrs/distill/thermal_detector.pt \\
        --data runs/msrs/register runs/msrs/import/more/roadscene [--tta-sizes 416 512 800 960]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import assets_env, base_parser, labelled_thermal_set, median, print_machine, setup_torch, table


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--detectors", nargs="+", required=True, help="detector names or files")
    p.add_argument("--data", nargs="+", required=True, help="pair manifests (manifest.csv or its folder)")
    p.add_argument("--splits", nargs="+", default=["train", "test"],
                   help="splits to score (train: to choose the sizes; test: to report)")
    p.add_argument("--conditions", nargs="+", default=["day", "night"])
    p.add_argument("--size", type=int, default=640, help="the base letterbox size")
    p.add_argument("--tta-sizes", type=int, nargs="+", default=[416, 512, 800, 960])
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--time-images", type=int, default=8, help="images timed per detector (0: no timing)")
    p.add_argument("--strict-classes", action="store_true",
                   help="COCO classes as they are (default: truck, bus -> car, motorcycle -> bicycle)")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    assets_env()
    setup_torch(args.threads)
    from invismap.data.manifest import CLASS_FOLD, ROAD_CLASSES, load_manifest
    from invismap.detector.ap_bootstrap import ap50_replicates, match_at_iou50, mean_over_classes
    from invismap.detector.postprocess import detect
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import interval

    print_machine("multi-scale test-time augmentation vs one size (thermal images, thermal labels)")
    print(f"base size {args.size}, tta sizes {args.tta_sizes}, {args.n_boot} bootstrap resamples")
    protocols = {"one size": (), "tta": tuple(args.tta_sizes)}
    sets = []  # (data, split, condition, pairs, images, truth, weights): read once, scored by every detector
    for data in args.data:
        manifest = load_manifest(data)
        for split in args.splits:
            for cond in args.conditions:
                found = labelled_thermal_set(manifest, split, cond, args.n_boot)
                if found is not None:
                    sets.append((data, split, cond, *found))
    rows = []
    for det_name in args.detectors:
        model = load_detector(det_name)
        for data, split, cond, pairs, images, truth, weights in sets:
            sizes = [(im.shape[1], im.shape[0]) for im in images]
            ap = {}
            for name, tta in protocols.items():
                dets = detect(model, images, size=args.size, conf=0.001, iou=0.45,
                              classes=ROAD_CLASSES, tta_sizes=tta,
                              class_fold=None if args.strict_classes else CLASS_FOLD)
                matches = match_at_iou50(truth, dets, sizes, ROAD_CLASSES)
                ap[name] = 100 * mean_over_classes(ap50_replicates(matches, weights))
            gain = ap["tta"] - ap["one size"]
            lo, hi = interval(gain[1:])
            ms = {}
            timed = images[:args.time_images]
            for _ in range((args.rounds or 3) if timed else 0):  # interleaved: load hits both alike
                for name, tta in protocols.items():
                    t0 = time.perf_counter()
                    detect(model, timed, size=args.size, conf=0.001, classes=ROAD_CLASSES,
                           tta_sizes=tta, batch_size=1)
                    ms.setdefault(name, []).append(1000 * (time.perf_counter() - t0) / len(timed))
            row = {"detector": Path(det_name).parent.name if Path(det_name).is_file() else det_name,
                   "data": Path(data).name, "split": split, "condition": cond, "images": len(pairs),
                   "one size": round(float(ap["one size"][0]), 1),
                   "tta": round(float(ap["tta"][0]), 1), "gain": round(float(gain[0]), 1),
                   "gain lo": round(lo, 1), "gain hi": round(hi, 1)}
            if ms:
                row.update({"ms one size": round(median(ms["one size"]), 1),
                            "ms tta": round(median(ms["tta"]), 1),
                            "cost x": round(median(ms["tta"]) / median(ms["one size"]), 2)})
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = list(rows[0]) if rows else []
    print(table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
