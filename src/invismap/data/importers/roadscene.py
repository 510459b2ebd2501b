"""RoadScene (Xu et al., U2Fusion, TPAMI 2020) importer.

Layout: ``crop_LR_visible/NAME.jpg`` (color) and ``cropinfrared/NAME.jpg`` (thermal), pixel-aligned crops of
FLIR ADAS frames (NAME is ``FLIR_xxxxx``). Optional ``_meta/`` (added by invismap's shared assets, not part of
RoadScene itself):

- ``roadscene_meta.csv``: one row per frame with ``name``, ``flir_aligned_split``, ``daynight`` (the
  condition: day/night/unknown), ``crop_w``, ``crop_h``, ``n_boxes_in_crop``. A frame is *annotated* when
  ``flir_aligned_split`` is set: it is in the FLIR-aligned split lists, whose thermal frames FLIR labelled.
- ``roadscene_flir_boxes_crop.json``: ``{"boxes": {NAME: [{"category": "car", "xyxy_crop": [x1, y1, x2, y2]},
  ...]}}``, FLIR's thermal annotations mapped into crop pixels. They become *thermal* labels (person 0,
  bike -> bicycle 1, car 2); an annotated frame without boxes gets an empty file, other frames none.

There are no color labels. RoadScene has no split of its own; this one is a fixed rule (:func:`drive_split`),
so that every user gets the same: frames are cut into *drives* of ``DRIVE_FRAMES`` consecutive FLIR frame
numbers (``FLIR_04208`` and ``FLIR_04229`` share drive ``FLIR/16``; ``FLIR_video_*`` frames count apart), and
a drive goes whole to one side, so neighbouring frames stay together (except two that happen to sit on either
side of a 250-frame boundary). Every drive that
holds a night frame is test (distillation uses day pairs, so night pairs need no training side); of the
others, a fraction ``test_fraction`` (by a hash of the drive's name) is test. With the shared files: train 45
day and 23 unknown pairs, test 23 day, 40 night and 90 unknown. ``test_fraction=None`` puts every pair in
split ``all``.
Example: ``import_roadscene(Path("assets/data/roadscene"), Path("runs/roadscene"))``.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from invismap.data.importers.common import (
    check_pair_sizes,
    hash_split,
    list_images,
    log_dropped,
    pair_by_stem,
    write_pixel_labels,
)
from invismap.data.manifest import CONDITIONS, Manifest, Sample, save_manifest
from invismap.errors import file_error

ROADSCENE_TO_COCO = {"person": 0, "bike": 1, "car": 2}
DRIVE_FRAMES = 250  # frame numbers per drive: FLIR ADAS frames this close come from the same stretch of road


def drive_of(name: str) -> str:
    """The drive of a frame: ``FLIR_04229`` -> ``FLIR/16``; a name with no frame number is its own drive.

    >>> drive_of("FLIR_04229"), drive_of("FLIR_video_00069"), drive_of("street")
    ('FLIR/16', 'FLIR_video/0', 'street')
    """
    series, _, number = name.rpartition("_")
    return f"{series}/{int(number) // DRIVE_FRAMES}" if series and number.isdigit() else name


def drive_split(samples: list[Sample], test_fraction: float) -> dict[str, str]:
    """``train``/``test`` per sample name: drives with a night frame are test, the others by a hash of the
    drive (:func:`~invismap.data.importers.common.hash_split`)."""
    night = {drive_of(s.name) for s in samples if s.condition == "night"}
    return {s.name: "test" if drive_of(s.name) in night else hash_split(drive_of(s.name), test_fraction)
            for s in samples}


def drive_folds(counts: dict[str, int], folds: int) -> dict[str, int]:
    """Cross-validation fold of each drive, so that a drive's frames stay in one fold: the drives by their
    ``counts`` (e.g. labelled pairs; most first, ties by name), each to the fold with the smallest count so
    far (the lowest on a tie), so that folds hold about equal numbers.

    >>> drive_folds({"a": 15, "b": 9, "c": 6, "d": 5, "e": 3}, 3)
    {'a': 0, 'b': 1, 'c': 2, 'd': 2, 'e': 1}
    """
    load, out = [0] * folds, {}
    for drive in sorted(counts, key=lambda d: (-counts[d], d)):
        k = min(range(folds), key=lambda i: (load[i], i))
        out[drive] = k
        load[k] += counts[drive]
    return out


def _read_meta(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise file_error(path, "is not UTF-8 text", "use the CSV from the shared _meta folder") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = {"name", "flir_aligned_split", "daynight"} - set(reader.fieldnames or [])
    if missing:
        raise file_error(path, f"lacks column(s) {', '.join(sorted(missing))}",
                         "use the CSV from the shared _meta folder")
    # short rows give None for the missing fields, long rows an extra None key: normalise both
    rows = {(row["name"] or "").strip(): {k: (v or "") for k, v in row.items() if isinstance(k, str)}
            for row in reader}
    for name, row in rows.items():
        if (row["daynight"] or "").strip() not in CONDITIONS:
            raise file_error(path, f"frame {name}: condition '{row['daynight']}' is not one of "
                             f"{', '.join(CONDITIONS)}")
        for key in ("crop_w", "crop_h", "n_boxes_in_crop"):
            value = (row.get(key) or "").strip()
            if value and not (value.isdigit() and value.isascii()):
                raise file_error(path, f"frame {name}: {key} '{value}' is not a whole number",
                                 "use the CSV from the shared _meta folder")
    return rows


def _read_boxes(path: Path) -> dict[str, list] | None:
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["boxes"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise file_error(path, "not a RoadScene box file", 'expected {"boxes": {NAME: [...]}}') from None


def import_roadscene(src: Path, dst: Path, progress: bool = True,
                     test_fraction: float | None = 0.3, check: str = "decode") -> Manifest:
    """Import a RoadScene folder into ``dst`` (manifest.csv + labels/thermal); returns the manifest.

    ``test_fraction``: the share of drives without night frames that go to test (:func:`drive_split`); None
    puts every pair in split ``all``.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    cdir, tdir = src / "crop_LR_visible", src / "cropinfrared"
    layout = "RoadScene keeps crop_LR_visible/ and cropinfrared/ side by side"
    pairs = pair_by_stem(list_images(cdir, layout), list_images(tdir, layout), cdir, tdir)
    meta_path = src / "_meta" / "roadscene_meta.csv"
    boxes_path = src / "_meta" / "roadscene_flir_boxes_crop.json"
    meta, boxes = _read_meta(meta_path), _read_boxes(boxes_path)
    samples = [Sample(name, c, t, meta.get(name, {}).get("daynight", "unknown").strip() or "unknown", "all")
               for name, c, t in pairs]
    if test_fraction is not None:
        splits = drive_split(samples, test_fraction)
        samples = [replace(s, split=splits[s.name]) for s in samples]
    sizes = check_pair_sizes(samples, progress=progress, check=check)
    dropped = Counter()
    for i, s in enumerate(samples):
        row, (w, h) = meta.get(s.name, {}), sizes[s.name]
        if (row.get("crop_w") or "").strip() and (int(row["crop_w"]), int(row.get("crop_h") or 0)) != (w, h):
            raise file_error(meta_path, f"frame {s.name} is {row['crop_w']}x{row['crop_h']} here but its "
                             f"images are {w}x{h}", "the meta belongs to another crop of RoadScene")
        if boxes is None or not row.get("flir_aligned_split", "").strip():
            continue  # no box file, or a frame FLIR-aligned does not hold: not labelled
        frame = boxes.get(s.name, [])
        if not isinstance(frame, list):
            raise file_error(boxes_path, f"frame {s.name}: expected a list of boxes, "
                             f"got {type(frame).__name__}")
        if (row.get("n_boxes_in_crop") or "").strip() and int(row["n_boxes_in_crop"]) != len(frame):
            raise file_error(boxes_path, f"frame {s.name} has {len(frame)} boxes but the meta CSV says "
                             f"{row['n_boxes_in_crop']}", "use the JSON and CSV from the same _meta folder")
        try:
            keep = [(ROADSCENE_TO_COCO[b["category"]], b["xyxy_crop"]) for b in frame
                    if b["category"] in ROADSCENE_TO_COCO]
            dropped.update(b["category"] for b in frame if b["category"] not in ROADSCENE_TO_COCO)
        except (KeyError, TypeError):
            raise file_error(boxes_path, f"frame {s.name}: a box lacks 'category' or 'xyxy_crop'") from None
        out = dst / "labels" / "thermal" / f"{s.name}.txt"
        write_pixel_labels(out, [b for _, b in keep], [c for c, _ in keep], w, h, f"{boxes_path} [{s.name}]")
        samples[i] = replace(s, thermal_labels=out)
    log_dropped(boxes_path, dropped)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
