"""Deployment exports: predictor and thermal detector to ONNX agree with PyTorch; fusion; int8; CLI errors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from invismap.cli import main
from invismap.detector.yolov5 import YOLOv5, YOLOv5Config
from invismap.detector.zoo import load_detector
from invismap.distill.student import ThermalStudent, student_checkpoint
from invismap.engine.checkpoint import save_checkpoint
from invismap.invisibility.export import OnnxPredictor, fuse_conv_bn, quantize_predictor
from invismap.invisibility.predictor import load_predictor
from invismap.invisibility.unet import InvisibilityUNet, UNetConfig
from invismap.onnx_io import onnx_metadata, ort_session

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript exporter (no onnxscript)
pytest.importorskip("onnxruntime")

TOL = 1e-4  # max abs difference between ONNX Runtime and PyTorch


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, so that conv+BN folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory) -> Path:
    """A small untrained predictor.pt (base width 4) with random BatchNorm statistics."""
    cfg = UNetConfig(base_width=4, depth=4)
    net = InvisibilityUNet(cfg).eval()
    _randomise_batchnorm(net)
    path = tmp_path_factory.mktemp("pred") / "predictor.pt"
    save_checkpoint(path, {"kind": "predictor", "unet_config": asdict(cfg), "model": net.state_dict(),
                           "input_size": 128, "normalisation": "rgb 0..1"})
    return path


@pytest.fixture(scope="module")
def thermal_detector_file(tmp_path_factory) -> Path:
    """A thermal_detector.pt with the yolov5n architecture and random weights (same graph as a real one)."""
    torch.manual_seed(0)
    teacher = YOLOv5(YOLOv5Config.variant("n")).eval()
    _randomise_batchnorm(teacher)
    student = ThermalStudent(teacher, "replicate")
    path = tmp_path_factory.mktemp("det") / "thermal_detector.pt"
    save_checkpoint(path, {"kind": "thermal_detector", **student_checkpoint(student, teacher="yolov5n")})
    return path


def test_predictor_onnx_matches_pytorch(predictor_file, tmp_path):
    out = tmp_path / "predictor.onnx"
    assert main(["export", "--model", str(predictor_file), "--out", str(out)]) == 0
    meta = onnx_metadata(out)
    assert meta["kind"] == "invismap.predictor" and meta["input_size"] == "128"
    assert meta["normalisation"] == "rgb 0..1" and meta["precision"] == "float32"
    model, _ = load_predictor(predictor_file)
    onnx_model = OnnxPredictor(out, threads=1)
    for shape in [(1, 3, 96, 128), (3, 3, 128, 96)]:  # dynamic batch, height and width
        x = torch.rand(*shape)
        with torch.no_grad():
            assert (onnx_model(x) - model(x)).abs().max() < TOL, shape


def test_thermal_detector_onnx_matches_pytorch_raw_heads(thermal_detector_file, tmp_path):
    out = tmp_path / "thermal_detector.onnx"
    assert main(["export", "--model", str(thermal_detector_file), "--out", str(out)]) == 0
    meta = onnx_metadata(out)
    assert meta["kind"] == "invismap.detector" and meta["input_size"] == "640"
    assert meta["input_channels"] == "1" and meta["normalisation"] == "thermal 0..1"
    assert json.loads(meta["strides"]) == [8, 16, 32] and len(json.loads(meta["names"])) == 80
    session = ort_session(out, threads=1)
    assert [o.name for o in session.get_outputs()] == ["head_s8", "head_s16", "head_s32", "predictions"]
    detector = load_detector(thermal_detector_file)
    for shape in [(1, 1, 96, 128), (2, 1, 128, 160)]:  # dynamic batch, height and width
        x = torch.rand(*shape)
        with torch.no_grad():
            raw = detector.heads(detector.neck_features(x))
            decoded = detector.decode(raw)
        *heads, predictions = session.run(None, {"images": x.numpy()})
        for got, want in zip(heads, raw):
            assert got.shape == tuple(want.shape)
            assert np.abs(got - want.numpy()).max() < TOL, shape
        # decoded boxes are in pixels (up to ~1e3): compare relative to their scale
        assert np.allclose(predictions, decoded.numpy(), rtol=1e-4, atol=1e-4)


def test_fused_predictor_matches_and_has_no_batchnorm(predictor_file):
    model, _ = load_predictor(predictor_file)
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() < 1e-5


def test_int8_predictor_is_quantised_and_close(predictor_file, tmp_path):
    import onnx

    fp32 = tmp_path / "fp32.onnx"
    assert main(["export", "--model", str(predictor_file), "--out", str(fp32)]) == 0
    frames = [np.random.default_rng(i).random((1, 3, 96, 128), dtype=np.float32) for i in range(4)]
    int8 = quantize_predictor(fp32, tmp_path / "int8.onnx", frames)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = onnx_metadata(int8)
    assert meta["kind"] == "invismap.predictor" and meta["precision"].startswith("int8")
    x = torch.from_numpy(frames[0])
    a = torch.sigmoid(OnnxPredictor(int8, 1)(x))
    b = torch.sigmoid(OnnxPredictor(fp32, 1)(x))
    assert (a - b).abs().max() < 0.05  # maps in [0, 1]: int8 costs a few hundredths at most here


def test_export_cli_errors(predictor_file, thermal_detector_file, tmp_path, capsys):
    cases = [
        (["--model", str(thermal_detector_file), "--out", str(tmp_path / "d.onnx"), "--int8"],
         "predictor only"),
        (["--model", str(predictor_file), "--out", str(tmp_path / "p.onnx"), "--int8"], "--calibration-data"),
        (["--model", str(predictor_file), "--out", str(tmp_path / "p.pt")], "must end in .onnx"),
        (["--model", str(thermal_detector_file), "--out", str(tmp_path / "d.onnx"), "--size", "100"],
         "multiple of"),
        (["--model", str(predictor_file), "--out", str(tmp_path / "p.onnx"), "--size", "320"],
         "--size 320 is for detectors"),
        (["--model", str(predictor_file), "--out", str(tmp_path / "p.onnx"), "--calibration-data", "ds"],
         "add --int8, or leave it out"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2, args
        assert message in capsys.readouterr().err, args


def test_dataset_to_tensor_is_bitwise_torch_division():
    """The data loader's numpy conversion (no torch thread pool per item) gives torch's exact values."""
    from invismap.data.dataset import to_tensor

    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    want_rgb = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)
    assert torch.equal(to_tensor(rgb), want_rgb) and to_tensor(rgb).is_contiguous()
    assert torch.equal(to_tensor(gray), torch.from_numpy(gray.copy())[None].float().div_(255))


def test_onnx_detector_detects_like_pytorch(assets, msrs_dir, tmp_path, capsys):
    """`invismap detect --model X.onnx` gives the PyTorch detector's boxes (real yolov5n, real MSRS
    images)."""
    from invismap.detector.export import export_detector
    from invismap.detector.onnx_detector import OnnxDetector
    from invismap.detector.postprocess import detect
    from invismap.io import read_color

    teacher = load_detector(assets / "weights" / "yolov5n.pt")
    onnx_file = export_detector(teacher, tmp_path / "yolov5n.onnx", size=320)
    images = [read_color(msrs_dir / "vi" / f"{name}.png") for name in ("00001D", "00008N")]
    ref = detect(teacher, images, size=320, conf=0.1)
    got = detect(OnnxDetector(onnx_file, threads=1), images, size=320, conf=0.1)
    assert sum(len(d) for d in ref) > 0
    for r, g in zip(ref, got):
        assert len(r) == len(g)
        np.testing.assert_array_equal(r.classes, g.classes)
        np.testing.assert_allclose(g.boxes, r.boxes, atol=0.05)
        np.testing.assert_allclose(g.scores, r.scores, atol=1e-4)
    # The same through the CLI, and the COCO results name the classes.
    out = tmp_path / "det"
    assert main(["detect", str(msrs_dir / "vi" / "00001D.png"), "--model", str(onnx_file), "--size", "320",
                 "--conf", "0.1", "--out", str(out)]) == 0
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == len(ref[0]) and (out / "00001D.png").is_file()
    assert {r["category_name"] for r in results} <= set(teacher.names)


def test_onnx_detector_refuses_a_predictor_export(predictor_file, tmp_path, capsys):
    """A predictor .onnx given as a detector is a one-line error naming the file."""
    onnx_file = tmp_path / "predictor.onnx"
    assert main(["export", "--model", str(predictor_file), "--out", str(onnx_file)]) == 0
    img = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(img), np.zeros((64, 64, 3), np.uint8))
    capsys.readouterr()
    assert main(["detect", str(img), "--model", str(onnx_file), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predictor.onnx" in err[0] and "not a detector export" in err[0]
    assert not (tmp_path / "o").exists()


def test_eval_invisibility_reads_an_onnx_predictor(predictor_file, msrs_dir, tmp_path):
    """`--maps predictor:X.onnx` gives the same maps as the .pt it was exported from."""
    from invismap.invisibility.export import export_predictor
    from invismap.invisibility.sources import map_source
    from invismap.io import read_color

    onnx_file = export_predictor(predictor_file, tmp_path / "predictor.onnx")
    rgb = read_color(msrs_dir / "vi" / "00008N.png")
    name_pt, from_pt = map_source(f"predictor:{predictor_file}")
    name_onnx, from_onnx = map_source(f"predictor:{onnx_file}")
    assert name_pt == name_onnx == "predictor"
    a, b = from_pt(None, rgb, None), from_onnx(None, rgb, None)
    assert a.shape == b.shape == rgb.shape[:2]
    np.testing.assert_allclose(b, a, atol=TOL)


def test_the_readme_python_example_runs_on_a_real_msrs_image(predictor_file, thermal_detector_file, msrs_dir,
                                                              tmp_path, monkeypatch):
    """The README's "Python API" block, executed as written, from a folder laid out as it assumes (the MSRS
    image it names, a run's predictor.pt and thermal_detector.pt; here small untrained ones)."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    for name, target in {"vi/00004N.png": msrs_dir / "vi" / "00004N.png",
                         "ir/00004N.png": msrs_dir / "ir" / "00004N.png",
                         "runs/msrs/predictor/predictor.pt": predictor_file,
                         "runs/msrs/distill/thermal_detector.pt": thermal_detector_file}.items():
        assert name in code
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).symlink_to(target)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    rgb, heat, found = scope["rgb"], scope["heat"], scope["found"]
    assert heat.shape == rgb.shape[:2] == (480, 640) and 0 <= heat.min() <= heat.max() <= 1
    assert found.boxes.shape[1:] == (4,) and isinstance(scope["unseen"], list)
