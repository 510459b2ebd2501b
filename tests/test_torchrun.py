"""The real trainers under ``torchrun`` (2 CPU processes, gloo) on a few MSRS pairs, against one process.

Each run is the command a user types, ``torchrun --standalone --nproc_per_node 2 -m invismap ...``, with the
global batch of the config (4 pairs: 2 per process); the one-process reference runs the same config in this
process.

What can be equal: the data each step sees, the gradients (averaged by DDP), BatchNorm statistics
(synchronised) and the predictor's masked mean (divided by the global batch's count of valid pixels) are
those of the global batch, so two processes compute what one does up to float32 rounding:
weights within 1e-5 for both trainers, and within 1e-12 for the predictor trained in float64
(``train.precision: fp64``), where rounding is out of the way.

Adam divides every gradient by its own size, so a gradient component that is nearly zero moves its weight
by up to the learning rate in a direction small differences pick. Two such differences are real inputs, not
rounding, and had to go: the predictor's first epoch used its features unrounded and later epochs their
float16 cache (so a pair seen first by the other process got other values; 2.5e-5 apart even in float64),
and the teacher's convolutions round differently with another thread count (1.3e-5 apart in float32), so
the processes run with this process's thread count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invismap.config import load_config
from invismap.data.dataset import PairDataset
from invismap.data.manifest import Manifest, Sample, save_manifest
from invismap.distill.run import DistillConfig, run_distill
from invismap.engine.checkpoint import load_checkpoint
from invismap.invisibility.predictor import PredictorConfig, cache_targets, train_predictor

# MSRS training pairs: six by day (the distillation's), two at night (the predictor learns from both); and two
# RoadScene night pairs of other sizes, so that the processes' letterbox masks (the predictor's loss
# denominators) differ
NAMES = ("00001D", "00002D", "00055D", "00081D", "00085D", "00111D", "00003N", "00005N")
ROADSCENE = ("FLIR_03813", "FLIR_03952")
TRAIN = ("{max_steps: 4, batch_size: 4, warmup_steps: 1, eval_every: 2, ckpt_every: 1, log_every: 1, "
         "image_every: 2, device: cpu, seed: 1")


def darkness(item: dict) -> torch.Tensor:
    """A smooth target in [0, 1], ``(1, H, W)``: one minus the local mean brightness."""
    gray = item["rgb"].mean(0, keepdim=True)[None]  # (1, 1, H, W)
    return 1 - torch.nn.functional.avg_pool2d(gray, 9, 1, 4, count_include_pad=False)[0]


@pytest.fixture(scope="module")
def configs(msrs_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """A manifest of the pairs, their predictor targets, and a distillation and a predictor config."""
    root = tmp_path_factory.mktemp("torchrun")
    samples = [Sample(n, msrs_dir / "vi" / f"{n}.png", msrs_dir / "ir" / f"{n}.png",
                      "day" if n.endswith("D") else "night", "train") for n in NAMES]
    roadscene = msrs_dir.parent / "roadscene"
    samples += [Sample(n, roadscene / "crop_LR_visible" / f"{n}.jpg", roadscene / "cropinfrared" / f"{n}.jpg",
                       "night", "train") for n in ROADSCENE]
    if not all(s.color.is_file() and s.thermal.is_file() for s in samples):
        pytest.skip("MSRS sample pairs missing")
    manifest = Manifest(samples, root)
    save_manifest(manifest, root / "manifest.csv")
    cache_targets(PairDataset(manifest, size=64), darkness, root / "targets", progress=False)
    distill = root / "distill.yaml"
    distill.write_text(f"data: {root / 'manifest.csv'}\nsize: 96\nval_every_nth: 3\naugment: {{crop: null}}\n"
                       f"train: {TRAIN}, lr: 0.001}}\n")
    predictor = root / "predictor.yaml"
    predictor.write_text(f"data: {root / 'manifest.csv'}\ntargets: {root / 'targets'}\nsize: 64\n"
                         f"model: neck\nval_every_nth: 4\ntrain: {TRAIN}, lr: 0.003}}\n")
    predictor64 = root / "predictor64.yaml"
    predictor64.write_text(predictor.read_text().replace("seed: 1", "seed: 1, precision: fp64"))
    return {"distill": distill, "predictor": predictor, "predictor64": predictor64}


def torchrun(*argv: str, assets: Path) -> None:
    """``torchrun --standalone --nproc_per_node 2 -m invismap ARGV`` (must succeed)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "invismap", *argv]
    env = dict(os.environ, INVISMAP_ASSETS=str(assets), OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def losses(run: Path) -> list[float]:
    """The training loss TensorBoard holds for each step (of the global batch, under torchrun)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.value for e in events.Scalars("loss/main")]


def test_distillation_under_torchrun_matches_one_process_and_resumes(configs, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    two, part, one = tmp_path / "two", tmp_path / "part", tmp_path / "one"
    torchrun("distill", str(configs["distill"]), "--run-dir", str(two), assets=assets)
    run_distill(load_config(DistillConfig, configs["distill"]), one, progress=False)
    ours, theirs = load_checkpoint(two / "ckpt/last.pt"), load_checkpoint(one / "ckpt/last.pt")
    assert ours["step"] == theirs["step"] == 4
    for k, v in theirs["model"].items():
        assert torch.allclose(ours["model"][k], v, rtol=0, atol=1e-5), k
    assert losses(two) == pytest.approx(losses(one), rel=1e-5) and len(losses(two)) == 4
    assert ours["best"] == pytest.approx(theirs["best"], rel=1e-5)  # validation shared by the processes
    student = load_checkpoint(two / "student.pt", "student")  # rank 0 calibrated and wrote it
    assert student["thresholds"] == pytest.approx(load_checkpoint(one / "student.pt")["thresholds"], rel=1e-4)

    # stopped after step 2, then resumed: bitwise the uninterrupted two-process run
    torchrun("distill", str(configs["distill"]), "--run-dir", str(part), "--stop-at", "2", assets=assets)
    assert load_checkpoint(part / "ckpt/last.pt")["step"] == 2 and not (part / "student.pt").exists()
    torchrun("distill", str(configs["distill"]), "--run-dir", str(part), "--resume", assets=assets)
    resumed = load_checkpoint(part / "ckpt/last.pt")
    assert all(torch.equal(resumed["model"][k], v) for k, v in ours["model"].items())
    opt, ref = resumed["optimizers"]["main"]["state"], ours["optimizers"]["main"]["state"]
    assert opt.keys() == ref.keys() and all(torch.equal(opt[i][m], ref[i][m]) for i in ref for m in ref[i])
    assert losses(part) == losses(two)  # the stopped run's steps kept, the resumed run's added
    assert load_checkpoint(part / "student.pt")["thresholds"] == student["thresholds"]


def test_a_soup_under_torchrun_matches_one_process(configs, assets, tmp_path, monkeypatch):
    """Every process trains each student and validates the soup (a collective); rank 0 writes it."""
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun("distill", str(configs["distill"]), "soup=2", "--run-dir", str(two), assets=assets)
    reference = run_distill(load_config(DistillConfig, configs["distill"], ["soup=2"]), one, progress=False)
    ours, theirs = (load_checkpoint(r / "student.pt", "student")["student"] for r in (two, one))
    students = [load_checkpoint(two / f"soup/seed_{k}/student.pt", "student")["student"] for k in (2, 3)]
    for k, v in ((k, v) for k, v in theirs.items() if v.is_floating_point()):
        assert torch.allclose(ours[k], (students[0][k] + students[1][k]) / 2, rtol=0, atol=1e-7), k
        # 1e-4, not 1e-5 as above: seed 3's students differ by 2.6e-5 in one weight, where Adam normalises a
        # nearly zero gradient (see the module docstring)
        assert torch.allclose(ours[k], v, rtol=0, atol=1e-4), k
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and [s["seed"] for s in summary["students"]] == [2, 3]
    assert summary["best_val_loss"] == pytest.approx(reference.best_val_loss, rel=1e-4)


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-5), ("fp64", 1e-12)])
def test_predictor_under_torchrun_matches_one_process(precision, atol, configs, assets, tmp_path,
                                                      monkeypatch):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    config = configs["predictor" if precision == "fp32" else "predictor64"]
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun("train-predictor", str(config), "--run-dir", str(two), assets=assets)
    train_predictor(load_config(PredictorConfig, config), run_dir=one, progress=False)
    assert (two / "predictor.pt").is_file() and len(list(two.rglob("*.pt"))) == 3  # last, best, predictor
    assert losses(two) == pytest.approx(losses(one), rel=1e-5) and len(losses(two)) == 4
    ours, theirs = (load_checkpoint(run / "ckpt/last.pt")["model"] for run in (two, one))
    assert ours["body.0.1.running_var"].dtype == {"fp32": torch.float32, "fp64": torch.float64}[precision]
    assert any("running_var" in k for k in ours)  # BatchNorm in training mode, synchronised
    for k, v in theirs.items():
        assert torch.allclose(ours[k], v, rtol=0, atol=atol), (k, float((ours[k] - v).abs().max()))
    # the predictor ships in float32 whatever it trained in
    assert all(v.dtype != torch.float64 for v in load_checkpoint(two / "predictor.pt")["model"].values())
