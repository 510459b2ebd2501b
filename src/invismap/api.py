"""The Python API: invisibility maps and detections inside your own code, numpy in, numpy out.

Example::

    from invismap.api import InvisibilityPredictor, detect, load_detector

    predictor = InvisibilityPredictor("runs/msrs/predictor/predictor.pt")  # or its .onnx export
    heat = predictor(rgb)                  # (H, W) float32 in [0, 1] for an RGB uint8 (H, W, 3), any size
    color = load_detector("yolov5n")       # a name, a checkpoint or an .onnx export
    thermal = load_detector("runs/msrs/distill/thermal_detector.pt")
    found = detect(thermal, ir)            # ir: (H, W) uint8
    # found: Detections, boxes (N, 4) xyxy px, scores, classes

Letterboxing, normalisation and batching are done here, as the command line does them
(``invismap predict``, ``invismap detect`` are thin layers over the same functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from invismap.detector.base import Detections
from invismap.detector.postprocess import NMS_IOU
from invismap.detector.postprocess import detect as detect_batch
from invismap.detector.zoo import load_inference_detector
from invismap.invisibility.predict import load_any_predictor, predict_images


class InvisibilityPredictor:
    """The color-only invisibility map of a trained predictor (``predictor.pt`` or its ONNX export).

    Args:
        path: ``predictor.pt`` (PyTorch, U-Net or neck head) or ``predictor.onnx`` (ONNX Runtime, CPU).
        size: letterbox size (longest side); default the size it was trained at.
    """

    def __init__(self, path: str | Path, size: int | None = None):
        self.model, self.meta = load_any_predictor(path)
        self.size = int(size or self.meta.get("input_size", 640))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` -> ``(H, W)`` float32 in [0, 1]: P(an object here is invisible in
        color)."""
        return self.maps([rgb])[0]

    def maps(self, images: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """The maps of several RGB images (sizes may differ), batched."""
        return predict_images(self.model, images, self.size, batch_size)


def load_detector(name_or_path: str | Path) -> Any:
    """A detector for inference: a registered name (``yolov5n``), a checkpoint (the distilled
    ``thermal_detector.pt``, a YOLOv5 ``.pt``, Darknet ``.weights``) or an ``.onnx`` export."""
    return load_inference_detector(name_or_path)


def detect(detector: Any, image: np.ndarray | Sequence[np.ndarray], size: int = 640, conf: float = 0.25,
           iou: float = NMS_IOU, tta_sizes: Sequence[int] = ()) -> Detections | list[Detections]:
    """Boxes in the image's pixels for one uint8 image (RGB ``(H, W, 3)`` or thermal/gray ``(H, W)``), or a
    list of :class:`Detections` for a list of images. ``tta_sizes``: also detect at these sizes, merged
    before NMS (multi-scale test-time augmentation)."""
    if isinstance(image, np.ndarray):
        return detect_batch(detector, [image], size=size, conf=conf, iou=iou, tta_sizes=tta_sizes)[0]
    return detect_batch(detector, list(image), size=size, conf=conf, iou=iou, tta_sizes=tta_sizes)


__all__ = ["Detections", "InvisibilityPredictor", "detect", "load_detector"]
