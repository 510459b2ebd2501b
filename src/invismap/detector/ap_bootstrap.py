"""AP50 of a detector on bootstrap resamples of its test images, matched once by pycocotools.

COCO matching is per image: which detection matches which truth depends on that image alone. So a resample
of the images (image ``i`` drawn ``w_i`` times) has the AP of the original matches with each image's
detections and truths counted ``w_i`` times. :func:`match_at_iou50` runs ``COCOeval.evaluate`` once (IoU 0.5,
area "all", 100 detections per image and class, as :func:`~invismap.detector.evaluate.coco_ap`) and keeps,
per class, every detection's image, score rank and match; :func:`ap50_replicates` then recomputes
pycocotools' 101-point interpolated AP for each row of multiplicities in a few vector operations. With all
multiplicities 1 it is exactly ``coco_ap``'s AP50; with a resample, exactly ``coco_ap`` on the resampled
image list (tested).

Example:
    >>> from invismap.detector.base import Detections
    >>> gt = [np.array([[0, 0, 0, 10, 10]]), np.array([[0, 20, 20, 30, 30]])]
    >>> det = [Detections(np.array([[0, 0, 10, 10]], np.float32), np.array([0.9], np.float32), np.array([0])),
    ...        Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))]
    >>> m = match_at_iou50(gt, det, [(40, 40)] * 2, classes=[0])
    >>> ap50_replicates(m, np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 2.0]])).round(3).tolist()  # (R, K)
    [[0.505], [1.0], [0.0]]
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from invismap.data.manifest import ROAD_CLASSES
from invismap.detector.base import Detections
from invismap.detector.evaluate import LabelledDetections, coco_annotations
from invismap.invisibility.bootstrap import N_BOOT, estimate, resample_weights

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs
MAX_DETS = 100  # per image and class, as coco_ap (pycocotools' last maxDets)


@dataclass
class ClassMatches:
    """One class's detections over ``N`` images, in pycocotools' ranking order (score, then image order).

    Attributes:
        image: ``(n,)`` image index of each detection.
        true_positive: ``(n,)`` matched to a truth at IoU >= 0.5 (and not ignored).
        false_positive: ``(n,)`` unmatched (and not ignored).
        n_truth: ``(N,)`` truths of the class per image (not ignored).
    """

    image: np.ndarray
    true_positive: np.ndarray
    false_positive: np.ndarray
    n_truth: np.ndarray


def match_at_iou50(ground_truth: Sequence[np.ndarray], detections: Sequence[Detections],
                   image_sizes: Sequence[tuple[int, int]],
                   classes: Sequence[int] = ROAD_CLASSES) -> dict[int, ClassMatches]:
    """pycocotools' per-image matching at IoU 0.5, per class.

    Args:
        ground_truth: per image, ``(M, 5)`` ``[class, x1, y1, x2, y2]`` pixels.
        detections: per image, :class:`Detections` in the same pixels.
        image_sizes: per image, ``(width, height)``.
        classes: class ids evaluated; other boxes are ignored.

    Returns:
        ``{class id: ClassMatches}``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not len(ground_truth) == len(detections) == len(image_sizes):
        raise ValueError(f"{len(ground_truth)} ground truths, {len(detections)} detections, "
                         f"{len(image_sizes)} image sizes: need one of each per image")
    classes = [int(c) for c in classes]
    images, gt_anns, dt_anns = coco_annotations(ground_truth, detections, image_sizes, classes)
    n = len(images)
    if not gt_anns or not dt_anns:  # loadRes refuses an empty result list: no truth gives NaN, no detection 0
        return {c: ClassMatches(np.zeros(0, np.intp), np.zeros(0, bool), np.zeros(0, bool),
                                np.array([np.count_nonzero(np.asarray(g).reshape(-1, 5)[:, 0] == c)
                                          for g in ground_truth], np.float64)) for c in classes}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns,
                      "categories": [{"id": c, "name": str(c)} for c in classes]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dt_anns), "bbox")
        ev.params.catIds, ev.params.iouThrs = classes, np.array([0.5])
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [MAX_DETS]
        ev.evaluate()
    # evalImgs: class-major, then area range (one), then image (ids 1..n in order); None = nothing there.
    return {c: _class_matches(ev.evalImgs[k * n:(k + 1) * n]) for k, c in enumerate(classes)}


def _class_matches(evals: list) -> ClassMatches:
    image, score, matched, ignored = [], [], [], []
    n_truth = np.zeros(len(evals))
    for i, e in enumerate(evals):
        if e is None:
            continue
        n_truth[i] = np.count_nonzero(~np.asarray(e["gtIgnore"], bool))
        d = len(e["dtScores"])
        image.append(np.full(d, i, np.intp))
        score.append(np.asarray(e["dtScores"], np.float64))
        matched.append(np.asarray(e["dtMatches"][0], np.float64) > 0)
        ignored.append(np.asarray(e["dtIgnore"][0], bool))
    if not image:
        return ClassMatches(np.zeros(0, np.intp), np.zeros(0, bool), np.zeros(0, bool), n_truth)
    order = np.argsort(-np.concatenate(score), kind="mergesort")  # as COCOeval.accumulate ranks them
    matched, ignored = np.concatenate(matched)[order], np.concatenate(ignored)[order]
    return ClassMatches(np.concatenate(image)[order], matched & ~ignored, ~matched & ~ignored, n_truth)


def ap50_replicates(matches: dict[int, ClassMatches], weights: np.ndarray, chunk: int = 256) -> np.ndarray:
    """AP50 per class for each row of image multiplicities.

    Args:
        matches: :func:`match_at_iou50` output.
        weights: ``(R, N)`` how often each image counts in each replicate (ones: the test set itself; see
            :func:`~invismap.invisibility.bootstrap.resample_weights`).
        chunk: replicates computed at once (bounds memory to ``chunk x detections``).

    Returns:
        ``(R, K)`` AP50 in 0..1, classes in ``matches`` order; NaN where a replicate holds no truth of the
        class.
    """
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    out = np.full((len(weights), len(matches)), np.nan)
    for k, m in enumerate(matches.values()):
        if weights.shape[1] != len(m.n_truth):
            raise ValueError(f"weights cover {weights.shape[1]} images, the matches {len(m.n_truth)}")
        for r0 in range(0, len(weights), chunk):
            out[r0:r0 + chunk, k] = _ap50_rows(m, weights[r0:r0 + chunk])
    return out


def _ap50_rows(m: ClassMatches, w: np.ndarray) -> np.ndarray:
    n_truth = w @ m.n_truth  # (R,)
    ap = np.where(n_truth > 0, 0.0, np.nan)
    if len(m.image) == 0:
        return ap
    wd = w[:, m.image]  # (R, n) multiplicity of each ranked detection
    tp = np.cumsum(wd * m.true_positive, axis=1)
    fp = np.cumsum(wd * m.false_positive, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / n_truth[:, None]
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # pycocotools' envelope
    for r in np.flatnonzero(n_truth > 0):
        idx = np.searchsorted(recall[r], RECALL_POINTS, side="left")
        ok = idx < recall.shape[1]
        ap[r] = precision[r, idx[ok]].sum() / len(RECALL_POINTS)  # recall points never reached count 0
    return ap


def mean_over_classes(per_class: np.ndarray) -> np.ndarray:
    """``(R, K)`` -> ``(R,)`` mean over the classes with truth in each replicate (NaN if none has)."""
    per_class = np.asarray(per_class, np.float64)
    valid = np.isfinite(per_class)
    n = valid.sum(1)
    return np.where(n > 0, np.where(valid, per_class, 0.0).sum(1) / np.maximum(n, 1), np.nan)


def ap50_estimates(found: Mapping[str, LabelledDetections], reference: str | None = None,
                   classes: Sequence[int] = ROAD_CLASSES, n_boot: int = N_BOOT,
                   seed: int = 0) -> dict[str, dict[str, float | None]]:
    """AP50 (x100, mean over ``classes``) of detectors scored on the same images, with 95% intervals, and each
    one's lead over ``reference`` from the same resamples (a paired bootstrap over images).

    Args:
        found: name -> that detector's :class:`~invismap.detector.evaluate.LabelledDetections`, every one on
            the same images in the same order (e.g. from :func:`~invismap.detector.evaluate.detect_labelled`
            with the same manifest, split and condition).
        reference: the name whose AP50 the others' leads are measured from (None: no leads).
        classes, n_boot, seed: evaluated classes; bootstrap resamples (at least 1) and their seed.

    Returns:
        ``{name: {value, lo, hi}}`` and ``{"NAME - REFERENCE": {value, lo, hi}}`` for every other name, in AP
        points (:func:`~invismap.invisibility.bootstrap.estimate`; the value is ``coco_ap``'s AP50 x 100).
    """
    if reference is not None and reference not in found:
        raise ValueError(f"reference {reference!r} is not among the detectors {list(found)}")
    first = next(iter(found.values()), LabelledDetections([], [], []))
    for f in found.values():  # same images in the same order: same sizes and the same truth, image by image
        if f.image_sizes != first.image_sizes or not all(
                np.array_equal(a, b) for a, b in zip(f.ground_truth, first.ground_truth)):
            raise ValueError("the detectors were scored on different images; score them on the same ones")
    n = len(first.image_sizes)
    weights = np.vstack([np.ones(n), resample_weights([np.arange(n)], n_boot, seed)])
    reps = {}  # name -> (1 + n_boot,) AP50 points: the test set itself, then the resamples
    for name, f in found.items():
        matches = match_at_iou50(f.ground_truth, f.detections, f.image_sizes, classes)
        reps[name] = 100 * mean_over_classes(ap50_replicates(matches, weights))
    out = {name: estimate(r[0], r[1:]) for name, r in reps.items()}
    for name, r in reps.items():
        if reference is not None and name != reference:
            lead = r - reps[reference]
            out[f"{name} - {reference}"] = estimate(lead[0], lead[1:])
    return out


__all__ = ["RECALL_POINTS", "ClassMatches", "ap50_estimates", "ap50_replicates", "match_at_iou50",
           "mean_over_classes"]
