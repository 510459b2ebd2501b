"""Detectors: the frozen color teacher (YOLOv5, Darknet models), NMS, detection and COCO evaluation.

Example:
    >>> from invismap.detector import detect, load_detector
    >>> dets = detect(load_detector("yolov5n"), [rgb_uint8])  # doctest: +SKIP
"""

from invismap.detector.base import Detections, Detector
from invismap.detector.evaluate import coco_ap, evaluate_detector
from invismap.detector.postprocess import detect, non_max_suppression
from invismap.detector.protocol import ScoringProtocol
from invismap.detector.yolov5 import YOLOv5, YOLOv5Config
from invismap.detector.zoo import load_detector, register_kind

__all__ = [
    "Detections",
    "Detector",
    "ScoringProtocol",
    "YOLOv5",
    "YOLOv5Config",
    "coco_ap",
    "detect",
    "evaluate_detector",
    "load_detector",
    "non_max_suppression",
    "register_kind",
]
