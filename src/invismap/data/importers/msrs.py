"""MSRS (Multi-Spectral Road Scenarios, Tang et al. 2022) importer.

Two image layouts, told apart by the folders in SRC (a SRC holding both, or neither, is refused):

- the release (github.com/Linfeng-Tang/MSRS): ``train/vi/NAME.png`` (color), ``train/ir/NAME.png``
  (thermal), and the same under ``test/``; either split may be absent. The split is the folder (train or
  test); a ``pairs.csv`` is not read.
- flattened (invismap's shared assets): ``vi/NAME.png``, ``ir/NAME.png`` and an optional ``pairs.csv`` whose
  ``dev_split`` column (or the one named by ``split_column``) gives each pair's split; without it, ``all``.

Day/night comes from the ``D``/``N`` suffix of NAME. Labels, optional: per-modality YOLO txt boxes (0 person,
1 bicycle, 2 car — the same ids as COCO's) in ``SRC/labels`` or the folder given as ``labels``, either as
``visible/NAME.txt`` + ``infrared/NAME.txt`` or as Lele-3/MSRS-detection-label publishes them,
``visible/{train,test}/NAME.txt`` + ``infrared/{train,test}/NAME.txt``. Once a modality's folder exists,
every pair needs its file there (an empty file: no objects).
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
RELEASE_SPLITS = ("train", "test")
LABEL_FOLDERS = {"color": "visible", "thermal": "infrared"}
LAYOUTS = "vi/ and ir/, or the MSRS release's train/{vi,ir} and test/{vi,ir}"

# (name, color, thermal, split, release split folder or None for the flattened layout)
Pair = tuple[str, Path, Path, str, str | None]


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


def _layout(src: Path) -> str:
    """``release`` if SRC holds ``train/`` or ``test/`` with ``vi``/``ir`` inside, ``flat`` if it holds
    ``vi/`` or ``ir/`` itself."""
    flat = (src / "vi").is_dir() or (src / "ir").is_dir()
    release = any((src / split / m).is_dir() for split in RELEASE_SPLITS for m in ("vi", "ir"))
    if flat and release:
        raise file_error(src, "holds both MSRS layouts (vi/ and ir/ beside train/ or test/)",
                         "keep one of them")
    if not (flat or release):
        raise file_error(src, "no MSRS images found", f"expected {LAYOUTS}")
    return "release" if release else "flat"


def _pair_folder(root: Path, fix: str) -> list[tuple[str, Path, Path]]:
    """The pairs of ``root/vi`` and ``root/ir``; a missing half is named with ``fix``."""
    cdir, tdir = root / "vi", root / "ir"
    for folder in (cdir, tdir):
        if not folder.is_dir():
            raise file_error(folder, "folder not found", fix)
    return pair_by_stem(list_images(cdir), list_images(tdir), cdir, tdir)


def _release_pairs(src: Path) -> list[Pair]:
    """Pairs of the release layout ``{train,test}/{vi,ir}/NAME.png``, split from the folder."""
    pairs, seen = [], {}
    for split in RELEASE_SPLITS:
        if not any((src / split / m).is_dir() for m in ("vi", "ir")):
            continue  # a release with one split only
        fix = f"the MSRS release layout has {split}/vi and {split}/ir"
        for name, color, thermal in _pair_folder(src / split, fix):
            if name in seen:
                raise file_error(color, f"pair {name} is also in {seen[name]}/",
                                 "MSRS names are unique: keep the pair in one split")
            seen[name] = split
            pairs.append((name, color, thermal, split, split))
    return sorted(pairs)


def _flat_pairs(src: Path, split_column: str) -> list[Pair]:
    """Pairs of the flattened layout ``vi/NAME.png``, ``ir/NAME.png``, split from ``pairs.csv`` if present."""
    pairs = _pair_folder(src, "the flattened MSRS layout has vi/ and ir/ side by side")
    splits = _read_splits(src, split_column)
    for name, _, _ in pairs:
        if splits and name not in splits:
            raise InvismapError(f"{src / 'pairs.csv'}: pair {name} is not listed (add it with its split)")
    return [(name, color, thermal, splits.get(name, "all"), None) for name, color, thermal in pairs]


def _label_root(src: Path, labels: str | Path | None) -> Path:
    """``SRC/labels``, or the ``labels`` folder (a path, or one relative to SRC) holding visible/,
    infrared/."""
    if labels is None:
        return src / "labels"
    root = Path(labels) if Path(labels).is_dir() else src / labels
    if not root.is_dir():
        raise file_error(labels, "labels folder not found", "give the folder holding visible/ and infrared/")
    if not any((root / sub).is_dir() for sub in LABEL_FOLDERS.values()):
        raise file_error(root, "has no visible/ or infrared/ folder",
                         "give the folder holding visible/ and infrared/ (NAME.txt or {train,test}/NAME.txt)")
    return root.resolve()


def _label_file(folder: Path, name: str, release_split: str | None) -> Path:
    """Pair NAME's label txt in one modality's ``folder``: ``NAME.txt``, or ``{train,test}/NAME.txt`` when
    ``folder`` is in the label release layout (there, in the images' own split when they came as a
    release)."""
    if not any((folder / split).is_dir() for split in RELEASE_SPLITS):
        path = folder / f"{name}.txt"
    else:
        found = [folder / split / f"{name}.txt" for split in RELEASE_SPLITS
                 if (folder / split / f"{name}.txt").is_file()]
        if release_split is not None:
            path = folder / release_split / f"{name}.txt"
            if found and path not in found:
                raise file_error(found[0], f"is under {found[0].parent.name}/ but pair {name}'s images are "
                                 f"under {release_split}/", "use labels from the same MSRS release")
        elif len(found) > 1:
            raise file_error(found[1], f"pair {name} is labelled in both train/ and test/",
                             "keep one of them")
        else:
            path = found[0] if found else Path(f"{folder}/{{train,test}}/{name}.txt")
    if not path.is_file():
        raise file_error(path, f"label file missing for pair {name}",
                         f"add an empty file if {name} has no objects")
    return path


def _convert_labels(src_file: Path, dst_file: Path) -> None:
    labels = read_yolo_labels(src_file, num_classes=len(MSRS_TO_COCO))
    lines = [f"{MSRS_TO_COCO[int(c)]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for c, cx, cy, w, h in labels]
    with atomic_write(dst_file, "w") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))


def import_msrs(src: Path, dst: Path, split_column: str = "dev_split", progress: bool = True,
                labels: str | Path | None = None, check: str = "decode") -> Manifest:
    """Import an MSRS folder (release or flattened layout) into ``dst`` (manifest.csv +
    labels/{color,thermal}); returns the manifest."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    pairs = _release_pairs(src) if _layout(src) == "release" else _flat_pairs(src, split_column)
    label_root = _label_root(src, labels)
    samples = []
    for name, cpath, tpath, split, release_split in pairs:
        label_paths = {}
        for modality, sub in LABEL_FOLDERS.items():
            if not (label_root / sub).is_dir():
                label_paths[modality] = None
                continue
            out = dst / "labels" / modality / f"{name}.txt"
            _convert_labels(_label_file(label_root / sub, name, release_split), out)
            label_paths[modality] = out
        samples.append(Sample(name, cpath, tpath, _condition(name, cpath), split,
                              None, label_paths["color"], label_paths["thermal"]))
    check_pair_sizes(samples, progress=progress, check=check)
    manifest = Manifest(samples, dst)
    save_manifest(manifest, dst / "manifest.csv")
    return manifest
