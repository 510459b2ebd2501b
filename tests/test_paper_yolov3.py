"""``configs/paper-yolov3.yaml`` end to end, with a random YOLOv3 ``.weights`` file in the official format.

The official COCO weights (248 MB) are not reachable here. The test writes a file of the same format and
size from the official ``yolov3.cfg`` with random weights, puts it where ``teacher: yolov3`` is looked up
(an assets root in front of ``$INVISMAP_ASSETS``), and runs the paper config's whole pipeline: distillation,
scoring with the paper's fixed thresholds, predictor, evaluation and report. A user with the real file runs
the same command (``invismap run configs/paper-yolov3.yaml``) at 416 and with the full step counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from invismap.cli import main
from invismap.detector.darknet import DarknetDetector, load_darknet, save_darknet_weights
from invismap.invisibility.score import PAPER_THRESHOLDS, feature_distance

REPO = Path(__file__).resolve().parents[1]
PUBLISHED_SIZE = 248_007_048  # bytes of pjreddie's yolov3.weights: a 20-byte header and 62,001,757 floats
HEADER = (0, 2, 0, 32_013_312)  # version 0.2: a 20-byte header (64-bit 'seen'), as the published size implies

# The paper config as it is, made small: data, step counts and image sizes. 96 instead of 416 (a multiple of
# YOLOv3's stride 32) keeps the 62M-parameter network at a tenth of a second a batch on one CPU thread.
# Off for speed: the second dataset (data.more), the other camera's evaluation and the fusion stage, which
# the MSRS base config turns on and which do not depend on the teacher's kind. Training settings are changed
# key by key, so the config's own (learning rate, EMA, warmup) stay; ckpt_every=2: the 660 MB training
# checkpoint is written once, at the end.
SMALL = [
    "data.max_pairs=2", "data.more=[]", "displacement.max_pairs=2", "distill.size=96", "predictor.size=96",
    "evaluate.detector_size=96", "predictor.val_every_nth=0", "evaluate.other=[]", "evaluate.bootstrap=50",
    "fusion.enabled=false", "report.gallery=1",
    *(f"{stage}.train.{key}={value}" for stage in ("distill", "predictor")
      for key, value in {"max_steps": 2, "batch_size": 2, "eval_every": 0, "ckpt_every": 2, "log_every": 1,
                         "image_every": 0}.items()),
]

CALIBRATION_PAIRS = ("00001D", "00002D", "00003N", "00004N")  # MSRS training pairs (dev_split train)


def calibration_images(msrs_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Color and thermal (gray copied to RGB, as the student reads it) ``(4, 3, 96, 96)`` in 0..1."""
    from invismap.io import read_color, read_thermal

    def tensor(images: list[np.ndarray]) -> torch.Tensor:
        small = [cv2.resize(im, (96, 96), interpolation=cv2.INTER_AREA) for im in images]
        return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 255  # (B, 3, 96, 96)

    color = tensor([read_color(msrs_dir / "vi" / f"{n}.png") for n in CALIBRATION_PAIRS])
    thermal = tensor([np.repeat(read_thermal(msrs_dir / "ir" / f"{n}.png")[..., None], 3, axis=2)
                      for n in CALIBRATION_PAIRS])
    return color, thermal


def _measure_bn(model: DarknetDetector, images: torch.Tensor) -> None:
    """Set every BN's running statistics to those of one forward pass over ``images``."""
    bns = [layer.bn for layer in model.conv_layers if layer.bn is not None]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(images)
    for bn in bns:
        bn.momentum = 0.01
    model.eval()


def random_yolov3(cfg: Path, color: torch.Tensor, thermal: torch.Tensor, seed: int = 0) -> DarknetDetector:
    """YOLOv3 with random conv weights, BN statistics measured on ``color``, taps scaled to the paper's t_k.

    PyTorch's initialisation with identity BN statistics shrinks the signal ~10^4 times by the neck (every
    distance d_k would be 0), and measured statistics alone make every d_k (over 128-512 channels) pass its
    t_k: the pair map would be 1 everywhere. Each tap is scaled so that the median d_k between the color and
    the thermal image of the same pairs (where the student starts) is 0.3 t_k; the paper's thresholds then
    cut through the distances of these pairs. (On other pairs a random network's distances still vary
    several times over, so the map stays high, but not flat.)
    """
    torch.manual_seed(seed)
    model = load_darknet(cfg)
    _measure_bn(model, color)
    with torch.no_grad():
        pairs = zip(model.neck_features(color), model.neck_features(thermal))
        for tap, (f_color, f_thermal), t in zip(model.taps, pairs, PAPER_THRESHOLDS[::-1]):  # 103, 91, 79
            scale = 0.3 * t / feature_distance(f_color, f_thermal).median()
            bn = model.layers[tap].bn  # leaky ReLU is positively homogeneous: the output scales with these
            bn.weight.mul_(scale)
            bn.bias.mul_(scale)
    _measure_bn(model, color)  # the heads' BN, on the scaled taps
    model.header = HEADER
    return model


def float_digest(model: torch.nn.Module) -> tuple[int, str]:
    """Number and sha256 of the floating-point tensors of ``model`` (what a ``.weights`` file holds)."""
    h, n = hashlib.sha256(), 0
    for key, t in model.state_dict().items():
        if t.is_floating_point():
            h.update(key.encode() + t.numpy().tobytes())
            n += 1
    return n, h.hexdigest()


@pytest.fixture(scope="module")
def yolov3_assets(tmp_path_factory, weights_dir: Path, msrs_dir: Path):
    """An assets root holding the official ``yolov3.cfg`` and a random ``yolov3.weights`` beside it; yields
    the root and :func:`float_digest` of the model written."""
    root = tmp_path_factory.mktemp("assets")
    (root / "weights").mkdir()
    for name in ("yolov3.cfg", "coco.names"):
        shutil.copy(weights_dir / name, root / "weights" / name)
    weights = root / "weights" / "yolov3.weights"
    model = random_yolov3(root / "weights" / "yolov3.cfg", *calibration_images(msrs_dir))
    save_darknet_weights(model, weights)
    yield root, float_digest(model)
    weights.unlink()  # 248 MB; pytest keeps the last three temporary folders


@pytest.fixture
def yolov3_first(yolov3_assets, assets: Path, monkeypatch) -> None:
    """``teacher: yolov3`` resolves to the random file; the datasets still come from the real assets."""
    monkeypatch.setenv("INVISMAP_ASSETS", os.pathsep.join((str(yolov3_assets[0]), str(assets))))


def test_random_weights_file_is_the_published_format(yolov3_assets, yolov3_first):
    from invismap.detector.zoo import load_detector

    root, written = yolov3_assets
    weights = root / "weights" / "yolov3.weights"
    assert weights.stat().st_size == PUBLISHED_SIZE
    model = load_detector("yolov3")  # the lookup the pipeline does
    assert isinstance(model, DarknetDetector) and Path(model.cfg_path).parent == weights.parent
    assert model.header == HEADER and model.taps == (103, 91, 79) and len(model.names) == 80
    assert float_digest(model) == written and written[0] == 366  # 72 convs with BN (5 tensors), 3 without (2)
    with torch.no_grad():
        feats = model.neck_features(torch.rand(1, 3, 96, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(128, 12, 12), (256, 6, 6), (512, 3, 3)]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.fixture
def out(tmp_path: Path):
    yield tmp_path / "out"
    for f in tmp_path.rglob("*.pt"):  # ~1.2 GB of student, detector and training checkpoint
        f.unlink()


def test_paper_yolov3_config_runs_end_to_end(out: Path, msrs_dir: Path, yolov3_first, capsys):
    start = time.perf_counter()
    code = main(["run", str(REPO / "configs" / "paper-yolov3.yaml"), f"data.src={msrs_dir}", f"out={out}",
                 *SMALL])
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    with capsys.disabled():
        print(f"\npaper-yolov3 pipeline at 96 px: {seconds:.0f} s")

    distill = json.loads((out / "distill" / "stage.json").read_text())["summary"]
    assert distill["steps"] == 2
    assert distill["thresholds"] == [3.2, 3.5, 4.0] and distill["offsets"] is None  # the paper's, b_k = 0
    assert torch.load(out / "distill" / "student.pt", weights_only=True)["teacher"] == "yolov3"
    detector = json.loads((out / "eval_detector" / "detector.json").read_text())
    assert detector["size"] == 96
    assert [r["variant"] for r in detector["rows"]] == ["teacher on color", "teacher on thermal",
                                                        "thermal detector (head)"]
    maps = json.loads((out / "eval_maps" / "invisibility.json").read_text())
    assert {"predictor", "pair", "prior"} <= set(maps)
    spread = {k: c["scores"]["std"] for k, c in maps["pair"]["conditions"].items()}
    assert set(spread) == {"day", "night"} and min(spread.values()) > 0.02, spread  # t_k do not clamp it flat
    layers = json.loads((out / "eval_maps" / "layers.json").read_text())["rows"]
    assert [r["strides"] for r in layers] == [[8], [16], [32], [8, 16, 32]]  # layers 103, 91, 79, all
    page = (out / "report" / "index.html").read_text()
    assert "not produced by this run" not in page and "yolov3" in page
