"""MSRS importer: the release layout (train|test/vi|ir) with Lele-3's labels (visible|infrared/train|test).

Tiny PNGs and label files are written in each layout; one test rebuilds a real subset of the shared
(flattened) MSRS sample in the release layout and checks that both layouts give the same labels.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from invismap.data.importers import import_dataset
from invismap.data.manifest import load_manifest, read_yolo_labels
from invismap.errors import InvismapError

W, H = 40, 32
RELEASE = {"train": ("0001D", "0002N"), "test": ("0003D", "0004N")}


def _pair(root: Path, name: str, value: int) -> None:
    for sub in ("vi", "ir"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / "vi" / f"{name}.png"), np.full((H, W, 3), value, np.uint8))
    assert cv2.imwrite(str(root / "ir" / f"{name}.png"), np.full((H, W), value, np.uint8))


def _label(path: Path, cls: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{cls} 0.5 0.5 0.2 0.3\n")


def make_release(src: Path, splits=RELEASE, labels: Path | None = None) -> Path:
    """MSRS as published: ``{train,test}/{vi,ir}/NAME.png``; labels as Lele-3 publishes them under
    ``labels`` (``visible|infrared/{train,test}/NAME.txt``: person on color, car on thermal)."""
    for i, (split, names) in enumerate(splits.items()):
        for j, name in enumerate(names):
            _pair(src / split, name, 40 * i + 10 * j)
            if labels is not None:
                _label(labels / "visible" / split / f"{name}.txt", 0)
                _label(labels / "infrared" / split / f"{name}.txt", 2)
    return src


def _classes(path: Path | None) -> list[int]:
    return [int(c) for c in read_yolo_labels(path)[:, 0]]


def test_release_layout_split_from_folder_and_labels(tmp_path: Path):
    src = make_release(tmp_path / "MSRS", labels=tmp_path / "MSRS" / "labels")
    m = import_dataset("msrs", src, tmp_path / "ds", progress=False)
    assert [s.name for s in m] == ["0001D", "0002N", "0003D", "0004N"]
    by_name = {s.name: s for s in load_manifest(tmp_path / "ds")}
    for split, names in RELEASE.items():
        for name in names:
            s = by_name[name]
            assert s.split == split
            assert s.condition == {"D": "day", "N": "night"}[name[-1]]
            assert s.color == src / split / "vi" / f"{name}.png"
            assert s.thermal == src / split / "ir" / f"{name}.png"
            assert _classes(s.color_labels) == [0] and _classes(s.thermal_labels) == [2]
    assert m.counts() == {("train", "day"): 1, ("train", "night"): 1,
                          ("test", "day"): 1, ("test", "night"): 1}


def test_a_failed_reimport_leaves_the_dataset_whole(tmp_path: Path):
    """A re-import that fails (a corrupt image found after the labels were converted) keeps the old
    manifest and the labels it points at; one that succeeds replaces both, and leaves no staging folder.
    Importing into the source folder itself keeps the source's own labels."""
    src = make_release(tmp_path / "MSRS", labels=tmp_path / "MSRS" / "labels")
    import_dataset("msrs", src, tmp_path / "ds", progress=False)
    before = (tmp_path / "ds" / "manifest.csv").read_text()
    _label(src / "labels" / "infrared" / "train" / "0001D.txt", 1)  # changed labels, then a corrupt image
    (src / "test" / "ir" / "0004N.png").write_bytes(b"not a png")
    with pytest.raises(InvismapError, match=r"0004N\.png"):
        import_dataset("msrs", src, tmp_path / "ds", progress=False)
    assert (tmp_path / "ds" / "manifest.csv").read_text() == before
    assert _classes(load_manifest(tmp_path / "ds")[0].thermal_labels) == [2]
    _pair(src / "test", "0004N", 0)
    import_dataset("msrs", src, tmp_path / "ds", progress=False)
    assert _classes(load_manifest(tmp_path / "ds")[0].thermal_labels) == [1]
    assert not (tmp_path / "ds" / ".importing").exists()
    import_dataset("msrs", src, src, progress=False)
    assert _classes(load_manifest(src)[0].thermal_labels) == [1] and (src / "labels" / "infrared").is_dir()


def test_release_without_labels_and_with_one_split(tmp_path: Path):
    src = make_release(tmp_path / "MSRS", splits={"test": ("0003D", "0004N")})
    (src / "pairs.csv").write_text("name,dev_split\n0003D,train\n")  # not part of the release: not read
    m = import_dataset("msrs", src, tmp_path / "ds", progress=False)
    assert [(s.name, s.split, s.color_labels, s.thermal_labels) for s in m] == [
        ("0003D", "test", None, None), ("0004N", "test", None, None)]


def test_labels_option_points_at_the_label_release(tmp_path: Path):
    """Lele-3/MSRS-detection-label cloned beside MSRS, given as ``labels``."""
    src = make_release(tmp_path / "MSRS", labels=tmp_path / "MSRS-detection-label")
    m = import_dataset("msrs", src, tmp_path / "ds", progress=False, labels=tmp_path / "MSRS-detection-label")
    assert all(_classes(s.color_labels) == [0] and _classes(s.thermal_labels) == [2] for s in m)
    with pytest.raises(InvismapError, match="no-such-folder: labels folder not found"):
        import_dataset("msrs", src, tmp_path / "ds2", progress=False, labels="no-such-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvismapError, match="empty: has no visible/ or infrared/ folder"):
        import_dataset("msrs", src, tmp_path / "ds2", progress=False, labels=tmp_path / "empty")


def test_release_images_with_flat_labels(tmp_path: Path):
    src = make_release(tmp_path / "MSRS")
    for name in RELEASE["train"] + RELEASE["test"]:
        _label(src / "labels" / "infrared" / f"{name}.txt", 1)
    m = import_dataset("msrs", src, tmp_path / "ds", progress=False)
    assert all(s.color_labels is None and _classes(s.thermal_labels) == [1] for s in m)


def test_label_release_errors(tmp_path: Path):
    src = make_release(tmp_path / "MSRS", labels=tmp_path / "MSRS" / "labels")
    (src / "labels" / "visible" / "test" / "0004N.txt").unlink()
    with pytest.raises(InvismapError, match=r"visible/test/0004N.txt: label file missing for pair 0004N"):
        import_dataset("msrs", src, tmp_path / "ds", progress=False)
    _label(src / "labels" / "visible" / "train" / "0004N.txt", 0)
    with pytest.raises(InvismapError, match=r"train/0004N.txt: is under train/ but pair 0004N's images are "
                                            r"under test/ \(use labels from the same MSRS release\)"):
        import_dataset("msrs", src, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds" / "manifest.csv").exists()


def test_flat_images_with_release_labels_match_the_flat_import(msrs_dir: Path, tmp_path: Path):
    """Real pairs: the shared sample's flattened layout and the same files rearranged as MSRS and Lele-3
    publish them give the same manifest rows (the split aside) and the same labels."""
    with open(msrs_dir / "pairs.csv", newline="") as f:
        release_split = {r["name"]: r["msrs_split"] for r in csv.DictReader(f)}
    names = ("00001D", "00003N", "00004N")  # train day, train night, test night in MSRS's own split
    flat, release = tmp_path / "flat", tmp_path / "release"
    for name in names:
        split = release_split[name]
        for sub, label_sub in (("vi", "visible"), ("ir", "infrared")):
            for _root, img_dir, txt_dir in ((flat, flat / sub, flat / "labels" / label_sub),
                                            (release, release / split / sub,
                                             release / "labels" / label_sub / split)):
                img_dir.mkdir(parents=True, exist_ok=True)
                txt_dir.mkdir(parents=True, exist_ok=True)
                shutil.copy(msrs_dir / sub / f"{name}.png", img_dir)
                shutil.copy(msrs_dir / "labels" / label_sub / f"{name}.txt", txt_dir)
    a = import_dataset("msrs", flat, tmp_path / "a", progress=False)
    b = import_dataset("msrs", release, tmp_path / "b", progress=False)
    assert [s.name for s in a] == [s.name for s in b] == list(names)
    assert [s.split for s in b] == [release_split[n] for n in names] == ["train", "train", "test"]
    for sa, sb in zip(a, b):
        assert (sa.condition, sa.split) == (sb.condition, "all")
        for key in ("color_labels", "thermal_labels"):
            assert getattr(sa, key).read_text() == getattr(sb, key).read_text()
    # flattened images, labels in the release layout: found by name in train/ or test/
    shutil.rmtree(flat / "labels")
    shutil.copytree(release / "labels", flat / "labels")
    c = import_dataset("msrs", flat, tmp_path / "c", progress=False)
    assert [sc.thermal_labels.read_text() for sc in c] == [sa.thermal_labels.read_text() for sa in a]
