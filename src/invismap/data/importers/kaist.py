"""KAIST Multispectral Pedestrian (Hwang et al., CVPR 2015) importer.

Layout (``SRC`` may also hold it under ``images/``, as the official ``kaist-rgbt`` folder does)::

    setXX/VYYY/visible/IZZZZZ.jpg    color
    setXX/VYYY/lwir/IZZZZZ.jpg       thermal (beam-splitter aligned with the color frame)
    annotations/setXX/VYYY/IZZZZZ.txt                    optional, bbGt: '% bbGt version=3' header, then
    annotations/setXX/VYYY/{visible,lwir}/IZZZZZ.txt     'label x y w h ...' lines (pixels, top-left + size)

Names are ``setXX_VYYY_IZZZZZ``. Condition and split follow KAIST: sets 00-02 and 06-08 are day, 03-05 and
09-11 night; sets 00-05 train, 06-11 test. Timestamp = frame index / 20 (KAIST records at 20 fps), in seconds
from the start of the video VYYY, so temporal neighbours stay comparable within one video.

Labels: the original single annotation per frame was drawn looking at both (aligned) images and marks every
pedestrian present, so it becomes the *thermal* label (objects present); per-modality annotations (the
``visible``/``lwir`` subfolders of paired re-annotations) become color and thermal labels. ``person``,
``person?`` and ``people`` map to COCO person (0). ``cyclist`` also maps to person: KAIST's cyclist box is
rider-sized and a COCO detector reports the rider as a person. KAIST's benchmark ignores ``people``,
``person?`` and ``cyclist``; we keep them because an object is present either way. Other labels are dropped
(and counted). Frames without an annotation file are not labelled.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from invismap.data.importers.common import (
    check_pair_sizes,
    list_images,
    log_dropped,
    pair_by_stem,
    write_pixel_labels,
)
from invismap.data.manifest import Manifest, Sample, save_manifest
from invismap.errors import InvismapError, file_error

KAIST_TO_COCO = {"person": 0, "person?": 0, "people": 0, "cyclist": 0}
FPS = 20.0
NIGHT_SETS = {3, 4, 5, 9, 10, 11}


def read_bbgt(path: Path, dropped: Counter) -> tuple[list[list[float]], list[int]]:
    """Pixel xyxy boxes and COCO classes of a bbGt txt file (unknown labels counted in ``dropped``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise file_error(path, "cannot read the annotation as text") from None
    boxes, classes = [], []
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts or parts[0].startswith("%"):
            continue
        try:
            x, y, w, h = (float(v) for v in parts[1:5])
        except ValueError:
            raise InvismapError(f"{path}:{lineno}: expected 'label x y w h ...', "
                                f"got '{line.strip()}'") from None
        if parts[0] not in KAIST_TO_COCO:
            dropped[parts[0]] += 1
            continue
        boxes.append([x, y, x + w, y + h])
        classes.append(KAIST_TO_COCO[parts[0]])
    return boxes, classes


def import_kaist(src: Path, dst: Path, progress: bool = True, check: str = "decode") -> Manifest:
    """Import a KAIST folder into ``dst`` (manifest.csv + labels); returns the manifest."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    images = src / "images" if (src / "images").is_dir() else src
    videos = sorted(v for v in images.glob("set*/V*")
                    if v.is_dir() and re.fullmatch(r"set\d\d", v.parent.name))
    if not videos:
        raise file_error(images, "no setXX/VYYY folders found", "point at the KAIST root (set00, set01 ...)")
    samples = []
    for video in videos:
        set_id = int(video.parent.name[3:])
        cdir, tdir = video / "visible", video / "lwir"
        layout = "KAIST keeps setXX/VYYY/visible and setXX/VYYY/lwir"
        for stem, c, t in pair_by_stem(list_images(cdir, layout), list_images(tdir, layout), cdir, tdir):
            frame = re.fullmatch(r"I(\d+)", stem)
            if not frame:
                raise file_error(c, "name is not IZZZZZ", "KAIST frames are named I00000.jpg, I00001.jpg ...")
            condition, split = "night" if set_id in NIGHT_SETS else "day", "train" if set_id <= 5 else "test"
            samples.append(Sample(f"{video.parent.name}_{video.name}_{stem}", c, t, condition, split,
                                  int(frame.group(1)) / FPS))
    sizes = check_pair_sizes(samples, progress=progress, check=check)
    ann_root, dropped = src / "annotations", Counter()
    for i, s in enumerate(samples):
        set_name, video, stem = s.name.split("_")
        folder = ann_root / set_name / video
        sources = {"thermal": folder / f"{stem}.txt"}
        if (folder / "visible").is_dir() or (folder / "lwir").is_dir():
            sources = {"color": folder / "visible" / f"{stem}.txt",
                       "thermal": folder / "lwir" / f"{stem}.txt"}
        for modality, txt in sources.items():
            if not txt.is_file():
                continue  # not annotated
            boxes, classes = read_bbgt(txt, dropped)
            out = dst / "labels" / modality / f"{s.name}.txt"
            write_pixel_labels(out, boxes, classes, *sizes[s.name], txt)
            s = replace(s, **{f"{modality}_labels": out})
        samples[i] = s
    log_dropped(ann_root, dropped)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
