"""Map-guided fusion on hand-made boxes, the union of label sets, bootstrap AP50, and ``detect --thermal``."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from invismap.detector.ap_bootstrap import ap50_estimates, ap50_replicates, match_at_iou50, mean_over_classes
from invismap.detector.base import Detections
from invismap.detector.evaluate import LabelledDetections, coco_ap
from invismap.detector.fusion import FusionParams, box_map_means, fuse_detections, fuse_with_map, trust
from invismap.detector.fusion_eval import (
    FusionGrid,
    PairRecord,
    chosen_params,
    evaluate_fusion,
    format_fusion_table,
    load_records,
    save_records,
    union_labels,
)
from invismap.detector.protocol import ScoringProtocol
from invismap.invisibility.bootstrap import resample_weights

W, H = 100, 80


def dets(boxes, scores, classes) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int64))


def blind_left() -> np.ndarray:
    """A map that flags the left half: the color camera may not see objects there."""
    heat = np.zeros((H, W), np.float32)
    heat[:, :W // 2] = 1.0
    return heat


# ---- fusion -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["wbf", "nms"])
def test_color_box_the_map_flags_is_down_weighted(method):
    color = dets([[5, 5, 25, 45], [60, 5, 80, 45]], [0.8, 0.8], [0, 0])  # one box left (flagged), one right
    thermal = dets([], [], [])
    fused = fuse_with_map(color, thermal, blind_left(), FusionParams(map_strength=0.5, method=method))
    left = fused.scores[fused.boxes[:, 0] < W / 2]
    right = fused.scores[fused.boxes[:, 0] >= W / 2]
    assert len(left) == len(right) == 1
    assert left[0] == pytest.approx(right[0] / 2)  # trust 1 - 0.5 * 1 on the left, 1 on the right


def test_thermal_boxes_are_not_weighted_by_the_map():
    color = dets([], [], [])
    thermal = dets([[5, 5, 25, 45]], [0.6], [0])
    plain = fuse_with_map(color, thermal, None, FusionParams(), image_size=(W, H))
    guided = fuse_with_map(color, thermal, blind_left(), FusionParams(map_strength=1.0))
    assert guided.scores.tolist() == plain.scores.tolist()


def test_thermal_boost_spares_thermal_boxes_where_the_color_camera_is_blind():
    color = dets([], [], [])
    thermal = dets([[5, 5, 25, 45], [60, 5, 80, 45]], [0.6, 0.6], [0, 0])
    fused = fuse_with_map(color, thermal, blind_left(), FusionParams(thermal_boost=1.0))
    left = fused.scores[fused.boxes[:, 0] < W / 2]
    right = fused.scores[fused.boxes[:, 0] >= W / 2]
    assert left[0] == pytest.approx(0.6) and right[0] == pytest.approx(0.3)  # 1 + m undoes WBF's halving


@pytest.mark.parametrize("form,strength", [("linear", 0.6), ("power", 2.0)])
@pytest.mark.parametrize("method", ["wbf", "nms"])
def test_a_constant_map_is_plain_fusion(form, strength, method):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 60, (12, 2))
    boxes = np.hstack([xy, xy + rng.uniform(8, 30, (12, 2))])
    color = dets(boxes[:6], rng.uniform(0.1, 1, 6), rng.integers(0, 3, 6))
    thermal = dets(boxes[6:] + rng.normal(0, 2, (6, 4)), rng.uniform(0.1, 1, 6), rng.integers(0, 3, 6))
    m0 = 0.3
    guided = fuse_with_map(color, thermal, np.full((H, W), m0, np.float32),
                           FusionParams(color_weight=0.8, map_strength=strength, form=form, method=method))
    c = 0.8 * float(trust(np.array([m0]), form, strength)[0])
    plain = fuse_with_map(color, thermal, None, FusionParams(color_weight=c, method=method),
                          image_size=(W, H))
    np.testing.assert_allclose(guided.boxes, plain.boxes, atol=1e-4)
    np.testing.assert_allclose(guided.scores, plain.scores, rtol=1e-6)
    assert guided.classes.tolist() == plain.classes.tolist()


def test_wbf_merges_agreeing_boxes_and_keeps_lone_ones():
    color = dets([[10, 10, 30, 50], [60, 10, 80, 50]], [0.8, 0.4], [0, 2])
    thermal = dets([[12, 10, 32, 50]], [0.6], [0])
    fused = fuse_detections(color, thermal, np.ones(2), (W, H), FusionParams())
    assert sorted(fused.classes.tolist()) == [0, 2]
    person = fused.classes == 0
    assert fused.scores[person][0] == pytest.approx(0.7)  # mean of 0.8 and 0.6, both detectors agree
    assert fused.scores[~person][0] == pytest.approx(0.2)  # found by one of two detectors
    np.testing.assert_allclose(fused.boxes[person][0], [(10 * 0.8 + 12 * 0.6) / 1.4, 10,
                                                         (30 * 0.8 + 32 * 0.6) / 1.4, 50], rtol=1e-5)


def test_box_map_means_and_bad_params():
    boxes = np.array([[0, 0, 10, 10], [40, 0, 60, 10], [200, 0, 300, 10]])
    assert box_map_means(blind_left(), boxes).tolist() == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="map_strength"):
        FusionParams(map_strength=2.0)  # linear: 1 - alpha * m must stay >= 0
    with pytest.raises(ValueError, match="color_weight"):
        FusionParams(color_weight=float("nan"))
    with pytest.raises(ValueError, match="weights for"):
        fuse_detections(dets([[0, 0, 1, 1]], [1], [0]), dets([], [], []), np.ones(2), (W, H), FusionParams())


# ---- labels and AP -------------------------------------------------------------------------------

def test_union_labels_merges_same_object_once():
    color = np.array([[0, 0, 0, 10, 10], [0, 1, 0, 11, 10], [2, 50, 50, 60, 60]])
    thermal = np.array([[0, 0, 0, 10, 10], [2, 70, 50, 80, 60]])
    u = union_labels(color, thermal)
    assert u.tolist() == [[0, 0, 0, 10, 10], [2, 70, 50, 80, 60], [0, 1, 0, 11, 10], [2, 50, 50, 60, 60]]
    assert union_labels(np.zeros((0, 5)), thermal).tolist() == thermal.tolist()
    assert union_labels(color, np.zeros((0, 5))).shape == (3, 5)
    # another class never merges, however much the boxes overlap
    assert len(union_labels(np.array([[1, 0, 0, 10, 10]]), np.array([[0, 0, 0, 10, 10]]))) == 2


def random_image(rng, n_gt: int, n_det: int):
    c = rng.integers(0, 3, n_gt)
    xy = rng.uniform(0, 60, (n_gt, 2))
    gt = np.column_stack([c, xy, xy + rng.uniform(5, 30, (n_gt, 2))])
    pick = rng.integers(0, max(n_gt, 1), n_det)
    b = gt[pick, 1:] + rng.normal(0, 3, (n_det, 4)) if n_gt else rng.uniform(0, 60, (n_det, 4))
    b = np.column_stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                         np.maximum(b[:, 0], b[:, 2]) + 1, np.maximum(b[:, 1], b[:, 3]) + 1])
    cls = gt[pick, 0] if n_gt else rng.integers(0, 3, n_det)
    return gt, dets(b, rng.random(n_det), cls)


def test_bootstrap_ap50_is_coco_ap_on_the_resampled_images():
    rng = np.random.default_rng(3)
    data = [random_image(rng, int(rng.integers(0, 5)), int(rng.integers(0, 40))) for _ in range(12)]
    gts, ds, sizes = [g for g, _ in data], [d for _, d in data], [(W, H)] * 12
    matches = match_at_iou50(gts, ds, sizes)
    draws = [np.arange(12), rng.integers(0, 12, 12), rng.integers(0, 12, 12)]
    weights = np.array([np.bincount(d, minlength=12) for d in draws], np.float64)
    reps = ap50_replicates(matches, weights)
    for row, d in zip(reps, draws):
        ref = coco_ap([gts[i] for i in d], [ds[i] for i in d], [sizes[i] for i in d])
        np.testing.assert_allclose(row, [ref["classes"][n]["AP50"] for n in ("person", "bicycle", "car")],
                                   atol=1e-12)
        assert mean_over_classes(row[None])[0] == pytest.approx(ref["AP50"], abs=1e-12)


def test_ap50_estimates_are_coco_ap_with_paired_leads():
    rng = np.random.default_rng(4)
    data = [random_image(rng, int(rng.integers(1, 5)), int(rng.integers(0, 40))) for _ in range(12)]
    gts, sizes = [g for g, _ in data], [(W, H)] * 12
    worse = [dets(d.boxes[::2], d.scores[::2], d.classes[::2]) for _, d in data]  # half the boxes
    found = {"a": LabelledDetections(gts, [d for _, d in data], sizes),
             "b": LabelledDetections(gts, worse, sizes)}
    est = ap50_estimates(found, reference="b", n_boot=200)
    for name, f in found.items():
        assert est[name]["value"] == pytest.approx(100 * coco_ap(gts, f.detections, sizes)["AP50"], abs=1e-3)
        assert est[name]["lo"] <= est[name]["value"] <= est[name]["hi"]
    lead = est["a - b"]
    assert lead["value"] == pytest.approx(est["a"]["value"] - est["b"]["value"], abs=1e-3)
    # paired: a - b on each resample of the images, the same resamples for both
    weights = resample_weights([np.arange(12)], 200, seed=0)
    reps = {k: 100 * mean_over_classes(ap50_replicates(match_at_iou50(gts, f.detections, sizes), weights))
            for k, f in found.items()}
    expected = np.percentile(reps["a"] - reps["b"], [2.5, 97.5])
    assert [lead["lo"], lead["hi"]] == pytest.approx(expected, abs=1e-4)
    assert ap50_estimates({"a": found["a"], "again": found["a"]}, "a", n_boot=50)["again - a"] == {
        "value": 0.0, "lo": 0.0, "hi": 0.0}
    with pytest.raises(ValueError, match="different images"):
        ap50_estimates({"a": found["a"], "c": LabelledDetections(gts[:11], worse[:11], sizes[:11])})
    with pytest.raises(ValueError, match="different images"):  # the same images in another order
        ap50_estimates({"a": found["a"], "c": LabelledDetections(gts[::-1], worse[::-1], sizes)})
    with pytest.raises(ValueError, match="reference 'x'"):
        ap50_estimates(found, reference="x")


# ---- evaluation on synthetic records ---------------------------------------------------------------

def synthetic_records(n: int = 8) -> tuple[list[PairRecord], dict]:
    """Pairs where the color detector's box in the flagged region is a false alarm that outranks its true
    boxes."""
    rng = np.random.default_rng(0)
    records, labels = [], {}
    for i in range(2 * n):
        split, cond = ("train", "test")[i % 2], ("day", "night")[(i // 2) % 2]
        truth = np.array([[0, 60, 10, 80, 50], [2, 5, 10, 30, 40]], np.float32)
        thermal = dets([[5, 45, 30, 75]], [0.6], [2])  # a false alarm
        color = dets([[59, 9, 79, 49], [6, 10, 31, 40], [10, 40, 30, 70]], [0.5, 0.4, 0.9], [0, 2, 0])
        means = np.array([0.0, 0.1, 0.9 * rng.uniform(0.9, 1)])  # the false alarm sits where the map flags
        name = f"{i:05d}{cond[0].upper()}"
        records.append(PairRecord(name, cond, split, (W, H), color, thermal, {"toy": means},
                                  {"toy": np.zeros(1)}))
        labels[name] = {"thermal": truth, "union": truth}
    return records, labels


def test_evaluate_fusion_chooses_on_train_and_reports_margins(tmp_path):
    records, labels = synthetic_records()
    grid = FusionGrid(color_weights=(0.5, 1.0),
                      strengths={"linear": (1.0,), "power": (4.0,), "boost": (0.0,)}, boosts=(1.0,))
    res = evaluate_fusion(records, labels, maps=["toy"], grid=grid, n_boot=20, progress=False)
    block = res["conditions"]["night"]["label_sets"]["thermal"]
    assert set(block["methods"]) == {"color", "thermal", "constant", "map:toy:linear", "map:toy:power",
                                     "map:toy:boost", "map:toy"}
    assert block["methods"]["map:toy"]["AP50"]["value"] > block["methods"]["constant"]["AP50"]["value"]
    assert block["margins"]["map_minus_constant"]["map:toy"]["value"] > 0
    assert block["chosen"]["map:toy"]["map_strength"] > 0
    ap = block["methods"]["thermal"]["AP50"]
    assert ap["lo"] <= ap["value"] <= ap["hi"]
    text = format_fusion_table(res)
    assert "night, union labels" in text and "map:toy - constant" in text
    (tmp_path / "fusion.json").write_text(json.dumps(res))  # JSON-ready; what detect --weights-from reads
    read = chosen_params(tmp_path / "fusion.json", "night", "thermal", "map:toy")
    assert asdict(read) == {k: v for k, v in block["chosen"]["map:toy"].items() if k != "train_AP50"}

    # one set of weights for every scene, chosen on the train pairs of both conditions together
    shared = evaluate_fusion(records, labels, maps=["toy"], grid=grid, n_boot=20, progress=False,
                             weights_per="all")
    day, night = (shared["conditions"][c] for c in ("day", "night"))
    assert day["n_train"] == night["n_train"] == sum(r.split == "train" for r in records)
    assert day["label_sets"]["thermal"]["chosen"] == night["label_sets"]["thermal"]["chosen"]
    assert "weights chosen on 8 train pairs of every condition" in format_fusion_table(shared)


def test_records_round_trip(tmp_path):
    records, _ = synthetic_records(2)
    save_records(tmp_path / "d.npz", records, {"a": 1})
    back = load_records(tmp_path / "d.npz", {"a": 1})
    assert [r.name for r in back] == [r.name for r in records]
    for a, b in zip(records, back):
        assert a.size == b.size and a.condition == b.condition and a.split == b.split
        np.testing.assert_array_equal(a.color.boxes, b.color.boxes)
        np.testing.assert_array_equal(a.thermal.classes, b.thermal.classes)
        np.testing.assert_array_equal(a.color_map_means["toy"], b.color_map_means["toy"])
        np.testing.assert_array_equal(a.thermal_map_means["toy"], b.thermal_map_means["toy"])
    assert load_records(tmp_path / "d.npz", {"a": 2}) is None  # other settings: recompute
    assert load_records(tmp_path / "missing.npz") is None


# ---- CLI on two real pairs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def thermal_detector(tmp_path_factory, weights_dir) -> Path:
    """An undistilled thermal detector (the teacher's weights reading gray), saved as distillation saves
    one."""
    from invismap.detector.zoo import load_detector
    from invismap.distill.student import ThermalStudent, student_checkpoint
    from invismap.engine.checkpoint import save_checkpoint

    student = ThermalStudent(load_detector(weights_dir / "yolov5n.pt"))
    path = tmp_path_factory.mktemp("td") / "thermal_detector.pt"
    return save_checkpoint(path, {"kind": "thermal_detector", **student_checkpoint(
        student, teacher="yolov5n", thresholds=[20.0, 20.0, 20.0], offsets=None)})


def two_pairs(msrs_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    for sub, folder in (("color", "vi"), ("thermal", "ir")):
        (tmp_path / sub).mkdir()
        for name in ("00001D", "00010N"):  # small copies keep the test fast
            img = cv2.imread(str(msrs_dir / folder / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(tmp_path / sub / f"{name}.png"), cv2.resize(img, (160, 120)))
    return tmp_path / "color", tmp_path / "thermal"


@pytest.mark.parametrize("map_", ["none", "pair"])
def test_cli_detect_fuses_real_pairs(map_, msrs_dir, weights_dir, thermal_detector, tmp_path):
    from invismap.cli import main

    color, thermal = two_pairs(msrs_dir, tmp_path)
    out = tmp_path / "out"
    assert main(["detect", "--model", str(weights_dir / "yolov5n.pt"), str(color), "--thermal", str(thermal),
                 "--thermal-detector", str(thermal_detector), "--map", map_, "--size", "160", "--conf", "0.1",
                 "--color-weight", "0.7", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["00001D.txt", "00010N.txt"]
    drawing = cv2.imread(str(out / "00001D.png"))
    assert drawing.shape == (120, 320, 3)  # color | thermal
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} <= {1, 2}
    lines = [ln.split() for ln in (out / "labels" / "00001D.txt").read_text().splitlines()]
    assert len(lines) == sum(r["image_id"] == 1 for r in results)
    assert all(len(ln) == 6 and 0 <= float(ln[1]) <= 1 for ln in lines)

    # the same weights read from a fusion run's results give the same boxes (the flags' map strength: 1)
    chosen = {"color_weight": 0.7, "map_strength": 0.0 if map_ == "none" else 1.0, "form": "linear",
              "thermal_boost": 0.0, "method": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0, "train_AP50": 50.0}
    chosen = {"constant" if map_ == "none" else "map:pair": chosen}
    fusion = tmp_path / "fusion.json"
    fusion.write_text(json.dumps({"conditions": {"night": {"label_sets": {"thermal": {"chosen": chosen}}}}}))
    assert main(["detect", "--model", str(weights_dir / "yolov5n.pt"), str(color), "--thermal", str(thermal),
                 "--thermal-detector", str(thermal_detector), "--map", map_, "--size", "160", "--conf", "0.1",
                 "--weights-from", str(fusion), "--condition", "night",
                 "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "detections.json").read_text()) == results


def test_cli_detect_warns_when_weights_were_chosen_otherwise(msrs_dir, weights_dir, thermal_detector,
                                                             tmp_path, caplog):
    """At other sizes or NMS IoU, or with strict classes (a fusion run from before classes were folded)."""
    from invismap.cli import main

    color, thermal = two_pairs(msrs_dir, tmp_path)
    chosen = {"constant": {"color_weight": 0.5, "map_strength": 0.0, "form": "linear", "thermal_boost": 0.0,
                           "method": "wbf", "iou_thr": 0.55, "skip_box_thr": 0.0}}
    fusion = tmp_path / "fusion.json"
    fusion.write_text(json.dumps({"settings": {"tta_sizes": [224]},
                                  "conditions": {"day": {"label_sets": {"thermal": {"chosen": chosen}}}}}))
    argv = ["detect", "--model", str(weights_dir / "yolov5n.pt"), str(color), "--thermal", str(thermal),
            "--thermal-detector", str(thermal_detector), "--size", "160", "--conf", "0.1",
            "--weights-from", str(fusion), "--condition", "day"]
    with caplog.at_level(logging.WARNING):
        assert main(argv + ["--out", str(tmp_path / "one")]) == 0
    assert "chosen with --tta-sizes [224], this run uses none" in caplog.text
    assert "chosen with strict COCO classes" in caplog.text  # a run from before classes were folded
    caplog.clear()
    fusion.write_text(json.dumps({"settings": {"tta_sizes": [224], "fold_classes": True},
                                  "conditions": {"day": {"label_sets": {"thermal": {"chosen": chosen}}}}}))
    with caplog.at_level(logging.WARNING):
        assert main(argv + ["--tta-sizes", "224", "--out", str(tmp_path / "two")]) == 0
    assert "tta-sizes" not in caplog.text and "strict" not in caplog.text and "NMS IoU" not in caplog.text
    assert (tmp_path / "two" / "detections.json").is_file()
    caplog.clear()
    fusion.write_text(json.dumps({"settings": {"fold_classes": True, "nms_iou": 0.4},
                                  "conditions": {"day": {"label_sets": {"thermal": {"chosen": chosen}}}}}))
    with caplog.at_level(logging.WARNING):
        assert main(argv + ["--out", str(tmp_path / "three")]) == 0
    assert "chosen with NMS IoU 0.4, this run uses 0.45; give --iou 0.4" in caplog.text
    assert "not a distilled thermal detector" not in caplog.text
    caplog.clear()
    teacher_as_thermal = argv[:argv.index("--thermal-detector") + 1] + [str(weights_dir / "yolov5n.pt")] + \
        argv[argv.index("--thermal-detector") + 2:]
    with caplog.at_level(logging.WARNING):  # the color teacher as the thermal detector: said, not refused
        assert main(teacher_as_thermal + ["--out", str(tmp_path / "four")]) == 0
    assert "yolov5n.pt: not a distilled thermal detector" in caplog.text


def test_cached_detections_are_recomputed_when_the_sizes_change(msrs_dir, weights_dir, thermal_detector,
                                                                 tmp_path, monkeypatch):
    from invismap.data.manifest import load_manifest
    from invismap.detector import fusion_eval

    two_pairs(msrs_dir, tmp_path)
    lines = ["name,color,thermal,condition,split,timestamp,color_labels,thermal_labels"]
    for n, c in (("00001D", "day"), ("00010N", "night")):
        lines.append(f"{n},color/{n}.png,thermal/{n}.png,{c},test,,,")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    calls = []
    real = fusion_eval.compute_pair_records

    def counted(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs).arguments
        calls.append(list(bound["protocol"].tta_sizes))
        return real(*args, **kwargs)

    monkeypatch.setattr(fusion_eval, "compute_pair_records", counted)
    kw = {"manifest": load_manifest(tmp_path / "manifest.csv"), "color": str(weights_dir / "yolov5n.pt"),
          "thermal_detector": thermal_detector, "map_specs": {}, "cache": tmp_path / "detections.npz",
          "protocol": ScoringProtocol(size=160), "progress": False}
    first = fusion_eval.cached_pair_records(**kw)
    again = fusion_eval.cached_pair_records(**kw)  # read back from the cache
    kw["protocol"] = ScoringProtocol(size=160, tta_sizes=[128])
    fusion_eval.cached_pair_records(**kw)  # other sizes: detected again
    assert calls == [[], [128]]
    for a, b in zip(first, again):
        np.testing.assert_allclose(a.thermal.boxes, b.thermal.boxes)
        np.testing.assert_array_equal(a.color.classes, b.color.classes)
