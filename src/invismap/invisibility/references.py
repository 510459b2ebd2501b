"""Reference maps a learned invisibility map is judged against; none of them is a product.

- :func:`prior_source`, the **fixed prior**: the mean training target (written by the targets stage,
  :func:`~invismap.invisibility.targets.mean_target`), one map for every image. It never
  looks at the image, so whatever it scores is explained by position in the frame alone (objects sit along
  the horizon); a learned map is worth its *margin* over it.
- :func:`random_source`: uniform noise, the chance level of every metric (coverage = flagged share,
  AUROC 0.5).
- :func:`oracle_source`, the **object oracle** (uses labels): 1 inside every thermal-labelled box, 0
  elsewhere. It is what pure object finding scores: high coverage and AUROC, but no idea which objects the
  color camera sees, so its separations (missed vs detected, invisible vs visible) sit near 0.5.

Example:
    >>> prior = np.full((3, 4), 0.2, np.float32)
    >>> prior_source(prior)(None, np.zeros((6, 8, 3), np.uint8), None).shape
    (6, 8)
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import cv2
import numpy as np

from invismap.data.dataset import load_boxes
from invismap.data.manifest import Sample
from invismap.detector.base import Detections
from invismap.invisibility.metrics import object_pixel_mask


def prior_source(prior: np.ndarray):
    """A map source that returns ``prior`` resized to each image, whatever the image shows."""
    prior = np.asarray(prior, np.float32)

    def source(sample: Sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return prior if prior.shape == (h, w) else cv2.resize(prior, (w, h), interpolation=cv2.INTER_LINEAR)

    source.__name__ = "prior"
    return source


def random_source(seed: int = 0):
    """A map source of uniform noise in [0, 1], the same for the same image name and seed."""

    def source(sample: Sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode())])
        return rng.random(rgb.shape[:2], dtype=np.float32)

    source.__name__ = "random"
    return source


def oracle_source(detections_by_name: Mapping[str, Detections] | None = None, which: str = "all"):
    """The object oracle (uses labels): 1 inside the sample's thermal-labelled boxes, 0 elsewhere.

    Args:
        detections_by_name: the color detector's boxes, needed for ``which='missed'``.
        which: ``'all'`` (every thermal label: pure object finding) or ``'missed'`` (only the labels the
            color detector misses, as :func:`~invismap.invisibility.evaluate.object_sets` defines them: the
            perfect map, used to check the evaluation).
    """
    from invismap.invisibility.evaluate import object_sets

    if which not in ("all", "missed"):
        raise ValueError(f"which must be 'all' or 'missed', got {which!r}")
    if which == "missed" and detections_by_name is None:
        raise ValueError("the missed-object oracle needs the color detector's detections")

    def source(sample: Sample, rgb: np.ndarray, thermal: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if sample.thermal_labels is None:
            return np.zeros((h, w), np.float32)
        _, boxes = load_boxes(sample, w, h)
        if which == "missed":
            boxes = object_sets(boxes, None, detections_by_name[sample.name])["missed"]
        return object_pixel_mask(boxes[:, 1:], h, w).astype(np.float32)

    source.__name__ = "oracle" if which == "all" else "oracle (missed)"
    return source


__all__ = ["oracle_source", "prior_source", "random_source"]
