"""Property-based fuzzing of everything that parses untrusted text or maps boxes between pixel grids.

Each entry of ``TARGETS`` is ``(strategy, check)``: ``check(example)`` must either accept the example, with
the properties it asserts, or refuse it with :class:`~invismap.errors.InvismapError` (the intended one-line
error; the check then returns ``"refused"``). Any other exception is a crash. The strategies mix well-formed
input (so that the checks get deep) with broken lines, special numbers (``nan``, ``inf``, ``1e309``, ``-0``,
unicode digits), wrong types and plain random text.

Targets: the Darknet cfg parser (and building and running the network it describes), the label readers of
every importer (YOLO txt of MSRS and the manifest, KAIST bbGt, Pascal VOC of LLVIP/M3FD, FLIR's COCO json,
RoadScene's box json and meta csv, the per-pair tables of MSRS and M3FD) together with the box writer they all
end in, the manifest reader (round trip through ``save_manifest``), and the letterbox (boxes mapped to the
canvas and back within 1 px).

In the test suite each target runs a few dozen examples (time-boxed); ``tools/fuzz.py`` runs the same targets
for minutes each.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from invismap.errors import InvismapError

WORK = Path(tempfile.mkdtemp(prefix="invismap-fuzz-"))  # one scratch folder per process
atexit.register(shutil.rmtree, WORK, ignore_errors=True)

# ------------------------------------------------------------------------------------------- strategies

SPECIAL_NUMBERS = ["nan", "-nan", "inf", "-inf", "1e309", "-1e309", "0", "-0", "1", "-1", "0.5", "1.0000001",
                   "1e-320", "2147483648", "9" * 30, "0x10", "1_0", "", " ", "١٢", "+3", "3.", ".5", "1e5"]


def number_text(lo: float = -5, hi: float = 700) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(int(lo), int(hi)).map(str),
                     st.floats(lo, hi, allow_nan=False).map(lambda v: f"{v:.6g}"),
                     st.sampled_from(SPECIAL_NUMBERS))


def lines_of(line: st.SearchStrategy[str], max_size: int = 12) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(line, line, line, st.text(max_size=20)), max_size=max_size).map("\n".join)


def _write(name: str, content: str | bytes) -> Path:
    path = WORK / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    return path


def _text_or_bytes(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(strategy, strategy, strategy, st.binary(max_size=64), st.text(max_size=200))


# ---- Darknet cfg --------------------------------------------------------------------------------------

_SECTIONS = ["net", "convolutional", "shortcut", "route", "upsample", "maxpool", "dropout", "yolo"]
_KEYS = {
    "net": {"width": number_text(8, 96), "height": number_text(8, 96),
            "channels": st.sampled_from(["1", "3"]), "batch": number_text()},
    "convolutional": {"batch_normalize": st.sampled_from(["0", "1"]), "filters": number_text(-1, 24),
                      "size": st.sampled_from(["1", "3", "0", "-1", "5"]),
                      "stride": st.sampled_from(["1", "2", "0"]),
                      "pad": st.sampled_from(["0", "1"]), "padding": number_text(-2, 3),
                      "groups": st.sampled_from(["1", "2", "3", "0"]),
                      "activation": st.sampled_from(["leaky", "linear", "relu", "mish", "swish", "logistic",
                                                     "tanh", ""])},
    "shortcut": {"from": number_text(-6, 6), "activation": st.sampled_from(["linear", "leaky"])},
    "route": {"layers": st.lists(number_text(-6, 6), min_size=0, max_size=3).map(",".join),
              "groups": st.sampled_from(["1", "2", "0"]), "group_id": st.sampled_from(["0", "1", "2", "-1"])},
    "upsample": {"stride": st.sampled_from(["1", "2", "0", "-2"]), "scale": number_text()},
    "maxpool": {"size": st.sampled_from(["1", "2", "3", "0"]), "stride": st.sampled_from(["1", "2", "0"]),
                "padding": number_text(-2, 4)},
    "dropout": {"probability": number_text(0, 1)},
    "yolo": {"mask": st.lists(number_text(-1, 4), min_size=0, max_size=3).map(",".join),
             "anchors": st.lists(number_text(1, 40), min_size=0, max_size=8).map(",".join),
             "classes": number_text(0, 3), "num": number_text(0, 4), "scale_x_y": number_text(0, 2),
             "new_coords": st.sampled_from(["0", "1"]), "ignore_thresh": number_text(0, 1)},
}


@st.composite
def darknet_section(draw) -> str:
    name = draw(st.sampled_from(_SECTIONS[1:] + [_SECTIONS[1]] * 3 + ["yolo", "bogus"]))
    keys = _KEYS.get(name, {"x": number_text()})
    chosen = draw(st.lists(st.sampled_from(sorted(keys)), unique=True, max_size=len(keys)))
    lines = [f"[{name}]"] + [f"{k} = {draw(keys[k])}" for k in chosen]
    if draw(st.integers(0, 9)) == 0:  # now and then a broken line
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(
            ["key_without_value", "=3", "[", "[]", "[net]", "filters=1 # comment", "; only a comment",
             "size=3=4", "activation=leaky\x00"])))
    return "\n".join(lines)


@st.composite
def darknet_cfg(draw) -> str:
    net = ["[net]"] + [f"{k}={draw(v)}" for k, v in _KEYS["net"].items() if draw(st.booleans())]
    body = draw(st.lists(darknet_section(), max_size=8))
    return "\n".join(net + body) + "\n"


@st.composite
def working_darknet_cfg(draw) -> str:
    """A network that builds (convs, pools, shortcuts, routes, upsampling, one or two heads), then maybe one
    line changed: most examples get past the parser into the graph checks."""
    classes = draw(st.integers(1, 3))
    lines = ["[net]", f"width={draw(st.sampled_from([32, 64]))}", "height=32", "channels=3"]
    for n_layers in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "conv", "maxpool", "shortcut", "route", "dropout"]))
        if kind == "conv" or n_layers == 0:
            lines += ["[convolutional]", f"batch_normalize={draw(st.sampled_from([0, 1]))}",
                      f"filters={draw(st.sampled_from([4, 8]))}", f"size={draw(st.sampled_from([1, 3]))}",
                      f"stride={draw(st.sampled_from([1, 2]))}", "pad=1",
                      f"activation={draw(st.sampled_from(['leaky', 'relu', 'mish', 'swish']))}"]
        elif kind == "maxpool":
            lines += ["[maxpool]", f"size={draw(st.sampled_from([2, 3]))}",
                      f"stride={draw(st.sampled_from([1, 2]))}"]
        elif kind == "shortcut":
            lines += ["[shortcut]", f"from={draw(st.integers(-n_layers, -1))}", "activation=linear"]
        elif kind == "route":
            lines += ["[route]", f"layers={draw(st.integers(-n_layers, -1))}"]
        else:
            lines += ["[dropout]", "probability=0.1"]
    for head in range(draw(st.integers(1, 2))):
        if head:
            lines += ["[route]", "layers=-4", "[upsample]", "stride=2"]
        masks = draw(st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True))
        lines += ["[convolutional]", "filters=8", "size=1", "stride=1", "activation=leaky",
                  "[convolutional]", f"size={draw(st.sampled_from([1, 3]))}", "stride=1", "pad=1",
                  f"filters={(5 + classes) * len(masks)}", "activation=linear",
                  "[yolo]", f"mask={','.join(map(str, masks))}", "anchors=10,14, 23,27, 37,58",
                  f"classes={classes}", "num=3"]
    if draw(st.integers(0, 2)) == 0:
        i = draw(st.integers(1, len(lines) - 1))
        lines[i] = draw(st.sampled_from(["filters=5", "stride=0", "from=-99", "layers=-1,-99", "mask=7",
                                         "activation=tanh", "groups=3", "size=-1", "classes=2", "[yolo]",
                                         "anchors=", "padding=-5", "num=1"]))
    return "\n".join(lines) + "\n"


def check_darknet_cfg(text: str) -> None:
    from invismap.detector.darknet import _SPEC, DarknetDetector, parse_cfg

    try:
        sections = parse_cfg(text, "fuzz.cfg")
    except InvismapError:
        return "refused"
    assert sections[0]["type"] == "net"
    assert all(s["type"] in _SPEC and s["line"] >= 1 for s in sections)
    # Build only what stays small: the fuzz is about the graph logic, not about allocating huge convs.
    for s in sections:
        for key in ("filters", "size", "stride", "groups", "width", "height"):
            if isinstance(s.get(key), int) and abs(s[key]) > 128:
                return "skipped"
    try:
        model = DarknetDetector(sections, "fuzz.cfg").eval()  # as load_darknet returns it
    except InvismapError:
        return "refused"
    assert len(model.taps) == len(model.strides) == len(model.head_layers) >= 1
    assert list(model.strides) == sorted(set(model.strides))
    h, w = model.input_size
    if 0 < h <= 96 and 0 < w <= 96 and h % max(model.strides) == 0 and w % max(model.strides) == 0:
        with torch.no_grad():  # a network that builds also runs, with features of the strides it claims
            feats = model.neck_features(torch.zeros(1, model.in_channels, h, w))
            assert [f.shape[-1] for f in feats] == [w // s for s in model.strides]
            model.decode(model.heads(feats))


# ---- label readers --------------------------------------------------------------------------------

def yolo_line() -> st.SearchStrategy[str]:
    return st.lists(number_text(-1, 2), min_size=1, max_size=6).map(" ".join) | st.tuples(
        st.integers(-1, 81).map(str), *[st.floats(0, 1).map(lambda v: f"{v:.6f}")] * 4).map(" ".join)


def check_yolo_labels(content: str | bytes) -> None:
    from invismap.data.manifest import read_yolo_labels

    try:
        labels = read_yolo_labels(_write("labels.txt", content))
    except InvismapError:
        return "refused"
    assert labels.shape[1] == 5 and labels.dtype == np.float32
    assert np.isfinite(labels).all()
    assert ((labels[:, 0] >= 0) & (labels[:, 0] < 80) & (labels[:, 0] == np.round(labels[:, 0]))).all()
    assert ((labels[:, 1:3] >= 0) & (labels[:, 1:3] <= 1) & (labels[:, 3:] > 0) & (labels[:, 3:] <= 1)).all()


def _written_labels_read_back(boxes, classes, w: int, h: int, source: str) -> None:
    """The writer every importer ends in: refuse, or write a file that reads back as valid YOLO labels."""
    from invismap.data.importers.common import write_pixel_labels
    from invismap.data.manifest import read_yolo_labels

    out = WORK / "written.txt"
    try:
        write_pixel_labels(out, boxes, classes, w, h, source)
    except InvismapError:
        return "refused"
    labels = read_yolo_labels(out)
    assert len(labels) <= len(classes)


@st.composite
def pixel_boxes(draw):
    w, h = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
    coord = st.one_of(st.floats(-0.2 * w, 1.2 * max(w, h)),
                      st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))
    n = draw(st.integers(0, 5))
    boxes = [[draw(coord) for _ in range(4)] for _ in range(n)]
    classes = draw(st.lists(st.integers(0, 79), min_size=n, max_size=n))
    return boxes, classes, w, h


def check_pixel_labels(case) -> None:
    _written_labels_read_back(*case, "fuzz")


def bbgt_line() -> st.SearchStrategy[str]:
    label = st.sampled_from(["person", "person?", "people", "cyclist", "car", "%", "% bbGt version=3", ""])
    numbers = st.lists(number_text(-10, 700), min_size=0, max_size=10).map(" ".join)
    return st.tuples(label, numbers).map(" ".join)


def check_kaist_bbgt(content: str | bytes) -> None:
    from invismap.data.importers.kaist import read_bbgt

    path = _write("I00000.txt", content)
    try:
        boxes, classes = read_bbgt(path, Counter())
    except InvismapError:
        return "refused"
    assert len(boxes) == len(classes) and all(len(b) == 4 for b in boxes) and set(classes) <= {0}
    _written_labels_read_back(boxes, classes, 640, 512, str(path))


@st.composite
def voc_xml(draw) -> str:
    def tag(name: str, value: str) -> str:
        return draw(st.sampled_from([f"<{name}>{value}</{name}>", f"<{name}>{value}</{name}>", ""]))

    objects = []
    for _ in range(draw(st.integers(0, 3))):
        coords = "".join(tag(k, draw(number_text(-5, 700))) for k in ("xmin", "ymin", "xmax", "ymax"))
        name = draw(st.sampled_from(["person", "People", "car", "Lamp", "", "&amp;", "<b/>"]))
        box = draw(st.sampled_from([f"<bndbox>{coords}</bndbox>", ""]))
        objects.append("<object>" + tag("name", name) + box + "</object>")
    size = tag("size", tag("width", draw(number_text(0, 700))) + tag("height", draw(number_text(0, 700))))
    text = f"<annotation>{size}{''.join(objects)}</annotation>"
    return draw(st.sampled_from([text, text, text, text[:len(text) // 2], "<?xml version='1.0'?>" + text]))


def check_voc(content: str | bytes) -> None:
    from invismap.data.importers.common import read_voc

    path = _write("ann.xml", content)
    try:
        size, objects = read_voc(path)
    except InvismapError:
        return "refused"
    assert size is None or (len(size) == 2 and all(isinstance(v, int) and v != 0 for v in size))
    assert all(isinstance(n, str) and len(b) == 4 for n, b in objects)
    _written_labels_read_back([b for _, b in objects], [0] * len(objects), 640, 512, str(path))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 1000) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def coco_json(draw) -> str:
    n = draw(st.integers(0, 3))
    images = [{"id": draw(st.integers(0, 3) | JSON_VALUES),
               "file_name": draw(st.sampled_from(["FLIR_00001_PreviewData.jpeg", "FLIR_2.jpg", "x", ""])
                                 | JSON_VALUES),
               "width": draw(st.integers(0, 700)), "height": draw(st.integers(0, 700))} for _ in range(n)]
    anns = [{"image_id": draw(st.integers(0, 3) | JSON_VALUES),
             "category_id": draw(st.integers(0, 3) | JSON_VALUES),
             "bbox": draw(st.lists(st.floats(-10, 700) | JSON_VALUES, max_size=5))}
            for _ in range(draw(st.integers(0, 4)))]
    cats = [{"id": i, "name": draw(st.sampled_from(["person", "car", "Bike", "sign"]) | JSON_VALUES)}
            for i in range(3)]
    doc = {"images": images, "annotations": anns, "categories": cats}
    for key in draw(st.lists(st.sampled_from(sorted(doc)), unique=True, max_size=1)):
        doc[key] = draw(JSON_VALUES)  # sometimes a section of the wrong type
    text = json.dumps(doc)
    return draw(st.sampled_from([text, text, text, text[: len(text) // 2], "[" * 2000 + "]" * 2000]))


def check_flir_coco(content: str | bytes) -> None:
    from invismap.data.importers.flir import _read_coco

    path = _write("coco.json", content)
    try:
        _, boxes, _ = _read_coco(path, "_PreviewData")
    except InvismapError:
        return "refused"
    for frame in boxes.values():
        _written_labels_read_back([b for _, b in frame], [c for c, _ in frame], 640, 512, str(path))


@st.composite
def roadscene_files(draw) -> tuple[str, str]:
    rows = ["name,flir_aligned_split,daynight,crop_w,crop_h,n_boxes_in_crop"]
    for i in range(draw(st.integers(0, 3))):
        fields = [f"FLIR_{i}", draw(st.sampled_from(["train", "", "val"])),
                  draw(st.sampled_from(["day", "night", "unknown", "dusk", "noon", ""])),
                  draw(number_text(0, 700)), draw(number_text(0, 700)), draw(number_text(0, 5))]
        rows.append(",".join(fields[:draw(st.integers(3, 7))]))
    boxes = {f"FLIR_{i}": draw(st.lists(st.fixed_dictionaries(
        {"category": st.sampled_from(["car", "person", "bike", "dog"]) | JSON_VALUES,
         "xyxy_crop": st.lists(st.floats(-5, 700) | JSON_VALUES, max_size=5)}) | JSON_VALUES, max_size=3))
        for i in range(3)}
    return "\n".join(rows), draw(st.sampled_from([json.dumps({"boxes": boxes}), json.dumps(boxes), "{"]))


def check_roadscene(files) -> None:
    from invismap.data.importers.roadscene import _read_boxes, _read_meta

    meta_text, boxes_text = files
    try:
        meta = _read_meta(_write("meta.csv", meta_text))
        assert all(isinstance(r, dict) for r in meta.values())
    except InvismapError:
        pass
    path = _write("boxes.json", boxes_text)
    try:
        boxes = _read_boxes(path)
    except InvismapError:
        return "refused"
    assert isinstance(boxes, dict)


@st.composite
def pair_table(draw) -> str:
    header = draw(st.sampled_from(["name,dev_split", "name,condition", "name,dev_split,condition",
                                   "dev_split", "", "name"]))
    cell = st.sampled_from(["0001D", "train", "test", "day", "night", "noon", "", '"a,b"'])
    rows = [",".join(draw(st.lists(cell, max_size=4))) for _ in range(draw(st.integers(0, 4)))]
    return "\n".join([header] + rows)


def check_pair_tables(content: str | bytes) -> None:
    from invismap.data.importers.m3fd import _read_conditions
    from invismap.data.importers.msrs import _read_splits

    folder = WORK / "msrs"
    folder.mkdir(exist_ok=True)
    data = content if isinstance(content, bytes) else content.encode("utf-8", "replace")
    (folder / "pairs.csv").write_bytes(data)
    try:
        splits = _read_splits(folder, "dev_split")
        assert all(isinstance(v, str) for v in splits.values())
    except InvismapError:
        pass
    with contextlib.suppress(InvismapError):
        _read_conditions(folder / "pairs.csv")


# ---- manifest --------------------------------------------------------------------------------------

@st.composite
def manifest_csv(draw) -> str:
    from invismap.data.manifest import COLUMNS

    columns = draw(st.sampled_from([list(COLUMNS), list(COLUMNS), ["name", "color", "thermal"],
                                    ["name", "color"], ["name", "color", "thermal", "colour"]]))
    cell = {
        "name": st.sampled_from(["a", "b", " c ", "a", "../x", "x/y", "", "n\nm", '"q"', "ü", "..", "d,e"]),
        "color": st.sampled_from(["c.png", "sub/c.png", "/abs/c.png", "", "../c.png"]),
        "thermal": st.sampled_from(["t.png", "", "t t.png"]),
        "condition": st.sampled_from(["day", "night", "unknown", "", "noon", " day"]),
        "split": st.sampled_from(["train", "test", "all", "", "dev"]),
        "timestamp": number_text(-1, 1e9),
        "color_labels": st.sampled_from(["", "l.txt"]),
        "thermal_labels": st.sampled_from(["", "l.txt", "x,y"]),
    }
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        values = [draw(cell.get(c, st.text(max_size=4))) for c in columns]
        values = values[:draw(st.integers(len(values) - 1, len(values)))] if draw(st.booleans()) else values
        quote = [("," in v or "\n" in v) and draw(st.booleans()) for v in values]
        rows.append(",".join(f'"{v}"' if q else v for v, q in zip(values, quote)))
    return "\n".join([",".join(columns)] + rows) + draw(st.sampled_from(["\n", "", "\r\n"]))


def check_manifest(content: str | bytes) -> None:
    from invismap.data.manifest import CONDITIONS, SPLITS, load_manifest, save_manifest

    folder = WORK / "manifest"
    folder.mkdir(exist_ok=True)
    _write("manifest/manifest.csv", content)
    try:
        m = load_manifest(folder)
    except InvismapError:
        return "refused"
    assert len(m) >= 1 and len({s.name for s in m}) == len(m)
    for s in m:
        assert s.condition in CONDITIONS and s.split in SPLITS
        assert s.timestamp is None or math.isfinite(s.timestamp)
        assert (folder / "out" / f"{s.name}.png").resolve().parent == (folder / "out").resolve()
    again = load_manifest(save_manifest(m, folder / "copy" / "manifest.csv"))
    assert again.samples == m.samples


# ---- letterbox ---------------------------------------------------------------------------------------

@st.composite
def letterbox_case(draw):
    w = draw(st.integers(1, 4000) | st.integers(1, 64))
    h = draw(st.integers(1, 4000) | st.integers(1, 64))
    square = st.integers(1, 40).map(lambda k: 32 * k)
    size = draw(square | st.tuples(square, square))
    auto = draw(st.booleans())
    x1, x2 = sorted(draw(st.tuples(st.floats(0, w), st.floats(0, w))))
    y1, y2 = sorted(draw(st.tuples(st.floats(0, h), st.floats(0, h))))
    return w, h, size, auto, np.array([[x1, y1, x2, y2]], np.float32)


def check_letterbox(case) -> None:
    from invismap.data.letterbox import apply_letterbox, letterbox_params, map_to_original

    w, h, size, auto, box = case
    lb = letterbox_params(w, h, size, 32, auto)
    th, tw = (size, size) if isinstance(size, int) else size
    assert lb.width % 32 == 0 and lb.height % 32 == 0 and lb.width <= tw and lb.height <= th
    rows, cols = lb.content_slice()
    assert 0 <= rows.start < rows.stop <= lb.height and 0 <= cols.start < cols.stop <= lb.width
    # original -> canvas -> original, within 1 px
    back = lb.boxes_to_original(lb.boxes_to_canvas(box))
    assert np.abs(back - box).max() <= 1.0, (back, box)
    # a canvas box on the image content -> original -> canvas, within 1 px
    canvas_box = np.array([[cols.start, rows.start, cols.stop, rows.stop]], np.float32)
    again = lb.boxes_to_canvas(lb.boxes_to_original(canvas_box))
    assert np.abs(again - canvas_box).max() <= 1.0, (again, canvas_box)
    if w * h <= 1_000_000 and lb.width * lb.height <= 1_000_000:
        canvas = apply_letterbox(np.zeros((h, w), np.uint8), lb)
        assert canvas.shape == (lb.height, lb.width)
        assert map_to_original(np.zeros((lb.height, lb.width), np.float32), lb).shape == (h, w)


# ------------------------------------------------------------------------------------------- the targets

TARGETS = {
    "darknet_cfg": (st.one_of(working_darknet_cfg(), working_darknet_cfg(), darknet_cfg(),
                              st.text(max_size=300)), check_darknet_cfg),
    "yolo_labels": (_text_or_bytes(lines_of(yolo_line())), check_yolo_labels),
    "kaist_bbgt": (_text_or_bytes(lines_of(bbgt_line())), check_kaist_bbgt),
    "voc_xml": (_text_or_bytes(voc_xml()), check_voc),
    "flir_coco_json": (_text_or_bytes(coco_json()), check_flir_coco),
    "roadscene_meta_and_boxes": (roadscene_files(), check_roadscene),
    "pair_tables": (_text_or_bytes(pair_table()), check_pair_tables),
    "pixel_label_writer": (pixel_boxes(), check_pixel_labels),
    "manifest": (_text_or_bytes(manifest_csv()), check_manifest),
    "letterbox_round_trip": (letterbox_case(), check_letterbox),
}

HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
          HealthCheck.function_scoped_fixture]


def fuzz(name: str, max_examples: int, outcomes: Counter | None = None, **extra) -> Counter:
    """Run one target for ``max_examples`` examples; counts outcomes (``ok``, ``refused``, ``skipped``).

    Raises the shrunk failing example on a crash.
    """
    strategy, check = TARGETS[name]
    outcomes = Counter() if outcomes is None else outcomes

    def run(example) -> None:
        outcomes[check(example) or "ok"] += 1

    settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=HEALTH,
             **extra)(given(strategy)(run))()
    return outcomes


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target(name):
    outcomes = fuzz(name, max_examples=40)
    assert sum(outcomes.values()) >= 40
