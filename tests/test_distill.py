"""Distillation: student construction, losses, a short real run, resume, the thermal detector."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

from invismap.config import from_dict
from invismap.detector.zoo import load_detector
from invismap.distill.losses import distill_loss, focused_head_mse, union_of_teachers
from invismap.distill.run import DistillConfig, run_distill
from invismap.distill.student import ThermalDetector, ThermalStudent
from invismap.distill.task import DistillTask
from invismap.engine.checkpoint import load_checkpoint
from invismap.errors import InvismapError


@pytest.fixture(scope="module")
def teacher(assets, monkeypatch_module):
    monkeypatch_module.setenv("INVISMAP_ASSETS", str(assets))
    return load_detector("yolov5n")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_student_starts_as_the_teacher(teacher):
    x = torch.rand(1, 1, 128, 160)
    for mode in ("replicate", "conv1"):
        student = ThermalStudent(teacher, mode).eval()
        with torch.no_grad():
            s = student(x)
            t = teacher.neck_features(x.expand(-1, 3, -1, -1))
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(s, t)), mode
    assert any(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the copy left the teacher frozen
    random = ThermalStudent(teacher, init="random")
    assert not torch.allclose(random.detector.model[0].conv.weight, teacher.model[0].conv.weight)


def test_losses_are_zero_for_equal_features_and_weighted(teacher):
    feats = [torch.randn(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
    other = [f + 0.1 for f in feats]
    assert float(distill_loss("mid", feats, feats, teacher.heads)["total"]) == 0
    mid = distill_loss("mid", other, feats, teacher.heads)
    head = distill_loss("head", other, feats, teacher.heads)
    both = distill_loss("mid+head", other, feats, teacher.heads, head_weight=0.05)
    assert torch.isclose(both["total"], mid["total"] + 0.05 * head["total"])
    assert torch.isclose(mid["total"], torch.tensor(0.01), atol=1e-6)
    # head_focus weighs the anchors by the teacher's objectness; 0 is the plain head MSE
    focused = distill_loss("head", other, feats, teacher.heads, head_focus=100.0)["total"]
    with torch.no_grad():
        expected = focused_head_mse(teacher.heads(other), teacher.heads(feats), 85, 100.0)
    assert torch.isclose(focused, expected) and not torch.isclose(focused, head["total"])
    assert torch.isclose(focused_head_mse(teacher.heads(other), teacher.heads(feats), 85, 0.0), head["total"])


def test_union_of_teachers_takes_the_more_confident_anchor():
    no = 7  # 5 + 2 classes, 3 anchors
    torch.manual_seed(0)
    color, thermal = torch.randn(2, 3 * no, 4, 5), torch.randn(2, 3 * no, 4, 5)
    out = union_of_teachers([color], [thermal], no)[0].view(2, 3, no, 4, 5)
    c, t = color.view(2, 3, no, 4, 5), thermal.view(2, 3, no, 4, 5)
    wins = t[:, :, 4] > c[:, :, 4]  # (B, A, H, W)
    assert 0 < int(wins.sum()) < wins.numel()
    assert torch.equal(out.permute(0, 1, 3, 4, 2)[wins], t.permute(0, 1, 3, 4, 2)[wins])
    assert torch.equal(out.permute(0, 1, 3, 4, 2)[~wins], c.permute(0, 1, 3, 4, 2)[~wins])
    with pytest.raises(ValueError, match="do not match"):
        union_of_teachers([color], [thermal[:, :no]], no)


def _cfg(data, **kw) -> DistillConfig:
    base = {"data": str(data), "size": 160, "max_pairs": 6, "cache": True, "val_every_nth": 30,
            "augment": {"crop": [96, 128]},
            "train": {"max_steps": 6, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "eval_every": 3,
                      "ckpt_every": 2, "log_every": 2, "image_every": 3}}
    base.update(kw)
    return from_dict(DistillConfig, base)


def test_distill_run_resume_and_thermal_detector(msrs, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    cfg = _cfg(msrs.root / "manifest.csv", loss="mid+head")
    full = run_distill(cfg, tmp_path / "full", progress=False)
    assert full.details["train_pairs"] == 6 and len(full.details["thresholds"]) == 3
    assert set(full.outputs) == {"student", "thermal_detector"}
    assert all(p.is_file() for p in full.outputs.values())
    saved = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert saved["finished"] and saved["thresholds"] == full.details["thresholds"]
    run_distill(cfg, tmp_path / "part", progress=False, stop_at=4)
    run_distill(cfg, tmp_path / "part", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "full/student.pt", "student")["student"]
    b = load_checkpoint(tmp_path / "part/student.pt", "student")["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    detector = load_detector(str(tmp_path / "full/thermal_detector.pt"))
    assert isinstance(detector, ThermalDetector)
    out = detector(torch.rand(1, 1, 96, 128))
    assert out.shape[-1] == 85 and torch.isfinite(out).all()


def test_a_run_resumes_only_with_its_own_settings(msrs, assets, tmp_path, monkeypatch):
    """--resume with a changed learning setting is refused and the run's config.yaml kept; how it runs
    (logging, checkpoints, device) may change."""
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    cfg = _cfg(msrs.root / "manifest.csv")
    run_distill(cfg, tmp_path / "r", progress=False, stop_at=2)
    saved = (tmp_path / "r" / "config.yaml").read_text()
    with pytest.raises(InvismapError, match=r"resuming with 'size' changed \(160 -> 192\)"):
        run_distill(replace(cfg, size=192), tmp_path / "r", progress=False, resume=True)
    assert (tmp_path / "r" / "config.yaml").read_text() == saved
    # the same dataset named by its folder instead of its manifest.csv is no change
    cfg = replace(cfg, data=str(msrs.root))
    done = run_distill(replace(cfg, train=replace(cfg.train, log_every=1)), tmp_path / "r", progress=False,
                       resume=True)
    assert done.finished


def test_soup_averages_its_students_and_resumes(msrs, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    cfg = _cfg(msrs.root / "manifest.csv", soup=2, loss="head",
               train={"max_steps": 4, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1, "eval_every": 2,
                      "ckpt_every": 2, "seed": 1})
    part = run_distill(cfg, tmp_path / "soup", progress=False, stop_at=2)  # stops inside the first student
    assert not part.finished and not (tmp_path / "soup/student.pt").exists()
    with pytest.raises(InvismapError, match="a run already exists"):
        run_distill(cfg, tmp_path / "soup", progress=False)
    soup = run_distill(cfg, tmp_path / "soup", progress=False, resume=True)
    assert soup.finished and [s["seed"] for s in soup.details["students"]] == [2, 3]
    assert math.isfinite(soup.best_val_loss) and len(soup.details["thresholds"]) == 3
    students = [load_checkpoint(tmp_path / f"soup/soup/seed_{k}/student.pt", "student")["student"]
                for k in (2, 3)]
    mean = load_checkpoint(tmp_path / "soup/student.pt", "student")["student"]
    changed = [k for k in mean if mean[k].is_floating_point() and not torch.equal(*(s[k] for s in students))]
    assert changed  # the two seeds trained apart, and the soup is their mean
    assert all(torch.allclose(mean[k], (students[0][k] + students[1][k]) / 2, atol=1e-6) for k in changed)
    # each student is the run one seed alone gives (the second seed of the soup of seed 1 is seed 3)
    alone = run_distill(replace(cfg, soup=1, train=replace(cfg.train, seed=3)), tmp_path / "alone",
                        progress=False)
    assert all(torch.equal(v, students[1][k]) for k, v in
               load_checkpoint(alone.outputs["student"], "student")["student"].items())
    assert isinstance(load_detector(str(tmp_path / "soup/thermal_detector.pt")), ThermalDetector)


def test_rounds_distil_again_with_the_last_round_as_thermal_teacher(msrs, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    cfg = _cfg(msrs.root / "manifest.csv", loss="head")
    first = run_distill(cfg, tmp_path / "one", progress=False)
    second = replace(cfg, thermal_teacher=str(first.outputs["thermal_detector"]))
    again = run_distill(second, tmp_path / "two", progress=False)
    a = load_checkpoint(first.outputs["student"], "student")["student"]
    b = load_checkpoint(again.outputs["student"], "student")["student"]
    # the same seed and pairs; only the head target differs, so the students do
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    # rounds: 2 does both in one run; stopped inside round 1, it resumes there
    rounds = replace(cfg, rounds=2)
    part = run_distill(rounds, tmp_path / "rounds", progress=False, stop_at=4)
    assert not part.finished and not (tmp_path / "rounds/student.pt").exists()
    with pytest.raises(InvismapError, match="a run already exists"):
        run_distill(rounds, tmp_path / "rounds", progress=False)
    done = run_distill(rounds, tmp_path / "rounds", progress=False, resume=True)
    assert done.finished and [r["round"] for r in done.details["rounds"]] == [1, 2]
    c = load_checkpoint(tmp_path / "rounds/student.pt", "student")["student"]
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert isinstance(load_detector(str(tmp_path / "rounds/thermal_detector.pt")), ThermalDetector)


def test_scoring_experiments_refuses_students_not_trained(msrs, tmp_path):
    from invismap.distill.experiments import run_experiment

    cfg = _cfg(msrs.root / "manifest.csv")
    with pytest.raises(InvismapError, match="variant 'seed 4' is not trained yet"):
        run_experiment("seeds", cfg, tmp_path / "tables", seeds=[4], runs_dir=tmp_path / "students",
                       train=False)
    assert not (tmp_path / "students").exists() and not (tmp_path / "tables").exists()  # nothing trained


def test_distillation_moves_student_towards_teacher(msrs, teacher, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    cfg = _cfg(msrs.root / "manifest.csv", train={"max_steps": 12, "batch_size": 2, "lr": 1e-4,
                                                  "warmup_steps": 2, "eval_every": 12, "ckpt_every": 12})
    summary = run_distill(cfg, tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run/ckpt/best.pt", "student")
    assert summary.best_val_loss < float("inf")
    # The held-out validation loss after training is below the loss of the untrained copy.
    from invismap.data.dataset import PairDataset, collate_pairs
    from invismap.distill.run import split_pairs

    _, val = split_pairs(msrs, cfg)
    batch = collate_pairs([PairDataset(val, 160)[i] for i in range(len(val))])
    untrained = ThermalStudent(teacher).eval()
    trained = ThermalStudent(teacher).eval()
    trained.load_state_dict(state["model"])
    with torch.no_grad():
        t = teacher.neck_features(batch["rgb"])
        before = distill_loss("mid", untrained(batch["thermal"]), t, teacher.heads)["total"]
        after = distill_loss("mid", trained(batch["thermal"]), t, teacher.heads)["total"]
    assert after < before


def test_students_heads_are_frozen_as_no_loss_reaches_them(teacher):
    """Every loss reaches the student through its neck features (the head loss through the teacher's heads),
    so its copy of the heads is frozen: under DDP each trainable parameter must receive a gradient."""
    batch = {"rgb": torch.rand(2, 3, 64, 64), "thermal": torch.rand(2, 1, 64, 64)}
    for loss in ("mid", "head", "mid+head"):
        task = DistillTask(teacher, ThermalStudent(teacher), loss)
        heads = {n for n, _ in task.net.named_parameters() if n.startswith("detector.model.24.")}  # Detect
        assert heads and set(task.unreached) == heads, loss
        task.training_step(batch)["loss/main"].backward()
        assert all(p.grad is not None for p in task.net.parameters() if p.requires_grad), loss
        assert all(p.grad is None for n, p in task.net.named_parameters() if n in heads)


def test_bf16_distillation_trains_close_to_fp32_and_resumes(msrs, assets, tmp_path, monkeypatch):
    """``train.precision: bf16`` (autocast) with ``channels_last`` on CPU: a real distillation whose loss
    curve stays close to the fp32 one (not equal: bf16 keeps 8 bits of mantissa), and whose interrupted run
    resumes exactly."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def losses(run):
        events = EventAccumulator(str(run / "tb"))
        events.Reload()
        return [e.value for e in events.Scalars("loss/main")]

    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    train = {"max_steps": 5, "batch_size": 2, "lr": 1e-4, "warmup_steps": 1, "eval_every": 0, "ckpt_every": 5,
             "log_every": 1}
    fp32 = _cfg(msrs.root / "manifest.csv", train=train)
    bf16 = _cfg(msrs.root / "manifest.csv", train={**train, "precision": "bf16", "channels_last": True})
    run_distill(fp32, tmp_path / "fp32", progress=False)
    run_distill(bf16, tmp_path / "bf16", progress=False)
    full, reference = losses(tmp_path / "bf16"), losses(tmp_path / "fp32")
    assert len(full) == 5 and full != reference
    assert full == pytest.approx(reference, rel=0.05)  # measured: within 3.3% at every step
    run_distill(bf16, tmp_path / "part", progress=False, stop_at=2)
    run_distill(bf16, tmp_path / "part", progress=False, resume=True)
    a = load_checkpoint(tmp_path / "bf16/student.pt", "student")["student"]
    b = load_checkpoint(tmp_path / "part/student.pt", "student")["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_validation_pairs_are_capped_evenly(tmp_path):
    """``val_max``: at most that many held-out pairs validate and calibrate (evenly spaced); the rest stay out
    of training, so a large data set does not validate, cache and calibrate on every tenth pair."""
    from invismap.data.manifest import Manifest, Sample
    from invismap.distill.run import DistillConfig, split_pairs

    samples = [Sample(f"p{i:03d}", f"vi/{i}.png", f"ir/{i}.png", "day", "train") for i in range(200)]
    manifest = Manifest(samples, tmp_path)
    train, val = split_pairs(manifest, DistillConfig(val_every_nth=4, val_max=10))
    all_train, held_out = split_pairs(manifest, DistillConfig(val_every_nth=4, val_max=0))
    assert len(held_out) == 50 and [s.name for s in train] == [s.name for s in all_train]
    names = [s.name for s in held_out]
    picked = [names.index(s.name) for s in val]  # 10 of the 50, evenly spaced from first to last
    assert picked[0] == 0 and picked[-1] == 49 and all(4 <= b - a <= 6 for a, b in itertools.pairwise(picked))


def test_extra_pairs_are_drawn_extra_repeat_times(tmp_path):
    """``extra_repeat``: an epoch holds each of the extra datasets' training pairs that many times and the
    main dataset's once; which pairs train and validate does not change."""
    from invismap.data.manifest import Manifest, Sample
    from invismap.distill.run import DistillConfig, drawn_pairs, split_pairs

    def pairs(prefix: str, n: int) -> Manifest:
        return Manifest([Sample(f"{prefix}{i}", f"vi/{i}.png", f"ir/{i}.png", "day", "train")
                         for i in range(n)], tmp_path)

    main, extra = pairs("m", 20), pairs("e", 10)
    pool = Manifest(main.samples + extra.samples, tmp_path)
    train, _ = split_pairs(pool, DistillConfig(val_every_nth=5))
    names = Counter(s.name for s in drawn_pairs(train, main, 3))
    assert set(names) == {s.name for s in train}
    assert {n: c for n, c in names.items() if n.startswith("m")} == {n: 1 for n in names if n.startswith("m")}
    assert {c for n, c in names.items() if n.startswith("e")} == {3}
    assert len(drawn_pairs(train, main, 1)) == len(train)


def test_distillation_trains_on_the_drawn_pairs(msrs, assets, tmp_path, monkeypatch):
    """``build_distillation`` hands the training set each extra pair ``extra_repeat`` times."""
    from invismap.data.manifest import Manifest, save_manifest
    from invismap.distill.run import build_distillation

    monkeypatch.setenv("INVISMAP_ASSETS", str(assets))
    day = [s for s in msrs.samples if s.condition == "day" and s.split == "train"][:4]
    more = save_manifest(Manifest([replace(s, name=f"more_{s.name}") for s in day], msrs.root),
                         tmp_path / "more")
    cfg = _cfg(msrs.root / "manifest.csv", extra_data=[str(more)], extra_repeat=3, max_pairs=0)
    _, train_set, _, train_pairs, _ = build_distillation(cfg)
    extra = sum(s.name.startswith("more_") for s in train_pairs)
    assert extra > 0 and len(train_set) == len(train_pairs) + 2 * extra
