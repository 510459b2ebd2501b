"""The color-only invisibility predictor: U-Net shapes and export, training, checkpoints, prediction
outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from invismap.data.dataset import PairDataset
from invismap.data.manifest import Manifest, Sample
from invismap.detector.base import Detections
from invismap.engine.checkpoint import save_checkpoint
from invismap.engine.loop import TrainConfig, evaluate, fit
from invismap.errors import InvismapError
from invismap.invisibility.predict import add_parser, predict_image, predict_images, predict_source
from invismap.invisibility.predictor import (
    PredictorConfig,
    PredictorTask,
    TargetMapDataset,
    cache_targets,
    load_predictor,
    masked_loss,
    train_predictor,
)
from invismap.invisibility.unet import InvisibilityUNet, UNetConfig, count_macs
from invismap.io import read_color

NAMES = ("00001D", "00003N", "00002D", "00004N", "00005N", "00055D", "00006N", "00007N")


@pytest.fixture(autouse=True)
def _one_thread(_deterministic_torch):
    """Small tensors: one thread is as fast as two and does not stall when other jobs load the CPU."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def pairs(msrs_dir: Path) -> Manifest:
    """A few real MSRS pairs (day and night), without importing the whole dataset."""
    samples = []
    for name in NAMES:
        if not (msrs_dir / "vi" / f"{name}.png").is_file():
            continue
        cond = "day" if name.endswith("D") else "night"
        samples.append(Sample(name, msrs_dir / "vi" / f"{name}.png", msrs_dir / "ir" / f"{name}.png", cond,
                              "train"))
    if len(samples) < 6:
        pytest.skip("MSRS sample pairs missing")
    return Manifest(samples, msrs_dir)


def darkness(item: dict) -> torch.Tensor:
    """Synthetic target: 1 - local mean brightness (smooth, like F), ``(1, H, W)``."""
    gray = item["rgb"].mean(0, keepdim=True)[None]  # (1, 1, H, W)
    return 1 - torch.nn.functional.avg_pool2d(gray, 9, 1, 4, count_include_pad=False)[0]


# --------------------------------------------------------------------------------------------- U-Net

@pytest.mark.parametrize("hw", [(480, 640), (256, 320), (250, 333)])
def test_unet_output_matches_input_size_and_is_a_probability(hw):
    net = InvisibilityUNet(UNetConfig()).eval()
    x = torch.rand(2, 3, *hw)
    logits = net(x)
    assert logits.shape == (2, 1, *hw)
    heat = net.predict(x)
    assert heat.shape == (2, 1, *hw) and heat.min() >= 0 and heat.max() <= 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: no onnxscript here
def test_unet_is_small_and_exports_to_onnx(tmp_path):
    net = InvisibilityUNet(UNetConfig()).eval()
    assert sum(p.numel() for p in net.parameters()) < 600_000
    assert count_macs(net) < 0.25e9  # yolov5n: 1.7 GMAC at 640x480
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "unet.onnx"
    torch.onnx.export(net, (torch.rand(1, 3, 256, 320),), str(path), input_names=["rgb"],
                      output_names=["logits"], dynamic_axes={"rgb": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(256, 320), (480, 640)]:  # a traced size and another one: shapes follow the input
        x = torch.rand(1, 3, *hw)
        (out,) = sess.run(None, {"rgb": x.numpy()})
        assert out.shape == (1, 1, *hw)
        assert np.allclose(out, net(x).detach().numpy(), atol=1e-4)


# --------------------------------------------------------------------------------------------- data + task

def test_target_dataset_flips_image_target_and_mask_together(pairs, tmp_path):
    base = PairDataset(Manifest(pairs.samples[:2], pairs.root), size=160)
    plain = TargetMapDataset(base, target_fn=darkness)
    flipped = TargetMapDataset(base, target_fn=darkness, hflip=1.0)
    a, b = plain[0], flipped[0]
    assert a["rgb"].shape == (3, 128, 160) and a["target"].shape == a["valid"].shape == (1, 128, 160)
    assert torch.equal(b["rgb"], a["rgb"].flip(-1)) and torch.equal(b["target"], a["target"].flip(-1))
    assert torch.equal(b["valid"], a["valid"].flip(-1))
    assert a["valid"][0, :4].sum() == 0 and a["valid"][0, 64].all()  # 160x120 content padded to 160x128
    cache_targets(base, darkness, tmp_path / "t", progress=False)
    cached = TargetMapDataset(base, target_dir=tmp_path / "t")
    assert torch.allclose(cached[1]["target"], plain[1]["target"], atol=1e-3)  # float16 on disk
    # a map at the original image size is letterboxed onto the canvas
    np.save(tmp_path / "t" / f"{pairs[0].name}.npy", np.full((480, 640), 0.5, np.float16))
    t = TargetMapDataset(base, target_dir=tmp_path / "t")[0]["target"]
    assert t[0, 64, 80] == 0.5
    np.save(tmp_path / "t" / f"{pairs[0].name}.npy", np.zeros((10, 10), np.float16))
    with pytest.raises(InvismapError, match="expected the canvas 160x128"):
        TargetMapDataset(base, target_dir=tmp_path / "t")[0]
    (tmp_path / "t" / f"{pairs[1].name}.npy").unlink()
    with pytest.raises(InvismapError, match=f"no cached target for 1 of 2 pairs \\(e.g. {pairs[1].name}\\)"):
        TargetMapDataset(base, target_dir=tmp_path / "t")


def test_masked_loss_ignores_padding():
    logits = torch.zeros(1, 1, 4, 4)
    target = torch.full((1, 1, 4, 4), 0.5)
    valid = torch.ones(1, 1, 4, 4)
    valid[..., :2] = 0
    target[..., :2] = 1.0  # wrong only on the padding
    assert masked_loss(logits, target, valid, "mse") == 0
    assert masked_loss(logits, target, None, "mse") > 0


def test_training_on_darkness_reduces_the_loss(pairs, tmp_path):
    data = TargetMapDataset(PairDataset(pairs, size=160, cache=True), target_fn=darkness, hflip=0.5)
    val = TargetMapDataset(PairDataset(pairs, size=160, cache=True), target_fn=darkness)
    cfg = TrainConfig(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=5, eval_every=0, ckpt_every=100,
                      image_every=30)
    task = PredictorTask(UNetConfig(), "bce", 160)
    before = evaluate(task, val, cfg, torch.device("cpu"))
    fit(task, data, cfg, tmp_path, progress=False)
    after = evaluate(task, val, cfg, torch.device("cpu"))
    assert after["mae"] < 0.6 * before["mae"], (before, after)
    assert after["loss"] < before["loss"]
    assert any((tmp_path / "tb").iterdir())


# --------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def predictor_file(pairs, tmp_path_factory) -> Path:
    """A (barely) trained predictor.pt from train_predictor on cached targets."""
    root = tmp_path_factory.mktemp("pred")
    cache_targets(PairDataset(pairs, size=128), darkness, root / "targets", progress=False)
    cfg = PredictorConfig(size=128, val_every_nth=4,
                          train=TrainConfig(max_steps=4, batch_size=2, warmup_steps=1, eval_every=2))
    return train_predictor(cfg, pairs, root / "targets", root / "run", progress=False).outputs["predictor"]


def test_train_predictor_writes_a_loadable_checkpoint(predictor_file):
    model, meta = load_predictor(predictor_file)
    assert meta["kind"] == "predictor" and meta["input_size"] == 128 and meta["normalisation"] == "rgb 0..1"
    assert meta["unet_config"] == UNetConfig() and not model.training
    run = predictor_file.parent
    assert (run / "config.yaml").is_file() and (run / "ckpt" / "last.pt").is_file()
    again, _ = load_predictor(run / "ckpt" / "last.pt")  # the engine's checkpoints load too
    assert set(again.state_dict()) == set(model.state_dict())


def test_load_predictor_refuses_other_kinds_and_architectures(predictor_file, tmp_path):
    save_checkpoint(tmp_path / "s.pt", {"kind": "student", "model": {}})
    with pytest.raises(InvismapError, match="is a 'student' checkpoint, expected predictor"):
        load_predictor(tmp_path / "s.pt")
    state = torch.load(predictor_file, weights_only=True)
    state["unet_config"]["base_width"] = 16
    save_checkpoint(tmp_path / "w.pt", state)
    with pytest.raises(InvismapError, match="another architecture: shape mismatch"):
        load_predictor(tmp_path / "w.pt")
    state["unet_config"] = {"base_width": 8, "nonsense": 1}
    save_checkpoint(tmp_path / "u.pt", state)
    with pytest.raises(InvismapError, match="unusable U-Net config"):
        load_predictor(tmp_path / "u.pt")


def test_interrupted_run_resumes_to_the_same_weights(pairs, predictor_file, tmp_path):
    targets = predictor_file.parent.parent / "targets"
    cfg = PredictorConfig(size=128, val_every_nth=4,
                          train=TrainConfig(max_steps=4, batch_size=2, warmup_steps=1, eval_every=2))
    part = train_predictor(cfg, pairs, targets, tmp_path / "run", progress=False, stop_at=2)
    assert not part.finished and not part.outputs and (tmp_path / "run" / "ckpt" / "last.pt").is_file()
    assert not (tmp_path / "run" / "predictor.pt").exists()
    out = train_predictor(cfg, pairs, targets, tmp_path / "run", resume=True, progress=False).outputs
    full = train_predictor(cfg, pairs, targets, tmp_path / "full", progress=False).outputs["predictor"]
    out = out["predictor"]
    a, _ = load_predictor(out)
    b, _ = load_predictor(full)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_existing_run_is_not_overwritten(predictor_file, pairs):
    cfg = PredictorConfig(size=128, train=TrainConfig(max_steps=1, batch_size=2))
    with pytest.raises(InvismapError, match="a run already exists"):
        train_predictor(cfg, pairs, predictor_file.parent.parent / "targets", predictor_file.parent,
                        progress=False)


# --------------------------------------------------------------------------------------------- prediction

def test_predict_image_returns_a_map_at_the_original_size(predictor_file, pairs):
    model, meta = load_predictor(predictor_file)
    rgb = read_color(pairs[0].color)
    heat = predict_image(model, rgb, meta["input_size"])
    assert heat.shape == (480, 640) and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1
    small = cv2.resize(rgb, (333, 250))
    batch = predict_images(model, [rgb, small, rgb], 128, batch_size=2)
    assert [b.shape for b in batch] == [(480, 640), (250, 333), (480, 640)]
    assert np.allclose(batch[0], heat, atol=1e-5) and np.allclose(batch[2], heat, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        predict_image(model, rgb.astype(np.float32), 128)


def test_predict_source_folder_writes_maps_and_overlays(predictor_file, pairs, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for s in pairs.samples[:2]:
        (src / s.color.name).write_bytes(s.color.read_bytes())
    (src / "notes.txt").write_text("not an image")
    model, _ = load_predictor(predictor_file)
    seen = []

    def fake_boxes(images):
        seen.append(len(images))
        return [Detections(np.array([[10, 20, 200, 300]], np.float32), np.array([0.9], np.float32),
                           np.array([0])) for _ in images]

    records = predict_source(model, src, tmp_path / "out", boxes=fake_boxes, batch_size=8, size=128,
                             progress=False)
    assert len(records) == 2 and seen == [2]
    for s in pairs.samples[:2]:
        png = cv2.imread(str(tmp_path / "out" / f"{s.name}_map.png"), cv2.IMREAD_UNCHANGED)
        npy = np.load(tmp_path / "out" / f"{s.name}_map.npy")
        over = read_color(tmp_path / "out" / f"{s.name}_overlay.png")
        assert png.dtype == np.uint16 and png.shape == (480, 640)
        assert npy.dtype == np.float32 and npy.shape == (480, 640)
        assert np.abs(png / 65535 - npy).max() < 1e-4
        assert over.shape == (480, 640, 3)
        assert tuple(over[100, 10]) == (0, 255, 0)  # the box's left edge is drawn
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index[0]["detections"] == 1 and 0 <= index[0]["mean"] <= 1
    assert [p.name for p in (tmp_path / "out").glob(".*")] == [".outputs.json"]  # no temp files left


def test_an_interrupted_predict_leaves_the_last_runs_maps_whole(predictor_file, pairs, tmp_path):
    """Maps are moved into --out only when the run ends: stopped midway, the folder keeps the last run's
    maps and the index.json that describes them, not a mix of two runs."""
    src = tmp_path / "imgs"
    src.mkdir()
    for s in pairs.samples[:2]:
        (src / s.color.name).write_bytes(s.color.read_bytes())
    model, _ = load_predictor(predictor_file)
    out = tmp_path / "out"
    predict_source(model, src, out, batch_size=1, size=128, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def stop_at_second(images):
        if calls.append(1) or len(calls) == 2:
            raise KeyboardInterrupt
        return [Detections(np.array([[10, 20, 200, 300]], np.float32), np.array([0.9], np.float32),
                           np.array([0])) for _ in images]

    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        predict_source(model, src, out, boxes=stop_at_second, batch_size=1, size=128, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a finished run replaces the last one's files (no maps of images it did not read are left beside its
    # index) and nothing else: a file the user keeps there stays
    (out / "notes.txt").write_text("mine")
    first = min(src.iterdir())
    predict_source(model, first, out, size=128, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".outputs.json", "index.json", "notes.txt"] + [f"{first.stem}_{k}" for k in ("map.png", "map.npy",
                                                                                      "overlay.png")])


def test_predict_source_video_writes_an_annotated_mp4(predictor_file, pairs, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160, 120))
    for s in pairs.samples[:5]:
        writer.write(cv2.resize(cv2.imread(str(s.color)), (160, 120)))
    writer.release()
    model, _ = load_predictor(predictor_file)
    (rec,) = predict_source(model, video, tmp_path / "out", batch_size=2, size=128, progress=False)
    assert rec["frames"] == 5 and len(rec["mean_per_frame"]) == 5
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 5 and frames[0].shape == (120, 160, 3)
    assert [p.name for p in (tmp_path / "out").glob(".*")] == [".outputs.json"]  # no temp files left


def test_predict_source_errors(predictor_file, tmp_path):
    model, _ = load_predictor(predictor_file)
    with pytest.raises(InvismapError, match="source not found"):
        predict_source(model, tmp_path / "nope.png", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvismapError, match="folder holds no images"):
        predict_source(model, tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InvismapError, match="none of the 1 images could be read"):
        predict_source(model, tmp_path / "bad.png", tmp_path / "out", progress=False)


def test_cli_predict(predictor_file, pairs, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["predict", "--model", str(predictor_file), str(pairs[0].color),
                              "--out", str(tmp_path / "o"), "--device", "cpu"])
    args.func(args)
    assert (tmp_path / "o" / f"{pairs[0].name}_overlay.png").is_file()
    assert "wrote maps for 1 input" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter: no onnxscript here
def test_onnx_export_matches_pytorch_and_predicts(predictor_file, pairs, tmp_path, capsys):
    from invismap.cli import main
    from invismap.invisibility.export import load_onnx_predictor
    from invismap.io import read_color

    onnx_path = tmp_path / "predictor.onnx"
    assert main(["export", "--model", str(predictor_file), "--out", str(onnx_path)]) == 0
    ort_model, meta = load_onnx_predictor(onnx_path)
    assert meta["input_size"] == 128 and meta["normalisation"] == "rgb 0..1"
    model, _ = load_predictor(predictor_file)
    for shape in [(1, 3, 96, 128), (3, 3, 128, 96)]:  # dynamic batch, height and width
        x = torch.rand(*shape)
        with torch.no_grad():
            assert (ort_model(x) - model(x)).abs().max() < 1e-4
    rgb = read_color(pairs[0].color)
    assert np.abs(predict_image(ort_model, rgb, 128) - predict_image(model, rgb, 128)).max() < 1e-4
    img = tmp_path / "in.png"
    cv2.imwrite(str(img), rgb[:, :, ::-1])
    assert main(["predict", "--model", str(onnx_path), str(img), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "in_map.png").is_file()
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["predict", "--model", str(tmp_path / "bad.onnx"), str(img),
                 "--out", str(tmp_path / "o2")]) == 2
    assert "bad.onnx: not a readable ONNX model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- neck head

def test_neck_head_predictor_trains_loads_predicts_and_exports(pairs, weights_dir, tmp_path):
    """Model 'neck': a head on the frozen teacher's neck features, trained with object weights from the
    target folder's evidence.json; it loads as teacher + head, predicts maps and exports to ONNX."""
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.export import export_predictor, load_onnx_predictor
    from invismap.invisibility.neck_head import NeckHeadConfig, TeacherNeckPredictor
    from invismap.invisibility.predictor import PredictorConfig, train_predictor
    from invismap.io import write_json

    teacher = str(weights_dir / "yolov5n.pt")
    cache_targets(PairDataset(pairs, size=160), darkness, tmp_path / "targets", progress=False)
    write_json(tmp_path / "targets" / "evidence.json",  # one box per pair, as the detector targets write it
               {s.name: {"boxes": [[100.0, 100.0, 200.0, 300.0]], "missed": [True]} for s in pairs})
    cfg = PredictorConfig(size=160, val_every_nth=0, model="neck", teacher=teacher, object_weight=3.0,
                          neck=NeckHeadConfig(width=8, context=True),
                          train=TrainConfig(max_steps=3, batch_size=2, warmup_steps=1, eval_every=0))
    summary = train_predictor(cfg, pairs, tmp_path / "targets", tmp_path / "run", progress=False)
    path = summary.outputs["predictor"]
    model, meta = load_predictor(path)
    assert isinstance(model, TeacherNeckPredictor) and meta["architecture"] == "neck"
    assert meta["in_channels"] == [64, 128, 256]
    assert meta["neck_config"] == NeckHeadConfig(width=8, context=True)
    state = torch.load(path, weights_only=True)
    # the head only, not the teacher
    assert all(k.startswith(("lateral", "context", "body")) for k in state["model"])
    # the teacher inside is frozen and stays in eval mode
    model.train()
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())
    rgb = read_color(pairs.samples[0].color)
    heat = predict_image(model.eval(), rgb, 160)
    assert heat.shape == rgb.shape[:2] and 0 <= heat.min() <= heat.max() <= 1
    # the same map from the features the head was trained on and from the image
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        direct = model(x)
        feats = load_detector(teacher).neck_features(x)
        via_head = torch.nn.functional.interpolate(model.head(feats), size=(96, 128), mode="bilinear",
                                                   align_corners=False)
    torch.testing.assert_close(direct, via_head)
    onnx_model, onnx_meta = load_onnx_predictor(export_predictor(path, tmp_path / "neck.onnx"))
    assert onnx_meta["architecture"] == "neck"
    np.testing.assert_allclose(predict_image(onnx_model, rgb, 160), heat, atol=1e-4)


@pytest.mark.parametrize("context", [False, True])
def test_neck_head_context_sees_the_whole_frame(context):
    """Without ``context`` a map position sees only its neighbourhood (two 3x3 convs at stride 8); with it, a
    change far away (here: the frame's other corner) moves every position, as a change of light should."""
    from invismap.invisibility.neck_head import NeckHead, NeckHeadConfig

    torch.manual_seed(0)
    head = NeckHead([4, 8], NeckHeadConfig(width=4, context=context)).eval()
    feats = [torch.rand(1, 4, 16, 16), torch.rand(1, 8, 8, 8)]
    changed = [f.clone() for f in feats]
    changed[0][..., 12:, 12:] += 5.0  # bottom-right corner only
    with torch.no_grad():
        moved = (head(changed) - head(feats))[0, 0, :4, :4].abs().max().item()  # top-left corner
    assert (moved > 1e-4) == context


def test_targets_can_find_thermal_objects_multi_scale_color_runs_as_deployed(pairs, weights_dir, monkeypatch):
    import invismap.detector.postprocess as postprocess
    from invismap.detector.zoo import load_detector
    from invismap.invisibility.targets import TargetConfig, pair_evidence

    teacher = load_detector(str(weights_dir / "yolov5n.pt"))
    calls, detect = [], postprocess.detect

    def recording_detect(model, images, **kw):
        calls.append(tuple(kw.get("tta_sizes", ())))
        return detect(model, images, **kw)

    monkeypatch.setattr(postprocess, "detect", recording_detect)
    few = Manifest(pairs.samples[:2], pairs.root)
    one = pair_evidence(few, teacher, teacher, TargetConfig(kind="pair+detectors"), 160, progress=False)
    many = pair_evidence(few, teacher, teacher, TargetConfig(kind="pair+detectors", thermal_tta_sizes=[224]),
                         160, progress=False)
    assert calls == [(), ()] * 2 + [(), (224,)] * 2  # per pair: color at one size, then thermal
    # every box the base size finds survives the merge with at least its score (none drops below thermal_conf)
    assert set(one) == set(many) and all(len(many[n]["boxes"]) >= len(one[n]["boxes"]) for n in one)


def test_object_weight_needs_detector_targets(pairs, tmp_path):
    cache_targets(PairDataset(pairs, size=128), darkness, tmp_path / "t", progress=False)
    with pytest.raises(InvismapError, match="object_weight needs targets of kind 'pair\\+detectors'"):
        TargetMapDataset(PairDataset(pairs, size=128), target_dir=tmp_path / "t", object_weight=2.0)
    with pytest.raises(InvismapError, match="config key 'model'"):
        train_predictor(PredictorConfig(size=128, model="transformer"), pairs, tmp_path / "t", tmp_path / "r")


# --------------------------------------------------------------------------------------------- Python API

def test_python_api_maps_and_boxes_from_numpy(predictor_file, pairs, weights_dir, tmp_path):
    """The README's example: a predictor (.pt or its .onnx) maps an RGB array of any size to a [0, 1] map of
    the same size; a detector (name or file) gives boxes for a color or a thermal array."""
    from invismap.api import InvisibilityPredictor, detect, load_detector
    from invismap.invisibility.export import export_predictor
    from invismap.io import read_thermal

    rgb = read_color(pairs.samples[0].color)
    predictor = InvisibilityPredictor(predictor_file)
    heat = predictor(rgb)
    assert heat.shape == rgb.shape[:2] and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1
    np.testing.assert_array_equal(heat, predict_image(predictor.model, rgb, 128))  # the CLI's function
    crop = rgb[:101, :157]
    assert predictor(crop).shape == (101, 157)
    onnx = InvisibilityPredictor(export_predictor(predictor_file, tmp_path / "p.onnx"))
    np.testing.assert_allclose(onnx(rgb), heat, atol=1e-4)
    color = load_detector(weights_dir / "yolov5n.pt")
    found = detect(color, rgb, size=320)
    assert isinstance(found, Detections) and found.boxes.shape[1:] == (4,)
    thermal = read_thermal(pairs.samples[0].thermal)
    assert len(detect(color, [rgb, thermal], size=320)[0]) == len(found)


def test_predictor_trained_with_ema_ships_the_moving_average(pairs, tmp_path):
    """``train.ema``: predictor.pt holds the weights' moving average (not the last or best step's)."""
    cache_targets(PairDataset(pairs, size=128), darkness, tmp_path / "t", progress=False)
    train = TrainConfig(max_steps=4, batch_size=2, warmup_steps=1, eval_every=2, ema=0.5)
    cfg = PredictorConfig(size=128, val_every_nth=4, train=train)
    summary = train_predictor(cfg, pairs, tmp_path / "t", tmp_path / "run", progress=False)
    assert summary.finished and summary.details["weights_from"] == "ema"
    path = summary.outputs["predictor"]
    shipped = torch.load(path, weights_only=True)
    last = torch.load(tmp_path / "run" / "ckpt" / "last.pt", weights_only=True)
    assert shipped["weights_from"] == "ema"
    assert all(torch.equal(v, last["ema"][f"module.{k}"]) for k, v in shipped["model"].items())
    assert any(not torch.equal(v, last["model"][k]) for k, v in shipped["model"].items())
