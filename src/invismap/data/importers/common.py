"""Helpers shared by the importers: pairing files, validating pairs, writing labels."""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from invismap.data.importers import CHECKS
from invismap.data.manifest import Sample, write_yolo_labels
from invismap.errors import InvismapError, file_error
from invismap.io import read_color, read_thermal

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: Path, layout: str = "") -> dict[str, Path]:
    """Images in ``folder`` keyed by file stem; an empty or missing folder, or two images of one stem
    (``a.png`` and ``a.jpg``: which is the pair's?), is an error. ``layout`` says, for a missing folder, where
    the importer looks (e.g. ``"RoadScene keeps crop_LR_visible/ and cropinfrared/ side by side"``)."""
    if not folder.is_dir():
        raise file_error(folder, "folder not found", f"{layout}; point at that folder" if layout
                         else "check the dataset layout")
    images: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in images:
                raise file_error(folder, f"{images[p.stem].name} and {p.name} share a name",
                                 "keep one of them")
            images[p.stem] = p
    if not images:
        raise file_error(folder, "no images found", f"expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return images


def pair_by_stem(color: dict[str, Path], thermal: dict[str, Path], color_dir: Path,
                 thermal_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pair color and thermal images by stem; a color image without thermal twin (or vice versa) is an
    error."""
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


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header alone (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise file_error(path, "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise file_error(path, f"not a readable image ({type(e).__name__})", "re-copy or remove it") from None


def check_pair_sizes(samples: Iterable[Sample], progress: bool = True,
                     check: str = "decode") -> dict[str, tuple[int, int]]:
    """Check every pair's images and require equal color/thermal sizes.

    ``check="decode"`` reads every image once with the readers training uses (catching corrupt files, wrong
    channel counts and bit depths); ``"header"`` reads only each file's header (its format and size), ~15x
    faster for 160x120 PNGs, ~70x or more for 640x480 ones: a file whose pixel data is corrupt, or of the
    wrong depth, is then refused when training first reads it (:func:`invismap.data.dataset.load_pair`), not
    here. False-color thermal frames are refused when read for training, not here, either way.

    Returns the (width, height) of each sample.
    """
    from tqdm import tqdm

    if check not in CHECKS:
        raise InvismapError(f"image check '{check}' is not one of {', '.join(CHECKS)}")
    sizes = {}
    samples = list(samples)
    desc = "checking images" if check == "decode" else "reading image sizes"
    for s in tqdm(samples, desc=desc, unit="pair", disable=not progress, leave=False):
        if check == "decode":
            ch, cw = read_color(s.color).shape[:2]
            th, tw = read_thermal(s.thermal, refuse_palette=False).shape[:2]
        else:
            (cw, ch), (tw, th) = image_size(s.color), image_size(s.thermal)
        if (cw, ch) != (tw, th):
            raise file_error(s.thermal,
                             f"size {tw}x{th} differs from its color twin {s.color.name} ({cw}x{ch})",
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




log = logging.getLogger(__name__)


def read_voc(path: Path) -> tuple[tuple[int, int] | None, list[tuple[str, list[float]]]]:
    """A VOC xml's declared ``(width, height)`` (None if absent) and its ``(class, [x1, y1, x2, y2])``s."""
    try:
        root = ET.parse(path).getroot()
        size = root.find("size")
        wh = None if size is None else tuple(int(float(size.findtext(k))) for k in ("width", "height"))
        objects = [(obj.findtext("name", "").strip(),
                    [float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
                   for obj in root.iter("object")]
    except (ET.ParseError, OSError, AttributeError, TypeError, ValueError, OverflowError) as e:
        raise file_error(path, f"not a readable Pascal VOC annotation ({type(e).__name__})",
                         "each <object> needs <name> and <bndbox> with xmin/ymin/xmax/ymax") from None
    return (wh if wh and all(wh) else None), objects


def write_pixel_labels(out: Path, boxes: list, classes: list, width: int, height: int,
                       source: str | Path) -> None:
    """Check pixel xyxy ``boxes`` against a ``width`` x ``height`` image, then write them as YOLO txt.

    Overshoot of up to 5% of the image is annotation slop and is clipped; more, an empty/inverted box or a
    non-number means the labels belong to another image size or are corrupt, and raises naming ``source``.
    """
    try:
        arr = np.asarray(boxes, float)
        if arr.size and (arr.ndim != 2 or arr.shape[1] != 4):
            raise ValueError(f"shape {arr.shape}")
    except (ValueError, TypeError) as e:
        raise file_error(source, f"boxes must be lists of 4 numbers [x1, y1, x2, y2] ({str(e)[:80]})",
                         "fix or delete the malformed box") from None
    arr = arr.reshape(-1, 4)
    tol = 0.05 * max(width, height)
    for x1, y1, x2, y2 in arr:
        if not (np.isfinite([x1, y1, x2, y2]).all() and x1 < x2 and y1 < y2 and x1 >= -tol and y1 >= -tol
                and x2 <= width + tol and y2 <= height + tol):
            raise file_error(source, f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] is out of range for its "
                             f"{width}x{height} image", "fix or delete that box")
    write_yolo_labels(out, arr, np.asarray(classes, int), width, height)


def hash_split(name: str, test_fraction: float) -> str:
    """Deterministic ``train``/``test`` split of a sample name (same answer on every machine and run)."""
    frac = float(test_fraction)
    if not 0 < frac < 1:
        raise InvismapError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    return "test" if int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32 < frac else "train"


def log_dropped(source: Path, dropped: Counter) -> None:
    if dropped:
        log.warning("%s: dropped %d boxes of classes with no COCO equivalent (%s)", source,
                    sum(dropped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())))


def voc_thermal_labels(samples: list[Sample], sizes: dict[str, tuple[int, int]], ann_dir: Path,
                       class_map: dict[str, int], dst: Path, by_thermal_stem: bool = False,
                       missing_ok: bool = False) -> list[Sample]:
    """``samples`` with thermal labels converted from ``ann_dir/NAME.xml`` (one xml per pair required).

    ``by_thermal_stem``: the xml is named like the thermal image instead of the pair. ``missing_ok``: a pair
    without xml is left unlabelled (but at least one pair must have one). Class names match ``class_map``
    case-insensitively; others are dropped and counted in a warning.
    """
    out_samples, dropped = [], Counter()
    for s in samples:
        xml = ann_dir / f"{s.thermal.stem if by_thermal_stem else s.name}.xml"
        if missing_ok and not xml.is_file():
            out_samples.append(s)  # not labelled
            continue
        if not xml.is_file():
            raise file_error(xml, f"annotation missing for pair {s.name}", "every pair needs its xml")
        declared, objects = read_voc(xml)
        if declared and declared != sizes[s.name]:
            raise file_error(xml, f"declares a {declared[0]}x{declared[1]} image but {s.thermal.name} is "
                             f"{sizes[s.name][0]}x{sizes[s.name][1]}", "use the xml that matches the image")
        keep = [(class_map[c.lower()], b) for c, b in objects if c.lower() in class_map]
        dropped.update(c for c, _ in objects if c.lower() not in class_map)
        out = dst / "labels" / "thermal" / f"{s.name}.txt"
        write_pixel_labels(out, [b for _, b in keep], [c for c, _ in keep], *sizes[s.name], xml)
        out_samples.append(replace(s, thermal_labels=out))
    if samples and not any(s.thermal_labels for s in out_samples):
        first = samples[0].thermal.stem if by_thermal_stem else samples[0].name
        raise file_error(ann_dir, f"holds no xml for these frames (e.g. {first}.xml)",
                         "give the folder of annotations for these images")
    log_dropped(ann_dir, dropped)
    return out_samples


