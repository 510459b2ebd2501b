"""YOLOv5 teacher: golden outputs of the original implementation, loading paths, decode order, NMS, detect."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from invismap.data.manifest import CLASS_FOLD
from invismap.detector.postprocess import batched_nms, detect, non_max_suppression
from invismap.detector.yolov5 import YOLOv5, YOLOv5Config, infer_config
from invismap.detector.zoo import load_detector
from invismap.errors import InvismapError
from invismap.io import read_color


@pytest.fixture(scope="module")
def reference(weights_dir):
    return torch.load(weights_dir / "yolov5n_reference_io_416.pt", weights_only=True)


@pytest.fixture(scope="module")
def yolov5n(weights_dir):
    return load_detector(weights_dir / "yolov5n.pt")


@pytest.mark.parametrize("file", ["yolov5n.pt", "yolov5n_state_dict.pt"])
def test_golden_outputs_match_original(weights_dir, reference, file):
    model = load_detector(weights_dir / file)
    assert model.cfg == YOLOv5Config(0.33, 0.25, 80)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        feats = model.neck_features(reference["x"])
        pred = model.decode(model.heads(feats))
    for f, key in zip(feats, ("p3", "p4", "p5")):
        assert f.shape == reference[key].shape
        assert (f - reference[key]).abs().max() < 1e-3
    assert pred.shape == (1, 10647, 85)
    assert (pred - reference["pred"]).abs().max() < 1e-3


def test_names(yolov5n, weights_dir):
    assert len(yolov5n.names) == 80 and yolov5n.names[:3] == ["person", "bicycle", "car"]
    assert yolov5n.strides == (8, 16, 32) and yolov5n.max_stride == 32


def test_decode_row_order_and_formula():
    """Zero logits: sigmoid 0.5, so xy = cell centre and wh = anchor; rows run (scale, anchor, y, x)."""
    model = YOLOv5(YOLOv5Config(num_classes=2))
    na, no = 3, 7
    raw = [torch.zeros(1, na * no, 64 // s, 48 // s) for s in (8, 16, 32)]
    pred = model.decode(raw)
    assert pred.shape == (1, 3 * (8 * 6 + 4 * 3 + 2 * 1), no)
    offset = 0
    for s, anchors in zip((8, 16, 32), model.cfg.anchors):
        ny, nx = 64 // s, 48 // s
        for a, y, x in itertools.product(range(na), range(ny), range(nx)):
            row = pred[0, offset + (a * ny + y) * nx + x]
            assert torch.allclose(row[:2], torch.tensor([(x + 0.5) * s, (y + 0.5) * s]))
            assert torch.allclose(row[2:4], torch.tensor(anchors[a], dtype=torch.float32))
            assert torch.allclose(row[4:], torch.full((3,), 0.5))
        offset += na * ny * nx
    assert offset == pred.shape[1]


@pytest.mark.parametrize("variant", list("nsmlx"))
def test_official_variants_are_inferred_from_state_dict_shapes(variant):
    cfg = YOLOv5Config.variant(variant)
    with torch.device("meta"):  # shapes only: no memory, no init time, even for yolov5x
        sd = YOLOv5(cfg).state_dict()
    sd["model.24.anchors"] = torch.tensor(cfg.anchors) / torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1)
    assert infer_config(sd) == cfg


def test_custom_head_round_trips_through_fp16_state_dict():
    anchors = (((5, 6), (7, 8)), ((9, 10), (11, 12)), ((13, 14), (15, 16)))
    cfg = YOLOv5Config(0.33, 0.25, 3, anchors)
    model = YOLOv5(cfg).eval()
    sd = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    loaded = YOLOv5.from_state_dict(sd)
    assert loaded.cfg == cfg and loaded.names == ["class0", "class1", "class2"]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        out = loaded(x)
        assert torch.allclose(out, model(x), rtol=1e-2, atol=1e-2)  # fp16 round trip of the weights
    assert out.shape == (1, 2 * (8 * 12 + 4 * 6 + 2 * 3), 8)  # 2 anchors per cell, 3 + 5 outputs


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    with pytest.raises(InvismapError, match="not a YOLOv5"):
        load_detector(path)
    sd = YOLOv5(YOLOv5Config(num_classes=3)).state_dict()
    sd["model.17.cv3.conv.weight"] = torch.zeros(5, 5, 1, 1)
    torch.save(sd, path)
    with pytest.raises(InvismapError, match=r"resnet.pt.*not a YOLOv5"):
        load_detector(path)


def test_invismap_checkpoint_kind(tmp_path, weights_dir, reference):
    sd = torch.load(weights_dir / "yolov5n_state_dict.pt", weights_only=True)
    path = tmp_path / "teacher.pt"
    torch.save({"kind": "yolov5", "state_dict": sd, "names": [f"c{i}" for i in range(80)]}, path)
    model = load_detector(path)
    assert model.names[5] == "c5"
    torch.save({"kind": "thermal_banana", "state_dict": sd}, path)
    with pytest.raises(InvismapError, match=r"thermal_banana.*kinds:.*yolov5"):
        load_detector(path)


def test_named_model_resolves_in_assets(monkeypatch, tmp_path, assets):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    assert load_detector("yolov5n").cfg.width_multiple == 0.25
    monkeypatch.setenv("INVISMAP_ASSETS", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(InvismapError,
                       match=r"weights/yolov5s.pt.*put the file at|weights/yolov5s.pt.*put it at"):
        load_detector("yolov5s")
    with pytest.raises(InvismapError, match="model file not found"):
        load_detector(tmp_path / "missing.pt")
    with pytest.raises(InvismapError, match="not a known model name"):
        load_detector("yolov9000")


def _greedy_nms(boxes, scores, classes, thr):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])
            iou = inter / (area(boxes[i]) + area(boxes[j]) - inter)
            if classes[i] != classes[j] or iou <= thr:
                rest.append(j)
        order = rest
    return keep


def test_batched_nms_matches_reference_greedy_nms():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2))], 1)
    scores = rng.permutation(300).astype(np.float32) / 300 + 0.001  # distinct scores: no tie ambiguity
    classes = rng.integers(0, 3, 300)
    got = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes), 0.45).tolist()
    assert got == _greedy_nms(boxes, scores, classes, 0.45)


def _pred(rows):
    """rows of (cx, cy, w, h, obj, p0, p1, p2) -> (1, N, 8) tensor."""
    return torch.tensor([rows], dtype=torch.float32)


def test_non_max_suppression_rules():
    pred = _pred([
        [50, 50, 20, 20, 0.9, 0.9, 0.6, 0.0],  # class 0 (0.81) and class 1 (0.54)
        [52, 50, 20, 20, 0.8, 0.9, 0.0, 0.0],  # overlaps row 0, class 0 -> suppressed
        [150, 50, 20, 20, 0.5, 0.0, 0.0, 0.9],  # class 2, alone
        [150, 150, 20, 20, 0.1, 0.9, 0.0, 0.0],  # score 0.09 < 0.25
    ])
    (single,) = non_max_suppression(pred, 0.25, 0.45, multi_label=False)
    assert single[:, 5].tolist() == [0, 2]
    assert torch.allclose(single[0], torch.tensor([40, 40, 60, 60, 0.81, 0]))
    (multi,) = non_max_suppression(pred, 0.25, 0.45, multi_label=True)
    assert multi[:, 5].tolist() == [0, 1, 2]  # row 0 is both a class 0 and a class 1 box
    assert multi[:, 4].tolist() == pytest.approx([0.81, 0.54, 0.45])
    assert multi[:, 4].tolist() == sorted(multi[:, 4].tolist(), reverse=True)
    (only2,) = non_max_suppression(pred, 0.25, 0.45, classes=[2])
    assert only2[:, 5].tolist() == [2]
    (capped,) = non_max_suppression(pred, 0.25, 0.45, max_det=1)
    assert capped[:, 4].tolist() == pytest.approx([0.81])
    (none,) = non_max_suppression(pred, 0.95, 0.45)
    assert none.shape == (0, 6)


def test_class_fold_keeps_a_truck_box_as_the_car_it_is_labelled():
    # 8 classes (COCO order): 0 person, 1 bicycle, 2 car, 3 motorcycle, ..., 7 truck
    pred = torch.zeros(1, 3, 13)
    pred[0, :, :5] = torch.tensor([[50, 50, 20, 20, 0.9], [52, 50, 20, 20, 0.7], [150, 50, 20, 20, 0.9]])
    pred[0, 0, 5 + 7], pred[0, 0, 5 + 2] = 0.8, 0.5  # a truck (0.72) that is also a bit of a car (0.45)
    pred[0, 1, 5 + 2] = 0.9  # a car box (0.63) on the same object
    pred[0, 2, 5 + 3] = 0.6  # a motorcycle, alone
    (strict,) = non_max_suppression(pred, 0.25, 0.45, classes=[0, 1, 2])
    assert strict[:, 5].tolist() == [2] and strict[0, 0] == 42  # the truck box is dropped
    (folded,) = non_max_suppression(pred, 0.25, 0.45, classes=[0, 1, 2], class_fold=CLASS_FOLD)
    # the truck box keeps its score, becomes a car and suppresses the car box; the motorcycle is a bicycle
    assert folded[:, 5].tolist() == [2, 1] and folded[0, 0] == 40
    assert folded[:, 4].tolist() == pytest.approx([0.72, 0.54])
    (swapped,) = non_max_suppression(pred, 0.25, 0.45, class_fold={7: 2, 2: 7})  # applied once, not chained
    assert swapped[:, 5].tolist() == [2, 7, 3]


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detect_finds_labelled_people_in_original_pixels(yolov5n, msrs_dir):
    import cv2

    from invismap.data.manifest import read_yolo_labels, yolo_to_xyxy

    img = read_color(msrs_dir / "vi" / "00003N.png")
    gt = yolo_to_xyxy(read_yolo_labels(msrs_dir / "labels" / "visible" / "00003N.txt"), 640, 480)
    people = gt[gt[:, 0] == 0, 1:]
    assert len(people) >= 2
    # All three share the 640x480 canvas (one batch): as is; rows 8..472 (padded 8 px top and bottom);
    # half size (scaled x2 onto the canvas).
    rows = np.ascontiguousarray(img[8:472])
    half = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)
    cases = [(img, people), (rows, people - [0, 8, 0, 8]), (half, people / 2)]
    dets = detect(yolov5n, [c[0] for c in cases], size=640, conf=0.25)
    for (image, truth), d in zip(cases, dets):
        h, w = image.shape[:2]
        assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32 and d.classes.dtype == np.int64
        assert (d.boxes >= 0).all() and (d.boxes[:, [0, 2]] <= w).all() and (d.boxes[:, [1, 3]] <= h).all()
        best = [max((_iou(b, g) for b, c in zip(d.boxes, d.classes) if c == 0), default=0) for g in truth]
        assert min(best) > 0.5, best
    # Rows 8..472 land on the canvas exactly where they sit in the full image (8 px of padding), so the
    # network sees the same pixels there: the same people, mapped back 8 px higher.
    full, cropped = (d.boxes[(d.classes == 0) & (d.scores > 0.5)] for d in dets[:2])
    assert len(full) >= 2 and len(cropped) == len(full)
    shift = np.abs(cropped[:, None] + [0, 8, 0, 8] - full[None]).max(2).min(1)
    assert shift.max() < 1.0, shift
