"""Does the invisibility map tell good color boxes from bad ones? Learned per-box fusion, with and without it.

``benchmarks/fusion.py`` weights each color box by the map inside it with a hand-made form (``c (1 - a m)``,
...), and finds no gain over one constant weight. This asks the question more generously: each box's score is
replaced by the probability that it is a true positive, from a logistic regression fitted on the train
split's boxes (per condition, label set and detector), on

    logit(score), has a partner, logit(partner's score), class       (calibrated)
    ... and the map's mean m inside the box, m * logit(score), m * has a partner     (calibrated + map)

where a box's partner is the other detector's best same-class box overlapping it by IoU >= 0.55 (the fusion's
IoU). A box is a true positive when greedy matching by score (per image and class, IoU >= 0.5) pairs it with
a label. The rescored color and thermal boxes are then merged by score-aware NMS (``nms``) or weighted boxes
fusion (``wbf``). If the map carried what a score and the other detector's agreement do not, ``calibrated +
map`` would beat ``calibrated``.

Printed for each condition and label set: AP50 (test split, mean over person/bicycle/car) of color, thermal,
constant-weight fusion (weight chosen on the train split, as ``fusion.py``) and the four learned fusions, each
with its paired margin over the better single detector and over the constant, 95% intervals from 1000
bootstrap resamples of the test images (the same for every method).

Usage (from the repository root), on the detections ``benchmarks/fusion.py`` or the pipeline's fusion stage
cached::

    INVISMAP_ASSETS=../shared/assets .venv/bin/python benchmarks/fusion_calibrated.py \\
        --records runs/msrs/fusion/detections.npz --data runs/msrs/register
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from common import assets_env, base_parser, print_machine, setup_torch, table

PARTNER_IOU = 0.55  # FusionParams.iou_thr: boxes overlapping by more are one object when fused


def parse_args():
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--records", required=True,
                   help="detections.npz of benchmarks/fusion.py or of the fusion stage")
    p.add_argument("--data", required=True, help="the registered pairs those detections are of (for labels)")
    p.add_argument("--map", default="predictor", help="the map in the records to use")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", help="also write the rows here")
    return p.parse_args()


def true_positives(d, truth: np.ndarray, classes) -> np.ndarray:
    """``(N,)`` whether each box of ``d`` matches a label of ``truth (M, 5)`` (greedy by score per class,
    IoU >= 0.5)."""
    from invismap.data.importers.common import box_iou

    tp = np.zeros(len(d), bool)
    for c in classes:
        dets, gt = np.where(d.classes == c)[0], truth[truth[:, 0] == c, 1:]
        if not len(dets) or not len(gt):
            continue
        dets = dets[np.argsort(-d.scores[dets], kind="stable")]
        iou, free = box_iou(d.boxes[dets], gt), np.ones(len(gt), bool)
        for k, i in enumerate(dets):
            ok = np.where(free & (iou[k] >= 0.5))[0]
            if len(ok):
                free[ok[np.argmax(iou[k, ok])]] = False
                tp[i] = True
    return tp


def partner_scores(d, other) -> np.ndarray:
    """``(N,)`` the best score of ``other``'s same-class boxes overlapping each box of ``d`` (0: none)."""
    from invismap.data.importers.common import box_iou

    if not len(d) or not len(other):
        return np.zeros(len(d))
    same = (box_iou(d.boxes, other.boxes) >= PARTNER_IOU) & (d.classes[:, None] == other.classes[None, :])
    return np.where(same, other.scores[None, :], 0.0).max(1)


def box_features(record, detector: str, map_name: str | None, classes) -> np.ndarray:
    """``(N, F)`` features of one pair's ``detector`` boxes (see the module docstring)."""
    d, other = (record.color, record.thermal) if detector == "color" else (record.thermal, record.color)
    s, p = _logit(d.scores), partner_scores(d, other)
    has = (p > 0).astype(np.float64)
    cols = [s, has, np.where(has > 0, _logit(p), 0.0)]
    cols += [(d.classes == c).astype(np.float64) for c in classes[1:]]
    if map_name is not None:
        m = getattr(record, f"{detector}_map_means")[map_name]
        cols += [m, m * s, m * has]
    return np.stack(cols, 1).reshape(len(d), len(cols))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3):
    """A logistic regression ``(N, F) -> (N,)`` probabilities, fitted by L-BFGS on standardised features."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = (x - mu) / sd @ w[1:] + w[0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + l2 * w[1:].square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = w.detach()
    return lambda z: torch.sigmoid((torch.as_tensor(z, dtype=torch.float64) - mu) / sd @ w[1:] + w[0]).numpy()


def rescored(train, test, labels, label_set: str, map_name: str | None, classes) -> dict[str, list]:
    """``{"color": [...], "thermal": [...]}`` detections of ``test``, every box's score replaced by its
    detector's regression fitted on ``train``."""
    from invismap.detector.base import Detections

    out = {}
    for detector in ("color", "thermal"):
        x = np.concatenate([box_features(r, detector, map_name, classes) for r in train])
        y = np.concatenate([true_positives(getattr(r, detector), labels[r.name][label_set], classes)
                            for r in train])
        model = fit_logistic(x, y)
        out[detector] = [Detections(d.boxes, model(box_features(r, detector, map_name, classes))
                                    .astype(np.float32), d.classes)
                         for r in test for d in (getattr(r, detector),)]
    return out


def merged(boxes: dict[str, list], test, method: str) -> list:
    """:func:`rescored` boxes of both detectors merged by ``method`` (``nms`` or ``wbf``), all weights 1."""
    from invismap.detector.fusion import FusionParams, fuse_detections

    params = FusionParams(method=method)
    return [fuse_detections(c, t, np.ones(len(c)), r.size, params)
            for c, t, r in zip(boxes["color"], boxes["thermal"], test)]


def ap50_rows(dets, truth, sizes, weights, classes) -> np.ndarray:
    """``(R,)`` AP50 x100 (mean over ``classes``) of ``dets`` on each row of image ``weights (R, N)``."""
    from invismap.detector.ap_bootstrap import ap50_replicates, match_at_iou50, mean_over_classes

    return 100 * mean_over_classes(ap50_replicates(match_at_iou50(truth, dets, sizes, classes), weights))


def main() -> None:
    args = parse_args()
    assets_env()
    setup_torch(args.threads)
    torch.set_grad_enabled(False)
    from invismap.data.manifest import ROAD_CLASSES, load_manifest
    from invismap.detector.fusion import FusionParams
    from invismap.detector.fusion_eval import (
        CONDITIONS,
        LABEL_SETS,
        FusionGrid,
        choose_on_train,
        fuse_record,
        load_labels,
        load_records,
    )
    from invismap.invisibility.bootstrap import interval, resample_weights

    records = load_records(args.records)
    if records is None:
        raise SystemExit(f"{args.records}: no cached detections there; run benchmarks/fusion.py first")
    if records and args.map not in records[0].color_map_means:
        raise SystemExit(f"--map {args.map}: not in {args.records} "
                         f"(it has {', '.join(records[0].color_map_means)})")
    labels = load_labels(load_manifest(args.data).select(split=("train", "test")))
    classes = list(ROAD_CLASSES)
    print_machine("learned per-box fusion with and without the invisibility map")
    rows = []
    for cond in CONDITIONS:
        train = [r for r in records if r.split == "train" and r.condition == cond]
        test = [r for r in records if r.split == "test" and r.condition == cond]
        weights = np.vstack([np.ones(len(test)), resample_weights([np.arange(len(test))], args.n_boot)])
        for label_set in LABEL_SETS:
            truth, sizes = [labels[r.name][label_set] for r in test], [r.size for r in test]
            # (1 + n_boot,) AP50 x100, the first on the test images as they are
            ap = functools.partial(ap50_rows, truth=truth, sizes=sizes, weights=weights, classes=classes)
            constant = choose_on_train(train, labels, FusionGrid().constant(FusionParams()), None,
                                       {cond: list(range(len(train)))}, [label_set])[cond, label_set][0]
            res = {"color": ap([r.color for r in test]), "thermal": ap([r.thermal for r in test]),
                   f"constant ({constant.color_weight})": ap([fuse_record(r, constant) for r in test])}
            for map_name in (None, args.map):
                boxes = rescored(train, test, labels, label_set, map_name, classes)  # one fit, two merges
                for method in ("nms", "wbf"):
                    name = f"calibrated{' + map' if map_name else ''} {method}"
                    res[name] = ap(merged(boxes, test, method))
            best = max(("color", "thermal"), key=lambda k: res[k][0])
            const = next(k for k in res if k.startswith("constant"))
            for method, v in res.items():
                margins = {}
                for ref in (best, const):
                    lo, hi = interval(v[1:] - res[ref][1:])
                    margins[ref] = f"{v[0] - res[ref][0]:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                rows.append({"condition": cond, "labels": label_set, "method": method, "AP50": round(v[0], 1),
                             "- best single": margins[best], "- constant": margins[const]})
                print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print(table(cols, [[r[c] for c in cols] for r in rows]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
