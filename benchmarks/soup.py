"""Model soups of distilled students against the students they average: thermal AP50 with 95% intervals.

The thermal detectors given are taken ``--soup`` at a time, in order (``seed_0 seed_1 seed_2`` make one soup);
each group's weights are averaged (:func:`invismap.distill.run.average_weights`, as ``distill.soup`` does).
Printed side by side from this one run, for every split and condition: AP50 (mean over person/bicycle/car,
thermal labels) of each student, of their mean, of the soup, and the paired gain ``soup - mean of its
students`` with its 95% interval (1000 bootstrap resamples of the images, the same for every detector).
The ``train`` split's night pairs ("select night", never distilled on) are the ones to decide by; test is
the report. With several soups, a last table gives each set's AP50 (mean over classes, and per class) as mean
+- standard deviation over the single students and over the soups.

``--baseline`` compares two recipes: the students of another recipe (e.g. without
``distill.thermal_teacher``), as many, grouped the same way. Each baseline soup is scored in the same run, and
each row gains the paired gain ``soup - baseline soup``; the last table adds the baseline soups and the mean
gain over the soups with its 95% interval. ``--no-students`` scores the soups only.

Usage (from the repository root)::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/soup.py --soup 3 \\
        --detectors runs/msrs/distill/soup/seed_{0,1,2}/thermal_detector.pt \\
        --data runs/msrs/register runs/msrs/import/more/roadscene [--tta-sizes 416 512 800 960]
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


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    add_soup_scoring_args(p)
    p.add_argument("--baseline", nargs="*", default=[],
                   help="another recipe's students, as many as --detectors, grouped the same way")
    p.add_argument("--no-students", action="store_true", help="score the soups only")
    p.add_argument("--strict-classes", action="store_true",
                   help="COCO classes as they are (default: truck, bus -> car, motorcycle -> bicycle)")
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def soup_detector(paths: list[str]):
    """The thermal detector whose student is the average of the students in ``paths``."""
    from invismap.distill.run import average_weights
    from invismap.distill.student import ThermalDetector, load_student
    from invismap.engine.checkpoint import load_checkpoint

    ckpts = [load_checkpoint(p, ("thermal_detector", "student")) for p in paths]
    student = load_student(ckpts[0], Path(paths[0]))
    student.load_state_dict(average_weights([c["student"] for c in ckpts]))
    return ThermalDetector(student).eval()


def main() -> None:
    args = parse_args()
    assets_env()
    setup_torch(args.threads)
    from invismap.data.manifest import CLASS_FOLD, COCO_NAMES, ROAD_CLASSES
    from invismap.detector.ap_bootstrap import ap50_replicates, match_at_iou50, mean_over_classes
    from invismap.detector.postprocess import detect
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.bootstrap import interval

    if args.soup < 2:
        raise SystemExit(f"--soup {args.soup}: a soup averages at least 2 students")
    if len(args.detectors) % args.soup:
        raise SystemExit(f"--detectors: {len(args.detectors)} files do not make soups of {args.soup}")
    if args.baseline and len(args.baseline) != len(args.detectors):
        raise SystemExit(f"--baseline: {len(args.baseline)} files for {len(args.detectors)} --detectors")
    groups = [args.detectors[i:i + args.soup] for i in range(0, len(args.detectors), args.soup)]
    baselines = [args.baseline[i:i + args.soup] for i in range(0, len(args.baseline), args.soup)]
    print_machine("model soups vs their students (thermal images, thermal labels)")
    fold = None if args.strict_classes else CLASS_FOLD
    print(f"{len(groups)} soups of {args.soup}, size {args.size}, tta sizes {args.tta_sizes}, "
          f"NMS IoU {args.iou}, "
          f"{args.n_boot} bootstrap resamples, class fold {fold}")
    # every (data, split, condition) with labelled thermal pairs: images, truth and shared resamples
    sets = thermal_test_sets(args.data, args.select, args.split, args.n_boot)

    per_class: dict[tuple[str, str], list[np.ndarray]] = {}  # (kind, set) -> (K,) AP50 x100 per detector

    def ap50(model, kind: str) -> dict[str, np.ndarray]:
        """``{set name: (1 + n_boot,) AP50 x100}``, the first entry on the images as they are."""
        out = {}
        for name, _, images, truth, weights in sets:
            dets = detect(model, images, size=args.size, conf=0.001, iou=args.iou, classes=ROAD_CLASSES,
                          tta_sizes=args.tta_sizes, class_fold=fold)
            matches = match_at_iou50(truth, dets, [(im.shape[1], im.shape[0]) for im in images], ROAD_CLASSES)
            classes = 100 * ap50_replicates(matches, weights)
            out[name] = mean_over_classes(classes)
            per_class.setdefault((kind, name), []).append(classes[0])
        return out

    def gain_cells(prefix: str, gain: np.ndarray) -> dict:
        lo, hi = interval(gain[1:])
        return {prefix: round(float(gain[0]), 1), f"{prefix} lo": round(lo, 1), f"{prefix} hi": round(hi, 1)}

    rows, vs_baseline = [], {}  # set name -> [(1 + n_boot,) soup - baseline soup]
    for k, group in enumerate(groups):
        students = [] if args.no_students else [ap50(load_detector(p), "single students") for p in group]
        soup = ap50(soup_detector(group), "soups")
        base = ap50(soup_detector(baselines[k]), "baseline soups") if baselines else None
        for name, *_ in sets:
            row = {"soup of": " ".join(Path(p).parent.name for p in group), "set": name}
            if students:
                mean = np.mean([s[name] for s in students], axis=0)
                row.update({"students": " / ".join(f"{s[name][0]:.1f}" for s in students),
                            "students mean": round(float(mean[0]), 1)})
            row["soup"] = round(float(soup[name][0]), 1)
            if students:
                row.update(gain_cells("gain", soup[name] - mean))
            if base is not None:
                row["baseline soup"] = round(float(base[name][0]), 1)
                row.update(gain_cells("vs baseline", soup[name] - base[name]))
                vs_baseline.setdefault(name, []).append(soup[name] - base[name])
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = list(rows[0]) if rows else []
    print(table(cols, [[r.get(c, "") for c in cols] for r in rows]))
    if len(groups) > 1:  # the recipe's spread: mean +- sample std over single students and over soups
        kinds = (["single students"] if not args.no_students else []) + ["soups"]
        kinds += ["baseline soups"] if baselines else []

        def spread(v: np.ndarray) -> str:
            return f"{np.nanmean(v):.1f} +- {np.nanstd(v, ddof=1):.1f} ({len(v)})" if np.isfinite(v).any() \
                else "no truth"

        summary = []
        for name, *_ in sets:
            cells = [spread(np.array([r[col] for r in rows if r["set"] == name]))
                     for col in (["soup", "baseline soup"] if baselines else ["soup"])]
            if not args.no_students:
                cells.insert(0, spread(np.array([float(x) for r in rows if r["set"] == name
                                                 for x in r["students"].split(" / ")])))
            if baselines:  # the mean over soups of each paired gain, replicate by replicate
                g = gain_cells("g", np.mean(vs_baseline[name], axis=0))
                cells.append(f"{g['g']:+.1f} [{g['g lo']:+.1f}, {g['g hi']:+.1f}]")
            summary.append([name, "mean over classes"] + cells)
            for c, cls in enumerate(COCO_NAMES[c] for c in ROAD_CLASSES):
                summary.append([name, cls] + [spread(np.array([v[c] for v in per_class[(kind, name)]]))
                                              for kind in kinds] + ([""] if baselines else []))
        print(table(["set", "class"] + kinds + (["soups - baseline soups"] if baselines else []), summary))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
