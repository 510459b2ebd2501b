"""Map-guided fusion of color and thermal detections: trust the color camera where the map says it sees.

The paper proposes the invisibility map ``m`` (per pixel, the probability that an object there is invisible to
the color camera) as a confidence map for fusing sensors. Each color box ``b`` gets a weight from the map's
mean ``m_b`` inside it (:func:`box_map_means`),

    w(b) = c * trust(m_b),   trust(m) = 1 - alpha * m      (form "linear", alpha in [0, 1])
                             trust(m) = (1 - m) ** alpha   (form "power",  alpha >= 0)

its score is multiplied by ``w(b)``, every thermal box keeps weight 1 (or, with a thermal boost ``beta > 0``,
``1 + beta * m_b``: a thermal box where the color camera is blind is not penalised for the color detector's
silence), and the two sets are merged per class by weighted boxes fusion
(``ensemble_boxes.weighted_boxes_fusion``, boxes normalised to [0, 1]) or by score-aware NMS. Plain fusion
(one constant weight ``c`` for every color box) is the same function with ``alpha = beta = 0``, or with a
constant map ``m0`` and ``beta = 0`` (then ``c * trust(m0)`` is the constant).

A per-box weight on the scores is WBF's per-model weight made per box: with ``conf_type="avg"`` WBF multiplies
each score by its model's weight and divides every fused score by the sum of the weights, so model weights
``[c, 1]`` and color scores scaled by ``c`` with weights ``[1, 1]`` give the same boxes with every score
scaled by the same factor ``2 / (1 + c)``: the same ranking, the same AP.

Example:
    >>> from invismap.detector.base import Detections
    >>> color = Detections(np.array([[10, 10, 30, 50]], np.float32), np.array([0.8], np.float32),
    ...                    np.array([0]))
    >>> thermal = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    >>> heat = np.zeros((60, 80), np.float32); heat[:, :40] = 1.0  # the color camera is blind on the left
    >>> fuse_with_map(color, thermal, heat, FusionParams(map_strength=1.0)).scores.tolist()  # weight 0
    []
    >>> # plain fusion: WBF's average over two detectors halves a box only one of them found
    >>> plain = fuse_with_map(color, thermal, None, FusionParams(), image_size=(80, 60))
    >>> plain.scores.astype(float).round(2).tolist()
    [0.4]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from invismap.detector.base import Detections

FORMS = ("linear", "power")
METHODS = ("wbf", "nms")


@dataclass(frozen=True)
class FusionParams:
    """How color and thermal boxes are weighted and merged.

    Args:
        color_weight: ``c``, the weight of every color box before the map (thermal boxes weigh 1).
        map_strength: ``alpha``; 0 ignores the map (plain constant-weight fusion).
        form: ``"linear"`` (``1 - alpha * m``, alpha in [0, 1]) or ``"power"`` (``(1 - m) ** alpha``).
        thermal_boost: ``beta``; each thermal box weighs ``1 + beta * m_b`` (0: every thermal box weighs 1).
        method: ``"wbf"`` (weighted boxes fusion) or ``"nms"`` (score-aware NMS over both sets).
        iou_thr: boxes of one class overlapping by more than this are one object (WBF cluster,
            NMS suppression).
        skip_box_thr: boxes whose weighted score is below this are dropped before merging.
    """

    color_weight: float = 1.0
    map_strength: float = 0.0
    form: str = "linear"
    thermal_boost: float = 0.0
    method: str = "wbf"
    iou_thr: float = 0.55
    skip_box_thr: float = 0.0

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        upper = 1.0 if self.form == "linear" else math.inf
        checks = (("color_weight", self.color_weight, 0.0, math.inf),
                  ("map_strength", self.map_strength, 0.0, upper),
                  ("thermal_boost", self.thermal_boost, 0.0, math.inf), ("iou_thr", self.iou_thr, 0.0, 1.0),
                  ("skip_box_thr", self.skip_box_thr, 0.0, 1.0))
        for name, v, lo, hi in checks:
            if not (math.isfinite(v) and lo <= v <= hi):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v}")


def box_map_means(invisibility_map: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean of the map inside each box (0 for a box with no pixel inside the image).

    Args:
        invisibility_map: ``(H, W)`` in [0, 1].
        boxes: ``(N, 4)`` xyxy pixel boxes in the map's pixels.

    Returns:
        ``(N,)`` float64.

    Example:
        >>> box_map_means(np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[1, 0, 2, 2], [0, 0, 2, 2]])).tolist()
        [1.0, 0.5]
    """
    from invismap.invisibility.metrics import box_means

    if np.ndim(invisibility_map) != 2:
        raise ValueError(f"invisibility map must be (H, W), got shape {np.shape(invisibility_map)}")
    return np.nan_to_num(box_means(invisibility_map, np.asarray(boxes).reshape(-1, 4)), nan=0.0)


def trust(map_means: np.ndarray, form: str = "linear", strength: float = 1.0) -> np.ndarray:
    """How much the color camera is trusted at map values ``m``: 1 where it sees, less where it may not.

    Example:
        >>> trust(np.array([0.0, 0.5, 1.0]), "linear", 0.5).tolist()
        [1.0, 0.75, 0.5]
        >>> trust(np.array([0.0, 0.5, 1.0]), "power", 2.0).tolist()
        [1.0, 0.25, 0.0]
    """
    m = np.clip(np.asarray(map_means, np.float64), 0.0, 1.0)
    if form == "linear":
        return 1.0 - strength * m
    if form == "power":
        return (1.0 - m) ** strength
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def color_box_weights(map_means: np.ndarray, params: FusionParams) -> np.ndarray:
    """``(N,)`` weights ``c * trust(m_b)`` of the color boxes from their map means ``(N,)``."""
    return params.color_weight * trust(map_means, params.form, params.map_strength)


def thermal_box_weights(map_means: np.ndarray, params: FusionParams) -> np.ndarray:
    """``(M,)`` weights ``1 + beta * m_b`` of the thermal boxes from their map means ``(M,)``."""
    return 1.0 + params.thermal_boost * np.clip(np.asarray(map_means, np.float64), 0.0, 1.0)


def fuse_detections(color: Detections, thermal: Detections, color_weights: np.ndarray,
                    image_size: tuple[int, int], params: FusionParams,
                    thermal_weights: np.ndarray | None = None) -> Detections:
    """Merge color boxes (scores times ``color_weights``) and thermal boxes (times ``thermal_weights``).

    Args:
        color, thermal: detections of one registered pair, both in the same pixels.
        color_weights: ``(N,)`` weight of each color box (:func:`color_box_weights`).
        image_size: ``(width, height)`` of the pair, to normalise boxes for WBF.
        params: method, IoU and skip thresholds (the weights are already in ``color_weights``).
        thermal_weights: ``(M,)`` weight of each thermal box (:func:`thermal_box_weights`); None: all 1.

    Returns:
        Fused :class:`Detections` in the same pixels, sorted by decreasing score. WBF's ``"avg"`` scores: a
        box one detector alone found keeps half its weighted score.
    """
    weights = np.asarray(color_weights, np.float64).reshape(-1)
    t_weights = np.ones(len(thermal)) if thermal_weights is None else np.asarray(thermal_weights, np.float64)
    for kind, w, d in (("color", weights, color), ("thermal", t_weights.reshape(-1), thermal)):
        if len(w) != len(d):
            raise ValueError(f"{len(w)} weights for {len(d)} {kind} boxes")
    sets = [(color.boxes, color.scores * weights, color.classes),
            (thermal.boxes, thermal.scores * t_weights, thermal.classes)]
    sets = [_kept(b, s, c, params.skip_box_thr) for b, s, c in sets]
    if params.method == "nms":
        return _score_aware_nms(sets, params.iou_thr)
    return _weighted_boxes_fusion(sets, image_size, params.iou_thr)


def fuse_with_map(color: Detections, thermal: Detections, invisibility_map: np.ndarray | None,
                  params: FusionParams, image_size: tuple[int, int] | None = None) -> Detections:
    """:func:`fuse_detections` with each box weighted by the map inside it.

    Args:
        invisibility_map: ``(H, W)`` in [0, 1] in the pair's pixels, or None for plain fusion (map 0).
        image_size: ``(width, height)``; taken from the map when None (required without a map).
    """
    if invisibility_map is None:
        if image_size is None:
            raise ValueError("give image_size when fusing without a map")
        means, t_means = np.zeros(len(color)), np.zeros(len(thermal))
    else:
        means = box_map_means(invisibility_map, color.boxes)
        t_means = box_map_means(invisibility_map, thermal.boxes)
        image_size = image_size or (invisibility_map.shape[1], invisibility_map.shape[0])
    return fuse_detections(color, thermal, color_box_weights(means, params), image_size, params,
                           thermal_box_weights(t_means, params))


def _kept(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
          thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes with a positive score of at least ``thr`` (a zero score carries no weight in WBF's average)."""
    keep = (scores > 0) & (scores >= thr)
    return (np.asarray(boxes, np.float64).reshape(-1, 4)[keep], np.asarray(scores, np.float64)[keep],
            np.asarray(classes, np.int64)[keep])


def _weighted_boxes_fusion(sets, image_size: tuple[int, int], iou_thr: float) -> Detections:
    from ensemble_boxes import weighted_boxes_fusion

    w, h = image_size
    scale = np.array([w, h, w, h], np.float64)
    boxes, scores, labels = [], [], []
    for b, s, c in sets:
        b = np.clip(b / scale, 0.0, 1.0)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        boxes.append(b[area > 0])  # WBF warns about and skips zero-area boxes: drop them quietly here
        scores.append(s[area > 0])
        labels.append(c[area > 0])
    if not sum(len(s) for s in scores):
        return _empty()
    fused, fused_scores, fused_labels = weighted_boxes_fusion(boxes, scores, labels, weights=[1.0, 1.0],
                                                              iou_thr=iou_thr, skip_box_thr=0.0,
                                                              conf_type="avg")
    return Detections((np.asarray(fused) * scale).astype(np.float32), np.asarray(fused_scores, np.float32),
                      np.asarray(fused_labels).astype(np.int64))


def _score_aware_nms(sets, iou_thr: float) -> Detections:
    from invismap.detector.postprocess import batched_nms

    boxes = np.concatenate([b for b, _, _ in sets])
    scores = np.concatenate([s for _, s, _ in sets])
    classes = np.concatenate([c for _, _, c in sets])
    keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float32)),
                       torch.from_numpy(classes), iou_thr).numpy()
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32), classes[keep])


def _empty() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


__all__ = ["FORMS", "METHODS", "FusionParams", "box_map_means", "color_box_weights", "fuse_detections",
           "fuse_with_map", "thermal_box_weights", "trust"]
