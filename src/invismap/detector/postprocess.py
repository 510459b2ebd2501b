"""From decoded predictions to boxes: YOLOv5's non-maximum suppression, and one-call image detection.

:func:`non_max_suppression` follows Ultralytics YOLOv5 v6.1 ``utils/general.py`` (score = objectness x
class probability, class-aware NMS, at most ``max_det`` boxes per image). The greedy NMS itself is
OpenCV's ``cv2.dnn.NMSBoxesBatched`` (per class, IoU > ``iou_thres`` suppressed, highest score first),
which matches ``torchvision.ops.batched_nms`` used upstream (torchvision is not a dependency).

Multi-label: upstream ``val.py`` passes ``multi_label=True`` (a box keeps *every* class whose score passes
``conf_thres``: a car that also looks 0.01 like a person is both), ``detect.py`` keeps the best class only.
We default to the best class only (``multi_label=False``), for evaluation too, because

- it is what the detector outputs in use, and what the invisibility maps consume;
- multi-label credits a box with classes it did not choose: on MSRS test (yolov5n, 640, conf 0.001) it
  adds +0.8 to +5.7 AP50 points (mean of person/bicycle/car), mostly to car and bicycle (thermal day:
  car 25.7 -> 36.2, bicycle 6.5 -> 13.0): the same box also counted under a second-best class;
- the project's independent reference measurement (yolov5n on MSRS test) is reproduced to 0.1 AP50 with
  ``multi_label=False`` and not with ``True``.

Pass ``multi_label=True`` (CLI ``--multi-label``) to reproduce YOLOv5 ``val.py`` numbers.

Example:
    >>> dets = detect(model, [rgb_uint8], size=640, conf=0.25)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from invismap.data.letterbox import Letterbox, apply_letterbox, letterbox_params
from invismap.detector.base import Detections, Detector

MAX_NMS = 30000  # upstream: at most this many candidates (highest scores) enter NMS per image
NMS_IOU = 0.45  # upstream detect.py's IoU threshold: the default wherever detections are made or scored


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.25, iou_thres: float = NMS_IOU,
                        classes: Sequence[int] | None = None, max_det: int = 300,
                        multi_label: bool = False,
                        class_fold: Mapping[int, int] | None = None) -> list[torch.Tensor]:
    """YOLOv5 NMS on decoded predictions.

    Args:
        pred: ``(B, N, 5 + nc)`` ``[cx, cy, w, h, obj, class probs...]`` (:meth:`Detector.decode`).
        conf_thres: keep candidates with ``obj * cls > conf_thres`` (and ``obj > conf_thres``).
        iou_thres: suppress a box overlapping a higher-scored box of the same class by IoU > this.
        classes: keep only these class ids (before NMS, as upstream); ``None`` keeps all.
        class_fold: class id -> class id applied to each box's chosen class before ``classes`` filters
            (e.g. :data:`~invismap.data.manifest.CLASS_FOLD`: a box whose best class is truck becomes a
            car instead of being dropped by ``classes=(0, 1, 2)``); ``None``: as upstream.
        max_det: at most this many boxes per image, highest scores first.
        multi_label: one candidate per (box, class) passing ``conf_thres`` (upstream ``val.py``);
            default: one per box with its best class (upstream ``detect.py``; see the module docstring).

    Returns:
        One ``(n, 6)`` float32 tensor per image: ``[x1, y1, x2, y2, score, class]`` in input pixels,
        sorted by decreasing score.
    """
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise ValueError(f"pred must be (B, N, 5 + nc), got {tuple(pred.shape)}")
    out = []
    for x in pred.detach().float().cpu():
        x = x[x[:, 4] > conf_thres]  # objectness alone must already pass
        scores = x[:, 5:] * x[:, 4:5]  # (n, nc) obj * cls
        box = _xywh2xyxy(x[:, :4])
        if multi_label and scores.shape[1] > 1:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            dets = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            dets = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if class_fold:
            folded = dets[:, 5].clone()
            for src, dst in class_fold.items():
                folded[dets[:, 5] == src] = dst
            dets[:, 5] = folded
        if classes is not None:
            dets = dets[torch.isin(dets[:, 5], torch.tensor(list(classes), dtype=torch.float32))]
        if len(dets) > MAX_NMS:
            dets = dets[dets[:, 4].argsort(descending=True)[:MAX_NMS]]
        keep = batched_nms(dets[:, :4], dets[:, 4], dets[:, 5].long(), iou_thres)[:max_det]
        out.append(dets[keep])
    return out


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_thres: float) -> torch.Tensor:
    """Greedy per-class NMS; ``boxes (n, 4)`` xyxy -> kept indices ``(k,)``, by decreasing score."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long)
    b = boxes.double().numpy()
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)  # OpenCV wants (x, y, w, h)
    keep = cv2.dnn.NMSBoxesBatched(xywh, scores.numpy().astype(np.float32),
                                   classes.numpy().astype(np.int32), -np.inf, float(iou_thres))
    return torch.as_tensor(np.asarray(keep, np.int64).reshape(-1))


def _xywh2xyxy(x: torch.Tensor) -> torch.Tensor:
    """``(n, 4)`` center-size to corners."""
    xy, half = x[:, :2], x[:, 2:4] / 2
    return torch.cat((xy - half, xy + half), 1)


def prepare_batch(images: Sequence[np.ndarray], lbs: Sequence[Letterbox]) -> torch.Tensor:
    """Letterbox uint8 images (all to the same canvas) into a ``(B, 3, H, W)`` float tensor in 0..1."""
    canvases = [apply_letterbox(_as_rgb(im), lb) for im, lb in zip(images, lbs)]
    batch = np.stack(canvases).transpose(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
    return torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:  # gray (thermal): the color detector sees it as R = G = B
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images must be (H, W, 3) RGB or (H, W) gray, got {image.shape}")
    return image


@torch.no_grad()
def detect(model: Detector, images: Sequence[np.ndarray], size: int = 640, conf: float = 0.25,
           iou: float = NMS_IOU, batch_size: int = 8, classes: Sequence[int] | None = None,
           max_det: int = 300, multi_label: bool = False, tta_sizes: Sequence[int] = (),
           class_fold: Mapping[int, int] | None = None) -> list[Detections]:
    """Run ``model`` on images and return boxes in original image pixels.

    Each image is letterboxed to ``size`` (longest side) and padded to the next multiple of
    ``model.max_stride`` only (YOLOv5 ``auto=True``: 640x480 stays 640x480), then NMS'd
    (:func:`non_max_suppression`); boxes are mapped back and clipped to the image.

    Args:
        model: any :class:`Detector` (put in ``eval()`` mode by the caller or by ``load_detector``), or an
            :class:`~invismap.detector.onnx_detector.OnnxDetector`.
        images: RGB ``(H, W, 3)`` or gray ``(H, W)`` uint8 arrays, sizes may differ.
        size, conf, iou, classes, max_det, multi_label, class_fold: see :func:`non_max_suppression`.
        batch_size: images per forward pass (images with the same canvas size are batched together).
        tta_sizes: multi-scale test-time augmentation: the image is also run at each of these sizes, and
            every size's candidates, mapped to original pixels, go through one NMS (YOLOv5's ``--augment``
            merges its scales the same way). Costs one forward pass per size.

    Returns:
        One :class:`Detections` per image, in input order.
    """
    if not tta_sizes:  # kept apart: NMS in canvas pixels, as always (mapping first moves boxes by ~1e-4 px)
        results: list[Detections | None] = [None] * len(images)
        for i, pred, lb in _decoded(model, images, size, batch_size):
            d = non_max_suppression(pred[None], conf, iou, classes, max_det, multi_label,
                                    class_fold)[0].numpy()
            results[i] = Detections(lb.boxes_to_original(d[:, :4]), d[:, 4].astype(np.float32),
                                    d[:, 5].astype(np.int64))
        return results  # type: ignore[return-value]
    return merge_candidates(multiscale_candidates(model, images, (size, *tta_sizes), conf, batch_size),
                            images, conf, iou, classes, max_det, multi_label, class_fold)


@torch.no_grad()
def multiscale_candidates(model: Detector, images: Sequence[np.ndarray], sizes: Sequence[int],
                          conf: float = 0.001, batch_size: int = 8) -> list[torch.Tensor]:
    """Every size's decoded predictions for each image, in original pixels, before NMS.

    Only candidates with objectness > ``conf`` are kept: no other can pass :func:`non_max_suppression` at
    ``conf`` or above, so one call serves every NMS setting from ``conf`` up (:func:`merge_candidates`).

    Args:
        model, images, batch_size: as :func:`detect`.
        sizes: letterbox sizes (longest side), each one forward pass.
        conf: the lowest NMS score threshold the candidates will be merged with.

    Returns:
        One ``(N, 5 + nc)`` tensor ``[cx, cy, w, h, obj, class probs...]`` per image, in input order.
    """
    candidates: list[list[torch.Tensor]] = [[] for _ in images]
    for s in sizes:
        for i, pred, lb in _decoded(model, images, s, batch_size):
            candidates[i].append(_to_original(pred[pred[:, 4] > conf], lb))
    return [torch.cat(c) for c in candidates]


def merge_candidates(candidates: Sequence[torch.Tensor], images: Sequence[np.ndarray], conf: float = 0.25,
                     iou: float = NMS_IOU, classes: Sequence[int] | None = None, max_det: int = 300,
                     multi_label: bool = False,
                     class_fold: Mapping[int, int] | None = None) -> list[Detections]:
    """One NMS over each image's :func:`multiscale_candidates`, boxes clipped to its image in ``images``
    (the other arguments as :func:`non_max_suppression`; ``conf`` at least the candidates' own)."""
    out = []
    for im, cand in zip(images, candidates):
        d = non_max_suppression(cand[None], conf, iou, classes, max_det, multi_label, class_fold)[0].numpy()
        h, w = im.shape[:2]
        boxes = np.clip(d[:, :4], 0, [w, h, w, h]).astype(np.float32)
        out.append(Detections(boxes, d[:, 4].astype(np.float32), d[:, 5].astype(np.int64)))
    return out


def _to_original(pred: torch.Tensor, lb: Letterbox) -> torch.Tensor:
    """``(N, 5 + nc)`` decoded predictions with ``cx, cy, w, h`` from canvas to original pixels
    (``x = (x_canvas - pad) / scale``); a new tensor."""
    pred = pred.clone()
    pred[:, 0] -= lb.pad_x
    pred[:, 1] -= lb.pad_y
    pred[:, :4] /= lb.scale
    return pred


def _decoded(model: Detector, images: Sequence[np.ndarray], size: int,
             batch_size: int) -> Iterator[tuple[int, torch.Tensor, Letterbox]]:
    """Yield ``(index, (N, 5 + nc) decoded predictions in canvas pixels, Letterbox)`` for every image."""
    # An OnnxDetector (invismap.detector.onnx_detector) has no parameters and runs on the CPU.
    device = next(model.parameters()).device if isinstance(model, torch.nn.Module) else torch.device("cpu")
    stride = model.max_stride
    size = int(np.ceil(size / stride) * stride)
    lbs = [letterbox_params(im.shape[1], im.shape[0], size, stride, auto=True) for im in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, lb in enumerate(lbs):
        groups.setdefault((lb.height, lb.width), []).append(i)
    for idx in groups.values():
        for k in range(0, len(idx), batch_size):
            chunk = idx[k:k + batch_size]
            x = prepare_batch([images[i] for i in chunk], [lbs[i] for i in chunk]).to(device)
            pred = model(x).detach().float().cpu()
            for i, p in zip(chunk, pred):
                yield i, p, lbs[i]
