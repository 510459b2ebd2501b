"""Importers for RoadScene (real files), LLVIP, KAIST, FLIR and M3FD (tiny files written in each layout)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from invismap.data.importers import import_dataset
from invismap.data.importers.flir import import_flir
from invismap.data.importers.kaist import import_kaist
from invismap.data.importers.llvip import import_llvip
from invismap.data.importers.m3fd import import_m3fd
from invismap.data.importers.roadscene import import_roadscene
from invismap.data.manifest import load_manifest, read_yolo_labels
from invismap.errors import InvismapError

W, H = 48, 32


def _image(path: Path, color: bool, size: tuple[int, int] = (W, H), dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 255 if dtype == np.uint8 else 60000
    img = np.linspace(0, top, size[0] * size[1]).reshape(size[1], size[0]).astype(dtype)
    assert cv2.imwrite(str(path), np.dstack([img, img[::-1], img]) if color else img)
    return path


def _voc(path: Path, objects: list[tuple[str, list[float]]], size: tuple[int, int] = (W, H)) -> None:
    body = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth>"
                    f"</size>{body}</annotation>")


def _labels(path: Path | None) -> list[int]:
    return sorted(int(c) for c in read_yolo_labels(path)[:, 0])


# Each builder writes a tiny dataset in its format's layout and returns (src, [(color, thermal), ...]).

def make_roadscene(root: Path):
    names = ("FLIR_00006", "FLIR_00018", "FLIR_00288")
    pairs = [(_image(root / "crop_LR_visible" / f"{n}.jpg", True),
              _image(root / "cropinfrared" / f"{n}.jpg", False)) for n in names]
    (root / "_meta").mkdir()
    (root / "_meta" / "roadscene_meta.csv").write_text(
        "name,flir_aligned_split,daynight,crop_w,crop_h,n_boxes_in_crop\n"
        f"FLIR_00006,train_day,day,{W},{H},2\nFLIR_00018,test_night,night,{W},{H},0\n"
        f"FLIR_00288,,unknown,{W},{H},\n")
    boxes = {"FLIR_00006": [{"category": "car", "xyxy_crop": [1, 2, 20, 12]},
                            {"category": "person", "xyxy_crop": [30, 4, 36, 30]}], "FLIR_00018": []}
    (root / "_meta" / "roadscene_flir_boxes_crop.json").write_text(json.dumps({"note": "", "boxes": boxes}))
    return root, pairs


def make_llvip(root: Path):
    pairs = []
    for split, names in (("train", ("010001", "010002")), ("test", ("190001",))):
        for n in names:
            pairs.append((_image(root / "visible" / split / f"{n}.jpg", True),
                          _image(root / "infrared" / split / f"{n}.jpg", True)))
            _voc(root / "Annotations" / f"{n}.xml", [("person", [4, 5, 14, 30]), ("car", [20, 5, 40, 20])])
    return root, pairs


def make_kaist(root: Path):
    pairs = []
    for video, frames in (("set00/V000", (0, 1)), ("set04/V001", (20,)), ("set09/V000", (3,))):
        for f in frames:
            pairs.append((_image(root / "images" / video / "visible" / f"I{f:05d}.jpg", True),
                          _image(root / "images" / video / "lwir" / f"I{f:05d}.jpg", True)))
    ann = root / "annotations"
    (ann / "set00/V000").mkdir(parents=True)
    (ann / "set00/V000/I00000.txt").write_text(
        "% bbGt version=3\nperson 5 6 10 20 0 0 0 0 0 0 0\ncyclist 20 4 8 25 0 0 0 0 0 0 0\n"
        "animal 1 1 3 3 0 0 0 0 0 0 0\n")
    (ann / "set00/V000/I00001.txt").write_text("% bbGt version=3\n")
    for modality, body in (("visible", ""), ("lwir", "people 10 10 20 15 0 0 0 0 0 0 0\n")):
        (ann / "set04/V001" / modality).mkdir(parents=True)
        (ann / "set04/V001" / modality / "I00020.txt").write_text("% bbGt version=3\n" + body)
    return root, pairs


def make_flir(root: Path):
    ids = ("00006", "00018", "00060")
    pairs = [(_image(root / "JPEGImages" / f"FLIR_{i}_RGB.jpg", True),
              _image(root / "JPEGImages" / f"FLIR_{i}_PreviewData.jpeg", False)) for i in ids]
    coco = {"images": [{"id": k, "file_name": f"FLIR_{i}_PreviewData.jpeg", "width": W, "height": H}
                       for k, i in enumerate(ids[:2])],
            "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 79, "name": "sign"}],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [2, 3, 8, 20]},
                            {"id": 2, "image_id": 0, "category_id": 3, "bbox": [20, 10, 20, 12]},
                            {"id": 3, "image_id": 0, "category_id": 79, "bbox": [1, 1, 4, 4]}]}
    (root / "thermal_annotations.json").write_text(json.dumps(coco))
    return root, pairs


def make_m3fd(root: Path):
    pairs = [(_image(root / "Vis" / f"{n}.png", True), _image(root / "Ir" / f"{n}.png", False))
             for n in ("00001", "00002")]
    _voc(root / "Annotation" / "00001.xml", [("People", [4, 5, 14, 30]), ("Lamp", [30, 0, 33, 10]),
                                             ("Truck", [15, 8, 45, 28])])
    _voc(root / "Annotation" / "00002.xml", [])
    return root, pairs


BUILDERS = {"roadscene": make_roadscene, "llvip": make_llvip, "kaist": make_kaist, "flir": make_flir,
            "m3fd": make_m3fd}


# --- RoadScene on the real shared files -----------------------------------------------------------------

def test_roadscene_real(assets: Path, tmp_path: Path):
    m = import_dataset("roadscene", assets / "data" / "roadscene", tmp_path, progress=False)
    assert len(m) == 221 and len(load_manifest(tmp_path)) == 221
    assert Counter(s.condition for s in m) == {"day": 68, "night": 40, "unknown": 113}
    assert all(s.color_labels is None for s in m)
    counts = Counter((s.split, s.condition) for s in m)  # the documented drive split
    assert counts == {("train", "day"): 45, ("train", "unknown"): 23, ("test", "day"): 23,
                      ("test", "night"): 40, ("test", "unknown"): 90}
    labelled = [s for s in m if s.thermal_labels is not None]
    assert len(labelled) == 108 and all(s.condition != "unknown" for s in labelled)
    classes = Counter(c for s in labelled for c in _labels(s.thermal_labels))
    assert classes == {2: 485, 0: 226, 1: 22}  # car, person, bike: 733 boxes


def test_roadscene_drive_split_keeps_drives_whole(assets: Path, tmp_path: Path):
    """Neighbouring frames (one drive) never straddle train and test; night drives are test; the rule is
    deterministic and ``test_fraction`` moves whole drives."""
    from invismap.data.importers.roadscene import drive_of

    src = assets / "data" / "roadscene"
    a = import_roadscene(src, tmp_path / "a", progress=False, test_fraction=0.5)
    b = import_roadscene(src, tmp_path / "b", progress=False, test_fraction="0.5")  # CLI text is fine
    assert [s.split for s in a] == [s.split for s in b]
    sides: dict[str, set] = {}
    for s in a:
        sides.setdefault(drive_of(s.name), set()).add(s.split)
    assert all(len(v) == 1 for v in sides.values()) and len(sides) > 20
    assert all(s.split == "test" for s in a if s.condition == "night")
    assert sum(s.split == "test" for s in a) > sum(s.split == "test" for s in import_roadscene(
        src, tmp_path / "c", progress=False))  # 0.5 of the day drives is more than the default 0.3
    every = import_roadscene(src, tmp_path / "d", progress=False, test_fraction=None)
    assert {s.split for s in every} == {"all"}
    with pytest.raises(InvismapError, match="test_fraction"):
        import_roadscene(src, tmp_path / "e", progress=False, test_fraction=1.5)


# --- each format on tiny files in its layout -------------------------------------------------------------

def test_roadscene_tiny(tmp_path: Path):
    src, _ = make_roadscene(tmp_path / "src")
    m = {s.name: s for s in import_roadscene(src, tmp_path / "out", progress=False)}
    assert _labels(m["FLIR_00006"].thermal_labels) == [0, 2]
    assert _labels(m["FLIR_00018"].thermal_labels) == []  # annotated, no objects
    assert m["FLIR_00288"].thermal_labels is None and m["FLIR_00288"].condition == "unknown"


def test_llvip(tmp_path: Path):
    src, _ = make_llvip(tmp_path / "src")
    m = import_dataset("llvip", src, tmp_path / "out", progress=False)
    assert [(s.name, s.split, s.condition) for s in m] == [
        ("010001", "train", "night"), ("010002", "train", "night"), ("190001", "test", "night")]
    labels = read_yolo_labels(m[0].thermal_labels)
    assert m[0].color_labels is None and labels[:, 0].tolist() == [0]  # 'car' dropped
    np.testing.assert_allclose(labels[0, 1:], [9 / W, 17.5 / H, 10 / W, 25 / H], atol=1e-5)
    assert len(load_manifest(tmp_path / "out")) == 3


def test_kaist(tmp_path: Path):
    src, _ = make_kaist(tmp_path / "src")
    m = {s.name: s for s in import_dataset("kaist", src, tmp_path / "out", progress=False)}
    assert set(m) == {"set00_V000_I00000", "set00_V000_I00001", "set04_V001_I00020", "set09_V000_I00003"}
    assert (m["set00_V000_I00000"].condition, m["set00_V000_I00000"].split) == ("day", "train")
    assert (m["set04_V001_I00020"].condition, m["set04_V001_I00020"].split) == ("night", "train")
    assert (m["set09_V000_I00003"].condition, m["set09_V000_I00003"].split) == ("night", "test")
    assert m["set04_V001_I00020"].timestamp == 1.0 and m["set00_V000_I00001"].timestamp == 0.05
    assert _labels(m["set00_V000_I00000"].thermal_labels) == [0, 0]  # person + cyclist; 'animal' dropped
    assert m["set00_V000_I00000"].color_labels is None
    assert _labels(m["set00_V000_I00001"].thermal_labels) == []
    paired = m["set04_V001_I00020"]  # per-modality annotations: the person is only boxed on thermal
    assert _labels(paired.color_labels) == [] and _labels(paired.thermal_labels) == [0]
    assert m["set09_V000_I00003"].thermal_labels is None  # no annotation file: not labelled


def test_flir_aligned(tmp_path: Path):
    src, _ = make_flir(tmp_path / "src")
    m = {s.name: s for s in import_dataset("flir", src, tmp_path / "out", progress=False,
                                           annotations="thermal_annotations.json", split="val")}
    assert set(m) == {"FLIR_00006", "FLIR_00018", "FLIR_00060"} and {s.split for s in m.values()} == {"val"}
    assert _labels(m["FLIR_00006"].thermal_labels) == [0, 2]  # 'sign' dropped
    assert _labels(m["FLIR_00018"].thermal_labels) == [] and m["FLIR_00060"].thermal_labels is None
    assert m["FLIR_00006"].color.name == "FLIR_00006_RGB.jpg"
    assert m["FLIR_00006"].thermal.name == "FLIR_00006_PreviewData.jpeg"


def test_flir_aligned_voc_annotations(tmp_path: Path):
    """FLIR-aligned as published: ``Annotations/FLIR_XXXXX_PreviewData.xml`` (VOC), read without options."""
    src, _ = make_flir(tmp_path / "src")
    _voc(src / "Annotations" / "FLIR_00006_PreviewData.xml",
         [("person", [2, 3, 10, 23]), ("car", [20, 10, 40, 22]), ("sign", [1, 1, 5, 5])])
    _voc(src / "Annotations" / "FLIR_00018_PreviewData.xml", [])
    m = {s.name: s for s in import_dataset("flir", src, tmp_path / "out", progress=False)}
    assert _labels(m["FLIR_00006"].thermal_labels) == [0, 2]  # 'sign' dropped
    assert _labels(m["FLIR_00018"].thermal_labels) == [] and m["FLIR_00060"].thermal_labels is None
    for xml in (src / "Annotations").iterdir():
        xml.rename(xml.with_name(xml.name.replace("_PreviewData", "_RGB")))
    with pytest.raises(InvismapError, match="Annotations: holds no xml for these frames "
                                            r"\(e.g. FLIR_00006_PreviewData.xml\)"):
        import_dataset("flir", src, tmp_path / "out2", progress=False)


def test_flir_16bit_v1_layout(tmp_path: Path):
    for i in ("00001", "00002"):
        _image(tmp_path / "train" / "RGB" / f"FLIR_{i}.jpg", True)
        _image(tmp_path / "train" / "thermal_16_bit" / f"FLIR_{i}.tiff", False, dtype=np.uint16)
    m = import_flir(tmp_path, tmp_path / "out", progress=False, thermal_dir="train/thermal_16_bit",
                    thermal_suffix="", color_dir="train/RGB", color_suffix="")
    assert [s.name for s in m] == ["FLIR_00001", "FLIR_00002"]
    from invismap.cli import main  # the same options from the command line, as the error hints say

    options = ["--option", "thermal_dir=train/thermal_16_bit", "--option", "thermal_suffix=",
               "--option", "color_dir=train/RGB", "--option", "color_suffix="]
    assert main(["data", "import", "flir", str(tmp_path), str(tmp_path / "cli"), *options]) == 0
    assert [s.name for s in load_manifest(tmp_path / "cli")] == ["FLIR_00001", "FLIR_00002"]
    with pytest.raises(InvismapError, match=r"thermal_suffix / color_suffix options .*--option"):
        import_dataset("flir", tmp_path, tmp_path / "out2", progress=False,
                       thermal_dir="train/thermal_16_bit", color_dir="train/RGB")


def test_flir_raw_size_mismatch_asks_to_register(tmp_path: Path):
    _image(tmp_path / "RGB" / "FLIR_00001.jpg", True, size=(72, 64))  # raw ADAS RGB is bigger than thermal
    thermal = _image(tmp_path / "thermal_16_bit" / "FLIR_00001.tiff", False, dtype=np.uint16)
    with pytest.raises(InvismapError, match="register") as e:
        import_flir(tmp_path, tmp_path / "out", progress=False, thermal_dir="thermal_16_bit",
                    thermal_suffix="", color_dir="RGB", color_suffix="")
    assert thermal.name in str(e.value)


def test_m3fd(tmp_path: Path):
    src, _ = make_m3fd(tmp_path / "src")
    (src / "conditions.csv").write_text("name,condition\n00001,night\n")
    m = {s.name: s for s in import_dataset("m3fd", src, tmp_path / "out", progress=False,
                                           conditions="conditions.csv")}
    assert _labels(m["00001"].thermal_labels) == [0, 7]  # People, Truck; Lamp dropped
    assert m["00001"].color_labels is None and _labels(m["00002"].thermal_labels) == []
    assert (m["00001"].condition, m["00002"].condition) == ("night", "unknown")
    (src / "conditions.csv").write_text("name,condition\n00001,evening\n")
    with pytest.raises(InvismapError, match=r"conditions.csv"):
        import_m3fd(src, tmp_path / "out2", progress=False, conditions="conditions.csv")


# --- bad input: every error is an InvismapError naming the file ------------------------------------------

@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_missing_thermal_twin(fmt: str, tmp_path: Path):
    src, pairs = BUILDERS[fmt](tmp_path / "src")
    pairs[0][1].unlink()
    with pytest.raises(InvismapError, match="no thermal twin") as e:
        import_dataset(fmt, src, tmp_path / "out", progress=False)
    assert pairs[0][0].name in str(e.value)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_corrupt_image(fmt: str, tmp_path: Path):
    src, pairs = BUILDERS[fmt](tmp_path / "src")
    pairs[-1][1].write_bytes(b"\x89PNG garbage, not an image")
    with pytest.raises(InvismapError, match="not a readable image") as e:
        import_dataset(fmt, src, tmp_path / "out", progress=False)
    assert pairs[-1][1].name in str(e.value)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_empty_folder(fmt: str, tmp_path: Path):
    src, pairs = BUILDERS[fmt](tmp_path / "src")
    for color, thermal in pairs:
        color.unlink()
        thermal.unlink()
    with pytest.raises(InvismapError, match="no images found") as e:
        import_dataset(fmt, src, tmp_path / "out", progress=False)
    assert str(pairs[0][0].parent.name) in str(e.value)


def _bad_box(fmt: str, src: Path) -> Path:
    """Put a box far outside the image into the format's label file; returns that file."""
    if fmt == "roadscene":
        path = src / "_meta" / "roadscene_flir_boxes_crop.json"
        data = json.loads(path.read_text())
        data["boxes"]["FLIR_00006"][0]["xyxy_crop"] = [10, 10, 200, 20]
        path.write_text(json.dumps(data))
    elif fmt in ("llvip", "m3fd"):
        path = src / ("Annotations/010002.xml" if fmt == "llvip" else "Annotation/00002.xml")
        _voc(path, [("person" if fmt == "llvip" else "Car", [5, 5, 15, 90])])
    elif fmt == "kaist":
        path = src / "annotations/set00/V000/I00001.txt"
        path.write_text("% bbGt version=3\nperson 30 5 40 10 0 0 0 0 0 0 0\n")
    else:
        path = src / "thermal_annotations.json"
        coco = json.loads(path.read_text())
        coco["annotations"][0]["bbox"] = [-30, 3, 8, 20]
        path.write_text(json.dumps(coco))
    return path


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_out_of_range_box(fmt: str, tmp_path: Path):
    src, _ = BUILDERS[fmt](tmp_path / "src")
    bad = _bad_box(fmt, src)
    options = {"annotations": "thermal_annotations.json"} if fmt == "flir" else {}
    with pytest.raises(InvismapError, match="out of range") as e:
        import_dataset(fmt, src, tmp_path / "out", progress=False, **options)
    assert bad.name in str(e.value)


def test_malformed_annotations_name_the_file(tmp_path: Path):
    src, _ = make_llvip(tmp_path / "llvip")
    (src / "Annotations" / "010002.xml").write_text("<annotation><object>")
    with pytest.raises(InvismapError, match=r"010002.xml"):
        import_llvip(src, tmp_path / "o1", progress=False)
    (src / "Annotations" / "010002.xml").unlink()
    with pytest.raises(InvismapError, match=r"010002.xml.*annotation missing"):
        import_llvip(src, tmp_path / "o2", progress=False)
    src, _ = make_kaist(tmp_path / "kaist")
    (src / "annotations/set00/V000/I00001.txt").write_text("% bbGt version=3\nperson five 6 10 20\n")
    with pytest.raises(InvismapError, match=r"I00001.txt:2"):
        import_kaist(src, tmp_path / "o3", progress=False)
    src, _ = make_flir(tmp_path / "flir")
    with pytest.raises(InvismapError, match="annotation file not found"):
        import_flir(src, tmp_path / "o4", progress=False, annotations="nope.json")
    (src / "thermal_annotations.json").write_text('{"images": [{"id": 0}]}')
    with pytest.raises(InvismapError, match=r"thermal_annotations.json: not a readable COCO json"):
        import_flir(src, tmp_path / "o5", progress=False, annotations="thermal_annotations.json")


def test_roadscene_meta_must_match_images(tmp_path: Path):
    src, _ = make_roadscene(tmp_path / "src")
    meta = src / "_meta" / "roadscene_meta.csv"
    meta.write_text(meta.read_text().replace("night,48,32,0", "night,48,32,3"))
    with pytest.raises(InvismapError, match=r"roadscene_flir_boxes_crop.json: frame FLIR_00018 has 0 boxes"):
        import_roadscene(src, tmp_path / "out", progress=False)
    meta.write_text(meta.read_text().replace("48,32,3", "50,32,0"))
    with pytest.raises(InvismapError, match=r"roadscene_meta.csv: frame FLIR_00018 is 50x32"):
        import_roadscene(src, tmp_path / "out", progress=False)
