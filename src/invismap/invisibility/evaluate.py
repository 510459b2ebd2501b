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
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from invismap.data.dataset import load_boxes, load_pair
from invismap.data.importers.common import box_iou
from invismap.data.manifest import Manifest, Sample
from invismap.data.summary import thermal_only_mask
from invismap.detector.base import Detections
from invismap.errors import InvismapError
from invismap.invisibility.metrics import (
    DEFAULT_BINS,
    ScoreHistogram,
    auroc_from_counts,
    distribution_overlap,
    object_pixel_mask,
)

log = logging.getLogger(__name__)

# (sample, rgb (H, W, 3) uint8, thermal (H, W) uint8) -> (H, W) float scores in [0, 1] at original size
MapSource = Callable[[Sample, np.ndarray, np.ndarray], np.ndarray]

OBJECT_SETS = ("missed", "detected", "invisible", "visible", "all")
PAPER_FLAGGED = 0.359  # the paper's operating point: 35.9% of pixels flagged ...
PAPER_COVERAGE = 0.775  # ... cover 77.5% of the pixels of objects the color detector misses
# YOLOv5's default deployment (detect.py) confidence threshold: a box under it is not shown to the user,
# so an object without a box at 0.25 counts as missed by the color camera.
TEACHER_CONF = 0.25
# COCO detections folded onto the road label set before same-class matching: a labelled "car" the
# teacher calls a truck or bus was seen, and so was a "bicycle" it calls a motorcycle.
CLASS_FOLD: dict[int, int] = {3: 1, 5: 2, 7: 2}  # motorcycle -> bicycle, bus -> car, truck -> car
CURVE_POINTS = np.linspace(0.0, 1.0, 201)  # flagged shares at which the stored curves are sampled
HIST_BINS = 100  # bins of the stored score histograms (0.01 wide) and of the day/night overlap


def color_map_source(fn: Callable[[np.ndarray], np.ndarray]) -> MapSource:
    """A :data:`MapSource` from a function of the color image only (e.g. a baseline)."""

    def source(sample: Sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        return fn(rgb)

    source.__name__ = getattr(fn, "__name__", "color_map")
    return source


def teacher_detections(manifest: Manifest, model, size: int = 640, conf: float = TEACHER_CONF,
                       iou: float = 0.45, batch_size: int = 8,
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
    return _clean({
        "object_pixels": hist.n_object_pixels,
        "object_pixel_share": hist.n_object_pixels / max(hist.n_pixels, 1),
        "tau": tau,
        "coverage_at_tau": hist.coverage(tau),
        "flagged_at_tau": hist.flagged(tau),
        "matched_flagged": matched_flagged,
        "coverage_at_matched_flagged": hist.coverage_at_flagged(matched_flagged),
        "max_flagged": max_flagged,
        "normalised_area": hist.normalised_area(max_flagged),
        "auroc": hist.auroc(),
        "curve": {"flagged": CURVE_POINTS.round(4).tolist(),
                  "coverage": None if curve_cov is None else curve_cov.round(6).tolist()},
    })


def _clean(obj: Any) -> Any:
    """Plain JSON types, NaN/inf as None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


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


def evaluate_maps(manifest: Manifest, map_source: MapSource,
                  detections_by_name: Mapping[str, Detections] | None = None,
                  conditions: Sequence[str] = ("day", "night"), tau: float = 0.35,
                  matched_flagged: float = PAPER_FLAGGED, max_flagged: float = 0.30, iou_thres: float = 0.5,
                  match: str = "same_class", class_fold: Mapping[int, int] | None = CLASS_FOLD,
                  detection_conf: float = TEACHER_CONF, bins: int = DEFAULT_BINS,
                  progress: bool = True) -> dict[str, Any]:
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
        progress: show a progress bar.

    Returns:
        JSON-ready dict::

            settings: the arguments above
            conditions: {cond: {pairs, objects: {set: count}, flagged_at_tau,
                                scores: {mean, std, histogram: {bins, range, counts}},
                                sets: {set: summarise_histogram(...) + {objects, pairs}},
                                separation: {missed_vs_detected_auroc, invisible_vs_visible_auroc}}}
            day_vs_night: {overlap, bhattacharyya} of the all-pixel score histograms (when both present)

    Raises:
        InvismapError: a map of the wrong shape or out of range, or a sample missing from the detections.
    """
    samples = [s for s in manifest if s.condition in conditions]
    if not samples:
        raise InvismapError(f"no pairs of condition(s) {', '.join(conditions)} to evaluate")
    if detections_by_name is not None:
        missing = [s.name for s in samples if s.name not in detections_by_name]
        if missing:
            raise InvismapError(f"no teacher detections for {len(missing)} pair(s), e.g. {missing[0]} "
                                "(run teacher_detections on the same manifest)")
    set_names = [n for n in OBJECT_SETS if detections_by_name is not None or n not in ("missed", "detected")]
    state = {c: {"pairs": 0, "scores": ScoreHistogram(bins),
                 "sets": {n: ScoreHistogram(bins) for n in set_names},
                 "objects": dict.fromkeys(set_names, 0), "set_pairs": dict.fromkeys(set_names, 0)}
             for c in conditions}
    for s in tqdm(samples, desc=f"evaluating {getattr(map_source, '__name__', 'map')}", unit="pair",
                  disable=not progress):
        rgb, thr = load_pair(s)
        h, w = thr.shape
        score = check_score_map(map_source(s, rgb, thr), h, w, s.name)
        st = state[s.condition]
        st["pairs"] += 1
        st["scores"].add(score)
        if s.thermal_labels is None:
            log.info("%s: no thermal labels, counted only in the score distribution", s.name)
            continue
        cboxes, tboxes = load_boxes(s, w, h)
        dets = detections_by_name[s.name] if detections_by_name is not None else None
        sets = object_sets(tboxes, cboxes if s.color_labels is not None else None, dets, iou_thres, match,
                           class_fold, detection_conf)
        idx = st["scores"].bin_index(score)  # binned once, shared by the sets below
        for name, boxes in sets.items():
            if name not in st["sets"]:
                continue
            st["sets"][name].add(score, object_pixel_mask(boxes[:, 1:], h, w), bin_index=idx)
            st["objects"][name] += len(boxes)
            st["set_pairs"][name] += 1

    out: dict[str, Any] = {
        "settings": {
            "tau": tau, "matched_flagged": matched_flagged, "max_flagged": max_flagged,
            "iou_thres": iou_thres,
            "match": match, "class_fold": {str(k): v for k, v in (class_fold or {}).items()},
            "detection_conf": detection_conf if detections_by_name is not None else None,
            "bins": bins, "map_source": getattr(map_source, "__name__", None), "conditions": list(conditions),
        },
        "conditions": {},
    }
    for c, st in state.items():
        if st["pairs"] == 0:
            continue
        hs: ScoreHistogram = st["scores"]
        res = {"pairs": st["pairs"], "objects": st["objects"], "flagged_at_tau": hs.flagged(tau),
               "scores": {"mean": hs.mean(), "std": hs.std(),
                          "histogram": {"bins": HIST_BINS, "range": [0.0, 1.0],
                                        "counts": hs.histogram(HIST_BINS).tolist()}},
               "sets": {}}
        for name, hist in st["sets"].items():
            if st["set_pairs"][name] == 0:
                continue
            res["sets"][name] = {"objects": st["objects"][name], "pairs": st["set_pairs"][name],
                                 **summarise_histogram(hist, tau, matched_flagged, max_flagged)}
        sets = st["sets"]
        res["separation"] = {
            f"{a}_vs_{b}_auroc": auroc_from_counts(sets[a].obj_counts, sets[b].obj_counts)
            for a, b in (("missed", "detected"), ("invisible", "visible")) if a in sets and b in sets}
        out["conditions"][c] = _clean(res)
    if "day" in out["conditions"] and "night" in out["conditions"]:
        out["day_vs_night"] = distribution_overlap(state["day"]["scores"].histogram(HIST_BINS),
                                                   state["night"]["scores"].histogram(HIST_BINS))
    return out


def compare_sources(manifest: Manifest, sources: Mapping[str, MapSource],
                    detections_by_name: Mapping[str, Detections] | None = None, **kwargs) -> dict[str, Any]:
    """:func:`evaluate_maps` for several map sources: ``{source name: results}``."""
    return {name: evaluate_maps(manifest, src, detections_by_name, **kwargs) for name, src in sources.items()}


__all__ = [
    "CLASS_FOLD",
    "OBJECT_SETS",
    "PAPER_COVERAGE",
    "PAPER_FLAGGED",
    "TEACHER_CONF",
    "MapSource",
    "check_score_map",
    "color_map_source",
    "compare_sources",
    "detected_mask",
    "evaluate_maps",
    "object_sets",
    "summarise_histogram",
    "teacher_detections",
]
