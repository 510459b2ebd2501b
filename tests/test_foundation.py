"""Foundation: manifest round trip, MSRS import counts, the pair dataset, the contact sheet, bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from invismap.cli import main
from invismap.data.dataset import Augment, PairDataset, collate_pairs
from invismap.data.letterbox import letterbox, map_to_original
from invismap.data.manifest import load_manifest, read_yolo_labels, save_manifest
from invismap.data.summary import summarize
from invismap.errors import InvismapError
from invismap.io import read_thermal, stretch_16bit


def test_msrs_import_counts_match_the_files(msrs, msrs_dir):
    with open(msrs_dir / "pairs.csv", newline="") as f:
        table = list(csv.DictReader(f))
    expected: dict[tuple[str, str], int] = {}
    for row in table:
        key = (row["dev_split"], row["condition"])
        expected[key] = expected.get(key, 0) + 1
    assert msrs.counts() == expected
    assert len(msrs) == len(list((msrs_dir / "vi").glob("*.png")))
    rows = {(r["split"], r["condition"]): r for r in summarize(msrs)}
    for split in ("train", "test"):
        for cond in ("day", "night"):
            names = [r["name"] for r in table if r["dev_split"] == split and r["condition"] == cond]
            n_t = sum(len(read_yolo_labels(msrs_dir / "labels/infrared" / f"{n}.txt")) for n in names)
            n_c = sum(len(read_yolo_labels(msrs_dir / "labels/visible" / f"{n}.txt")) for n in names)
            assert rows[(split, cond)]["thermal_boxes"] == n_t
            assert rows[(split, cond)]["color_boxes"] == n_c
    # At night the color image shows far fewer of the labelled objects than the thermal one.
    night = rows[("test", "night")]
    assert night["thermal_only"] > night["thermal_boxes"] / 2


def test_manifest_round_trip(msrs, tmp_path):
    path = save_manifest(msrs, tmp_path / "copy" / "manifest.csv")
    again = load_manifest(path)
    assert [s.name for s in again] == [s.name for s in msrs]
    assert again[5] == msrs[5]


def test_pair_dataset_same_geometry_for_both(msrs):
    ds = PairDataset(msrs.select(condition="day").select(names=[msrs.select(condition="day")[0].name]),
                     size=320, augment=Augment(hflip=1.0, scale=(0.8, 1.2), translate=0.1), seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a["rgb"], b["rgb"])  # same seed and epoch -> same draw
    assert a["rgb"].shape[1:] == a["thermal"].shape[1:]
    assert a["rgb"].shape[1] % 32 == 0 and a["rgb"].shape[2] % 32 == 0
    # The two modalities were warped identically: their edge maps still line up.
    def edges(t):
        g = (t.mean(0).numpy() * 255).astype(np.uint8)
        return cv2.Canny(g, 30, 90).astype(float)
    plain = PairDataset(ds.manifest, size=320)[0]
    ca, cb = edges(a["rgb"]), edges(plain["rgb"])
    assert not np.allclose(ca, cb)  # augmentation did something
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["rgb"], a["rgb"])
    batch = collate_pairs([plain, plain])
    assert batch["rgb"].shape == (2, 3, 256, 320) and batch["thermal"].shape == (2, 1, 256, 320)
    # a canvas of another shape (another camera, a crop larger than a small frame) shares the batch, padded
    # with the letterbox's gray at the bottom and right: canvas coordinates do not move
    small = {**plain, "rgb": plain["rgb"][:, :128, :160], "thermal": plain["thermal"][:, :128, :160]}
    batch = collate_pairs([small, plain])
    assert batch["rgb"].shape == (2, 3, 256, 320) and batch["thermal"].shape == (2, 1, 256, 320)
    assert torch.equal(batch["rgb"][0, :, :128, :160], small["rgb"])
    assert torch.equal(batch["thermal"][1], plain["thermal"])
    gray = torch.tensor(114 / 255, dtype=torch.float32)
    assert (batch["thermal"][0, :, 128:] == gray).all() and (batch["rgb"][0, :, :, 160:] == gray).all()


def test_boxes_follow_the_flip(msrs):
    s = next(s for s in msrs if len(read_yolo_labels(s.thermal_labels)) > 0)
    one = msrs.select(names=[s.name])
    plain = PairDataset(one, size=320)[0]["thermal_boxes"]
    flipped = PairDataset(one, size=320, augment=Augment(hflip=1.0))[0]["thermal_boxes"]
    w = 320
    assert torch.allclose(flipped[:, 1], w - plain[:, 3], atol=1e-3)
    assert torch.allclose(flipped[:, 2], plain[:, 2], atol=1e-3)


def test_thermal_gain_control_changes_the_thermal_gray_levels_only(msrs):
    one = msrs.select(names=[msrs.select(condition="day")[0].name])
    geometry = Augment(hflip=0.5, scale=(0.9, 1.1), translate=0.05, crop=(128, 160))
    plain = PairDataset(one, size=320, augment=geometry, seed=1)[0]
    agc = PairDataset(one, size=320, augment=replace(geometry, thermal_agc=1.0, thermal_gamma=(0.6, 1.6)),
                      seed=1)[0]
    # the same geometric draw (the gray levels draw from a stream of their own), color image and boxes
    assert torch.equal(agc["rgb"], plain["rgb"]) and torch.equal(agc["thermal_boxes"], plain["thermal_boxes"])
    before, after = plain["thermal"].numpy(), agc["thermal"].numpy()
    assert after.max() - after.min() > before.max() - before.min()  # MSRS's flat frame, stretched
    # without geometry: a monotone map of the gray levels, the order of the pixels is kept
    stretch = Augment(hflip=0.0, thermal_agc=1.0)
    item = PairDataset(one, size=320)[0]
    frame = item["letterbox"].content_slice()  # 320 x 240 of a 320 x 256 canvas
    before = item["thermal"][0].numpy()[frame].ravel()
    after = PairDataset(one, size=320, augment=stretch)[0]["thermal"][0].numpy()[frame].ravel()
    order = np.argsort(before, kind="stable")
    assert (np.diff(after[order]) >= 0).all() and after.mean() > before.mean() + 0.05  # dark, brighter
    # on a square canvas the letterbox's padding is not part of the frame: left out, and kept at its gray
    square = PairDataset(one, size=320, square=True, augment=stretch)[0]["thermal"]
    plain = PairDataset(one, size=320, square=True)[0]["thermal"]
    pad = plain[0].std(1) == 0  # MSRS's 4:3 frames: whole gray rows above and below the image
    assert pad.sum() >= 64 and torch.equal(square[0, pad], plain[0, pad])
    assert (plain[0, pad] == torch.tensor(114 / 255)).all()
    assert square[0, ~pad].mean() > plain[0, ~pad].mean() + 0.05


def test_letterbox_round_trip():
    img = np.zeros((480, 640), np.uint8)
    canvas, lb = letterbox(img, 416, auto=False)
    assert canvas.shape == (416, 416)
    boxes = np.array([[10, 20, 300, 400]], np.float32)
    back = lb.boxes_to_original(lb.boxes_to_canvas(boxes))
    assert np.abs(back - boxes).max() < 1e-3
    assert map_to_original(np.ones((416, 416), np.float32), lb).shape == (480, 640)


def test_16bit_thermal_is_stretched(tmp_path):
    raw = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7 + 20000).astype(np.uint16)
    raw[0, 0] = 65535  # one hot pixel must not wash out the frame
    cv2.imwrite(str(tmp_path / "t.png"), raw)
    out = read_thermal(tmp_path / "t.png")
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155
    assert stretch_16bit(np.full((4, 4), 3, np.uint16)).max() == 0


# ---- bad input: one line naming the file ----------------------------------------------------------

def _tiny_msrs(root: Path, msrs_dir: Path, names=("00001D", "00003N")) -> Path:
    for sub in ("vi", "ir", "labels/visible", "labels/infrared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(msrs_dir / "vi" / f"{n}.png", root / "vi")
        shutil.copy(msrs_dir / "ir" / f"{n}.png", root / "ir")
        shutil.copy(msrs_dir / "labels/visible" / f"{n}.txt", root / "labels/visible")
        shutil.copy(msrs_dir / "labels/infrared" / f"{n}.txt", root / "labels/infrared")
    return root


@pytest.mark.parametrize("breakage, message", [
    ("missing_thermal", "no thermal twin"),
    ("corrupt_png", "not a readable image"),
    ("empty_png", "empty file"),
    ("size_mismatch", "differs from its color twin"),
    ("label_out_of_range", "out of range"),
    ("label_bad_class", "class 7 out of range"),
    ("empty_folder", "no images found"),
])
def test_bad_msrs_input_gives_one_line_error(breakage, message, msrs_dir, tmp_path, capsys):
    src = _tiny_msrs(tmp_path / "src", msrs_dir)
    if breakage == "missing_thermal":
        culprit = src / "ir" / "00003N.png"
        culprit.unlink()
        culprit = src / "vi" / "00003N.png"
    elif breakage == "corrupt_png":
        culprit = src / "vi" / "00003N.png"
        culprit.write_bytes(culprit.read_bytes()[:200])
    elif breakage == "empty_png":
        culprit = src / "ir" / "00001D.png"
        culprit.write_bytes(b"")
    elif breakage == "size_mismatch":
        culprit = src / "ir" / "00001D.png"
        cv2.imwrite(str(culprit), np.zeros((240, 320), np.uint8))
    elif breakage == "label_out_of_range":
        culprit = src / "labels/infrared" / "00003N.txt"
        culprit.write_text("0 0.5 0.5 1.7 0.2\n")
    elif breakage == "label_bad_class":
        culprit = src / "labels/visible" / "00001D.txt"
        culprit.write_text("7 0.5 0.5 0.1 0.2\n")
    elif breakage == "empty_folder":
        for p in (src / "vi").iterdir():
            p.unlink()
        culprit = src / "vi"
    dst = tmp_path / "dst"
    code = main(["data", "import", "msrs", str(src), str(dst)])
    err = capsys.readouterr().err
    assert code == 2
    errors = [ln for ln in re.split(r"[\r\n]+", err) if ln.startswith("invismap: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert message in errors[0] and culprit.name in errors[0]
    assert not (dst / "manifest.csv").exists()  # nothing half-written


def test_contact_sheet_cli(msrs, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["data", "show", str(msrs.root), "--out", str(out), "--n", "4", "--condition", "night"]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 300 and img.shape[1] >= 960
    assert img.std() > 10  # not blank


@dataclass
class _Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class _Outer:
    train: _Inner = field(default_factory=_Inner)
    mode: str = "mid"


def test_unknown_config_key_is_named(tmp_path):
    from invismap.config import load_config

    (tmp_path / "c.yaml").write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(InvismapError, match=r"train.lrr"):
        load_config(_Outer, tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("train:\n  lr: fast\n")
    with pytest.raises(InvismapError, match=r"train.lr.*float"):
        load_config(_Outer, tmp_path / "c.yaml")
    cfg = load_config(_Outer, None, ["train.lr=5", "mode=head"])
    assert cfg.train.lr == 5.0 and cfg.mode == "head"


def test_overrides_may_follow_the_options(tmp_path, capsys):
    """``invismap run C --list a.b=1`` takes the override as ``invismap run C a.b=1 --list`` does; other
    unknown arguments are still refused."""
    (tmp_path / "c.yaml").write_text(f"out: {tmp_path / 'out'}\n")
    listings = []
    for argv in (["distill.size=96", "--list"], ["--list", "distill.size=96"], ["--list"]):
        assert main(["run", str(tmp_path / "c.yaml"), *argv]) == 0
        listings.append(capsys.readouterr().out)
    assert listings[0] == listings[1] != listings[2]
    with pytest.raises(SystemExit):
        main(["run", str(tmp_path / "c.yaml"), "--list", "--bogus"])


def test_every_subcommand_has_help(capsys):
    from invismap.cli import build_parser

    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices
    for name in subs:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
    assert "data" in subs


def test_thermal_channels_gray_jpeg_accepted_palette_refused(tmp_path):
    gray = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    cv2.imwrite(str(tmp_path / "g.jpg"), cv2.merge([gray, gray, gray]), [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert read_thermal(tmp_path / "g.jpg").shape == (48, 64)
    palette = cv2.applyColorMap(gray, cv2.COLORMAP_JET)
    cv2.imwrite(str(tmp_path / "p.png"), palette)
    with pytest.raises(InvismapError, match=r"p.png: thermal image has 3 different channels"):
        read_thermal(tmp_path / "p.png")


@dataclass
class _Stage:
    train: _Inner = field(default_factory=lambda: _Inner(lr=0.5, steps=99))


def test_partial_section_keeps_the_stage_defaults():
    from invismap.config import load_config

    assert load_config(_Stage, None, []).train.lr == 0.5
    cfg = load_config(_Stage, None, ["train.lr=0.25"])
    assert cfg.train.lr == 0.25 and cfg.train.steps == 99  # not the section class's generic 10


def test_staged_outputs_replace_only_the_last_runs_files_and_put_them_back_on_failure(tmp_path, monkeypatch):
    """A finished run replaces the files the last one listed (and its index), never the user's own; when
    moving the new files in fails, the last run's files are put back."""
    import os

    import invismap.io as io_mod
    from invismap.errors import InvismapError
    from invismap.io import staged_outputs

    out = tmp_path / "out"

    def run(names: list[str]) -> None:
        with staged_outputs(out, "index.json") as staging:
            for n in names:
                (staging / n).write_text(n)
        (out / "index.json").write_text(json.dumps(names))

    run(["a.png", "b.png"])
    (out / "notes.txt").write_text("mine")
    run(["c.png"])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["c.png", "index.json",
                                                                                    "notes.txt"]
    real = os.replace

    def full_disk(src, dst):
        if ".partial" in str(src):  # moving a new file in
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", full_disk)
    with pytest.raises(InvismapError, match="disk full"):
        run(["d.png"])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["c.png", "index.json",
                                                                                    "notes.txt"]
