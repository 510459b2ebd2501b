"""Helpers shared by the importers: pairing files, validating pairs, writing labels."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from invismap.data.manifest import Sample
from invismap.errors import InvismapError, file_error
from invismap.io import image_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: Path) -> dict[str, Path]:
    """Images in ``folder`` keyed by file stem; an empty or missing folder is an error."""
    if not folder.is_dir():
        raise file_error(folder, "folder not found", "check the dataset layout")
    images = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise file_error(folder, "no images found", f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return images


def pair_by_stem(color: dict[str, Path], thermal: dict[str, Path], color_dir: Path,
                 thermal_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pair color and thermal images by stem; a color image without thermal twin (or vice versa) is an error."""
    only_c = sorted(set(color) - set(thermal))
    only_t = sorted(set(thermal) - set(color))
    if only_c:
        raise file_error(color[only_c[0]], f"no thermal twin in {thermal_dir}"
                         + (f" (and {len(only_c) - 1} more)" if len(only_c) > 1 else ""),
                         "add the thermal frame or remove the color one")
    if only_t:
        raise file_error(thermal[only_t[0]], f"no color twin in {color_dir}"
                         + (f" (and {len(only_t) - 1} more)" if len(only_t) > 1 else ""),
                         "add the color frame or remove the thermal one")
    return [(k, color[k], thermal[k]) for k in sorted(color)]


def check_pair_sizes(samples: Iterable[Sample], progress: bool = True) -> dict[str, tuple[int, int]]:
    """Decode every image once (catching corrupt files) and require equal color/thermal sizes.

    Returns the (width, height) of each sample.
    """
    from tqdm import tqdm

    sizes = {}
    samples = list(samples)
    for s in tqdm(samples, desc="checking images", unit="pair", disable=not progress, leave=False):
        cw, ch = image_size(s.color)
        tw, th = image_size(s.thermal)
        if (cw, ch) != (tw, th):
            raise file_error(s.thermal, f"size {tw}x{th} differs from its color twin {s.color.name} ({cw}x{ch})",
                             "register the pair first: 'invismap register'")
        sizes[s.name] = (cw, ch)
    return sizes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(N, M)`` between xyxy boxes ``a (N, 4)`` and ``b (M, 4)``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def require(cond: bool, path: Path, problem: str, fix: str = "") -> None:
    if not cond:
        raise file_error(path, problem, fix)


__all__ = ["list_images", "pair_by_stem", "check_pair_sizes", "box_iou", "require", "InvismapError"]
