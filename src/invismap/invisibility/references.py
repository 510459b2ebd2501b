"""Reference maps a learned invisibility map is judged against; none of them is a product.

- :func:`prior_source`, the **fixed prior**: the mean training target, one map for every image. It never
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
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from invismap.data.dataset import load_boxes
from invismap.data.letterbox import letterbox_params, map_to_original
from invismap.data.manifest import Manifest, Sample
from invismap.detector.base import Detections
from invismap.errors import InvismapError, file_error
from invismap.invisibility.metrics import object_pixel_mask
from invismap.io import atomic_write

PRIOR_FILE = "prior.npy"  # the mean training target, written beside the target cache


def mean_target(manifest: Manifest, target_dir: str | Path, size: int, square: bool = False,
                progress: bool = True) -> np.ndarray:
    """The fixed prior: the mean of the cached targets of ``manifest``'s pairs over the image area.

    Each target (a letterboxed canvas, see :mod:`invismap.invisibility.predictor`) is mapped back to its
    image and resized to the first image's size before averaging, so images of several sizes can be mixed.

    Returns:
        ``(H, W)`` float32 in [0, 1].
    """
    from invismap.invisibility.targets import load_target, target_path
    from invismap.io import read_color

    if len(manifest) == 0:
        raise InvismapError(f"{target_dir}: no pairs to average the training targets over")
    total, shape = None, None
    for s in tqdm(manifest, desc="fixed prior", unit="pair", disable=not progress):
        h, w = read_color(s.color).shape[:2]
        lb = letterbox_params(w, h, size, 32, auto=not square)
        target = map_to_original(load_target(target_path(target_dir, s.name), lb), lb)
        if shape is None:
            shape, total = target.shape, np.zeros(target.shape, np.float64)
        total += cv2.resize(target, shape[::-1], interpolation=cv2.INTER_AREA) if target.shape != shape else target
    return (total / len(manifest)).astype(np.float32)


def save_prior(path: str | Path, prior: np.ndarray) -> Path:
    """Write the prior as a float32 ``.npy`` (atomically)."""
    with atomic_write(Path(path), "wb") as f:
        np.save(f, np.asarray(prior, np.float32))
    return Path(path)


def load_prior(path: str | Path) -> np.ndarray:
    """A prior map from ``prior.npy`` or from the target folder holding it: ``(H, W)`` float32 in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        path = path / PRIOR_FILE
    if not path.is_file():
        raise file_error(path, "no fixed prior here", "run score-pairs (it writes prior.npy beside the targets)")
    try:
        prior = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise file_error(path, f"not a readable .npy map ({str(e)[:120]})", "recompute it") from None
    if prior.ndim != 2 or not np.issubdtype(prior.dtype, np.floating) or not np.isfinite(prior).all() \
            or prior.min() < 0 or prior.max() > 1:
        raise file_error(path, f"expected one (H, W) map of values in [0, 1], got {prior.dtype} {prior.shape}",
                         "recompute it with score-pairs")
    return prior.astype(np.float32)


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


__all__ = ["PRIOR_FILE", "load_prior", "mean_target", "oracle_source", "prior_source", "random_source",
           "save_prior"]
