"""COCO-style average precision of a detector on a pair dataset, per class and per image modality.

:func:`coco_ap` is a pure function over arrays (pycocotools does the matching and the 101-point
interpolated AP, with its standard 100 detections per image and class); :func:`evaluate_detector` reads a
manifest, runs the detector under a :class:`~invismap.detector.protocol.ScoringProtocol` and calls it.
Feeding thermal images with thermal labels, or color images with thermal labels (objects the color camera
may not show), is how the paper measures what the color detector misses.

Example:
    >>> m = load_manifest("runs/msrs/manifest.csv")  # doctest: +SKIP
    >>> evaluate_detector(load_detector("yolov5n"), m, images="color", labels="thermal",
    ...                   condition="night", split="test")["AP50"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from invismap.data.manifest import (
    COCO_NAMES,
    ROAD_CLASSES,
    Manifest,
    read_yolo_labels,
    yolo_to_xyxy,
)
from invismap.detector.base import Detections, Detector
from invismap.detector.protocol import ScoringProtocol
from invismap.errors import InvismapError
from invismap.io import image_size, read_color, read_thermal

log = logging.getLogger(__name__)

MODALITIES = ("color", "thermal")


def coco_ap(ground_truth: Sequence[np.ndarray], detections: Sequence[Detections],
            image_sizes: Sequence[tuple[int, int]], classes: Sequence[int] = ROAD_CLASSES) -> dict:
    """AP50 and AP50:95 per class and their mean over ``classes``, with pycocotools.

    Args:
        ground_truth: per image, ``(N, 5)`` ``[class, x1, y1, x2, y2]`` in pixels.
        detections: per image, :class:`Detections` in the same pixels.
        image_sizes: per image, ``(width, height)``.
        classes: class ids to evaluate; boxes of other classes (truth or detected) are ignored.

    Returns:
        ``{"AP50", "AP50_95": mean over classes that have ground truth (nan if none),
        "classes": {name: {"id", "AP50", "AP50_95", "n_gt", "n_det"}}, "n_images"}``; a class without
        ground truth has ``nan`` APs and is left out of the means. AP values are in 0..1.
    """
    if not len(ground_truth) == len(detections) == len(image_sizes):
        raise ValueError(f"{len(ground_truth)} ground truths, {len(detections)} detections, "
                         f"{len(image_sizes)} image sizes: need one of each per image")
    classes = [int(c) for c in classes]
    images, gt_anns, dt_anns = coco_annotations(ground_truth, detections, image_sizes, classes)
    n_gt = {c: sum(a["category_id"] == c for a in gt_anns) for c in classes}
    n_det = {c: sum(a["category_id"] == c for a in dt_anns) for c in classes}
    ap50, ap = _pycocotools_ap(images, gt_anns, dt_anns, classes) if dt_anns and gt_anns else ({}, {})
    per_class = {}
    for c in classes:
        missing = 0.0 if n_gt[c] else float("nan")  # truth but no detections: AP 0; no truth: undefined
        per_class[_name(c)] = {"id": c, "AP50": ap50.get(c, missing), "AP50_95": ap.get(c, missing),
                               "n_gt": n_gt[c], "n_det": n_det[c]}
    valid = [v for v in per_class.values() if v["n_gt"]]
    return {
        "AP50": float(np.mean([v["AP50"] for v in valid])) if valid else float("nan"),
        "AP50_95": float(np.mean([v["AP50_95"] for v in valid])) if valid else float("nan"),
        "classes": per_class,
        "n_images": len(images),
    }


def coco_annotations(ground_truth: Sequence[np.ndarray], detections: Sequence[Detections],
                     image_sizes: Sequence[tuple[int, int]],
                     classes: Sequence[int]) -> tuple[list, list, list]:
    """COCO ``images``, truth and result annotations (xywh) of ``classes``; arguments as :func:`coco_ap`."""
    images, gt_anns, dt_anns = [], [], []
    for img_id, (gt, det, (w, h)) in enumerate(zip(ground_truth, detections, image_sizes), start=1):
        images.append({"id": img_id, "width": int(w), "height": int(h)})
        for c, x1, y1, x2, y2 in np.asarray(gt, np.float64).reshape(-1, 5):
            if int(c) in classes:
                # ids start at 1: pycocotools treats a matched id of 0 as "unmatched".
                gt_anns.append({"id": len(gt_anns) + 1, "image_id": img_id, "category_id": int(c),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": 0})
        for (x1, y1, x2, y2), s, c in zip(np.asarray(det.boxes, np.float64).reshape(-1, 4), det.scores,
                                          det.classes):
            if int(c) in classes:
                dt_anns.append({"image_id": img_id, "category_id": int(c), "score": float(s),
                                "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return images, gt_anns, dt_anns


def _name(c: int) -> str:
    return COCO_NAMES[c] if 0 <= c < len(COCO_NAMES) else f"class{c}"


def _pycocotools_ap(images: list, gt_anns: list, dt_anns: list,
                    classes: list[int]) -> tuple[dict[int, float], dict[int, float]]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress to stdout
        gt = COCO()
        gt.dataset = {"images": images, "annotations": gt_anns,
                      "categories": [{"id": c, "name": _name(c)} for c in classes]}
        gt.createIndex()
        dt = gt.loadRes(dt_anns)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.catIds = classes
        ev.evaluate()
        ev.accumulate()
    # precision: (T iou thresholds, R recall points, K classes, A areas, M max-dets); area "all", 100 dets.
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ap50, ap = {}, {}
    for k, c in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        if (p > -1).any():  # -1: the class has no ground truth
            ap50[c] = float(p[0][p[0] > -1].mean())
            ap[c] = float(p[p > -1].mean())
    return ap50, ap


@dataclass
class LabelledDetections:
    """One detector's boxes on ``N`` labelled images beside their truths: what :func:`coco_ap` and
    :func:`~invismap.detector.ap_bootstrap.match_at_iou50` take.

    Attributes:
        ground_truth: per image, ``(M, 5)`` ``[class, x1, y1, x2, y2]`` pixels.
        detections: per image, :class:`Detections` in the same pixels.
        image_sizes: per image, ``(width, height)``.
        n_unlabelled: selected pairs skipped because they have no label file.
    """

    ground_truth: list[np.ndarray]
    detections: list[Detections]
    image_sizes: list[tuple[int, int]]
    n_unlabelled: int = 0

    @classmethod
    def pooled(cls, parts: Sequence[LabelledDetections]) -> LabelledDetections:
        """The images of ``parts`` one after another, e.g. cross-validation folds, each scored by its model.

        >>> none = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0))
        >>> a = LabelledDetections([np.zeros((0, 5))], [none], [(64, 48)], n_unlabelled=1)
        >>> both = LabelledDetections.pooled([a, a])
        >>> both.image_sizes, both.n_unlabelled
        ([(64, 48), (64, 48)], 2)
        """
        return cls([t for p in parts for t in p.ground_truth], [d for p in parts for d in p.detections],
                   [s for p in parts for s in p.image_sizes], sum(p.n_unlabelled for p in parts))


def detect_labelled(model: Detector, manifest: Manifest, images: str = "color", labels: str = "color",
                    condition: str | None = None, split: str | None = None,
                    protocol: ScoringProtocol = ScoringProtocol(), conf: float = 0.001,
                    classes: Sequence[int] = ROAD_CLASSES, multi_label: bool = False, batch_size: int = 8,
                    progress: bool = True) -> LabelledDetections:
    """Detect on one modality of a manifest's labelled pairs; arguments and errors as
    :func:`evaluate_detector`, which scores what this returns.

    Returns:
        :class:`LabelledDetections`: the selected pairs that have ``labels``, in manifest order, with their
        truths in the pixels of ``images``.
    """
    for what, v in (("images", images), ("labels", labels)):
        if v not in MODALITIES:
            raise InvismapError(f"--{what} must be one of {', '.join(MODALITIES)}, got {v!r}")
    selected = manifest.select(condition=condition, split=split)
    labelled = [s for s in selected if getattr(s, f"{labels}_labels") is not None]
    if not labelled:
        raise InvismapError(f"{manifest.root}: no pair with {labels} labels for condition={condition}, "
                            f"split={split} ({len(selected)} pairs selected)")
    if len(labelled) < len(selected):
        log.warning("%d of %d pairs have no %s labels and are skipped", len(selected) - len(labelled),
                    len(selected), labels)
    read = read_color if images == "color" else read_thermal
    out = LabelledDetections([], [], [], len(selected) - len(labelled))
    bar = tqdm(total=len(labelled), desc=f"detect {images}", unit="img", disable=not progress, leave=False)
    for k in range(0, len(labelled), batch_size):
        chunk = labelled[k:k + batch_size]
        imgs = [read(getattr(s, images)) for s in chunk]
        out.detections += protocol.detect(model, imgs, conf=conf, classes=classes, batch_size=batch_size,
                                          multi_label=multi_label)
        for s, im in zip(chunk, imgs):
            w, h = im.shape[1], im.shape[0]
            if labels != images and image_size(getattr(s, labels)) != (w, h):
                raise InvismapError(f"{getattr(s, labels)}: {labels} image is "
                                    f"{image_size(getattr(s, labels))}, {images} image is {(w, h)}; "
                                    f"{labels} labels only apply to {images} images of the same size "
                                    "(register the pair first)")
            out.ground_truth.append(yolo_to_xyxy(read_yolo_labels(getattr(s, f"{labels}_labels")), w, h))
            out.image_sizes.append((w, h))
        bar.update(len(chunk))
    bar.close()
    return out


def evaluate_detector(model: Detector, manifest: Manifest, images: str = "color", labels: str = "color",
                      condition: str | None = None, split: str | None = None,
                      protocol: ScoringProtocol = ScoringProtocol(), conf: float = 0.001,
                      classes: Sequence[int] = ROAD_CLASSES, multi_label: bool = False, batch_size: int = 8,
                      progress: bool = True) -> dict:
    """Detect on one modality of a manifest's pairs and score against one modality's labels.

    Args:
        model: a detector (e.g. :func:`~invismap.detector.zoo.load_detector`).
        manifest: the pairs (:func:`~invismap.data.manifest.load_manifest`).
        images: ``"color"`` or ``"thermal"`` (fed as gray replicated to 3 channels).
        labels: ``"color"`` or ``"thermal"`` label files of the same pairs.
        condition, split: keep only these pairs (``None`` = all).
        protocol: how the detector is run (letterbox size, multi-scale sizes, NMS IoU, class folding;
            default 640 alone, IoU 0.45, COCO classes folded onto the labels': truck and bus count as car,
            motorcycle as bicycle, as the datasets label them).
        conf: NMS score threshold (0.001 as YOLOv5's mAP protocol).
        classes: class ids evaluated (default person, bicycle, car); other classes are dropped before NMS.
        multi_label: YOLOv5 ``val.py``'s multi-label NMS (default off: best class per box; see
            :mod:`invismap.detector.postprocess` for why and by how much it differs).
        batch_size: images per forward pass.
        progress: show a tqdm bar.

    Returns:
        :func:`coco_ap`'s dict plus ``"settings"`` (the arguments above, ``protocol``
        as :meth:`~invismap.detector.protocol.ScoringProtocol.settings`) and ``"n_unlabelled"`` (pairs
        skipped because they have no label file for ``labels``).

    Raises:
        InvismapError: bad modality, no labelled pair selected, or color and thermal sizes differ when
            ``images != labels`` (the labels would not be in the evaluated image's pixels).
    """
    found = detect_labelled(model, manifest, images, labels, condition, split, protocol, conf, classes,
                            multi_label, batch_size, progress)
    return evaluation_result(found, evaluation_settings(images, labels, condition, split, protocol, conf,
                                                        classes, multi_label))


def evaluation_settings(images: str, labels: str, condition: str | None, split: str | None,
                        protocol: ScoringProtocol, conf: float, classes: Sequence[int],
                        multi_label: bool) -> dict:
    """How :func:`evaluate_detector` ran (its arguments; ``protocol`` as its ``settings()``), as it records
    them."""
    return {"images": images, "labels": labels, "condition": condition, "split": split,
            **protocol.settings(), "conf": conf, "classes": list(classes), "multi_label": multi_label}


def evaluation_result(found: LabelledDetections, settings: dict) -> dict:
    """:func:`evaluate_detector`'s result for detections made as ``settings`` says
    (:func:`evaluation_settings`)."""
    return {**coco_ap(found.ground_truth, found.detections, found.image_sizes, settings["classes"]),
            "settings": settings, "n_unlabelled": found.n_unlabelled}
