"""FLIR ADAS / FLIR-aligned importer: thermal + color frames paired by frame id, COCO-json thermal boxes.

Default layout, FLIR-aligned (Zhang et al. 2020)::

    JPEGImages/FLIR_XXXXX_PreviewData.jpeg   thermal
    JPEGImages/FLIR_XXXXX_RGB.jpg            color (already registered to the thermal frame)
    Annotations/FLIR_XXXXX_PreviewData.xml   optional, Pascal VOC boxes of the thermal frame

Options describe other layouts: ``thermal_dir``/``color_dir`` (relative to SRC) and ``thermal_suffix``/
``color_suffix`` (a stem must end with it; "" takes every image). FLIR ADAS v1 is ``thermal_dir="train/
thermal_16_bit", thermal_suffix="", color_dir="train/RGB", color_suffix=""`` (16-bit TIFFs are fine); on the
command line ``invismap data import flir SRC DST --option thermal_dir=train/thermal_16_bit --option
thermal_suffix= ...``, in a pipeline config ``data: {format: flir, options: {thermal_dir: ...}}``. A
pair's frame id is the last run of digits in the stem without its suffix; the name is ``FLIR_<digits>``.
Raw FLIR ADAS color frames are larger than the thermal ones and not registered: the import then stops
and asks to register first. ADAS v2 (``images_thermal_train/``, ``video_thermal_test/``, ...) is refused
with a message: its train and val frames are not paired, and its video test frames are paired only by a map
file (``rgb_to_thermal_vid_map.json``) and not registered.

``annotations`` (a path, or one relative to SRC; default ``Annotations`` when SRC has that folder): a COCO
json whose images are the *thermal* frames (matched by frame id), or a folder of Pascal VOC xml named like
the thermal images (FLIR-aligned's own ``Annotations/``). The boxes become thermal labels. Categories map by
name: person 0, bike/bicycle 1, car 2, motor/motorcycle 3, bus 5, truck 7, dog 16; others are dropped (and
counted). Frames absent from the json, or without an xml, are not labelled. ``split`` is written for every
pair (import train and val separately; FLIR-aligned's ``align_train.txt``/``align_validation.txt`` lists
are not read).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from invismap.data.importers.common import (
    check_pair_sizes,
    list_images,
    log_dropped,
    pair_by_stem,
    voc_thermal_labels,
    write_pixel_labels,
)
from invismap.data.manifest import SPLITS, Manifest, Sample, save_manifest
from invismap.errors import InvismapError, file_error

ADAS_V2_FOLDERS = ("images_thermal_train", "images_thermal_val", "video_thermal_test")  # how v2 is published
FLIR_TO_COCO = {"person": 0, "bike": 1, "bicycle": 1, "car": 2, "motor": 3, "motorcycle": 3, "bus": 5,
                "truck": 7, "dog": 16}


def _frame_id(stem: str, suffix: str) -> str | None:
    if not stem.endswith(suffix):
        return None
    digits = re.findall(r"\d+", stem[:len(stem) - len(suffix)])
    return f"FLIR_{digits[-1]}" if digits else None


OPTION_HINT = ("set the importer's thermal_dir / color_dir / thermal_suffix / color_suffix options "
               "(invismap data import flir SRC DST --option thermal_suffix=..., or data.options in a "
               "pipeline config)")


def _by_frame(folder: Path, suffix: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise file_error(folder, "folder not found (FLIR-aligned keeps its frames in JPEGImages/)",
                         OPTION_HINT)
    frames: dict[str, Path] = {}
    for stem, path in list_images(folder).items():
        key = _frame_id(stem, suffix)
        if key in frames:
            raise file_error(path, f"same frame id as {frames[key].name}", "keep one file per frame")
        if key:
            frames[key] = path
    if not frames:
        raise file_error(folder, f"no image names ending in '{suffix}' with a frame number", OPTION_HINT)
    return frames


def _read_coco(path: Path, suffix: str) -> tuple[dict[str, dict], dict[str, list], Counter]:
    """Per frame id: the json's image entry and its ``(class, [x1, y1, x2, y2])`` boxes; dropped counts."""
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        names = {c["id"]: c["name"].strip().lower() for c in coco.get("categories", [])}
        images = {im["id"]: im for im in coco["images"]}
        frames = {_frame_id(Path(im["file_name"]).stem.removesuffix(suffix), ""): im
                  for im in images.values()}
        boxes, dropped = defaultdict(list), Counter()
        for a in coco.get("annotations", []):
            key = _frame_id(Path(images[a["image_id"]]["file_name"]).stem.removesuffix(suffix), "")
            name = names[a["category_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            if name in FLIR_TO_COCO:
                boxes[key].append((FLIR_TO_COCO[name], [x, y, x + w, y + h]))
            else:
                dropped[name] += 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise file_error(path, f"not a readable COCO json ({type(e).__name__}: {str(e)[:100]})",
                         "needs images[id, file_name], annotations[image_id, category_id, bbox], "
                         "categories[id, name]") from None
    return frames, boxes, dropped


def import_flir(src: Path, dst: Path, progress: bool = True, thermal_dir: str = "JPEGImages",
                color_dir: str = "JPEGImages", thermal_suffix: str = "_PreviewData",
                color_suffix: str = "_RGB", annotations: str | Path | None = None,
                split: str = "all", check: str = "decode") -> Manifest:
    """Import FLIR frames into ``dst`` (manifest.csv + labels/thermal); returns the manifest."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if split not in SPLITS:
        raise InvismapError(f"split '{split}' is not one of {', '.join(SPLITS)}")
    cdir, tdir = src / color_dir, src / thermal_dir
    if not (cdir.is_dir() and tdir.is_dir()) and any((src / d).is_dir() for d in ADAS_V2_FOLDERS):
        raise file_error(src, "FLIR ADAS v2 layout (images_thermal_train/, video_thermal_test/, ...) is not "
                              "read: its color and thermal frames are not registered and only the video test "
                              "set is paired (by rgb_to_thermal_vid_map.json)",
                         "use FLIR-aligned (JPEGImages/), or ADAS v1 with the thermal_dir / color_dir "
                         "options (--option thermal_dir=...)")
    pairs = pair_by_stem(_by_frame(cdir, color_suffix), _by_frame(tdir, thermal_suffix), cdir, tdir)
    samples = [Sample(name, c, t, "unknown", split) for name, c, t in pairs]
    sizes = check_pair_sizes(samples, progress=progress, check=check)
    if annotations is None and (src / "Annotations").is_dir():
        annotations = "Annotations"
    if annotations is not None:
        ann = Path(annotations) if Path(annotations).exists() else src / annotations
        if ann.is_dir():
            samples = voc_thermal_labels(samples, sizes, ann, FLIR_TO_COCO, dst, by_thermal_stem=True,
                                         missing_ok=True)
        elif not ann.is_file():
            raise file_error(ann, "annotation file not found",
                             "give the COCO json or the folder of VOC xml of the thermal frames")
        else:
            samples = _coco_labels(samples, sizes, ann, thermal_suffix, dst)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest


def _coco_labels(samples: list[Sample], sizes: dict[str, tuple[int, int]], ann: Path, thermal_suffix: str,
                 dst: Path) -> list[Sample]:
    """``samples`` with thermal labels from the COCO json ``ann`` (frames absent from it stay unlabelled)."""
    samples = list(samples)
    frames, boxes, dropped = _read_coco(ann, thermal_suffix)
    if not frames.keys() & sizes.keys():
        raise file_error(ann, f"none of its {len(frames)} images is one of the {len(samples)} thermal "
                         "frames", "give the json that annotates these frames")
    for i, s in enumerate(samples):
        if s.name not in frames:
            continue  # not labelled
        declared = (frames[s.name].get("width"), frames[s.name].get("height"))
        if all(declared) and tuple(declared) != sizes[s.name]:
            raise file_error(ann, f"image {frames[s.name]['file_name']} is {declared[0]}x{declared[1]} "
                             f"there but {s.thermal.name} is {sizes[s.name][0]}x{sizes[s.name][1]}",
                             "use the json of these thermal frames")
        out = dst / "labels" / "thermal" / f"{s.name}.txt"
        frame = boxes.get(s.name, [])
        write_pixel_labels(out, [b for _, b in frame], [c for c, _ in frame], *sizes[s.name],
                           f"{ann} [{frames[s.name]['file_name']}]")
        samples[i] = replace(s, thermal_labels=out)
    log_dropped(ann, dropped)
    return samples
