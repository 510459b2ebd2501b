"""Tests for invismap.detector.darknet: cfg parsing, neck taps, .weights round trip, real COCO weights."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from invismap.detector.darknet import (
    DarknetDetector,
    _MaxPool,
    load_darknet,
    load_darknet_weights,
    parse_cfg,
    save_darknet_weights,
)
from invismap.errors import InvismapError

# A two-scale toy network (stride 4 and 8) that exercises every section type; builds in milliseconds.
MICRO_CFG = """\
[net]
width=64
height=64
channels=3
batch=8   # training key: ignored

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
groups=8
activation=swish

[shortcut]
from=-2
activation=linear

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=relu

[dropout]
probability=.1

[maxpool]
size=2
stride=1

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=leaky

[convolutional]
filters=16
size=3
stride=1
pad=1
activation=logistic

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask = 1,2,3
anchors = 4,5, 8,9, 12,10, 20,24
classes=2
num=4
scale_x_y=1.1
ignore_thresh=.7

[route]
layers=-4

[upsample]
stride=2

[route]
layers=-1,3
groups=1

[route]
layers=-1
groups=2
group_id=1

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask = 0,1
anchors = 4,5, 8,9, 12,10, 20,24
classes=2
num=4
"""


@pytest.fixture
def micro() -> DarknetDetector:
    return DarknetDetector(parse_cfg(MICRO_CFG, "micro.cfg"), "micro.cfg").eval()


def _randomize_bn(model: DarknetDetector, seed: int) -> None:
    """Non-trivial BN statistics, so that a swapped BN tensor in the .weights order would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.conv_layers:
            if layer.bn is not None:
                for t in (layer.bn.weight, layer.bn.bias, layer.bn.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if t is layer.bn.weight else 0.0))
                layer.bn.running_var.copy_(torch.rand(layer.bn.running_var.shape, generator=g) + 0.5)


def _reference_forward(model: DarknetDetector, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Darknet's own order: every layer in file order, inputs read from the cfg, independent of the split."""
    out: list[torch.Tensor] = []
    for i, (sec, layer) in enumerate(zip(model.sections, model.layers)):
        prev = out[i - 1] if i else x
        if sec["type"] == "route":
            y = layer(*(out[j if j >= 0 else i + j] for j in sec["layers"]))
        elif sec["type"] == "shortcut":
            y = layer(prev, out[i + sec["from"]])
        else:
            y = layer(prev)
        out.append(y)
    return {i: out[i - 1] for i in model.yolo_layers}  # input of each [yolo] = raw head output


# -- parsing ---------------------------------------------------------------------------------------


def test_parse_yolov3_sections(weights_dir: Path):
    sections = parse_cfg((weights_dir / "yolov3.cfg").read_text(), "yolov3.cfg")
    layers = sections[1:]
    assert sections[0]["type"] == "net" and len(layers) == 107
    assert [i for i, s in enumerate(layers) if s["type"] == "yolo"] == [82, 94, 106]
    assert layers[82]["mask"] == [6, 7, 8] and layers[82]["anchors"][-2:] == [373.0, 326.0]
    assert layers[83] == {"type": "route", "line": 618, "layers": [-4], "groups": 1, "group_id": 0}
    assert "jitter" not in layers[82]  # training-only key dropped


def test_parse_strips_whitespace_and_comments():
    s = parse_cfg("[net]\n# c\n width = 32 # inline\n\n[yolo]\nmask = 0, 1\nanchors = 1,2, 3,4\n", "x.cfg")
    assert s[0]["width"] == 32 and s[1]["mask"] == [0, 1] and s[1]["anchors"] == [1.0, 2.0, 3.0, 4.0]
    assert s[1]["line"] == 5


@pytest.mark.parametrize("text, where, needle", [
    ("[net]\n[region]\nclasses=1\n", "x.cfg:2: ", "unknown section [region]"),
    ("[net]\n[convolutional]\nfilter=16\n", "x.cfg:3: [convolutional] ", "unknown key 'filter'"),
    ("[net]\n[convolutional]\nfilters=1.5\n", "x.cfg:3: [convolutional] ", "bad value '1.5' for 'filters'"),
    ("[net]\n[convolutional]\nactivation=gelu\n", "x.cfg:3: [convolutional] ", "bad value 'gelu'"),
    ("[net]\n[yolo]\nmask=0,x\nanchors=1,2\n", "x.cfg:3: [yolo] ", "bad value '0,x' for 'mask'"),
    ("[net]\n[maxpool]\nsize\n", "x.cfg:3: [maxpool] ", "malformed line 'size'"),
    ("[net]\n[maxpool]\nsize=2\nsize=3\n", "x.cfg:4: [maxpool] ", "key 'size' given twice"),
    ("width=3\n[net]\n", "x.cfg:1: ", "outside any section"),
    ("[convolutional]\n", "x.cfg:1: [convolutional] ", "first section must be [net]"),
    ("[net]\n[route]\n", "x.cfg:2: [route] ", "missing required key 'layers'"),
    ("[net]\n[net\n", "x.cfg:2: ", "malformed section header"),
])
def test_parse_errors_name_file_line_section(text, where, needle):
    with pytest.raises(InvismapError) as e:
        parse_cfg(text, "x.cfg")
    msg = str(e.value)
    assert msg.startswith(where) and needle in msg and "\n" not in msg


@pytest.mark.parametrize("change, needle", [
    (("layers=-4", "layers=12"), "[route] layers=12 points at layer 12, which is not an earlier layer"),
    (("from=-2", "from=-3"), "[shortcut] adds layer 2 (8 ch, stride 4) to layer 0 (8 ch, stride 2)"),
    (("filters=21", "filters=20"), "[yolo] layer 9 before it must be a linear conv with filters=21"),
    (("mask = 0,1", "mask = 0,4"), "[yolo] mask [0, 4] out of range"),
    (("groups=8\n", "groups=3\n"), "[convolutional] groups=3 must divide"),
])
def test_build_errors_point_at_layer(change, needle):
    with pytest.raises(InvismapError) as e:
        DarknetDetector(parse_cfg(MICRO_CFG.replace(*change, 1), "micro.cfg"), "micro.cfg")
    assert str(e.value).startswith("micro.cfg:") and needle in str(e.value), str(e.value)


def test_load_darknet_file_errors(tmp_path: Path, weights_dir: Path):
    with pytest.raises(InvismapError, match="cfg file not found"):
        load_darknet(tmp_path / "nope.cfg")
    with pytest.raises(InvismapError, match="weights file not found"):
        load_darknet(weights_dir / "yolov3-tiny.cfg", tmp_path / "nope.weights")
    with pytest.raises(InvismapError, match="not a text file"):
        load_darknet(weights_dir / "yolo-fastest-1.1-xl.weights")
    bad = tmp_path / "bad.cfg"
    bad.write_text(MICRO_CFG.replace("[dropout]", "[dropblock]"))
    with pytest.raises(InvismapError) as e:
        load_darknet(bad)
    assert str(e.value) == (f"{bad}:40: unknown section [dropblock] (supported: [net], [convolutional], "
                            "[shortcut], [route], [upsample], [maxpool], [dropout], [yolo])")


def test_names_numbered_without_names_file(tmp_path: Path):
    (tmp_path / "m.cfg").write_text(MICRO_CFG)
    assert load_darknet(tmp_path / "m.cfg").names == ["0", "1"]
    (tmp_path / "m.names").write_text("person\ncar\n")
    assert load_darknet(tmp_path / "m.cfg").names == ["person", "car"]


# -- layers ----------------------------------------------------------------------------------------


def _darknet_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """A transcription of darknet's forward_maxpool_layer (src/maxpool_layer.c) for one channel."""
    h, w = x.shape
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.full((oh, ow), -np.inf, np.float32)
    for i in range(oh):
        for j in range(ow):
            for n in range(size):
                for m in range(size):
                    r, c = off + i * stride + n, off + j * stride + m
                    if 0 <= r < h and 0 <= c < w:
                        out[i, j] = max(out[i, j], x[r, c])
    return out


@pytest.mark.parametrize("size, stride, hw", [(2, 2, 8), (2, 1, 7), (2, 1, 13), (3, 1, 6), (5, 1, 5),
                                              (9, 1, 6), (3, 2, 9), (2, 2, 7)])
def test_maxpool_matches_darknet(size, stride, hw):
    x = torch.randn(1, 1, hw, hw)
    got = _MaxPool(size, stride, size - 1)(x)[0, 0].numpy()
    np.testing.assert_array_equal(got, _darknet_maxpool(x[0, 0].numpy(), size, stride, size - 1))
    if stride == 1:
        assert got.shape == (hw, hw)  # yolov3-tiny's size=2 stride=1 keeps 13x13


def test_micro_split_equals_darknet_order_and_is_differentiable(micro: DarknetDetector):
    # Fine head: tap 14 (the grouped route: half of 16 + 8 channels) -> conv 15 -> [yolo] 16.
    # Coarse head: tap 7 (1x1 leaky, also read by route 11) -> 3x3 conv 8 -> conv 9 -> [yolo] 10.
    assert micro.taps == (14, 7) and micro.yolo_layers == (16, 10) and micro.strides == (4, 8)
    assert micro.head_layers == ((15,), (8, 9)) and micro.tap_channels == (12, 16)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    feats = micro.neck_features(x)
    raw = micro.heads(feats)
    ref = _reference_forward(micro, x)
    for r, y in zip(raw, micro.yolo_layers):
        torch.testing.assert_close(r, ref[y], rtol=0, atol=0)
    pred = micro.decode(raw)
    assert pred.shape == (2, 2 * 16 * 16 + 3 * 8 * 8, 7)
    pred.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_decode_matches_darknet_formula(micro: DarknetDetector):
    """One hand-built cell: raw zeros decode to the cell centre, anchor size and 0.5 scores."""
    raw = [torch.zeros(1, 2 * 7, 2, 3), torch.zeros(1, 3 * 7, 1, 1)]
    raw[1][0, 7 * 2 + 0] = 2.0  # anchor 2 of the coarse scale (mask 3 -> anchor (20, 24)): tx
    raw[1][0, 7 * 2 + 3] = math.log(2.0)  # th
    p = micro.decode(raw)[0]  # fine scale first: 2 anchors x 2 x 3 cells, then 3 coarse cells
    assert p.shape == (12 + 3, 7)
    torch.testing.assert_close(p[0], torch.tensor([2.0, 2.0, 4.0, 5.0, 0.5, 0.5, 0.5]))  # stride 4, anchor 0
    torch.testing.assert_close(p[5, :2], torch.tensor([(2 + 0.5) * 4, (1 + 0.5) * 4]))  # cell (1, 2)
    sig = 1 / (1 + math.exp(-2.0))
    s = 1.1
    torch.testing.assert_close(p[14, :4], torch.tensor([(sig * s - 0.5 * (s - 1)) * 8, 0.5 * s * 8 - 0.05 * 8,
                                                         20.0, 48.0]))


# -- shipped cfgs: taps ----------------------------------------------------------------------------


def test_yolov3_taps_are_the_papers(weights_dir: Path):
    model = load_darknet(weights_dir / "yolov3.cfg")
    assert model.taps == (103, 91, 79) and model.yolo_layers == (106, 94, 82)
    assert model.head_layers == ((104, 105), (92, 93), (80, 81))
    assert model.strides == (8, 16, 32) and model.tap_channels == (128, 256, 512)
    assert len(model.names) == 80 and model.names[2] == "car"
    with torch.no_grad():
        # The neck/head split (with its freed intermediate outputs) equals darknet's layer order.
        _randomize_bn(model, 3)
        x = torch.rand(1, 3, 64, 64)
        ref = _reference_forward(model, x)
        for r, y in zip(model.heads(model.neck_features(x)), model.yolo_layers):
            torch.testing.assert_close(r, ref[y], rtol=0, atol=0)
        # Shapes at 416 through the same code on the meta device (a real 416 pass takes ~5 s on 2 cores).
        model = model.to("meta")
        feats = model.neck_features(torch.empty(1, 3, 416, 416, device="meta"))
        assert [tuple(f.shape) for f in feats] == [(1, 128, 52, 52), (1, 256, 26, 26), (1, 512, 13, 13)]
        raw = model.heads(feats)
        assert [tuple(r.shape) for r in raw] == [(1, 255, 52, 52), (1, 255, 26, 26), (1, 255, 13, 13)]
        assert model.decode(raw).shape == (1, 3 * (52 * 52 + 26 * 26 + 13 * 13), 85)


def test_yolov3_tiny_taps_and_darknet_order(weights_dir: Path):
    model = load_darknet(weights_dir / "yolov3-tiny.cfg")
    assert model.taps == (20, 13) and model.yolo_layers == (23, 16)
    assert model.head_layers == ((21, 22), (14, 15))
    assert model.strides == (16, 32) and model.tap_channels == (384, 256)
    _randomize_bn(model, 1)
    x = torch.rand(1, 3, 416, 416)
    with torch.no_grad():
        feats = model.neck_features(x)
        assert [tuple(f.shape) for f in feats] == [(1, 384, 26, 26), (1, 256, 13, 13)]
        ref = _reference_forward(model, x)
        for r, y in zip(model.heads(feats), model.yolo_layers):
            torch.testing.assert_close(r, ref[y], rtol=0, atol=0)


@pytest.mark.parametrize("cfg, size", [("yolov3.cfg", 248_007_048), ("yolov3-tiny.cfg", 35_434_956),
                                       ("yolo-fastest-1.1-xl.cfg", 3_693_964)])
def test_weights_size_matches_published_files(weights_dir: Path, cfg: str, size: int):
    """20-byte header + 4 bytes per float = the byte size of the published .weights files."""
    model = load_darknet(weights_dir / cfg)
    n = sum(t.numel() for t in model.state_dict().values() if t.dtype == torch.float32)
    assert 20 + 4 * n == size


# -- .weights --------------------------------------------------------------------------------------


def test_weights_round_trip_yolov3_tiny(tmp_path: Path, weights_dir: Path):
    cfg = weights_dir / "yolov3-tiny.cfg"
    torch.manual_seed(1)
    a = load_darknet(cfg)
    _randomize_bn(a, 2)
    a.header = (0, 2, 5, 123456789012)
    path = tmp_path / "tiny.weights"
    save_darknet_weights(a, path)
    n_floats = sum(t.numel() for t in a.state_dict().values() if t.dtype == torch.float32)
    assert path.stat().st_size == 20 + 4 * n_floats
    torch.manual_seed(2)
    b = load_darknet(cfg, path)
    assert b.header == a.header
    for (ka, ta), (kb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(ta, tb), ka
    x = torch.rand(1, 3, 416, 416)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    again = tmp_path / "again.weights"
    save_darknet_weights(b, again)
    assert again.read_bytes() == path.read_bytes()


def test_weights_round_trip_old_header(tmp_path: Path, micro: DarknetDetector):
    """Version 0.1 files store ``seen`` as int32 (16-byte header)."""
    micro.header = (0, 1, 0, 7)
    save_darknet_weights(micro, tmp_path / "m.weights")
    n = sum(t.numel() for t in micro.state_dict().values() if t.dtype == torch.float32)
    assert (tmp_path / "m.weights").stat().st_size == 16 + 4 * n
    other = DarknetDetector(parse_cfg(MICRO_CFG, "micro.cfg"), "micro.cfg")
    load_darknet_weights(other, tmp_path / "m.weights")
    assert other.header == (0, 1, 0, 7)
    assert all(torch.equal(x, y) for x, y in zip(micro.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("cut, needle", [
    (lambda d: d[:-8], "truncated .weights file: expected {n} floats, found {m}"),
    (lambda d: d + np.ones(3, "<f4").tobytes(),
     "has extra floats — cfg does not match: expected {n} floats, found {p}"),
    (lambda d: d + b"\0\0", "has extra floats — cfg does not match"),
    (lambda d: d[:10], "truncated .weights file: 10 bytes, shorter than the header"),
    (lambda d: d[:-4] + np.array([np.nan], "<f4").tobytes(), "holds NaN or inf values"),
])
def test_weights_size_mismatch_is_user_error(tmp_path: Path, micro: DarknetDetector, cut, needle):
    good = tmp_path / "good.weights"
    save_darknet_weights(micro, good)
    n = (good.stat().st_size - 20) // 4
    bad = tmp_path / "bad.weights"
    bad.write_bytes(cut(good.read_bytes()))
    with pytest.raises(InvismapError) as e:
        load_darknet_weights(micro, bad)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and needle.format(n=n, m=n - 2, p=n + 3) in msg and "\n" not in msg


def test_weights_of_another_cfg_rejected(weights_dir: Path, micro: DarknetDetector):
    with pytest.raises(InvismapError, match="extra floats — cfg does not match"):
        load_darknet_weights(micro, weights_dir / "yolo-fastest-1.1-xl.weights")


def test_named_model_finds_its_weights_in_another_assets_folder(tmp_path: Path, weights_dir: Path,
                                                                monkeypatch):
    """The cfg in a (read-only, shared) assets folder, the weights where `invismap assets fetch` puts them."""
    from invismap.detector.zoo import load_detector

    shared, cache = tmp_path / "shared", tmp_path / "cache"
    (shared / "weights").mkdir(parents=True)
    shutil.copy(weights_dir / "yolov3-tiny.cfg", shared / "weights")
    monkeypatch.setenv("INVISMAP_ASSETS", str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    with pytest.raises(InvismapError, match=r"run `invismap assets fetch yolov3-tiny\.weights`"):
        load_detector("yolov3-tiny")
    written = load_darknet(shared / "weights" / "yolov3-tiny.cfg")
    _randomize_bn(written, 4)
    (cache / "invismap" / "weights").mkdir(parents=True)
    save_darknet_weights(written, cache / "invismap" / "weights" / "yolov3-tiny.weights")
    model = load_detector("yolov3-tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), written.state_dict().values()))
    with pytest.raises(InvismapError, match="Darknet weights not found"):
        load_detector(shared / "weights" / "yolov3-tiny.cfg")  # a cfg given by path: its weights beside it


# -- real COCO weights -----------------------------------------------------------------------------


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float = 0.45) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if _iou(boxes[i], boxes[j]) < iou_thr]
    return keep


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _detect(model: DarknetDetector, rgb: np.ndarray, size: int, conf: float = 0.3):
    """Letterbox (gray 114), decode, per-class NMS; boxes in original pixels."""
    h, w = rgb.shape[:2]
    scale = min(size / h, size / w)
    nh, nw = round(h * scale), round(w * scale)
    py, px = (size - nh) // 2, (size - nw) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[py:py + nh, px:px + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255  # (1, 3, size, size)
    with torch.no_grad():
        p = model(x)[0].numpy()
    cls_score = p[:, 4:5] * p[:, 5:]
    cls, score = cls_score.argmax(1), cls_score.max(1)
    k = score > conf
    cx, cy, bw, bh = p[k, :4].T
    boxes = np.stack([cx - bw / 2 - px, cy - bh / 2 - py, cx + bw / 2 - px, cy + bh / 2 - py], 1) / scale
    cls, score = cls[k], score[k]
    keep = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        keep += [int(idx[i]) for i in _nms(boxes[idx], score[idx])]
    keep.sort(key=lambda i: -score[i])
    return boxes[keep], score[keep], cls[keep]


def test_yolo_fastest_coco_weights_detect_street(weights_dir: Path, msrs_dir: Path):
    model = load_darknet(weights_dir / "yolo-fastest-1.1-xl.cfg", weights_dir / "yolo-fastest-1.1-xl.weights")
    assert model.header == (0, 2, 5, 16_000_000)  # and every float consumed, or loading would raise
    assert model.taps == (124, 115) and model.yolo_layers == (130, 121) and model.strides == (16, 32)
    assert model.tap_channels == (144, 96)
    assert model.head_layers == ((125, 126, 127, 128, 129), (116, 117, 118, 119, 120))

    from invismap.io import read_color

    rgb = read_color(msrs_dir / "vi" / "00055D.png")  # daytime street: 2 persons, 1 car labelled
    boxes, scores, classes = _detect(model, rgb, 416)
    found = [(model.names[c], round(float(s), 2), b.round().astype(int).tolist())
             for b, s, c in zip(boxes, scores, classes)]
    print("yolo-fastest-1.1-xl @416 on 00055D.png:", found)
    lab = np.loadtxt(msrs_dir / "labels" / "visible" / "00055D.txt", ndmin=2)
    h, w = rgb.shape[:2]
    for c, cx, cy, bw, bh in lab:  # MSRS ids 0 person, 2 car are COCO's ids too
        gt = np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        best = max((_iou(gt, b) for b, k in zip(boxes, classes) if k == int(c)), default=0.0)
        assert best > 0.5, f"labelled {model.names[int(c)]} at {gt.round()} not found: {found}"
    assert {model.names[c] for c in classes[:3]} <= {"car", "person"}
