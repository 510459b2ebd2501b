"""How detectors are run when they are scored or fused: one protocol, the same for every detector compared.

A detector's AP50 depends on how it is run as much as on its weights (on MSRS's test nights a distilled
soup reads 54.5 at 640 alone and 64.9 with six sizes and NMS IoU 0.4), so every stage that scores or fuses
detectors takes one :class:`ScoringProtocol` and runs every detector through :meth:`ScoringProtocol.detect`.

Example:
    >>> p = ScoringProtocol(tta_sizes=(416, 1280), iou=0.4)
    >>> print(p.describe())
    sizes 640 + [416, 1280] merged before NMS, NMS IoU 0.4, truck/bus -> car, motorcycle -> bicycle
    >>> p.settings()["class_fold"]
    {'3': 1, '5': 2, '7': 2}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from invismap.data.manifest import CLASS_FOLD, ROAD_CLASSES
from invismap.detector.base import Detections, Detector
from invismap.detector.postprocess import NMS_IOU, detect


@dataclass(frozen=True)
class ScoringProtocol:
    """Letterbox ``size`` (longest side), extra ``tta_sizes`` whose candidates are merged before one NMS
    (multi-scale test-time augmentation, :func:`~invismap.detector.postprocess.detect`), the NMS ``iou``
    threshold, and whether COCO classes are folded onto the labels' (truck, bus -> car; motorcycle ->
    bicycle: :data:`~invismap.data.manifest.CLASS_FOLD`) or kept strict."""

    size: int = 640
    tta_sizes: tuple[int, ...] = ()
    iou: float = NMS_IOU
    fold_classes: bool = True

    def __post_init__(self):  # lists from configs and command lines become a hashable tuple, numbers JSON's
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "tta_sizes", tuple(int(s) for s in self.tta_sizes))
        object.__setattr__(self, "iou", float(self.iou))

    @property
    def class_fold(self) -> Mapping[int, int] | None:
        """COCO class -> label class applied before NMS (:data:`CLASS_FOLD`), or ``None`` for strict."""
        return CLASS_FOLD if self.fold_classes else None

    def detect(self, model: Detector, images: Sequence[np.ndarray], conf: float = 0.001,
               classes: Sequence[int] | None = ROAD_CLASSES, batch_size: int = 8,
               multi_label: bool = False) -> list[Detections]:
        """:func:`~invismap.detector.postprocess.detect` under this protocol. Unlike ``detect``'s, the
        defaults are for scoring: conf 0.001 (YOLOv5's mAP protocol) and only the road classes
        (``classes=None``: every class)."""
        return detect(model, images, size=self.size, conf=conf, iou=self.iou, batch_size=batch_size,
                      classes=classes, multi_label=multi_label, tta_sizes=self.tta_sizes,
                      class_fold=self.class_fold)

    def settings(self) -> dict[str, Any]:
        """The protocol as JSON-ready values (the fold as ``{"coco id": label id}``), for results files and
        the fusion cache's key (``detections.npz`` files made before this class had these same keys)."""
        return {"size": self.size, "tta_sizes": list(self.tta_sizes), "iou": self.iou,
                "class_fold": {str(k): v for k, v in (self.class_fold or {}).items()}}

    def record(self) -> dict[str, Any]:
        """The protocol as results files name it (``detector.json``, ``fusion.json``, the experiments'
        ``table.json``; ``evaluate``'s config keys), read back by the report and ``invismap detect``; the
        letterbox size is recorded beside it.

        >>> ScoringProtocol(tta_sizes=(416,), iou=0.4).record()
        {'tta_sizes': [416], 'fold_classes': True, 'nms_iou': 0.4}
        """
        return {"tta_sizes": list(self.tta_sizes), "fold_classes": self.fold_classes, "nms_iou": self.iou}

    def describe(self) -> str:
        """One line for tables and reports."""
        sizes = f"sizes {self.size} + {list(self.tta_sizes)} merged before NMS" if self.tta_sizes else \
            f"size {self.size}"
        fold = "truck/bus -> car, motorcycle -> bicycle" if self.fold_classes else "strict COCO classes"
        return f"{sizes}, NMS IoU {self.iou}, {fold}"
