"""Detector AP50 with COCO's finer classes folded onto the labels' (truck, bus -> car; motorcycle -> bicycle).

MSRS and RoadScene label three classes (person, bicycle, car); a COCO detector also has truck, bus and
motorcycle. Scored strictly, a box whose best class is truck is dropped by the class filter, even where the
label says "car" (on MSRS's training day pairs the teacher's best box on 42 of 140 labelled cars is a
truck or bus). Folded (:data:`invismap.data.manifest.CLASS_FOLD`, which the invisibility evaluation has
always used to decide what the color detector saw), it counts as that car.

Every detector is scored both ways in this one run, on the same images and bootstrap resamples: the teacher
(yolov5n) on thermal images and on color images (the fusion's color detector), and each soup of
``--soup`` distilled students on thermal images (``benchmarks/soup.py``). Printed: AP50 (mean over
person/bicycle/car, thermal labels; and per class), the paired gain ``folded - strict`` with its 95%
interval (1000 bootstrap resamples of the images), and over the soups mean +- std and their lead over the
teacher on the same thermal images, both ways.

Usage (from the repository root)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/class_fold.py --threads 1 --soup 3 \\
        --detectors runs/msrs/experiments/seeds/seed_{0,1,2}/thermal_detector.pt ... \\
        --data runs/msrs/register runs/msrs/import/more/roadscene --tta-sizes 416 512 800 960
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import (
    add_soup_scoring_args,
    assets_env,
    base_parser,
    print_machine,
    setup_torch,
    table,
    thermal_test_sets,
)
from soup import soup_detector


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    add_soup_scoring_args(p)
    p.add_argument("--teacher", default="yolov5n", help="the color detector (scored on both modalities)")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    assets_env()
    setup_torch(args.threads)
    from invismap.data.manifest import CLASS_FOLD, COCO_NAMES, ROAD_CLASSES
    from invismap.detector.ap_bootstrap import ap50_replicates, match_at_iou50, mean_over_classes
    from invismap.detector.postprocess import detect
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import interval
    from invismap.io import read_color

    if len(args.detectors) % args.soup:
        raise SystemExit(f"--detectors: {len(args.detectors)} files do not make soups of {args.soup}")
    groups = [args.detectors[i:i + args.soup] for i in range(0, len(args.detectors), args.soup)]
    print_machine("class folding in detector AP50 (thermal labels)")
    print(f"{len(groups)} soups of {args.soup}, size {args.size}, tta sizes {args.tta_sizes}, "
          f"NMS IoU {args.iou}, "
          f"{args.n_boot} bootstrap resamples, fold {CLASS_FOLD}")
    sets = thermal_test_sets(args.data, args.select, args.split, args.n_boot)

    def ap50(model, modality: str) -> dict[tuple[str, str], np.ndarray]:
        """``{(set, protocol): (1 + n_boot, classes) AP50 x100}``, the first row on the images as they are."""
        out = {}
        for name, pairs, thermal, truth, weights in sets:
            images = thermal if modality == "thermal" else [read_color(s.color) for s in pairs]
            sizes = [(im.shape[1], im.shape[0]) for im in thermal]
            for protocol, fold in (("strict", None), ("folded", CLASS_FOLD)):
                dets = detect(model, images, size=args.size, conf=0.001, iou=args.iou, classes=ROAD_CLASSES,
                              tta_sizes=args.tta_sizes, class_fold=fold)
                out[name, protocol] = 100 * ap50_replicates(match_at_iou50(truth, dets, sizes, ROAD_CLASSES),
                                                            weights)
        return out

    def ci(v: np.ndarray) -> str:
        lo, hi = interval(v[1:])
        return f"{v[0]:+.1f} [{lo:+.1f}, {hi:+.1f}]"

    teacher = load_detector(args.teacher)
    scored = {f"{args.teacher} on {m}": ap50(teacher, m) for m in ("color", "thermal")}
    for group in groups:
        scored["soup " + " ".join(Path(p).parent.name for p in group)] = ap50(soup_detector(group), "thermal")

    rows = []
    for detector, res in scored.items():
        for name, *_ in sets:
            strict, folded = res[name, "strict"], res[name, "folded"]
            row = {"detector": detector, "set": name, "strict": round(float(mean_over_classes(strict)[0]), 1),
                   "folded": round(float(mean_over_classes(folded)[0]), 1),
                   "folded - strict": ci(mean_over_classes(folded) - mean_over_classes(strict))}
            for c, k in enumerate(ROAD_CLASSES):
                row[f"{COCO_NAMES[k]} strict / folded"] = f"{strict[0, c]:.1f} / {folded[0, c]:.1f}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = list(rows[0])
    print(table(cols, [[r[c] for c in cols] for r in rows]))

    # over the soups: mean +- std, and their mean lead over the teacher on thermal images (paired)
    soups = [k for k in scored if k.startswith("soup ")]
    base = scored[f"{args.teacher} on thermal"]
    summary = []
    for name, *_ in sets:
        for protocol in ("strict", "folded"):
            means = np.array([mean_over_classes(scored[s][name, protocol]) for s in soups])  # (S, 1 + n_boot)
            per_class = np.array([scored[s][name, protocol][0] for s in soups])  # (S, classes)
            spread = ("" if len(soups) < 2 else f" +- {np.std(means[:, 0], ddof=1):.1f}")
            summary.append([name, protocol, f"{means[:, 0].mean():.1f}{spread}",
                            " / ".join(f"{v:.1f}" for v in per_class.mean(0)),
                            f"{mean_over_classes(base[name, protocol])[0]:.1f}",
                            ci(means.mean(0) - mean_over_classes(base[name, protocol]))])
    print(table(["set", "protocol", f"soups ({len(soups)})", "person / bicycle / car",
                 f"{args.teacher} on thermal", "soups - teacher"], summary))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
