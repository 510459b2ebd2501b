"""MSRS (Multi-Spectral Road Scenarios, Tang et al. 2022) importer.

Layout: ``vi/NAME.png`` (color), ``ir/NAME.png`` (thermal), day/night from the ``D``/``N`` suffix of NAME,
optional ``labels/{visible,infrared}/NAME.txt`` YOLO boxes (0 person, 1 bicycle, 2 car — the same ids as
COCO's) and an optional ``pairs.csv`` whose ``dev_split`` (or ``split``) column gives each pair's split.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from invismap.data.importers.common import check_pair_sizes, list_images, pair_by_stem
from invismap.data.manifest import SPLITS, Manifest, Sample, read_yolo_labels, save_manifest
from invismap.errors import InvismapError, file_error
from invismap.io import atomic_write

MSRS_TO_COCO = {0: 0, 1: 1, 2: 2}  # person, bicycle, car


def _condition(name: str, path: Path) -> str:
    if name.endswith("D"):
        return "day"
    if name.endswith("N"):
        return "night"
    raise file_error(path, f"name '{name}' has no D/N day/night suffix", "MSRS names end in D or N")


def _read_splits(src: Path, split_column: str) -> dict[str, str]:
    table = src / "pairs.csv"
    if not table.is_file():
        return {}
    try:
        text = table.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise file_error(table, "is not UTF-8 text", "write it as CSV with columns name,"
                         f"{split_column}") from None
    reader = csv.DictReader(io.StringIO(text))
    for column in ("name", split_column):
        if column not in (reader.fieldnames or []):
            raise file_error(table, f"has no '{column}' column",
                             f"columns: {', '.join(reader.fieldnames or [])}")
    splits = {}
    for lineno, row in enumerate(reader, start=2):
        split = (row[split_column] or "").strip()
        if split not in SPLITS:
            raise file_error(f"{table}:{lineno}", f"pair {row.get('name')}: split '{split}' not one of "
                             f"{', '.join(SPLITS)}")
        splits[(row["name"] or "").strip()] = split
    return splits


def _convert_labels(src_file: Path, dst_file: Path) -> None:
    labels = read_yolo_labels(src_file, num_classes=len(MSRS_TO_COCO))
    lines = [f"{MSRS_TO_COCO[int(c)]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for c, cx, cy, w, h in labels]
    with atomic_write(dst_file, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))


def import_msrs(src: Path, dst: Path, split_column: str = "dev_split", progress: bool = True) -> Manifest:
    """Import an MSRS folder into ``dst`` (manifest.csv + labels/{color,thermal}); returns the manifest."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    color, thermal = list_images(src / "vi"), list_images(src / "ir")
    pairs = pair_by_stem(color, thermal, src / "vi", src / "ir")
    splits = _read_splits(src, split_column)
    label_dirs = {"color": src / "labels" / "visible", "thermal": src / "labels" / "infrared"}
    samples = []
    for name, cpath, tpath in pairs:
        label_paths = {}
        for modality, folder in label_dirs.items():
            if not folder.is_dir():
                label_paths[modality] = None
                continue
            f = folder / f"{name}.txt"
            if not f.is_file():
                raise file_error(f, f"label file missing for pair {name}", f"add an empty file if {name} has no objects")
            out = dst / "labels" / modality / f"{name}.txt"
            _convert_labels(f, out)
            label_paths[modality] = out
        if splits and name not in splits:
            raise InvismapError(f"{src / 'pairs.csv'}: pair {name} is not listed (add it with its split)")
        samples.append(Sample(name, cpath, tpath, _condition(name, cpath), splits.get(name, "all"),
                              None, label_paths["color"], label_paths["thermal"]))
    check_pair_sizes(samples, progress=progress)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
