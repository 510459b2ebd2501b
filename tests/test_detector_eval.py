"""COCO AP on hand-computable cases, and detector evaluation / CLI on a few real MSRS pairs."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from invismap.data.manifest import load_manifest
from invismap.detector import cli as detector_cli
from invismap.detector.base import Detections
from invismap.detector.evaluate import coco_ap, evaluate_detector
from invismap.detector.protocol import ScoringProtocol
from invismap.detector.zoo import load_detector
from invismap.errors import InvismapError

SIZE = (200, 100)


def _gt(*rows):
    return np.array(rows, np.float32).reshape(-1, 5)


def _det(rows):
    rows = np.array(rows, np.float32).reshape(-1, 6)  # x1 y1 x2 y2 score cls
    return Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64))


GT = [_gt([0, 10, 10, 50, 90], [2, 100, 20, 180, 60]), _gt([0, 30, 30, 70, 95])]


def test_perfect_predictions_give_ap_1():
    dets = [_det([[*g[1:], 0.9, g[0]] for g in gt]) for gt in GT]
    res = coco_ap(GT, dets, [SIZE, SIZE])
    assert res["AP50"] == pytest.approx(1.0) and res["AP50_95"] == pytest.approx(1.0)
    assert res["classes"]["person"] == {"id": 0, "AP50": pytest.approx(1.0), "AP50_95": pytest.approx(1.0),
                                        "n_gt": 2, "n_det": 2}
    assert math.isnan(res["classes"]["bicycle"]["AP50"])  # no ground truth: undefined, not in the mean
    assert res["n_images"] == 2


def test_no_detections_give_ap_0():
    res = coco_ap(GT, [_det([]), _det([])], [SIZE, SIZE])
    assert res["AP50"] == 0.0 and res["AP50_95"] == 0.0
    assert res["classes"]["car"]["AP50"] == 0.0


def test_half_recall_and_loose_boxes():
    # One of two people found exactly: precision 1 up to recall 0.5 -> 51 of 101 recall points.
    res = coco_ap([GT[0][:1], GT[1]], [_det([[10, 10, 50, 90, 0.9, 0]]), _det([])], [SIZE, SIZE], classes=[0])
    assert res["AP50"] == pytest.approx(51 / 101)
    # A box with IoU 0.62 matches at IoU thresholds 0.50, 0.55, 0.60 only: 3 of 10.
    x2 = 10 + 40 * 0.62  # same height, 62% of the width, inside the truth
    res = coco_ap([GT[0][:1]], [_det([[10, 10, x2, 90, 0.9, 0]])], [SIZE], classes=[0])
    assert res["AP50"] == pytest.approx(1.0) and res["AP50_95"] == pytest.approx(0.3)


def test_wrong_class_and_other_classes_ignored():
    # A car box on the person: a false positive for car, a miss for person; class 5 is not evaluated.
    dets = [_det([[10, 10, 50, 90, 0.9, 2], [100, 20, 180, 60, 0.8, 2], [0, 0, 5, 5, 0.99, 5]])]
    res = coco_ap([GT[0]], dets, [SIZE])
    assert res["classes"]["person"]["AP50"] == 0.0
    assert res["classes"]["car"]["AP50"] == pytest.approx(0.5, abs=0.01)  # recall 1 at precision 0.5
    assert res["classes"]["car"]["n_det"] == 2 and "bus" not in res["classes"]
    with pytest.raises(ValueError, match="one of each"):
        coco_ap(GT, dets, [SIZE])


@pytest.fixture(scope="module")
def tiny_manifest(msrs_dir, tmp_path_factory):
    """Four test pairs (2 day, 2 night) of the real MSRS, labels read in place."""
    names = ["00279D", "00200D", "00024N", "00026N"]
    root = tmp_path_factory.mktemp("msrs_tiny")
    lines = ["name,color,thermal,condition,split,timestamp,color_labels,thermal_labels"]
    for n in names:
        lines.append(f"{n},{msrs_dir}/vi/{n}.png,{msrs_dir}/ir/{n}.png,"
                     f"{'day' if n.endswith('D') else 'night'},"
                     f"test,,{msrs_dir}/labels/visible/{n}.txt,{msrs_dir}/labels/infrared/{n}.txt")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def yolov5n(weights_dir):
    return load_detector(weights_dir / "yolov5n.pt")


def test_evaluate_detector_on_real_pairs(yolov5n, tiny_manifest):
    manifest = load_manifest(tiny_manifest)
    res = evaluate_detector(yolov5n, manifest, images="color", labels="color", condition="day",
                            progress=False)
    assert res["n_images"] == 2 and res["settings"]["condition"] == "day"
    assert set(res["classes"]) == {"person", "bicycle", "car"}
    assert 0.3 < res["AP50"] <= 1.0  # yolov5n sees people and cars in daylight color images
    assert res["AP50_95"] < res["AP50"]
    thermal = evaluate_detector(yolov5n, manifest, images="thermal", labels="thermal", progress=False)
    assert thermal["n_images"] == 4 and 0.0 <= thermal["AP50"] <= 1.0
    assert res["settings"]["class_fold"] == {"3": 1, "5": 2, "7": 2}  # truck, bus -> car; motorcycle -> bike
    strict = evaluate_detector(yolov5n, manifest, images="color", labels="color", condition="day",
                               progress=False, protocol=ScoringProtocol(fold_classes=False))
    assert strict["settings"]["class_fold"] == {}
    assert strict["classes"]["person"] == res["classes"]["person"]  # nothing folds onto person
    with pytest.raises(InvismapError, match="--images must be one of"):
        evaluate_detector(yolov5n, manifest, images="radar")
    with pytest.raises(InvismapError, match="no pair with"):
        evaluate_detector(yolov5n, manifest, split="train")


def _run(argv):
    parser = argparse.ArgumentParser()
    detector_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_eval_detector_writes_json(tiny_manifest, weights_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    _run(["eval-detector", "--data", str(tiny_manifest), "--model", str(weights_dir / "yolov5n.pt"),
          "--images", "color", "--labels", "thermal", "--condition", "night", "--json", str(out)])
    res = json.loads(out.read_text())  # strict JSON: undefined APs are null, not NaN
    assert res["settings"]["labels"] == "thermal" and res["n_images"] == 2
    printed = capsys.readouterr().out
    assert "person" in printed and "AP50" in printed and f"{100 * res['AP50']:5.1f}" in printed
    est = res["intervals"][str(weights_dir / "yolov5n.pt")]  # 95% interval over the images by default
    assert est["value"] == pytest.approx(100 * res["AP50"], abs=1e-3)
    assert est["lo"] <= est["value"] <= est["hi"]


def test_cli_eval_detector_gives_the_lead_over_a_reference(tiny_manifest, weights_dir, tmp_path, capsys):
    """The same weights by file and by name: scored on the same images, their paired lead is exactly 0."""
    out, model = tmp_path / "lead.json", str(weights_dir / "yolov5n.pt")
    _run(["eval-detector", "--data", str(tiny_manifest), "--model", model, "--reference", "yolov5n",
          "--images", "thermal", "--labels", "thermal", "--bootstrap", "50", "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["reference"]["model"] == "yolov5n" and res["reference"]["AP50"] == res["AP50"]
    assert res["reference"]["lead_AP50"] == 0.0
    assert res["intervals"][f"{model} - yolov5n"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert f"AP50 {model} - yolov5n: +0.0 [+0.0, +0.0]" in capsys.readouterr().out
    with pytest.raises(InvismapError, match="is --model itself"):
        _run(["eval-detector", "--data", str(tiny_manifest), "--model", "yolov5n", "--reference", "yolov5n",
              "--json", str(out)])


def test_cli_detect_writes_images_and_results(msrs_dir, weights_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for n in ("00001D", "00010N"):
        (src / f"{n}.png").write_bytes((msrs_dir / "ir" / f"{n}.png").read_bytes())
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    _run(["detect", "--model", str(weights_dir / "yolov5n.pt"), str(src), "--out", str(out),
          "--modality", "thermal", "--conf", "0.2"])
    assert sorted(p.name for p in out.iterdir()) == [".outputs.json", "00001D.png", "00010N.png",
                                                     "detections.json"]
    results = json.loads((out / "detections.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert all(r["score"] > 0.2 and r["bbox"][2] > 0 for r in results)
    with pytest.raises(InvismapError, match="no images"):
        _run(["detect", str(tmp_path), "--out", str(out)])  # holds only folders


def test_an_interrupted_detect_leaves_the_last_runs_outputs_whole(msrs_dir, weights_dir, tmp_path,
                                                                   monkeypatch):
    """Drawings are moved into --out only when the run ends: stopped midway, the folder keeps the last
    run's drawings and detections.json."""
    from invismap.detector import cli

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for n in ("00001D", "00010N"):
        (src / f"{n}.png").write_bytes((msrs_dir / "ir" / f"{n}.png").read_bytes())
    argv = ["detect", "--model", str(weights_dir / "yolov5n.pt"), str(src), "--out", str(out),
            "--size", "160"]
    _run([*argv, "--modality", "thermal"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    drawn = []

    def stop_at_second(*a, **k):
        drawn.append(1)
        if len(drawn) == 2:
            raise KeyboardInterrupt
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(cli, "draw_detections", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        _run([*argv, "--modality", "color"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _thermal_images(msrs_dir, names=("00024N", "00026N", "00279D")):
    from invismap.io import read_thermal

    return [read_thermal(msrs_dir / "ir" / f"{n}.png") for n in names]


def test_tta_at_the_same_size_gives_the_plain_boxes(yolov5n, msrs_dir):
    """Candidates mapped to original pixels before NMS land where the plain path puts them after NMS."""
    from invismap.detector.postprocess import detect

    # portrait and landscape crops: at 416 both are scaled and padded (pad_x, then pad_y, not 0)
    images = [im[:, :300].copy() for im in _thermal_images(msrs_dir)]
    images += [im.T.copy() for im in images]
    plain = detect(yolov5n, images, size=416, conf=0.01)
    # every candidate twice: NMS keeps one of each
    twice = detect(yolov5n, images, size=416, conf=0.01, tta_sizes=[416])
    for p, t in zip(plain, twice):
        assert len(p) > 0 and len(p) == len(t)
        np.testing.assert_allclose(t.boxes, p.boxes, atol=1e-3)
        np.testing.assert_array_equal(t.scores, p.scores)
        np.testing.assert_array_equal(t.classes, p.classes)


def test_scoring_protocol_settings_keep_the_fusion_caches_key():
    """detections.npz files made before ScoringProtocol stored exactly these values: they stay valid."""
    assert ScoringProtocol().settings() == {"size": 640, "tta_sizes": [], "iou": 0.45,
                                            "class_fold": {"3": 1, "5": 2, "7": 2}}
    strict = ScoringProtocol(np.int64(512), [416, 800], 0.4, fold_classes=False)
    assert strict.settings() == {"size": 512, "tta_sizes": [416, 800], "iou": 0.4, "class_fold": {}}
    assert strict == ScoringProtocol(512, (416, 800), 0.4, False) and hash(strict)  # lists become tuples


def test_candidates_at_a_low_conf_serve_every_nms_setting_above_it(yolov5n, msrs_dir):
    """One forward pass per size at conf 0.01, merged at another conf and IoU, gives detect()'s boxes."""
    from invismap.detector.postprocess import detect, merge_candidates, multiscale_candidates

    images = _thermal_images(msrs_dir)
    candidates = multiscale_candidates(yolov5n, images, (640, 416), conf=0.01)
    for conf, iou in ((0.01, 0.45), (0.05, 0.3)):
        merged = merge_candidates(candidates, images, conf=conf, iou=iou, classes=(0, 1, 2))
        direct = detect(yolov5n, images, size=640, conf=conf, iou=iou, classes=(0, 1, 2), tta_sizes=[416])
        for m, d in zip(merged, direct):
            assert len(d) > 0
            np.testing.assert_array_equal(m.boxes, d.boxes)
            np.testing.assert_array_equal(m.scores, d.scores)
            np.testing.assert_array_equal(m.classes, d.classes)
    assert sum(len(c) for c in multiscale_candidates(yolov5n, images, (640, 416), conf=0.05)) < \
        sum(len(c) for c in candidates)  # only objectness above conf is kept


def test_tta_keeps_each_sizes_best_boxes(yolov5n, msrs_dir):
    """A box found at one size alone is found with at least its score after merging, in original pixels."""
    from invismap.data.importers.common import box_iou
    from invismap.detector.postprocess import detect

    images = _thermal_images(msrs_dir)
    merged = detect(yolov5n, images, size=640, conf=0.05, tta_sizes=[416, 960])
    for size in (416, 640, 960):
        alone = detect(yolov5n, images, size=size, conf=0.05)
        for a, m, im in zip(alone, merged, images):
            assert (m.boxes[:, 2] <= im.shape[1]).all() and (m.boxes[:, 3] <= im.shape[0]).all()
            for box, score, cls in zip(a.boxes, a.scores, a.classes):
                same = m.classes == cls
                iou = box_iou(box[None], m.boxes[same])[0] if same.any() else np.zeros(0)
                # NMS keeps the best of overlapping candidates (IoU > 0.45 suppressed): a better one covers it
                assert (iou > 0.4).any() and m.scores[same][iou > 0.4].max() >= score - 1e-6


def test_eval_detector_with_tta_records_its_sizes(yolov5n, tiny_manifest):
    res = evaluate_detector(yolov5n, load_manifest(tiny_manifest), images="thermal", labels="thermal",
                            progress=False, protocol=ScoringProtocol(tta_sizes=[512, 800]))
    assert res["settings"]["tta_sizes"] == [512, 800] and 0.0 <= res["AP50"] <= 1.0
