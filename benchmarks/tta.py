"""Multi-scale test-time augmentation against one size: thermal AP50 with 95% intervals, and what it costs.

Each detector runs on the thermal images of every chosen split and condition once at ``--size`` alone (or with
``--base-sizes`` too; NMS IoU ``--base-iou``) and once with ``--tta-sizes`` too (NMS IoU ``--iou``)
(:func:`invismap.detector.postprocess.detect`: every size's candidates, in original pixels, go through one
NMS). Printed side by side from this one run: AP50 (mean
over person/bicycle/car, thermal labels; and per class) of both, the paired gain with its 95% interval (1000
bootstrap resamples of the images, the same resamples for both), and milliseconds per image of both with their
ratio (median of interleaved rounds over the first ``--time-images`` images).

With ``--soup N`` the detector files are taken N at a time and each group's weights averaged (a model soup,
``benchmarks/soup.py``); with several soups a last table gives each set's AP50 of both protocols as mean
+- std over the soups and their mean gain with its 95% interval. ``--reference`` (e.g. the teacher) is scored
in the same run, and a table gives every detector's lead over it under each protocol, with its 95% interval
(and the soups' mean lead). Multi-size protocols with the same sizes share their forward passes.

Usage (from the repository root)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/tta.py \\
        --detectors yolov5n runs/msrs/distill/thermal_detector.pt \\
        --data runs/msrs/register runs/msrs/import/more/roadscene [--tta-sizes 416 512 800 960]

    # one more size on top of msrs.yaml's, three soups of three students
    ... benchmarks/tta.py --soup 3 --detectors .../seed_{0..8}/thermal_detector.pt --data ... \\
        --base-sizes 416 512 800 960 --tta-sizes 416 512 800 960 1280
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from common import assets_env, base_parser, labelled_thermal_set, median, print_machine, setup_torch, table
from soup import soup_detector


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--detectors", nargs="+", required=True, help="detector names or files")
    p.add_argument("--soup", type=int, default=1, help="average the weights of this many files at a time")
    p.add_argument("--reference", help="a detector (name or file) to measure every detector's lead over")
    p.add_argument("--data", nargs="+", required=True, help="pair manifests (manifest.csv or its folder)")
    p.add_argument("--splits", nargs="+", default=["train", "test"],
                   help="splits to score (train: to choose the sizes; test: to report)")
    p.add_argument("--conditions", nargs="+", default=["day", "night"])
    p.add_argument("--size", type=int, default=640, help="the base letterbox size")
    p.add_argument("--base-sizes", type=int, nargs="*", default=[],
                   help="sizes the base protocol adds to --size (default none: one size)")
    p.add_argument("--tta-sizes", type=int, nargs="*", default=[416, 512, 800, 960],
                   help="sizes the tta protocol adds to --size (none: one size, e.g. to compare NMS IoUs)")
    p.add_argument("--base-iou", type=float, default=0.45, help="NMS IoU threshold of the base protocol")
    p.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold of the tta protocol")
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
    from invismap.detector.postprocess import detect, merge_candidates, multiscale_candidates
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import interval

    if args.soup < 1 or len(args.detectors) % args.soup:
        raise SystemExit(f"--detectors: {len(args.detectors)} do not make groups of --soup {args.soup}")
    print_machine("multi-scale test-time augmentation vs one size (thermal images, thermal labels)")
    print(f"base size {args.size} + {args.base_sizes} (NMS IoU {args.base_iou}), tta sizes {args.tta_sizes} "
          f"(NMS IoU {args.iou}), {args.n_boot} bootstrap resamples")
    protocols = {"one size": (tuple(args.base_sizes), args.base_iou),
                 "tta": (tuple(args.tta_sizes), args.iou)}
    sets = []  # (data, split, condition, pairs, images, truth, weights): read once, scored by every detector
    for data in args.data:
        manifest = load_manifest(data)
        for split in args.splits:
            for cond in args.conditions:
                found = labelled_thermal_set(manifest, split, cond, args.n_boot)
                if found is not None:
                    sets.append((data, split, cond, *found))
    rows, reps = [], {}  # reps[(detector, set)][protocol]: (1 + n_boot,) AP50
    groups = [args.detectors[i:i + args.soup] for i in range(0, len(args.detectors), args.soup)]
    if args.reference:
        groups.insert(0, [args.reference])
    reference = None  # its label, once loaded
    fold = None if args.strict_classes else CLASS_FOLD
    for group in groups:
        det_name = group[0]
        if len(group) == 1:
            model = load_detector(det_name)
            label = Path(det_name).parent.name if Path(det_name).is_file() else det_name
        else:
            model, label = soup_detector(group), "soup " + " ".join(Path(p).parent.name for p in group)
        if group == [args.reference]:
            reference = label
        if any(d == label for d, _ in reps):
            raise SystemExit(f"two detectors are both labelled {label!r} (the folder of each file); give "
                             "files in folders of different names")
        for data, split, cond, pairs, images, truth, weights in sets:
            sizes = [(im.shape[1], im.shape[0]) for im in images]
            ap, per_class, candidates = {}, {}, {}
            for name, (tta, iou) in protocols.items():
                if not tta:  # one size: NMS in canvas pixels, as the pipeline scores it
                    dets = detect(model, images, size=args.size, conf=0.001, iou=iou, classes=ROAD_CLASSES,
                                  class_fold=fold)
                else:
                    if tta not in candidates:  # protocols with the same sizes share their forward passes
                        candidates[tta] = multiscale_candidates(model, images, (args.size, *tta), conf=0.001)
                    dets = merge_candidates(candidates[tta], images, conf=0.001, iou=iou,
                                            classes=ROAD_CLASSES, class_fold=fold)
                matches = match_at_iou50(truth, dets, sizes, ROAD_CLASSES)
                per_class[name] = 100 * ap50_replicates(matches, weights)
                ap[name] = mean_over_classes(per_class[name])
            del candidates  # free them before timing
            set_name = f"{Path(data).name} {split} {cond}"
            reps[label, set_name] = ap
            gain = ap["tta"] - ap["one size"]
            lo, hi = interval(gain[1:])
            ms = {}
            timed = images[:args.time_images]
            for _ in range((args.rounds or 3) if timed else 0):  # interleaved: load hits both alike
                for name, (tta, iou) in protocols.items():
                    t0 = time.perf_counter()
                    detect(model, timed, size=args.size, conf=0.001, iou=iou, classes=ROAD_CLASSES,
                           tta_sizes=tta, batch_size=1)
                    ms.setdefault(name, []).append(1000 * (time.perf_counter() - t0) / len(timed))
            row = {"detector": label, "data": Path(data).name, "split": split, "condition": cond,
                   "images": len(pairs), "one size": round(float(ap["one size"][0]), 1),
                   "tta": round(float(ap["tta"][0]), 1), "gain": round(float(gain[0]), 1),
                   "gain lo": round(lo, 1), "gain hi": round(hi, 1),
                   "person / bicycle / car": " -> ".join(" / ".join(f"{v:.1f}" for v in per_class[n][0])
                                                        for n in protocols)}
            if ms:
                row.update({"ms one size": round(median(ms["one size"]), 1),
                            "ms tta": round(median(ms["tta"]), 1),
                            "cost x": round(median(ms["tta"]) / median(ms["one size"]), 2)})
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = list(rows[0]) if rows else []
    print(table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    soups = sorted({d for d, _ in reps if d.startswith("soup ")})
    if len(soups) > 1:  # over the soups: each protocol's mean +- std, and the mean paired gain
        summary = []
        for set_name in dict.fromkeys(s for _, s in reps):
            one, tta = (np.array([reps[d, set_name][n] for d in soups]) for n in protocols)  # (S, 1 + n_boot)
            lo, hi = interval((tta - one).mean(0)[1:])
            summary.append([set_name, f"{one[:, 0].mean():.1f} +- {one[:, 0].std(ddof=1):.1f}",
                            f"{tta[:, 0].mean():.1f} +- {tta[:, 0].std(ddof=1):.1f}",
                            f"{(tta - one)[:, 0].mean():+.1f} [{lo:+.1f}, {hi:+.1f}]",
                            " ".join(f"{v:+.1f}" for v in (tta - one)[:, 0])])
        print(table(["set", f"one size ({len(soups)} soups)", "tta", "gain", "per soup"], summary))
    if args.reference:  # every detector's lead over the reference, same images and resamples
        leads = []
        for set_name in dict.fromkeys(s for _, s in reps):
            others = [d for d, s in reps if s == set_name and d != reference]
            for det in others + (["mean of soups"] if len(soups) > 1 else []):
                row = [det, set_name]
                for name in protocols:
                    ref = reps[reference, set_name][name]
                    dets = soups if det == "mean of soups" else [det]
                    lead = np.mean([reps[d, set_name][name] - ref for d in dets], 0)  # (1 + n_boot,)
                    lo, hi = interval(lead[1:])
                    row.append(f"{lead[0]:+.1f} [{lo:+.1f}, {hi:+.1f}]")
                leads.append(row)
        print(table(["detector", "set", *(f"lead over {reference}, {n}" for n in protocols)], leads))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
