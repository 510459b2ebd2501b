"""Evaluate invisibility maps against the objects the color camera misses (paper Section 4, Figs. 4-5).

For every pair, the thermal labels are the objects that are there. Each thermal object falls in sets:

- ``missed``: the color teacher, run on the color image, has no detection of IoU >= 0.5 of the same
  class (after folding COCO's finer classes onto the label set, see :data:`CLASS_FOLD`) with score >=
  ``detection_conf``. These are what the paper's map is for (77.5% coverage at 35.9% flagged).
- ``detected``: the complement, thermal objects the teacher does detect (a good map scores them low).
- ``invisible``: no color *label* of IoU >= 0.5 and the same class
  (:func:`invismap.data.summary.thermal_only_mask`): an annotator saw nothing in the color image.
- ``visible``: the complement, thermal objects that also have a color label.
- ``all``: every thermal object.

For each set and condition, scores of the set's object pixels (union of its boxes) and of all pixels are
pooled in :class:`~invismap.invisibility.metrics.ScoreHistogram`; the results hold coverage and flagged
share at τ, coverage at a matched flagged share (the paper's 35.9%), the normalised area up to 30%
flagged, pixel AUROC (negatives: every pixel outside the set's boxes, detected objects included), the
curve itself, and per condition the all-pixel score distribution plus the day/night overlap.

Coverage and AUROC against background reward any map that lights up objects, visible or not (an
"objectness" map). ``separation`` isolates invisibility: the pixel AUROC of missed-object pixels against
detected-object pixels (and invisible against visible); 0.5 means the map cannot tell which objects the
color camera misses.

Example:
    >>> dets = teacher_detections(test, load_detector("yolov5n"))  # doctest: +SKIP
    >>> res = evaluate_maps(test, color_map_source(darkness_map), dets)  # doctest: +SKIP
    >>> write_json("runs/eval/darkness.json", res)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from invismap.data.dataset import load_boxes, load_pair
from invismap.data.importers.common import box_iou
from invismap.data.manifest import CLASS_FOLD, Manifest, Sample
from invismap.data.summary import thermal_only_mask
from invismap.detector.base import Detections
from invismap.detector.postprocess import NMS_IOU
from invismap.errors import InvismapError
from invismap.invisibility.bootstrap import N_BOOT, estimate, resample_weights
from invismap.invisibility.metrics import (
    DEFAULT_BINS,
    ScoreHistogram,
    auroc_from_counts,
    box_means,
    coverage_at_flagged_from_counts,
    distribution_overlap,
    object_pixel_mask,
)
from invismap.io import json_safe

log = logging.getLogger(__name__)

# (sample, rgb (H, W, 3) uint8, thermal (H, W) uint8) -> (H, W) float scores in [0, 1] at original size
MapSource = Callable[[Sample, np.ndarray, np.ndarray], np.ndarray]

OBJECT_SETS = ("missed", "detected", "invisible", "visible", "all")
PAPER_FLAGGED = 0.359  # the paper's operating point: 35.9% of pixels flagged ...
PAPER_COVERAGE = 0.775  # ... cover 77.5% of the pixels of objects the color detector misses
# YOLOv5's default deployment (detect.py) confidence threshold: a box under it is not shown to the user,
# so an object without a box at 0.25 counts as missed by the color camera.
TEACHER_CONF = 0.25
CURVE_POINTS = np.linspace(0.0, 1.0, 201)  # flagged shares at which the stored curves are sampled
HIST_BINS = 100  # bins of the stored score histograms (0.01 wide) and of the day/night overlap
FLAGGED_SHARES = (PAPER_FLAGGED, 0.25)  # coverage of missed-object pixels is read at these flagged shares
# A frame's one number: its highest score (the 100th percentile). A missed pedestrian far away covers < 0.1%
# of a frame, so any lower percentile would let even the perfect map (the oracle of the missed boxes) miss it.
FRAME_PERCENTILE = 100.0
SEPARATIONS = ("missed_vs_detected", "invisible_vs_visible", "missed_vs_detected_object",
               "invisible_vs_visible_object")
# the figures every map gets with a 95% interval, per condition (and frame_* also pooled over conditions)
HEADLINE = ("coverage_35.9", "coverage_25", "pixel_auroc", *SEPARATIONS, "frame_auroc", "frame_spearman")
REFERENCES = ("prior", "darkness")  # maps every other map is compared with (paired margins), when present


def color_map_source(fn: Callable[[np.ndarray], np.ndarray]) -> MapSource:
    """A :data:`MapSource` from a function of the color image only (e.g. a baseline)."""

    def source(sample: Sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        return fn(rgb)

    source.__name__ = getattr(fn, "__name__", "color_map")
    return source


def teacher_detections(manifest: Manifest, model, size: int = 640, conf: float = TEACHER_CONF,
                       iou: float = NMS_IOU, batch_size: int = 8,
                       progress: bool = True) -> dict[str, Detections]:
    """Run the color teacher on every color image of ``manifest``.

    Uses deployment settings (``multi_label=False``: one class per box, as YOLOv5's ``detect.py``), so a
    box is what a user of the color detector would see at ``conf``.

    Args:
        manifest: the pairs (only their color images are read).
        model: a :class:`~invismap.detector.base.Detector` (e.g. ``load_detector("yolov5n")``).
        size: inference size (longest side).
        conf: confidence threshold; 0.25 is YOLOv5's default deployment threshold. Detections can be
            computed lower and raised later with ``evaluate_maps(detection_conf=...)``.
        iou: NMS IoU threshold (YOLOv5 default 0.45).
        batch_size: images per forward pass (and per read, so memory stays bounded).
        progress: show a progress bar.

    Returns:
        Detections in original image pixels, keyed by sample name.
    """
    from invismap.detector.postprocess import detect

    out: dict[str, Detections] = {}
    samples = list(manifest)
    with tqdm(total=len(samples), desc="teacher detections", unit="img", disable=not progress) as bar:
        for k in range(0, len(samples), batch_size):
            chunk = samples[k:k + batch_size]
            images = [load_pair(s)[0] for s in chunk]
            dets = detect(model, images, size=size, conf=conf, iou=iou, batch_size=batch_size,
                          multi_label=False)
            out.update({s.name: d for s, d in zip(chunk, dets)})
            bar.update(len(chunk))
    return out


def detected_mask(thermal_boxes: np.ndarray, detections: Detections, iou_thres: float = 0.5,
                  match: str = "same_class", class_fold: Mapping[int, int] | None = None,
                  conf: float = 0.0) -> np.ndarray:
    """Which thermal objects the color teacher detects.

    Args:
        thermal_boxes: ``(M, 5)`` pixel ``[cls, x1, y1, x2, y2]`` thermal labels (color image geometry).
        detections: the teacher's detections on the color image.
        iou_thres: a detection of IoU >= this with a thermal box detects it.
        match: ``"same_class"`` (the detection's class, after ``class_fold``, equals the label's) or
            ``"any_class"`` (any class counts: the object was at least seen).
        class_fold: detection class -> label class applied before matching (e.g. :data:`CLASS_FOLD`).
        conf: ignore detections scored below this.

    Returns:
        ``(M,)`` bool, True where some detection matches.
    """
    if match not in ("same_class", "any_class"):
        raise ValueError(f"match must be 'same_class' or 'any_class', got {match!r}")
    t = np.asarray(thermal_boxes, np.float32).reshape(-1, 5)
    keep = np.asarray(detections.scores) >= conf
    boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)[keep]
    classes = np.asarray(detections.classes, np.int64).reshape(-1)[keep]
    if len(t) == 0 or len(boxes) == 0:
        return np.zeros(len(t), bool)
    hit = box_iou(t[:, 1:], boxes) >= iou_thres  # (M, D)
    if match == "same_class":
        fold = class_fold or {}
        det_cls = np.array([fold.get(int(c), int(c)) for c in classes], np.int64)
        hit &= t[:, :1].astype(np.int64) == det_cls[None, :]
    return hit.any(axis=1)


def object_sets(thermal_boxes: np.ndarray, color_boxes: np.ndarray | None, detections: Detections | None,
                iou_thres: float = 0.5, match: str = "same_class",
                class_fold: Mapping[int, int] | None = CLASS_FOLD,
                conf: float = 0.0) -> dict[str, np.ndarray]:
    """Split the thermal objects of one pair into the evaluation sets.

    Args:
        thermal_boxes: ``(M, 5)`` pixel ``[cls, x1, y1, x2, y2]``.
        color_boxes: ``(N, 5)`` color labels, or None when the color image is not labelled (no
            ``invisible``/``visible`` sets then).
        detections: teacher detections, or None (no ``missed``/``detected`` sets then).
        iou_thres, match, class_fold, conf: see :func:`detected_mask`.

    Returns:
        Set name -> ``(K, 5)`` boxes of that set, for the sets that are defined.
    """
    t = np.asarray(thermal_boxes, np.float32).reshape(-1, 5)
    sets = {"all": t}
    if detections is not None:
        hit = detected_mask(t, detections, iou_thres, match, class_fold, conf)
        sets["missed"], sets["detected"] = t[~hit], t[hit]
    if color_boxes is not None:
        only = thermal_only_mask(np.asarray(color_boxes, np.float32).reshape(-1, 5), t, iou_thres)
        sets["invisible"], sets["visible"] = t[only], t[~only]
    return sets


def summarise_histogram(hist: ScoreHistogram, tau: float = 0.35, matched_flagged: float = PAPER_FLAGGED,
                        max_flagged: float = 0.30) -> dict[str, Any]:
    """The JSON summary of one pooled histogram (NaN values become None)."""
    curve_cov = hist.coverage_at_flagged(CURVE_POINTS) if hist.n_object_pixels else None
    return json_safe({
        "object_pixels": hist.n_object_pixels,
        "object_pixel_share": hist.n_object_pixels / max(hist.n_pixels, 1),
        "tau": tau,
        "coverage_at_tau": hist.coverage(tau),
        "flagged_at_tau": hist.flagged(tau),
        "matched_flagged": matched_flagged,
        "coverage_at_matched_flagged": hist.coverage_at_flagged(matched_flagged),
        "coverage_at_25": hist.coverage_at_flagged(0.25),
        "max_flagged": max_flagged,
        "normalised_area": hist.normalised_area(max_flagged),
        "auroc": hist.auroc(),
        "curve": {"flagged": CURVE_POINTS.round(4).tolist(),
                  "coverage": None if curve_cov is None else curve_cov.round(6).tolist()},
    })


def check_score_map(score: np.ndarray, height: int, width: int, name: str = "") -> np.ndarray:
    """Validate a map source's output: ``(H, W)``, finite, in [0, 1] (1e-6 slack, then clipped)."""
    if hasattr(score, "detach"):  # a torch tensor
        score = score.detach().cpu().numpy()
    score = np.asarray(score)
    where = f"map of {name}" if name else "map"
    if score.shape != (height, width):
        raise InvismapError(f"{where}: shape {score.shape}, expected ({height}, {width}) (the original "
                            "image size; map letterboxed scores back first)")
    score = score.astype(np.float32, copy=False)
    if not np.isfinite(score).all():
        raise InvismapError(f"{where}: holds NaN or inf values")
    lo, hi = float(score.min()), float(score.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InvismapError(f"{where}: values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")
    return np.clip(score, 0.0, 1.0)


# ------------------------------------------------------------------------------------ per-image records

@dataclass
class MapRecords:
    """What every figure of one map is pooled from, kept per image so that images can be resampled.

    ``N`` images, ``S = len(OBJECT_SETS)`` sets, ``B`` score bins (:class:`ScoreHistogram`'s grid).

    Attributes:
        names, conditions: per image.
        pixels: ``(N, 1 + S, B)`` counts: all pixels of the image, then the object pixels of each set.
        objects: ``(N, S, B)`` counts: the set's objects, each binned by the mean score inside its box.
        defined: ``(N, S)`` bool: the set exists for the image (thermal labels, and detections for
            missed/detected, color labels for invisible/visible).
        frame: ``(N,)`` the frame score (the map's :data:`FRAME_PERCENTILE` th percentile: its maximum).
        missed: ``(N,)`` objects the color detector missed in the image (-1: unknown).
        moments: ``(N, 2)`` sum and sum of squares of the image's scores (exact mean and std).
    """

    names: list[str]
    conditions: list[str]
    pixels: np.ndarray
    objects: np.ndarray
    defined: np.ndarray
    frame: np.ndarray
    missed: np.ndarray
    moments: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def collect_records(manifest: Manifest, map_source: MapSource,
                    detections_by_name: Mapping[str, Detections] | None = None,
                    conditions: Sequence[str] = ("day", "night"), iou_thres: float = 0.5,
                    match: str = "same_class", class_fold: Mapping[int, int] | None = CLASS_FOLD,
                    detection_conf: float = TEACHER_CONF, bins: int = DEFAULT_BINS,
                    progress: bool = True) -> MapRecords:
    """Run one map source over the pairs of ``conditions`` and keep its per-image counts.

    Args: see :func:`evaluate_maps`.

    Raises:
        InvismapError: no pairs of those conditions, a map of the wrong shape or out of range, or a sample
            missing from the detections.
    """
    samples = [s for s in manifest if s.condition in conditions]
    if not samples:
        raise InvismapError(f"no pairs of condition(s) {', '.join(conditions)} to evaluate")
    if detections_by_name is not None:
        missing = [s.name for s in samples if s.name not in detections_by_name]
        if missing:
            raise InvismapError(f"no teacher detections for {len(missing)} pair(s), e.g. {missing[0]} "
                                "(run teacher_detections on the same manifest)")
    n, n_sets = len(samples), len(OBJECT_SETS)
    rec = MapRecords(names=[s.name for s in samples], conditions=[s.condition for s in samples],
                     pixels=np.zeros((n, 1 + n_sets, bins), np.int64),
                     objects=np.zeros((n, n_sets, bins), np.int64),
                     defined=np.zeros((n, n_sets), bool), frame=np.zeros(n), missed=np.full(n, -1, np.int64),
                     moments=np.zeros((n, 2)))
    grid = ScoreHistogram(bins)  # only its binning is used
    for i, s in enumerate(tqdm(samples, desc=f"evaluating {getattr(map_source, '__name__', 'map')}",
                               unit="pair", disable=not progress)):
        rgb, thr = load_pair(s)
        h, w = thr.shape
        score = check_score_map(map_source(s, rgb, thr), h, w, s.name)
        idx = grid.bin_index(score)  # binned once, shared by the sets below
        rec.pixels[i, 0] = np.bincount(idx.reshape(-1), minlength=bins)
        rec.frame[i] = score.max() if FRAME_PERCENTILE == 100 else np.percentile(score, FRAME_PERCENTILE)
        s64 = score.astype(np.float64)
        rec.moments[i] = s64.sum(), np.square(s64).sum()
        if s.thermal_labels is None:
            log.info("%s: no thermal labels, counted only in the score distribution", s.name)
            continue
        cboxes, tboxes = load_boxes(s, w, h)
        dets = detections_by_name[s.name] if detections_by_name is not None else None
        sets = object_sets(tboxes, cboxes if s.color_labels is not None else None, dets, iou_thres, match,
                           class_fold, detection_conf)
        if "missed" in sets:
            rec.missed[i] = len(sets["missed"])
        for k, name in enumerate(OBJECT_SETS):
            if name not in sets:
                continue
            boxes = sets[name]
            rec.defined[i, k] = True
            mask = object_pixel_mask(boxes[:, 1:], h, w)
            if mask.any():
                rec.pixels[i, 1 + k] = np.bincount(idx[mask], minlength=bins)
            means = box_means(score, boxes[:, 1:])
            means = means[np.isfinite(means)]
            if means.size:
                rec.objects[i, k] = np.bincount(grid.bin_index(means), minlength=bins)
    return rec


# ------------------------------------------------------------------------------------------ the figures

def _set(name: str) -> int:
    return OBJECT_SETS.index(name)


def headline_metrics(rec: MapRecords, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The headline figures of one group of images, for each row of image weights.

    Args:
        rec: the map's records.
        weights: ``(R, N)`` multiplicities (a row of ones is the point estimate; bootstrap rows resample;
            zero out images outside the group).

    Returns:
        Metric name (:data:`HEADLINE`) -> ``(R,)`` values (NaN where undefined, e.g. no missed object drawn).
    """
    w = np.asarray(weights, np.float64)
    out: dict[str, np.ndarray] = {}

    def pooled(which: np.ndarray, k: int) -> np.ndarray:  # (R, B): set k's counts over the images defining it
        return (w * rec.defined[:, k]) @ which

    m, d, inv, vis = _set("missed"), _set("detected"), _set("invisible"), _set("visible")
    all_m = pooled(rec.pixels[:, 0], m)
    missed = pooled(rec.pixels[:, 1 + m], m)
    cov = coverage_at_flagged_from_counts(all_m, missed, np.array(FLAGGED_SHARES))
    out["coverage_35.9"], out["coverage_25"] = cov[:, 0], cov[:, 1]
    out["pixel_auroc"] = auroc_from_counts(missed, all_m - missed)
    for a, b in ((m, d), (inv, vis)):
        key = f"{OBJECT_SETS[a]}_vs_{OBJECT_SETS[b]}"
        out[key] = auroc_from_counts(pooled(rec.pixels[:, 1 + a], a), pooled(rec.pixels[:, 1 + b], b))
        out[f"{key}_object"] = auroc_from_counts(pooled(rec.objects[:, a], a), pooled(rec.objects[:, b], b))
    known = rec.missed >= 0
    frame_bins = np.zeros((len(rec), rec.pixels.shape[-1]))
    frame_bins[np.arange(len(rec)), ScoreHistogram(rec.pixels.shape[-1]).bin_index(rec.frame)] = 1
    out["frame_auroc"] = auroc_from_counts((w * (known & (rec.missed > 0))) @ frame_bins,
                                           (w * (known & (rec.missed == 0))) @ frame_bins)
    out["frame_spearman"] = np.array([_weighted_spearman(rec.frame[known], rec.missed[known], row[known])
                                      for row in w])
    return out


def _weighted_spearman(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Spearman rank correlation of the values repeated ``w`` times (NaN when either is constant)."""
    reps = np.round(w).astype(np.int64)
    if reps.sum() < 3:
        return float("nan")
    xs, ys = np.repeat(x, reps), np.repeat(y, reps)
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return float("nan")
    return float(spearmanr(xs, ys).statistic)


def _groups(rec: MapRecords) -> dict[str, np.ndarray]:
    """Image indices per condition (in the order the conditions first appear)."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(rec.conditions):
        out.setdefault(c, []).append(i)
    return {c: np.array(v) for c, v in out.items()}


def _condition_summary(rec: MapRecords, idx: np.ndarray, tau: float, matched_flagged: float,
                       max_flagged: float) -> dict[str, Any]:
    """The point summary of one condition (as before the bootstrap): sets, separations, scores."""
    all_hist = ScoreHistogram.from_counts(rec.pixels[idx, 0].sum(0), None, *rec.moments[idx].sum(0))
    res: dict[str, Any] = {"pairs": len(idx), "objects": {}, "flagged_at_tau": all_hist.flagged(tau),
                           "scores": {"mean": all_hist.mean(), "std": all_hist.std(),
                                      "histogram": {"bins": HIST_BINS, "range": [0.0, 1.0],
                                                    "counts": all_hist.histogram(HIST_BINS).tolist()}},
                           "sets": {}}
    for k, name in enumerate(OBJECT_SETS):
        has = idx[rec.defined[idx, k]]
        if len(has) == 0:
            continue
        res["objects"][name] = int(rec.objects[has, k].sum())
        hist = ScoreHistogram.from_counts(rec.pixels[has, 0].sum(0), rec.pixels[has, 1 + k].sum(0))
        res["sets"][name] = {"objects": res["objects"][name], "pairs": len(has),
                             **summarise_histogram(hist, tau, matched_flagged, max_flagged)}
    return res


def summarise_records(records: Mapping[str, MapRecords], references: Sequence[str] = (),
                      settings: Mapping[str, Any] | None = None, tau: float = 0.35,
                      matched_flagged: float = PAPER_FLAGGED, max_flagged: float = 0.30, n_boot: int = N_BOOT,
                      seed: int = 0) -> dict[str, dict[str, Any]]:
    """Every figure of every map, with 95% bootstrap intervals, and paired margins over reference maps.

    All maps must have been collected on the same images in the same order: they are resampled with the
    same replicates (stratified by condition), so a margin ``map - reference`` is a paired comparison.

    Args:
        records: map name -> its :class:`MapRecords`.
        references: map names to compare every other map against (e.g. ``["prior"]``); absent names are
            skipped.
        settings: written into each result's ``settings``.
        tau, matched_flagged, max_flagged: see :func:`evaluate_maps`.
        n_boot: bootstrap replicates (>= 1000 for the intervals the report quotes).
        seed: fixes the replicates.

    Returns:
        Map name -> the dict :func:`evaluate_maps` documents.
    """
    if not records:
        raise ValueError("no maps to summarise")
    first = next(iter(records.values()))
    for name, rec in records.items():
        if rec.names != first.names:
            raise ValueError(f"map '{name}' was scored on other images than '{next(iter(records))}'")
    groups = _groups(first)
    boot = resample_weights(list(groups.values()), n_boot, seed)  # (R, N), shared by every map
    scopes = {c: np.isin(np.arange(len(first)), g) for c, g in groups.items()}
    scopes["pooled"] = np.ones(len(first), bool)

    replicates: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, rec in records.items():
        res: dict[str, Any] = {"settings": {**(settings or {}), "n_boot": n_boot, "seed": seed,
                                            "frame_percentile": FRAME_PERCENTILE,
                                            "object_score": "mean in box"},
                               "conditions": {}}
        replicates[name] = {}
        for scope, keep in scopes.items():
            point = headline_metrics(rec, keep[None].astype(np.float64))
            reps = headline_metrics(rec, boot * keep)
            replicates[name][scope] = reps
            metrics = {k: estimate(float(point[k][0]), reps[k]) for k in HEADLINE}
            if scope == "pooled":
                res["pooled"] = {"pairs": int(keep.sum()),
                                 "metrics": {k: metrics[k] for k in ("frame_auroc", "frame_spearman")}}
                continue
            c = _condition_summary(rec, groups[scope], tau, matched_flagged, max_flagged)
            c["separation"] = {f"{k}_auroc": float(point[k][0]) for k in SEPARATIONS
                               if all(n in c["sets"] for n in k.removesuffix("_object").split("_vs_"))}
            c["frame"] = {"frames": int((rec.missed[keep] >= 0).sum()),
                          "frames_with_missed": int((rec.missed[keep] > 0).sum()),
                          "auroc": float(point["frame_auroc"][0]),
                          "spearman": float(point["frame_spearman"][0])}
            c["metrics"] = metrics
            res["conditions"][scope] = json_safe(c)
        if "day" in groups and "night" in groups:
            px = rec.pixels[:, 0]
            h = lambda rows: _regroup(rows, HIST_BINS)
            point = distribution_overlap(h(px[groups["day"]].sum(0)), h(px[groups["night"]].sum(0)))
            reps = distribution_overlap(h((boot * scopes["day"]) @ px), h((boot * scopes["night"]) @ px))
            res["day_vs_night"] = {**point, "overlap_interval": estimate(point["overlap"], reps["overlap"])}
            replicates[name]["pooled"]["day_vs_night_overlap"] = reps["overlap"]
        out[name] = json_safe(res)

    for ref in references:
        if ref not in records:
            continue
        for name in records:
            if name == ref:
                continue
            margins: dict[str, Any] = {}
            for scope, reps in replicates[name].items():
                base = replicates[ref][scope]
                margins[scope] = {k: estimate(_point(out[name], scope, k) - _point(out[ref], scope, k),
                                              reps[k] - base[k]) for k in reps if k in base}
            out[name].setdefault("margins", {})[ref] = json_safe(margins)
    return out


def _point(res: dict, scope: str, key: str) -> float:
    """A point estimate from a summary (NaN when absent)."""
    if key == "day_vs_night_overlap":
        v = (res.get("day_vs_night") or {}).get("overlap")
    else:
        holder = res["pooled"] if scope == "pooled" else res["conditions"].get(scope, {})
        v = (holder.get("metrics", {}).get(key) or {}).get("value")
    return float("nan") if v is None else float(v)


def _regroup(counts: np.ndarray, bins: int) -> np.ndarray:
    """``(..., K + 1)`` fine counts -> ``(..., bins)`` (as :meth:`ScoreHistogram.histogram`)."""
    k = counts.shape[-1] - 1
    out = counts[..., :k].reshape(*counts.shape[:-1], bins, k // bins).sum(-1)
    out[..., -1] += counts[..., k]
    return out


def evaluate_maps(manifest: Manifest, map_source: MapSource,
                  detections_by_name: Mapping[str, Detections] | None = None,
                  conditions: Sequence[str] = ("day", "night"), tau: float = 0.35,
                  matched_flagged: float = PAPER_FLAGGED, max_flagged: float = 0.30, iou_thres: float = 0.5,
                  match: str = "same_class", class_fold: Mapping[int, int] | None = CLASS_FOLD,
                  detection_conf: float = TEACHER_CONF, bins: int = DEFAULT_BINS, n_boot: int = N_BOOT,
                  seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Score one map source on the pairs of ``manifest``, per condition and object set.

    Args:
        manifest: pairs with thermal labels (pairs without them count only towards the score
            distribution; pairs without color labels get no ``invisible`` set).
        map_source: ``(sample, rgb, thermal) -> (H, W)`` scores in [0, 1] at the original resolution.
        detections_by_name: teacher detections on the color images keyed by sample name
            (:func:`teacher_detections`); None skips the ``missed`` and ``detected`` sets.
        conditions: which conditions to report; pairs of other conditions are skipped.
        tau: the map threshold (the paper's 0.35).
        matched_flagged: the flagged share at which coverage is read (the paper's 35.9%).
        max_flagged: upper end of the normalised area.
        iou_thres: box match IoU for detections and color labels.
        match, class_fold: how a detection matches a thermal label (:func:`detected_mask`).
        detection_conf: detections scored below this are ignored (0.25: YOLOv5's deployment default).
        bins: histogram bins on [0, 1].
        n_boot, seed: bootstrap replicates over images for the intervals, and their seed.
        progress: show a progress bar.

    Returns:
        JSON-ready dict::

            settings: the arguments above
            conditions: {cond: {pairs, objects: {set: count}, flagged_at_tau,
                                scores: {mean, std, histogram: {bins, range, counts}},
                                sets: {set: summarise_histogram(...) + {objects, pairs}},
                                separation: {missed_vs_detected_auroc, invisible_vs_visible_auroc, and
                                             the same two *_object_auroc},
                                frame: {frames, frames_with_missed, auroc, spearman},
                                metrics: {HEADLINE name: {value, lo, hi}}}}     (95% bootstrap intervals)
            pooled: {pairs, metrics: {frame_auroc, frame_spearman}}   (every condition together)
            day_vs_night: {overlap, bhattacharyya, overlap_interval} of the all-pixel score histograms

    Raises:
        InvismapError: a map of the wrong shape or out of range, or a sample missing from the detections.
    """
    rec = collect_records(manifest, map_source, detections_by_name, conditions, iou_thres, match, class_fold,
                          detection_conf, bins, progress)
    name = getattr(map_source, "__name__", None)
    settings = _settings(conditions, tau, matched_flagged, max_flagged, iou_thres, match, class_fold,
                         detection_conf if detections_by_name is not None else None, bins, name)
    return summarise_records({"map": rec}, (), settings, tau, matched_flagged, max_flagged, n_boot,
                             seed)["map"]


def _settings(conditions, tau, matched_flagged, max_flagged, iou_thres, match, class_fold, detection_conf,
              bins, map_source) -> dict[str, Any]:
    return {"tau": tau, "matched_flagged": matched_flagged, "max_flagged": max_flagged,
            "iou_thres": iou_thres,
            "match": match, "class_fold": {str(k): v for k, v in (class_fold or {}).items()},
            "detection_conf": detection_conf, "bins": bins, "map_source": map_source,
            "conditions": list(conditions)}


def compare_sources(manifest: Manifest, sources: Mapping[str, MapSource],
                    detections_by_name: Mapping[str, Detections] | None = None,
                    references: Sequence[str] = REFERENCES, conditions: Sequence[str] = ("day", "night"),
                    tau: float = 0.35, matched_flagged: float = PAPER_FLAGGED, max_flagged: float = 0.30,
                    iou_thres: float = 0.5, match: str = "same_class",
                    class_fold: Mapping[int, int] | None = CLASS_FOLD, detection_conf: float = TEACHER_CONF,
                    bins: int = DEFAULT_BINS, n_boot: int = N_BOOT, seed: int = 0,
                    progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate_maps` for several map sources on the same pairs, in one run.

    Every map is resampled with the same bootstrap replicates, and each result gains
    ``margins: {reference: {condition or 'pooled': {metric: {value, lo, hi}}}}``: the paired difference
    ``map - reference`` for each reference in ``references`` that is among ``sources``.

    Returns:
        ``{source name: results}``.
    """
    records = {name: collect_records(manifest, src, detections_by_name, conditions, iou_thres, match,
                                     class_fold, detection_conf, bins, progress)
               for name, src in sources.items()}
    out = {}
    for name, res in summarise_records(records, references, None, tau, matched_flagged, max_flagged, n_boot,
                                       seed).items():
        res["settings"] = {**_settings(conditions, tau, matched_flagged, max_flagged, iou_thres, match,
                                       class_fold, detection_conf if detections_by_name is not None else None,
                                       bins, getattr(sources[name], "__name__", name)), **res["settings"]}
        out[name] = res
    return out


METRIC_LABELS = {"coverage_35.9": "cov@35.9%", "coverage_25": "cov@25%", "pixel_auroc": "AUROC",
                 "missed_vs_detected": "miss/det", "invisible_vs_visible": "invis/vis",
                 "missed_vs_detected_object": "miss/det obj", "invisible_vs_visible_object": "invis/vis obj",
                 "frame_auroc": "frame AUROC", "frame_spearman": "frame rho"}


def format_table(results: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = HEADLINE[:-1]) -> str:
    """A text table of :func:`compare_sources` results: per condition, every map's headline figures with
    their 95% intervals, then the pooled frame AUROC, the day/night overlap and the margins over references.
    """
    def fmt(e: Mapping[str, Any] | None) -> str:
        if not e or e.get("value") is None:
            return "n/a"
        if e.get("lo") is None:
            return f"{e['value']:.3f}"
        return f"{e['value']:.3f} [{e['lo']:.2f},{e['hi']:.2f}]"

    width = max([len(n) for n in results] + [5]) + 1
    lines = []
    conditions = list(dict.fromkeys(c for r in results.values() for c in r["conditions"]))
    for cond in conditions:
        objects = next(iter(results.values()))["conditions"][cond]["objects"]
        counts = ", ".join(f"{n} {objects.get(n, 0)}" for n in ("missed", "detected", "invisible", "visible"))
        lines.append(f"{cond}: {counts} objects")
        lines.append(f"{'map':<{width}}" + "".join(f"{METRIC_LABELS[k]:>19}" for k in metrics))
        for name, r in results.items():
            c = r["conditions"].get(cond)
            if c:
                lines.append(f"{name:<{width}}" + "".join(f"{fmt(c['metrics'].get(k)):>19}" for k in metrics))
    lines.append(f"{'map':<{width}}{'frame AUROC, pooled':>22}{'day/night overlap':>22}")
    for name, r in results.items():
        overlap = (r.get("day_vs_night") or {}).get("overlap_interval")
        lines.append(f"{name:<{width}}{fmt(r['pooled']['metrics']['frame_auroc']):>22}{fmt(overlap):>22}")
    references = {ref for r in results.values() for ref in (r.get("margins") or {})}
    for name, r in results.items():
        if name in references or name in ("random", "oracle"):  # margins of the learned maps only
            continue
        for ref, by_scope in (r.get("margins") or {}).items():
            parts = [f"{cond} {METRIC_LABELS[k]} {fmt(by_scope[cond].get(k))}" for cond in conditions
                     for k in ("pixel_auroc", "missed_vs_detected", "invisible_vs_visible")
                     if cond in by_scope and (by_scope[cond].get(k) or {}).get("value") is not None]
            lines.append(f"{name} - {ref}: " + "; ".join(parts))
    return "\n".join(lines)


__all__ = [
    "CLASS_FOLD",
    "FRAME_PERCENTILE",
    "HEADLINE",
    "OBJECT_SETS",
    "PAPER_COVERAGE",
    "PAPER_FLAGGED",
    "TEACHER_CONF",
    "MapRecords",
    "MapSource",
    "check_score_map",
    "collect_records",
    "color_map_source",
    "compare_sources",
    "detected_mask",
    "evaluate_maps",
    "format_table",
    "object_sets",
    "summarise_histogram",
    "summarise_records",
    "teacher_detections",
]
