"""Bad input at the command line: one line naming the file (or key) and the fix, exit 2, nothing half-written.

Every row of ``ROWS`` builds a small broken input in ``tmp_path`` (generated images, labels, configs,
arrays, checkpoints; no real data is copied), runs one ``invismap`` command in-process (or, for rows that need
a real kernel error or must prove that no traceback reaches the terminal, as a subprocess) and checks:

- the exit code is 2 and stderr holds exactly one ``invismap: error:`` line and no traceback;
- that line holds every expected fragment (the culprit file or config key, what is wrong, the fix);
- the command's product (manifest.csv, predictor.pt, the ONNX file, ...) was not written and no temporary
  ``*.tmp`` file is left in the output folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from invismap.cli import main
from invismap.data.importers import import_dataset
from invismap.engine.checkpoint import save_checkpoint
from invismap.errors import InvismapError
from invismap.invisibility.unet import InvisibilityUNet, UNetConfig
from invismap.pipeline.runner import RECORD

W, H = 64, 48  # generated test images
NAMES = ("0001D", "0002N", "0003D")
INVISMAP = Path(sys.executable).with_name("invismap")


# --------------------------------------------------------------------------------------------- inputs

def make_msrs(src: Path, names=NAMES) -> Path:
    """A tiny MSRS-layout folder: random 8-bit color/thermal pairs and one box per label file."""
    rng = np.random.default_rng(0)
    for sub in ("vi", "ir", "labels/visible", "labels/infrared"):
        (src / sub).mkdir(parents=True, exist_ok=True)
    for n in names:
        cv2.imwrite(str(src / "vi" / f"{n}.png"), rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        cv2.imwrite(str(src / "ir" / f"{n}.png"), rng.integers(0, 255, (H, W), dtype=np.uint8))
        (src / "labels/visible" / f"{n}.txt").write_text("0 0.5 0.5 0.2 0.3\n")
        (src / "labels/infrared" / f"{n}.txt").write_text("2 0.4 0.5 0.2 0.3\n")
    return src


def make_msrs_release(src: Path, splits=(("train", NAMES[:2]), ("test", NAMES[2:]))) -> Path:
    """A tiny MSRS folder as released (``{train,test}/{vi,ir}``) with Lele-3's label layout under ``labels/``
    (``{visible,infrared}/{train,test}/NAME.txt``)."""
    for split, names in splits:
        for n in names:
            for sub in (f"{split}/vi", f"{split}/ir", f"labels/visible/{split}", f"labels/infrared/{split}"):
                (src / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(src / split / "vi" / f"{n}.png"), np.zeros((H, W, 3), np.uint8))
            cv2.imwrite(str(src / split / "ir" / f"{n}.png"), np.zeros((H, W), np.uint8))
            (src / f"labels/visible/{split}/{n}.txt").write_text("0 0.5 0.5 0.2 0.3\n")
            (src / f"labels/infrared/{split}/{n}.txt").write_text("2 0.4 0.5 0.2 0.3\n")
    return src


def make_dataset(t: Path) -> Path:
    """``make_msrs`` imported into ``t/ds`` (manifest.csv + labels)."""
    import_dataset("msrs", make_msrs(t / "src"), t / "ds", progress=False)
    return t / "ds"


def make_predictor_config(t: Path, extra: str = "") -> Path:
    """A dataset, its target cache (one ``NAME.npy`` per pair) and a 2-step predictor config."""
    ds = make_dataset(t)
    (t / "tg").mkdir()
    for n in NAMES:
        np.save(t / "tg" / f"{n}.npy", np.full((H, W), 0.5, np.float16))
    cfg = t / "c.yaml"
    cfg.write_text(f"data: {ds}\ntargets: {t / 'tg'}\nsize: 64\nsplit: all\nval_every_nth: 0\n"
                   "train:\n  max_steps: 2\n  batch_size: 2\n  warmup_steps: 1\n" + extra)
    return cfg


def make_predictor_checkpoint(path: Path, unet: UNetConfig | None = None, **over) -> Path:
    """A predictor.pt as ``train_predictor`` writes it: the default U-Net config, random weights of
    ``unet``."""
    state = {"kind": "predictor", "unet_config": asdict(UNetConfig()),
             "model": InvisibilityUNet(unet).state_dict(), "input_size": 64, "square": False,
             "normalisation": "rgb 0..1", "loss": "bce", "step": 1}
    return save_checkpoint(path, {**state, **over})


class _Payload:
    """Unpickling this creates a folder: proof that the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


TINY_DARKNET = """[net]
width=64
height=64
channels=3
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters=8
size=1
stride=1
activation=leaky
[convolutional]
filters=6
size=1
stride=1
activation=linear
[yolo]
mask=0
anchors=10,14
classes=1
num=1
"""


def image_dir(t: Path) -> Path:
    (t / "img").mkdir()
    cv2.imwrite(str(t / "img" / "a.png"), np.zeros((H, W, 3), np.uint8))
    return t / "img"


# --------------------------------------------------------------------------------------------- rows

@dataclass
class Case:
    argv: list[str]
    out: Path  # output folder: no *.tmp may be left in it
    product: list[Path] = field(default_factory=list)  # files that must not exist afterwards


@dataclass
class Row:
    setup: Callable[[Path, pytest.MonkeyPatch], Case]
    fragments: tuple[str, ...]
    subprocess: bool = False


ROWS: dict[str, Row] = {}


def row(*fragments: str, subprocess: bool = False):
    def deco(fn):
        ROWS[fn.__name__] = Row(fn, fragments, subprocess)
        return fn
    return deco


def import_case(t: Path, src: Path) -> Case:
    return Case(["data", "import", "msrs", str(src), str(t / "dst")], t / "dst", [t / "dst" / "manifest.csv"])


def distill_case(t: Path, config: str) -> Case:
    """``invismap distill`` on ``config`` (YAML text) over a small dataset; nothing may be written."""
    (t / "c.yaml").write_text(f"data: {make_dataset(t)}\n{config}")
    return Case(["distill", str(t / "c.yaml"), "--run", str(t / "run")], t / "run",
                [t / "run" / "student.pt", t / "run" / "config.yaml"])


def pipeline_case(t: Path, yaml_text: str) -> Case:
    """``invismap run`` on a pipeline config (YAML text); no stage may start."""
    (t / "c.yaml").write_text(yaml_text)
    return Case(["run", str(t / "c.yaml"), f"out={t / 'out'}"], t / "out", [t / "out" / "import"])


def predictor_case(t: Path, cfg: Path, *extra: str, resume: bool = False) -> Case:
    argv = ["train-predictor", str(cfg), *extra, "--run", str(t / "run")] + (["--resume"] if resume else [])
    return Case(argv, t / "run", [t / "run" / "predictor.pt"])


# ---- images -------------------------------------------------------------------------------------

@row("vi/0002N.png", "not a readable image (corrupt or truncated)", "re-copy or remove it")
def truncated_png(t, mp):
    src = make_msrs(t / "src")
    f = src / "vi" / "0002N.png"
    f.write_bytes(f.read_bytes()[:80])
    return import_case(t, src)


@row("ir/0001D.png", "empty file (0 bytes)", "re-copy or remove it")
def zero_byte_thermal(t, mp):
    src = make_msrs(t / "src")
    (src / "ir" / "0001D.png").write_bytes(b"")
    return import_case(t, src)


@row("ir/0003D.png", "size 32x24 differs from its color twin 0003D.png (64x48)", "invismap register")
def size_mismatch(t, mp):
    src = make_msrs(t / "src")
    cv2.imwrite(str(src / "ir" / "0003D.png"), np.zeros((24, 32), np.uint8))
    return import_case(t, src)


@row("ir/0001D.png", "thermal image has 3 different channels (false-color palette?)",
     "export the raw gray thermal frames")
def false_color_thermal(t, mp):
    ds = make_dataset(t)  # the import checks channels and bit depth; the palette is refused when read
    ramp = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    cv2.imwrite(str(t / "src" / "ir" / "0001D.png"), cv2.applyColorMap(ramp, cv2.COLORMAP_JET))
    return Case(["data", "show", str(ds), "--out", str(t / "out" / "sheet.png")], t / "out",
                [t / "out" / "sheet.png"])


@row("vi/0002N.png", "color image has dtype uint16, expected 8-bit", "convert it to 8-bit RGB")
def color_16bit(t, mp):
    src = make_msrs(t / "src")
    cv2.imwrite(str(src / "vi" / "0002N.png"), np.full((H, W, 3), 1000, np.uint16))
    return import_case(t, src)


@row("ir/0001D.tif", "thermal image has dtype float32, expected 8- or 16-bit")
def float_thermal(t, mp):
    src = make_msrs(t / "src")
    (src / "ir" / "0001D.png").unlink()
    cv2.imwrite(str(src / "ir" / "0001D.tif"), np.full((H, W), 0.5, np.float32))
    return import_case(t, src)


@row("ir/0001D.tif", "image holds NaN or inf values")
def nan_thermal(t, mp):
    src = make_msrs(t / "src")
    (src / "ir" / "0001D.png").unlink()
    frame = np.full((H, W), 0.5, np.float32)
    frame[3, 4] = np.nan
    cv2.imwrite(str(src / "ir" / "0001D.tif"), frame)
    return import_case(t, src)


@row("vi/0002N.png", "no thermal twin", "add the thermal frame or remove the color one")
def missing_twin(t, mp):
    src = make_msrs(t / "src")
    (src / "ir" / "0002N.png").unlink()
    return import_case(t, src)


@row("src/vi", "no images found", "expected files ending in .png")
def empty_folder(t, mp):
    src = make_msrs(t / "src")
    for p in (src / "vi").iterdir():
        p.unlink()
    return import_case(t, src)


# ---- MSRS layouts: flattened (vi/, ir/) or as released (train|test/vi|ir) ------------------------

@row("/src: no MSRS images found",
     "expected vi/ and ir/, or the MSRS release's train/{vi,ir} and test/{vi,ir}")
def msrs_no_layout(t, mp):
    src = make_msrs(t / "src")
    (src / "vi").rename(src / "visible")
    (src / "ir").rename(src / "infrared")
    return import_case(t, src)


@row("src/ir: folder not found", "the flattened MSRS layout has vi/ and ir/ side by side")
def msrs_flat_without_ir(t, mp):
    src = make_msrs(t / "src")
    shutil.rmtree(src / "ir")
    return import_case(t, src)


@row("src/train/ir: folder not found", "the MSRS release layout has train/vi and train/ir")
def msrs_release_without_train_ir(t, mp):
    src = make_msrs_release(t / "src")
    shutil.rmtree(src / "train" / "ir")
    return import_case(t, src)


@row("test/vi/0003D.png", "no thermal twin in", "test/ir", "add the thermal frame or remove the color one")
def msrs_release_names_differ(t, mp):
    src = make_msrs_release(t / "src")
    (src / "test/ir/0003D.png").rename(src / "test/ir/0003N.png")
    return import_case(t, src)


@row("test/vi/0001D.png", "pair 0001D is also in train/", "keep the pair in one split")
def msrs_release_name_in_both_splits(t, mp):
    src = make_msrs_release(t / "src", splits=(("train", NAMES[:2]), ("test", NAMES[:1])))
    return import_case(t, src)


@row("src: holds both MSRS layouts", "keep one of them")
def msrs_both_layouts(t, mp):
    src = make_msrs_release(t / "src")
    make_msrs(src)
    return import_case(t, src)


@row("labels/infrared/train/0002N.txt", "label file missing for pair 0002N",
     "add an empty file if 0002N has no")
def msrs_release_label_missing(t, mp):
    src = make_msrs_release(t / "src")
    (src / "labels/infrared/train/0002N.txt").unlink()
    return import_case(t, src)


@row("labels/visible/test/0001D.txt", "is under test/ but pair 0001D's images are under train/",
     "use labels from the same MSRS release")
def msrs_release_label_in_other_split(t, mp):
    src = make_msrs_release(t / "src")
    (src / "labels/visible/train/0001D.txt").rename(src / "labels/visible/test/0001D.txt")
    return import_case(t, src)


# ---- labels and tables --------------------------------------------------------------------------

@row("labels/infrared/0002N.txt:2", "expected 'class cx cy w h', got 3 fields")
def label_bad_line(t, mp):
    src = make_msrs(t / "src")
    (src / "labels/infrared/0002N.txt").write_text("0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n")
    return import_case(t, src)


@row("labels/infrared/0003D.txt:1", "box 0.5 0.5 1.7 0.2 out of range", "normalised values in 0..1")
def label_box_out_of_range(t, mp):
    src = make_msrs(t / "src")
    (src / "labels/infrared/0003D.txt").write_text("0 0.5 0.5 1.7 0.2\n")
    return import_case(t, src)


@row("labels/visible/0001D.txt:1", "box nan 0.5 0.1 0.1 out of range")
def label_nan(t, mp):
    src = make_msrs(t / "src")
    (src / "labels/visible/0001D.txt").write_text("0 nan 0.5 0.1 0.1\n")
    return import_case(t, src)


@row("labels/visible/0001D.txt:1", "class 5 out of range 0..2")
def label_class_out_of_range(t, mp):
    src = make_msrs(t / "src")
    (src / "labels/visible/0001D.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    return import_case(t, src)


@row("labels/visible/0002N.txt", "label file is not text")
def label_binary(t, mp):
    src = make_msrs(t / "src")
    (src / "labels/visible/0002N.txt").write_bytes(b"\xff\xfe\x00\x89PNG")
    return import_case(t, src)


@row("pairs.csv:3", "split 'validation' not one of train, val, test, all")
def split_table_bad_value(t, mp):
    src = make_msrs(t / "src")
    (src / "pairs.csv").write_text("name,dev_split\n0001D,train\n0002N,validation\n0003D,test\n")
    return import_case(t, src)


@row("pairs.csv", "has no 'name' column", "columns: dev_split")
def split_table_no_name_column(t, mp):
    src = make_msrs(t / "src")
    (src / "pairs.csv").write_text("dev_split\ntrain\n")
    return import_case(t, src)


@row("roadscene_flir_boxes_crop.json [FLIR_00001]", "boxes must be lists of 4 numbers [x1, y1, x2, y2]",
     "fix or delete the malformed box")
def roadscene_malformed_box(t, mp):
    src = t / "src"
    for sub in ("crop_LR_visible", "cropinfrared", "_meta"):
        (src / sub).mkdir(parents=True)
    cv2.imwrite(str(src / "crop_LR_visible/FLIR_00001.jpg"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(src / "cropinfrared/FLIR_00001.jpg"), np.zeros((H, W), np.uint8))
    (src / "_meta/roadscene_meta.csv").write_text("name,flir_aligned_split,daynight\nFLIR_00001,train,day\n")
    (src / "_meta/roadscene_flir_boxes_crop.json").write_text(
        '{"boxes": {"FLIR_00001": [{"category": "car", "xyxy_crop": [1, 2, "x", 4]}]}}')
    return Case(["data", "import", "roadscene", str(src), str(t / "dst")], t / "dst",
                [t / "dst" / "manifest.csv"])


@row("FLIR ADAS v2 layout", "is not read", "use FLIR-aligned (JPEGImages/)")
def flir_adas_v2_layout(t, mp):
    src = t / "src"
    for sub in ("images_thermal_train/data", "images_rgb_train/data"):
        (src / sub).mkdir(parents=True)
    cv2.imwrite(str(src / "images_thermal_train/data/video-1-frame-000000-a.jpg"), np.zeros((H, W), np.uint8))
    cv2.imwrite(str(src / "images_rgb_train/data/video-2-frame-000000-b.jpg"), np.zeros((H, W, 3), np.uint8))
    return Case(["data", "import", "flir", str(src), str(t / "dst")], t / "dst",
                [t / "dst" / "manifest.csv"])


@row("I00000.txt:2", "expected 'label x y w h ...', got 'person 1 2'")
def kaist_bad_bbgt_line(t, mp):
    src = t / "src"
    for sub in ("set00/V000/visible", "set00/V000/lwir", "annotations/set00/V000"):
        (src / sub).mkdir(parents=True)
    cv2.imwrite(str(src / "set00/V000/visible/I00000.jpg"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(src / "set00/V000/lwir/I00000.jpg"), np.zeros((H, W), np.uint8))
    (src / "annotations/set00/V000/I00000.txt").write_text("% bbGt version=3\nperson 1 2\n")
    return Case(["data", "import", "kaist", str(src), str(t / "dst")], t / "dst",
                [t / "dst" / "manifest.csv"])


@row("Annotations/010001.xml", "not a readable Pascal VOC annotation", "<bndbox> with xmin/ymin/xmax/ymax")
def llvip_voc_without_coordinates(t, mp):
    src = t / "src"
    for sub in ("visible/train", "infrared/train", "Annotations"):
        (src / sub).mkdir(parents=True)
    cv2.imwrite(str(src / "visible/train/010001.jpg"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(src / "infrared/train/010001.jpg"), np.zeros((H, W), np.uint8))
    (src / "Annotations/010001.xml").write_text(
        "<annotation><object><name>person</name><bndbox><xmin>1</xmin></bndbox></object></annotation>")
    return Case(["data", "import", "llvip", str(src), str(t / "dst")], t / "dst",
                [t / "dst" / "manifest.csv"])


# ---- manifests ----------------------------------------------------------------------------------

@row("ds/manifest.csv:2", "sample name '../../evil' is not a plain file name", "remove '/'")
def manifest_path_traversal(t, mp):
    ds = make_dataset(t)
    lines = (ds / "manifest.csv").read_text().splitlines()
    lines[1] = lines[1].replace("0001D", "../../evil", 1)
    (ds / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = t / "out" / "reg"
    return Case(["register", "--data", str(ds), "--shift", "1", "1", "--out", str(out)], t / "out",
                [out / "manifest.csv", t / "out" / "evil.png", t / "evil.png"])


@row("src/vi: 0001D.jpg and 0001D.png share a name", "keep one of them")
def import_two_color_images_of_one_name(t, mp):
    src = make_msrs(t / "src")
    shutil.copy(src / "vi" / "0001D.png", src / "vi" / "0001D.jpg")
    return import_case(t, src)


@row("sheet.txt: could not write a .txt image", "write .png, or .jpg for 8-bit images")
def show_to_a_text_file(t, mp):
    return Case(["data", "show", str(make_dataset(t)), "--out", str(t / "out" / "sheet.txt")], t / "out",
                [t / "out" / "sheet.txt"])


@row("x.json: holds no offsets", "use the displacement.json of 'invismap displacement'")
def register_offset_from_an_empty_json(t, mp):
    ds = make_dataset(t)
    (t / "x.json").write_text("{}")
    return Case(["register", "--data", str(ds), "--offset-from", str(t / "x.json"), "--out", str(t / "out")],
                t / "out", [t / "out" / "manifest.csv"])


@row("ds: is the dataset being read", "write the new dataset to another folder")
def register_over_its_own_input(t, mp):
    ds = make_dataset(t)
    return Case(["register", "--data", str(ds), "--shift", "0", "3", "--out", str(ds)], ds,
                [ds / "color", ds / "registration.json"])


@row("ds/manifest.csv", "manifest lists no samples", "check the import source folder")
def manifest_empty(t, mp):
    (t / "ds").mkdir()
    (t / "ds" / "manifest.csv").write_text("name,color,thermal\n")
    return Case(["data", "show", str(t / "ds"), "--out", str(t / "out" / "sheet.png")], t / "out",
                [t / "out" / "sheet.png"])


@row("manifest.csv", "unknown column(s) colour", "allowed: name, color, thermal")
def manifest_unknown_column(t, mp):
    (t / "ds").mkdir()
    (t / "ds" / "manifest.csv").write_text("name,color,thermal,colour\na,a.png,b.png,red\n")
    return Case(["data", "summary", str(t / "ds"), "--json", str(t / "out" / "s.json")], t / "out",
                [t / "out" / "s.json"])


@row("manifest.csv:3", "row has more fields than the header", "quote paths that hold a comma")
def manifest_ragged_row(t, mp):
    ds = make_dataset(t)
    lines = (ds / "manifest.csv").read_text().splitlines()
    lines[2] += ",extra"
    (ds / "manifest.csv").write_text("\n".join(lines) + "\n")
    return Case(["data", "summary", str(ds), "--json", str(t / "out" / "s.json")], t / "out",
                [t / "out" / "s.json"])


@row("src/vi/0003D.png", "file not found")
def manifest_image_gone(t, mp):
    ds = make_dataset(t)
    (t / "src" / "vi" / "0003D.png").unlink()
    return Case(["data", "show", str(ds), "--out", str(t / "out" / "sheet.png")], t / "out",
                [t / "out" / "sheet.png"])


# ---- configs ------------------------------------------------------------------------------------

@row("c.yaml", "unknown config key 'unet.widht'", "allowed: base_width, depth")
def config_unknown_key(t, mp):
    (t / "c.yaml").write_text("unet:\n  widht: 16\n")
    return predictor_case(t, t / "c.yaml")


@row("c.yaml", "config key 'train.max_steps': expected int, got 'many'")
def config_wrong_type(t, mp):
    (t / "c.yaml").write_text("train:\n  max_steps: many\n")
    return predictor_case(t, t / "c.yaml")


@row("c.yaml", "config key 'loss': 'l1' is not one of 'bce', 'mse'")
def config_not_an_allowed_value(t, mp):
    (t / "c.yaml").write_text("loss: l1\n")
    return predictor_case(t, t / "c.yaml")


@row("c.yaml", "train: expected a mapping of keys, got list")
def config_section_not_a_mapping(t, mp):
    (t / "c.yaml").write_text("train: [1, 2]\n")
    return predictor_case(t, t / "c.yaml")


@row("c.yaml", "not valid YAML at line 2")
def config_invalid_yaml(t, mp):
    (t / "c.yaml").write_text("size: 64\n\tloss: bce\n")
    return predictor_case(t, t / "c.yaml")


@row("c.yaml", "not valid YAML at line 1")
def config_yaml_python_tag_is_not_run(t, mp):
    (t / "c.yaml").write_text(f"size: !!python/object/apply:os.mkdir ['{t / 'pwned'}']\n")
    return Case(predictor_case(t, t / "c.yaml").argv, t / "run", [t / "pwned"])


@row("c.yaml", "config is not UTF-8 text", "pass a YAML file")
def config_binary(t, mp):
    (t / "c.yaml").write_bytes(b"\xff\xfe\x00\x01")
    return predictor_case(t, t / "c.yaml")


@row("override 'train.lr'", "must look like key.sub=value")
def config_override_without_value(t, mp):
    (t / "c.yaml").write_text("size: 64\n")
    return predictor_case(t, t / "c.yaml", "train.lr")


@row("config key 'train.batch_size'", "0 is not allowed", "an integer >= 1")
def config_batch_size_zero(t, mp):
    return predictor_case(t, make_predictor_config(t), "train.batch_size=0")


@row("config key 'size'", "a multiple of 32, >= 32")
def config_size_zero(t, mp):
    return predictor_case(t, make_predictor_config(t), "size=0")


@row("config key 'unet'", "need depth >= 2")
def config_impossible_unet(t, mp):
    return predictor_case(t, make_predictor_config(t), "unet.depth=1")


@row("device 'tpu' is not a device", "use auto, cpu, cuda or cuda:N")
def config_unknown_device(t, mp):
    return predictor_case(t, make_predictor_config(t), "train.device=tpu")


# ---- arrays -------------------------------------------------------------------------------------

@row("tg/0001D.npy", "target holds NaN or inf", "recompute it")
def target_nan(t, mp):
    cfg = make_predictor_config(t)
    bad = np.full((H, W), 0.5, np.float16)
    bad[5, 5] = np.inf
    np.save(t / "tg" / "0001D.npy", bad)
    return predictor_case(t, cfg)


@row("tg/0001D.npy", "not a readable .npy target", "Object arrays cannot be loaded", "recompute it")
def target_pickled_object_array(t, mp):
    cfg = make_predictor_config(t)
    np.save(t / "tg" / "0001D.npy", np.array([_Payload(t / "pwned")], dtype=object), allow_pickle=True)
    return Case(predictor_case(t, cfg).argv, t / "run", [t / "run" / "predictor.pt", t / "pwned"])


@row("tg/0001D.npy", "target holds <U1 values, expected numbers in [0, 1]", "recompute it")
def target_strings(t, mp):
    cfg = make_predictor_config(t)
    np.save(t / "tg" / "0001D.npy", np.full((H, W), "a"))
    return predictor_case(t, cfg)


@row("tg/0001D.npy", "target is 10x10, expected the canvas 64x64 or the image 64x48",
     "recompute the targets with the same size/square settings")
def target_wrong_shape(t, mp):
    cfg = make_predictor_config(t)
    np.save(t / "tg" / "0001D.npy", np.zeros((10, 10), np.float16))
    return predictor_case(t, cfg)


@row("h.txt", "expected an invertible 3x3 matrix")
def homography_with_nan(t, mp):
    ds = make_dataset(t)
    (t / "h.txt").write_text("1 0 0\n0 1 0\n0 0 nan\n")
    argv = ["register", "--data", str(ds), "--homography-file", str(t / "h.txt"), "--out", str(t / "out")]
    return Case(argv, t / "out", [t / "out" / "manifest.csv"])


# ---- checkpoints --------------------------------------------------------------------------------

def predict_case(t: Path, model: Path) -> Case:
    return Case(["predict", "--model", str(model), str(image_dir(t)), "--out", str(t / "out")], t / "out",
                [t / "out" / "index.json", t / "out" / "a_map.npy"])


@row("s.pt", "is a 'student' checkpoint, expected predictor", "pass the right file")
def checkpoint_wrong_kind(t, mp):
    save_checkpoint(t / "s.pt", {"kind": "student", "model": {}})
    return predict_case(t, t / "s.pt")


@row("p.pt", "weights are for another architecture", "use a checkpoint made with the same model/config")
def checkpoint_other_architecture(t, mp):
    return predict_case(t, make_predictor_checkpoint(t / "p.pt", UNetConfig(base_width=4)))


@row("p.pt", "written by invismap 9.0.0, newer than this invismap", "upgrade invismap")
def checkpoint_newer_version(t, mp):
    return predict_case(t, make_predictor_checkpoint(t / "p.pt", version="9.0.0"))


@row("evil.pt", "refused to load", "posix.mkdir", "possibly malicious", "source you trust")
def checkpoint_malicious_pickle(t, mp):
    torch.save({"kind": "predictor", "model": _Payload(t / "pwned")}, t / "evil.pt")
    case = predict_case(t, t / "evil.pt")
    case.product.append(t / "pwned")
    return case


@row("evil.pt", "refused to load: the file asks to call posix.mkdir", "possibly malicious")
def detector_malicious_pickle(t, mp):
    torch.save({"model": _Payload(t / "pwned"), "epoch": 3}, t / "evil.pt")
    return Case(["detect", "--model", str(t / "evil.pt"), str(image_dir(t)), "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json", t / "pwned"])


@row("ckpt/last.pt", "not a readable invismap checkpoint", "resume from an earlier one")
def resume_from_truncated_checkpoint(t, mp):
    cfg = make_predictor_config(t)
    assert main(["train-predictor", str(cfg), "train.max_steps=1", "--run", str(t / "run")]) == 0
    last = t / "run" / "ckpt" / "last.pt"
    last.write_bytes(last.read_bytes()[:4096])
    (t / "run" / "predictor.pt").unlink()
    return predictor_case(t, cfg, "train.max_steps=1", resume=True)


@row("run/config.yaml", "resuming with 'unet.base_width' changed (8 -> 4)",
     "start a new run (another --run folder")
def resume_with_other_settings(t, mp):
    cfg = make_predictor_config(t)
    assert main(["train-predictor", str(cfg), "train.max_steps=1", "--run", str(t / "run")]) == 0
    (t / "run" / "predictor.pt").unlink()
    return predictor_case(t, cfg, "train.max_steps=1", "unet.base_width=4", resume=True)


@row("ckpt/last.pt", "weights are for another architecture", "same model/config")
def resume_with_other_architecture(t, mp):
    cfg = make_predictor_config(t)
    assert main(["train-predictor", str(cfg), "train.max_steps=1", "--run", str(t / "run")]) == 0
    (t / "run" / "predictor.pt").unlink()
    (t / "run" / "config.yaml").unlink()  # the settings it ran with are lost: the weights still tell
    return predictor_case(t, cfg, "train.max_steps=1", "unet.base_width=4", resume=True)


@row("ckpt/last.pt", "nothing to resume from", "start without --resume")
def resume_without_checkpoint(t, mp):
    return predictor_case(t, make_predictor_config(t), resume=True)


@row("m.cfg:12", "unknown section [conv]", "supported: [net], [convolutional]")
def darknet_cfg_unknown_section(t, mp):
    (t / "m.cfg").write_text(TINY_DARKNET.replace("[convolutional]\nfilters=8\nsize=1",
                                                  "[conv]\nfilters=8\nsize=1"))
    (t / "m.weights").write_bytes(b"\0" * 64)
    return Case(["detect", "--model", str(t / "m.cfg"), str(image_dir(t)), "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json"])


@row("m.weights", "truncated .weights file", "re-download it")
def darknet_weights_truncated(t, mp):
    (t / "m.cfg").write_text(TINY_DARKNET)
    (t / "m.weights").write_bytes(np.array([0, 2, 0], "<i4").tobytes() + b"\0" * 8 + b"\0" * 40)
    return Case(["detect", "--model", str(t / "m.cfg"), str(image_dir(t)), "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json"])


@row("ds/manifest.csv: the output must end in .json", "an existing file of another kind would be replaced")
def summary_json_over_the_manifest(t, mp):
    ds = make_dataset(t)
    return Case(["data", "summary", str(ds), "--json", str(ds / "manifest.csv")], ds, [])


@row("board.png: the output must end in .yaml or .yml", "choose another file name")
def calibrate_out_over_an_image(t, mp):
    (t / "c").mkdir()
    cv2.imwrite(str(t / "c" / "board.png"), np.zeros((H, W, 3), np.uint8))
    return Case(["calibrate", "--color", str(t / "c"), "--thermal", str(t / "c"), "--pattern", "7x5",
                 "--square", "0.04", "--out", str(t / "c" / "board.png")], t / "c", [])


@row("--out is the folder of the images read", "choose another --out")
def detect_drawings_over_the_images(t, mp):
    images = image_dir(t)
    return Case(["detect", "--model", "yolov5n", str(images), "--out", str(images)], images,
                [images / "detections.json"])


@row("m.weights", "Darknet weights are read through their .cfg", "pass m.cfg, with the .weights beside it")
def darknet_weights_given_as_the_model(t, mp):
    (t / "m.cfg").write_text(TINY_DARKNET)
    (t / "m.weights").write_bytes(b"\0" * 64)
    return Case(["detect", "--model", str(t / "m.weights"), str(image_dir(t)), "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json"])


@row("m.onnx", "not a readable ONNX model", "re-export it with 'invismap export'")
def detector_onnx_not_onnx(t, mp):
    (t / "m.onnx").write_bytes(b"this is not a protobuf" * 10)
    return Case(["detect", "--model", str(t / "m.onnx"), str(image_dir(t)), "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json"])


@row("missing.onnx", "not found", "invismap export")
def detector_onnx_missing(t, mp):
    return Case(["detect", "--model", str(t / "missing.onnx"), str(image_dir(t)), "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json"])


@row("--conf nan", "must be a number in [0, 1]")
def detect_nan_threshold(t, mp):
    return Case(["detect", "--conf", "nan", str(image_dir(t)), "--out", str(t / "out")], t / "out",
                [t / "out" / "detections.json"])


@row("--tta-sizes 8", "must be between 32 and 8192 pixels")
def detect_tiny_tta_size(t, mp):
    return Case(["detect", str(image_dir(t)), "--tta-sizes", "512", "8", "--out", str(t / "out")], t / "out",
                [t / "out" / "detections.json"])


@row("is a folder, not a file", "give a file name, e.g.")
def eval_detector_json_to_a_folder(t, mp):
    (t / "out").mkdir()
    return Case(["eval-detector", "--data", str(make_dataset(t)), "--json", str(t / "out")], t / "out",
                [t / "out" / "results.json"])


@row("--bootstrap -1", "must be 0 (no intervals) or more")
def eval_detector_negative_bootstrap(t, mp):
    return Case(["eval-detector", "--data", str(t), "--bootstrap", "-1", "--json", str(t / "out" / "e.json")],
                t / "out", [t / "out" / "e.json"])


@row("--reference yolov5n is --model itself", "give another detector")
def eval_detector_reference_is_the_model(t, mp):
    return Case(["eval-detector", "--data", str(t), "--reference", "yolov5n",
                 "--json", str(t / "out" / "e.json")], t / "out", [t / "out" / "e.json"])


def pair_dirs(t: Path, thermal_size: tuple[int, int] = (W, H), names=("a",)) -> tuple[Path, Path]:
    """Folders ``t/c`` (color) and ``t/t`` (thermal) with one blank image per name."""
    for sub in ("c", "t"):
        (t / sub).mkdir()
    for n in names:
        cv2.imwrite(str(t / "c" / f"{n}.png"), np.zeros((H, W, 3), np.uint8))
    cv2.imwrite(str(t / "t" / "a.png"), np.zeros(thermal_size[::-1], np.uint8))
    return t / "c", t / "t"


def fusion_case(t: Path, *extra: str, thermal_size: tuple[int, int] = (W, H), names=("a",)) -> Case:
    color, thermal = pair_dirs(t, thermal_size, names)
    (t / "td.pt").write_bytes(b"not read: the flags are checked first")
    return Case(["detect", str(color), "--thermal", str(thermal), "--thermal-detector", str(t / "td.pt"),
                 *extra, "--out", str(t / "out")], t / "out", [t / "out" / "detections.json"])


@row("fusion needs both --thermal", "--thermal-detector")
def fusion_without_thermal_detector(t, mp):
    color, thermal = pair_dirs(t)
    return Case(["detect", str(color), "--thermal", str(thermal), "--out", str(t / "out")], t / "out",
                [t / "out" / "detections.json"])


@row("--map m.pt", "a map only weights a fusion", "--thermal")
def map_without_fusion(t, mp):
    return Case(["detect", str(image_dir(t)), "--map", "m.pt", "--out", str(t / "out")], t / "out",
                [t / "out" / "detections.json"])


@row("t/a.png", "size 32x24 differs from its color twin a.png (64x48)", "invismap register")
def fusion_unregistered_pair(t, mp):
    return fusion_case(t, thermal_size=(32, 24))


@row("/t:", "no thermal twin of b.png (1 of 2 color images have none)", "name each thermal image like")
def fusion_missing_thermal_twin(t, mp):
    return fusion_case(t, names=("a", "b"))


@row("--map heatmap.png", "give a predictor checkpoint (.pt or .onnx), 'pair' or 'none'")
def fusion_unknown_map(t, mp):
    return fusion_case(t, "--map", "heatmap.png")


@row("missing.pt", "predictor not found", "'pair' or 'none'")
def fusion_missing_predictor(t, mp):
    return fusion_case(t, "--map", str(t / "missing.pt"))


@row("--color-weight", "must be a number in [0.0, inf], got -0.5")
def fusion_negative_color_weight(t, mp):
    return fusion_case(t, "--color-weight", "-0.5")


@row("--map-strength", "must be a number in [0.0, 1.0], got 2.0")
def fusion_linear_strength_above_one(t, mp):
    return fusion_case(t, "--map", "pair", "--map-strength", "2")


@row("f.json", "fusion results not found", "fusion.enabled: true")
def fusion_weights_from_missing_file(t, mp):
    return fusion_case(t, "--weights-from", str(t / "f.json"), "--condition", "night")


@row("f.json", "no weights for condition 'night' (it has day)", "--condition")
def fusion_weights_from_without_the_condition(t, mp):
    (t / "f.json").write_text('{"conditions": {"day": {"label_sets": {"thermal": {"chosen": {}}}}}}')
    return fusion_case(t, "--weights-from", str(t / "f.json"), "--condition", "night")


@row("--weights-from needs --condition day or night")
def fusion_weights_from_without_a_condition(t, mp):
    (t / "f.json").write_text('{"conditions": {}}')
    return fusion_case(t, "--weights-from", str(t / "f.json"))


@row("two image files or two folders, not one of each")
def fusion_file_and_folder(t, mp):
    color, thermal = pair_dirs(t)
    return Case(["detect", str(color / "a.png"), "--thermal", str(thermal), "--thermal-detector",
                 str(t / "td.pt"), "--out", str(t / "out")], t / "out", [t / "out" / "detections.json"])


# ---- output folders -----------------------------------------------------------------------------

@row("blocker", "is a file, not a folder", "remove that file or choose another output path")
def output_folder_is_a_file(t, mp):
    ds = make_dataset(t)
    (t / "blocker").write_text("not a folder")
    return Case(["data", "show", str(ds), "--out", str(t / "blocker" / "sheet.png")], t, [])


@row("out/sheet.png", "disk full while writing", "free some space")
def disk_full(t, mp):
    ds = make_dataset(t)

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mp.setattr(os, "fsync", no_space)  # the last step of every atomic write: as a full disk reports it
    return Case(["data", "show", str(ds), "--out", str(t / "out" / "sheet.png")], t / "out",
                [t / "out" / "sheet.png"])


# ---- invisibility maps: evaluation and targets ----------------------------------------------------

def eval_case(t: Path, *maps: str, extra: tuple[str, ...] = ()) -> Case:
    ds = make_dataset(t)
    return Case(["eval-invisibility", "--data", str(ds), "--split", "all", "--maps", *maps, "--json",
                 str(t / "out" / "inv.json"), *extra], t / "out", [t / "out" / "inv.json"])


@row("tg/prior.npy", "no fixed prior here", "run score-pairs")
def eval_prior_without_targets(t, mp):
    (t / "tg").mkdir()
    return eval_case(t, "darkness", f"prior:{t / 'tg'}")


@row("map source 'random:often'", "the argument is a seed")
def eval_random_seed_not_a_number(t, mp):
    return eval_case(t, "random:often")


@row("unknown map source 'brightness'", "known: ", "prior:TARGETS")
def eval_unknown_map_source(t, mp):
    return eval_case(t, "darkness", "brightness")


@row("--bootstrap must be at least 1")
def eval_no_bootstrap(t, mp):
    return eval_case(t, "darkness", extra=("--bootstrap", "0"))


@row("targets are training data", "--split train", "never the test split")
def score_pairs_on_test(t, mp):
    return Case(["score-pairs", "--student", str(t / "student.pt"), "--data", str(make_dataset(t)), "--out",
                 str(t / "tg"), "--split", "test"], t / "tg", [t / "tg" / "targets.json"])


@row("tg/targets.json", "targets were made with target.kind = 'pair', the config says 'pair+detectors'",
     "or recompute them (score-pairs)")
def predictor_targets_of_another_kind(t, mp):
    cfg = make_predictor_config(t, "target: {kind: pair+detectors, light: 0.5}\n")
    (t / "tg" / "targets.json").write_text(json.dumps({"size": 64, "square": False, "count": len(NAMES),
                                                       "target": {"kind": "pair", "light": 0.0}}))
    return predictor_case(t, cfg)


@row("tg: holds targets made with other settings (size 128, pair targets)", "choose a new --out")
def score_pairs_into_a_cache_of_other_settings(t, mp):
    (t / "tg").mkdir()
    (t / "tg" / "targets.json").write_text(json.dumps({"size": 128, "square": False, "count": 3,
                                                       "target": {"kind": "pair"}}))
    return Case(["score-pairs", "--student", str(t / "student.pt"), "--data", str(make_dataset(t)), "--out",
                 str(t / "tg"), "--split", "all", "--size", "64"], t / "tg", [t / "tg" / "0001D.npy"])


@row("object_weight needs targets of kind 'pair+detectors'", "evidence.json")
def predictor_object_weight_without_evidence(t, mp):
    return predictor_case(t, make_predictor_config(t, "object_weight: 2.0\n"))


@row("config key 'target.kind'", "'magic' is not one of 'pair', 'pair+detectors'")
def predictor_unknown_target_kind(t, mp):
    return predictor_case(t, make_predictor_config(t, "target: {kind: magic}\n"))


@row("config key 'target.thermal_tta_sizes'", "16 is not allowed (multiples of 32")
def predictor_thermal_tta_sizes(t, mp):
    return predictor_case(t, make_predictor_config(t, "target: {thermal_tta_sizes: [512, 16]}\n"))


@row("config key 'model'", "'transformer' is not one of 'unet', 'neck'")
def predictor_unknown_model(t, mp):
    return predictor_case(t, make_predictor_config(t, "model: transformer\n"))


@row("more/manifest.csv", "no day pairs in split 'all' to distil on", "leave it out of data.more")
def distill_more_data_without_training_pairs(t, mp):
    ds = make_dataset(t)
    (t / "more").mkdir()
    rows = (ds / "manifest.csv").read_text().splitlines()
    night = [r.replace("../src", "../ds/../src") for r in rows[1:] if ",night," in r]
    (t / "more" / "manifest.csv").write_text("\n".join([rows[0]] + night) + "\n")
    (t / "c.yaml").write_text(f"data: {ds}\nsplit: all\nextra_data: [{t / 'more' / 'manifest.csv'}]\n")
    return Case(["distill", str(t / "c.yaml"), "--run", str(t / "run")], t / "run",
                [t / "run" / "student.pt"])


@row("split 'all' holds 1 test pair,", "nothing trains on the test split", "use split 'train'")
def distill_on_every_split_of_a_split_dataset(t, mp):
    import_dataset("msrs", make_msrs_release(t / "src"), t / "ds", progress=False)
    (t / "c.yaml").write_text(f"data: {t / 'ds'}\nsplit: all\n")
    return Case(["distill", str(t / "c.yaml"), "--run", str(t / "run")], t / "run",
                [t / "run" / "student.pt"])


@row("config key 'soup'", "0 is not allowed", "an integer >= 1")
def distill_soup_of_none(t, mp):
    return distill_case(t, "soup: 0\n")


@row("config key 'extra_repeat'", "0 is not allowed", "an integer >= 1")
def distill_extra_pairs_never_drawn(t, mp):
    return distill_case(t, "extra_repeat: 0\n")


@row("config key 'extra_repeat'", "3 is not allowed", "there are no extra pairs")
def distill_extra_repeat_without_extra_pairs(t, mp):
    return distill_case(t, "extra_repeat: 3\n")


@row("config key 'head_focus'", "-1.0 is not allowed", "a finite number >= 0")
def distill_negative_head_focus(t, mp):
    return distill_case(t, "loss: head\nhead_focus: -1.0\n")


@row("config key 'augment.thermal_gamma'", "[1.5, 0.5] is not allowed", "0 < low <= high")
def distill_thermal_gamma_reversed(t, mp):
    return distill_case(t, "augment: {thermal_gamma: [1.5, 0.5]}\n")


@row("config key 'augment.thermal_gamma'", "[0.0, 1.0] is not allowed", "0 < low <= high")
def distill_thermal_gamma_zero(t, mp):
    return distill_case(t, "augment: {thermal_gamma: [0.0, 1.0]}\n")


@row("config key 'augment.thermal_agc'", "2.0 is not allowed", "a probability in [0, 1]")
def distill_thermal_agc_above_one(t, mp):
    return distill_case(t, "augment: {thermal_agc: 2.0}\n")


@row("config key 'rounds'", "0 is not allowed", "an integer >= 1")
def distill_no_rounds(t, mp):
    return distill_case(t, "loss: head\nrounds: 0\n")


@row("config key 'thermal_teacher'", "needs a thermal detector", "thermal_detector.pt")
def distill_thermal_teacher_is_a_color_detector(t, mp):
    from conftest import find_assets

    if find_assets() is None:  # conftest points INVISMAP_ASSETS at them when they are found
        pytest.skip("real assets not found (the teacher's weights)")
    return distill_case(t, "split: all\nloss: head\nthermal_teacher: yolov5n\n")


@row("config key 'thermal_teacher'", "is not allowed", "only with loss: head or mid+head")
def distill_thermal_teacher_with_mid_loss(t, mp):
    return distill_case(t, "loss: mid\nthermal_teacher: yolov5n\n")


@row("config key 'fusion.maps'", "unknown map 'darkness'", "known: predictor, pair")
def pipeline_fusion_unknown_map(t, mp):
    return pipeline_case(t, "fusion: {enabled: true, maps: [predictor, darkness]}\n")


@row("config key 'fusion.weights_per'", "'night' is not one of condition, all")
def pipeline_fusion_weights_per(t, mp):
    return pipeline_case(t, "fusion: {enabled: true, weights_per: night}\n")


@row("config key 'evaluate.tta_sizes'", "16 is not allowed (multiples of 32")
def pipeline_tta_sizes(t, mp):
    return pipeline_case(t, "evaluate: {tta_sizes: [512, 16]}\n")


@row("config key 'evaluate.nms_iou'", "1.5 is not allowed (a number between 0 and 1")
def pipeline_nms_iou(t, mp):
    return pipeline_case(t, "evaluate: {nms_iou: 1.5}\n")


@row("config key 'data.max_pairs'", "-3 is not allowed (a count >= 0; 0 = all)")
def pipeline_negative_count(t, mp):
    return pipeline_case(t, "data: {max_pairs: -3}\n")


@row("no pairs to align", "check --split")
def align_an_empty_split(t, mp):
    return Case(["align", "--model", str(t / "a.pt"), "--data", str(make_dataset(t)), "--split", "val",
                 "--out", str(t / "out")], t / "out", [t / "out" / "manifest.csv"])


@row("config key 'distill.extra_repeat'", "data.more is empty", "list a dataset there or set it to 1")
def pipeline_extra_repeat_without_more(t, mp):
    return pipeline_case(t, "distill: {extra_repeat: 2}\n")


@row("config key 'evaluate.other'", "roadscene is also in data.more", "score it on split 'test'")
def pipeline_other_dataset_distilled_on(t, mp):
    return pipeline_case(t, f"data: {{more: [{{format: roadscene, src: {t}}}]}}\n"
                            f"evaluate: {{other: [{{format: roadscene, src: {t}, split: all}}]}}\n")


@row("config key 'data.more'", "format 'roadscene' is listed twice")
def pipeline_more_dataset_twice(t, mp):
    (t / "rs").mkdir()
    return pipeline_case(t, f"data: {{more: [{{format: roadscene, src: {t / 'rs'}}}, "
                            f"{{format: roadscene, src: {t / 'rs'}}}]}}\n")


@row("a folder this pipeline did not make", "choose another out=")
def pipeline_out_is_a_foreign_folder(t, mp):
    (t / "out" / "import").mkdir(parents=True)
    (t / "out" / "import" / "notes.txt").write_text("mine")
    (t / "ds").mkdir()
    case = pipeline_case(t, f"data: {{src: {t / 'ds'}}}\n")
    return Case(case.argv, case.out, [t / "out" / "import" / RECORD])


@row("option 'thermal_folder' is not one the flir importer takes", "thermal_dir")
def import_unknown_option(t, mp):
    return Case(["data", "import", "flir", str(make_msrs(t / "src")), str(t / "dst"), "--option",
                 "thermal_folder=ir"], t / "dst", [t / "dst" / "manifest.csv"])


@row("config key 'data.more.options'", "option 'test_fraction': 'a third' is not a number")
def pipeline_importer_option_not_a_number(t, mp):
    return pipeline_case(t, f"data: {{more: [{{format: roadscene, src: {t}, "
                            "options: {test_fraction: a third}}]}\n")


@row("config key 'evaluate.conditions'", "'nite' is not allowed", "day, dawn, dusk, night")
def pipeline_unknown_condition(t, mp):
    return pipeline_case(t, "evaluate: {conditions: [day, nite]}\n")


@row("config key 'evaluate.baselines'", "unknown map source 'darknes'", "known:")
def pipeline_unknown_baseline(t, mp):
    return pipeline_case(t, "evaluate: {baselines: [darknes]}\n")


@row("config key 'evaluate.references'", "'darknes' is not a map source")
def pipeline_reference_unknown(t, mp):
    return pipeline_case(t, "evaluate: {references: [prior, darknes]}\n")


@row("config key 'evaluate.tau'", "35 is not allowed (a number between 0 and 1)")
def pipeline_tau_in_percent(t, mp):
    return pipeline_case(t, "evaluate: {tau: 35}\n")


@row("config key 'experiments.detector', variant 'long'", "train.max_stepz")
def pipeline_experiment_variant_unknown_key(t, mp):
    return pipeline_case(t, "experiments: {detector: {long: [train.max_stepz=1200]}}\n")


@row("config key 'evaluate.other'", "nowhere: folder not found")
def pipeline_other_camera_missing(t, mp):
    return pipeline_case(t, f"evaluate: {{other: [{{format: roadscene, src: {t / 'nowhere'}}}]}}\n")


@row("src/cropinfrared: folder not found", "RoadScene keeps crop_LR_visible/ and cropinfrared/ side by side")
def roadscene_thermal_folder_missing(t, mp):
    (t / "src" / "crop_LR_visible").mkdir(parents=True)
    cv2.imwrite(str(t / "src" / "crop_LR_visible" / "FLIR_00001.jpg"), np.zeros((H, W, 3), np.uint8))
    return Case(["data", "import", "roadscene", str(t / "src"), str(t / "dst")], t / "dst",
                [t / "dst" / "manifest.csv"])


@row("option 'check' is not an importer option", "--check")
def import_check_given_as_an_option(t, mp):
    return Case(["data", "import", "msrs", str(make_msrs(t / "src")), str(t / "dst"), "--option",
                 "check=header"], t / "dst", [t / "dst" / "manifest.csv"])


@row("config key 'data.more.format'", "unknown dataset format 'roadscen'")
def pipeline_unknown_more_format(t, mp):
    return pipeline_case(t, f"data: {{more: [{{format: roadscen, src: {t}}}]}}\n")


@row("vi: --out is the folder of the images read", "choose another --out")
def predict_into_the_image_folder(t, mp):
    src = make_msrs(t / "src")
    model = make_predictor_checkpoint(t / "p.pt")
    return Case(["predict", "--model", str(model), str(src / "vi"), "--out", str(src / "vi")],
                src / "vi", [src / "vi" / "index.json", src / "vi" / "0001D_map.png"])


@row("holds files that are not an earlier run's outputs (no index.json)", "choose a new or empty --out")
def predict_into_a_folder_of_other_files(t, mp):
    model, src = make_predictor_checkpoint(t / "p.pt"), make_msrs(t / "src")
    (t / "out").mkdir()
    (t / "out" / "notes.txt").write_text("mine")
    return Case(["predict", "--model", str(model), str(src / "vi"), "--out", str(t / "out")], t / "out",
                [t / "out" / "index.json"])


@row("out: holds files that are not an earlier run's outputs (no detections.json)", "choose a new or empty")
def detect_into_a_folder_of_other_images(t, mp):
    src = make_msrs(t / "src")
    shutil.copytree(src / "vi", t / "out")  # the color twins of the thermal images read: same names
    return Case(["detect", "--model", "yolov5n", str(src / "ir"), "--out", str(t / "out")], t / "out",
                [t / "out" / "detections.json"])


@row("config key 'out'", "is inside data's folder", "choose an out= outside the dataset")
def pipeline_out_inside_the_dataset(t, mp):
    return pipeline_case(t, f"data: {{src: {t}}}\n")


@row("config key 'evaluate.other'", "format 'roadscene' is listed twice")
def pipeline_other_camera_twice(t, mp):
    (t / "rs").mkdir()
    return pipeline_case(t, f"evaluate: {{other: [{{format: roadscene, src: {t / 'rs'}, split: all}}, "
                            f"{{format: roadscene, src: {t / 'rs'}, split: test}}]}}\n")


@row("config key 'evaluate.split'", "'tset' is not a split (train, val, test, all)")
def pipeline_split_typo(t, mp):
    return pipeline_case(t, "evaluate: {split: tset}\n")


@row("config key 'register.offset'", "'nonsense' is not one of global")
def pipeline_unknown_offset(t, mp):
    return pipeline_case(t, "register: {enabled: true, offset: nonsense}\n")


@row("config key 'experiments.pairs'", "-5 is not allowed")
def pipeline_negative_pairs(t, mp):
    return pipeline_case(t, "experiments: {pairs: [-5]}\n")


@row("config key 'experiments.detector', variant 'a'", "give a list of overrides (e.g. [loss=head])")
def pipeline_variant_overrides_not_a_list(t, mp):
    return pipeline_case(t, "experiments: {detector: {a: loss=head}}\n")


@row("config key 'data.options'", "option 'labels': 5 is not text (a name or a path)")
def pipeline_importer_option_not_text(t, mp):
    return pipeline_case(t, "data: {options: {labels: 5}}\n")


@row("config key 'augment.scale'", "[2.0, 1.0] is not allowed ([low, high] with 0 < low <= high)")
def distill_zoom_range_reversed(t, mp):
    return distill_case(t, "augment: {scale: [2, 1]}\n")


@row("config key 'augment.translate'", "-1.0 is not allowed (a fraction of the image size in [0, 1))")
def distill_negative_shift(t, mp):
    return distill_case(t, "augment: {translate: -1}\n")


@row("--size -32: must be between 32 and 8192 pixels")
def export_negative_size(t, mp):
    return Case(["export", "--model", "yolov5n", "--out", str(t / "out" / "d.onnx"), "--size=-32"], t / "out",
                [t / "out" / "d.onnx"])


@row("--size 0: must be between 32 and 8192 pixels")
def predict_size_zero(t, mp):
    model = make_predictor_checkpoint(t / "p.pt")
    return Case(["predict", "--model", str(model), str(make_msrs(t / "src") / "vi"), "--out", str(t / "out"),
                 "--size", "0"], t / "out", [t / "out" / "index.json"])


def eval_invisibility_case(t: Path, *extra: str) -> Case:
    return Case(["eval-invisibility", "--data", str(make_dataset(t)), "--maps", "darkness", "--json",
                 str(t / "out" / "e.json"), *extra], t / "out", [t / "out" / "e.json"])


@row("--tau 2: must be a number between 0 and 1")
def eval_invisibility_tau_out_of_range(t, mp):
    return eval_invisibility_case(t, "--tau", "2")


@row("--references darknes: not a map source", "known: darkness")
def eval_invisibility_reference_typo(t, mp):
    return eval_invisibility_case(t, "--references", "darknes")


@row("e10.json: is a file, not a folder", "give a folder to --plots")
def eval_invisibility_plots_is_a_file(t, mp):
    (t / "e10.json").write_text("{}")
    return eval_invisibility_case(t, "--plots", str(t / "e10.json"))


@row("pairs.csv: is a file, not the dataset's folder", "give its folder")
def import_a_file_as_the_dataset(t, mp):
    src = make_msrs(t / "src")
    (src / "pairs.csv").write_text("name,dev_split\n")
    return Case(["data", "import", "msrs", str(src / "pairs.csv"), str(t / "dst")], t / "dst",
                [t / "dst" / "manifest.csv"])


@row("--tta-sizes 640: given twice, or equal to --size 640", "list each added size once")
def detect_tta_size_equal_to_size(t, mp):
    return Case(["detect", str(image_dir(t)), "--tta-sizes", "512", "640", "--out", str(t / "out")],
                t / "out", [t / "out" / "detections.json"])


# ---- subprocess rows: a real kernel error, and proof that no traceback reaches the terminal --------

@row("evil.pt", "refused to load", "possibly malicious", subprocess=True)
def subprocess_malicious_checkpoint(t, mp):
    return checkpoint_malicious_pickle(t, mp)


@row("dst: cannot write the dataset here (Permission denied)", "choose another output folder",
     subprocess=True)
def read_only_output_folder(t, mp):
    case = import_case(t, make_msrs(t / "src"))
    case.out.mkdir()
    case.out.chmod(0o555)
    mp.setattr(sys.modules[__name__], "_wrapper", _unprivileged())
    return case


@row("out/sheet.png", "file too large for this disk or this process's file size limit", "write elsewhere",
     subprocess=True)
def file_size_limit(t, mp):
    ds = make_dataset(t)
    mp.setattr(sys.modules[__name__], "_preexec", _limit_file_size)
    return Case(["data", "show", str(ds), "--out", str(t / "out" / "sheet.png")], t / "out",
                [t / "out" / "sheet.png"])


_wrapper: list[str] = []
_preexec: Callable[[], None] | None = None


def _limit_file_size() -> None:
    """A real EFBIG from the kernel on any write past 4 KiB (what a full quota or disk looks like)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def _unprivileged() -> list[str]:
    """A command prefix under which a read-only folder is read-only: root ignores the mode bits."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, where chmod 555 does not stop writes, and setpriv (to drop root's "
                    "capabilities) is missing")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--"]


# --------------------------------------------------------------------------------------------- the table

def _run(row_: Row, case: Case, capsys) -> tuple[int, str]:
    if not row_.subprocess:
        code = main(case.argv)
        return code, capsys.readouterr().err
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*_wrapper, str(INVISMAP), *case.argv], capture_output=True, text=True, env=env,
                          preexec_fn=_preexec, timeout=120, check=False)
    return proc.returncode, proc.stderr


def test_the_table_is_big_enough():
    assert len(ROWS) >= 25
    assert sum(r.subprocess for r in ROWS.values()) >= 2


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_gives_one_clear_line(name, tmp_path, capsys, monkeypatch):
    row_ = ROWS[name]
    case = row_.setup(tmp_path, monkeypatch)
    capsys.readouterr()  # drop what the setup printed
    before = set(case.out.rglob("*")) if case.out.is_dir() else set()
    code, err = _run(row_, case, capsys)
    monkeypatch.undo()  # before the checks: restores os.fsync, folder modes are reset below
    if case.out.is_dir():
        case.out.chmod(0o755)
    errors = [ln for ln in re.split(r"[\r\n]+", err) if ln.startswith("invismap: error:")]
    assert code == 2, err
    assert "Traceback" not in err and len(errors) == 1, err
    for fragment in row_.fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    for product in case.product:
        assert not product.exists(), f"{product} was written"
    if case.out.is_dir():
        new = set(case.out.rglob("*")) - before
        assert not [p for p in new if p.name.endswith(".tmp")], f"temporary files left: {new}"


def test_16bit_thermal_is_accepted_and_stretched(tmp_path, capsys):
    """16-bit thermal frames (FLIR raw counts) are not bad input: they import and render."""
    src = make_msrs(tmp_path / "src")
    rng = np.random.default_rng(1)
    for n in NAMES:
        cv2.imwrite(str(src / "ir" / f"{n}.png"), rng.integers(20000, 24000, (H, W), dtype=np.uint16))
    assert main(["data", "import", "msrs", str(src), str(tmp_path / "ds")]) == 0
    assert main(["data", "show", str(tmp_path / "ds"), "--out", str(tmp_path / "sheet.png")]) == 0
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None


def test_debug_flag_shows_the_traceback(tmp_path):
    (tmp_path / "c.yaml").write_text("loss: l1\n")
    with pytest.raises(InvismapError, match="'loss'"):
        main(["--debug", "train-predictor", str(tmp_path / "c.yaml"), "--run", str(tmp_path / "run")])
